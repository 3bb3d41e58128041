"""Torch-Pruning 1.6, the peer of the structure benchmarks, run in a subprocess (it can hang or crash).

The parent (:func:`run_job`) writes the dense model and example input with ``torch.save`` into a scratch directory,
then runs ``python benchmarks/structure_tp.py JOB.json`` with a timeout and reads ``results.json``, which the
worker rewrites after every task (a task that times out still leaves the earlier ones). Each pruned model is
pickled back (``torch.save(model)``: Torch-Pruning's own way of saving pruned models) for the parent to count
MACs and time it next to prunekit's. Only this benchmark's own scratch files are ever unpickled.

Usage follows Torch-Pruning's documentation and examples:

* ``default``: ``tp.pruner.BasePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
  pruning_ratio=r, ignored_layers=[classifier or lm_head])``; for Hugging Face attention ``num_heads={q: H, k: H_kv,
  v: H_kv}`` (or ``{c_attn: H}`` for a fused projection) and ``output_transform=lambda out: out.logits.sum()``
  (``examples/transformers/prune_hf_vit.py``, ``prune_hf_bert.py``); head dims are pruned (the default
  ``prune_head_dims=True``); afterwards the attention modules' head counts are set from ``pruner.num_heads``, as
  those examples do.
* ``llm`` (causal LMs): the recipe of ``examples/LLMs/prune_llm.py``: ``model.config.use_cache = False``,
  ``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``, ``head_pruning_ratio=r``, ``lm_head``
  ignored, attributes fixed afterwards (``round_to=4`` of that script is left out: prunekit runs with 1 too).

Task kinds: ``{"tag", "ratio"}`` prunes once; ``{"tag", "match_params", "start"}`` searches the ratio
(:func:`solve_increasing`, regula falsi) until the pruned model's parameter count is within ``tolerance`` (2 %) of
``match_params`` (at most ``max_iters`` prunes; the closest is kept). A ratio at which pruning fails or the pruned
model does not run is recorded in ``failed_ratios`` and the search steps around it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
Job = dict[str, Any]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# -- worker side ------------------------------------------------------------------------------------------------


def _logits_sum(out: Any) -> torch.Tensor:
    t = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if t is None:
        t = out[0]
    return t.sum()


def _fix_attention(model: nn.Module, job: Job, pruner: Any) -> None:
    """Head-count attributes after pruning, as Torch-Pruning's examples set them (``pruner.num_heads``)."""
    mods = dict(model.named_modules())
    for a in job["attention"]:
        m = mods[a["module"]]
        q = mods[f"{a['module']}.{a.get('q') or a['qkv']}"]
        nh = int(pruner.num_heads.get(q, a["num_heads"]))
        width = q.out_features if isinstance(q, nn.Linear) else int(q.weight.shape[1]) // 3
        nkv = nh
        if a.get("k"):
            nkv = int(pruner.num_heads.get(mods[f"{a['module']}.{a['k']}"], a["num_kv_heads"]))
        for attr in ("num_attention_heads", "num_heads", "n_head"):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, nh)
        for attr in ("attention_head_size", "head_dim"):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, width // nh)
        if isinstance(getattr(m, "all_head_size", None), int):
            m.all_head_size = width
        if isinstance(getattr(m, "split_size", None), int):
            m.split_size = width
        if isinstance(getattr(m, "num_key_value_heads", None), int):
            m.num_key_value_heads = nkv
        if isinstance(getattr(m, "num_key_value_groups", None), int):
            m.num_key_value_groups = nh // nkv
        if isinstance(getattr(m, "embed_dim", None), int) and a.get("q"):
            m.embed_dim = width


def prune_once(base: nn.Module, example: Any, job: Job, ratio: float) -> tuple[nn.Module, float]:
    """A pruned copy of ``base`` at ``ratio`` and the seconds Torch-Pruning took (pruner + step + attribute fix)."""
    import torch_pruning as tp

    model = copy.deepcopy(base)
    mods = dict(model.named_modules())
    kwargs: dict[str, Any] = {}
    heads: dict[nn.Module, int] = {}
    for a in job["attention"]:
        if a.get("qkv"):
            heads[mods[f"{a['module']}.{a['qkv']}"]] = a["num_heads"]
            continue
        heads[mods[f"{a['module']}.{a['q']}"]] = a["num_heads"]
        heads[mods[f"{a['module']}.{a['k']}"]] = a["num_kv_heads"]
        heads[mods[f"{a['module']}.{a['v']}"]] = a["num_kv_heads"]
    if heads:
        kwargs["num_heads"] = heads
    if job["recipe"] == "llm":
        model.config.use_cache = False  # type: ignore[union-attr]
        kwargs.update(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)
    elif job["hf"]:
        kwargs["output_transform"] = _logits_sum
    t0 = time.perf_counter()
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[mods[f] for f in job["ignored"]],
        **kwargs,
    )
    pruner.step()
    _fix_attention(model, job, pruner)
    seconds = time.perf_counter() - t0
    return model.eval(), seconds


def _check_forward(model: nn.Module, example: Any, shape: list[int]) -> None:
    with torch.no_grad():
        out = model(**example) if isinstance(example, dict) else model(example)
    t = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if t is None:
        t = out[0]
    if list(t.shape) != shape:
        raise RuntimeError(f"pruned model's output has shape {list(t.shape)}, expected {shape}")


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


def run_task(base: nn.Module, example: Any, job: Job, task: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"tag": task["tag"], "ok": False}
    try:
        if "ratio" in task:
            model, secs = prune_once(base, example, job, float(task["ratio"]))
            res.update(ratio=float(task["ratio"]), prune_s=secs, tries=1)
        else:
            target, tol = int(task["match_params"]), float(job.get("tolerance", 0.02))
            best: dict[str, Any] = {}  # only the closest pruned model is kept (a few copies of GPT-2 add up)
            errors: list[str] = []

            def g(r: float) -> float:
                try:
                    m, s = prune_once(base, example, job, r)
                    _check_forward(m, example, job["out_shape"])
                except Exception as e:
                    errors.append(f"ratio {r:.3f}: {first_line(e)}")
                    raise
                v = target / count_params(m) - 1.0  # increasing in r: fewer parameters left
                if not best or abs(v) < abs(best["v"]):
                    best.update(v=v, r=r, model=m, secs=s)
                return v

            g0 = target / count_params(base) - 1.0
            hi, start, iters = float(job.get("max_ratio", 0.95)), float(task.get("start", 0.5)), int(job.get("max_iters", 8))
            seen = solve_increasing(g, 0.0, hi, g0, start, tol, iters)
            model = best["model"]
            res.update(ratio=best["r"], prune_s=best["secs"], tries=len(seen) + len(errors), target_params=target,
                       failed_ratios=errors)  # fmt: skip
        res["params"] = count_params(model)
        res["removed_nothing"] = res["params"] == count_params(base)
        _check_forward(model, example, job["out_shape"])
        path = out_dir / f"{task['tag']}.pt"
        torch.save(model, path)
        res.update(ok=True, file=str(path))
    except Exception as e:  # the peer's failure is a result, not a crash of the benchmark
        res["error"] = first_line(e)
    return res


def worker(job_path: Path) -> None:
    job: Job = json.loads(job_path.read_text())
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    out_dir = Path(job["out_dir"])
    base = torch.load(job["model_file"], weights_only=False).eval()  # our own scratch file (see module docstring)
    example = torch.load(job["example_file"], weights_only=False)
    results: list[dict[str, Any]] = []
    for task in job["tasks"]:
        results.append(run_task(base, example, job, task, out_dir))
        tmp = out_dir / "results.json.tmp"
        tmp.write_text(json.dumps(results))
        os.replace(tmp, out_dir / "results.json")


# -- parent side ------------------------------------------------------------------------------------------------


def run_job(model: nn.Module, example: Any, job: Job, scratch: Path, timeout: float) -> tuple[list[dict[str, Any]], str | None]:
    """Run ``job`` in a fresh Python process; returns (task results, job-level error such as a timeout)."""
    scratch.mkdir(parents=True, exist_ok=True)
    job = dict(job, out_dir=str(scratch), model_file=str(scratch / "dense.pt"), example_file=str(scratch / "example.pt"))
    if not (scratch / "dense.pt").exists():
        torch.save(model, scratch / "dense.pt")
        torch.save(example, scratch / "example.pt")
    (scratch / "results.json").unlink(missing_ok=True)
    job_file = scratch / "job.json"
    job_file.write_text(json.dumps(job))
    err: str | None = None
    with open(scratch / "stderr.txt", "w") as errf:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(job_file)],
            stdout=subprocess.DEVNULL,
            stderr=errf,
            start_new_session=True,  # its own process group: a timeout ends the worker and anything it started
        )
        try:
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                lines = [ln for ln in (scratch / "stderr.txt").read_text(errors="replace").splitlines() if ln.strip()]
                err = f"worker exited with code {rc}: {lines[-1][:300] if lines else ''}"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err = f"timeout after {timeout:.0f} s (killed)"
    path = scratch / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    return results, err


def load_pruned(res: dict[str, Any]) -> nn.Module:
    """The pruned model a successful task pickled (this benchmark's own scratch file)."""
    model: nn.Module = torch.load(res["file"], weights_only=False)
    return model.eval()


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def version() -> str:
    try:
        import torch_pruning as tp

        return str(tp.__version__)
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Torch-Pruning worker of benchmarks/structure_coverage.py")
    ap.add_argument("job", type=Path)
    worker(ap.parse_args().job)
