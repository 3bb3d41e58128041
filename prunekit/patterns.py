"""Sparsity patterns: which groups of weights are kept or pruned together.

A pattern turns element-wise scores (shaped like the weight) into one score per *unit*, and a keep/prune
decision per unit back into an element-wise boolean mask. Patterns are frozen value types; their YAML/CLI
shorthands ("unstructured", "2:4", "4x4", "channel", "channel:1") are parsed only by :func:`parse_pattern`.

Matrix view: a weight of shape (out, in, *kernel) is viewed as a 2-D matrix (out, in * prod(kernel)) in memory
order, so N:M groups and blocks run along the flattened input dimension of conv weights.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import ConfigError, MaskError
from prunekit.registry import Registry
from prunekit.select import keep_lowest_pruned

PATTERNS: Registry[type[AbstractPattern]] = Registry("pattern")


def _matrix(t: Tensor) -> Tensor:
    if t.dim() < 2:
        raise MaskError(f"this pattern needs a weight with at least 2 dims, got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


class AbstractPattern(ABC):
    """Interface: unit scores from element scores, element mask from unit decisions."""

    registry_name: str = ""

    @abstractmethod
    def num_units(self, shape: torch.Size) -> int:
        """How many selectable units a tensor of this shape has."""

    @abstractmethod
    def unit_scores(self, scores: Tensor) -> Tensor:
        """1-D tensor of unit scores (length ``num_units``) from element-wise scores."""

    @abstractmethod
    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        """Element-wise boolean mask of ``shape`` from a 1-D boolean keep vector over units."""

    def select(self, scores: Tensor, sparsity: float) -> Tensor:
        """Boolean keep-mask pruning exactly ``round(sparsity * num_units)`` units (lowest scores first)."""
        n_prune = round(sparsity * self.num_units(scores.shape))
        return self.expand(keep_lowest_pruned(self.unit_scores(scores), n_prune), scores.shape)

    @property
    def allocatable(self) -> bool:
        """False when the pattern fixes each tensor's count itself (N:M), so only uniform allocation applies."""
        return True

    def validate(self, shape: torch.Size, where: str) -> None:  # noqa: B027 - optional hook, default accepts all
        """Raise :class:`MaskError` naming ``where`` if the pattern cannot apply to ``shape``."""

    def shorthand(self) -> str:
        return self.registry_name


@PATTERNS.register("unstructured")
@dataclass(frozen=True)
class Unstructured(AbstractPattern):
    """Single weights: every element is its own unit."""

    def num_units(self, shape: torch.Size) -> int:
        return math.prod(shape)

    def unit_scores(self, scores: Tensor) -> Tensor:
        return scores.reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep.reshape(shape)


@PATTERNS.register("nm")
@dataclass(frozen=True)
class NM(AbstractPattern):
    """N:M: at most N of every M consecutive weights along the (flattened) input dimension are kept.

    At sparsity ``1 - N/M`` exactly N of every full group of M are kept. A lower sparsity (a gradual schedule on
    its way to the target) keeps ``M - round(sparsity * M)`` per group, never fewer than N. If the row length is
    not a multiple of M, the last, shorter group keeps at most N (so the row is N:M once zero-padded).
    """

    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or self.m < 1 or not 0 < self.n <= self.m:
            raise ConfigError("pattern", f"{self.n}:{self.m}", "N:M needs integers with 0 < N <= M")

    @property
    def allocatable(self) -> bool:
        return False

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def num_units(self, shape: torch.Size) -> int:
        return math.prod(shape)

    def unit_scores(self, scores: Tensor) -> Tensor:
        return scores.reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep.reshape(shape)

    def validate(self, shape: torch.Size, where: str) -> None:
        if len(shape) < 2:
            raise MaskError(f"{where}: N:M needs a weight with at least 2 dims, got shape {tuple(shape)}")

    def select(self, scores: Tensor, sparsity: float) -> Tensor:
        if sparsity > self.sparsity + 1e-9:
            raise ConfigError("sparsity", sparsity, f"pattern {self.n}:{self.m} allows at most {self.sparsity:g}")
        keep_per_group = max(self.n, self.m - round(sparsity * self.m))
        mat = _matrix(scores).float()  # (R, C)
        r, c = mat.shape
        pad = (-c) % self.m
        # Padded slots score -inf so they are "pruned" first: a short tail group then keeps at most N real weights.
        mat = torch.nn.functional.pad(mat, (0, pad), value=float("-inf"))
        groups = mat.reshape(r, -1, self.m)  # (R, G, M)
        order = torch.sort(groups, dim=-1, stable=True).indices  # ascending; ties keep index order
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(-1, order[..., : self.m - keep_per_group], False)
        return keep.reshape(r, -1)[:, :c].reshape(scores.shape)

    def shorthand(self) -> str:
        return f"{self.n}:{self.m}"


@PATTERNS.register("block")
@dataclass(frozen=True)
class Block(AbstractPattern):
    """Blocks of r x c weights in the matrix view (r rows of outputs by c input columns), pruned whole.

    A block's score is the sum of its element scores; a block clipped at the matrix edge has its sum scaled by
    (r*c / its size) so that edge blocks compete on equal terms. ``Block(1, 4)`` is "rows of 4".
    """

    r: int = 4
    c: int = 4

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and isinstance(self.c, int)) or self.r < 1 or self.c < 1:
            raise ConfigError("pattern", f"{self.r}x{self.c}", "block sides must be positive integers")

    def _grid(self, shape: torch.Size) -> tuple[int, int, int, int]:
        rows, cols = shape[0], math.prod(shape[1:])
        return rows, cols, -(-rows // self.r), -(-cols // self.c)

    def validate(self, shape: torch.Size, where: str) -> None:
        if len(shape) < 2:
            raise MaskError(f"{where}: blocks need a weight with at least 2 dims, got shape {tuple(shape)}")

    def num_units(self, shape: torch.Size) -> int:
        _, _, gr, gc = self._grid(shape)
        return gr * gc

    def unit_scores(self, scores: Tensor) -> Tensor:
        mat = _matrix(scores).float()
        rows, cols, gr, gc = self._grid(scores.shape)
        pr, pc = gr * self.r - rows, gc * self.c - cols
        padded = torch.nn.functional.pad(mat, (0, pc, 0, pr))
        sums = padded.reshape(gr, self.r, gc, self.c).sum((1, 3))  # (gr, gc)
        if pr or pc:
            ones = torch.nn.functional.pad(torch.ones_like(mat), (0, pc, 0, pr))
            sizes = ones.reshape(gr, self.r, gc, self.c).sum((1, 3))
            sums = sums * (self.r * self.c) / sizes
        return sums.reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        rows, cols, gr, gc = self._grid(shape)
        grid = keep.reshape(gr, gc)
        full = grid.repeat_interleave(self.r, 0).repeat_interleave(self.c, 1)  # (gr*r, gc*c)
        return full[:rows, :cols].reshape(shape)

    def shorthand(self) -> str:
        return f"{self.r}x{self.c}"


@PATTERNS.register("channel")
@dataclass(frozen=True)
class Channel(AbstractPattern):
    """Whole slices along ``dim``: dim 0 = output channels / neurons / filters, dim 1 = input channels.

    A slice's score is the sum of its element scores (with magnitude scores, its L1 or squared L2 norm).
    """

    dim: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 0:
            raise ConfigError("pattern", f"channel:{self.dim}", "channel dim must be a non-negative integer")

    def validate(self, shape: torch.Size, where: str) -> None:
        if self.dim >= len(shape):
            raise MaskError(f"{where}: channel dim {self.dim} out of range for shape {tuple(shape)}")

    def num_units(self, shape: torch.Size) -> int:
        return int(shape[self.dim])

    def unit_scores(self, scores: Tensor) -> Tensor:
        return scores.float().transpose(0, self.dim).reshape(scores.shape[self.dim], -1).sum(1)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        view = [1] * len(shape)
        view[self.dim] = shape[self.dim]
        return keep.reshape(view).expand(shape).clone()

    def shorthand(self) -> str:
        return "channel" if self.dim == 0 else f"channel:{self.dim}"


_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_CHANNEL_RE = re.compile(r"^\s*(?:channel|row|filter)s?\s*(?::\s*(\d+))?\s*$")


def parse_pattern(spec: object) -> AbstractPattern:
    """The one place where pattern shorthands are parsed: "unstructured", "2:4", "4x4", "channel", "channel:1"."""
    if isinstance(spec, AbstractPattern):
        return spec
    if isinstance(spec, dict):
        from prunekit.config import build_component

        return build_component(PATTERNS, spec, "pattern")
    if not isinstance(spec, str):
        raise ConfigError("pattern", spec, 'use "unstructured", "N:M" (e.g. "2:4"), "RxC" (e.g. "4x4") or "channel[:dim]"')
    if spec.strip() in ("unstructured", "dense", ""):
        return Unstructured()
    if m := _NM_RE.match(spec):
        return NM(int(m.group(1)), int(m.group(2)))
    if m := _BLOCK_RE.match(spec):
        return Block(int(m.group(1)), int(m.group(2)))
    if m := _CHANNEL_RE.match(spec):
        return Channel(int(m.group(1) or 0))
    if spec in PATTERNS:
        return PATTERNS.get(spec)()
    PATTERNS.get(spec)  # raises with did-you-mean
    raise AssertionError("unreachable")
