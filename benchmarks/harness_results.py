"""Experiment-harness benchmarks (issue 3), read from finished ``prunekit run`` directories.

* Han et al. 2015 reproduced: LeNet-300-100 and LeNet-5-Caffe, iterative magnitude train-prune-retrain with the
  paper's layer-wise sparsities; goal: at least the paper's sparsity and test error no worse than our own dense
  baseline + 0.05 points (mean of 3 seeds, final epoch). The dense baseline is the final-epoch error of each run's
  dense phase (``metrics.json`` records every phase's final-epoch metric).
* One-shot vs iterative vs the pruned architecture trained from scratch, LeNet-300-100 at 90/95/98 %.
* The accuracy-sparsity curve of LeNet-300-100 (11 sparsities x 3 seeds): does accuracy rise before it falls?

Runs are matched to their recipe by experiment hash (``prunekit.experiment.load_experiments``), so only the runs a
recipe describes are counted; unfinished benchmarks are reported as partial. Run from the repository root::

    python benchmarks/harness_results.py RUNS_ROOT   (the --out root of the prunekit run commands)

The runs come from the commands listed in ``results/harness.md`` (``RUNS/<benchmark>`` for each recipe). Writes
``results/harness.json``, ``results/harness.md`` and the accuracy-vs-sparsity plots ``results/harness_*.png``
(drawn by ``prunekit.experiment.plots``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO, RESULTS_DIR, _atomic_write, env_info, markdown_table

from prunekit.experiment import RunRecord, collect_runs, experiment_hash, group_runs, load_experiments
from prunekit.experiment.plots import sparsity_curve_png
from prunekit.experiment.report import mean_std
from prunekit.experiment.rundir import DONE_FILE

STEM = "harness"
GOAL_MARGIN = 0.05  # percentage points of test error above the dense baseline


@dataclass(frozen=True)
class Bench:
    key: str  # also the run directory under the runs root
    recipe: str
    kind: str  # han | curve | protocols
    title: str
    paper: dict[str, float] | None = None  # han: sparsity, dense_error, pruned_error (%)
    notes: tuple[str, ...] = ()


BENCHES = (
    Bench(
        "han2015_lenet300",
        "recipes/han2015_lenet300.yaml",
        "han",
        "Han et al. 2015 reproduced: LeNet-300-100 on MNIST",
        {"sparsity": 91.8, "dense_error": 1.64, "pruned_error": 1.59},
        (
            "Attempt `first` ran while the recipe held only that phase list; the recipe now holds both attempts as"
            " protocols, and the experiments (hence run directories) are the same, so the command re-runs neither.",
            "`tuned` retrains its dense phase (the shared-prefix cache did not exist yet when `first` ran); the dense"
            " phase is deterministic, and its final-epoch accuracy per seed equals `first`'s (table above).",
            "Caveat: the dense baseline trains 20 epochs, the pruned networks 50 (`first`) or 80 (`tuned`) epochs in"
            " all; a dense network trained for 80 epochs was not run.",
        ),
    ),
    Bench(
        "han2015_lenet5",
        "recipes/han2015_lenet5.yaml",
        "han",
        "Han et al. 2015 reproduced: LeNet-5-Caffe on MNIST",
        {"sparsity": 91.7, "dense_error": 0.80, "pruned_error": 0.77},
        (
            "Han's rounded per-layer sparsities give 91.57 % of our 430,500 weights, below the paper's 91.7 %; fc1 is"
            " pruned at 92.14 % (7.86 % kept, still the paper's 8 % when rounded) so that the overall is 91.703 %.",
            "The retraining learning rate (0.05, cosine, per round) was chosen after the LeNet-300-100 attempts above."
            " `first` (3 retraining epochs per round) ran while the recipe held only that phase list (same experiments"
            " and run directories as the recipe's `first` protocol now); `tuned` retrains 6 epochs per round and loads"
            " the dense phase `first` trained (shared prefix), so both are compared with the same dense baseline.",
            "`long` (10 retraining epochs per round) and `gradual` (6 rounds of 4 epochs: smaller pruning steps) were"
            " added after `tuned` missed by 0.003 points; neither closes the gap. The pruned networks train 15-36"
            " epochs in all against the dense phase's 6: the control `dense_long` trains the dense network 36 epochs"
            " and ends worse than the 6-epoch dense phase, so the goal is judged against the better (6-epoch) baseline.",
            "`l2`, the fifth attempt, is `tuned` with the L2 weight decay of Caffe's LeNet solver (5e-4 instead of 1e-4)"
            " while retraining, as Han et al. 2015 (section 3.1) retrain with L2 regularisation; it meets the goal"
            " (+0.027 points, every seed within +0.04). The same seeds and dense phases serve all five attempts; the"
            " seed-to-seed spread of one attempt (0.02-0.06 points) is of the order of the differences between"
            " attempts, so the other four are kept in the table rather than dropped.",
        ),
    ),
    Bench(
        "curve_lenet300",
        "recipes/curve_lenet300.yaml",
        "curve",
        "Accuracy vs sparsity, LeNet-300-100 on MNIST",
        notes=(
            "Protocol (the recipe's): 10 dense epochs, then 10 epochs with gradual global magnitude pruning (cubic,"
            " reaching the target after 5 epochs); batch 100. The 10 dense epochs are shared by the runs of a seed.",
        ),
    ),
    Bench(
        "oneshot_vs_iterative",
        "recipes/oneshot_vs_iterative.yaml",
        "protocols",
        "One-shot vs iterative vs from scratch, LeNet-300-100 on MNIST",
        notes=(
            "Budget: in every protocol the reported weights train 35 epochs, 20 at lr 0.05 and 15 at lr 0.01 (one-shot:"
            " 20 + 15 after one prune; iterative: 20 + 3 x 5 with a prune before each; global magnitude allocation)."
            " scratch: the one-shot mask, found after the 20 dense epochs, on fresh random weights (rewind: reinit),"
            " trained with the same 20 + 15 epoch schedule; its harness epoch count is 55 because the dense phase that"
            " finds the mask is counted.",
        ),
    ),
)


# -- reading runs ----------------------------------------------------------------------------------------------


def run_info(r: RunRecord, protocol: str) -> dict[str, Any]:
    """The numbers of one finished run; accuracies and errors in %, the final-epoch values only."""
    m = r.metrics
    phases = m["phases"]
    first = phases[0]
    dense = 100.0 * float(first["final"]) if first["kind"] == "train" and not first["pruning"] else None
    shared = sum(float(p["seconds"]) for p in phases if p.get("shared"))
    acc = 100.0 * r.value
    return {
        "run": r.run_dir.name,
        "protocol": protocol or "-",
        "seed": r.experiment.seed,
        "target": r.target,
        "sparsity": 100.0 * r.sparsity,
        "weights": m["params"]["masked"],
        "weights_left": m["params"]["masked_nonzero"],
        "accuracy": acc,
        "error": 100.0 - acc,
        "dense_accuracy": dense,
        "dense_error": None if dense is None else 100.0 - dense,
        "dense_epochs": int(first["epochs"]) if dense is not None else None,
        "epochs": m["epochs"],
        "seconds": float(m["seconds"]),
        "seconds_all_phases": float(m["seconds"]) + shared,
        "shared_phases": [p["phase"] for p in phases if p.get("shared")],
        "layers": {row["name"]: 100.0 * float(row["sparsity"]) for row in r.layers},
        "finished": _dt.datetime.fromtimestamp((r.run_dir / DONE_FILE).stat().st_mtime, _dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "torch": m["versions"]["torch"],
    }


def bench_runs(bench: Bench, root: Path) -> tuple[list[tuple[RunRecord, str]], int]:
    """Finished runs of ``bench``'s recipe under ``root/<key>``, each with the recipe's protocol name for it (the
    hash leaves the protocol label out), and the number of runs the recipe describes."""
    wanted = {experiment_hash(e): e.protocol for e in load_experiments(REPO / bench.recipe)}
    d = root / bench.key
    if not d.is_dir() or not any(d.rglob(DONE_FILE)):
        return [], len(wanted)
    runs = [(r, wanted[h]) for r in collect_runs([d]) if (h := experiment_hash(r.experiment)) in wanted]
    return sorted(runs, key=lambda rp: (rp[1], rp[0].target, rp[0].experiment.seed)), len(wanted)


# -- numbers ---------------------------------------------------------------------------------------------------


def pm(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def minutes(seconds: Sequence[float]) -> str:
    if not seconds:
        return "-"
    m, s = mean_std([x / 60 for x in seconds])
    return f"{m:.1f} ± {s:.1f} min" if len(seconds) > 1 else f"{m:.1f} min"


def by(infos: Sequence[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for i in infos:
        out.setdefault(tuple(i[k] for k in keys), []).append(i)
    return out


# -- sections --------------------------------------------------------------------------------------------------


def han_section(bench: Bench, infos: list[dict[str, Any]]) -> dict[str, Any]:
    paper = bench.paper or {}
    rows, goals, per_seed, controls = [], [], [], []
    for (protocol,), rs in by(infos, "protocol").items():
        if all(i["weights_left"] == i["weights"] for i in rs):  # a control without pruning: no goal, one line
            errs = [i["error"] for i in rs]
            wall = minutes([i["seconds_all_phases"] for i in rs])
            controls.append(
                f"Control `{protocol}` (dense, no pruning, {rs[0]['epochs']} epochs, {len(rs)} seed(s)): test error"
                f" {pm(errs)} % (per seed {', '.join(f'{e:.2f}' for e in errs)}); wall {wall}."
            )
            continue
        dense = [i["dense_error"] for i in rs]
        pruned = [i["error"] for i in rs]
        sp = [i["sparsity"] for i in rs]
        left = statistics.fmean(i["weights_left"] for i in rs)
        total = rs[0]["weights"]
        rows.append(
            [
                protocol,
                len(rs),
                f"{pm(dense)} ({rs[0]['dense_epochs']} ep.)",
                f"{pm(pruned)} ({rs[0]['epochs']} ep.)",
                pm([p - d for p, d in zip(pruned, dense, strict=True)]),
                f"{statistics.fmean(sp):.3f} %",
                f"{left:,.0f} of {total:,} ({total / left:.2f}x)",
                minutes([i["seconds_all_phases"] for i in rs]),
            ]
        )
        md, mp = statistics.fmean(dense), statistics.fmean(pruned)
        enough = min(sp) >= paper["sparsity"] - 1e-9
        good = mp <= md + GOAL_MARGIN + 1e-9  # errors are whole test images (0.01 %): absorb float rounding only
        goals.append(
            {
                "goal": f"[{protocol}] sparsity >= {paper['sparsity']} % and mean test error <= dense baseline"
                f" + {GOAL_MARGIN} points (final epoch, {len(rs)} seed(s))",
                "measured": f"sparsity {min(sp):.3f} % (min over seeds); error {mp:.3f} % vs dense {md:.3f} %"
                f" + {GOAL_MARGIN} = {md + GOAL_MARGIN:.3f} % (difference {mp - md:+.3f} points)",
                "met": bool(enough and good) if len(rs) >= 3 else None,  # None: fewer than 3 seeds finished
            }
        )
        for i in rs:
            per_seed.append(
                [
                    protocol,
                    i["seed"],
                    f"{i['dense_error']:.2f}",
                    f"{i['error']:.2f}",
                    f"{i['error'] - i['dense_error']:+.2f}",
                    f"{i['sparsity']:.3f} %",
                    ", ".join(f"{k.removesuffix('.weight')} {v:.2f}" for k, v in i["layers"].items()),
                    f"{i['seconds_all_phases'] / 60:.1f} min",
                    i["run"],
                ]
            )
    return {
        "goals": goals,
        "controls": controls,
        "tables": [
            {
                "caption": "Test error % (mean ± std over seeds, final epoch); dense = the final epoch of the same runs'"
                f" dense phase. Paper: {paper.get('dense_error')} % -> {paper.get('pruned_error')} %"
                f" at {paper.get('sparsity')} %.",
                "columns": [
                    "attempt",
                    "seeds",
                    "dense error %",
                    "pruned error %",
                    "pruned - dense (points)",
                    "sparsity (measured)",
                    "weights left",
                    "wall time per run",
                ],
                "rows": rows,
            },
            {
                "caption": "Per seed (layer sparsities in %)",
                "columns": ["attempt", "seed", "dense error %", "pruned error %", "diff", "sparsity", "layers", "wall", "run"],
                "rows": per_seed,
            },
        ],
    }


def curve_section(infos: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    points = []
    for (target,), rs in sorted(by(infos, "target").items()):
        acc = [i["accuracy"] for i in rs]
        points.append((target, *mean_std(acc), len(rs)))
        rows.append(
            [
                f"{100 * target:g} %",
                f"{statistics.fmean(i['sparsity'] for i in rs):.2f} %",
                pm(acc),
                pm([i["error"] for i in rs]),
                len(rs),
                rs[0]["epochs"],
                minutes([i["seconds_all_phases"] for i in rs]),
            ]
        )
    dense_phase = [i["dense_accuracy"] for i in infos if i["target"] == 0.0]
    notes = [
        "Sparsity 0 % is the dense baseline at the same 20-epoch budget (the pruning phase prunes nothing);"
        f" after its first 10 (dense) epochs the same runs had {pm(dense_phase)} %.",
    ]
    claim: dict[str, Any] = {"claim": "accuracy rises at moderate sparsity before it falls (Occam's hill)"}
    points = [p for p in points if p[3] > 1]  # the claim uses points with at least 2 seeds
    base = [p for p in points if p[0] == 0.0]
    if base and len(points) > 1:
        b_mean, b_std = base[0][1], base[0][2]
        best = max(points, key=lambda p: p[1])
        higher = [p for p in points if p[0] > 0 and p[1] > b_mean]
        claim["holds"] = best[0] > 0
        se = math.sqrt(best[2] ** 2 / best[3] + b_std**2 / base[0][3])
        t = (best[1] - b_mean) / se if se > 0 else math.inf
        claim["welch_t"] = round(t, 2)
        claim["measured"] = (
            f"dense {b_mean:.2f} ± {b_std:.2f} %; highest mean {best[1]:.2f} ± {best[2]:.2f} % at {100 * best[0]:g} %"
            f" ({best[1] - b_mean:+.2f} points, Welch t = {t:.2f} with {best[3]} and {base[0][3]} seeds; |t| > 2.78 would be"
            " significant at 5 % for 4 degrees of freedom); sparsities with a higher mean than dense: "
            + (", ".join(f"{100 * p[0]:g} % ({p[1] - b_mean:+.2f})" for p in higher) or "none")
        )
    return {
        "claims": [claim],
        "tables": [_table("Test accuracy % and error % (mean ± std over seeds, final epoch)", rows)],
        "notes": notes,
    }


def _table(caption: str, rows: list[list[Any]]) -> dict[str, Any]:
    cols = ["target sparsity", "measured", "accuracy %", "error %", "seeds", "epochs", "wall time per run"]
    return {"caption": caption, "columns": cols, "rows": rows}


def _beats(
    means: dict[tuple[float, str], tuple[float, float, int]], targets: list[float], winners: list[str], loser: str, text: str
) -> dict[str, Any]:
    """Claim: every protocol in ``winners`` has a higher mean accuracy than ``loser`` at every sparsity."""
    parts, holds = [], True
    for t in targets:
        if not all((t, p) in means for p in [*winners, loser]):
            return {"claim": text}  # not enough runs yet
        lo = means[(t, loser)]
        for w in winners:
            d = means[(t, w)][0] - lo[0]
            holds = holds and d > 0
            parts.append(f"{100 * t:g} %: {w} - {loser} = {d:+.2f} points (seed std {means[(t, w)][1]:.2f} / {lo[1]:.2f})")
    return {"claim": text, "holds": holds, "measured": "; ".join(parts)}


def protocols_section(infos: list[dict[str, Any]]) -> dict[str, Any]:
    order = [p for p in ("oneshot", "iterative", "scratch") if any(i["protocol"] == p for i in infos)]
    order += sorted({i["protocol"] for i in infos} - set(order))
    cells = by(infos, "target", "protocol")
    rows, rankings = [], []
    means: dict[tuple[float, str], tuple[float, float, int]] = {}
    targets = sorted({i["target"] for i in infos})
    for target in targets:
        row: list[Any] = [f"{100 * target:g} %"]
        for p in order:
            rs = cells.get((target, p), [])
            acc = [i["accuracy"] for i in rs]
            row.append(f"{pm(acc)} (n={len(rs)})" if rs else "-")
            if rs:
                means[(target, p)] = (*mean_std(acc), len(rs))
        rows.append(row)
        have = [p for p in order if (target, p) in means]
        if len(have) > 1:
            ranked = sorted(have, key=lambda p: -means[(target, p)][0])
            rankings.append(
                {
                    "sparsity": target,
                    "ranking": ranked,
                    "measured": " > ".join(f"{p} {means[(target, p)][0]:.2f} ± {means[(target, p)][1]:.2f}" for p in ranked),
                }
            )
    claims = [
        _beats(means, targets, ["iterative"], "oneshot", "iterative beats one-shot at the same budget (Han et al. 2015)"),
        _beats(
            means,
            targets,
            ["oneshot", "iterative"],
            "scratch",
            "pruning a trained network (one-shot and iterative) beats training the pruned architecture from scratch"
            " (Gale et al. 2019)",
        ),
        *rankings,
    ]
    dense = [i["dense_accuracy"] for i in {i["seed"]: i for i in infos}.values() if i["dense_accuracy"] is not None]
    times = [
        [p, minutes([i["seconds_all_phases"] for i in infos if i["protocol"] == p]), by(infos, "protocol")[(p,)][0]["epochs"]]
        for p in order
    ]
    return {
        "claims": claims,
        "tables": [
            {
                "caption": "Test accuracy % (mean ± std over seeds, final epoch); dense baseline (the 20-epoch dense phase"
                f" the protocols start from, per seed): {pm(dense)} %",
                "columns": ["sparsity", *order],
                "rows": rows,
            },
            {
                "caption": "Wall time per run (all phases, shared dense phase counted)",
                "columns": ["protocol", "wall", "harness epochs"],
                "rows": times,
            },
        ],
    }


# -- output ----------------------------------------------------------------------------------------------------


RUNS = "RUNS"  # how the results name the runs root (the machine's own path stays out of committed files)


def command(bench: Bench) -> str:
    return f"PRUNEKIT_DATA=/path/to/data OMP_NUM_THREADS=1 prunekit run {bench.recipe} --out {RUNS}/{bench.key} --no-progress"


def build(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "title": "Experiment harness benchmarks (issue 3)",
        "meta": env_info() | {"command": f"python benchmarks/harness_results.py {RUNS}"},
        "runs_root": RUNS,
        "benchmarks": {},
    }
    for bench in BENCHES:
        runs, expected = bench_runs(bench, root)
        infos = [run_info(r, protocol) for r, protocol in runs]
        sec: dict[str, Any] = {
            "title": bench.title,
            "recipe": bench.recipe,
            "commands": [command(bench)],
            "status": f"{len(runs)} of {expected} runs finished",
            "runs": infos,
        }
        if infos:
            sec["torch"] = sorted({i["torch"] for i in infos})
            sec["finished"] = f"{min(i['finished'] for i in infos)} .. {max(i['finished'] for i in infos)}"
            sec["total_minutes"] = round(sum(i["seconds"] for i in infos) / 60, 1)
            if bench.kind == "han":
                sec.update(han_section(bench, infos))
            elif bench.kind == "curve":
                sec.update(curve_section(infos))
            else:
                sec.update(protocols_section(infos))
            sec["notes"] = [*bench.notes, *sec.get("notes", [])]
            if bench.kind in ("curve", "protocols"):
                png = RESULTS_DIR / f"{STEM}_{bench.key}.png"
                png.write_bytes(sparsity_curve_png(group_runs([r for r, _ in runs])))
                sec["plot"] = png.name
        out["benchmarks"][bench.key] = sec
    _cross_check_dense(out["benchmarks"])
    return out


def _cross_check_dense(secs: dict[str, Any]) -> None:
    """The one-shot/iterative/scratch runs of a seed load one shared dense phase; the Han LeNet-300-100 runs train the
    same dense phase (same data, model, seed and training config) on their own. Note whether the results agree."""
    han = {i["seed"]: i["dense_accuracy"] for i in secs["han2015_lenet300"]["runs"]}
    ovi: dict[int, set[float]] = {}
    for i in secs["oneshot_vs_iterative"]["runs"]:
        ovi.setdefault(i["seed"], set()).add(i["dense_accuracy"])
    common = sorted(set(han) & set(ovi))
    if not common:
        return
    same = all(ovi[s] == {han[s]} for s in common)
    secs["oneshot_vs_iterative"].setdefault("notes", []).append(
        "The runs of one seed share their 20-epoch dense phase (trained once, loaded by the others from"
        " `<out>/.shared/`). Cross-check: the Han LeNet-300-100 runs train the same dense phase on their own; its"
        f" final-epoch accuracy per seed ({', '.join(f'{han[s]:.2f}' for s in common)} %) "
        + ("equals" if same else "DIFFERS FROM")
        + " the shared one's."
    )


def render(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        f"# {data['title']}",
        "",
        "Generated by `benchmarks/harness_results.py` from the run directories; do not edit by hand. Every number is the"
        " test metric after the final epoch of the last phase (never the best epoch seen), mean ± sample std over seeds."
        " Wall time per run counts every phase, including a dense phase shared with other runs of the same seed"
        " (trained once, see `prunekit/experiment/runner.py`).",
        "",
        f"Report: `{meta['command']}` ({meta['date']}). Runs: one process at a time, one torch thread"
        f" (OMP_NUM_THREADS=1), on a {meta['cpu_count']}-CPU machine shared with another job.",
        "",
    ]
    for sec in data["benchmarks"].values():
        lines += [f"## {sec['title']}", "", f"Recipe `{sec['recipe']}`; {sec['status']}.", "", "```", *sec["commands"], "```", ""]
        if "finished" in sec:
            lines += [
                f"Runs finished {sec['finished']}; torch {', '.join(sec['torch'])}; total wall time {sec['total_minutes']} min.",
                "",
            ]
        for goal in sec.get("goals", []):
            verdict = {True: "MET", False: "NOT MET"}.get(goal["met"], "PENDING (fewer than 3 seeds)")
            lines.append(f"- **Goal {verdict}**: {goal['goal']} — measured {goal['measured']}")
        for c in sec.get("claims", []):
            if "claim" in c:
                verdict = {True: "HOLDS", False: "DOES NOT HOLD"}.get(c.get("holds"), "?")
                lines.append(f"- **{c['claim']}: {verdict}** — {c.get('measured', 'not enough points')}")
            else:
                lines.append(f"- At {100 * c['sparsity']:g} %: {c['measured']}")
        lines += [f"- {c}" for c in sec.get("controls", [])]
        if sec.get("goals") or sec.get("claims") or sec.get("controls"):
            lines.append("")
        for tab in sec.get("tables", []):
            lines += [f"**{tab['caption']}**", "", markdown_table(tab["columns"], tab["rows"]), ""]
        if "plot" in sec:
            lines += [f"![{sec['title']}]({sec['plot']})", ""]
        lines += [f"- {n}" for n in sec.get("notes", [])]
        if sec.get("notes"):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="runs root holding <benchmark>/ run directories (the --out root of prunekit run)")
    args = ap.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data = build(args.runs.resolve())
    _atomic_write(RESULTS_DIR / f"{STEM}.json", json.dumps(data, indent=2) + "\n")
    _atomic_write(RESULTS_DIR / f"{STEM}.md", render(data))
    for key, sec in data["benchmarks"].items():
        print(f"{key}: {sec['status']}")


if __name__ == "__main__":
    main()
