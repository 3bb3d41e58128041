"""Schedules: *when* to prune and *how much*. Pure functions of the step; no state, nothing wired in.

``sparsity_at(step, target)`` is the sparsity the masks should have after the update at ``step``;
``is_update_step(step)`` says whether masks are recomputed at ``step``. Every schedule reaches exactly
``target`` at its last update step, whatever the number of steps per epoch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from prunekit.errors import ConfigError
from prunekit.registry import Registry

SCHEDULES: Registry[type[AbstractSchedule]] = Registry("schedule")


def _nonneg(field: str, v: int) -> None:
    if not isinstance(v, int) or v < 0:
        raise ConfigError(f"schedule.{field}", v, "must be a non-negative integer (steps)")


class AbstractSchedule(ABC):
    registry_name: str = ""

    @abstractmethod
    def sparsity_at(self, step: int, target: float) -> float:
        """Sparsity in force after the update at ``step``."""

    @abstractmethod
    def is_update_step(self, step: int) -> bool:
        """Whether masks are recomputed at ``step``."""

    @abstractmethod
    def final_step(self) -> int:
        """The step at which ``target`` is reached (the last update that changes the sparsity)."""


@SCHEDULES.register("oneshot")
@dataclass(frozen=True)
class OneShot(AbstractSchedule):
    """Prune to the target once, at step ``at``."""

    at: int = 0

    def __post_init__(self) -> None:
        _nonneg("at", self.at)

    def sparsity_at(self, step: int, target: float) -> float:
        return target if step >= self.at else 0.0

    def is_update_step(self, step: int) -> bool:
        return step == self.at

    def final_step(self) -> int:
        return self.at


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant(AbstractSchedule):
    """Hold the target from ``begin`` on, recomputing masks every ``every`` steps until ``end`` (None: forever)."""

    begin: int = 0
    every: int = 100
    end: int | None = None

    def __post_init__(self) -> None:
        _nonneg("begin", self.begin)
        if self.every < 1:
            raise ConfigError("schedule.every", self.every, "must be >= 1")
        if self.end is not None and self.end < self.begin:
            raise ConfigError("schedule.end", self.end, f"must be >= begin ({self.begin})")

    def sparsity_at(self, step: int, target: float) -> float:
        return target if step >= self.begin else 0.0

    def is_update_step(self, step: int) -> bool:
        if step < self.begin or (self.end is not None and step > self.end):
            return False
        return (step - self.begin) % self.every == 0

    def final_step(self) -> int:
        return self.begin


@SCHEDULES.register("polynomial")
@dataclass(frozen=True)
class Polynomial(AbstractSchedule):
    """Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune", Eq. 1).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^power`` for ``t_0 <= t <= t_end``, updated every
    ``every`` steps from ``begin`` and always at ``end`` (so the target is reached exactly); ``power=3`` is the
    paper's cubic schedule and ``initial`` is ``s_i``.
    """

    begin: int = 0
    end: int = 1000
    every: int = 100
    power: float = 3.0
    initial: float = 0.0

    def __post_init__(self) -> None:
        _nonneg("begin", self.begin)
        _nonneg("end", self.end)
        if self.end < self.begin:
            raise ConfigError("schedule.end", self.end, f"must be >= begin ({self.begin})")
        if self.every < 1:
            raise ConfigError("schedule.every", self.every, "must be >= 1")
        if not 0.0 <= self.initial < 1.0:
            raise ConfigError("schedule.initial", self.initial, "must be in [0, 1)")
        if self.power <= 0:
            raise ConfigError("schedule.power", self.power, "must be > 0")

    def sparsity_at(self, step: int, target: float) -> float:
        if step < self.begin:
            return 0.0
        if step >= self.end:
            return target
        progress = (step - self.begin) / (self.end - self.begin)
        decay: float = (1.0 - progress) ** self.power
        return target + (self.initial - target) * decay

    def is_update_step(self, step: int) -> bool:
        return step == self.end or (self.begin <= step < self.end and (step - self.begin) % self.every == 0)

    def final_step(self) -> int:
        return self.end


@SCHEDULES.register("iterative")
@dataclass(frozen=True)
class Iterative(AbstractSchedule):
    """Iterative pruning in ``rounds`` rounds, ``every`` steps apart from ``begin`` (Han 2015; Frankle & Carbin 2019).

    Each round prunes the same fraction ``p`` of the weights still remaining, ``p = 1 - (1 - target)^(1/rounds)``,
    so after round ``r`` the sparsity is ``1 - (1 - target)^(r/rounds)`` and the last round lands on the target.
    """

    rounds: int = 5
    begin: int = 0
    every: int = 1000

    def __post_init__(self) -> None:
        _nonneg("begin", self.begin)
        if self.rounds < 1:
            raise ConfigError("schedule.rounds", self.rounds, "must be >= 1")
        if self.every < 1:
            raise ConfigError("schedule.every", self.every, "must be >= 1")

    def round_of(self, step: int) -> int:
        """Number of rounds completed after the update at ``step``."""
        if step < self.begin:
            return 0
        return min(self.rounds, (step - self.begin) // self.every + 1)

    def sparsity_at(self, step: int, target: float) -> float:
        r = self.round_of(step)
        remaining: float = (1.0 - target) ** (r / self.rounds)
        return target if r == self.rounds else 1.0 - remaining

    def is_update_step(self, step: int) -> bool:
        return step >= self.begin and (step - self.begin) % self.every == 0 and (step - self.begin) // self.every < self.rounds

    def final_step(self) -> int:
        return self.begin + (self.rounds - 1) * self.every
