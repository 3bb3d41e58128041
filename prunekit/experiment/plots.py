"""Report figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

No pyplot and no global backend switch: each figure is a ``matplotlib.figure.Figure`` with its own
``FigureCanvasAgg``, so drawing a report changes nothing in the caller's matplotlib state. matplotlib is imported
only when a figure is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prunekit.experiment.report import Group, RunRecord, mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, f"test {metric} (%)") if metric == "accuracy" else (1.0, f"test {metric}")


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def sparsity_curve_png(groups: Sequence[Group]) -> bytes:
    """Metric vs sparsity per method: mean over seeds (line) and ±1 sample std (band). The x axis is the fraction of
    weights remaining on a log scale, labelled with the sparsity, so 90 %, 99 % and 99.9 % are equally spaced."""
    fig = _figure(8.0, 4.8)
    ax = fig.add_subplot()
    metric = groups[0].runs[0].metric
    k, ylabel = _scale(metric)
    remaining: set[float] = set()
    for i, g in enumerate(groups):
        pts = [(t, *mean_std([r.value for r in rs]), len(rs)) for t, rs in g.by_target()]
        x = [100.0 * (1.0 - t) for t, *_ in pts]
        m = [k * p[1] for p in pts]
        s = [k * p[2] for p in pts]
        remaining.update(x)
        n = max(p[3] for p in pts)
        ax.plot(x, m, "o-", color=color(i), label=f"{g.label} (n={n})" if n > 1 else g.label, linewidth=1.8, markersize=4)
        if any(p[3] > 1 for p in pts):
            ax.fill_between(
                x,
                [a - b for a, b in zip(m, s, strict=True)],
                [a + b for a, b in zip(m, s, strict=True)],
                color=color(i),
                alpha=0.2,
                linewidth=0,
            )
    ax.set_xscale("log")
    ticks = sorted(remaining, reverse=True)
    if len(ticks) > 14:
        ticks = ticks[:: -(-len(ticks) // 14)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{100 - r:.4g} %" for r in ticks], rotation=45, ha="right")
    ax.minorticks_off()
    if ticks:
        lo, hi = min(remaining), max(remaining)
        ax.set_xlim(hi * 1.25, lo / 1.25)  # sparsity grows to the right
    ax.set_xlabel("sparsity (log scale of weights remaining)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{metric} vs sparsity: mean and ±1 std over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def layer_sparsity_png(label: str, run: RunRecord, index: int = 0) -> bytes:
    """Horizontal bars: per-layer sparsity of one run (every tensor with two or more dimensions)."""
    layers = run.layers
    fig = _figure(8.0, max(2.2, 0.28 * len(layers) + 1.2))
    ax = fig.add_subplot()
    names = [str(r["name"]) for r in layers]
    values = [100.0 * float(r["sparsity"]) for r in layers]
    y = list(range(len(layers)))
    ax.barh(y, values, color=color(index), alpha=0.85)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{n} ({r['params']:,})" for n, r in zip(names, layers, strict=True)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    for yi, v in zip(y, values, strict=True):
        ax.text(min(v + 1, 88), yi, f"{v:.1f} %", va="center", fontsize=7)
    ax.set_xlabel("sparsity (%)")
    ax.set_title(f"{label}: per-layer sparsity (target {run.target:.4g}, seed {run.experiment.seed})", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def _curve(run: RunRecord) -> dict[str, list[Any]]:
    """Per-epoch series over all train phases (epochs counted across phases), prune and rewind events."""
    metric = run.metric
    out: dict[str, list[Any]] = {
        "epoch": [],
        "value": [],
        "loss_epoch": [],
        "loss": [],
        "prunes": [],
        "rewinds": [],
        "bounds": [],
    }
    done = 0
    for p in run.metrics["phases"]:
        if p["kind"] == "train":
            for r in p["history"]:
                x = done + int(r["epoch"])
                out["loss_epoch"].append(x)
                out["loss"].append(float(r["train_loss"]))
                if metric in r["metrics"]:
                    out["epoch"].append(x)
                    out["value"].append(float(r["metrics"][metric]))
            done += int(p["epochs"])
            out["bounds"].append(done)
        elif p["kind"] == "prune" and "eval" in p and metric in p["eval"]:
            v = float(p["eval"][metric])
            out["prunes"].append((done, v))
            out["epoch"].append(done)  # the drop right after pruning, drawn at the epoch it follows
            out["value"].append(v)
        elif p["kind"] == "rewind" and p["to"] != "none":
            out["rewinds"].append(done)
    return out


def training_curves_png(groups: Sequence[Group]) -> bytes:
    """Test metric and training loss per epoch, across all phases, for each method's chosen run.

    Triangles: the metric right after a prune phase (before any retraining); dotted lines: rewinds."""
    fig = _figure(11.0, 4.2)
    ax_m, ax_l = fig.subplots(1, 2)
    metric = groups[0].runs[0].metric
    k, ylabel = _scale(metric)
    for i, g in enumerate(groups):
        run = g.chosen()
        c = _curve(run)
        lab = f"{g.label} (sparsity {run.target:.4g}, seed {run.experiment.seed})"
        ax_m.plot(c["epoch"], [k * v for v in c["value"]], "-", color=color(i), label=lab, linewidth=1.5)
        if c["prunes"]:
            ax_m.plot(
                [x for x, _ in c["prunes"]],
                [k * v for _, v in c["prunes"]],
                "v",
                color=color(i),
                markersize=8,
                markeredgecolor="black",
                markeredgewidth=0.6,
            )
        for x in c["rewinds"]:
            ax_m.axvline(x, color=color(i), linestyle=":", linewidth=1)
        ax_l.plot(c["loss_epoch"], c["loss"], "-", color=color(i), linewidth=1.5)
    ax_m.set_xlabel("epoch (all phases)")
    ax_m.set_ylabel(ylabel)
    ax_m.set_title(f"test {metric} (▼ right after pruning)", fontsize=10)
    ax_m.grid(True, alpha=0.3)
    ax_m.legend(fontsize=7, loc="best")
    ax_l.set_xlabel("epoch (all phases)")
    ax_l.set_ylabel("training loss")
    ax_l.set_yscale("log")
    ax_l.set_title("training loss", fontsize=10)
    ax_l.grid(True, alpha=0.3)
    return _png(fig)
