"""ResNet-20/32/56 for CIFAR-10 (He et al. 2016, "Deep Residual Learning for Image Recognition", sec. 4.2)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.models import MODELS

Shortcut = Literal["A", "B"]


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and append zero channels up to ``out_channels`` (no parameters).

    The identity channels come first, the zero channels after them (He et al. do not specify where the zeros go).
    """

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(c_out, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: conv3x3(16), three stages of ``n`` basic blocks (16, 32, 64 channels,
    stride 2 at the start of stages 2 and 3), global average pooling, fully connected classifier.

    ``shortcut="A"`` (default, what He et al. used on CIFAR-10): parameter-free identity shortcuts, zero-padded
    where the channel count grows, giving the paper's counts (ResNet-20 0.27M, ResNet-32 0.46M, ResNet-56 0.85M).
    ``shortcut="B"``: 1x1 convolution + BN projections where the shape changes (slightly more parameters).
    """

    def __init__(self, n: int, num_classes: int = 10, shortcut: Shortcut = "A", in_channels: int = 3) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ConfigError("shortcut", shortcut, "allowed: A (zero-padded identity), B (1x1 projection)")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Module] = []
        c_in = 16
        for i, c in enumerate((16, 32, 64)):
            blocks = [BasicBlock(c_in if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1, shortcut) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            c_in = c
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 16, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, 8, 8)
        out: Tensor = self.fc(self.pool(x).flatten(1))
        return out


@MODELS.register("resnet20")
def resnet20(num_classes: int = 10, shortcut: Shortcut = "A") -> nn.Module:
    """ResNet-20 for CIFAR (He et al. 2016), option-A shortcuts by default; 0.27M parameters."""
    return CifarResNet(3, num_classes, shortcut)


@MODELS.register("resnet32")
def resnet32(num_classes: int = 10, shortcut: Shortcut = "A") -> nn.Module:
    """ResNet-32 for CIFAR (He et al. 2016), option-A shortcuts by default; 0.46M parameters."""
    return CifarResNet(5, num_classes, shortcut)


@MODELS.register("resnet56")
def resnet56(num_classes: int = 10, shortcut: Shortcut = "A") -> nn.Module:
    """ResNet-56 for CIFAR (He et al. 2016), option-A shortcuts by default; 0.85M parameters."""
    return CifarResNet(9, num_classes, shortcut)
