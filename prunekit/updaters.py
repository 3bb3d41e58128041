"""Weight updaters: what happens to the weights that *stay* when a mask changes.

A pruner is scorer + allocator + pattern + schedule + **updater**. The default, ``none``, only applies the mask
(magnitude pruning, Taylor, ...). ``obs`` applies the compensating update of Optimal Brain Surgeon (Hassibi & Stork
1993) on each layer's reconstruction loss, as in L-OBS (Dong et al. 2017), OBC (Frantar & Alistarh 2022) and
SparseGPT (Frantar & Alistarh 2023): for every output row ``w`` of a layer with input Hessian
``H = 2 X X^T / n + lambda I`` (calibration inputs ``X``), removing the set ``S`` of its weights (all the row's pruned
weights, the ones pruned before included, which are already zero) changes the others by

    dw = -H^-1[:, S] ([H^-1]_SS)^-1 w_S,        with loss increase  1/2 w_S^T ([H^-1]_SS)^-1 w_S,

the exact minimiser of the (damped) reconstruction error under the constraint ``w_S = 0``
(:func:`prunekit.scoring.obs.obs_prune` with ``mask=``). Layers are updated independently from the inputs they see
in the model *before* this update (OBC's layer-wise setting; SparseGPT instead updates layer by layer on inputs
already changed by earlier layers). An updater's ``collect`` runs before the masks change, ``update_`` after the
new mask is chosen and before it is written, so in-place masks and the bound optimizers see the updated weights.

Cost: one ``|S| x |S|`` solve per row, so ``rows * |S|^3``: seconds for LeNet-size layers, impractical for large
layers at high sparsity (use SparseGPT's blocked OBS, ``obs_prune(method="blocked")``, there).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.registry import Registry
from prunekit.scoring._calibration import layer_input_grams
from prunekit.scoring.base import Requirement, ScoreContext, Target
from prunekit.scoring.obs import obs_prune, reconstruction_hessian

log = logging.getLogger(__name__)


class AbstractUpdater(ABC):
    """Interface: ``collect`` statistics before the masks change, then ``update_`` each target's remaining weights."""

    registry_name: ClassVar[str] = ""
    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights"})

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        return {}

    @abstractmethod
    def update_(self, target: Target, keep: Tensor, stats: Mapping[str, Any]) -> None:
        """Change ``target.weight`` in place for the new keep-mask ``keep`` (same shape, bool)."""

    def check_context(self, ctx: ScoreContext) -> None:
        if self.requires - {"weights"} and not list(ctx.batches()):
            raise ConfigError("update", self.registry_name, "needs calibration data (activations)")


UPDATERS: Registry[type[AbstractUpdater]] = Registry("updater")


@UPDATERS.register("none")
@dataclass(frozen=True)
class NoUpdate(AbstractUpdater):
    """Apply the mask only; the remaining weights are left as they are."""

    def update_(self, target: Target, keep: Tensor, stats: Mapping[str, Any]) -> None:
        return None


@UPDATERS.register("obs")
@dataclass(frozen=True)
class OBSUpdate(AbstractUpdater):
    """Optimal Brain Surgeon compensation of the remaining weights of each row (see the module docstring).

    ``damping``: ``lambda = damping * mean(diag H)`` (1 % as in OBC/SparseGPT). Linear and Conv2d (``groups=1``;
    rows of ``weight.reshape(out, -1)`` against im2col patches). The bias is not changed.
    """

    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights", "activations", "hessian"})
    damping: float = 0.01

    def __post_init__(self) -> None:
        if not (isinstance(self.damping, (int, float)) and not isinstance(self.damping, bool) and self.damping >= 0):
            raise ConfigError("update.damping", self.damping, "must be >= 0 (fraction of the mean Hessian diagonal)")

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        return {"grams": layer_input_grams(ctx, targets)}

    @torch.no_grad()
    def update_(self, target: Target, keep: Tensor, stats: Mapping[str, Any]) -> None:
        gram = stats["grams"].get(target.key)
        if gram is None:
            log.warning("obs update: %s saw no calibration input; mask applied without compensation", target.key)
            return
        w = target.weight
        res = obs_prune(w.detach(), reconstruction_hessian(*gram), mask=keep, damping=self.damping)
        w.copy_(res.weight)
        log.debug("obs update of %s: predicted reconstruction loss increase %.4g", target.key, res.total_loss)
