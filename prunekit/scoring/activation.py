"""Activation-based unit criteria, collected through scoped forward hooks over the calibration data.

Every criterion here observes each target's unit activations ``a`` (the target module's output, or that of
``observe[target fqn]``, e.g. the BatchNorm after a conv), after an optional ``nonlinearity`` (default ``relu``,
applied to the observed output: set ``none`` when the observed module already ends in the nonlinearity).
A unit of a conv is a channel: its observations are all spatial positions of all samples; a unit of a Linear
layer is an output feature, observed at every sample / token.

All produce one score per output unit, spread over that unit's weights: use them with ``pattern: channel``.
They do not look at the next layer, so they are fooled by units that are active but feed nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.scoring._calibration import observe_outputs, sites_for, warn_unobserved
from prunekit.scoring._reduce import per_sample_view, positions_view, spread_units
from prunekit.scoring.base import SCORERS, AbstractScorer, Requirement, ScoreContext, Target

Nonlinearity = Literal["relu", "none"]
_REQ: frozenset[Requirement] = frozenset({"activations"})


@dataclass
class UnitMoments:
    """Streaming per-unit statistics over all observations (float64, Chan et al.'s pairwise mean/variance update)."""

    count: int
    mean: Tensor
    m2: Tensor
    zeros: Tensor
    near_zero: Tensor
    abs_sum: Tensor

    @property
    def variance(self) -> Tensor:
        return self.m2 / max(1, self.count)

    @classmethod
    def of(cls, x: Tensor, threshold: float) -> UnitMoments:
        """Statistics of one batch of observations ``x`` (obs, C)."""
        x = x.double()
        mean = x.mean(0)
        return cls(
            x.shape[0],
            mean,
            (x - mean).pow(2).sum(0),
            (x == 0).sum(0).double(),
            (x.abs() <= threshold).sum(0).double(),
            x.abs().sum(0),
        )

    def merge(self, o: UnitMoments) -> UnitMoments:
        n = self.count + o.count
        delta = o.mean - self.mean
        mean = self.mean + delta * (o.count / n)
        m2 = self.m2 + o.m2 + delta.pow(2) * (self.count * o.count / n)
        return UnitMoments(n, mean, m2, self.zeros + o.zeros, self.near_zero + o.near_zero, self.abs_sum + o.abs_sum)


def _act(x: Tensor, nonlinearity: Nonlinearity) -> Tensor:
    return torch.relu(x) if nonlinearity == "relu" else x


def unit_moments(
    ctx: ScoreContext, targets: Sequence[Target], observe: Mapping[str, str], nonlinearity: Nonlinearity, threshold: float = 0.0
) -> dict[str, UnitMoments]:
    """:class:`UnitMoments` of every target's unit activations over the calibration set."""
    sites = sites_for(ctx.model, targets, observe)
    acc: dict[str, UnitMoments] = {}

    def add(batch: Any, outs: dict[str, Tensor], model_out: Any) -> None:
        for k, out in outs.items():
            m = UnitMoments.of(positions_view(_act(out, nonlinearity), sites[k].channel_dim), threshold)
            acc[k] = acc[k].merge(m) if k in acc else m

    observe_outputs(ctx, sites, add)
    warn_unobserved(targets, acc, "activation")
    return acc


def _check_common(nonlinearity: str) -> None:
    if nonlinearity not in ("relu", "none"):
        raise ConfigError("scorer.nonlinearity", nonlinearity, "allowed: relu, none")


def _unit_score(target: Target, stats: Mapping[str, Any]) -> Tensor:
    w = target.weight
    unit = stats["units"].get(target.key)
    if unit is None:
        unit = torch.zeros(w.shape[0])
    return spread_units(unit.float(), w.shape, 0)


class _UnitActivationScorer(AbstractScorer):
    """Shared part of the per-unit activation criteria: the ``nonlinearity`` check, scores spread over each unit's
    weights, and (for criteria computed from :class:`UnitMoments`) collection through :func:`unit_moments`.

    Subclasses are frozen dataclasses declaring the fields ``nonlinearity`` and ``observe``; moment-based ones
    implement :meth:`unit_values`, others override :meth:`collect`.
    """

    requires: ClassVar[frozenset[Requirement]] = _REQ
    nonlinearity: Nonlinearity
    observe: dict[str, str]

    def __post_init__(self) -> None:
        _check_common(self.nonlinearity)

    @property
    def moment_threshold(self) -> float:
        """``|a| <= threshold`` counts as near zero in :attr:`UnitMoments.near_zero`."""
        return 0.0

    def unit_values(self, m: UnitMoments) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement unit_values or collect")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        m = unit_moments(ctx, targets, self.observe, self.nonlinearity, self.moment_threshold)
        return {"units": {k: self.unit_values(v) for k, v in m.items()}}

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        return _unit_score(target, stats)


@SCORERS.register("apoz")
@dataclass(frozen=True)
class APoZ(_UnitActivationScorer):
    """Average Percentage of Zeros (Hu et al. 2016): units whose ReLU output is mostly zero go first.

    ``APoZ_k = #{(n, m) : relu(a)_{n,m,k} = 0} / (N M)`` over samples ``n`` and positions ``m``; the score is
    ``1 - APoZ_k`` (higher = keep). A dead unit scores 0. Blind to what the unit's output is worth downstream.

    Hu, Peng, Tai, Tang 2016, "Network Trimming: A Data-Driven Neuron Pruning Approach towards Efficient Deep
    Architectures", arXiv:1607.03250.
    """

    nonlinearity: Nonlinearity = "relu"
    observe: dict[str, str] = field(default_factory=dict)

    def unit_values(self, m: UnitMoments) -> Tensor:
        return 1.0 - m.zeros / max(1, m.count)


@SCORERS.register("near_zero")
@dataclass(frozen=True)
class NearZero(_UnitActivationScorer):
    """Fraction of near-zero outputs: ``1 - #{|a| <= threshold} / (N M)`` per unit (APoZ with a tolerance).

    Generalises APoZ to activations that are small rather than exactly zero (GELU, SiLU, or a pre-activation
    observed with ``nonlinearity: none``).

    Hu et al. 2016 (APoZ, arXiv:1607.03250), with an absolute tolerance ``threshold``.
    """

    threshold: float = 1e-3
    nonlinearity: Nonlinearity = "relu"
    observe: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.threshold, (int, float)) and self.threshold >= 0):
            raise ConfigError("scorer.threshold", self.threshold, "must be >= 0")

    @property
    def moment_threshold(self) -> float:
        return float(self.threshold)

    def unit_values(self, m: UnitMoments) -> Tensor:
        return 1.0 - m.near_zero / max(1, m.count)


@SCORERS.register("activation_mean")
@dataclass(frozen=True)
class ActivationMean(_UnitActivationScorer):
    """Mean activation magnitude per unit: ``mean_{n,m} |a_{n,m,k}|`` (the mean of the ReLU output by default).

    The "mean activation" baseline of Molchanov et al. 2017: a unit that rarely or weakly fires contributes little
    signal. Fooled by large activations that the next layer ignores.

    Molchanov, Tyree, Karras, Aila, Kautz 2017, "Pruning Convolutional Neural Networks for Resource Efficient
    Inference", ICLR (criterion "mean activation").
    """

    nonlinearity: Nonlinearity = "relu"
    observe: dict[str, str] = field(default_factory=dict)

    def unit_values(self, m: UnitMoments) -> Tensor:
        return m.abs_sum / max(1, m.count)


@SCORERS.register("activation_variance")
@dataclass(frozen=True)
class ActivationVariance(_UnitActivationScorer):
    """Variance of each unit's activation over samples and positions: ``Var_{n,m}(a_{n,m,k})``.

    A unit whose output barely varies carries little information; a constant output can be folded into the next
    layer's bias, so variance 0 means removable at no cost (for a linear next layer). Ranks units as the
    "standard deviation of activation" baseline of Molchanov et al. 2017 does.

    Molchanov, Tyree, Karras, Aila, Kautz 2017, "Pruning Convolutional Neural Networks for Resource Efficient
    Inference", ICLR.
    """

    nonlinearity: Nonlinearity = "relu"
    observe: dict[str, str] = field(default_factory=dict)

    def unit_values(self, m: UnitMoments) -> Tensor:
        return m.variance


def histogram_entropy(values: Tensor, bins: int) -> Tensor:
    """Per column of ``values`` (samples, C): entropy in nats of its histogram over ``bins`` equal-width bins
    spanning that column's own [min, max]. A constant column has entropy 0."""
    v = values.double()
    lo, hi = v.min(0).values, v.max(0).values
    width = (hi - lo) / bins
    idx = torch.where(width > 0, ((v - lo) / torch.where(width > 0, width, 1.0)).floor(), torch.zeros_like(v))
    idx = idx.clamp(0, bins - 1).long()  # (samples, C); the max value falls in the last bin
    counts = torch.zeros(bins, v.shape[1], dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(v))
    p = counts / v.shape[0]
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(0)


@SCORERS.register("activation_entropy")
@dataclass(frozen=True)
class ActivationEntropy(_UnitActivationScorer):
    """Entropy of each unit's pooled activation distribution (Luo & Wu 2017): low entropy = little information.

    Per sample, the unit's activation is averaged over positions (global average pooling); the values over the
    calibration set are binned into ``bins`` equal-width bins over their range, and ``H_k = -sum_i p_i log p_i``
    (nats). A dead or constant unit has ``H = 0``; at most ``log(bins)``. Needs enough calibration samples to fill
    the histogram (the pooled values of every batch are kept until scoring: samples x units floats per layer).

    Luo, Wu 2017, "An Entropy-based Pruning Method for CNN Compression", arXiv:1706.05791.
    """

    bins: int = 32
    nonlinearity: Nonlinearity = "relu"
    observe: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.bins, int) and self.bins >= 2):
            raise ConfigError("scorer.bins", self.bins, "must be an integer >= 2")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        sites = sites_for(ctx.model, targets, self.observe)
        pooled: dict[str, list[Tensor]] = {}

        def add(batch: Any, outs: dict[str, Tensor], model_out: Any) -> None:
            for k, out in outs.items():
                pooled.setdefault(k, []).append(per_sample_view(_act(out, self.nonlinearity), sites[k].channel_dim))

        observe_outputs(ctx, sites, add)
        warn_unobserved(targets, pooled, "activation")
        return {"units": {k: histogram_entropy(torch.cat(v), self.bins) for k, v in pooled.items()}, "max": math.log(self.bins)}
