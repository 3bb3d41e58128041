"""Conv-2, Conv-4 and Conv-6: the VGG-like CIFAR-10 networks of Frankle & Carbin 2019 (Figure 2)."""

from __future__ import annotations

from torch import Tensor, nn

from prunekit.models import MODELS


class ConvNet(nn.Module):
    """``stages`` blocks of two 3x3 'same' convolutions (ReLU) and a 2x2 max-pool, then FC 256-256-classes.

    Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis", Fig. 2): Conv-2 = 64,64,pool; Conv-4 adds
    128,128,pool; Conv-6 adds 256,256,pool; each followed by FC 256, 256, 10. Weights (biases excluded):
    Conv-2 4,300,992; Conv-4 2,425,024; Conv-6 2,261,184. The paper lists 4.3M / 2.4M / 1.7M; its Conv-6 figure
    does not follow from the topology it describes (its convolutional share, 1.1M, does: 1,144,512 here).
    """

    def __init__(self, stages: int, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(stages):
            c = 64 * 2**i
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = image_size // 2**stages
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.features(x))
        return out


@MODELS.register("conv2")
def conv2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Conv-2 (Frankle & Carbin 2019): conv 64,64,pool + fc 256,256,10; 4.30M weights on CIFAR-10."""
    return ConvNet(1, num_classes, in_channels, image_size)


@MODELS.register("conv4")
def conv4(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Conv-4 (Frankle & Carbin 2019): conv 64,64,pool,128,128,pool + fc 256,256,10; 2.43M weights."""
    return ConvNet(2, num_classes, in_channels, image_size)


@MODELS.register("conv6")
def conv6(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Conv-6 (Frankle & Carbin 2019): conv 64,64,pool,128,128,pool,256,256,pool + fc 256,256,10; 2.26M weights."""
    return ConvNet(3, num_classes, in_channels, image_size)
