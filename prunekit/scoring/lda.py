"""Class-discriminative unit criterion: the Fisher discriminant ratio of each unit's activation w.r.t. the labels."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.scoring._calibration import batch_labels, observe_outputs, sites_for, warn_unobserved
from prunekit.scoring._reduce import per_sample_view, spread_units
from prunekit.scoring.activation import Nonlinearity
from prunekit.scoring.base import SCORERS, AbstractScorer, Requirement, ScoreContext, Target

LabelSource = Literal["auto", "batch", "predicted"]


def class_indices(labels: Tensor, n: int) -> Tensor:
    """1-D int64 class indices for ``n`` samples from integer labels or one-hot / probability rows."""
    y = labels.detach()
    if y.dim() == 2 and y.is_floating_point():
        y = y.argmax(1)
    if y.dim() != 1 or y.shape[0] != n or y.is_floating_point():
        raise ConfigError("scorer.labels", tuple(labels.shape), f"expected {n} integer class labels, one per sample")
    return y.long().cpu()


def predicted_classes(model_out: Any, n: int) -> Tensor:
    """The model's own predicted class per sample (argmax of its logits)."""
    logits = getattr(model_out, "logits", model_out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        raise ConfigError(
            "scorer.labels", "predicted", "needs a model returning (samples, classes) logits; pass labelled batches"
        )
    return logits.detach().argmax(1).cpu()


@dataclass
class ClassMoments:
    """Per class ``c`` and unit ``k``: sample count, sum and sum of squares of the unit's pooled response (float64)."""

    count: Tensor  # (K,)
    total: Tensor  # (K, C)
    total_sq: Tensor  # (K, C)

    def add(self, x: Tensor, y: Tensor) -> ClassMoments:
        k = max(int(y.max()) + 1, self.count.shape[0]) if y.numel() else self.count.shape[0]
        out = ClassMoments(*(self._grow(t, k) for t in (self.count, self.total, self.total_sq)))
        x = x.double().cpu()
        out.count.index_add_(0, y, torch.ones(y.shape[0], dtype=torch.float64))
        out.total.index_add_(0, y, x)
        out.total_sq.index_add_(0, y, x * x)
        return out

    @staticmethod
    def _grow(t: Tensor, k: int) -> Tensor:
        if t.shape[0] >= k:
            return t
        return torch.cat([t, torch.zeros((k - t.shape[0], *t.shape[1:]), dtype=t.dtype)])

    def fisher_ratio(self, eps: float) -> Tensor:
        """``S_B / (S_W + eps)`` per unit, both normalised by the number of samples."""
        n = self.count.sum()
        present = self.count > 0
        cnt = self.count[present][:, None]
        mu_c = self.total[present] / cnt  # (K', C)
        mu = self.total[present].sum(0) / n
        between = (cnt * (mu_c - mu).pow(2)).sum(0) / n
        within = (self.total_sq[present] - cnt * mu_c.pow(2)).sum(0).clamp_min(0.0) / n
        return (between / (within + eps)).float()


@SCORERS.register("lda")
@dataclass(frozen=True)
class LDA(AbstractScorer):
    """Per-unit Fisher discriminant ratio of activations w.r.t. class labels (Tian et al. 2017/2018).

    For unit ``k`` with pooled per-sample response ``a_{n,k}`` (global average over positions, after
    ``nonlinearity``), class means ``mu_{c,k}`` and overall mean ``mu_k``::

        F_k = S_B / (S_W + eps),   S_B = 1/N sum_c N_c (mu_{c,k} - mu_k)^2,   S_W = 1/N sum_c sum_{n in c} (a_{n,k} - mu_{c,k})^2

    A unit whose response does not separate the classes (low ``F_k``) is pruned first; a dead unit scores 0.
    Tian et al. rank neurons by their contribution to an LDA projection of the layer; this is its per-unit,
    diagonal form (units are judged independently, so two discriminative duplicates both keep high scores).
    Labels: ``labels="batch"`` takes ``y`` from ``(x, y)`` batches (or ``batch["labels"]``); ``"predicted"`` uses the
    model's own argmax prediction; ``"auto"`` (default) uses batch labels when present and otherwise falls back to
    predicted labels with a warning. Unit score: use with ``pattern: channel``.

    Tian, Arbel, Clark 2017, "Deep LDA-Pruned Nets for Efficient Facial Gender Classification", CVPR Workshops;
    Tian, Arbel, Clark 2018, "Structured Deep Fisher Pruning for Efficient Facial Trait Classification", Image and
    Vision Computing.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"activations", "labels"})
    labels: LabelSource = "auto"
    eps: float = 1e-8
    nonlinearity: Nonlinearity = "relu"
    observe: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels not in ("auto", "batch", "predicted"):
            raise ConfigError("scorer.labels", self.labels, "allowed: auto, batch, predicted")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ConfigError("scorer.eps", self.eps, "must be > 0")
        if self.nonlinearity not in ("relu", "none"):
            raise ConfigError("scorer.nonlinearity", self.nonlinearity, "allowed: relu, none")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        sites = sites_for(ctx.model, targets, self.observe)
        acc: dict[str, ClassMoments] = {}
        warned = [False]

        def add(batch: Any, outs: dict[str, Tensor], model_out: Any) -> None:
            pooled = {
                k: per_sample_view(torch.relu(o) if self.nonlinearity == "relu" else o, sites[k].channel_dim)
                for k, o in outs.items()
            }
            if not pooled:
                return
            n = next(iter(pooled.values())).shape[0]
            y_batch = batch_labels(batch) if self.labels != "predicted" else None
            if y_batch is None and self.labels == "batch":
                raise ConfigError("scorer.labels", "batch", "calibration batches carry no labels: pass (x, y) batches")
            if y_batch is None:
                if self.labels == "auto" and not warned[0]:
                    warnings.warn("lda: calibration batches carry no labels; using the model's predicted classes", stacklevel=2)
                    warned[0] = True
                y = predicted_classes(model_out, n)
            else:
                y = class_indices(y_batch, n)
            for k, x in pooled.items():
                if x.shape[0] != n:
                    raise ConfigError("scorer.labels", k, "unit responses and labels disagree on the number of samples")
                empty = ClassMoments(
                    torch.zeros(0, dtype=torch.float64),
                    torch.zeros(0, x.shape[1], dtype=torch.float64),
                    torch.zeros(0, x.shape[1], dtype=torch.float64),
                )
                acc[k] = (acc.get(k) or empty).add(x, y)

        observe_outputs(ctx, sites, add)
        warn_unobserved(targets, acc, "activation")
        return {"units": {k: v.fisher_ratio(self.eps) for k, v in acc.items()}}

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        w = target.weight
        unit = stats["units"].get(target.key)
        return spread_units(unit if unit is not None else torch.zeros(w.shape[0]), w.shape, 0)
