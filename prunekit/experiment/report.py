"""Reports over finished runs: ``report.md`` (a table) and ``report.html`` (the table plus embedded plots).

Runs are grouped by *method*: everything in the experiment's canonical form except the pruning target sparsity and
the seed. For each method and target sparsity the table gives the mean and sample standard deviation over seeds of
the reported metric (the evaluation after the last phase, never the best epoch seen) and the number of runs.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError, PrunekitError
from prunekit.experiment.rundir import DONE_FILE, EXPERIMENT_FILE, METRICS_FILE, SPARSITY_FILE, read_json, write_text_atomic
from prunekit.experiment.spec import Experiment, PrunePhase, RewindPhase, TrainPhase, canonical_dict, load_experiment

log = logging.getLogger(__name__)

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"


@dataclass(frozen=True)
class RunRecord:
    """A finished run as read back from its directory."""

    run_dir: Path
    experiment: Experiment
    metrics: dict[str, Any] = field(repr=False)
    layers: list[dict[str, Any]] = field(repr=False)

    @property
    def metric(self) -> str:
        return str(self.metrics["metric"])

    @property
    def value(self) -> float:
        """The reported number: the metric of the evaluation after the last phase."""
        return float(self.metrics["final"][self.metric])

    @property
    def target(self) -> float:
        return self.experiment.target_sparsity

    @property
    def sparsity(self) -> float:
        """Measured sparsity of the pruned tensors."""
        return float(self.metrics["sparsity"]["masked"])


@dataclass(frozen=True)
class Group:
    """Runs of one method (all runs that differ only in target sparsity and seed)."""

    label: str
    runs: tuple[RunRecord, ...]

    def by_target(self) -> list[tuple[float, list[RunRecord]]]:
        out: dict[float, list[RunRecord]] = {}
        for r in self.runs:
            out.setdefault(round(r.target, 9), []).append(r)
        return [(t, sorted(rs, key=lambda r: r.experiment.seed)) for t, rs in sorted(out.items())]

    def chosen(self) -> RunRecord:
        """The run shown in per-run plots: highest target sparsity, then lowest seed."""
        return min(self.runs, key=lambda r: (-r.target, r.experiment.seed, r.run_dir.name))


def _read_run(run_dir: Path) -> RunRecord:
    try:
        exp = load_experiment(run_dir / EXPERIMENT_FILE)
        metrics = read_json(run_dir / METRICS_FILE)
        layers = read_json(run_dir / SPARSITY_FILE)["layers"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError("DIR", str(run_dir), f"unreadable run directory ({e})") from None
    return RunRecord(run_dir, exp, metrics, layers)


def collect_runs(dirs: Sequence[str | Path]) -> list[RunRecord]:
    """Finished runs (directories with DONE) given directly or found anywhere below ``dirs``; others are skipped."""
    found: dict[Path, None] = {}
    unfinished = 0
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ConfigError("DIR", str(d), "no such directory")
        if (d / DONE_FILE).exists():
            found[d.resolve()] = None
            continue
        if (d / EXPERIMENT_FILE).exists():
            unfinished += 1
        for p in sorted(d.rglob(EXPERIMENT_FILE)):
            if (p.parent / DONE_FILE).exists():
                found[p.parent.resolve()] = None
            else:
                unfinished += 1
    if unfinished:
        log.warning("skipped %d unfinished run(s) (no DONE)", unfinished)
    runs = []
    for r in found:
        try:
            runs.append(_read_run(r))
        except PrunekitError as e:
            log.warning("skipped %s: %s", r, e)
    if not runs:
        raise ConfigError("DIR", [str(d) for d in dirs], "no finished runs (directories with DONE) found")
    return runs


def _method_key(exp: Experiment) -> dict[str, Any]:
    d = copy.deepcopy(canonical_dict(exp))
    d.pop("seed")
    if d.get("pruning") is not None:
        d["pruning"].pop("sparsity", None)
    return d


def _component(d: dict[str, Any]) -> str:
    """``magnitude(p=1.0)``: a registered component (a mapping with a ``name``) as one readable value."""
    params = ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in d.items() if k != "name")
    return f"{d['name']}({params})" if params else str(d["name"])


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict) and prefix and "name" in d and prefix.startswith("pruning."):
        return {prefix: _component(d)}
    if isinstance(d, dict) and prefix != "phases":
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(d, sort_keys=True) if not isinstance(d, str) else d}


def phases_summary(exp: Experiment) -> str:
    """E.g. ``train20 prune train10`` (``prune 2/3`` for iterative rounds, ``rewind:init``)."""
    parts = []
    for p in exp.phases:
        if isinstance(p, TrainPhase):
            parts.append(f"train{p.config.epochs}" + ("+pruning" if p.pruning else ""))
        elif isinstance(p, PrunePhase):
            parts.append(
                "prune"
                + (f" {p.round}/{p.rounds}" if p.rounds > 1 else "")
                + (f"@{p.sparsity:g}" if p.sparsity is not None else "")
            )
        elif isinstance(p, RewindPhase):
            parts.append(f"rewind:{p.to.shorthand()}")
    return " ".join(parts)


def _labels(flats: dict[str, dict[str, str]], exps: dict[str, Experiment]) -> dict[str, str]:
    """For each method key, the values of what differs between methods.

    Phase lists are named by what produced them: the protocol name and the ``rewind`` option when these tell the
    methods apart (a method without a protocol name gets its summary instead), else a summary such as
    ``train20 prune train10``. Methods without pruning are called ``dense``.
    """

    def differing(keys: list[str]) -> list[str]:
        fields = sorted({f for k in keys for f in flats[k]})
        return [f for f in fields if f != "phases" and len({flats[k].get(f) for k in keys}) > 1]

    pruned = [k for k, e in exps.items() if e.pruning is not None]
    other = [f for f in differing(list(flats)) if not f.startswith("pruning")]
    parts: dict[str, list[str]] = {}
    for k, e in exps.items():
        fields = other + ([f for f in differing(pruned) if f.startswith("pruning.")] if e.pruning is not None else [])
        parts[k] = (["dense"] if e.pruning is None and pruned else []) + [f"{f}={flats[k].get(f, '-')}" for f in fields]
    if len({fl.get("phases") for fl in flats.values()}) > 1:
        meta = {k: {"protocol": e.protocol, "rewind": f"rewind={e.rewind.shorthand()}"} for k, e in exps.items()}
        named = [m for m in ("protocol", "rewind") if len({meta[k][m] for k in flats}) > 1]
        distinct = len({(*parts[k], *(meta[k][m] for m in named)) for k in flats}) == len(flats)
        for k in flats:
            extra = [meta[k][m] or phases_summary(exps[k]) for m in named] if named and distinct else [phases_summary(exps[k])]
            parts[k] = extra + parts[k]
    return {k: ", ".join(p) for k, p in parts.items()}


def group_runs(runs: Sequence[RunRecord]) -> list[Group]:
    """Group runs by method; labels name what differs between the methods (see :func:`_labels`)."""
    keyed: dict[str, list[RunRecord]] = {}
    for r in runs:
        keyed.setdefault(json.dumps(_method_key(r.experiment), sort_keys=True), []).append(r)
    flats = {k: _flatten(json.loads(k)) for k in keyed}
    labels = _labels(flats, {k: rs[0].experiment for k, rs in keyed.items()}) if len(keyed) > 1 else {}
    groups = []
    for k, rs in keyed.items():
        exp = rs[0].experiment
        groups.append(Group(labels.get(k) or exp.protocol or exp.name, tuple(rs)))
    # labels that still coincide (e.g. methods that differ only in a field the label leaves out): number them
    seen: dict[str, int] = {}
    for i, g in enumerate(groups):
        n = seen.get(g.label, 0)
        seen[g.label] = n + 1
        if n:
            groups[i] = Group(f"{g.label} #{n + 1}", g.runs)
    return sorted(groups, key=lambda g: (g.runs[0].experiment.pruning is not None, g.label))  # dense first


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = statistics.fmean(values)
    return m, statistics.stdev(values) if len(values) > 1 else 0.0


def format_value(metric: str, mean: float, std: float, n: int) -> str:
    if metric == "accuracy":
        text = f"{100 * mean:.2f}"
        return f"{text} ± {100 * std:.2f} %" if n > 1 else f"{text} %"
    return f"{mean:.4g} ± {std:.2g}" if n > 1 else f"{mean:.4g}"


def table_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One row per (method, target sparsity): mean ± std of the reported metric over seeds, and n."""
    rows = []
    for g in groups:
        for target, rs in g.by_target():
            metric = rs[0].metric
            m, s = mean_std([r.value for r in rs])
            rows.append(
                {
                    "method": g.label,
                    "target": target,
                    "sparsity": statistics.fmean(r.sparsity for r in rs),
                    "metric": metric,
                    "mean": m,
                    "std": s,
                    "n": len(rs),
                    "seeds": [r.experiment.seed for r in rs],
                    "epochs": rs[0].experiment.epoch_budget,
                }
            )
    return rows


def markdown_report(groups: Sequence[Group]) -> str:
    rows = table_rows(groups)
    metrics = sorted({r["metric"] for r in rows})
    n_runs = sum(len(g.runs) for g in groups)
    lines = [
        "# prunekit report",
        "",
        f"{n_runs} finished runs, {len(groups)} method(s). The metric is {' / '.join(metrics)} on the test split after the"
        " last phase (the final epoch, never the best epoch seen), as mean ± sample standard deviation over seeds;"
        " n is the number of seeds. Target is the recipe's sparsity; measured is the pruned fraction of the targeted"
        " tensors.",
        "",
        "| method | target sparsity | measured sparsity | " + " / ".join(metrics) + " | n | epochs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        value = format_value(r["metric"], r["mean"], r["std"], r["n"])
        lines.append(f"| {r['method']} | {r['target']:.4g} | {100 * r['sparsity']:.2f} % | {value} | {r['n']} | {r['epochs']} |")
    lines += ["", "## Methods", ""]
    for g in groups:
        exp = g.runs[0].experiment
        lines.append(f"- **{g.label}**: {exp.data.name}, {exp.model.name}, phases `{phases_summary(exp)}`; {len(g.runs)} run(s)")
    return "\n".join(lines) + "\n"


def _check_out(out: Path, runs: Sequence[RunRecord]) -> None:
    o = out.resolve()
    for r in runs:
        rd = r.run_dir.resolve()
        if o == rd or rd in o.parents:
            raise ConfigError("--out", str(out), f"is inside the run directory {r.run_dir}; reports never write into runs")
    if (out / EXPERIMENT_FILE).exists():
        raise ConfigError("--out", str(out), "is a run directory; choose another output directory")


def write_report(dirs: Sequence[str | Path], out: str | Path, *, html: bool = True) -> tuple[Path, Path | None]:
    """Collect runs under ``dirs`` and write ``out/report.md`` (and ``out/report.html``), each atomically."""
    out = Path(out)
    runs = collect_runs(dirs)
    _check_out(out, runs)
    groups = group_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_report(groups)
    write_text_atomic(out / MARKDOWN_FILE, md)
    html_path = None
    if html:
        from prunekit.experiment.html import html_report

        html_path = out / HTML_FILE
        write_text_atomic(html_path, html_report(groups))
    log.info("wrote %s", out)
    return out / MARKDOWN_FILE, html_path
