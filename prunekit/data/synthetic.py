"""Synthetic datasets for tests and smoke runs: no files, fully determined by a seed."""

from __future__ import annotations

from pathlib import Path

import torch

from prunekit.data.base import DATASETS, TensorDataset, check_split
from prunekit.data.text import windows
from prunekit.errors import ConfigError

_SPLIT_SALT = {"train": 0, "test": 1}


@DATASETS.register("synthetic")
def synthetic(
    split: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    n: int | None = None,
    shape: tuple[int, ...] = (16,),
    classes: int = 4,
    noise: float = 1.0,
    seed: int = 0,
) -> TensorDataset:
    """Gaussian class clusters: class centres drawn once per ``seed``, samples per split; float32 ``shape`` inputs.

    ``n`` defaults to 512 (train) / 256 (test). Train and test share the centres, so the task is learnable.
    """
    check_split("synthetic", split)
    if classes < 2 or noise < 0:
        raise ConfigError("synthetic", {"classes": classes, "noise": noise}, "need classes >= 2 and noise >= 0")
    n = n if n is not None else (512 if split == "train" else 256)
    shape = tuple(int(s) for s in shape)
    dim = int(torch.tensor(shape).prod())
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed)) * 2.0
    g = torch.Generator().manual_seed(seed * 2 + 1 + _SPLIT_SALT[split])
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + noise * torch.randn(n, dim, generator=g)
    return TensorDataset("synthetic", split, x.view(n, *shape), y, "classification", classes, None, None, {"seed": seed})


@DATASETS.register("synthetic_lm")
def synthetic_lm(
    split: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    tokens: int = 4096,
    vocab: int = 16,
    block_size: int = 32,
    seed: int = 0,
) -> TensorDataset:
    """Token stream from a random sparse Markov chain (two successors per token): learnable next-token task.

    The chain is fixed by ``seed``; 90 % of ``tokens`` go to train, 10 % to test, cut into (N, ``block_size``) windows.
    """
    check_split("synthetic_lm", split)
    g = torch.Generator().manual_seed(seed)
    succ = torch.randint(0, vocab, (vocab, 2), generator=g).tolist()
    choice = torch.randint(0, 2, (tokens,), generator=g).tolist()
    seq = [0]
    for c in choice[1:]:
        seq.append(succ[seq[-1]][c])
    stream = torch.tensor(seq, dtype=torch.long)
    cut = int(0.9 * tokens)
    part = stream[:cut] if split == "train" else stream[cut:]
    x, y = windows(part, block_size, block_size)
    return TensorDataset("synthetic_lm", split, x, y, "language_model", vocab, None, None, {"seed": seed})
