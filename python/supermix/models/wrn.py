"""Wide ResNets (Zagoruyko & Komodakis 2016) WRN-depth-k, as in the CRD / RepDistiller tables.

Pre-activation basic blocks (BN-ReLU-conv3x3, twice) in three stages of ``n = (depth - 4) / 6``
blocks with 16k, 32k, 64k channels, after a 16-channel stem; BN-ReLU, global average pooling
(adaptive, so 28x28 and 32x32 inputs both work), linear classifier.

Input: float [N, in_channels, H, W]; output: logits float [N, num_classes].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class WideBasicBlock(nn.Module):
    """Pre-activation block; a 1x1 projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = (None if self.equal_in_out else
                         nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # As in the original: the projection sees the pre-activated input, identity the raw one.
        residual = x if self.equal_in_out else self.shortcut(pre)
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + residual


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; depth = 6n + 4."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10,
                 in_channels: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth: expected 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), "
                             f"got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        stages = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(WideBasicBlock(in_planes, planes, stride if i == 0 else 1, drop_rate))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def wrn_16_1(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, 1, num_classes, in_channels)


def wrn_16_2(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_channels)


def wrn_40_1(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 1, num_classes, in_channels)


def wrn_40_2(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_channels)
