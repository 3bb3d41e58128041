"""Global magnitude allocation at scale: prunekit ``Global().allocate`` vs ``torch.nn.utils.prune.global_unstructured``.

Synthetic weights: ``--tensors`` float32 tensors of ``--numel`` elements each (default 16 x 62.5M = 1e9 parameters,
4 GB), standard normal, generated from a fixed seed. Each measurement runs in a fresh subprocess, so its resident
memory baseline is the weights alone; the reported "extra peak" is peak RSS above that baseline (sampled every 10 ms
and cross-checked with the kernel's VmHWM), as a fraction of the weights' bytes.

* prunekit: ``Global().allocate(items, sparsity)`` with magnitude scores streamed as ``LazyScores(w, |.|)`` (per-tensor
  prune counts; the goal applies to this), then, for a like-for-like comparison with torch, building the bool masks
  from those counts with ``prunekit.select.keep_lowest_pruned``.
* torch: ``global_unstructured(..., L1Unstructured, amount=sparsity)`` on the same tensors held as module
  ``weight`` parameters. It concatenates scores and masks, so it runs under an address-space limit
  (``--torch-budget-gb`` of total RSS, lowered to what the machine has free): if it does not fit, the allocation fails
  cleanly instead of exhausting the machine, and the smaller ``--fallback-numel`` size is measured for both libraries.

Exactness is checked first on small instances (one with many ties) against ``torch.cat`` + stable sort.

    python benchmarks/core_global_alloc.py                          # full size (needs ~5 GB for prunekit)
    python benchmarks/core_global_alloc.py --numel 1000000 --fallback-numel 0   # quick check, 16M parameters
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from prunekit.allocation import AllocationItem, Global
from prunekit.scoring import Magnitude
from prunekit.select import LazyScores, global_prune_counts, keep_lowest_pruned

TIME_GOAL_S = 10.0
MEM_GOAL = 0.10
GOAL_PARAMS = 1_000_000_000


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def make_weights(tensors: int, numel: int, seed: int) -> list[torch.Tensor]:
    out = []
    for i in range(tensors):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out.append(torch.empty(numel).normal_(generator=g))
    return out


def magnitude_items(ws: list[torch.Tensor]) -> list[AllocationItem]:
    # Exactly what Pruner.update_masks builds for an element-wise scorer: scores streamed chunk by chunk.
    fn = Magnitude().weight_fn()
    return [AllocationItem(f"t{i}", w.shape, w.numel(), (lambda w=w: LazyScores(w, fn))) for i, w in enumerate(ws)]


def counts_from_alloc(alloc: dict[str, float], ws: list[torch.Tensor]) -> list[int]:
    return [round(alloc[f"t{i}"] * w.numel()) for i, w in enumerate(ws)]


class Holder(nn.Module):
    """A Linear-like module holding one tensor as its ``weight`` parameter (no copy)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(w)


# ---------------------------------------------------------------------------------------------------------
# Exactness on small instances
# ---------------------------------------------------------------------------------------------------------


def reference(scores: list[torch.Tensor], n_prune: int) -> tuple[list[int], list[torch.Tensor]]:
    """Per-tensor counts and keep-masks of the n_prune lowest scores of the concatenation (stable: tensor, index)."""
    sizes = [s.numel() for s in scores]
    cat = torch.cat(scores)
    order = torch.sort(cat, stable=True).indices[:n_prune]
    owner = torch.repeat_interleave(torch.arange(len(scores)), torch.tensor(sizes))
    counts = torch.bincount(owner[order], minlength=len(scores)).tolist()
    keep = torch.ones(cat.numel(), dtype=torch.bool)
    keep[order] = False
    return counts, list(keep.split(sizes))


def verify(numel: int, sparsity: float, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    sizes = [max(1, numel // (1 + (i % 5)) + 7 * i) for i in range(16)]
    normal = [torch.randn(n, generator=g) for n in sizes]
    ties = [torch.randint(-40, 41, (n,), generator=g).float() / 4 for n in sizes]  # 81 distinct values: many ties
    ties[0][:10] = -0.0
    out: dict[str, Any] = {"tensors": len(sizes), "elements": sum(sizes)}
    for label, ws in (("normal", normal), ("ties", ties)):
        scores = [w.abs().reshape(-1) for w in ws]
        n_prune = round(sparsity * sum(sizes))
        ref_counts, ref_keep = reference(scores, n_prune)
        got = global_prune_counts([(lambda s=s: s) for s in scores], n_prune)
        alloc = counts_from_alloc(Global().allocate(magnitude_items(ws), sparsity), ws)
        masks_equal = all(torch.equal(keep_lowest_pruned(s, c), k) for s, c, k in zip(scores, got, ref_keep))
        res: dict[str, Any] = {
            "counts_exact": got == ref_counts,
            "allocate_exact": alloc == ref_counts,
            "masks_exact": masks_equal,
        }
        if label == "normal":
            from torch.nn.utils import prune as tprune

            mods = [Holder(w.clone()) for w in ws]
            tprune.global_unstructured([(m, "weight") for m in mods], pruning_method=tprune.L1Unstructured, amount=sparsity)
            tkeep = [m.weight_mask.bool() for m in mods]
            res["torch_mask_elements_differing"] = int(sum(int((a != b).sum()) for a, b in zip(tkeep, ref_keep)))
        out[label] = res
    out["ok"] = all(out[k][f] for k in ("normal", "ties") for f in ("counts_exact", "allocate_exact", "masks_exact"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Workers (one fresh process per measurement)
# ---------------------------------------------------------------------------------------------------------


def worker_prunekit(args: argparse.Namespace) -> dict[str, Any]:
    ws = make_weights(args.tensors, args.numel, args.seed)
    weights_bytes = sum(w.nbytes for w in ws)
    items = magnitude_items(ws)
    gc.collect()
    # Extra memory is measured against the RSS with only the weights resident, for every call: memory freed by an
    # earlier call but kept by the C allocator must not make a later call look cheaper.
    base = C.proc_status_kb("VmRSS") * 1024
    runs = []
    alloc: dict[str, float] = {}
    for _ in range(args.repeats):
        with C.RssSampler(baseline=base) as s:
            t0 = time.perf_counter()
            alloc = Global().allocate(items, args.sparsity)
            dt = time.perf_counter() - t0
        runs.append({"seconds": dt, "extra_peak_bytes": s.extra, "baseline_rss": s.baseline})
    counts = counts_from_alloc(alloc, ws)
    n_total = sum(w.numel() for w in ws)
    res: dict[str, Any] = {
        "ok": sum(counts) == round(args.sparsity * n_total),
        "weights_bytes": weights_bytes,
        "runs": runs,
        "counts": counts,
    }
    if args.masks:
        gc.collect()
        with C.RssSampler(baseline=base) as s:
            t0 = time.perf_counter()
            masks = [keep_lowest_pruned(w.abs().reshape(-1), c) for w, c in zip(ws, counts)]
            dt = time.perf_counter() - t0
        res["masks"] = {
            "seconds": dt,
            "extra_peak_bytes": s.extra,
            "mask_bytes": sum(m.nbytes for m in masks),
            "pruned_ok": [int((~m).sum()) for m in masks] == counts,
        }
        # Ties at the threshold: how many weights share the magnitude of the last pruned one (any library may pick
        # a different subset of those; prunekit takes earlier tensors, then lower indices, first).
        thr = max(float(w.abs().masked_fill_(m, -1.0).max()) for w, m in zip(ws, masks))
        res["threshold"] = thr
        res["tied_at_threshold"] = sum(int((w.abs() == thr).sum()) for w in ws)
    return res


def worker_torch(args: argparse.Namespace) -> dict[str, Any]:
    from torch.nn.utils import prune as tprune

    ws = make_weights(args.tensors, args.numel, args.seed)
    weights_bytes = sum(w.nbytes for w in ws)
    mods = [Holder(w) for w in ws]
    del ws
    gc.collect()
    rss = C.proc_status_kb("VmRSS") * 1024
    allowed_extra = max(0, args.budget_bytes - rss)
    limit = C.proc_status_kb("VmSize") * 1024 + allowed_extra
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    res: dict[str, Any] = {
        "weights_bytes": weights_bytes,
        "budget_bytes": args.budget_bytes,
        "allowed_extra_bytes": allowed_extra,
    }
    with C.RssSampler() as s:
        t0 = time.perf_counter()
        try:
            tprune.global_unstructured([(m, "weight") for m in mods], pruning_method=tprune.L1Unstructured, amount=args.sparsity)
            res["ok"] = True
        except (RuntimeError, MemoryError) as e:
            res["ok"] = False
            res["error"] = str(e).splitlines()[0][:200]
        dt = time.perf_counter() - t0
    res["runs"] = [{"seconds": dt, "extra_peak_bytes": s.extra, "baseline_rss": s.baseline}]
    if res["ok"]:
        res["retained_extra_bytes"] = C.proc_status_kb("VmRSS") * 1024 - s.baseline
        res["counts"] = [int((m.weight_mask == 0).sum()) for m in mods]
    return res


def run_worker(kind: str, args: argparse.Namespace, numel: int, budget_bytes: int = 0) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--tensors",
        str(args.tensors),
        "--numel",
        str(numel),
        "--sparsity",
        str(args.sparsity),
        "--seed",
        str(args.seed),
        "--repeats",
        str(args.repeats),
        "--budget-bytes",
        str(budget_bytes),
    ]
    if not args.no_masks:
        cmd.append("--masks")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res: dict[str, Any] = json.loads(line[len("RESULT ") :])
            res["wall_seconds"] = wall
            return res
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    return {"ok": False, "error": f"worker exited with {proc.returncode}: {' | '.join(tail)}", "wall_seconds": wall}


# ---------------------------------------------------------------------------------------------------------
# Orchestration and report
# ---------------------------------------------------------------------------------------------------------


def _short_error(err: str) -> str:
    m = re.search(r"tried to allocate (\d+) bytes", err)
    return f"allocating {int(m.group(1)) / 2**30:.1f} GiB failed at the limit" if m else err


def _params_label(n: int) -> str:
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--numel", type=int, default=62_500_000, help="elements per tensor (default: 16 x 62.5M = 1e9)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="timed allocate() calls per prunekit measurement")
    ap.add_argument("--fallback-numel", type=int, default=15_625_000, help="second size if torch does not fit (0: none)")
    ap.add_argument("--torch-budget-gb", type=float, default=20.0, help="max total RSS for the torch attempt")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--no-masks", action="store_true", help="skip building prunekit masks after allocation")
    ap.add_argument("--verify-numel", type=int, default=200_000, help="size of the exactness-check tensors")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--worker", choices=("prunekit", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--masks", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--budget-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        res = worker_prunekit(args) if args.worker == "prunekit" else worker_torch(args)
        print("RESULT " + json.dumps(res), flush=True)
        return

    meta = C.env_info()
    print(f"torch {meta['torch']}, threads {meta['threads']}", flush=True)
    t0 = time.perf_counter()
    check = verify(args.verify_numel, args.sparsity, args.seed)
    print(f"exactness vs torch.cat + stable sort ({check['elements']:,} elements): ok={check['ok']} {check}", flush=True)
    if not check["ok"]:
        raise SystemExit("exactness check failed")
    print(f"  ({time.perf_counter() - t0:.1f}s)", flush=True)

    budget = int(args.torch_budget_gb * 2**30)
    free_now = C.mem_available_bytes()
    budget = min(budget, max(0, free_now - 3 * 2**30))  # leave room for whoever else uses the machine
    sizes = [args.numel] + ([args.fallback_numel] if args.fallback_numel and args.fallback_numel != args.numel else [])
    measurements: list[dict[str, Any]] = []
    torch_fit_full: bool | None = None
    for i, numel in enumerate(sizes):
        n_params = numel * args.tensors
        if i > 0 and (args.skip_torch or torch_fit_full):
            break  # the fallback size is only needed when torch was tried and did not fit at full size
        print(f"\n== {args.tensors} x {numel:,} = {n_params:,} parameters ({C.fmt_gib(n_params * 4)}) ==", flush=True)
        with C.OthersCpu() as others:
            pk = run_worker("prunekit", args, numel)
        pk["others_cpu_share"] = others.share
        measurements.append({"library": "prunekit", "numel": numel, "params": n_params, **pk})
        _print_measurement("prunekit Global().allocate", pk)
        if not args.skip_torch:
            print(f"torch global_unstructured under a {C.fmt_gib(budget)} total-RSS limit ...", flush=True)
            with C.OthersCpu() as others:
                tr = run_worker("torch", args, numel, budget)
            tr["others_cpu_share"] = others.share
            measurements.append({"library": "torch", "numel": numel, "params": n_params, **tr})
            _print_measurement("torch global_unstructured", tr)
            if i == 0:
                torch_fit_full = bool(tr.get("ok"))
            if tr.get("ok") and pk.get("ok"):
                diff = [a - b for a, b in zip(tr["counts"], pk["counts"])]
                ties = pk.get("tied_at_threshold")
                print(
                    f"  per-tensor prune counts minus prunekit's: {diff} (sum {sum(diff)}; "
                    f"{ties} weights tie at the threshold magnitude)",
                    flush=True,
                )

    section = build_section(args, meta, check, measurements, budget)
    C.update_section("global_alloc", lambda prev: section)
    for goal in section["goals"]:
        print(("MET    " if goal["met"] else "NOT MET"), goal["goal"], "->", goal["measured"])
    print(f"wrote {C.JSON_PATH} and {C.MD_PATH}")


def _print_measurement(label: str, res: dict[str, Any]) -> None:
    if "runs" not in res:
        print(f"  {label}: FAILED {res.get('error')}", flush=True)
        return
    print(f"  (other processes used {res.get('others_cpu_share', 0):.0%} of the machine's CPU meanwhile)", flush=True)
    wb = res["weights_bytes"]
    for r in res["runs"]:
        status = "ok" if res.get("ok") else f"FAILED ({res.get('error')})"
        print(
            f"  {label}: {r['seconds']:.2f}s, extra peak {C.fmt_mib(r['extra_peak_bytes'])} "
            f"({r['extra_peak_bytes'] / wb:.1%} of weights) {status}",
            flush=True,
        )
    if "masks" in res:
        m = res["masks"]
        print(
            f"  + masks (keep_lowest_pruned): {m['seconds']:.2f}s, extra peak {C.fmt_mib(m['extra_peak_bytes'])} "
            f"({m['extra_peak_bytes'] / wb:.1%} incl. the kept bool masks, {m['mask_bytes'] / wb:.1%})",
            flush=True,
        )


def build_section(
    args: argparse.Namespace, meta: dict[str, Any], check: dict[str, Any], ms: list[dict[str, Any]], budget: int
) -> dict[str, Any]:
    rows = []
    for m in ms:
        label = f"{args.tensors} x {m['numel'] / 1e6:g}M = {_params_label(m['params'])}"
        if "runs" not in m:
            rows.append([label, m["library"], "—", "—", "—", "—", f"failed: {m.get('error')}"])
            continue
        wb = m["weights_bytes"]
        best = min(m["runs"], key=lambda r: r["seconds"])
        peak = max(r["extra_peak_bytes"] for r in m["runs"])
        times = " / ".join(f"{r['seconds']:.2f}" for r in m["runs"])
        if m["library"] == "prunekit":
            what = "Global().allocate (counts)"
            status = "ok" if m.get("ok") else "WRONG TOTAL"
        else:
            what = "global_unstructured (counts + float masks + weight copies)"
            status = "ok" if m.get("ok") else f"did not fit: {_short_error(str(m.get('error')))}"
            pk = next((x for x in ms if x["library"] == "prunekit" and x["numel"] == m["numel"] and "counts" in x), None)
            if m.get("ok") and pk is not None:
                d = [a - b for a, b in zip(m["counts"], pk["counts"])]
                if not any(d):
                    status += "; per-tensor counts = prunekit's"
                else:
                    status += (
                        f"; per-tensor counts differ from prunekit's in {sum(1 for v in d if v)} tensors by at most "
                        f"{max(abs(v) for v in d)} (same total; {pk.get('tied_at_threshold')} weights tie at the "
                        "threshold magnitude and torch's topk picks among them arbitrarily)"
                    )
        rows.append([label, what, times, f"{C.fmt_mib(peak)}", f"{peak / wb:.1%}", f"{m.get('others_cpu_share', 0):.0%}", status])
        if "masks" in m:
            mk = m["masks"]
            rows.append(
                [
                    label,
                    "prunekit allocate + keep_lowest_pruned masks",
                    f"{best['seconds'] + mk['seconds']:.2f}",
                    f"{C.fmt_mib(max(peak, mk['extra_peak_bytes']))}",
                    f"{max(peak, mk['extra_peak_bytes']) / wb:.1%}",
                    f"{m.get('others_cpu_share', 0):.0%}",
                    f"masks step {mk['seconds']:.2f}s; bool masks themselves {mk['mask_bytes'] / wb:.1%}",
                ]
            )
    goals = []
    full = [m for m in ms if m["library"] == "prunekit" and m["params"] >= GOAL_PARAMS and "runs" in m]
    if full:
        m = full[0]
        best = min(r["seconds"] for r in m["runs"])
        peak = max(r["extra_peak_bytes"] for r in m["runs"]) / m["weights_bytes"]
        goals.append(
            {
                "goal": f"prunekit Global().allocate over 1e9 parameters in < {TIME_GOAL_S:g} s",
                "measured": f"{best:.2f} s (best of {len(m['runs'])})",
                "met": best < TIME_GOAL_S,
            }
        )
        goals.append(
            {
                "goal": f"extra peak memory < {MEM_GOAL:.0%} of the weights' bytes",
                "measured": f"{peak:.1%}",
                "met": peak < MEM_GOAL,
            }
        )
    notes = [
        f"Exactness ({check['tensors']} tensors, {check['elements']:,} elements, normal and tie-heavy data): prunekit "
        f"counts, Global().allocate and per-tensor masks are identical to torch.cat + stable sort: {check['ok']}. "
        f"torch.nn.utils.prune's masks differ from that reference in {check['normal']['torch_mask_elements_differing']} "
        "element(s) on the normal data (its topk breaks ties arbitrarily).",
        "others' CPU: share of the machine's CPU time used by other processes during that measurement (contention).",
        "Time column: each timed call (prunekit: --repeats calls in one fresh process). Extra peak: max over those "
        "calls of peak RSS minus the RSS with only the weights resident (measured before the first call).",
        f"torch runs under RLIMIT_AS so that at most {C.fmt_gib(budget)} of total RSS can be reached (--torch-budget-gb, "
        "capped at MemAvailable - 3 GiB at start); 'did not fit' means an allocation inside global_unstructured failed "
        "at that limit. It concatenates all scores, a ones-mask per tensor and their concatenation, then topk "
        "(k = 90 % of all parameters, int64 indices), then keeps a float32 mask and a `weight` copy per tensor.",
        "The masks row shows what turning prunekit's counts into bool masks costs (torch's number includes its "
        "masks); the bool masks themselves are 25 % of float32 weight bytes and are kept, not transient.",
    ]
    return {
        "title": "Global magnitude allocation at scale (synthetic float32 tensors)",
        "meta": meta,
        "tables": [
            {
                "caption": f"{args.sparsity:.0%} global sparsity, magnitude scores, seed {args.seed}",
                "columns": ["size", "method", "time (s)", "extra peak RSS", "extra / weights", "others' CPU", "status"],
                "rows": rows,
            }
        ],
        "goals": goals,
        "notes": notes,
        "verify": check,
        "measurements": ms,
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
