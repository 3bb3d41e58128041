"""Oracle benchmark: how well does each criterion rank units by the true loss change of removing them?

For every hidden neuron of LeNet-300-100 (fc1: 300, fc2: 100) and every filter of LeNet-5-Caffe (conv1: 20,
conv2: 50), trained on MNIST (seed 0), the unit alone is removed (its weight row and bias set to 0, so it outputs 0)
and the change in mean cross-entropy is measured on the 10,000 MNIST test images (and on the calibration set the
criteria see). Each criterion scores with 10 x 128 training images through ``collect`` + ``score``; the unit score
is ``Channel(0).unit_scores`` of the element scores (what the Pruner uses). Reported: Spearman rho per layer between
unit score and loss increase (positive = good), their mean, rho pooled over the net's units with raw scores (tests
cross-layer comparability), rho against |dL| (Molchanov 2019's squared-change oracle), and collect+score time.

Run from the repository root::

    PRUNEKIT_DATA=/path/to/data python benchmarks/criteria_oracle.py
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import torch
from criteria_common import (
    LAYER_LABEL,
    NETS,
    calibration,
    ce_loss,
    env_info,
    evaluate,
    mnist,
    modules_of,
    setup_threads,
    tensors,
    trained,
    unit_criteria,
    write_results,
)
from scipy.stats import spearmanr
from torch import Tensor, nn

from prunekit.patterns import Channel
from prunekit.scoring import ScoreContext, Target


def rho(a: Tensor, b: Tensor) -> float:
    if float(a.std()) == 0.0 or float(b.std()) == 0.0:
        return math.nan  # constant scores: no ranking at all
    r = spearmanr(a.double().numpy(), b.double().numpy()).statistic
    return float(r)


@torch.no_grad()
def true_changes(model: nn.Module, mod: nn.Module, x: Tensor, y: Tensor, base: float) -> Tensor:
    """Loss(unit k removed) - loss(dense) for every output unit k of ``mod``."""
    w, b = mod.weight, mod.bias
    out = torch.empty(w.shape[0], dtype=torch.float64)
    for k in range(w.shape[0]):
        wk, bk = w[k].clone(), (b[k].clone() if b is not None else None)
        w[k] = 0
        if b is not None:
            b[k] = 0
        out[k] = evaluate(model, x, y)[0] - base
        w[k] = wk
        if b is not None and bk is not None:
            b[k] = bk
    return out


def fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    setup_threads(args.threads)
    meta = env_info()
    tr, te = mnist("train"), mnist("test")
    xtr, ytr = tensors(tr)
    xte, yte = tensors(te)
    calib = calibration(xtr, ytr)
    xc, yc = torch.cat([b[0] for b in calib]), torch.cat([b[1] for b in calib])

    raw: dict[str, Any] = {}
    rows: list[list[Any]] = []
    notes: list[str] = []
    pattern = Channel(0)
    for net, spec in NETS.items():
        model, info = trained(net, args.seed, xtr, ytr, xte, yte)
        base_te, _ = evaluate(model, xte, yte)
        base_c, _ = evaluate(model, xc, yc)
        mods = modules_of(model, spec.units)
        t0 = time.perf_counter()
        truth = {f: true_changes(model, m, xte, yte, base_te) for f, m in mods.items()}
        truth_c = {f: true_changes(model, m, xc, yc, base_c) for f, m in mods.items()}
        oracle_s = time.perf_counter() - t0
        raw[net] = {
            "model": info,
            "oracle_seconds": round(oracle_s, 1),
            "true_delta_loss_test": {f: truth[f].tolist() for f in mods},
            "true_delta_loss_calib": {f: truth_c[f].tolist() for f in mods},
            "criteria": {},
        }
        for f in mods:
            d = truth[f]
            notes.append(
                f"{spec.label} {LAYER_LABEL[(net, f)]}: true dL on test: median {float(d.median()):.2e}, "
                f"max {float(d.max()):.2e}, {int((d < 0).sum())} units lower the loss when removed"
            )
        targets = [Target(f, "weight", m) for f, m in mods.items()]
        ctx = ScoreContext(model, calibration=calib, loss_fn=ce_loss)
        for cname, scorer in unit_criteria(spec.conv_relu).items():
            entry: dict[str, Any] = {}
            try:
                with warnings.catch_warnings(record=True) as wlist:
                    warnings.simplefilter("always")
                    scorer.check_context(ctx)
                    t1 = time.perf_counter()
                    stats = scorer.collect(ctx, targets)
                    scores = {t.fqn: pattern.unit_scores(scorer.score(t, stats, ctx).float()).double() for t in targets}
                    secs = time.perf_counter() - t1
                model.zero_grad(set_to_none=True)
            except Exception as e:  # a criterion that cannot run on this net is recorded, not fatal
                entry["skipped"] = f"{type(e).__name__}: {e}"
                raw[net]["criteria"][cname] = entry
                rows.append([spec.label, cname, *(["skip"] * (len(mods) + 4)), entry["skipped"][:80]])
                continue
            per = {f: rho(scores[f], truth[f]) for f in mods}
            per_c = {f: rho(scores[f], truth_c[f]) for f in mods}
            per_abs = {f: rho(scores[f], truth[f].abs()) for f in mods}
            valid = [v for v in per.values() if not math.isnan(v)]
            mean = sum(valid) / len(valid) if valid else math.nan
            pooled = rho(torch.cat([scores[f] for f in mods]), torch.cat([truth[f] for f in mods]))
            mean_c = [v for v in per_c.values() if not math.isnan(v)]
            mean_abs = [v for v in per_abs.values() if not math.isnan(v)]
            entry.update(
                {
                    "seconds": secs,
                    "rho_test": per,
                    "rho_calib": per_c,
                    "rho_abs_test": per_abs,
                    "rho_mean_layers": mean,
                    "rho_calib_mean_layers": sum(mean_c) / len(mean_c) if mean_c else math.nan,
                    "rho_abs_mean_layers": sum(mean_abs) / len(mean_abs) if mean_abs else math.nan,
                    "rho_pooled_raw": pooled,
                    "unit_scores": {f: scores[f].tolist() for f in mods},
                    "warnings": sorted({str(w.message)[:200] for w in wlist}),
                }
            )
            raw[net]["criteria"][cname] = entry
            rows.append(
                [
                    spec.label,
                    cname,
                    *(fmt(per[f]) for f in mods),
                    fmt(mean),
                    fmt(entry["rho_calib_mean_layers"]),
                    fmt(entry["rho_abs_mean_layers"]),
                    fmt(pooled),
                    f"{secs * 1000:.0f} ms",
                ]
            )
            per_r = [round(v, 2) for v in per.values()]
            print(f"{spec.label:14s} {cname:40s} rho {per_r} mean {mean:+.2f} {secs:.2f}s", flush=True)

    tables = []
    for net, spec in NETS.items():
        cols = [
            "net",
            "criterion",
            *(f"rho {LAYER_LABEL[(net, f)]}" for f in spec.units),
            "rho mean (test dL)",
            "rho mean (calib dL)",
            "rho mean vs abs(dL)",
            "rho pooled raw",
            "collect+score",
        ]
        tables.append(
            {
                "caption": f"{spec.label} (seed {args.seed}, dense test acc {raw[net]['model']['test_acc']:.4f}): "
                "Spearman rho of unit score vs true loss increase of removing the unit",
                "columns": cols,
                "rows": [r for r in rows if r[0] == spec.label],
            }
        )
    notes = [
        "True change dL = mean cross-entropy with the unit's weight row and bias zeroed (unit outputs 0) minus the "
        "dense loss, on the 10,000 MNIST test images ('test dL'); 'calib dL' uses the 1,280 calibration images the "
        "criteria see. Higher score = more important, so a good criterion has rho > 0.",
        "'rho mean' = mean of the per-layer rho; 'rho pooled raw' = one rho over all units of the net with the raw "
        "scores (meaningful only if a criterion's scores are comparable across layers, i.e. for global allocation).",
        "'rho vs abs(dL)' is Molchanov et al. 2019's oracle ((dL)^2, i.e. the rank of |dL|).",
        "Calibration: 10 batches x 128 training images (fixed permutation, seed 1234), loss_fn = cross-entropy. "
        "Timing = scorer.collect + scorer.score + Channel(0).unit_scores for all units of the net, wall-clock, one "
        "run (includes first-call overheads), 2 torch threads.",
        "LeNet-5-Caffe has no ReLU after its convolutions (zoo default, as in Caffe), so the activation criteria "
        "use nonlinearity='none' there (they see the raw conv output the next layer's max-pool sees); APoZ / "
        "near_zero are then degenerate (raw outputs are almost never exactly zero).",
        "Default hyper-parameters of every registered scorer; 'taylor (group=unit, M19)' and 'taylor_activation "
        "(squared)' are the Molchanov 2019 group / gate forms; 'taylor (element, sum)' sums per-weight Taylor scores "
        "over the unit. obd = 'auto' (exact Hessian diagonal for tensors <= 128 elements, Fisher above). obs scores "
        "a weight's layer-reconstruction saliency without the compensating update.",
        "random = RandomScore(seed=0): a sanity baseline whose rho should be ~0.",
        *notes,
    ]
    sec = {
        "title": "Pruning criteria vs the oracle (true loss change of removing one unit)",
        "meta": meta,
        "commands": ["PRUNEKIT_DATA=/path/to/data python benchmarks/criteria_oracle.py"],
        "tables": tables,
        "notes": notes,
        "raw": raw,
    }
    write_results("criteria_oracle", sec)
    print("wrote benchmarks/results/criteria_oracle.{json,md}")


if __name__ == "__main__":
    main()
