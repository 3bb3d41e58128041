"""Character-level language modelling: Tiny Shakespeare.

The text is encoded with the vocabulary ``sorted(set(text))`` of the whole file (65 characters), split 90/10 in
order (first 90 % train, last 10 % test, as nanoGPT's ``shakespeare_char`` does), and cut into windows of
``block_size + 1`` characters: ``x`` is a window's first ``block_size`` characters and ``y`` the same window
shifted by one (next-character targets). With the default ``stride = block_size`` each character is predicted
exactly once per epoch; a smaller stride gives overlapping windows. Windows are views of one token tensor
(``Tensor.unfold``), so no copy is made until a batch is gathered.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from prunekit.data.base import DATASETS, TensorDataset, check_split
from prunekit.data.files import DataError, FileSpec, read_content, require
from prunekit.errors import ConfigError

TINYSHAKESPEARE = FileSpec(
    "input.txt",
    ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",),
    # md5 of karpathy/char-rnn data/tinyshakespeare/input.txt (1,115,394 bytes); the repository publishes no
    # checksum, this is the md5 of the file at that path.
    "6fb458f1232090904fb40fe944165e91",
    "content",
    "karpathy/char-rnn data/tinyshakespeare/input.txt",
)


def windows(tokens: Tensor, block_size: int, stride: int) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of shape (N, block_size): next-token windows over a 1-D token tensor (views, no copy)."""
    if block_size < 1 or stride < 1:
        raise ConfigError("block_size/stride", (block_size, stride), "must be positive integers")
    if len(tokens) < block_size + 1:
        raise ConfigError("block_size", block_size, f"longer than the text ({len(tokens)} tokens)")
    w = tokens.unfold(0, block_size + 1, stride)  # (N, block_size + 1)
    return w[:, :-1], w[:, 1:]


def char_lm_dataset(
    name: str, text: str, split: str, block_size: int, stride: int | None, train_fraction: float = 0.9
) -> TensorDataset:
    """Character-level next-token dataset from ``text`` (vocabulary ``sorted(set(text))``, in-order split)."""
    check_split(name, split)
    vocab = "".join(sorted(set(text)))
    lut = torch.zeros(max(map(ord, vocab)) + 1, dtype=torch.long)
    lut[torch.tensor([ord(c) for c in vocab])] = torch.arange(len(vocab))
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    tokens = lut[codes]
    n = int(train_fraction * len(tokens))
    part = tokens[:n] if split == "train" else tokens[n:]
    x, y = windows(part, block_size, stride or block_size)
    info = {"vocab": vocab, "block_size": block_size, "tokens": len(part)}
    return TensorDataset(name, split, x, y, "language_model", len(vocab), None, None, info)


def decode(ds: TensorDataset, ids: Tensor) -> str:
    """Token ids back to text, with the dataset's vocabulary."""
    vocab: str = ds.info["vocab"]
    return "".join(vocab[i] for i in ids.reshape(-1).tolist())


@DATASETS.register("tinyshakespeare")
def tinyshakespeare(
    split: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    block_size: int = 128,
    stride: int | None = None,
) -> TensorDataset:
    """Tiny Shakespeare (Karpathy's char-rnn), 1.1M characters, 65-char vocabulary, 90/10 split, (N, T) windows."""
    path = require("tinyshakespeare", TINYSHAKESPEARE, data_dir, download)
    try:
        text = read_content(path, TINYSHAKESPEARE).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    return char_lm_dataset("tinyshakespeare", text, split, block_size, stride)
