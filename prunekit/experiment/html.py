"""A self-contained HTML report: the table, and PNG figures embedded as base64 data URIs (no external files).

After loading, a small script counts the images the browser actually decoded (``naturalWidth > 0``) and writes
``"<ok>/<total> images rendered"`` into ``document.title`` and ``<body data-images-rendered>``, so a headless browser
can check the page with ``--dump-dom``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from prunekit import __version__
from prunekit.experiment.plots import layer_sparsity_png, sparsity_curve_png, training_curves_png
from prunekit.experiment.report import Group, format_value, phases_summary, table_rows

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; } th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; } code { background: #f6f6f6; padding: 0 3px; }
p.note { color: #555; font-size: 0.9em; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  var text = ok + "/" + imgs.length + " images rendered";
  document.title = text;
  document.body.setAttribute("data-images-rendered", text);
});
"""


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(groups: Sequence[Group]) -> str:
    rows = table_rows(groups)
    metrics = sorted({r["metric"] for r in rows})
    head = ["method", "target sparsity", "measured sparsity", " / ".join(metrics) + " (mean ± std)", "n", "epochs"]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = [
            f"<td>{html.escape(r['method'])}</td>",
            f'<td class="num">{r["target"]:.4g}</td>',
            f'<td class="num">{100 * r["sparsity"]:.2f} %</td>',
            f'<td class="num">{html.escape(format_value(r["metric"], r["mean"], r["std"], r["n"]))}</td>',
            f'<td class="num">{r["n"]}</td>',
            f'<td class="num">{r["epochs"]}</td>',
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_report(groups: Sequence[Group], title: str = "prunekit report") -> str:
    """The whole page as a string (figures drawn here; matplotlib is needed)."""
    n_runs = sum(len(g.runs) for g in groups)
    metric = groups[0].runs[0].metric
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{n_runs} finished runs, {len(groups)} method(s); prunekit {html.escape(__version__)}. '
        f"The {html.escape(metric)} is measured on the test split after the last phase (final epoch; the best epoch seen "
        "is never reported), as mean ± sample standard deviation over seeds.</p>",
        "<h2>Results</h2>",
        _table(groups),
        f"<h2>{html.escape(metric.capitalize())} vs sparsity</h2>",
        _img(
            sparsity_curve_png(groups),
            f"{metric} vs sparsity",
            "Mean over seeds (line) and ±1 sample standard deviation (band) for each method. The x axis is the fraction of "
            "weights remaining on a log scale, labelled with the sparsity.",
        ),
        "<h2>Training curves</h2>",
        _img(
            training_curves_png(groups),
            "training curves",
            "For each method, the run with the highest target sparsity (lowest seed): test metric and training loss for "
            "every epoch of every phase; triangles mark the metric right after a prune phase, dotted lines rewinds.",
        ),
        "<h2>Per-layer sparsity</h2>",
    ]
    for i, g in enumerate(groups):
        run = g.chosen()
        parts.append(
            _img(layer_sparsity_png(g.label, run, i), f"per-layer sparsity: {g.label}", f"{g.label}: run {run.run_dir.name}")
        )
    parts.append("<h2>Methods</h2><ul>")
    for g in groups:
        exp = g.runs[0].experiment
        runs = ", ".join(sorted(r.run_dir.name for r in g.runs))
        parts.append(
            f"<li><b>{html.escape(g.label)}</b>: {html.escape(exp.data.name)}, {html.escape(exp.model.name)}, phases "
            f"<code>{html.escape(phases_summary(exp))}</code>, {exp.epoch_budget} epochs. "
            f'<span class="note">Runs: {html.escape(runs)}</span></li>'
        )
    parts += ["</ul>", "</body></html>"]
    return "\n".join(parts) + "\n"
