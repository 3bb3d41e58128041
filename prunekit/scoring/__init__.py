"""Importance scorers: what to prune. Each returns scores shaped like its target tensor (higher = keep)."""

from prunekit.scoring.base import SCORERS, AbstractScorer, ScoreContext, Target
from prunekit.scoring.magnitude import Magnitude
from prunekit.scoring.random import RandomScore

__all__ = ["SCORERS", "AbstractScorer", "Magnitude", "RandomScore", "ScoreContext", "Target"]
