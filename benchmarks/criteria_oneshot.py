"""One-shot pruning table: test accuracy after pruning with each criterion, before and after one epoch of fine-tuning.

Structured: ``Channel(0)`` removal of 25/50/75 % of the units of every hidden layer (LeNet-300-100: fc1, fc2
neurons; LeNet-5-Caffe: conv1, conv2 filters; never the output layer), uniform per layer; the pruned units' biases
are zeroed too, so a removed unit outputs exactly 0. Unstructured: 50/80/90/95 % of the weights of every weight
layer except the output layer, uniform per layer, with the element-wise criteria only (the unit-level criteria
spread a unit's score evenly over its weights, so an unstructured selection with them is a tie-break, not a
criterion).

Scores are computed once per (net, seed, criterion) through the criterion's ``collect`` + ``score`` on 10 x 128
training images and fed to the real ``Pruner`` (``PruneRecipe(pattern, sparsity, Uniform)``) through a
:class:`Precomputed` scorer, so every sparsity uses the same scores. Fine-tuning: Adam lr 1e-3, batch 128 (as in
the dense training), one epoch over the 60,000 training images by default (``--ft-images`` for fewer), data order
seeded per seed (the same for every criterion).

* Unstructured fine-tuning trains the masked model (prunekit in-place masks, optimizer bound).
* Structured fine-tuning trains the physically slimmed model (masks finalised, removed units and their
  consumer's input columns sliced out by :func:`slim_`): the same function, and under Adam the same updates, as the
  masked model, because a removed unit's weights, bias and its consumer's input columns receive exactly zero
  gradient (zero Adam steps) there; only floating-point summation order differs, and it was 1.4-4.6x cheaper on
  LeNet-5. The slimmed model's logits are checked against the masked model's before fine-tuning, and
  ``--verify-compact`` also fine-tunes the masked model for the given criteria on the first seed (``acc_ft_masked``).
  ``--ft-masked`` fine-tunes every structured case masked instead.
* Identical pruned models (same seed, pattern, sparsity and masks, e.g. two criteria that pick the same units)
  are fine-tuned once; the copy is marked ``ft_shared_with`` in the JSON.

Each net runs in its own process (``--net``) and writes a fragment after every criterion (``--resume`` continues an
interrupted run from it); every write re-renders ``results/criteria_oneshot.{json,md}`` from all fragments present::

    PRUNEKIT_DATA=/path/to/data python benchmarks/criteria_oneshot.py --net lenet_300_100 --threads 1
    PRUNEKIT_DATA=/path/to/data python benchmarks/criteria_oneshot.py --net lenet5_caffe --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
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
FT_LR = 1e-3


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


class Pruned:
    """A copy of ``base`` pruned by the real Pruner; for structured pruning the dead units' biases are zeroed."""

    def __init__(
        self, base: nn.Module, fqns: Sequence[str], scores: Mapping[str, Tensor], structured: bool, sparsity: float
    ) -> None:
        self.model = copy.deepcopy(base)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=FT_LR)
        recipe = PruneRecipe(
            sparsity=sparsity,
            pattern=Channel(0) if structured else Unstructured(),
            scorer=Precomputed(scores),
            targets=Targets(include=tuple(fqns)),
        )
        self.pruner = Pruner(recipe).attach(self.model, self.opt)
        self.pruner.prune_(ScoreContext(self.model))
        self.mods = modules_of(self.model, fqns)
        self.dead: dict[str, Tensor] = {}
        if structured:
            for f, m in self.mods.items():
                self.dead[f] = ~M.get_mask(m, "weight").reshape(m.weight.shape[0], -1).any(1)
        self.zero_dead_bias()

    def zero_dead_bias(self) -> None:
        with torch.no_grad():
            for f, d in self.dead.items():
                b = self.mods[f].bias
                if b is not None:
                    b[d] = 0

    def mask_digest(self) -> str:
        h = hashlib.sha1()
        for f, m in self.mods.items():
            h.update(f.encode())
            h.update(M.get_mask(m, "weight").numpy().tobytes())
        return h.hexdigest()

    def max_abs_pruned_weight(self) -> float:
        return max(float((m.weight.detach() * ~M.get_mask(m, "weight")).abs().max()) for m in self.mods.values())

    def finetune_masked(self, data: Mapping[str, Tensor], seed: int) -> dict[str, Any]:
        """One pass over ``data['xft']`` with the masks enforced (and dead biases kept at 0)."""
        train_epochs(
            self.model, data["xft"], data["yft"], 1, FT_LR, seed + 100, after_step=self.zero_dead_bias, optimizer=self.opt
        )
        return {
            "acc_ft": evaluate(self.model, data["xte"], data["yte"])[1],
            "max_abs_pruned_weight_after_ft": self.max_abs_pruned_weight(),
        }

    def finetune_compact(self, data: Mapping[str, Tensor], seed: int) -> dict[str, Any]:
        """Slim the model (masks finalised, dead units removed), check it computes the same, fine-tune it plainly."""
        x = data["xte"][:1000]
        self.model.eval()
        with torch.no_grad():
            ref = self.model(x)
            self.pruner.finalize()
            slim_(self.model, {f: ~d for f, d in self.dead.items()})
            err = float((self.model(x) - ref).abs().max())
        if err > 1e-4 * max(1.0, float(ref.abs().max())):
            raise RuntimeError(f"slimmed model differs from the masked one: max |logit difference| {err:.3g}")
        train_epochs(self.model, data["xft"], data["yft"], 1, FT_LR, seed + 100)
        return {
            "acc_ft": evaluate(self.model, data["xte"], data["yte"])[1],
            "ft_params": sum(p.numel() for p in self.model.parameters()),
            "slim_max_logit_diff": err,
        }


@torch.no_grad()
def slim_(model: nn.Module, keep: Mapping[str, Tensor]) -> None:
    """Remove the output units ``~keep[fqn]`` of each listed layer and the matching inputs of the next weight layer.

    For the two zoo nets here (plain chains of Linear / Conv2d, no BatchNorm, no residuals): the consumer of a layer
    is the next Linear/Conv2d in module order; a Linear after a Conv2d (through max-pool and flatten) reads each
    channel as a block of ``in_features // out_channels`` consecutive features. (``prunekit.structure`` does this in
    general; a local copy keeps this benchmark independent of that module's ongoing work.)
    """
    layers = [(f, m) for f, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for i, (fqn, mod) in enumerate(layers):
        if fqn not in keep:
            continue
        idx = keep[fqn].nonzero().flatten()
        nxt = layers[i + 1][1]
        block = nxt.weight.shape[1] // mod.weight.shape[0]
        cols = (idx[:, None] * block + torch.arange(block)[None, :]).flatten()
        mod.weight = nn.Parameter(mod.weight[idx].clone())
        if mod.bias is not None:
            mod.bias = nn.Parameter(mod.bias[idx].clone())
        nxt.weight = nn.Parameter(nxt.weight[:, cols].clone())
        if isinstance(mod, nn.Linear):
            mod.out_features = len(idx)
        else:
            mod.out_channels = len(idx)
        if isinstance(nxt, nn.Linear):
            nxt.in_features = len(cols)
        else:
            nxt.in_channels = len(cols)


def prune_and_eval(
    base: nn.Module,
    fqns: Sequence[str],
    scores: Mapping[str, Tensor],
    structured: bool,
    sparsity: float,
    data: dict[str, Tensor],
    seed: int,
    finetune: bool,
    compact: bool,
    verify: bool,
    ft_cache: dict[str, tuple[str, dict[str, Any]]],
    cname: str,
) -> dict[str, Any]:
    pr = Pruned(base, fqns, scores, structured, sparsity)
    before = evaluate(pr.model, data["xte"], data["yte"])
    res: dict[str, Any] = {"acc": before[1], "sparsity": pr.pruner.sparsity()}
    if not finetune:
        return res
    key = f"{'s' if structured else 'u'}{sparsity}:{pr.mask_digest()}"
    if key in ft_cache:
        owner, ft = ft_cache[key]
        res.update(ft)
        res["ft_shared_with"] = owner
        return res
    t0 = time.perf_counter()
    if structured and compact:
        ft = {**pr.finetune_compact(data, seed), "ft_path": "slimmed"}
    else:
        ft = {**pr.finetune_masked(data, seed), "ft_path": "masked"}
    ft["ft_seconds"] = round(time.perf_counter() - t0, 2)
    res.update(ft)
    ft_cache[key] = (cname, {k: v for k, v in ft.items() if k != "ft_seconds"})
    if verify and structured and compact:
        t1 = time.perf_counter()
        ref = Pruned(base, fqns, scores, structured, sparsity).finetune_masked(data, seed)
        res["acc_ft_masked"] = ref["acc_ft"]
        res["verify_seconds"] = round(time.perf_counter() - t1, 2)
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
        "ft_images": sorted({p["ft_images"] for p in parts if p["ft_images"]}),
        "status": "; ".join(p["status"] for p in parts),
        "models": {},
        "results": {"structured": {}, "unstructured": {}},
        "score_seconds": {},
        "skipped": {},
        "seconds": sum(p.get("seconds", 0) for p in parts),
        "runs": [r for p in parts for r in p.get("runs", [])],
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


def _ft_label(ft_images: list[int]) -> str:
    if not ft_images:
        return "none run"
    if ft_images == [60000]:
        return "1 epoch (all 60,000 training images)"
    return " / ".join(f"1 pass over {n:,} training images" if n < 60000 else "1 epoch (60,000)" for n in ft_images)


def _cells(fr: dict[str, Any], kind: str, key: str) -> list[int]:
    """Number of seeds behind every (criterion, sparsity) cell that has ``key``."""
    return [sum(key in r for r in runs.values()) for by_s in fr["results"].get(kind, {}).values() for runs in by_s.values()]


def render_all() -> None:
    frags = {}
    for net in NETS:
        parts = [json.loads(p.read_text()) for p in sorted(CACHE_DIR.glob(f"oneshot-fragment-{net}*.json"))]
        if parts:
            frags[net] = merge_fragments(parts)
    tables: list[dict[str, Any]] = []
    notes: list[str] = []
    commands: list[str] = []
    status: list[str] = []
    goal_parts: list[str] = []
    goal_met = bool(frags) and set(frags) == set(NETS)
    for net, fr in frags.items():
        spec = NETS[net]
        commands.extend(f"PRUNEKIT_DATA=/path/to/data {c}" for c in fr["command"].split("\n"))
        status.append(f"{spec.label}: {fr['status']}")
        dense = [m["test_acc"] for m in fr["models"].values()]
        layers = ", ".join(LAYER_LABEL[(net, f)] for f in spec.units)
        ft = _ft_label(fr["ft_images"])
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
        # goal bookkeeping: every cell averaged over 3 seeds, with and without a full-epoch fine-tune
        n_noft = _cells(fr, "structured", "acc") + _cells(fr, "unstructured", "acc")
        n_ft = _cells(fr, "structured", "acc_ft") + _cells(fr, "unstructured", "acc_ft")
        want = len(unit_criteria(True)) * len(STRUCT_SPARSITY) + len(element_criteria()) * len(UNSTRUCT_SPARSITY)
        full = sum(n >= 3 for n in n_noft) == want and sum(n >= 3 for n in n_ft) == want and fr["ft_images"] == [60000]
        goal_met = goal_met and full
        goal_parts.append(
            f"{spec.label}: {sum(n >= 3 for n in n_noft)}/{want} cells with 3 seeds without FT, "
            f"{sum(n >= 3 for n in n_ft)}/{want} with FT ({ft})"
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
        all_runs = [r for by_c in fr["results"].values() for by_s in by_c.values() for rs in by_s.values() for r in rs.values()]
        ft_runs = [r for r in all_runs if "ft_seconds" in r]
        shared = [r for r in all_runs if "ft_shared_with" in r]
        checks = [r for r in all_runs if "acc_ft_masked" in r]
        secs = fr.get("seconds", 0)
        notes.append(
            f"{spec.label}: {len(ft_runs)} fine-tunings run ({sum(r['ft_seconds'] for r in ft_runs):.0f} s), "
            f"{len(shared)} identical pruned models reused a fine-tuning; summed process wall-clock {secs:.0f} s "
            "(1 torch thread); per-criterion scoring and per-fine-tune seconds in the JSON."
        )
        if checks:
            d = [100 * abs(r["acc_ft"] - r["acc_ft_masked"]) for r in checks]
            notes.append(
                f"{spec.label}: slimmed vs masked fine-tuning of the same pruned model ({len(checks)} cases): "
                f"|accuracy difference| max {max(d):.2f}, mean {statistics.fmean(d):.2f} points "
                "(float summation order only; the two are the same computation in exact arithmetic)."
            )
    notes = [
        "Structured = Channel(0) with a uniform fraction per hidden layer; the pruned units' biases are zeroed. "
        "Unstructured = Unstructured pattern, uniform per layer, every weight layer except the output layer, "
        "element-wise criteria only (magnitude, random, taylor, obd, obs); unit-level criteria are not run "
        "unstructured because their element scores tie within a unit.",
        "Scores from collect+score on 10 x 128 training images (cross-entropy), computed once per seed and reused "
        "for every sparsity through the real Pruner. LeNet-5-Caffe has no conv ReLU, so its activation criteria use "
        "nonlinearity='none' (APoZ then gives all-equal scores, i.e. an index-order tie-break).",
        "Fine-tuning: Adam lr 1e-3, batch 128 (as the dense training), one pass over the training images stated in "
        "each caption (all 60,000 = one epoch; shuffled, order seeded per seed and identical for every criterion). "
        "Unstructured: masked model, masks "
        "enforced by prunekit ('max_abs_pruned_weight_after_ft' in the JSON checks pruned weights stayed 0). "
        "Structured: the physically slimmed model (removed units and the next layer's matching inputs sliced out): the same "
        "function and, under Adam, the same updates as masked fine-tuning with dead biases held at 0 (the removed "
        "weights and the consumer's input columns get exactly zero gradient there), so only float summation order "
        "differs; before fine-tuning, the slimmed model's logits on 1,000 test images are checked equal to the masked model's.",
        "Two criteria that prune a seed's model to identical masks at a sparsity share one fine-tuning (same model, "
        "same data order: the result is the same).",
        "n in each cell = number of seeds averaged.",
        *notes,
    ]
    meta = env_info()
    runs = [r for fr in frags.values() for r in fr.get("runs", [])]
    if runs:  # the header describes the runs that produced the numbers, not the process that rendered them
        meta["threads"] = ",".join(sorted({str(r["threads"]) for r in runs}))
        meta["date"] = max(r["date"] for r in runs)
        meta["loadavg_1m_at_start"] = " / ".join(str(r["loadavg_1m_at_start"]) for r in runs)
    sec = {
        "title": "One-shot pruning by criterion: MNIST test accuracy without / with one epoch of fine-tuning",
        "meta": meta,
        "commands": commands,
        "status": " | ".join(status),
        "goals": [
            {
                "goal": "test accuracy after removing 25/50/75 % of neurons (LeNet-300-100) / filters (LeNet-5) and "
                "50/80/90/95 % of weights, for every criterion, without fine-tuning and after one epoch of "
                "fine-tuning, mean of 3 seeds",
                "measured": "; ".join(goal_parts) or "nothing run",
                "met": goal_met,
            }
        ],
        "tables": tables,
        "notes": notes,
        "raw": frags,
    }
    write_results("criteria_oneshot", sec)


def save_fragment(net: str, frag: dict[str, Any], tag: str = "") -> None:
    with _lock():
        frag_path(net, tag).write_text(json.dumps(frag, indent=1))
        render_all()


def _done(frag: dict[str, Any], kind: str, cname: str, seed: int, sps: Sequence[float], need_ft: bool) -> bool:
    by_s = frag["results"].get(kind, {}).get(cname, {})
    rs = [by_s.get(str(s), {}).get(str(seed)) for s in sps]
    return all(r is not None and (not need_ft or "acc_ft" in r) for r in rs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=list(NETS), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ft-images", type=int, default=60000, help="fine-tune pass size (60000 = one full epoch)")
    ap.add_argument("--no-ft", action="store_true", help="skip fine-tuning")
    ap.add_argument("--ft-masked", action="store_true", help="fine-tune structured cases masked, not slimmed")
    ap.add_argument(
        "--verify-compact",
        nargs="*",
        default=["magnitude (L1 of row)"],
        metavar="CRITERION",
        help="structured criteria whose slimmed fine-tunes are repeated masked on the first seed, for comparison",
    )
    ap.add_argument("--tag", default="", help="fragment suffix, for extra runs of the same net (merged by seed)")
    ap.add_argument("--resume", action="store_true", help="continue the fragment of an interrupted identical run")
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
    if args.ft_images >= len(xtr):
        xft, yft = xtr, ytr  # the whole training set (train_epochs shuffles)
    else:
        g = torch.Generator().manual_seed(4321)
        ft_idx = torch.randperm(len(xtr), generator=g)[: args.ft_images]
        xft, yft = xtr[ft_idx], ytr[ft_idx]
    data = {"xte": xte, "yte": yte, "xft": xft, "yft": yft}
    finetune = not args.no_ft
    t_start = time.perf_counter()
    info = env_info()
    command = info["command"].replace(" --resume", "")
    run = {k: info[k] for k in ("command", "date", "threads", "loadavg_1m_at_start")}
    frag: dict[str, Any] = {
        "command": command,
        "ft_images": min(args.ft_images, len(xtr)) if finetune else 0,
        "status": "incomplete (running)",
        "models": {},
        "results": {"structured": {}, "unstructured": {}},
        "score_seconds": {},
        "skipped": {},
        "seconds": 0.0,
        "runs": [],
    }
    if args.resume and frag_path(net, args.tag).exists():
        old = json.loads(frag_path(net, args.tag).read_text())
        if old["command"] != command or old["ft_images"] != frag["ft_images"]:
            raise SystemExit(f"--resume: {frag_path(net, args.tag)} was made by {old['command']!r}, not {command!r}")
        frag = old
        print(f"resuming from {frag_path(net, args.tag)}", flush=True)
    seconds_before = float(frag.get("seconds", 0.0))
    frag["runs"].append(run)
    jobs: list[tuple[str, str, AbstractScorer, tuple[str, ...], bool]] = []
    for cname, sc in unit_criteria(spec.conv_relu).items():
        jobs.append(("structured", cname, sc, spec.units, True))
    for cname, sc in element_criteria().items():
        jobs.append(("unstructured", cname, sc, spec.unstructured, False))

    def record(status: str) -> None:
        frag["seconds"] = seconds_before + time.perf_counter() - t_start
        run["seconds"] = round(time.perf_counter() - t_start, 1)
        frag["status"] = status
        save_fragment(net, frag, args.tag)

    for seed in args.seeds:
        model, minfo = trained(net, seed, xtr, ytr, xte, yte)
        frag["models"][str(seed)] = minfo
        print(f"{spec.label} seed {seed}: dense acc {minfo['test_acc']:.4f}", flush=True)
        ft_cache: dict[str, tuple[str, dict[str, Any]]] = {}
        for kind, cname, sc, fqns, structured in jobs:
            sps = STRUCT_SPARSITY if structured else UNSTRUCT_SPARSITY
            if _done(frag, kind, cname, seed, sps, finetune):
                _seed_cache(frag, kind, cname, seed, sps, structured, ft_cache, model, fqns, sc, calib)
                continue
            try:
                scores, secs = element_scores(model, fqns, sc, calib)
            except Exception as e:  # record and go on
                frag["skipped"][f"{kind} {cname}"] = f"{type(e).__name__}: {e}"[:200]
                continue
            frag["score_seconds"].setdefault(f"{kind} {cname}", {})[str(seed)] = secs
            by_s = frag["results"][kind].setdefault(cname, {})
            verify = seed == args.seeds[0] and cname in args.verify_compact
            for s in sps:
                r = prune_and_eval(
                    model, fqns, scores, structured, s, data, seed, finetune, not args.ft_masked, verify, ft_cache, cname
                )
                by_s.setdefault(str(s), {})[str(seed)] = r
            cells = []
            for s in sps:
                r = by_s[str(s)][str(seed)]
                cells.append(f"{s}:{r['acc']:.3f}/{r.get('acc_ft', float('nan')):.3f}")
            el = time.perf_counter() - t_start
            print(f"  {kind:12s} {cname:40s} " + " ".join(cells) + f"  [{el:.0f} s]", flush=True)
            record(f"incomplete: running seed {seed} of {args.seeds}")
    record(f"complete: seeds {args.seeds}")


def _seed_cache(
    frag: dict[str, Any],
    kind: str,
    cname: str,
    seed: int,
    sps: Sequence[float],
    structured: bool,
    ft_cache: dict[str, tuple[str, dict[str, Any]]],
    model: nn.Module,
    fqns: Sequence[str],
    scorer: AbstractScorer,
    calib: list[Any],
) -> None:
    """On resume, re-derive the mask digests of finished cases so later identical models still share them."""
    scores, _ = element_scores(model, fqns, scorer, calib)
    for s in sps:
        r = frag["results"][kind][cname][str(s)][str(seed)]
        if "acc_ft" not in r or "ft_shared_with" in r:
            continue
        key = f"{'s' if structured else 'u'}{s}:{Pruned(model, fqns, scores, structured, s).mask_digest()}"
        keep = ("acc_ft", "ft_path", "ft_params", "max_abs_pruned_weight_after_ft", "slim_max_logit_diff")
        ft_cache.setdefault(key, (cname, {k: r[k] for k in keep if k in r}))


if __name__ == "__main__":
    main()
