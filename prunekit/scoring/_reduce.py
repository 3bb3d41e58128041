"""Free functions shared by the criteria: unit views, spreading unit scores over elements, normalisation.

Nothing here is a scorer; criteria reuse these functions instead of inheriting from each other (STYLE P12).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError

LayerNorm = Literal["none", "l2"]

# Modules whose outputs carry channels on dim 1: (N, C, *spatial). Every other module is taken to put its
# features on the last dim: (..., C), as nn.Linear, nn.LayerNorm and attention projections do.
_CHANNEL_FIRST: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
)


def unit_matrix(w: Tensor, dim: int = 0) -> Tensor:
    """``w`` as a float matrix with one row per unit along ``dim``: shape (w.shape[dim], numel / w.shape[dim])."""
    if w.dim() == 0:
        raise ConfigError("scorer", tuple(w.shape), "a unit-level criterion needs a tensor with at least 1 dim")
    if dim >= w.dim():
        raise ConfigError("scorer.dim", dim, f"out of range for a tensor of shape {tuple(w.shape)}")
    return w.detach().float().transpose(0, dim).reshape(w.shape[dim], -1)


def spread_units(unit_scores: Tensor, shape: torch.Size, dim: int = 0) -> Tensor:
    """Element scores shaped ``shape`` from one score per unit along ``dim``: ``s_e = s_unit / (elements per unit)``.

    The Channel(dim) pattern sums element scores over a unit, so it recovers ``unit_scores`` exactly (up to float
    rounding). Unit-level criteria are therefore meant for ``pattern: channel`` (``channel:<dim>``); with a finer
    pattern every element of a unit ties with the others.
    """
    n_units = int(shape[dim])
    if unit_scores.shape != (n_units,):
        raise ConfigError("scorer", tuple(unit_scores.shape), f"expected one score per unit ({n_units}) along dim {dim}")
    per_unit = max(1, int(torch.Size(shape).numel()) // max(1, n_units))
    view = [1] * len(shape)
    view[dim] = n_units
    return (unit_scores.float() / per_unit).reshape(view).expand(shape).clone()


def channel_dim_of(module: nn.Module) -> int:
    """Dim of ``module``'s output that indexes its units: 1 for conv/norm-over-channels layers, else -1."""
    return 1 if isinstance(module, _CHANNEL_FIRST) else -1


def positions_view(out: Tensor, channel_dim: int) -> Tensor:
    """(samples x positions, C): every spatial position / token of every sample is one observation of each unit."""
    x = out.detach().float()
    if x.dim() == 1:
        return x.reshape(1, -1)
    if channel_dim == 1 and x.dim() > 2:
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1])


def per_sample_view(out: Tensor, channel_dim: int) -> Tensor:
    """(samples, C): each unit's response per sample, averaged over spatial positions / tokens (global pooling)."""
    x = out.detach().float()
    if x.dim() == 1:
        return x.reshape(1, -1)
    if channel_dim == 1 and x.dim() > 2:
        x = x.movedim(1, -1)
    if x.dim() > 2:
        x = x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)
    return x


def normalize_layer(scores: Tensor, how: LayerNorm) -> Tensor:
    """Per-layer rescaling of unit scores. ``"l2"``: ``s / ||s||_2`` (Molchanov et al. 2017, eq. 8), so that
    layers of different depth compete on equal terms under a global allocator."""
    if how == "none":
        return scores
    norm = scores.norm()
    return scores / norm if norm > 0 else scores


def greedy_elimination(
    similarity: Tensor, strength: Tensor, redundant: Tensor | None = None
) -> tuple[Tensor, list[int], list[int]]:
    """Scores that reproduce a greedy redundancy elimination: the first unit eliminated gets the lowest score.

    Repeatedly take the most similar pair ``(i, j)`` among the units still present (``similarity`` is symmetric,
    the diagonal ignored) and eliminate the one with the smaller ``strength`` (ties: the higher index); its score is
    ``1 - similarity(i, j)`` and its partner the unit that stays. Units flagged ``redundant`` (e.g. constant units,
    foldable into a bias) go first, with score 0 and partner -1. Scores are made non-decreasing along the
    elimination order, so ranking by score is the elimination order; the last unit standing scores
    ``max(2, last score)`` (2 is the largest possible ``1 - cosine``).

    Returns ``(scores (n,), elimination order, partner of each eliminated unit)``.
    """
    n = similarity.shape[0]
    sim = similarity.detach().double().clone()
    sim.fill_diagonal_(float("-inf"))
    alive = torch.ones(n, dtype=torch.bool)
    order: list[int] = []
    partner: list[int] = []
    raw: list[float] = []
    if redundant is not None:
        for i in torch.nonzero(redundant).flatten().tolist():
            order.append(int(i))
            partner.append(-1)
            raw.append(0.0)
            alive[i] = False
            sim[i, :] = float("-inf")
            sim[:, i] = float("-inf")
    strength = strength.detach().double()
    # Row maxima are kept up to date incrementally: only rows whose best partner was just eliminated are
    # recomputed, so the whole elimination costs about O(n^2) instead of O(n^3).
    row_max, row_arg = sim.max(1)
    while int(alive.sum()) > 1:
        i = int(torch.argmax(row_max))
        j = int(row_arg[i])
        s = float(sim[i, j])
        si, sj = float(strength[i]), float(strength[j])
        drop, stay = (j, i) if (sj < si or (sj == si and j > i)) else (i, j)
        order.append(drop)
        partner.append(stay)
        raw.append(1.0 - s)
        alive[drop] = False
        sim[drop, :] = float("-inf")
        sim[:, drop] = float("-inf")
        row_max[drop] = float("-inf")
        stale = torch.nonzero((row_arg == drop) & alive).flatten()
        if stale.numel():
            row_max[stale], row_arg[stale] = sim[stale].max(1)
    out = torch.full((n,), 2.0, dtype=torch.float64)
    running = float("-inf")
    for u, r in zip(order, raw):
        running = max(running, r)
        out[u] = running
    last = torch.nonzero(alive).flatten()
    if last.numel():
        out[last] = max(2.0, running)
    return out.float(), order, partner
