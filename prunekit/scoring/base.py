"""The scorer interface.

A scorer is a frozen dataclass (its fields are its configuration) with two methods:

* ``collect(ctx, targets)`` gathers whatever statistics the criterion needs (gradients, activations, Hessian
  estimates) by running the calibration data through the model under *scoped* hooks from
  :mod:`prunekit.scoring.hooks`; the hooks are gone when it returns. Weight-only criteria collect nothing.
* ``score(target, stats)`` returns element-wise scores shaped like the target tensor (higher = more important)
  and has no side effects. The pattern then reduces element scores to unit scores.

``requires`` declares what a criterion needs, so the Pruner can check the context before running it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.masks import raw_param
from prunekit.registry import Registry

Requirement = Literal["weights", "gradients", "activations", "hessian", "labels"]


@dataclass(frozen=True)
class Target:
    """One prunable tensor: module fqn, parameter name and the module itself."""

    fqn: str
    name: str
    module: nn.Module

    @property
    def key(self) -> str:
        return f"{self.fqn}.{self.name}" if self.fqn else self.name

    @property
    def weight(self) -> Tensor:
        """The trainable tensor (the parametrization's ``original`` in reparam mode)."""
        return raw_param(self.module, self.name)


@dataclass
class ScoreContext:
    """What a scorer may use: the model, the training step, a batch or a calibration loader, and the loss.

    ``loss_fn(model, batch) -> scalar`` runs a forward pass and returns the loss; data-driven scorers iterate
    ``calibration`` (or the single ``batch``) through it.
    """

    model: nn.Module
    step: int = 0
    batch: Any = None
    calibration: Iterable[Any] | None = None
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None

    def batches(self) -> Iterable[Any]:
        if self.calibration is not None:
            return self.calibration
        if self.batch is not None:
            return [self.batch]
        return []


class AbstractScorer(ABC):
    """Interface for importance criteria; see the module docstring."""

    registry_name: ClassVar[str] = ""
    requires: ClassVar[frozenset[Requirement]] = frozenset({"weights"})

    def collect(self, ctx: ScoreContext, targets: Sequence[Target]) -> Mapping[str, Any]:
        """Gather statistics (default: none). Data-driven scorers override this with scoped hooks."""
        return {}

    def weight_fn(self) -> Callable[[Tensor], Tensor] | None:
        """The element-wise function of the weight that *is* the score, if the criterion is one (else None).

        Lets global allocation stream unstructured scores chunk by chunk instead of materialising them.
        """
        return None

    @abstractmethod
    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        """Element-wise importance of ``target.weight`` (same shape; higher = keep)."""

    def check_context(self, ctx: ScoreContext) -> None:
        data_needs = self.requires - {"weights"}
        if data_needs and not list(ctx.batches()):
            raise ConfigError("scorer", self.registry_name, f"needs {', '.join(sorted(data_needs))}: pass calibration data")
        if "gradients" in self.requires and ctx.loss_fn is None:  # a layer-wise Hessian (OBS) needs inputs only
            raise ConfigError("scorer", self.registry_name, "needs a loss function (ScoreContext.loss_fn)")


SCORERS: Registry[type[AbstractScorer]] = Registry("scorer")
