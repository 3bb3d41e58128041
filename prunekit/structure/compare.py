"""Before/after comparison of a dense and a slimmed model: parameters, MACs and measured CPU latency.

MACs come from ``torch.utils.flop_counter`` through :func:`prunekit.report.count_flops` on one example (batch 1):
the counter reports ``2 * M * N * K`` FLOPs per matrix product (and likewise for convolutions), so
``MACs = FLOPs / 2``. Latency is measured at ``batch_size``: the example's first sample repeated ``batch_size``
times, models in eval mode under ``torch.inference_mode``. The two models are timed *interleaved* (A, B, A, B, ...)
so machine load drifts hit both alike; each repeat times enough calls to last ``min_time`` seconds, and the
reported figure is the median over repeats of the time per call. ``speed-up = latency before / latency after``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.report import count_flops


@dataclass(frozen=True)
class ModelCost:
    """Parameters (unique tensors), MACs per sample, and median latency per call (seconds) at the batch size."""

    params: int
    macs: int | None
    latency_s: float | None


@dataclass(frozen=True)
class ShrinkReport:
    before: ModelCost
    after: ModelCost
    batch_size: int
    repeats: int
    threads: int

    @staticmethod
    def _ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    @property
    def param_ratio(self) -> float | None:
        """before / after (2.0 = half the parameters)."""
        return self._ratio(self.before.params, self.after.params)

    @property
    def mac_ratio(self) -> float | None:
        return self._ratio(self.before.macs, self.after.macs)

    @property
    def speedup(self) -> float | None:
        return self._ratio(self.before.latency_s, self.after.latency_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(param_ratio=self.param_ratio, mac_ratio=self.mac_ratio, speedup=self.speedup)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        def n(v: int | None) -> str:
            return "-" if v is None else f"{v:,}"

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{1e3 * v:.3f}"

        def x(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}x"

        b, a = self.before, self.after
        lat = f"latency, batch {self.batch_size} (ms, median of {self.repeats}, {self.threads} threads)"
        return "\n".join(
            [
                "| | before | after | before / after |",
                "|---|---:|---:|---:|",
                f"| parameters | {n(b.params)} | {n(a.params)} | {x(self.param_ratio)} |",
                f"| MACs per sample | {n(b.macs)} | {n(a.macs)} | {x(self.mac_ratio)} |",
                f"| {lat} | {ms(b.latency_s)} | {ms(a.latency_s)} | {x(self.speedup)} |",
            ]
        )


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example``: ``torch.utils.flop_counter`` FLOPs / 2."""
    dense, _, _ = count_flops(model, example)
    return dense // 2


def batched(example: Any, batch_size: int) -> Any:
    """The example's first sample repeated ``batch_size`` times (tensor, tuple/list of tensors, or dict)."""
    if batch_size < 1:
        raise ConfigError("--batch-size", batch_size, "must be a positive integer")

    def rep(t: Any) -> Any:
        if isinstance(t, Tensor) and t.dim() > 0:
            return t[:1].repeat(batch_size, *([1] * (t.dim() - 1)))
        return t

    if isinstance(example, dict):
        return {k: rep(v) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(rep(v) for v in example)
    return rep(example)


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def measure_latency(models: Sequence[nn.Module], inputs: Any, repeats: int = 7, min_time: float = 0.05) -> list[float]:
    """Median seconds per call of each model on ``inputs``, timed interleaved (see the module docstring)."""
    if repeats < 1:
        raise ConfigError("--repeats", repeats, "must be a positive integer")
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        with torch.inference_mode():
            calls = []
            for model in models:  # warm up, and size each repeat to about min_time
                _call(model, inputs)
                t0 = time.perf_counter()
                _call(model, inputs)
                one = max(time.perf_counter() - t0, 1e-6)
                calls.append(max(1, min(1000, round(min_time / one))))
            times: list[list[float]] = [[] for _ in models]
            for _ in range(repeats):
                for i, model in enumerate(models):
                    t0 = time.perf_counter()
                    for _ in range(calls[i]):
                        _call(model, inputs)
                    times[i].append((time.perf_counter() - t0) / calls[i])
    finally:
        for m, mode in modes:
            m.training = mode
    return [statistics.median(t) for t in times]


def compare_models(
    before: nn.Module,
    after: nn.Module,
    example: Any,
    batch_size: int = 1,
    repeats: int = 7,
    min_time: float = 0.05,
    threads: int | None = None,
) -> ShrinkReport:
    """Parameters, MACs per sample (the example's first sample) and latency at ``batch_size`` of both models.

    ``threads``: intra-op threads during the latency measurement (default: torch's current setting).
    """
    if threads is not None and threads < 1:
        raise ConfigError("--threads", threads, "must be a positive integer")
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        lat_b, lat_a = measure_latency([before, after], batched(example, batch_size), repeats, min_time)
    finally:
        torch.set_num_threads(saved)
    one = batched(example, 1)
    return ShrinkReport(
        ModelCost(count_params(before), count_macs(before, one), lat_b),
        ModelCost(count_params(after), count_macs(after, one), lat_a),
        batch_size,
        repeats,
        used,
    )
