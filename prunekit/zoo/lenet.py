"""LeNet-5 as in Caffe's MNIST example (20-50-800-500), the network of Han et al. 2015's LeNet-5 results."""

from __future__ import annotations

from torch import Tensor, nn

from prunekit.models import MODELS


class LeNet5Caffe(nn.Module):
    """LeNet-5-Caffe: conv5x5(20) - maxpool2 - conv5x5(50) - maxpool2 - fc 800->500 - ReLU - fc 500->classes.

    The topology of Caffe's ``examples/mnist/lenet_train_test.prototxt`` used by Han et al. 2015 ("Learning both
    Weights and Connections", Table 1: 431K parameters): 28x28 input, valid convolutions, and ReLU only after the
    first fully connected layer (Caffe's LeNet has no activation after the convolutions). ``conv_relu=True`` adds
    ReLUs after both convolutions, as many PyTorch re-implementations do; the parameter count is unchanged.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, conv_relu: bool = False) -> None:
        super().__init__()
        act: type[nn.Module] = nn.ReLU if conv_relu else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5),  # (B, 20, 24, 24)
            act(),
            nn.MaxPool2d(2),  # (B, 20, 12, 12)
            nn.Conv2d(20, 50, 5),  # (B, 50, 8, 8)
            act(),
            nn.MaxPool2d(2),  # (B, 50, 4, 4)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.features(x))
        return out


@MODELS.register("lenet5_caffe")
def lenet5_caffe(num_classes: int = 10, in_channels: int = 1, conv_relu: bool = False) -> nn.Module:
    """LeNet-5-Caffe (Han et al. 2015): conv 20-50 (5x5) + fc 800-500-10, 431,080 parameters on 28x28 input."""
    return LeNet5Caffe(num_classes, in_channels, conv_relu)
