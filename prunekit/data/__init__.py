"""Datasets behind one interface: ``load_dataset(name, split) -> TensorDataset``, batched by :func:`batches`.

Registered names (:data:`DATASETS`): ``mnist``, ``fashion_mnist``, ``cifar10``, ``digits``, ``tinyshakespeare``,
``synthetic``, ``synthetic_lm``. Files are found under ``$PRUNEKIT_DATA`` or the cache (see
:mod:`prunekit.data.files`), downloaded and checksum-verified when missing and online.
"""

from prunekit.data import synthetic as _synthetic  # noqa: F401  (registers synthetic, synthetic_lm)
from prunekit.data import text as _text  # noqa: F401  (registers tinyshakespeare)
from prunekit.data import vision as _vision  # noqa: F401  (registers mnist, fashion_mnist, cifar10, digits)
from prunekit.data.base import DATASETS as DATASETS
from prunekit.data.base import Normalize as Normalize
from prunekit.data.base import RandomCropFlip as RandomCropFlip
from prunekit.data.base import TensorDataset as TensorDataset
from prunekit.data.base import batches as batches
from prunekit.data.base import load_dataset as load_dataset
from prunekit.data.base import num_batches as num_batches
from prunekit.data.files import ENV_VAR as ENV_VAR
from prunekit.data.files import DataError as DataError
from prunekit.data.files import FileSpec as FileSpec
from prunekit.data.files import cache_dir as cache_dir
from prunekit.data.files import search_dirs as search_dirs
from prunekit.data.text import decode as decode
