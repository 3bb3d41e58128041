"""Oracle benchmark: how well does each criterion rank units by the true loss change of removing them?

For every hidden neuron of LeNet-300-100 (fc1: 300, fc2: 100) and every filter of LeNet-5-Caffe (conv1: 20,
conv2: 50), trained on MNIST (seed 0), the unit alone is removed (its weight row and bias set to 0, so it outputs 0)
and the change in mean cross-entropy is measured on the 10,000 MNIST test images (and on the calibration set the
criteria see). Each criterion scores with 10 x 128 training images through ``collect`` + ``score``; the unit score
is ``Channel(0).unit_scores`` of the element scores (what the Pruner uses). Reported: Spearman rho per layer between
unit score and loss increase (positive = good), their mean, rho pooled over the net's units with raw scores (tests
cross-layer comparability), rho against |dL| (Molchanov 2019's squared-change oracle), and collect+score time.

Uncertainty: every rho carries a 95 % percentile bootstrap interval over units (``--bootstrap`` replicates; units
resampled with replacement within each layer, over all the net's units for the pooled rho). The same resamples are
used for every criterion, so differences between criteria get paired intervals too (best criterion vs each other).
The interval covers which units happen to be in the layer, for this trained net and this calibration set; it does
not cover retraining with another seed or drawing another calibration set.

Run from the repository root::

    PRUNEKIT_DATA=/path/to/data python benchmarks/criteria_oracle.py --threads 1
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import numpy as np
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
from numpy.typing import NDArray
from scipy.stats import rankdata, spearmanr
from torch import Tensor, nn

from prunekit.patterns import Channel
from prunekit.scoring import ScoreContext, Target


def rho(a: Tensor, b: Tensor) -> float:
    if float(a.std()) == 0.0 or float(b.std()) == 0.0:
        return math.nan  # constant scores: no ranking at all
    r = spearmanr(a.double().numpy(), b.double().numpy()).statistic
    return float(r)


def spearman_rows(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Spearman rho of each row of ``a`` with the same row of ``b`` (average ranks for ties); NaN for a constant row."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)


class Bootstrap:
    """Unit resamples drawn once per net and shared by every criterion (paired comparisons)."""

    def __init__(self, sizes: dict[str, int], replicates: int, seed: int) -> None:
        g = np.random.default_rng(seed)
        self.idx = {f: g.integers(0, n, size=(replicates, n)) for f, n in sizes.items()}
        total = sum(sizes.values())
        self.pooled = g.integers(0, total, size=(replicates, total))

    def layer(self, fqn: str, score: Tensor, truth: Tensor) -> NDArray[np.float64]:
        i = self.idx[fqn]
        return spearman_rows(score.double().numpy()[i], truth.double().numpy()[i])

    def pooled_rho(self, score: Tensor, truth: Tensor) -> NDArray[np.float64]:
        i = self.pooled
        return spearman_rows(score.double().numpy()[i], truth.double().numpy()[i])


def ci95(reps: NDArray[np.float64]) -> list[float]:
    ok = reps[~np.isnan(reps)]
    if len(ok) < 0.9 * len(reps):  # constant scores (or nearly always constant resamples): no interval
        return [math.nan, math.nan]
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return [float(lo), float(hi)]


def mean_reps(per: dict[str, float], reps: dict[str, NDArray[np.float64]]) -> NDArray[np.float64]:
    """Replicates of the mean over layers, over the layers whose point rho exists (as the point estimate)."""
    valid = [f for f, v in per.items() if not math.isnan(v)]
    if not valid:
        return np.full(len(next(iter(reps.values()))), np.nan)
    return np.mean(np.stack([reps[f] for f in valid]), axis=0)  # type: ignore[no-any-return]


def compare(point: dict[str, float], reps: dict[str, NDArray[np.float64]]) -> dict[str, Any]:
    """The criterion with the highest mean rho, and the paired bootstrap interval of its lead over every other one."""
    if not point:
        return {}
    best = max(point, key=lambda c: point[c])
    vs = {c: {"diff": point[best] - point[c], "ci95": ci95(reps[best] - reps[c])} for c in point if c != best}
    return {"best": best, "rho_mean": point[best], "ci95": ci95(reps[best]), "vs": vs}


def paired(a: str, b: str, point: dict[str, float], reps: dict[str, NDArray[np.float64]]) -> str:
    """'a - b = +0.12 [+0.03, +0.20]' on the mean rho, paired bootstrap."""
    if a not in point or b not in point:
        return f"{a} - {b}: n/a"
    lo, hi = ci95(reps[a] - reps[b])
    return f"{a} - {b} = {point[a] - point[b]:+.2f} [{lo:+.2f}, {hi:+.2f}]"


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


def fmt_ci(v: float, ci: list[float]) -> str:
    if math.isnan(v):
        return "n/a"
    return fmt(v) if math.isnan(ci[0]) else f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates for the 95 %% intervals")
    args = ap.parse_args()
    setup_threads(args.threads)
    t_start = time.perf_counter()
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
    findings: list[str] = []
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
        boot = Bootstrap({f: len(truth[f]) for f in mods}, args.bootstrap, seed=args.seed)
        mean_by_crit: dict[str, NDArray[np.float64]] = {}  # bootstrap replicates of 'rho mean (test dL)'
        point_by_crit: dict[str, float] = {}
        abs_by_crit: dict[str, NDArray[np.float64]] = {}  # same for 'rho mean vs abs(dL)'
        point_abs: dict[str, float] = {}
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
            all_s, all_t = torch.cat([scores[f] for f in mods]), torch.cat([truth[f] for f in mods])
            pooled = rho(all_s, all_t)
            mean_c = [v for v in per_c.values() if not math.isnan(v)]
            mean_abs = [v for v in per_abs.values() if not math.isnan(v)]
            reps = {f: boot.layer(f, scores[f], truth[f]) for f in mods}
            reps_c = {f: boot.layer(f, scores[f], truth_c[f]) for f in mods}
            reps_abs = {f: boot.layer(f, scores[f], truth[f].abs()) for f in mods}
            m_reps = mean_reps(per, reps)
            ci = {
                "rho_test": {f: ci95(reps[f]) if not math.isnan(per[f]) else [math.nan] * 2 for f in mods},
                "rho_mean_layers": ci95(m_reps),
                "rho_calib_mean_layers": ci95(mean_reps(per_c, reps_c)),
                "rho_abs_mean_layers": ci95(mean_reps(per_abs, reps_abs)),
                "rho_pooled_raw": ci95(boot.pooled_rho(all_s, all_t)) if not math.isnan(pooled) else [math.nan] * 2,
            }
            if not math.isnan(mean):
                mean_by_crit[cname], point_by_crit[cname] = m_reps, mean
            if mean_abs:
                abs_by_crit[cname] = mean_reps(per_abs, reps_abs)
                point_abs[cname] = sum(mean_abs) / len(mean_abs)
            entry.update(
                {
                    "ci95": ci,
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
                    *(fmt_ci(per[f], ci["rho_test"][f]) for f in mods),
                    fmt_ci(mean, ci["rho_mean_layers"]),
                    fmt_ci(entry["rho_calib_mean_layers"], ci["rho_calib_mean_layers"]),
                    fmt_ci(entry["rho_abs_mean_layers"], ci["rho_abs_mean_layers"]),
                    fmt_ci(pooled, ci["rho_pooled_raw"]),
                    f"{secs * 1000:.0f} ms",
                ]
            )
            per_r = [round(v, 2) for v in per.values()]
            lo, hi = ci["rho_mean_layers"]
            print(f"{spec.label:14s} {cname:40s} rho {per_r} mean {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] {secs:.2f}s", flush=True)
        cmp = compare(point_by_crit, mean_by_crit)
        raw[net]["comparison"] = cmp
        if cmp:
            tied = [c for c, v in cmp["vs"].items() if not v["ci95"][0] > 0]
            closest = sorted(cmp["vs"], key=lambda c: cmp["vs"][c]["diff"])[:3]
            findings.append(
                f"{spec.label}: best mean rho (test dL): {cmp['best']} {fmt_ci(cmp['rho_mean'], cmp['ci95'])}; "
                "paired lead over the closest: "
                + ", ".join(f"{c} {fmt_ci(cmp['vs'][c]['diff'], cmp['vs'][c]['ci95'])}" for c in closest)
                + "; lead not significant (interval includes 0) over: "
                + (", ".join(tied) if tied else "none")
                + "."
            )
            taylors = ("taylor (element, sum)", "taylor (group=unit, M19)", "taylor_activation (squared, M19 gate)")
            mag = "magnitude (L1 of row)"
            findings.append(
                f"{spec.label}, Molchanov 2019's claim (Taylor correlates well, magnitude poorly), paired differences "
                "of mean rho vs the signed dL: "
                + "; ".join(paired(t, mag, point_by_crit, mean_by_crit) for t in taylors)
                + "; vs |dL| (their oracle): "
                + "; ".join(paired(t, mag, point_abs, abs_by_crit) for t in taylors)
                + "."
            )
        raw[net]["seconds"] = round(time.perf_counter() - t0, 1)

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
                "Spearman rho of unit score vs true loss increase of removing the unit [95 % bootstrap interval over units]",
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
        "Intervals: [lo, hi] = 95 % percentile bootstrap interval, "
        f"{args.bootstrap} replicates; units resampled with replacement within each layer (for 'pooled', over all "
        "the net's units); the same resamples for every criterion, so differences between criteria are paired. "
        "They cover the sampling of units for this one trained net (seed "
        f"{args.seed}) and this calibration set, not retraining or recalibration (chosen over mean ± std of 3 seeds "
        "because it needs no extra oracle runs).",
        "Calibration: 10 batches x 128 training images (fixed permutation, seed 1234), loss_fn = cross-entropy. "
        "Timing = scorer.collect + scorer.score + Channel(0).unit_scores for all units of the net, wall-clock, one "
        f"run (includes first-call overheads), {meta['threads']} torch thread(s), on a machine shared with other "
        "jobs (load average at start in the header).",
        "LeNet-5-Caffe has no ReLU after its convolutions (zoo default, as in Caffe), so the activation criteria "
        "use nonlinearity='none' there (they see the raw conv output the next layer's max-pool sees); APoZ / "
        "near_zero are then degenerate (raw outputs are almost never exactly zero).",
        "Default hyper-parameters of every registered scorer; 'taylor (group=unit, M19)' and 'taylor_activation "
        "(squared)' are the Molchanov 2019 group / gate forms; 'taylor (element, sum)' sums per-weight Taylor scores "
        "over the unit. obd = 'auto' (exact Hessian diagonal for tensors <= 128 elements, Fisher above). obs scores "
        "a weight's layer-reconstruction saliency without the compensating update.",
        "random = RandomScore(seed=0): a sanity baseline whose rho should be ~0.",
        *notes,
        *(
            f"{NETS[n].label}: wall-clock {r['seconds']:.0f} s (true dL of every unit: {r['oracle_seconds']:.0f} s)"
            for n, r in raw.items()
        ),
    ]
    n_crit = len(unit_criteria(True))
    ran = {n: sum("skipped" not in e for e in r["criteria"].values()) for n, r in raw.items()}
    constant = {
        n: [c for c, e in r["criteria"].items() if "skipped" not in e and math.isnan(e["rho_mean_layers"])]
        for n, r in raw.items()
    }
    goals = [
        {
            "goal": "Spearman rank correlation of every criterion with the true loss change of removing each unit "
            "(every neuron of LeNet-300-100, every filter of LeNet-5), with its uncertainty, and the time each "
            "criterion takes",
            "measured": "; ".join(
                f"{NETS[n].label}: {k}/{n_crit} criteria ran"
                + (f" ({', '.join(constant[n])}: constant scores, no rho)" if constant[n] else "")
                for n, k in ran.items()
            )
            + " (95 % bootstrap intervals over units; collect+score wall-clock)",
            "met": all(k == n_crit for k in ran.values()) and len(ran) == len(NETS),
        }
    ]
    notes = [*(f"Finding: {f}" for f in findings), *notes]
    sec = {
        "title": "Pruning criteria vs the oracle (true loss change of removing one unit)",
        "meta": meta,
        "commands": [f"PRUNEKIT_DATA=/path/to/data {meta['command']}"],
        "goals": goals,
        "tables": tables,
        "notes": notes,
        "raw": raw,
    }
    write_results("criteria_oracle", sec)
    print(f"wrote benchmarks/results/criteria_oracle.{{json,md}} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
