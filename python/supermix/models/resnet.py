"""CIFAR ResNets (He et al. 2016, sec. 4.2), as in the distillation tables of CRD / RepDistiller.

Three stages of ``n = (depth - 2) // 6`` basic blocks at 1x, 1/2x and 1/4x resolution, then global
average pooling and a linear classifier. ``resnet8x4`` and ``resnet32x4`` widen the stages four
times (32-64-128-256 channels instead of 16-16-32-64).

The original pools with a fixed 8x8 window (32x32 inputs); adaptive average pooling is used here
so the same networks run on 28x28 Fashion-MNIST (28 -> 14 -> 7) without change.

Input: float [N, in_channels, H, W]; output: logits float [N, num_classes].
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity (or 1x1 conv + BN projection), then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for small images.

    Args:
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110).
        widths: channels of the stem and the three stages, e.g. (16, 16, 32, 64).
        num_classes: size of the output.
        in_channels: channels of the input images (1 for Fashion-MNIST, 3 for CIFAR).
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth: expected 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            layers = []
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes, in_channels)


def resnet14(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes, in_channels)


def resnet44(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes, in_channels)


def resnet8x4(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes, in_channels)


def resnet32x4(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes, in_channels)
