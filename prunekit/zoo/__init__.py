"""Model zoo: paper architectures registered in :data:`prunekit.models.MODELS` under these names.

``lenet5_caffe`` (Han 2015), ``conv2``/``conv4``/``conv6`` (Frankle & Carbin 2019), ``resnet20``/``resnet32``/
``resnet56`` (He 2016, CIFAR, option-A shortcuts by default), ``vgg11_bn``/``vgg16_bn`` (CIFAR variants) and
``char_gpt`` (nanoGPT-style character model). ``lenet_300_100`` lives in :mod:`prunekit.models`.
Importing :mod:`prunekit.models` imports this package, so the names are always registered.
"""

from prunekit.zoo.conv import ConvNet as ConvNet
from prunekit.zoo.gpt import CharGPT as CharGPT
from prunekit.zoo.lenet import LeNet5Caffe as LeNet5Caffe
from prunekit.zoo.resnet import CifarResNet as CifarResNet
from prunekit.zoo.resnet import ZeroPadShortcut as ZeroPadShortcut
from prunekit.zoo.vgg import CifarVGG as CifarVGG
