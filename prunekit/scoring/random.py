"""Seeded random scores: the baseline every criterion must beat."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunekit.scoring.base import SCORERS, AbstractScorer, ScoreContext, Target


@SCORERS.register("random")
@dataclass(frozen=True)
class RandomScore(AbstractScorer):
    """Uniform random scores, reproducible from (seed, step, tensor name) with no hidden RNG state.

    Because the generator is re-seeded from those three values, an interrupted run resumes to the same masks.
    """

    seed: int = 0

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        w = target.weight
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + ctx.step) * 7919 + zlib.crc32(target.key.encode()))
        return torch.rand(w.shape, generator=g).to(w.device)
