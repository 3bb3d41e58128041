"""Data-free unit criteria: L_p norms (L0 = non-zero count) of weight groups, and FPGM geometric-median redundancy.

Both score whole units (slices along ``dim``, by default output neurons / filters) and spread the unit score over
the unit's elements (:func:`prunekit.scoring._reduce.spread_units`), so they are meant for ``pattern: channel``
(``channel:<dim>`` for another dim): the Channel pattern then recovers the unit score exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.scoring._reduce import spread_units, unit_matrix
from prunekit.scoring.base import SCORERS, AbstractScorer, Requirement, ScoreContext, Target


def unit_lp_norms(w: Tensor, p: float, dim: int = 0) -> Tensor:
    """``||w_u||_p`` per unit along ``dim``; ``p = 0`` counts non-zeros, ``p = inf`` takes the largest magnitude."""
    m = unit_matrix(w, dim)
    if p == 0:
        return (m != 0).sum(1).float()
    norms: Tensor = torch.linalg.vector_norm(m, ord=p, dim=1)
    return norms


def _check_dim(dim: int) -> None:
    if not isinstance(dim, int) or dim < 0:
        raise ConfigError("scorer.dim", dim, "must be a non-negative integer (0 = output units, 1 = input channels)")


@SCORERS.register("unit_norm")
@dataclass(frozen=True)
class UnitNorm(AbstractScorer):
    """L_p norm of each weight group (unit): L1 (Li et al. 2017), L2 (He et al. 2018), L0 = non-zero count.

    Unit score ``s_u = ||W_u||_p`` with ``W_u`` the slice ``u`` along ``dim`` (a filter, a neuron's fan-in row);
    ``p = 0`` gives ``||W_u||_0 = #{e in u : w_e != 0}``, which after unstructured pruning removes the emptiest units
    first. Spread as ``s_u / |u|`` over the unit's elements; use with ``pattern: channel`` (``channel:<dim>``).
    For single weights use ``magnitude`` (|w|^p), whose Channel sum is ``||W_u||_p^p``.

    Li, Kadav, Durdanovic, Samet, Graf 2017, "Pruning Filters for Efficient ConvNets" (L1);
    He, Kang, Dong, Fu, Yang 2018, "Soft Filter Pruning" (L2).
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights"})
    p: float = 2.0
    dim: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.p, (int, float)) and self.p >= 0):
            raise ConfigError("scorer.p", self.p, "must be >= 0 (0 = non-zero count, 1 = L1, 2 = L2, inf = max)")
        _check_dim(self.dim)

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        w = target.weight
        return spread_units(unit_lp_norms(w, self.p, self.dim), w.shape, self.dim)


def fpgm_distances(w: Tensor, p: float = 2.0, dim: int = 0) -> Tensor:
    """Per unit, ``sum_j ||W_u - W_j||_p`` over all units ``j`` of the layer (small = near the geometric median)."""
    m = unit_matrix(w, dim).double()
    return torch.cdist(m[None], m[None], p=p)[0].sum(1).float()


@SCORERS.register("fpgm")
@dataclass(frozen=True)
class FPGM(AbstractScorer):
    """Filter pruning via geometric median (He et al. 2019): units nearest the layer's geometric median go first.

    The geometric median ``x* = argmin_x sum_j ||x - W_j||_2`` of a layer's filters is the point the others
    represent best; a filter near it can be replaced by the rest. As in the paper, the distance to ``x*`` is ranked
    through ``s_u = sum_j ||W_u - W_j||_p`` (the filter minimising it is the one nearest ``x*``), so low ``s_u`` =
    redundant. Unlike norm criteria it does not favour large filters: a large filter far from the rest is kept, and
    exact duplicates are not singled out (both copies score alike). Unit score, spread over the unit: use with
    ``pattern: channel``.

    He, Liu, Wang, Hu, Yang 2019, "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks
    Acceleration", CVPR.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights"})
    p: float = 2.0
    dim: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.p, (int, float)) and self.p >= 1 and not math.isinf(self.p)):
            raise ConfigError("scorer.p", self.p, "must be a finite number >= 1 (a distance)")
        _check_dim(self.dim)

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        w = target.weight
        return spread_units(fpgm_distances(w, self.p, self.dim), w.shape, self.dim)
