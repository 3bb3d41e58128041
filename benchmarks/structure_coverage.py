"""Structured pruning coverage and speed (issue 5): prunekit vs Torch-Pruning 1.6 on 14 architectures.

Models are built from configs with random weights (no downloads): prunekit's zoo, ``nn.TransformerEncoder`` and
Hugging Face ResNet-50, ConvNeXt-tiny, ViT-small, BERT-small, GPT-2-small, OPT-125m, Llama-tiny (grouped-query
attention) and Mixtral-tiny (mixture of experts); see ``structure_models.py``.

1. **Coverage** at one channel ratio (0.5 of the units of every prunable group, magnitude L2, uniform): success,
   parameter / MAC / latency ratios, time to prune; for prunekit also the groups found, why the others are frozen,
   exactness (structured mask vs slim model on the groups without LayerNorm/RMSNorm) and save -> load. Torch-Pruning
   runs in a subprocess with a timeout (``structure_tp.py``).
2. **Speed** at 1.5x, 2x and 4x MAC reduction: prunekit's uniform ratio searched on the plan's MACs,
   Torch-Pruning's ratio searched to the same parameter count (within 2 %); dense, prunekit and Torch-Pruning
   timed interleaved in one process (``prunekit.structure.compare.measure_latency``) at batch 1 and 32.

    python benchmarks/structure_coverage.py                          # everything (~40 min on 2 cores)
    python benchmarks/structure_coverage.py --models hf_gpt2 hf_llama_gqa   # re-run some models (merged by name)
    python benchmarks/structure_coverage.py --quick                  # tiny configs, 2 repeats; prints, records nothing
    python benchmarks/structure_coverage.py --render                 # regenerate the markdown from the JSON
    python benchmarks/structure_coverage.py --models resnet20 --out /tmp/cov   # results elsewhere (smoke runs)

Results: ``benchmarks/results/structure_coverage.json`` (one entry per model, merged across invocations) and
``structure_coverage.md`` (regenerated from the whole JSON); ``--out DIR`` puts both in ``DIR`` instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import structure_checks as K
import structure_models as SM
import structure_render as R
import structure_tp as TP

from prunekit.structure import build_groups
from prunekit.structure.attention import attention_modules, split_attention_
from prunekit.structure.compare import batched, count_params, measure_latency

LEVELS = (1.5, 2.0, 4.0)
RATIO = 0.5


def log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _err(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:250] if lines else ''}"


def latency(models: dict[str, nn.Module], inputs: Any, repeats: int, min_time: float) -> dict[str, Any]:
    """Median seconds per call of each model, all timed interleaved; models that fail to run are left out."""
    ok: dict[str, nn.Module] = {}
    errors: dict[str, str] = {}
    for name, m in models.items():
        try:
            with torch.inference_mode():
                SM.call(m.eval(), inputs)
            ok[name] = m
        except Exception as e:
            errors[name] = _err(e)
    with C.OthersCpu() as others:
        secs = measure_latency(list(ok.values()), inputs, repeats, min_time)
    return {"seconds": dict(zip(ok, secs)), "errors": errors, "others_cpu": round(others.share, 3)}


def tp_job(
    bm: SM.BenchModel,
    model: nn.Module,
    example: Any,
    recipe: str,
    out_shape: list[int],
    tasks: list[dict[str, Any]],
    args: argparse.Namespace,
) -> TP.Job:
    """A Torch-Pruning job; the worker rebuilds ``model`` and ``example`` from ``model``/``quick``/``seed``."""
    return {
        "model": bm.name,
        "quick": bool(args.quick),
        "seed": int(args.seed),
        "recipe": recipe,
        "hf": isinstance(example, dict),
        "attention": SM.attention_modules(model),
        "ignored": [SM.last_linear(model)],
        "out_shape": out_shape,
        "threads": torch.get_num_threads(),
        "tasks": tasks,
    }


def load_tp(r: dict[str, Any]) -> nn.Module | None:
    """The pruned model of a successful Torch-Pruning task (``structure_tp.load_pruned``), or None after turning the
    entry into a failure when it cannot be rebuilt or its output differs from the worker's."""
    try:
        m, r["transport_max_abs_diff"] = TP.load_pruned(r)
    except Exception as e:
        r.update(ok=False, error=f"transport from the worker failed: {_err(e)}")
        return None
    return m


def tp_recipes(bm: SM.BenchModel) -> list[str]:
    return ["default", "llm"] if bm.causal_lm else ["default"]


def run_model(bm: SM.BenchModel, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    q = args.quick
    rec: dict[str, Any] = {"name": bm.name, "label": bm.label, "family": bm.family, "config": SM.config_summary(bm, q)}
    rec["input"] = bm.input_desc(q)
    model = bm.build(q, seed=args.seed)
    ex1 = bm.example(q, 1)
    timing = {b: bm.timing_input(q, b) for b in (1, 32)}
    with torch.no_grad():
        out_shape = list(SM.output_tensor(SM.call(model, ex1)).shape)
    one = batched(ex1, 1)
    dense_macs = K.macs(model, one)
    rec.update(params=count_params(model), macs=dense_macs)

    # -- 1. coverage: prunekit ---------------------------------------------------------------------------------
    # nn.MultiheadAttention computes all heads in one fused call: prunekit analyses and prunes an equivalent copy
    # with separate q/k/v/out projections (the plan records the split; a replay on the original splits it too);
    # the dense baseline stays the original model.
    analysed = model
    if attention_modules(model):
        analysed = copy.deepcopy(model)
        split_attention_(analysed)
    pk: dict[str, Any] = {}
    slim: K.Slim | None = None
    groups = None
    try:
        t0 = time.perf_counter()
        groups = build_groups(analysed, ex1)
        pk["analysis_s"] = time.perf_counter() - t0
        pk["groups"] = K.group_summary(groups, analysed)
        slim = K.prune(analysed, ex1, RATIO)  # timed end to end: analysis, scores, plan, surgery
        pk.update(ok=True, prune_s=slim.seconds, params=count_params(slim.model), macs=K.macs(slim.model, one))
        pk["plan_entries"] = len(slim.plan.entries)
        pk["exact"] = K.exactness(analysed, ex1, groups, RATIO)
        spec = None if "hf" in (bm.quick_spec if q else bm.spec) else (bm.quick_spec if q else bm.spec)
        pk["save_load"] = K.save_load(slim, ex1, spec)
    except Exception as e:
        pk.update(ok=False, error=_err(e))
    rec["prunekit"] = pk
    log(f"  prunekit: {'ok' if pk.get('ok') else pk.get('error')}")

    # -- 1. coverage: Torch-Pruning ----------------------------------------------------------------------------
    tp_models: dict[str, nn.Module] = {}
    rec["tp"] = {}
    for recipe in [] if args.skip_tp else tp_recipes(bm):
        job = tp_job(bm, model, ex1, recipe, out_shape, [{"tag": f"cov_{recipe}", "ratio": RATIO}], args)
        res, err = TP.run_job(model, ex1, job, scratch / bm.name, args.tp_timeout)
        r: dict[str, Any] = res[0] if res else {"ok": False}
        if err and not res:
            r["error"] = err
        m = load_tp(r) if r.get("ok") else None
        if m is not None:
            r["macs"] = K.macs(m, one)
            tp_models[f"tp_{recipe}"] = m
        r.pop("file", None)
        rec["tp"][recipe] = r
        log(f"  torch-pruning ({recipe}): {'ok' if r.get('ok') else r.get('error')}")

    # -- 1. coverage latency ----------------------------------------------------------------------------------
    timed = {"dense": model, **({"prunekit": slim.model} if slim is not None else {}), **tp_models}
    rec["coverage_latency"] = {str(b): latency(timed, ex, args.repeats, args.min_time) for b, ex in timing.items()}
    del tp_models

    # -- 2. speed ----------------------------------------------------------------------------------------------
    rec["speed"] = speed(bm, model, analysed, ex1, timing, groups, out_shape, args, scratch) if groups is not None else []
    del model, analysed
    shutil.rmtree(scratch / bm.name, ignore_errors=True)
    return rec


def speed(
    bm: SM.BenchModel,
    model: nn.Module,
    analysed: nn.Module,
    ex1: Any,
    timing: dict[int, Any],
    groups: Any,
    out_shape: list[int],
    args: argparse.Namespace,
    scratch: Path,
) -> list[dict[str, Any]]:
    one = batched(ex1, 1)
    levels: list[dict[str, Any]] = []
    pk_models: dict[float, nn.Module] = {}
    for target in args.levels:
        s = K.ratio_for_mac_reduction(analysed, ex1, groups, target)
        lv: dict[str, Any] = {
            "target": target,
            "ratio": s.ratio,
            "reduction": s.reduction,
            "tries": s.tries,
            "reachable": s.reachable,
        }
        if s.reachable:
            sl = K.prune(analysed, ex1, s.ratio, groups)
            pk_models[target] = sl.model
            lv["params"] = count_params(sl.model)
        levels.append(lv)
        log(
            f"  {target}x MACs: ratio {s.ratio:.3f} -> {s.reduction:.2f}x ({s.tries} plans)"
            + ("" if s.reachable else " UNREACHABLE")
        )
    tp_recipe = tp_recipes(bm)[-1]  # Torch-Pruning's LLM recipe for causal LMs (its defaults fail or hang there)
    tp_by_target: dict[float, dict[str, Any]] = {}
    if not args.skip_tp and pk_models:
        tasks = [
            {"tag": f"speed_{lv['target']}", "match_params": lv["params"], "start": lv["ratio"]}
            for lv in levels
            if "params" in lv
        ]
        job = tp_job(bm, model, ex1, tp_recipe, out_shape, tasks, args) | {"tolerance": 0.02, "max_iters": args.tp_iters}
        res, err = TP.run_job(model, ex1, job, scratch / bm.name, args.tp_match_timeout)
        for lv in levels:
            r = next((x for x in res if x["tag"] == f"speed_{lv['target']}"), None)
            tp_by_target[lv["target"]] = r if r is not None else {"ok": False, "error": err or "not run"}
    for lv in levels:
        if lv["target"] not in pk_models:
            continue
        timed = {"dense": model, "prunekit": pk_models[lv["target"]]}
        lv["pk_macs"] = K.macs(pk_models[lv["target"]], one)
        r = tp_by_target.get(lv["target"])
        if r is not None:
            m = load_tp(r) if r.get("ok") else None
            lv["tp"] = {k: v for k, v in r.items() if k != "file"} | {"recipe": tp_recipe}
            if m is not None:
                lv["tp"]["macs"] = K.macs(m, one)
                timed["tp"] = m
        lv["latency"] = {str(b): latency(timed, ex, args.repeats, args.min_time) for b, ex in timing.items()}
        del timed
    return levels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(SM.BY_NAME), default=list(SM.BY_NAME), metavar="NAME",
                    help=f"subset of: {', '.join(SM.BY_NAME)}")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny configs, 2 repeats; print the tables, record nothing")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats (median)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timed repeat and model (at least one call)")
    ap.add_argument("--levels", type=float, nargs="+", default=list(LEVELS), help="MAC reductions of the speed table")
    ap.add_argument("--tp-timeout", type=float, default=180.0, help="seconds for one Torch-Pruning attempt")
    ap.add_argument("--tp-match-timeout", type=float, default=900.0, help="seconds for Torch-Pruning's parameter matching")
    ap.add_argument("--tp-iters", type=int, default=8, help="Torch-Pruning prunes per parameter match (search)")
    ap.add_argument("--skip-tp", action="store_true", help="prunekit only")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render", action="store_true", help="only regenerate the markdown from the stored JSON")
    ap.add_argument("--out", type=Path, default=R.JSON_PATH.parent, metavar="DIR",
                    help=f"directory of {R.JSON_PATH.name} and {R.MD_PATH.name} (default: benchmarks/results)")  # fmt: skip
    args = ap.parse_args()
    if args.out.resolve() != R.JSON_PATH.parent.resolve():  # structure_render reads and writes its module paths
        R.JSON_PATH, R.MD_PATH = args.out / R.JSON_PATH.name, args.out / R.MD_PATH.name
        if not (args.quick or args.render):
            args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        R.write(json.loads(R.JSON_PATH.read_text()))
        print(f"wrote {R.MD_PATH}")
        return
    if args.quick:
        args.repeats, args.min_time = min(args.repeats, 2), min(args.min_time, 0.01)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    meta = C.env_info() | {"torch_pruning": TP.version(), "transformers": _version("transformers")}
    scratch = TP.scratch_dir("pk-structure-bench-")
    t_all = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    try:
        for name in (bar := tqdm(args.models, desc="models", unit="model")):
            bar.set_postfix_str(name)
            log(f"{name}:")
            t0 = time.perf_counter()
            rec = run_model(SM.BY_NAME[name], args, scratch)
            rec["wall_s"] = time.perf_counter() - t0
            rec["meta"] = C.env_info() | {"load_at_end": round(__import__("os").getloadavg()[0], 2)}
            records[name] = rec
            log(f"  {rec['wall_s']:.0f} s")
            if not args.quick:
                R.write(records_update(records, meta, time.perf_counter() - t_all))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.quick:
        print(R.render(R.section({"meta": meta, "models": records, "runs": []})))
        return
    print(f"wrote {R.JSON_PATH} and {R.MD_PATH} ({time.perf_counter() - t_all:.0f} s)")


def _version(mod: str) -> str:
    try:
        return str(__import__(mod).__version__)
    except ImportError:
        return "not installed"


def records_update(records: dict[str, dict[str, Any]], meta: dict[str, Any], wall: float) -> dict[str, Any]:
    """Merge this invocation's models into the stored results (other models' entries are kept)."""
    data: dict[str, Any] = json.loads(R.JSON_PATH.read_text()) if R.JSON_PATH.exists() else {}
    models = dict(data.get("models", {}))
    models.update(records)
    runs = [r for r in data.get("runs", []) if r.get("command") != meta["command"] or r.get("date") != meta["date"]]
    runs.append({"command": meta["command"], "date": meta["date"], "models": list(records), "wall_s": round(wall)})
    return {"meta": meta, "models": {k: models[k] for k in SM.BY_NAME if k in models}, "runs": runs}


if __name__ == "__main__":
    main()
