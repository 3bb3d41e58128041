"""One-shot pruning table: test accuracy after pruning with each criterion, before and after a short fine-tune.

Structured: ``Channel(0)`` removal of 25/50/75 % of the units of every hidden layer (LeNet-300-100: fc1, fc2
neurons; LeNet-5-Caffe: conv1, conv2 filters; never the output layer), uniform per layer; the pruned units' biases
are zeroed too (and kept at 0 while fine-tuning), so a removed unit outputs exactly 0. Unstructured: 50/80/90/95 %
of the weights of every weight layer except the output layer, uniform per layer, with the element-wise criteria
only (the unit-level criteria spread a unit's score evenly over its weights, so an unstructured selection with them
is a tie-break, not a criterion).

Scores are computed once per (net, seed, criterion) through the criterion's ``collect`` + ``score`` on 10 x 128
training images and fed to the real ``Pruner`` (``PruneRecipe(pattern, sparsity, Uniform)``) through a
:class:`Precomputed` scorer, so every sparsity uses the same scores. Fine-tuning: Adam lr 1e-3, batch 128, masks
enforced by prunekit (in-place mode, optimizer bound), one pass over a fixed subset of the training set
(``--ft-images``; see the table captions).

Each net runs in its own process (``--net``) and writes a fragment; every write re-renders
``results/criteria_oneshot.{json,md}`` from all fragments present::

    PRUNEKIT_DATA=/path/to/data python benchmarks/criteria_oneshot.py --net lenet_300_100 --seeds 0 1 2 --threads 1
    PRUNEKIT_DATA=/path/to/data python benchmarks/criteria_oneshot.py --net lenet5_caffe --seeds 0 --threads 1 --ft-images 5000
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from criteria_common import (
    CACHE_DIR,
    LAYER_LABEL,
    NETS,
    calibration,
    ce_loss,
    element_criteria,
    env_info,
    evaluate,
    mnist,
    modules_of,
    setup_threads,
    tensors,
    train_epochs,
    trained,
    unit_criteria,
    write_results,
)
from torch import Tensor, nn

from prunekit import Pruner, PruneRecipe
from prunekit import masks as M
from prunekit.patterns import Channel, Unstructured
from prunekit.recipe import Targets
from prunekit.scoring import AbstractScorer, ScoreContext, Target

STRUCT_SPARSITY = (0.25, 0.5, 0.75)
UNSTRUCT_SPARSITY = (0.5, 0.8, 0.9, 0.95)


class Precomputed(AbstractScorer):
    """Scores computed beforehand (so all sparsities of one criterion share one collect)."""

    def __init__(self, scores: Mapping[str, Tensor]) -> None:
        self.scores = dict(scores)

    def score(self, target: Target, stats: Mapping[str, Any], ctx: ScoreContext) -> Tensor:
        return self.scores[target.fqn].clone()


def element_scores(
    model: nn.Module, fqns: Sequence[str], scorer: AbstractScorer, calib: list[Any]
) -> tuple[dict[str, Tensor], float]:
    mods = modules_of(model, fqns)
    targets = [Target(f, "weight", m) for f, m in mods.items()]
    ctx = ScoreContext(model, calibration=calib, loss_fn=ce_loss)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer.check_context(ctx)
        stats = scorer.collect(ctx, targets)
        out = {t.fqn: scorer.score(t, stats, ctx).float() for t in targets}
    model.zero_grad(set_to_none=True)
    return out, time.perf_counter() - t0


def prune_and_eval(
    base: nn.Module,
    fqns: Sequence[str],
    scores: Mapping[str, Tensor],
    structured: bool,
    sparsity: float,
    data: dict[str, Tensor],
    seed: int,
    finetune: bool,
) -> dict[str, Any]:
    model = copy.deepcopy(base)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    recipe = PruneRecipe(
        sparsity=sparsity,
        pattern=Channel(0) if structured else Unstructured(),
        scorer=Precomputed(scores),
        targets=Targets(include=tuple(fqns)),
    )
    pruner = Pruner(recipe).attach(model, opt)
    pruner.prune_(ScoreContext(model))
    mods = modules_of(model, fqns)
    dead: dict[str, Tensor] = {}
    if structured:
        for f, m in mods.items():
            keep = M.get_mask(m, "weight").reshape(m.weight.shape[0], -1).any(1)
            dead[f] = ~keep

    def zero_dead_bias() -> None:
        with torch.no_grad():
            for f, d in dead.items():
                b = mods[f].bias
                if b is not None:
                    b[d] = 0

    zero_dead_bias()
    res: dict[str, Any] = {"acc": evaluate(model, data["xte"], data["yte"])[1], "sparsity": pruner.sparsity()}
    if finetune:
        train_epochs(model, data["xft"], data["yft"], 1, 1e-3, seed + 100, after_step=zero_dead_bias, optimizer=opt)
        res["acc_ft"] = evaluate(model, data["xte"], data["yte"])[1]
        leaked = max(float((m.weight.detach() * ~M.get_mask(m, "weight")).abs().max()) for m in mods.values())
        res["max_abs_pruned_weight_after_ft"] = leaked
    return res


# ---------------------------------------------------------------------------------------------------------
# Fragments and rendering
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _lock() -> Any:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "oneshot.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def frag_path(net: str, tag: str = "") -> Any:
    return CACHE_DIR / f"oneshot-fragment-{net}{'-' + tag if tag else ''}.json"


def merge_fragments(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one net (e.g. extra seeds without fine-tuning) merged by kind / criterion / sparsity / seed."""
    out: dict[str, Any] = {
        "command": "\n".join(p["command"] for p in parts),
        "ft_images": max(p["ft_images"] for p in parts),
        "status": "; ".join(p["status"] for p in parts),
        "models": {},
        "results": {"structured": {}, "unstructured": {}},
        "score_seconds": {},
        "skipped": {},
        "seconds": sum(p.get("seconds", 0) for p in parts),
    }
    for p in parts:
        out["models"].update(p["models"])
        out["skipped"].update(p["skipped"])
        for k, v in p["score_seconds"].items():
            out["score_seconds"].setdefault(k, {}).update(v)
        for kind, by_c in p["results"].items():
            for cname, by_s in by_c.items():
                for sp, by_seed in by_s.items():
                    out["results"][kind].setdefault(cname, {}).setdefault(sp, {}).update(by_seed)
    return out


def ms(xs: list[float]) -> str:
    if not xs:
        return "—"
    m = 100 * statistics.fmean(xs)
    s = 100 * statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f} (n={len(xs)})" if len(xs) > 1 else f"{m:.2f} (n=1)"


def render_all() -> None:
    frags = {}
    for net in NETS:
        parts = [json.loads(p.read_text()) for p in sorted(CACHE_DIR.glob(f"oneshot-fragment-{net}*.json"))]
        if parts:
            frags[net] = merge_fragments(parts)
    tables, notes, commands, status = [], [], [], []
    for net, fr in frags.items():
        spec = NETS[net]
        commands.extend(fr["command"].split("\n"))
        status.append(f"{spec.label}: {fr['status']}")
        dense = [m["test_acc"] for m in fr["models"].values()]
        layers = ", ".join(LAYER_LABEL[(net, f)] for f in spec.units)
        ft = f"1 pass over {fr['ft_images']:,} training images" if fr["ft_images"] < 60000 else "1 epoch (60,000 images)"
        for kind, sps in (("structured", STRUCT_SPARSITY), ("unstructured", UNSTRUCT_SPARSITY)):
            res = fr["results"].get(kind, {})
            if not res:
                continue
            rows = []
            for cname, by_s in res.items():
                row: list[Any] = [cname]
                for s in sps:
                    runs = by_s.get(str(s), {})
                    row.append(ms([r["acc"] for r in runs.values()]))
                for s in sps:
                    runs = by_s.get(str(s), {})
                    row.append(ms([r["acc_ft"] for r in runs.values() if "acc_ft" in r]))
                rows.append(row)
            what = (
                f"units removed per layer ({layers})"
                if kind == "structured"
                else ("weights removed per layer (" + ", ".join(LAYER_LABEL[(net, f)] for f in spec.unstructured) + ")")
            )
            tables.append(
                {
                    "caption": f"{spec.label}, {kind}: test accuracy % (mean ± std over seeds), {what}; "
                    f"dense {ms(dense)}; fine-tune = {ft}",
                    "columns": [
                        "criterion",
                        *(f"{int(s * 100)}% no FT" for s in sps),
                        *(f"{int(s * 100)}% +FT" for s in sps),
                    ],
                    "rows": rows,
                }
            )
        for cname, why in fr.get("skipped", {}).items():
            notes.append(f"{spec.label}: {cname} skipped: {why}")
        notes.append(
            f"{spec.label}: dense models: "
            + "; ".join(
                f"seed {k}: test acc {v['test_acc']:.4f} ({v['epochs']} epochs, {v['optimizer']})"
                for k, v in fr["models"].items()
            )
        )
        secs = fr.get("seconds", 0)
        notes.append(f"{spec.label}: summed process wall-clock {secs:.0f} s; per-criterion scoring seconds in the JSON.")
    notes = [
        "Structured = Channel(0) with a uniform fraction per hidden layer; the pruned units' biases are zeroed and kept "
        "at 0 during fine-tuning (prunekit masks only the weight). Unstructured = Unstructured pattern, uniform per "
        "layer, every weight layer except the output layer, element-wise criteria only (magnitude, random, taylor, "
        "obd, obs); unit-level criteria are not run unstructured because their element scores tie within a unit.",
        "Scores from collect+score on 10 x 128 training images (cross-entropy), computed once per seed and reused "
        "for every sparsity through the real Pruner. LeNet-5-Caffe has no conv ReLU, so its activation criteria use "
        "nonlinearity='none' (APoZ then gives all-equal scores, i.e. an index-order tie-break).",
        "Fine-tuning: Adam lr 1e-3, batch 128, one pass over the stated number of training images (a fixed random "
        "subset when < 60,000), masks enforced by prunekit; 'max_abs_pruned_weight_after_ft' in the JSON checks that "
        "pruned weights stayed 0.",
        "n in each cell = number of seeds averaged. Extra seeds run with --no-ft (to fit the time budget) add to "
        "the 'no FT' columns only, so 'no FT' and '+FT' cells of one row can average different seeds.",
        *notes,
    ]
    sec = {
        "title": "One-shot pruning by criterion: MNIST test accuracy without / with a short fine-tune",
        "meta": env_info(),
        "commands": commands,
        "status": " | ".join(status),
        "tables": tables,
        "notes": notes,
        "raw": frags,
    }
    write_results("criteria_oneshot", sec)


def save_fragment(net: str, frag: dict[str, Any], tag: str = "") -> None:
    with _lock():
        frag_path(net, tag).write_text(json.dumps(frag, indent=1))
        render_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=list(NETS), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ft-images", type=int, default=10000, help="fine-tune pass size (60000 = one full epoch)")
    ap.add_argument("--no-ft", action="store_true", help="skip fine-tuning")
    ap.add_argument("--tag", default="", help="fragment suffix, for extra runs of the same net (merged by seed)")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    if args.render_only:
        with _lock():
            render_all()
        return
    setup_threads(args.threads)

    net, spec = args.net, NETS[args.net]
    tr, te = mnist("train"), mnist("test")
    xtr, ytr = tensors(tr)
    xte, yte = tensors(te)
    calib = calibration(xtr, ytr)
    g = torch.Generator().manual_seed(4321)
    ft_idx = torch.randperm(len(xtr), generator=g)[: args.ft_images]
    data = {"xte": xte, "yte": yte, "xft": xtr[ft_idx], "yft": ytr[ft_idx]}
    t_start = time.perf_counter()
    frag: dict[str, Any] = {
        "command": env_info()["command"],
        "ft_images": args.ft_images if not args.no_ft else 0,
        "status": "incomplete (running)",
        "models": {},
        "results": {"structured": {}, "unstructured": {}},
        "score_seconds": {},
        "skipped": {},
    }
    jobs: list[tuple[str, str, AbstractScorer, tuple[str, ...], bool]] = []
    for cname, sc in unit_criteria(spec.conv_relu).items():
        jobs.append(("structured", cname, sc, spec.units, True))
    for cname, sc in element_criteria().items():
        jobs.append(("unstructured", cname, sc, spec.unstructured, False))
    for seed in args.seeds:
        model, info = trained(net, seed, xtr, ytr, xte, yte)
        frag["models"][str(seed)] = info
        print(f"{spec.label} seed {seed}: dense acc {info['test_acc']:.4f}", flush=True)
        for kind, cname, sc, fqns, structured in jobs:
            try:
                scores, secs = element_scores(model, fqns, sc, calib)
            except Exception as e:  # record and go on
                frag["skipped"][f"{kind} {cname}"] = f"{type(e).__name__}: {e}"[:200]
                continue
            frag["score_seconds"].setdefault(f"{kind} {cname}", {})[str(seed)] = secs
            sps = STRUCT_SPARSITY if structured else UNSTRUCT_SPARSITY
            by_s = frag["results"][kind].setdefault(cname, {})
            for s in sps:
                r = prune_and_eval(model, fqns, scores, structured, s, data, seed, not args.no_ft)
                by_s.setdefault(str(s), {})[str(seed)] = r
            cells = []
            for s in sps:
                r = by_s[str(s)][str(seed)]
                cells.append(f"{s}:{r['acc']:.3f}/{r.get('acc_ft', float('nan')):.3f}")
            print(f"  {kind:12s} {cname:40s} " + " ".join(cells), flush=True)
            frag["seconds"] = time.perf_counter() - t_start
            frag["status"] = f"incomplete: running seed {seed} of {args.seeds}"
            save_fragment(net, frag, args.tag)
    frag["status"] = f"complete: seeds {args.seeds}"
    frag["seconds"] = time.perf_counter() - t_start
    save_fragment(net, frag, args.tag)


if __name__ == "__main__":
    main()
