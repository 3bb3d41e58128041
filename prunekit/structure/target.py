"""Cost targets for structured pruning: "2x fewer MACs" or "1.5x fewer parameters" instead of a removal ratio.

A removal ratio says how many *units* go; what users want is a cost: the model's parameters or its
multiply-accumulates per forward pass. Costs are not linear in the ratio (a Linear between two pruned groups loses
``1 - (1 - r)^2`` of its weights, one fed by the model input ``r``; frozen groups keep theirs) and rounding makes
them step functions, so :func:`~prunekit.structure.importance.plan_for_target` searches the ratio with
:func:`solve_increasing` on the cost of the slim model each candidate plan produces. The units are scored once;
every candidate only re-allocates.

:class:`ShrinkTarget` is the typed form of the recipe field ``target``; :func:`parse_target` reads its shorthand
(``"macs=2x"``, ``"params=1.5"``) in one place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from prunekit.errors import ConfigError

Metric = Literal["params", "macs"]
METRICS: tuple[Metric, ...] = ("params", "macs")
TARGET_HELP = "'macs=2x' or 'params=1.5x' (dense cost / slim cost, above 1), or {metric: macs, reduction: 2}"
_SHORTHAND = re.compile(r"(params|macs)\s*[=: ]\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*x?", re.IGNORECASE)


@dataclass(frozen=True)
class ShrinkTarget:
    """Remove units until ``dense cost / slim cost`` reaches ``reduction``; cost = parameters or MACs.

    Parameters count each shared tensor once; MACs are those of one forward pass on the example input
    (:func:`~prunekit.structure.compare.count_macs`).
    """

    metric: Metric
    reduction: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError("target.metric", self.metric, f"allowed: {', '.join(METRICS)}")
        r = self.reduction
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 1.0:
            raise ConfigError("target.reduction", r, "must be a number above 1 (dense cost / slim cost, e.g. 2 for 2x)")

    def __str__(self) -> str:
        return f"{self.metric}={self.reduction:g}x"


def parse_target(value: Any, field_name: str = "target") -> ShrinkTarget | None:
    """``None | "macs=2x" | "params 1.5" | {metric, reduction} | ShrinkTarget`` -> :class:`ShrinkTarget` or None."""
    if value is None or isinstance(value, ShrinkTarget):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "null"):
            return None
        m = _SHORTHAND.fullmatch(text)
        if m:
            return ShrinkTarget(m.group(1).lower(), float(m.group(2)))  # type: ignore[arg-type]
        raise ConfigError(field_name, value, TARGET_HELP)
    if isinstance(value, dict):
        if set(value) != {"metric", "reduction"}:
            raise ConfigError(field_name, value, TARGET_HELP)
        metric = str(value["metric"]).lower()
        red = value["reduction"]
        if isinstance(red, str):
            red = red.strip().rstrip("xX")
            try:
                red = float(red)
            except ValueError:
                raise ConfigError(f"{field_name}.reduction", value["reduction"], "a number above 1, e.g. 2 or 2x") from None
        return ShrinkTarget(metric, red)  # type: ignore[arg-type]
    raise ConfigError(field_name, value, TARGET_HELP)


NUDGES = (0.02, -0.02, 0.05, -0.05)  # where to try instead when g fails at x
MAX_FAILURES = 6


def solve_increasing(
    g: Callable[[float], float], lo: float, hi: float, g_lo: float, start: float, tol: float, max_iters: int
) -> list[tuple[float, float]]:
    """Find ``x`` in ``[lo, hi]`` (a pruning ratio, ``0 <= lo < hi < 1``) with ``|g(x)| <= tol``, for ``g`` increasing,
    ``g > -1`` and ``g(lo) = g_lo < 0``; ``g`` is "reduction reached / reduction wanted - 1".

    Reductions grow like ``(1 - x)^-k`` (k = 1 for a layer's parameters or MACs pruned on one side, 2 on both), so
    the search runs on ``u = -log(1 - x)`` and ``h = log(1 + g)``, where that is a straight line: the secant is
    extrapolated until a point above zero is found (reaching ``hi`` still below zero ends the search:
    unreachable), then regula falsi with the Illinois rule, the next point kept inside the bracket's middle 80 %
    (reductions are step functions of the ratio). Where ``g`` raises, the points ``x + NUDGES`` are tried
    instead (all four failing, or ``MAX_FAILURES`` in all, end the search; the exception is re-raised when nothing
    was evaluated). Returns every ``(x, g(x))`` evaluated, in order.
    """

    def u_of(x: float) -> float:
        return -math.log1p(-x)

    def x_of(u: float) -> float:
        return -math.expm1(-u)

    seen: list[tuple[float, float]] = []
    u_lo, h_lo, u_hi, h_hi, u_top = u_of(lo), math.log1p(g_lo), u_of(hi), 0.0, u_of(hi)
    hi_known, side = False, 0
    x, failed_at, tried, failures = start, None, 0, 0
    last: Exception | None = None
    while len(seen) < max_iters:
        try:
            v = g(x)
        except Exception as e:
            last, failures = e, failures + 1
            failed_at = failed_at if failed_at is not None else x
            if tried == len(NUDGES) or failures > MAX_FAILURES:
                break
            x = min(hi, max(lo, failed_at + NUDGES[tried]))
            tried += 1
            continue
        failed_at, tried = None, 0
        seen.append((x, v))
        if abs(v) <= tol:
            break
        u, h = u_of(x), math.log1p(v)
        if v >= 0:
            if side == 1:
                h_lo /= 2  # Illinois: the same end moved twice, pull the secant towards the other
            u_hi, h_hi, hi_known, side = u, h, True, 1
        elif not hi_known:
            if u >= u_top:  # the top of the range falls short: unreachable
                break
            step = (u - u_lo) * -h / (h - h_lo) if h > h_lo else u_top - u
            u_lo, h_lo = u, h
            x = x_of(min(u_top, u + step))
            continue
        else:
            if side == -1:
                h_hi /= 2
            u_lo, h_lo, side = u, h, -1
        if u_hi - u_lo < 1e-5:
            break
        t = min(0.9, max(0.1, -h_lo / (h_hi - h_lo)))
        x = x_of(u_lo + t * (u_hi - u_lo))
    if not seen and last is not None:
        raise last
    return seen
