"""Structured pruning with physical removal, then fine-tuning, on MNIST (issue 5, "accuracy with fine-tuning").

For LeNet-300-100 (hidden neurons of fc1, fc2) and LeNet-5-Caffe (filters of conv1, conv2 and hidden units of fc1),
remove 50 % and 75 % of the units of every prunable group (uniform allocation) with

* the best criterion of the oracle benchmark (``benchmarks/results/criteria_oracle.md``: highest Spearman rank
  correlation with the true loss change across all units: OBS on LeNet-300-100, OBD on LeNet-5), and
* magnitude (L1 of the unit's weights, producer and consumer slices) as the baseline,

slim the model (``prunekit.structure``), evaluate, fine-tune ``--ft-epochs`` epochs (Adam, lr 1e-3 / 3) and evaluate
again; and train the *same slim architecture* from scratch (fresh random weights, the plan applied to a new model)
for the dense budget plus the fine-tuning budget. Dense models are the cached ones of the criteria benchmarks
(``benchmarks/criteria_common.py``). Mean and standard deviation over seeds; test error in %.

    PRUNEKIT_DATA=/path/to/data python benchmarks/structure_finetune.py
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, command_line
from criteria_common import (
    NETS,
    build,
    calibration,
    ce_loss,
    evaluate,
    mnist,
    setup_threads,
    tensors,
    train_epochs,
    trained,
    write_results,
)  # fmt: skip

from prunekit.scoring import Magnitude
from prunekit.scoring.base import AbstractScorer, ScoreContext
from prunekit.scoring.hessian import OBD, OBS
from prunekit.structure import apply_plan_, build_groups
from prunekit.structure.importance import StructuredConfig, structured_plan

BEST: dict[str, tuple[str, AbstractScorer]] = {"lenet_300_100": ("obs", OBS()), "lenet5_caffe": ("obd", OBD())}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def run_one(net: str, seed: int, ratio: float, crit: str, scorer: AbstractScorer, data: Any, ft_epochs: int) -> dict[str, Any]:
    xtr, ytr, xte, yte = data
    spec = NETS[net]
    dense, info = trained(net, seed, xtr, ytr, xte, yte)
    example = xtr[:4]
    ctx = ScoreContext(dense, calibration=calibration(xtr, ytr), loss_fn=ce_loss)
    t0 = time.perf_counter()
    cfg = StructuredConfig(ratio=ratio, scorer=scorer)
    plan = structured_plan(dense, example, cfg, ctx, groups=build_groups(dense, example))
    slim = apply_plan_(copy.deepcopy(dense), plan)
    prune_s = time.perf_counter() - t0
    _, acc0 = evaluate(slim, xte, yte)
    t0 = time.perf_counter()
    train_epochs(slim, xtr, ytr, ft_epochs, spec.lr / 3, seed + 100)
    ft_s = time.perf_counter() - t0
    _, acc_ft = evaluate(slim, xte, yte)
    torch.manual_seed(seed + 1000)
    scratch = apply_plan_(build(net), plan)
    t0 = time.perf_counter()
    train_epochs(scratch, xtr, ytr, spec.epochs + ft_epochs, spec.lr, seed + 1000)
    scratch_s = time.perf_counter() - t0
    _, acc_scratch = evaluate(scratch, xte, yte)
    widths = {e.module: len(e.kept) for e in plan.entries if e.axis == "out"}
    return {
        "net": net, "seed": seed, "ratio": ratio, "criterion": crit, "widths": widths,
        "params_dense": n_params(dense), "params_slim": n_params(slim),
        "err_dense": 100 * (1 - info["test_acc"]), "err_pruned": 100 * (1 - acc0), "err_ft": 100 * (1 - acc_ft),
        "err_scratch": 100 * (1 - acc_scratch), "prune_s": round(prune_s, 2), "ft_s": round(ft_s, 1),
        "scratch_s": round(scratch_s, 1),
    }  # fmt: skip


def ms(v: list[float]) -> str:
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def section(rows: list[dict[str, Any]], ft_epochs: int) -> dict[str, Any]:
    table = []
    keys = sorted({(r["net"], r["ratio"], r["criterion"]) for r in rows})
    for net, ratio, crit in keys:
        rs = [r for r in rows if (r["net"], r["ratio"], r["criterion"]) == (net, ratio, crit)]
        d, ft = [r["err_dense"] for r in rs], [r["err_ft"] for r in rs]
        table.append([
            NETS[net].label, f"{ratio:.0%}", crit, f"{rs[0]['params_slim']:,} / {rs[0]['params_dense']:,}", ms(d),
            ms([r["err_pruned"] for r in rs]), f"**{ms(ft)}**", ms([r["err_scratch"] for r in rs]),
            f"{statistics.mean(ft) - statistics.mean(d):+.2f}", len(rs),
        ])  # fmt: skip
    first = {(r["net"], r["ratio"], r["criterion"]): r["widths"] for r in rows if r["seed"] == rows[0]["seed"]}
    return {
        "title": "Structured removal + fine-tuning on MNIST (issue 5)",
        "tables": [
            {
                "caption": f"Test error (%), final epoch, mean ± std over seeds; fine-tuning {ft_epochs} epoch(s)",
                "columns": [
                    "net",
                    "units removed",
                    "criterion",
                    "params (slim / dense)",
                    "dense",
                    "pruned, no FT",
                    "pruned + FT",
                    "slim arch from scratch",
                    "FT - dense",
                    "seeds",
                ],
                "rows": table,
            }
        ],
        "notes": [
            "Every prunable group loses the same fraction of its units (uniform allocation); the output layer is never "
            "pruned. Units are removed physically (prunekit.structure: build_groups -> structured_plan -> apply_plan_).",
            "Criteria: the best of the oracle benchmark (criteria_oracle.md, Spearman with the true loss change across all "
            "units: OBS on LeNet-300-100, OBD on LeNet-5), and magnitude (L1 of each unit's producer and consumer weights, "
            "member-mean-normalised) as the baseline. Calibration for OBS/OBD: 10 batches of 128 training images.",
            f"Fine-tuning: Adam, lr = dense lr / 3, {ft_epochs} epoch(s) over the 60k training images. Scratch: fresh random "
            f"weights in the slim architecture, dense epochs + {ft_epochs} at the dense lr (same total budget).",
            "Dense models: the cached ones of the criteria benchmarks (Adam; LeNet-300-100 8 epochs, LeNet-5 3 epochs).",
            "Kept output units per layer (first seed): "
            + "; ".join(f"{NETS[k[0]].label} {k[1]:.0%} {k[2]}: {v}" for k, v in sorted(first.items())),
        ],
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=list(BEST), choices=list(BEST))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.75])
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="structure_finetune")
    args = ap.parse_args()
    setup_threads(args.threads)
    xtr, ytr = tensors(mnist("train"))
    xte, yte = tensors(mnist("test"))
    rows = []
    for net in args.nets:
        for crit, scorer in (BEST[net], ("magnitude", Magnitude())):
            for ratio in args.ratios:
                for seed in args.seeds:
                    r = run_one(net, seed, ratio, crit, scorer, (xtr, ytr, xte, yte), args.ft_epochs)
                    print(f"{net} {crit} {ratio} seed {seed}: dense {r['err_dense']:.2f} pruned {r['err_pruned']:.2f} "
                          f"ft {r['err_ft']:.2f} scratch {r['err_scratch']:.2f}", flush=True)  # fmt: skip
                    rows.append(r)
    # rows of nets not run this time are kept from the previous result file (nets can be run separately)
    prev = RESULTS_DIR / f"{args.out}.json"
    commands = []
    if prev.exists():
        old = json.loads(prev.read_text())
        rows = [r for r in old.get("rows", []) if r["net"] not in args.nets] + rows
        commands = [c for c in old.get("commands", []) if not all(n in c for n in args.nets)]
    sec = section(rows, args.ft_epochs)
    sec["commands"] = [*commands, "PRUNEKIT_DATA=/path/to/data " + command_line()]
    write_results(args.out, sec)


if __name__ == "__main__":
    main()
