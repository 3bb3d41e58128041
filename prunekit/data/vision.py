"""Image classification datasets: MNIST, Fashion-MNIST, CIFAR-10 and scikit-learn's digits.

Images are stored as uint8 (N, C, H, W) and normalised per batch (:class:`~prunekit.data.base.Normalize`).

Directory layout under a data root (the same as a shared benchmark data folder, so ``PRUNEKIT_DATA`` can point at it)::

    mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    fashion_mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    cifar10/cifar-10-binary.tar.gz      or  cifar10/cifar-10-batches-bin/*.bin  or  cifar10/{train,test}.npz
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.data.base import DATASETS, Normalize, RandomCropFlip, TensorDataset, check_split
from prunekit.data.files import DataError, FileSpec, find, read_content, require, verify

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: the original idx files
# --------------------------------------------------------------------------------------------------------

# LeCun's page first, then PyTorch's mirror of the same files (the checksum decides, not the host).
_MNIST_URLS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
# md5 of the decompressed idx files: the values in wide use since the files were published (LeCun's page lists no
# checksums), checked here against a copy of the original files.
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Zalando publishes the md5 of the .gz files only (github.com/zalandoresearch/fashion-mnist, README, "Get the
# Data"), so for Fashion-MNIST the file as distributed is checked, not its decompressed content.
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

# Mean and std of the training pixels after /255. MNIST: recomputed from the original training file (0.13066,
# 0.30811). Fashion-MNIST: the commonly used values, not recomputed here.
MNIST_MEAN_STD = ((0.1307,), (0.3081,))
FASHION_MNIST_MEAN_STD = ((0.2860,), (0.3530,))


def _idx_files(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def mnist_file_specs(dataset: str) -> dict[str, FileSpec]:
    """The four idx files of ``"mnist"`` or ``"fashion_mnist"`` with their URLs and checksums."""
    if dataset == "mnist":
        src = "LeCun's page publishes none; the values in wide use, matching the original files"
        return {n: FileSpec(n, tuple(u + n for u in _MNIST_URLS), md5, "content", src) for n, md5 in _MNIST_MD5.items()}
    src = "zalandoresearch/fashion-mnist README"
    return {n: FileSpec(n, (_FASHION_URL + n,), md5, "file", src) for n, md5 in _FASHION_MD5.items()}


def parse_idx(data: bytes, where: str = "idx") -> np.ndarray:
    """Decode an idx file (big-endian header: 0, 0, type code, ndim, then ndim uint32 sizes; uint8 payload)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{where}: not an idx file (bad magic number)")
    if data[2] != 0x08:
        raise DataError(f"{where}: idx element type 0x{data[2]:02x} is not uint8")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - header != expected:
        raise DataError(f"{where}: idx payload has {len(data) - header} bytes, header says {dims} = {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_pair(
    dataset: str, split: str, data_dir: str | Path | None, download: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    specs = mnist_file_specs(dataset)
    img_name, lbl_name = _idx_files(split)
    paths = [require(dataset, specs[n], data_dir, download) for n in (img_name, lbl_name)]
    images = parse_idx(read_content(paths[0], specs[img_name]), str(paths[0]))
    labels = parse_idx(read_content(paths[1], specs[lbl_name]), str(paths[1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{dataset}: {paths[0].name} {images.shape} and {paths[1].name} {labels.shape} do not match")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{paths[1]}: labels outside 0..9")
    return images, labels, [str(p) for p in paths]


def _idx_dataset(
    dataset: str, split: str, data_dir: str | Path | None, download: bool, standardize: bool, mean_std: Any
) -> TensorDataset:
    check_split(dataset, split)
    images, labels, sources = _load_idx_pair(dataset, split, data_dir, download)
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
    y = torch.from_numpy(labels.astype(np.int64))
    norm = Normalize(1 / 255, *mean_std) if standardize else Normalize(1 / 255)
    return TensorDataset(dataset, split, x, y, "classification", 10, norm, None, {"files": sources, "normalize": norm})


@DATASETS.register("mnist")
def mnist(split: str, data_dir: str | Path | None = None, download: bool = True, standardize: bool = False) -> TensorDataset:
    """MNIST (LeCun et al. 1998), 60k/10k 28x28 digits from the original idx files; pixels /255, optionally standardised."""
    return _idx_dataset("mnist", split, data_dir, download, standardize, MNIST_MEAN_STD)


@DATASETS.register("fashion_mnist")
def fashion_mnist(
    split: str, data_dir: str | Path | None = None, download: bool = True, standardize: bool = False
) -> TensorDataset:
    """Fashion-MNIST (Xiao et al. 2017), 60k/10k 28x28 clothing images, same idx format as MNIST; pixels /255."""
    return _idx_dataset("fashion_mnist", split, data_dir, download, standardize, FASHION_MNIST_MEAN_STD)


# --------------------------------------------------------------------------------------------------------
# CIFAR-10: the official binary version, or an .npz
# --------------------------------------------------------------------------------------------------------

CIFAR10_ARCHIVE = FileSpec(
    "cifar-10-binary.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    "c32a1d4ab5d03f1284b67883e8d87530",
    "file",
    "www.cs.toronto.edu/~kriz/cifar.html",
)
CIFAR10_BIN_DIR = "cifar-10-batches-bin"
_CIFAR_BATCHES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
_RECORD = 1 + 3 * 32 * 32
# Per-channel mean and std of the 50,000 training images after /255, as commonly published (not recomputed here:
# no copy of CIFAR-10 on the machine this was written on). Note the often-copied std (0.2023, 0.1994, 0.2010) is
# not the pixel std; these are.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def parse_cifar_bin(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size records ``<1 byte label><3072 bytes: R, G, B planes of 32x32, row-major>``."""
    if len(data) == 0 or len(data) % _RECORD:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {_RECORD}-byte CIFAR-10 records")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    labels, images = rec[:, 0], rec[:, 1:].reshape(-1, 3, 32, 32)
    if int(labels.max()) > 9:
        raise DataError(f"{where}: labels outside 0..9; not a CIFAR-10 binary batch")
    return images, labels


def _read_cifar_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = np.asarray(z["x"]), np.asarray(z["y"])
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: expected an .npz with arrays x (uint8, N x 32 x 32 x 3) and y ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: x must be uint8 (N, 32, 32, 3) (height, width, RGB); got {x.dtype} {x.shape}")
    y = y.reshape(-1)
    if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{path}: y must hold {len(x)} integer labels in 0..9")
    return x.transpose(0, 3, 1, 2), y


def _read_cifar_archive(path: Path, names: list[str]) -> dict[str, bytes]:
    """Read the wanted batch members straight from the verified archive, in one pass; nothing is extracted."""
    verify(path, CIFAR10_ARCHIVE)
    wanted = {f"{CIFAR10_BIN_DIR}/{n}": n for n in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tf:
            for member in tf:
                if member.name in wanted and member.isfile():
                    f = tf.extractfile(member)
                    if f is not None:
                        out[wanted[member.name]] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable archive ({e})") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(missing)}")
    return out


def _cifar_arrays(split: str, data_dir: str | Path | None, download: bool) -> tuple[np.ndarray, np.ndarray, str]:
    npz = find("cifar10", [f"{split}.npz"], data_dir)
    if npz is not None:
        x, y = _read_cifar_npz(npz)
        return x, y, str(npz)
    names = _CIFAR_BATCHES[split]
    bin_dir = find("cifar10", [CIFAR10_BIN_DIR], data_dir)
    if bin_dir is not None and all((bin_dir / n).is_file() for n in names):
        blobs = {n: (bin_dir / n).read_bytes() for n in names}
        source = str(bin_dir)
    else:
        what = (
            f"{CIFAR10_ARCHIVE.name} ({CIFAR10_ARCHIVE.describe_checksum()}; or its extracted {CIFAR10_BIN_DIR}/ "
            f"folder, or {split}.npz with x uint8 (N, 32, 32, 3) and y)"
        )
        archive = require("cifar10", CIFAR10_ARCHIVE, data_dir, download, what=what)
        blobs = _read_cifar_archive(archive, names)
        source = str(archive)
    parts = [parse_cifar_bin(blobs[n], f"{source}:{n}") for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), source


@DATASETS.register("cifar10")
def cifar10(
    split: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    standardize: bool = True,
    augment: bool | None = None,
) -> TensorDataset:
    """CIFAR-10 (Krizhevsky 2009), 50k/10k 32x32 RGB images; per-channel mean/std, crop+flip on train.

    Read from ``cifar10/{split}.npz`` (arrays ``x`` uint8 (N, 32, 32, 3) and ``y``, loaded with
    ``allow_pickle=False``), else the official binary version (``cifar-10-batches-bin/*.bin``, or straight from
    ``cifar-10-binary.tar.gz``, md5-checked), downloading the archive if nothing is found.

    The "python version" batches are deliberately not read: they are pickles, and unpickling a file runs whatever
    code it contains. The binary version holds the same images as fixed-size records and needs no pickle.

    ``augment`` (default: on for ``train``) applies the random 4-pixel-padded crop and horizontal flip of
    He et al. 2016, seeded by the batch iterator's generator.
    """
    check_split("cifar10", split)
    x_np, y_np, source = _cifar_arrays(split, data_dir, download)
    x = torch.from_numpy(np.ascontiguousarray(x_np))  # (N, 3, 32, 32) uint8
    y = torch.from_numpy(y_np.astype(np.int64))
    norm = Normalize(1 / 255, CIFAR10_MEAN, CIFAR10_STD) if standardize else Normalize(1 / 255)
    aug = RandomCropFlip(4, True) if (split == "train" if augment is None else augment) else None
    return TensorDataset("cifar10", split, x, y, "classification", 10, norm, aug, {"files": [source], "normalize": norm})


# --------------------------------------------------------------------------------------------------------
# scikit-learn digits: bundled, no download
# --------------------------------------------------------------------------------------------------------


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All digits as uint8 (1797, 1, 8, 8) in 0..16, labels, and a stratified boolean ``is_test`` (seeded)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.uint8).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        is_test[idx[: round(len(idx) * test_fraction)]] = True
    return x, y, is_test


@DATASETS.register("digits")
def digits(
    split: str, data_dir: str | Path | None = None, download: bool = True, seed: int = 0, test_fraction: float = 0.2
) -> TensorDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), a stratified seeded split; pixels /16."""
    check_split("digits", split)
    x, y, is_test = digits_split(seed, test_fraction)
    keep = is_test if split == "test" else ~is_test
    norm = Normalize(1 / 16)
    return TensorDataset("digits", split, x[keep], y[keep], "classification", 10, norm, None, {"normalize": norm})
