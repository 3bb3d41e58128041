"""Magnitude scores (data-free)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunekit.errors import ConfigError
from prunekit.scoring.base import SCORERS, AbstractScorer, ScoreContext, Target


@SCORERS.register("magnitude")
@dataclass(frozen=True)
class Magnitude(AbstractScorer):
    """|w|^p: magnitude pruning (Han et al. 2015); with a structured pattern, the L_p group norm to the power p.

    Element score ``s_i = |w_i|^p``. A pattern sums the scores of a unit, so a unit's score is ``||w_unit||_p^p``,
    which ranks units exactly as the L_p norm does (``p=1``: L1 filter norm of Li et al. 2017; ``p=2``: L2).
    """

    p: float = 1.0

    def __post_init__(self) -> None:
        if not self.p > 0:
            raise ConfigError("scorer.p", self.p, "must be > 0")

    def weight_fn(self) -> Callable[[Tensor], Tensor]:
        p = self.p
        return torch.abs if p == 1 else lambda w: w.abs().float().pow(p)

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        return self.weight_fn()(target.weight.detach())
