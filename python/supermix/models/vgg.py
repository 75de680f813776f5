"""VGG with batch normalisation for small images, as in the CRD / RepDistiller tables.

Five blocks of conv3x3-BN-ReLU layers; max pooling (2x2) after the first four and global
average pooling after the last (adaptive, so 28x28 -> 14 -> 7 -> 4 -> 2 -> 1 works as well as
32 -> 16 -> 8 -> 4 -> 2 -> 1); one linear classifier on the 512 features.

VGG-8: one conv per block (64, 128, 256, 512, 512). VGG-13: two per block.

Input: float [N, in_channels, H, W]; output: logits float [N, num_classes].
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["VGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "CONFIGS"]

CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512],
              [512, 512, 512, 512]],
}


def _block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, config: list[list[int]], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        blocks = []
        for widths in config:
            blocks.append(_block(widths, in_channels))
            in_channels = widths[-1]
        self.blocks = nn.ModuleList(blocks)
        # ceil_mode: odd sizes keep their last row and column (28 -> 14 -> 7 -> 4 -> 2);
        # even sizes (32x32) pool exactly as the original.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < last:
                x = self.pool(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def vgg8(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg8"], num_classes, in_channels)


def vgg11(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes, in_channels)


def vgg13(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg13"], num_classes, in_channels)


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg16"], num_classes, in_channels)


def vgg19(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg19"], num_classes, in_channels)
