"""Second-order criteria: Optimal Brain Damage (diagonal loss Hessian) and Optimal Brain Surgeon (layer-wise).

The OBS maths (saliency, compensating update, exact and blocked pruning) lives in :mod:`prunekit.scoring.obs`;
the diagonal-Hessian estimators in :mod:`prunekit.scoring._curvature`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.scoring._calibration import layer_input_grams, warn_unobserved
from prunekit.scoring._curvature import hessian_diagonal
from prunekit.scoring.base import SCORERS, AbstractScorer, Requirement, ScoreContext, Target
from prunekit.scoring.obs import obs_saliency, reconstruction_hessian

_OBD_ESTIMATES = ("auto", "exact", "fisher", "hutchinson")


@SCORERS.register("obd")
@dataclass(frozen=True)
class OBD(AbstractScorer):
    """Optimal Brain Damage (LeCun et al. 1989): saliency ``s_q = 1/2 h_qq w_q^2`` from the diagonal loss Hessian.

    At a minimum of the loss (``g = 0``) and neglecting off-diagonal terms, removing ``w_q`` raises the loss by
    ``1/2 h_qq w_q^2``. ``hessian`` chooses how ``h_qq = d^2 L / dw_q^2`` is obtained (``L`` = loss averaged over the
    calibration batches): ``exact`` (one double-backward per weight), ``fisher`` (mean squared per-sample
    gradient; always >= 0), ``hutchinson`` (``E[v * Hv]`` over ``probes`` seeded Rademacher vectors per batch), or
    ``auto``: exact for tensors with at most ``exact_max_numel`` elements (exact costs one double-backward per
    weight and batch), Fisher above. An exact or Hutchinson ``h_qq`` can be negative away from a minimum; the
    saliency keeps its sign (negative = removal predicted to lower the loss, so pruned first).

    LeCun, Denker, Solla 1989, "Optimal Brain Damage", NeurIPS 2.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights", "gradients", "hessian"})
    hessian: Literal["auto", "exact", "fisher", "hutchinson"] = "auto"
    exact_max_numel: int = 128
    probes: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hessian not in _OBD_ESTIMATES:
            raise ConfigError("scorer.hessian", self.hessian, f"allowed: {', '.join(_OBD_ESTIMATES)}")
        if not (isinstance(self.exact_max_numel, int) and self.exact_max_numel >= 0):
            raise ConfigError("scorer.exact_max_numel", self.exact_max_numel, "must be an integer >= 0")
        if not (isinstance(self.probes, int) and self.probes >= 1):
            raise ConfigError("scorer.probes", self.probes, "must be an integer >= 1")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        if self.hessian != "auto":
            return {"h": hessian_diagonal(ctx, targets, self.hessian, self.probes, self.seed)}
        small = [t for t in targets if t.weight.numel() <= self.exact_max_numel]
        large = [t for t in targets if t.weight.numel() > self.exact_max_numel]
        h = hessian_diagonal(ctx, small, "exact") if small else {}
        if large:
            h.update(hessian_diagonal(ctx, large, "fisher"))
        return {"h": h}

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        w = target.weight.detach().float()
        h: Tensor | None = stats["h"].get(target.key)
        if h is None:
            return torch.zeros_like(w)
        return 0.5 * h * w * w


@SCORERS.register("obs")
@dataclass(frozen=True)
class OBS(AbstractScorer):
    """Optimal Brain Surgeon saliency on the layer reconstruction loss: ``w_q^2 / (2 [H^-1]_qq)`` (Hassibi 1993).

    ``H = 2 X X^T / n + lambda I`` is the Hessian of the layer's reconstruction loss ``(1/n) ||(W' - W) X||^2`` over
    its calibration inputs ``X`` (Linear: tokens; Conv2d: im2col patches, so rows match ``weight.reshape(out, -1)``),
    damped by ``lambda = damping * mean(diag H)``. The saliency is the exact loss increase of removing ``w_q`` *if*
    the remaining weights of its row receive the compensating update ``dw = -(w_q / [H^-1]_qq) H^-1[:, q]``; a scorer
    has no side effects; the update is the recipe's ``update: obs`` (:class:`prunekit.updaters.OBSUpdate`), or call
    :func:`prunekit.scoring.obs.obs_prune_layer_` (exact sequential OBS for small layers, blocked for large ones).

    Hassibi, Stork 1993, "Second order derivatives for network pruning: Optimal Brain Surgeon", NeurIPS 5; layer-wise
    form: Dong, Chen, Pan 2017 (L-OBS), Frantar & Alistarh 2022 (OBC).
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights", "activations", "hessian"})
    damping: float = 0.01

    def __post_init__(self) -> None:
        if not (isinstance(self.damping, (int, float)) and self.damping >= 0):
            raise ConfigError("scorer.damping", self.damping, "must be >= 0 (fraction of the mean Hessian diagonal)")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        grams = layer_input_grams(ctx, targets)
        warn_unobserved(targets, grams, "layer input")
        return {
            "saliency": {
                k: obs_saliency(t.weight, reconstruction_hessian(*grams[k]), self.damping)
                for t in targets
                if (k := t.key) in grams
            }
        }

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        s: Tensor | None = stats["saliency"].get(target.key)
        if s is None:
            return torch.zeros_like(target.weight, dtype=torch.float32)
        return s.to(target.weight.device).clone()
