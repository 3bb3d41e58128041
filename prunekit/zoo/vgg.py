"""VGG-11 and VGG-16 with BatchNorm, CIFAR-10 variants (Simonyan & Zisserman 2015, configurations A and D)."""

from __future__ import annotations

from torch import Tensor, nn

from prunekit.models import MODELS

# Channel counts per 3x3 convolution; "M" is a 2x2 max-pool. Four pools take 32x32 to 2x2; a final 2x2 average
# pool leaves 512 features (open_lth's plans and pooling).
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
}


class CifarVGG(nn.Module):
    """VGG convolutional stack (conv3x3-BN-ReLU, max-pools), 2x2 average pool, one 512 -> classes linear layer.

    The CIFAR adaptation used across the pruning literature (Frankle et al. 2020 / open_lth ``cifar_vgg``; Liu et al.
    2019, "Rethinking the Value of Network Pruning"): the ImageNet 4096-4096 classifier is replaced by one linear
    layer on the 512 features of the last stage. VGG-11: 9.23M parameters; VGG-16: 14.73M.
    """

    def __init__(self, config: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c = int(v)
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.pool(self.features(x)).flatten(1))  # (B, 512, 2, 2) -> (B, 512)
        return out


@MODELS.register("vgg11_bn")
def vgg11_bn(num_classes: int = 10) -> nn.Module:
    """VGG-11 with BatchNorm, CIFAR variant (8 conv + 1 linear); 9.23M parameters."""
    return CifarVGG(VGG_CONFIGS["vgg11"], num_classes)


@MODELS.register("vgg16_bn")
def vgg16_bn(num_classes: int = 10) -> nn.Module:
    """VGG-16 with BatchNorm, CIFAR variant (13 conv + 1 linear); 14.73M parameters."""
    return CifarVGG(VGG_CONFIGS["vgg16"], num_classes)
