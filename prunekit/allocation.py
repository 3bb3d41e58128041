"""Allocation: how many units each tensor loses so that the whole reaches the target sparsity.

An allocator sees one :class:`AllocationItem` per target (its shape, unit count, lazily computed unit scores and
an optional fixed sparsity from a per-layer override) and returns each target's *unit* sparsity. The pattern
then chooses which units. Targets with a fixed sparsity keep it; the target applies to the others.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.registry import Registry
from prunekit.select import ScoreFn, as_tensor, global_prune_counts

ALLOCATORS: Registry[type[AbstractAllocator]] = Registry("allocator")


@dataclass
class AllocationItem:
    key: str
    shape: torch.Size
    num_units: int
    unit_scores: ScoreFn
    fixed: float | None = None


def _check_cap(cap: float | None) -> None:
    if cap is not None and not 0.0 <= cap <= 1.0:
        raise ConfigError("allocator.max_layer_sparsity", cap, "must be in [0, 1]")


def round_counts(ideal: Sequence[float], total: int, upper: Sequence[int]) -> list[int]:
    """Integer counts close to ``ideal`` that sum to ``total`` (largest remainder), each within [0, upper]."""
    counts = [min(max(math.floor(x), 0), u) for x, u in zip(ideal, upper, strict=True)]
    rest = total - sum(counts)
    order = sorted(range(len(ideal)), key=lambda i: (-(ideal[i] - math.floor(ideal[i])), i))
    while rest > 0 and any(c < u for c, u in zip(counts, upper, strict=True)):
        for i in order:
            if rest > 0 and counts[i] < upper[i]:
                counts[i] += 1
                rest -= 1
    return counts


class AbstractAllocator(ABC):
    """Interface: ``allocate(items, sparsity) -> {key: unit sparsity}``."""

    registry_name: str = ""

    @abstractmethod
    def allocate(self, items: Sequence[AllocationItem], sparsity: float) -> dict[str, float]:
        """Per-target unit sparsity for the free (non-fixed) items; fixed items keep their value."""

    @staticmethod
    def _split(items: Sequence[AllocationItem]) -> tuple[dict[str, float], list[AllocationItem]]:
        fixed = {it.key: float(it.fixed) for it in items if it.fixed is not None}
        return fixed, [it for it in items if it.fixed is None]


@ALLOCATORS.register("uniform")
@dataclass(frozen=True)
class Uniform(AbstractAllocator):
    """Layer-wise: every tensor gets the target sparsity."""

    def allocate(self, items: Sequence[AllocationItem], sparsity: float) -> dict[str, float]:
        fixed, free = self._split(items)
        return {**fixed, **{it.key: sparsity for it in free}}


def _caps(free: Sequence[AllocationItem], cap: float | None) -> list[int]:
    # None: keep at least one unit per tensor, so a global threshold can never empty a layer.
    return [it.num_units - 1 if cap is None else math.floor(cap * it.num_units) for it in free]


def capped_global_counts(score_fns: Sequence[ScoreFn], sizes: Sequence[int], n_prune: int, caps: Sequence[int]) -> list[int]:
    """Global lowest-``n_prune`` selection where tensor ``i`` loses at most ``caps[i]`` units (water-filling).

    Tensors that would exceed their cap are clamped to it and removed from the pool; the remainder is selected
    globally among the others, until no tensor exceeds its cap.
    """
    n_prune = min(n_prune, sum(caps))
    counts = [0] * len(score_fns)
    clamped: set[int] = set()
    while True:
        pool = [i for i in range(len(score_fns)) if i not in clamped]
        budget = n_prune - sum(caps[i] for i in clamped)
        got = global_prune_counts([score_fns[i] for i in pool], budget)
        over = [i for i, c in zip(pool, got, strict=True) if c > caps[i]]
        if not over:
            for i, c in zip(pool, got, strict=True):
                counts[i] = c
            for i in clamped:
                counts[i] = caps[i]
            return counts
        clamped.update(over)


@ALLOCATORS.register("global")
@dataclass(frozen=True)
class Global(AbstractAllocator):
    """One threshold across all tensors: the globally lowest-scoring units go (Han 2015's global variant).

    Computed without concatenating scores (see :func:`prunekit.select.global_prune_counts`).
    ``max_layer_sparsity`` caps any one tensor; the default (None) keeps at least one unit in every tensor.
    """

    max_layer_sparsity: float | None = None

    def __post_init__(self) -> None:
        _check_cap(self.max_layer_sparsity)

    def allocate(self, items: Sequence[AllocationItem], sparsity: float) -> dict[str, float]:
        fixed, free = self._split(items)
        sizes = [it.num_units for it in free]
        n_prune = round(sparsity * sum(sizes))
        counts = capped_global_counts([it.unit_scores for it in free], sizes, n_prune, _caps(free, self.max_layer_sparsity))
        return {**fixed, **{it.key: c / it.num_units for it, c in zip(free, counts, strict=True)}}


def lamp_scores(scores: Tensor, power: float = 2.0) -> Tensor:
    """LAMP score (Lee et al. 2021, "Layer-adaptive sparsity for the magnitude-based pruning", Eq. 2).

    With units sorted so that ``s[u] <= s[v]`` for ``u < v`` and ``s = |w|^power``:
    ``score(u) = s[u] / sum_{v >= u} s[v]``. Units already pruned (score -inf) stay at -inf.
    """
    flat = scores.reshape(-1).float()
    dead = torch.isneginf(flat)
    s = torch.where(dead, torch.zeros_like(flat), flat.abs().pow(power))
    order = torch.sort(s, stable=True).indices
    sorted_s = s[order]
    suffix = sorted_s.flip(0).cumsum(0).flip(0)  # suffix[u] = sum_{v >= u} sorted_s[v]
    lamp_sorted = sorted_s / suffix.clamp_min(torch.finfo(torch.float32).tiny)
    out = torch.empty_like(s)
    out[order] = lamp_sorted
    return torch.where(dead, torch.full_like(out, float("-inf")), out)


@ALLOCATORS.register("lamp")
@dataclass(frozen=True)
class LAMP(AbstractAllocator):
    """LAMP (Lee et al. 2021): global threshold on layer-normalised scores ``s_u / sum_{v>=u} s_v``.

    ``power=2`` with the default magnitude scorer (p=1) is the paper's ``w_u^2 / sum_{v>=u} w_v^2``.
    """

    power: float = 2.0
    max_layer_sparsity: float | None = None

    def __post_init__(self) -> None:
        _check_cap(self.max_layer_sparsity)

    def allocate(self, items: Sequence[AllocationItem], sparsity: float) -> dict[str, float]:
        fixed, free = self._split(items)
        cache: dict[str, Tensor] = {}

        def fn(it: AllocationItem) -> Callable[[], Tensor]:
            def get() -> Tensor:
                if it.key not in cache:
                    cache[it.key] = lamp_scores(as_tensor(it.unit_scores()), self.power)
                return cache[it.key]

            return get

        sizes = [it.num_units for it in free]
        counts = capped_global_counts(
            [fn(it) for it in free], sizes, round(sparsity * sum(sizes)), _caps(free, self.max_layer_sparsity)
        )
        return {**fixed, **{it.key: c / it.num_units for it, c in zip(free, counts, strict=True)}}


def erk_densities(
    shapes: Sequence[torch.Size], sizes: Sequence[int], density: float, kernel: bool, power: float = 1.0
) -> list[float]:
    """Erdős–Rényi(-Kernel) densities (Mocanu 2018; Evci et al. 2020, "Rigging the Lottery", Sec. 3).

    ``d_l = eps * ((n_out + n_in + k_h + k_w) / (n_out * n_in * k_h * k_w))^power`` (ERK; ER drops the kernel
    terms), with ``eps`` chosen so the total density is ``density``. A layer whose density would exceed 1 is
    made dense and ``eps`` is solved again over the rest (dense-layer fallback).
    """
    raw = []
    for shp in shapes:
        dims = list(shp) if kernel else list(shp[:2])
        raw.append((sum(dims) / math.prod(dims)) ** power if len(dims) > 1 else 1.0)
    dense: set[int] = set()
    while True:
        # Non-dense layers share what the dense ones leave: sum_l d_l * n_l = density * sum_l n_l.
        rhs = density * sum(sizes) - sum(sizes[i] for i in dense)
        divisor = sum(raw[i] * n for i, n in enumerate(sizes) if i not in dense)
        if divisor == 0:
            return [1.0] * len(sizes)
        eps = rhs / divisor
        over = [i for i in range(len(sizes)) if i not in dense and raw[i] * eps > 1.0]
        if not over:
            return [1.0 if i in dense else raw[i] * eps for i in range(len(sizes))]
        dense.update(over)


def _erdos_renyi_allocate(items: Sequence[AllocationItem], sparsity: float, kernel: bool, power: float) -> dict[str, float]:
    fixed, free = AbstractAllocator._split(items)
    sizes = [it.num_units for it in free]
    dens = erk_densities([it.shape for it in free], sizes, 1.0 - sparsity, kernel, power)
    total = round(sparsity * sum(sizes))
    counts = round_counts([(1 - d) * n for d, n in zip(dens, sizes, strict=True)], total, sizes)
    return {**fixed, **{it.key: c / it.num_units for it, c in zip(free, counts, strict=True)}}


@ALLOCATORS.register("erk")
@dataclass(frozen=True)
class ERK(AbstractAllocator):
    """Erdős–Rényi-Kernel densities (Evci 2020): d_l ∝ (n_out+n_in+k_h+k_w)/(n_out·n_in·k_h·k_w), dense fallback."""

    power: float = 1.0

    def allocate(self, items: Sequence[AllocationItem], sparsity: float) -> dict[str, float]:
        return _erdos_renyi_allocate(items, sparsity, kernel=True, power=self.power)


@ALLOCATORS.register("er")
@dataclass(frozen=True)
class ER(AbstractAllocator):
    """Erdős–Rényi densities (Mocanu 2018): d_l ∝ (n_out+n_in)/(n_out·n_in), dense fallback."""

    power: float = 1.0

    def allocate(self, items: Sequence[AllocationItem], sparsity: float) -> dict[str, float]:
        return _erdos_renyi_allocate(items, sparsity, kernel=False, power=self.power)
