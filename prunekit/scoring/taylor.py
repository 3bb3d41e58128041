"""Loss-aware Taylor criteria: the loss change of removing a weight, a weight group, or a unit's activation.

Removing a weight ``w`` (setting it to 0) changes the loss by ``dL = -g w + 1/2 h w^2 + ...`` (``g = dL/dw``,
``h = d^2L/dw^2``). Molchanov et al. (2019) score the *squared* change per minibatch and average it over
minibatches, so that gradients of opposite sign in different batches do not cancel:

    first order   I_q = mean_b (g_{b,q} w_q)^2
    second order  I_q = mean_b (g_{b,q} w_q - 1/2 h_qq w_q^2)^2          (diagonal Hessian)
    unit / group  I_S = mean_b (sum_{q in S} g_{b,q} w_q - 1/2 h_qq w_q^2)^2

Molchanov et al. (2017) score a unit by its activation ``a`` (a feature map) instead:
``I_k = mean_n | 1/M sum_m a_{n,m,k} dL/da_{n,m,k} |`` over samples ``n`` and the ``M`` positions of map ``k``;
Molchanov et al. (2019) by a gate ``z_k = 1`` on the unit: ``I_k = mean_b (dL_b/dz_k - 1/2 d^2L_b/dz_k^2)^2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.scoring._calibration import observe_outputs_and_grads, per_batch_gradients, sites_for, warn_unobserved
from prunekit.scoring._curvature import HessianEstimate, gate_derivatives, hessian_diagonal
from prunekit.scoring._reduce import LayerNorm, normalize_layer, per_sample_view, positions_view, spread_units, unit_matrix
from prunekit.scoring.base import SCORERS, AbstractScorer, Requirement, ScoreContext, Target

_ESTIMATES = ("exact", "fisher", "hutchinson")


@SCORERS.register("taylor")
@dataclass(frozen=True)
class Taylor(AbstractScorer):
    """Taylor expansion of the loss change per weight or weight group, squared per batch (Molchanov et al. 2019).

    ``order=1``: ``I_q = mean_b (g_{b,q} w_q)^2``; ``order=2`` subtracts the diagonal second-order term:
    ``I_q = mean_b (g_{b,q} w_q - 1/2 h_qq w_q^2)^2`` with ``h`` estimated by ``hessian`` (``fisher`` = mean squared
    per-sample gradient, as in the paper; ``hutchinson``; ``exact`` for small tensors). ``g_b`` is the gradient of
    calibration batch ``b`` alone. ``group="element"`` scores single weights (a Channel pattern then sums
    ``I_q`` over a unit); ``group="unit"`` is the paper's group criterion ``I_S = mean_b (sum_{q in S} t_{b,q})^2``
    for each unit ``S`` along ``dim``, spread over the unit (use with ``pattern: channel``).

    Molchanov, Mallya, Tyree, Frosio, Kautz 2019, "Importance Estimation for Neural Network Pruning", CVPR, eqs. 3-4.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights", "gradients"})
    order: int = 1
    group: Literal["element", "unit"] = "element"
    hessian: HessianEstimate = "fisher"
    probes: int = 4
    seed: int = 0
    dim: int = 0

    def __post_init__(self) -> None:
        if self.order not in (1, 2):
            raise ConfigError("scorer.order", self.order, "allowed: 1, 2")
        if self.group not in ("element", "unit"):
            raise ConfigError("scorer.group", self.group, "allowed: element, unit")
        if self.hessian not in _ESTIMATES:
            raise ConfigError("scorer.hessian", self.hessian, f"allowed: {', '.join(_ESTIMATES)}")
        if not (isinstance(self.probes, int) and self.probes >= 1):
            raise ConfigError("scorer.probes", self.probes, "must be an integer >= 1")
        if not (isinstance(self.dim, int) and self.dim >= 0):
            raise ConfigError("scorer.dim", self.dim, "must be a non-negative integer")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        h = hessian_diagonal(ctx, targets, self.hessian, self.probes, self.seed) if self.order == 2 else {}
        weights = {t.key: t.weight.detach().float() for t in targets}
        first: dict[str, Tensor] = {}
        second: dict[str, Tensor] = {}

        def add(grads: dict[str, Tensor]) -> None:
            for k, g in grads.items():
                x = g if self.group == "element" else unit_matrix(g * weights[k], self.dim).sum(1)  # (units,)
                first[k] = first[k] + x if k in first else x.clone()
                second[k] = second[k] + x * x if k in second else x * x

        n = per_batch_gradients(ctx, targets, add)
        return {"batches": n, "sum": first, "sum_sq": second, "hessian": h}

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        w = target.weight.detach().float()
        n = max(1, int(stats["batches"]))
        s1: Tensor | None = stats["sum"].get(target.key)
        s2: Tensor | None = stats["sum_sq"].get(target.key)
        if s1 is None or s2 is None:
            return torch.zeros_like(w)
        h: Tensor | None = stats["hessian"].get(target.key)
        c = 0.5 * h * w * w if h is not None else torch.zeros_like(w)  # second-order term per weight
        if self.group == "element":
            # mean_b (g_b w - c)^2 = w^2 mean(g_b^2) - 2 w c mean(g_b) + c^2
            out = w * w * s2 / n - 2 * w * c * s1 / n + c * c
            return out.clamp_min(0.0)
        cu = unit_matrix(c, self.dim).sum(1)  # (units,)
        unit = (s2 / n - 2 * cu * s1 / n + cu * cu).clamp_min(0.0)
        return spread_units(unit, w.shape, self.dim)


@SCORERS.register("taylor_activation")
@dataclass(frozen=True)
class TaylorActivation(AbstractScorer):
    """Taylor criterion on unit activations (feature maps): |a * dL/da| (Molchanov et al. 2017, 2019 gates).

    ``formulation="abs_mean"`` (2017, eq. 7): ``I_k = mean_n | 1/M sum_m a_{n,m,k} dL/da_{n,m,k} |`` over samples
    ``n`` and the ``M`` spatial positions / tokens ``m``. ``formulation="squared"`` (2019, a gate after the unit):
    ``I_k = mean_b (sum_{n,m} a_{n,m,k} dL/da_{n,m,k})^2`` over calibration batches ``b``, which equals the
    squared first-order change in loss of zeroing unit ``k`` in batch ``b``. ``normalize="l2"`` divides a layer's
    scores by their L2 norm, as the 2017 paper does before comparing layers.

    ``order=2`` (with ``squared``) is the paper's second-order gate criterion: a gate ``z_k = 1`` multiplies unit
    ``k``'s output (a scoped forward hook) and ``I_k = mean_b (dL_b/dz_k - 1/2 d^2L_b/dz_k^2)^2``, with the exact
    diagonal second derivative (one double-backward per unit and batch); ``dL/dz_k = sum a dL/da``.

    ``a`` is the target module's output, or that of ``observe[target fqn]`` (e.g. the BatchNorm after a conv).
    Observing a pre-ReLU output is equivalent to observing the post-ReLU one, because ``a * 1[a>0] = relu(a)``.
    One score per output unit, spread over the unit's weights: use with ``pattern: channel``.

    Molchanov, Tyree, Karras, Aila, Kautz 2017, "Pruning Convolutional Neural Networks for Resource Efficient
    Inference", ICLR; Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning", CVPR.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"activations", "gradients"})
    formulation: Literal["abs_mean", "squared"] = "abs_mean"
    order: int = 1
    normalize: LayerNorm = "none"
    observe: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.formulation not in ("abs_mean", "squared"):
            raise ConfigError("scorer.formulation", self.formulation, "allowed: abs_mean, squared")
        if self.order not in (1, 2):
            raise ConfigError("scorer.order", self.order, "allowed: 1, 2")
        if self.order == 2 and self.formulation != "squared":
            raise ConfigError("scorer.order", self.order, "the second-order gate criterion needs formulation: squared")
        if self.normalize not in ("none", "l2"):
            raise ConfigError("scorer.normalize", self.normalize, "allowed: none, l2")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        sites = sites_for(ctx.model, targets, self.observe)
        total: dict[str, Tensor] = {}
        count: dict[str, int] = {}
        if self.order == 2:

            def add_gate(key: str, g: Tensor, h: Tensor | None) -> None:
                assert h is not None
                contrib = (g - 0.5 * h.float()).pow(2)  # (units,): squared second-order change for this batch
                total[key] = total[key] + contrib if key in total else contrib
                count[key] = count.get(key, 0) + 1

            gate_derivatives(ctx, sites, True, add_gate)
            warn_unobserved(targets, total, "gradient of a unit gate")
            return {"units": {k: v / max(1, count[k]) for k, v in total.items()}}

        def add(key: str, a: Tensor, g: Tensor) -> None:
            cd = sites[key].channel_dim
            prod = a.float() * g.float()
            if self.formulation == "abs_mean":
                x = per_sample_view(prod, cd).abs()  # (N, C): |1/M sum_m a g| per sample
                contrib, k = x.sum(0), x.shape[0]
            else:
                contrib, k = positions_view(prod, cd).sum(0).pow(2), 1  # (C,): (sum a g)^2 for this batch
            total[key] = total[key] + contrib if key in total else contrib
            count[key] = count.get(key, 0) + k

        observe_outputs_and_grads(ctx, sites, add)
        warn_unobserved(targets, total, "gradient of an observed activation")
        return {"units": {k: v / max(1, count[k]) for k, v in total.items()}}

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        w = target.weight
        unit = stats["units"].get(target.key)
        if unit is None:
            unit = torch.zeros(w.shape[0])
        return spread_units(normalize_layer(unit, self.normalize), w.shape, 0)
