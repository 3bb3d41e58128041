"""prunekit's side of the structure benchmarks: slim a model, check the slim model, find ratios by root finding.

* :func:`prune` -- ``build_groups`` + ``structured_plan`` (magnitude, L2, uniform ratio) + ``apply_plan_`` (which
  also sets attention modules' head-count attributes), timed.
* :func:`group_summary` -- prunable / all groups and the reasons frozen groups give, with locations stripped.
* :func:`exactness` -- the structured mask applied (every removed unit's producer and per-channel follower slices
  zeroed: weights and biases of Linear/Conv/Embedding rows, BatchNorm/GroupNorm/depthwise-conv channels) vs the
  slim model, on the groups without LayerNorm/RMSNorm (removing units there changes the normalisation statistics,
  so it is never function-preserving).
* :func:`save_load` -- ``persist.save_slim`` -> ``persist.load_slim`` -> same outputs.
* :func:`ratio_for_mac_reduction` -- the uniform ratio whose plan reduces MACs by a target factor.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from structure_models import output_tensor
from torch import Tensor, nn

from prunekit.recipe import DEFAULT_TYPES
from prunekit.scoring.magnitude import Magnitude
from prunekit.structure import Group, build_groups
from prunekit.structure.compare import batched, count_macs
from prunekit.structure.from_masks import plan_for_groups
from prunekit.structure.handlers import LastDimNormHandler, handler_for_or_none
from prunekit.structure.importance import StructuredConfig, plan_for_target, select_kept, structured_plan
from prunekit.structure.persist import load_slim, save_slim
from prunekit.structure.plan import PrunePlan, apply_plan_
from prunekit.structure.target import ShrinkTarget
from prunekit.testing.structure import zero_removed_units

# Every prunable group, as Torch-Pruning prunes them: prunekit's default types leave a residual stream that an
# Embedding produces whole; listing Embedding lets it go too.
TYPES = (*DEFAULT_TYPES, "Conv1D", "*Embedding", "*Experts")  # OPT's positions; fused MoE experts (Mixtral)


def config(ratio: float) -> StructuredConfig:
    return StructuredConfig(ratio=ratio, scorer=Magnitude(p=2), types=TYPES)


@dataclass
class Slim:
    model: nn.Module
    plan: PrunePlan
    seconds: float


def prune(model: nn.Module, example: Any, ratio: float, groups: Sequence[Group] | None = None) -> Slim:
    """Slim a copy of ``model`` (the copy is made before the clock starts); ``groups`` skips the analysis."""
    work = copy.deepcopy(model)
    t0 = time.perf_counter()
    gs = list(groups) if groups is not None else build_groups(model, example)
    plan = structured_plan(model, example, config(ratio), groups=gs)
    apply_plan_(work, plan)
    return Slim(work.eval(), plan, time.perf_counter() - t0)


# -- groups ------------------------------------------------------------------------------------------------------

_LOCATION = re.compile(r"^.*?\)\s*(\([a-z_]+\)\s*)?:?\s*")


def reason_kind(reason: str) -> str:
    """A frozen group's reason without its location (node names and module paths), for counting."""
    if "shares a weight" in reason:
        return "tied weights (embedding = output head)"
    if reason.startswith("model input"):
        return "model input"
    if reason == "model output":
        return "model output"
    m = re.search(r"call_function (\w+) has no structure rule", reason)
    if m:
        return f"no rule for {m.group(1)}"
    m = re.search(r"\((\w+)\) with a tensor that varies along the channel dim", reason)
    if m:
        return f"{m.group(1)} with a tensor of unknown channels that varies along them"
    m = re.search(r"\(([a-z_]+)\): (.*)$", reason)
    if m:  # "<node> in <module> (<Class>) (<op>): <what>"
        return f"{m.group(1)}: {m.group(2)}"
    m = re.search(r"^(\w+?)(_\d+)?: (\w+): (.*)$", reason)
    if m:  # "<node>: <function>: <what>"
        return f"{m.group(3)}: {m.group(4)}"
    if ": " in reason:
        reason = reason.rsplit(": ", 1)[1]
    return _LOCATION.sub("", reason) if reason.count(")") else reason


def group_summary(groups: Sequence[Group], model: nn.Module) -> dict[str, Any]:
    """Counts of groups, the prunable ones, those the benchmark's config selects, and frozen reasons."""
    mods = dict(model.named_modules())
    cfg = config(0.5)
    kinds: Counter[str] = Counter()
    for g in groups:
        if g.prunable:
            continue
        for k in dict.fromkeys(reason_kind(r) for r in g.reasons) if g.reasons else ("no producer (input)",):
            kinds[k] += 1
    return {
        "groups": len(groups),
        "prunable": sum(g.prunable for g in groups),
        "selected": sum(cfg.selects(mods, g) for g in groups),
        "units": sum(g.size for g in groups),
        "prunable_units": sum(g.size for g in groups if g.prunable),
        "frozen_reasons": dict(kinds.most_common()),
    }


# -- exactness ---------------------------------------------------------------------------------------------------


def _has_layer_norm(g: Group, mods: dict[str, nn.Module]) -> bool:
    return any(m.fqn in mods and isinstance(handler_for_or_none(mods[m.fqn]), LastDimNormHandler) for m in g.members)


def _max_diff(a: nn.Module, b: nn.Module, example: Any) -> tuple[float, float]:
    """(max |out_a - out_b|, max |out_a|) on ``example``."""
    with torch.no_grad():
        call: Callable[[nn.Module], Tensor] = lambda m: output_tensor(m(**example) if isinstance(example, dict) else m(example))  # noqa: E731
        oa, ob = call(a.eval()), call(b.eval())
    if oa.shape != ob.shape:
        raise RuntimeError(f"output shapes differ: {tuple(oa.shape)} vs {tuple(ob.shape)}")
    return float((oa - ob).abs().max()), float(oa.abs().max())


def exactness(model: nn.Module, example: Any, groups: Sequence[Group], ratio: float = 0.5) -> dict[str, Any]:
    """Masked reference vs slim model on the groups without LayerNorm/RMSNorm, with the benchmark's selection."""
    mods = dict(model.named_modules())
    kept = select_kept(model, groups, config(ratio))
    chosen = {i: k for i, k in kept.items() if not _has_layer_norm(groups[i], mods)}
    out: dict[str, Any] = {"groups": len(chosen), "skipped_norm_groups": len(kept) - len(chosen)}
    if not chosen:
        return out
    try:
        ref = zero_removed_units(model, groups, chosen)
        slim = apply_plan_(copy.deepcopy(model), plan_for_groups(model, list(groups), chosen))
        out["max_abs_diff"], out["max_abs_out"] = _max_diff(ref, slim, example)
    except Exception as e:  # a failure here is a finding to report, not a reason to stop the benchmark
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:250] if str(e) else ''}"
    return out


# -- persistence -------------------------------------------------------------------------------------------------


def save_load(slim: Slim, example: Any, model_spec: dict[str, Any] | None) -> dict[str, Any]:
    """save_slim -> load_slim -> max |difference| of outputs."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pk-structure-") as d:
        path = Path(d) / "slim"
        try:
            save_slim(path, slim.model, slim.plan, model_spec=model_spec)
            out["bytes"] = sum(f.stat().st_size for f in path.iterdir())
            loaded = load_slim(path)
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:250] if str(e) else ''}"
            return out
        try:
            out["max_abs_diff"] = _max_diff(slim.model, loaded, example)[0]
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:250] if str(e) else ''}"
    return out


# -- MAC-reduction search ----------------------------------------------------------------------------------------


@dataclass
class RatioSearch:
    ratio: float
    reduction: float  # dense MACs / slim MACs actually reached
    tries: int
    reachable: bool


macs = count_macs  # counts nn.TransformerEncoder's fused fast path too (it is switched off while counting)


def ratio_for_mac_reduction(
    model: nn.Module, example: Any, groups: Sequence[Group], target: float, tol: float = 0.02, max_iters: int = 12
) -> RatioSearch:
    """The uniform ratio whose plan gives ``target`` times fewer MACs (at batch 1) within ``tol``: prunekit's own
    search (``plan_for_target``, target ``macs=<target>x``); the closest plan seen when none lands inside."""
    cfg = dataclasses.replace(config(0.5), target=ShrinkTarget("macs", target))
    s = plan_for_target(model, batched(example, 1), cfg, groups=groups, tolerance=tol, max_plans=max_iters, strict=False)
    return RatioSearch(s.ratio, s.reduction, s.plans, s.reachable)
