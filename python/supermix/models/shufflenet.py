"""ShuffleNetV1 (Zhang et al. 2018) and ShuffleNetV2 (Ma et al. 2018) for small images,
as in the CRD / RepDistiller tables.

Both keep the full resolution in a 3x3 stride-1 stem (CIFAR variant), then three stages that
each halve the resolution, global average pooling (adaptive, so 28x28 and 32x32 both work)
and a linear classifier.

V1: groups g = 3, stage widths 240-480-960, (4, 8, 4) bottlenecks; a stride-2 unit concatenates
its output with a 3x3 average-pooled shortcut. V2 (1x): widths 116-232-464, (3, 7, 3) units,
1x1 conv to 1024; units split the channels in half and concatenate, then shuffle.

Input: float [N, in_channels, H, W]; output: logits float [N, num_classes].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["channel_shuffle", "ShuffleNetV1", "ShuffleNetV2", "shufflenetv1", "shufflenetv2"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> the same shape with channel i*c + j moved to j*g + i."""
    n, channels, h, w = x.shape
    return (x.view(n, groups, channels // groups, h, w).transpose(1, 2)
            .reshape(n, channels, h, w))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------
# ShuffleNetV1


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1; add (stride 1) or concat (stride 2)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        # The first unit sees the 24-channel stem, which is not divisible by every g.
        g1 = 1 if in_planes == 24 else groups
        self.groups = g1
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups) if self.groups > 1 else out
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            return F.relu(torch.cat([out, self.shortcut(x)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, widths=(240, 480, 960), blocks=(4, 8, 4), groups: int = 3,
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        stages = []
        for width, count in zip(widths, blocks, strict=True):
            units = []
            for i in range(count):
                # A stride-2 unit concatenates its input, so its branch only adds the difference.
                units.append(ShuffleV1Unit(in_planes, width - in_planes if i == 0 else width,
                                           2 if i == 0 else 1, groups))
                in_planes = width
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------------------------
# ShuffleNetV2


class ShuffleV2Unit(nn.Module):
    """Stride 1: keep half the channels, transform the other half (1x1, dw 3x3, 1x1), shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.split = channels // 2
        c = channels - self.split
        self.branch = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, changed = x[:, :self.split], x[:, self.split:]
        return channel_shuffle(torch.cat([kept, self.branch(changed)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride 2: both branches see all input channels and halve the resolution; concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels,
                      bias=False), nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, widths=(116, 232, 464, 1024), blocks=(3, 7, 3), num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        stages = []
        for width, count in zip(widths[:3], blocks, strict=True):
            stages.append(nn.Sequential(ShuffleV2Down(in_ch, width),
                                        *[ShuffleV2Unit(width) for _ in range(count)]))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_ch, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def shufflenetv1(num_classes: int = 10, in_channels: int = 3) -> ShuffleNetV1:
    """g = 3, widths 240-480-960 (RepDistiller ``ShuffleV1``)."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)


def shufflenetv2(num_classes: int = 10, in_channels: int = 3) -> ShuffleNetV2:
    """1x: widths 116-232-464, 1024 features (RepDistiller ``ShuffleV2``)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
