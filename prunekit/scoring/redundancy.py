"""Redundancy criteria: units whose activations (or weight vectors) duplicate another unit's, and folding them.

Of a highly similar pair, one unit is redundant: the greedy elimination of
:func:`prunekit.scoring._reduce.greedy_elimination` removes, pair by pair, the weaker unit of the most similar
remaining pair, and the scores reproduce that order (lowest = eliminated first).

Folding rule (exact for a linear next layer). If unit ``j``'s activation is affine in unit ``i``'s,
``a_j = alpha a_i + beta`` (least squares over the calibration data, :func:`affine_fit`), then for a next layer
``y = W a + b``::

    W[:, i] += alpha W[:, j];   b += beta W[:, j];   W[:, j] = 0

leaves ``y`` unchanged wherever the relation holds, so unit ``j`` can be removed (:func:`fold_unit_`). A constant
unit (``a_j = beta``) folds into the bias alone. For a Conv2d next layer the same rule holds kernel-wise, with
``b += beta * sum_{kh,kw} W[:, j]``; it is exact when ``beta = 0`` or the conv has no zero padding (padded
borders see 0, not ``beta``). Folds are applied in elimination order, so chains (j into i, later i into k) compose.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.scoring._calibration import observe_outputs, sites_for, warn_unobserved
from prunekit.scoring._reduce import greedy_elimination, positions_view, spread_units
from prunekit.scoring.activation import Nonlinearity
from prunekit.scoring.base import SCORERS, AbstractScorer, Requirement, ScoreContext, Target


@dataclass(frozen=True)
class Fold:
    """Remove unit ``drop`` by folding ``alpha * a_keep + beta`` into the next layer (``keep = -1``: bias only)."""

    drop: int
    keep: int
    alpha: float
    beta: float


def affine_fit(a_keep: Tensor, a_drop: Tensor) -> tuple[float, float]:
    """Least-squares ``(alpha, beta)`` with ``a_drop ~ alpha * a_keep + beta`` (1-D tensors of observations)."""
    x, y = a_keep.double().flatten(), a_drop.double().flatten()
    xm, ym = x.mean(), y.mean()
    var = (x - xm).pow(2).sum()
    alpha = float(((x - xm) * (y - ym)).sum() / var) if var > 0 else 0.0
    return alpha, float(ym - alpha * xm)


@torch.no_grad()
def fold_unit_(next_layer: nn.Module, drop: int, keep: int, alpha: float, beta: float) -> None:
    """Apply the folding rule of the module docstring to ``next_layer`` (Linear or Conv2d) in place."""
    w = next_layer.weight
    if not isinstance(next_layer, (nn.Linear, nn.Conv2d)) or not isinstance(w, Tensor):
        raise ConfigError("next_layer", type(next_layer).__name__, "folding supports a Linear or Conv2d next layer")
    if isinstance(next_layer, nn.Conv2d) and next_layer.groups != 1:
        raise ConfigError("next_layer", "groups", "folding needs a Conv2d with groups=1")
    col = w[:, drop].clone()  # (out,) or (out, kh, kw)
    if beta != 0.0:
        if next_layer.bias is None:
            raise ConfigError("next_layer.bias", None, "folding a unit with a non-zero offset needs a bias in the next layer")
        if isinstance(next_layer, nn.Conv2d) and any(p != 0 for p in _padding(next_layer)):
            warnings.warn("folding into a zero-padded conv is exact only away from the borders", stacklevel=2)
        next_layer.bias += beta * (col if col.dim() == 1 else col.sum((1, 2)))
    if keep >= 0:
        w[:, keep] += alpha * col
    w[:, drop] = 0.0


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):
        return (0,) if conv.padding == "valid" else (1,)
    return tuple(conv.padding)


def apply_folds_(next_layer: nn.Module, folds: Sequence[Fold]) -> None:
    """Apply ``folds`` (in elimination order) to ``next_layer``."""
    for f in folds:
        fold_unit_(next_layer, f.drop, f.keep, f.alpha, f.beta)


@dataclass
class _Cov:
    """Streaming mean and co-moment matrix (float64), merged pairwise (Chan et al.)."""

    n: int
    mean: Tensor
    comoment: Tensor

    @classmethod
    def of(cls, x: Tensor) -> _Cov:
        x = x.double()
        mean = x.mean(0)
        xc = x - mean
        return cls(x.shape[0], mean, xc.T @ xc)

    def merge(self, o: _Cov) -> _Cov:
        n = self.n + o.n
        d = o.mean - self.mean
        return _Cov(n, self.mean + d * (o.n / n), self.comoment + o.comoment + torch.outer(d, d) * (self.n * o.n / n))


def _constant(var: Tensor) -> Tensor:
    return var <= 1e-12 * max(1.0, float(var.max()) if var.numel() else 1.0)


@SCORERS.register("activation_correlation")
@dataclass(frozen=True)
class ActivationCorrelation(AbstractScorer):
    """Redundancy by correlation of unit activations: of the most correlated pair, the weaker unit goes first.

    ``rho_ij = Cov(a_i, a_j) / (sd_i sd_j)`` over all samples and positions of the calibration data (after
    ``nonlinearity``, of the target's output or of ``observe[target fqn]``). Greedy elimination on ``|rho|``
    (a negative correlation is as foldable as a positive one), dropping the lower-variance unit of each pair;
    constant units (variance 0, e.g. dead ReLUs) are redundant outright (they fold into the next bias) and go first.
    ``stats["folds"][key]`` lists the :class:`Fold` of each eliminated unit in order, with ``alpha = Cov_ij / Var_i``
    and ``beta = mean_j - alpha mean_i``; apply the first ``k`` with :func:`apply_folds_` to the next layer before
    removing those ``k`` units. Keeps a units x units float64 co-moment matrix per target while collecting.
    One score per output unit: use with ``pattern: channel``.

    Correlation-based neuron pruning: Sietsma & Dow 1991, "Creating artificial neural networks that generalize",
    Neural Networks 4(1); the exact-duplicate folding is the "data-free" merge of Srinivas & Babu 2015 ("Data-free
    parameter pruning for deep neural networks", BMVC) applied to measured activations.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"activations"})
    nonlinearity: Nonlinearity = "relu"
    observe: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nonlinearity not in ("relu", "none"):
            raise ConfigError("scorer.nonlinearity", self.nonlinearity, "allowed: relu, none")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        sites = sites_for(ctx.model, targets, self.observe)
        acc: dict[str, _Cov] = {}

        def add(batch: Any, outs: dict[str, Tensor], model_out: Any) -> None:
            for k, out in outs.items():
                a = torch.relu(out) if self.nonlinearity == "relu" else out
                c = _Cov.of(positions_view(a, sites[k].channel_dim))
                acc[k] = acc[k].merge(c) if k in acc else c

        observe_outputs(ctx, sites, add)
        warn_unobserved(targets, acc, "activation")
        units: dict[str, Tensor] = {}
        folds: dict[str, list[Fold]] = {}
        for k, c in acc.items():
            cov = c.comoment / max(1, c.n)
            var = torch.diagonal(cov).clamp_min(0.0)
            const = _constant(var)
            sd = var.sqrt()
            denom = torch.outer(sd, sd)
            rho = torch.where(denom > 0, cov / torch.where(denom > 0, denom, 1.0), torch.zeros_like(cov))
            scores, order, partner = greedy_elimination(rho.abs(), sd, const)
            units[k] = scores
            fk = []
            for u, p in zip(order, partner):
                if p < 0:
                    fk.append(Fold(u, -1, 0.0, float(c.mean[u])))
                else:
                    alpha = float(cov[p, u] / var[p]) if var[p] > 0 else 0.0
                    fk.append(Fold(u, p, alpha, float(c.mean[u] - alpha * c.mean[p])))
            folds[k] = fk
        return {"units": units, "folds": folds}

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        w = target.weight
        unit = stats["units"].get(target.key)
        return spread_units(unit if unit is not None else torch.zeros(w.shape[0]), w.shape, 0)


def unit_vectors(target: Target, with_bias: bool) -> Tensor:
    """Each output unit's fan-in weights as a row (with its bias appended when ``with_bias`` and there is one)."""
    w = target.weight.detach().float()
    m = w.reshape(w.shape[0], -1)
    b = getattr(target.module, "bias", None)
    if with_bias and target.name == "weight" and isinstance(b, Tensor) and b.shape == (w.shape[0],):
        m = torch.cat([m, b.detach().float()[:, None]], 1)
    return m


@SCORERS.register("weight_cosine")
@dataclass(frozen=True)
class WeightCosine(AbstractScorer):
    """Redundancy by cosine similarity of units' weight vectors: of the most similar pair, the smaller goes first.

    ``cos_ij = <w_i, w_j> / (||w_i|| ||w_j||)`` over each output unit's fan-in weights (and bias, ``with_bias``).
    Greedy elimination on the signed cosine, dropping the smaller-norm unit of each pair; all-zero units go first.
    For a ReLU unit, ``w_j = c w_i`` with ``c > 0`` (bias included) means ``a_j = c a_i`` exactly, so ``j`` folds
    into ``i`` with ``alpha = c`` (:func:`fold_unit_`). Data-free, hence fooled by dead units whose weights are
    unique (they look essential) and by similar units whose inputs differ in practice. Unit score: use with
    ``pattern: channel``.

    Srinivas, Babu 2015, "Data-free parameter pruning for deep neural networks", BMVC (merging similar neurons into
    their partner's outgoing weights); here the similarity is the scale-invariant cosine of the fan-in vectors.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights"})
    with_bias: bool = True

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        m = unit_vectors(target, self.with_bias).double()
        norms = m.norm(dim=1)
        zero = norms == 0
        unit = m / torch.where(zero, 1.0, norms)[:, None]
        scores, _, _ = greedy_elimination(unit @ unit.T, norms, zero)
        return spread_units(scores, target.weight.shape, 0)
