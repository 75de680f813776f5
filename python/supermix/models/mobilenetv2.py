"""MobileNetV2 (Sandler et al. 2018) for small images, as in the CRD / RepDistiller tables.

The distillation tables' "MobileNetV2" is RepDistiller's ``mobile_half``: width multiplier 0.5,
expansion T = 6, the standard inverted-residual settings, a stride-2 stem, 1x1 conv to 1280
channels, global average pooling (adaptive: 32 -> 2 and 28 -> 2 both work) and a linear layer.

Input: float [N, in_channels, H, W]; output: logits float [N, num_classes].
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MobileNetV2", "mobilenetv2", "mobilenetv2_full"]

# (expansion t, output channels c, repeats n, first stride s), scaled by the width multiplier.
_SETTINGS = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (x t), 3x3 depthwise (stride), 1x1 linear projection; identity shortcut
    when the shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            _conv_bn_relu(in_ch, hidden, 1),
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        stem = int(32 * width_mult)
        self.stem = _conv_bn_relu(in_channels, stem, 3, stride=2)
        layers: list[nn.Module] = []
        in_ch = stem
        for t, c, n, s in _SETTINGS:
            out_ch = int(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1,
                                               t if t is not None else expansion))
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head = _conv_bn_relu(in_ch, last, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(self.stem(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    """The tables' MobileNetV2: width 0.5, T = 6 (RepDistiller ``mobile_half``)."""
    return MobileNetV2(6, 0.5, num_classes, in_channels)


def mobilenetv2_full(num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    """Width 1.0."""
    return MobileNetV2(6, 1.0, num_classes, in_channels)
