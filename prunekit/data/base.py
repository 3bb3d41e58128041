"""One interface for every dataset: tensors in memory, batched by slicing, no DataLoader workers.

The datasets prunekit benchmarks on are small (MNIST is 47 MB as uint8, CIFAR-10 150 MB, Tiny Shakespeare 1 MB), so
each is held whole in memory in its compact stored form (uint8 images, int64 token windows) and turned into model
inputs one batch at a time: ``augment`` (random, training only, seeded) then ``transform`` (deterministic). On a
2-core machine this beats DataLoader worker processes, which cost more to start and to feed than the work they do.

    ds = load_dataset("mnist", "train")
    for x, y in batches(ds, 128, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.registry import Registry

Task = Literal["classification", "language_model"]
SPLITS = ("train", "test")


class Augment(Protocol):
    """Random batch transform on stored samples: ``(x, generator) -> x`` with the same dtype and shape."""

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor: ...


@dataclass(frozen=True)
class Normalize:
    """``(x * scale - mean) / std`` per channel (dim 1), as float32. Empty ``mean``/``std``: scaling only."""

    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __call__(self, x: Tensor) -> Tensor:
        out = x.to(torch.float32) * self.scale
        if self.mean:
            view = (1, len(self.mean)) + (1,) * (out.dim() - 2)
            out = (out - torch.tensor(self.mean).view(view)) / torch.tensor(self.std).view(view)
        return out


@dataclass(frozen=True)
class RandomCropFlip:
    """Zero-pad by ``padding``, crop back to the original size at a random offset, flip left-right with p=0.5.

    The standard CIFAR augmentation (He et al. 2016, sec. 4.2), vectorised over the batch: one gather, no Python
    loop over samples. Works on any (N, C, H, W) dtype, so it runs on the stored uint8 images before normalising
    (padding is black, as in the usual pipeline).
    """

    padding: int = 4
    flip: bool = True

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        p = self.padding
        if p > 0:
            padded = torch.nn.functional.pad(x, (p, p, p, p)).permute(0, 2, 3, 1)  # (N, H+2p, W+2p, C)
            oy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
            cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
            x = padded[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)  # (N, C, H, W)
        if self.flip:
            flip = torch.rand(n, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.contiguous()


@dataclass(frozen=True, eq=False)
class TensorDataset:
    """A whole dataset split as tensors: ``x`` (stored form) and ``y`` (int64 targets), indexed along dim 0.

    ``task`` tells the trainer what to measure: ``"classification"`` (``y``: (N,) class ids, ``num_classes``
    classes) or ``"language_model"`` (``x``, ``y``: (N, T) token ids, ``y`` shifted by one; ``num_classes`` is
    the vocabulary size). ``info`` carries dataset facts (vocabulary, normalisation, source files).
    """

    name: str
    split: str
    x: Tensor
    y: Tensor
    task: Task
    num_classes: int
    transform: Callable[[Tensor], Tensor] | None = None
    augment: Augment | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(f"{self.name}.{self.split}", (tuple(self.x.shape), tuple(self.y.shape)), "x and y differ in length")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def get(self, index: Tensor | slice, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Model-ready ``(x, y)`` for the given indices: augmented (if set and a generator is given), transformed."""
        x, y = self.x[index], self.y[index]
        if self.augment is not None and generator is not None:
            x = self.augment(x, generator)
        if self.transform is not None:
            x = self.transform(x)
        return x, y

    def without_augmentation(self) -> TensorDataset:
        return dataclasses.replace(self, augment=None)

    def subset(self, n: int) -> TensorDataset:
        """The first ``n`` samples (for quick runs and tests)."""
        return dataclasses.replace(self, x=self.x[:n], y=self.y[:n])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one model input (after the transform)."""
        return tuple(self.get(slice(0, 1))[0].shape[1:])


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    ds: TensorDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    start: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield model-ready ``(x, y)`` batches by slicing the in-memory tensors.

    Randomness comes only from ``generator``: first the permutation (when ``shuffle``), then one seed per batch
    for the augmentation. The epoch is therefore a pure function of the generator's state, and ``start`` skips
    the first ``start`` batches exactly as if they had been drawn (used to resume mid-epoch).
    """
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "must be a positive integer")
    n = len(ds)
    nb = num_batches(n, batch_size, drop_last)
    order = torch.randperm(n, generator=generator) if shuffle else None
    seeds = torch.randint(0, 2**62, (nb,), generator=generator) if ds.augment is not None else None
    for b in range(start, nb):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        index: Tensor | slice = order[lo:hi] if order is not None else slice(lo, hi)
        g = torch.Generator().manual_seed(int(seeds[b])) if seeds is not None else None
        yield ds.get(index, g)


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------


# Loaders: ``(split, data_dir, download, **options) -> TensorDataset``.
DATASETS: Registry[Callable[..., TensorDataset]] = Registry("dataset")


def check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"{name}.split", split, f"allowed: {', '.join(SPLITS)}")


def load_dataset(
    name: str, split: str = "train", data_dir: str | Path | None = None, *, download: bool = True, **options: Any
) -> TensorDataset:
    """Load a registered dataset split into memory. ``options`` go to the dataset's loader (e.g. ``block_size``).

    Files are looked up in ``data_dir``, else ``$PRUNEKIT_DATA``, else the cache (see :mod:`prunekit.data.files`).
    """
    loader = DATASETS.get(name)
    check_split(name, split)
    try:
        inspect.signature(loader).bind(split, data_dir, download, **options)
    except TypeError as e:
        raise ConfigError(f"dataset options ({name})", options, str(e)) from None
    return loader(split, data_dir, download, **options)
