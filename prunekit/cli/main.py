"""``prunekit`` command line: list, prune, shrink, demo, run, report.

Recipe flags are derived from :class:`prunekit.recipe.PruneRecipe` fields (their help text comes from the
field metadata), so the YAML key ``scorer``, the flag ``--scorer`` and ``prunekit list scorers`` are one thing.
Errors a user can fix print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import ConfigError, PrunekitError
from prunekit.recipe import PruneRecipe, Targets, load_recipe, recipe_from_dict, recipe_to_dict, set_path

EXIT_USAGE = 2
_COMPONENT_EXAMPLES = {
    "scorer": ("scorers", "{name: magnitude, p: 2}"),
    "allocator": ("allocators", "{name: global, max_layer_sparsity: 0.98}"),
    "schedule": ("schedules", "{name: polynomial, begin: 0, end: 1000, every: 100}"),
    "update": ("updaters", "{name: obs, damping: 0.01}"),
}
PRUNE_EPILOG = """examples:
  prunekit prune --model ckpt/ --recipe recipe.yaml --out pruned/
  prunekit prune --model ckpt/ --sparsity 0.9 --allocator global --out pruned/
  prunekit prune --model bert/ --sparsity 0.5 --exclude 'pooler*' --out bert50/
  prunekit prune --model model.pt2 --pattern 2:4 --out out/
  prunekit prune --model ckpt/ --sparsity 0.8 --schedule oneshot --set scorer.p=2 --override 'fc3=0.5' --out out/
"""
_SKIP = {"targets", "overrides", "version"}


def _registries() -> dict[str, Any]:
    from prunekit.allocation import ALLOCATORS
    from prunekit.data import DATASETS
    from prunekit.models import MODELS
    from prunekit.patterns import PATTERNS
    from prunekit.schedules import SCHEDULES
    from prunekit.scoring import SCORERS
    from prunekit.structure.importance import GROUP_ALLOCATORS
    from prunekit.updaters import UPDATERS

    return {
        "scorers": SCORERS,
        "allocators": ALLOCATORS,
        "group_allocators": GROUP_ALLOCATORS,
        "patterns": PATTERNS,
        "schedules": SCHEDULES,
        "updaters": UPDATERS,
        "models": MODELS,
        "datasets": DATASETS,
    }


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """One flag per recipe field, help from the field's metadata; components take a name or a YAML mapping."""
    g = p.add_argument_group("recipe fields (override the recipe file)")
    for f in dataclasses.fields(PruneRecipe):
        if f.name in _SKIP:
            continue
        extra = ""
        if f.name in _COMPONENT_EXAMPLES:
            kind, example = _COMPONENT_EXAMPLES[f.name]
            extra = f"; one of {', '.join(_registries()[kind].names())}, or a YAML mapping such as '{example}'"
        g.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f"r_{f.name}", metavar=f.name.upper(), help=f.metadata.get("help", "") + extra
        )
    for f in dataclasses.fields(Targets):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type in ("bool", bool):
            g.add_argument(flag, dest=f"t_{f.name}", action="store_true", default=None, help=f.metadata.get("help", ""))
        elif f.name in ("types", "include", "exclude"):
            g.add_argument(
                flag, dest=f"t_{f.name}", action="append", metavar="GLOB", help=f.metadata.get("help", "") + " (repeatable)"
            )
        else:
            g.add_argument(flag, dest=f"t_{f.name}", metavar=f.name.upper(), help=f.metadata.get("help", ""))
    g.add_argument("--override", action="append", default=[], metavar="GLOB=SPARSITY", help="per-layer sparsity (repeatable)")
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="set any recipe key, e.g. --set scorer.p=2 (repeatable)"
    )


def recipe_from_args(args: argparse.Namespace) -> PruneRecipe:
    data: dict[str, Any] = recipe_to_dict(load_recipe(args.recipe)) if getattr(args, "recipe", None) else {}
    if not data:
        data = {}
    for f in dataclasses.fields(PruneRecipe):
        v = getattr(args, f"r_{f.name}", None)
        if v is not None:
            data[f.name] = _yaml_value(v) if f.name != "pattern" else v
    targets = dict(data.get("targets") or {})
    for f in dataclasses.fields(Targets):
        v = getattr(args, f"t_{f.name}", None)
        if v is not None:
            targets[f.name] = v
    if targets:
        data["targets"] = targets
    for item in args.override:
        glob, sep, val = item.partition("=")
        if not sep:
            raise ConfigError("--override", item, "expected GLOB=SPARSITY, e.g. --override 'fc3*=0.5'")
        data.setdefault("overrides", {})[glob] = _yaml_value(val)
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError("--set", item, "expected KEY=VALUE, e.g. --set scorer.p=2")
        set_path(data, key, _yaml_value(val))
    return recipe_from_dict(data)


# -- commands -----------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    regs = _registries()
    kinds = [args.kind] if args.kind else list(regs)
    for kind in kinds:
        print(f"{kind}:")
        for name, doc in regs[kind].describe():
            print(f"  {name:<16} {doc}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from prunekit.loaders import load_model, save_pruned
    from prunekit.pruner import Pruner
    from prunekit.report import sparsity_report

    recipe = recipe_from_args(args)
    out = Path(args.out)
    if out.exists():
        raise ConfigError("--out", str(out), "already exists; prunekit never overwrites, choose a new directory")
    loaded = load_model(args.model)
    if loaded.target_modules is not None and recipe.targets == Targets():
        recipe = recipe.replace(targets=Targets(types=("*",), include=loaded.target_modules or ("<none>",)))
    pruner = Pruner(recipe).attach(loaded.model)
    ctx = _calibration_context(args, loaded.model)
    pruner.prune_(ctx)
    rep = sparsity_report(loaded.model, loaded.example)
    save_pruned(loaded, out, recipe=recipe_to_dict(recipe), report=rep.to_dict(), pruner_state=pruner.state_dict())
    (out / "report.md").write_text(rep.to_markdown() + "\n", encoding="utf-8")
    print(rep.to_markdown())
    print(f"\nwrote {out}")
    return 0


def add_calibration_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calibration",
        metavar="DATASET",
        help="registered dataset whose training split feeds data-driven criteria (taylor, obd, obs, apoz, lda, ...)",
    )
    p.add_argument("--calibration-batches", type=int, default=8, metavar="N", help="calibration batches (default 8)")
    p.add_argument("--calibration-batch-size", type=int, default=64, metavar="B", help="calibration batch size (default 64)")


def _calibration_context(args: argparse.Namespace, model: Any) -> Any:
    """The ScoreContext of ``--calibration`` (None without it), shared by ``prune`` and ``shrink``."""
    if not args.calibration:
        return None
    from prunekit.data import load_dataset
    from prunekit.train import calibration_context

    data = load_dataset(args.calibration, "train")
    return calibration_context(model, data, args.calibration_batches, args.calibration_batch_size)


# -- shrink -------------------------------------------------------------------------------------------------

SHRINK_EPILOG = """examples:
  prunekit shrink --model ckpt/ --ratio 0.5 --out slim/
  prunekit shrink --model ckpt/ --target macs=2x --out slim/        # the ratio that halves the MACs is searched
  prunekit shrink --model ckpt/ --recipe shrink.yaml --batch-size 32 --out slim/
  prunekit shrink --model ckpt/ --ratio 0.5 --allocator '{name: global, max_fraction: 0.8}' --round-to 8 --out slim/
  prunekit shrink --model ckpt/ --scorer taylor --calibration mnist --exclude 'features.0' --out slim/

recipe file (YAML; every key optional, flags override it):
  ratio: 0.5
  scorer: {name: magnitude, p: 1}        # any registered scorer (prunekit list scorers)
  reduction: mean                        # sum | mean | max over a group's members
  normalize: mean                        # none | mean | max | l2, per member before combining
  roles: [producer, consumer]            # + follower: BatchNorm/LayerNorm weights
  allocator: {name: global, max_fraction: 0.8}   # uniform | global
  round_to: 8
  types: [Linear, Conv2d]
  exclude: ["classifier*"]
  # target: macs=2x                      # instead of ratio: a cost reduction (macs or params), ratio searched
"""
_SHRINK_LIST_FIELDS = {"roles": "ROLE", "types": "TYPE", "include": "GLOB", "exclude": "GLOB"}


def add_shrink_flags(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~prunekit.structure.importance.StructuredConfig` field, help from its metadata."""
    from prunekit.structure.importance import StructuredConfig

    g = p.add_argument_group("shrink recipe fields (override the recipe file)")
    for f in dataclasses.fields(StructuredConfig):
        if f.name == "version":
            continue
        flags = [f"--{f.name.replace('_', '-')}"] + (["--criterion"] if f.name == "scorer" else [])
        help_text = f.metadata.get("help", "")
        if f.name in _SHRINK_LIST_FIELDS:
            g.add_argument(
                *flags, dest=f"s_{f.name}", action="append", metavar=_SHRINK_LIST_FIELDS[f.name], help=help_text + " (repeatable)"
            )
        else:
            g.add_argument(*flags, dest=f"s_{f.name}", metavar=f.name.upper(), help=help_text)
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="set any recipe key, e.g. --set scorer.p=2 (repeatable)"
    )


def shrink_config_from_args(args: argparse.Namespace) -> Any:
    """Recipe file, then flags, then ``--set``; validated into a StructuredConfig (ConfigError names the field)."""
    from prunekit.config import read_yaml
    from prunekit.structure.importance import StructuredConfig, config_from_dict

    data: Any = read_yaml(args.recipe, "recipe") if args.recipe else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("recipe", args.recipe, "expected a mapping of shrink fields (ratio, scorer, allocator, ...)")
    for f in dataclasses.fields(StructuredConfig):
        v = getattr(args, f"s_{f.name}", None)
        if v is not None:
            data[f.name] = [_yaml_value(x) for x in v] if f.name in _SHRINK_LIST_FIELDS else _yaml_value(v)
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError("--set", item, "expected KEY=VALUE, e.g. --set scorer.p=2")
        set_path(data, key, _yaml_value(val))
    return config_from_dict(data)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` or ``"1x3x32x32"`` -> (1, 3, 32, 32)."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigError("--example-shape", text, "expected positive integers such as 1,3,32,32")
    return shape


def _example_for_shrink(args: argparse.Namespace, loaded: Any) -> Any:
    """``--example-shape`` (random normal, seeded), else the first sample of ``--calibration``, else the
    checkpoint's own example (its recorded input shape, or token ids for Hugging Face models)."""
    import torch

    if args.example_shape:
        return torch.randn(parse_shape(args.example_shape), generator=torch.Generator().manual_seed(0))
    if args.calibration:
        from prunekit.data import load_dataset

        return load_dataset(args.calibration, "train").without_augmentation().get(slice(0, 1))[0]
    if loaded.example is None:
        raise ConfigError(
            "--example-shape", None, "missing: the checkpoint records no input shape; give e.g. --example-shape 1,3,32,32"
        )
    return loaded.example


def cmd_shrink(args: argparse.Namespace) -> int:
    import copy

    from prunekit import masks as M
    from prunekit.checkpoint import read_plan
    from prunekit.loaders import check_output_path, load_model
    from prunekit.structure.compare import compare_models
    from prunekit.structure.handlers import sync_attention_attributes_
    from prunekit.structure.importance import config_to_dict, plan_for_target, structured_plan
    from prunekit.structure.persist import compose_plans, save_slim
    from prunekit.structure.plan import apply_plan_

    config = shrink_config_from_args(args)
    if args.batch_size < 1:
        raise ConfigError("--batch-size", args.batch_size, "must be a positive integer")
    if args.repeats < 1:
        raise ConfigError("--repeats", args.repeats, "must be a positive integer")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads", args.threads, "must be a positive integer")
    out = Path(args.out)
    if out.exists():
        raise ConfigError("--out", str(out), "already exists; prunekit never overwrites, choose a new directory")
    loaded = load_model(args.model)
    if loaded.kind == "export":
        raise ConfigError("--model", str(args.model), "shrink needs a prunekit checkpoint or a Hugging Face model directory")
    check_output_path(loaded, out)
    model = loaded.model
    if next(M.masked_params(model), None) is not None:
        logging.getLogger(__name__).info("baking masks into the weights before slimming")
        M.finalize_(model)
    example = _example_for_shrink(args, loaded)
    ctx = _calibration_context(args, model)
    search = plan_for_target(model, example, config, ctx) if config.target is not None else None
    plan = search.plan if search is not None else structured_plan(model, example, config, ctx)
    if not plan.entries:
        field, value = ("target", str(config.target)) if search is not None else ("ratio", config.ratio)
        raise ConfigError(field, value, "removes no unit of any eligible group; raise it or check --types/--include/--exclude")
    slim = apply_plan_(copy.deepcopy(model), plan)
    sync_attention_attributes_(slim)
    rep = compare_models(model, slim, example, args.batch_size, args.repeats, threads=args.threads)
    md = rep.to_markdown()
    before = read_plan(loaded.path, loaded.meta) if loaded.kind == "prunekit" else None
    full = compose_plans(before, plan) if before is not None else plan
    extra = dict(loaded.meta.get("extra") or {}) if loaded.kind == "prunekit" else {}
    extra.pop("report", None)  # a mask report of the input no longer describes the slim model
    if "input_shape" not in extra and hasattr(example, "shape"):
        extra["input_shape"] = list(example.shape)
    modules = dict(model.named_modules())  # entries naming a bare tensor (layer scale, class token) are not units
    unit_entries = [e for e in plan.entries if e.axis == "out" and e.module in modules]
    removed = sum(e.removed for e in unit_entries)
    extra["shrink"] = {"config": config_to_dict(config), "report": rep.to_dict(), "removed_out_units": removed}
    if search is not None:
        extra["shrink"]["target_search"] = {
            "target": str(search.target), "ratio": search.ratio, "reduction": search.reduction, "plans": search.plans,
            "within_tolerance": search.within,
        }  # fmt: skip
        md = f"{search.describe()}\n\n{md}"
    save_slim(
        out,
        slim,
        full,
        model_spec=loaded.meta.get("model") if loaded.kind == "prunekit" else None,
        extra=extra,
        files={"report.md": md + "\n", "report.json": rep.to_json() + "\n"},
    )
    print(md)
    print(f"\nremoved {removed:,} output units across {len(unit_entries)} modules; wrote {out}")
    return 0


def _fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def cmd_demo(args: argparse.Namespace) -> int:
    from prunekit.checkpoint import save_checkpoint
    from prunekit.demo import MODEL_SPEC, run_demo
    from prunekit.recipe import recipe_to_dict

    if not 0.0 <= args.sparsity < 1.0:
        raise ConfigError("--sparsity", args.sparsity, "must be in [0, 1)")
    if args.out and Path(args.out).exists():
        raise ConfigError("--out", args.out, "already exists; choose a new directory")
    r = run_demo(sparsity=args.sparsity, dense_epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    d, p = r.dense, r.pruned
    rows = [
        ("test accuracy", f"{r.dense_accuracy:.2%}", f"{r.pruned_accuracy:.2%}"),
        ("sparsity of pruned layers", f"{d.masked_sparsity:.2%}", f"{p.masked_sparsity:.2%}"),
        ("non-zero parameters", _fmt_int(d.total_nonzero), _fmt_int(p.total_nonzero)),
        ("effective FLOPs / sample", _fmt_int(d.effective_flops), _fmt_int(p.effective_flops)),
        ("size (bytes; values + bitmap)", _fmt_int(d.compressed_bytes), _fmt_int(p.compressed_bytes)),
    ]
    print("prunekit demo: MLP 64-256-128-10 on scikit-learn digits (1,797 images, 20 % held out)")
    print(f"gradual cubic schedule (Zhu & Gupta 2017), global magnitude, target {args.sparsity:.0%}\n")
    print(f"| {'':<30} | {'dense':>12} | {'pruned':>12} |")
    print(f"|{'-' * 32}|{'-' * 14}|{'-' * 14}|")
    for name, a, b in rows:
        print(f"| {name:<30} | {a:>12} | {b:>12} |")
    print(f"\naccuracy change {100 * (r.pruned_accuracy - r.dense_accuracy):+.2f} points; took {r.seconds:.1f} s")
    if args.out:
        save_checkpoint(
            args.out,
            r.pruned_model,
            model_spec=MODEL_SPEC,
            recipe=recipe_to_dict(r.recipe),
            pruner_state=r.pruner_state,
            extra={
                "input_shape": [1, 64],
                "report": p.to_dict(),
                "dense_accuracy": r.dense_accuracy,
                "pruned_accuracy": r.pruned_accuracy,
            },
        )
        print(f"wrote pruned checkpoint to {args.out} (try: prunekit prune --model {args.out} --sparsity 0.95 --out OUT)")
    if args.json:
        print(
            json.dumps(
                {
                    "dense_accuracy": r.dense_accuracy,
                    "pruned_accuracy": r.pruned_accuracy,
                    "sparsity": p.masked_sparsity,
                    "seconds": r.seconds,
                }
            )
        )
    return 0


RUN_EPILOG = """examples:
  prunekit run recipes/digits_quick.yaml --out runs
  prunekit run recipes/curve_lenet300.yaml --dry-run
  prunekit run spec.yaml --set train.epochs=2 --set sweep.seed=[0,1,2]
  prunekit report runs --out report
"""


def _fmt_metric(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    name = metrics["metric"]
    value = float(metrics["final"][name])
    return f"{name} {100 * value:.2f} %" if name == "accuracy" else f"{name} {value:.4g}"


def cmd_run(args: argparse.Namespace) -> int:
    from prunekit.experiment import load_experiments, run_experiment, run_name, run_status
    from prunekit.experiment.runner import DataCache

    exps = load_experiments(args.spec, args.set)
    out = Path(args.out)
    print(f"{len(exps)} run(s) from {args.spec} in {out}/")
    print(f"  {'#':>3}  {'run':<40} {'status':<8} {'sparsity':>8} {'seed':>4} {'epochs':>6}  protocol")
    for i, e in enumerate(exps):
        name = run_name(e)
        print(
            f"  {i + 1:>3}  {name:<40} {run_status(out / name):<8} {e.target_sparsity:>8.4g} {e.seed:>4} {e.epoch_budget:>6}"
            f"  {e.protocol or '-'}"
        )
    if args.dry_run:
        return 0
    cache = DataCache()
    rows = []
    for i, e in enumerate(exps):
        print(f"[{i + 1}/{len(exps)}] {run_name(e)}", flush=True)
        r = run_experiment(e, out, progress=not args.no_progress, data=cache)
        print(f"[{i + 1}/{len(exps)}] {r.run_dir.name}: {r.status}; {_fmt_metric(r.metrics)}", flush=True)
        rows.append(r)
    print("\n| run | status | target sparsity | measured sparsity | reported metric (final) | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        m = r.metrics or {}
        measured = f"{100 * m['sparsity']['masked']:.2f} %" if m else "-"
        secs = f"{m['seconds']:.1f}" if m else "-"
        print(f"| {r.run_dir.name} | {r.status} | {r.experiment.target_sparsity:.4g} | {measured} | {_fmt_metric(m)} | {secs} |")
    locked = sum(r.status == "locked" for r in rows)
    if locked:
        print(f"\n{locked} run(s) are being run by another process; run again later to finish them")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from prunekit.experiment import write_report

    md, html_path = write_report(args.dirs, args.out, html=not args.no_html)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md}" + (f" and {html_path}" if html_path else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from prunekit import __version__

    p = argparse.ArgumentParser(prog="prunekit", description="Prune and sparsify PyTorch models.")
    p.add_argument("--version", action="version", version=f"prunekit {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pl = sub.add_parser("list", help="list registered scorers, allocators, patterns, schedules, models and datasets")
    pl.add_argument("kind", nargs="?", choices=sorted(_registries()), help="only this kind")
    pl.set_defaults(fn=cmd_list)

    pp = sub.add_parser(
        "prune",
        help="one-shot prune a saved model and write a new checkpoint and report",
        description="One-shot prune a saved model (prunekit checkpoint dir, Hugging Face model dir, or torch.export .pt2) "
        "with a recipe; flags override recipe fields. Writes a new checkpoint and report.md into --out.",
        epilog=PRUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pp.add_argument("--model", required=True, help="model path")
    pp.add_argument("--recipe", help="recipe YAML file")
    pp.add_argument("--out", required=True, help="new output directory (must not exist)")
    add_calibration_flags(pp)
    add_recipe_flags(pp)
    pp.set_defaults(fn=cmd_prune)

    ps = sub.add_parser(
        "shrink",
        help="physically remove channels/neurons by group importance; write the slim checkpoint and a before/after table",
        description="Structured pruning with physical removal: score every coupled group of units with a criterion, "
        "remove the lowest-scoring ones (recipe file and/or flags), and write the slim checkpoint (safetensors weights, "
        "plan.json, the original architecture) plus report.md/report.json (parameters, MACs, CPU latency) into --out.",
        epilog=SHRINK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ps.add_argument("--model", required=True, help="prunekit checkpoint directory or Hugging Face model directory")
    ps.add_argument("--recipe", help="shrink recipe YAML file")
    ps.add_argument("--out", required=True, help="new output directory (must not exist)")
    ps.add_argument("--example-shape", metavar="SHAPE", help="example input shape for tracing and MACs, e.g. 1,3,32,32")
    ps.add_argument("--batch-size", type=int, default=1, metavar="B", help="batch size of the latency measurement (default 1)")
    ps.add_argument("--repeats", type=int, default=7, metavar="N", help="interleaved latency repeats; the median is reported")
    ps.add_argument("--threads", type=int, metavar="N", help="intra-op threads for the latency measurement (default: torch's)")
    add_calibration_flags(ps)
    add_shrink_flags(ps)
    ps.set_defaults(fn=cmd_shrink)

    pd = sub.add_parser("demo", help="train, prune to 90 %% and fine-tune an MLP on scikit-learn digits (about 10 s)")
    pd.add_argument("--sparsity", type=float, default=0.9, help="target sparsity (default 0.9)")
    pd.add_argument("--epochs", type=int, default=30, help="dense training epochs (default 30)")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--out", help="also save the pruned model as a prunekit checkpoint in this new directory")
    pd.add_argument("--no-progress", action="store_true", help="hide progress bars")
    pd.add_argument("--json", action="store_true", help="also print a JSON summary line")
    pd.set_defaults(fn=cmd_demo)

    pr = sub.add_parser(
        "run",
        help="run an experiment spec (dataset, model, training, pruning phases, sweep) into hashed run directories",
        description="Run every experiment of a spec (a sweep fans out by cartesian product) sequentially. Each run writes "
        "OUT/<name>-<hash>/ with experiment.yaml, metrics.json, sparsity.json, checkpoint/, log.txt and DONE. Finished runs "
        "are skipped; interrupted runs resume from their last checkpoint.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pr.add_argument("spec", help="experiment spec YAML file")
    pr.add_argument("--out", default="runs", help="directory that holds the run directories (default: runs)")
    pr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. --set train.epochs=2, --set pruning.scorer=random, --set sweep.seed=[0,1] (repeatable)",
    )
    pr.add_argument("--dry-run", action="store_true", help="list the runs and their status; run nothing")
    pr.add_argument("--no-progress", action="store_true", help="hide progress bars")
    pr.set_defaults(fn=cmd_run)

    prep = sub.add_parser(
        "report",
        help="markdown table and self-contained HTML page with plots over finished runs",
        description="Collect finished runs (directories with DONE) under DIR..., group them by method (everything but "
        "sparsity and seed), and write OUT/report.md and OUT/report.html (accuracy vs sparsity with a band over seeds, "
        "training curves, per-layer sparsity). Run directories are never modified.",
    )
    prep.add_argument("dirs", nargs="+", metavar="DIR", help="run directories, or directories that contain them")
    prep.add_argument("--out", default="report", help="output directory (default: report)")
    prep.add_argument("--no-html", action="store_true", help="write report.md only (no matplotlib needed)")
    prep.set_defaults(fn=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except PrunekitError as e:
        print(f"prunekit {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
