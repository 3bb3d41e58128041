"""Torch-Pruning 1.6, the peer of the structure benchmarks, run in a subprocess (it can hang or crash).

No Python object is serialized in either direction: tensors travel as safetensors, everything else as JSON.

* Parent to worker: :func:`run_job` writes ``job.json``, which names the benchmark model (its key in
  ``structure_models.BY_NAME``, ``quick`` and ``seed``) and carries SHA-256 digests of the parent's dense tensors
  and example input (:func:`tensor_digest`), then runs ``python benchmarks/structure_tp.py JOB.json`` with a
  timeout. The worker rebuilds the dense model and the example (batch 1) from ``structure_models.py``
  (:func:`build_dense`) and stops with a clear error if either digest differs.
* Worker to parent: the worker rewrites ``results.json`` after every task (a task that times out still leaves the
  earlier ones). Each pruned model is written as ``TAG.safetensors`` (every parameter and buffer under its
  state-dict name; names that share one tensor, such as tied embeddings, are stored once and listed together),
  ``TAG.out.safetensors`` (its output on the example) and ``TAG.json`` (:func:`save_pruned`: the tensor groups,
  ``requires_grad``, and the attributes that Torch-Pruning or :func:`_fix_attention` changed, found by comparing
  ``vars(module)`` of every module, and the fields of shared helper objects such as a Hugging Face config, with the
  dense model's: ``Linear.in_features``, ``Conv2d.groups``, ``LayerNorm.normalized_shape``, head counts, ...). A
  change that JSON cannot express fails that task with a note. :func:`load_pruned` rebuilds the dense model by
  name, puts the saved tensors and attributes in and checks its output against the worker's before the parent
  counts MACs and times it next to prunekit's.

Usage follows Torch-Pruning's documentation and examples:

* ``default``: ``tp.pruner.BasePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
  pruning_ratio=r, ignored_layers=[classifier or lm_head])``; for Hugging Face attention ``num_heads={q: H, k: H_kv,
  v: H_kv}`` (or ``{c_attn: H}`` for a fused projection) and ``output_transform=lambda out: out.logits.sum()``
  (``examples/transformers/prune_hf_vit.py``, ``prune_hf_bert.py``); head dims are pruned (the default
  ``prune_head_dims=True``); afterwards the attention modules' head counts are set from ``pruner.num_heads``, as
  those examples do.
* ``llm`` (causal LMs): the recipe of ``examples/LLMs/prune_llm.py``: ``model.config.use_cache = False``,
  ``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``, ``head_pruning_ratio=r``, ``lm_head``
  ignored, attributes fixed afterwards (``round_to=4`` of that script is left out: prunekit runs with 1 too).

Tied weights: Torch-Pruning slices each owner of a tied parameter (OPT's and GPT-2's embedding and LM head) into a
parameter of its own, so its pruned model holds two equal copies and counts them twice. :func:`retie_like` shares
them again, as Hugging Face's ``from_pretrained`` does for ``tie_word_embeddings`` when the pruned model is saved
and loaded, before parameters are counted (outside the timed pruning); the task result lists the tied names of the
pruned model (``tied``). Owners left with different values stay apart.

Task kinds: ``{"tag", "ratio"}`` prunes once; ``{"tag", "match_params", "start"}`` searches the ratio
(``prunekit.structure.target.solve_increasing``, regula falsi) until the pruned model's parameter count is within
``tolerance`` (2 %) of ``match_params`` (at most ``max_iters`` prunes; the closest is kept). A ratio at which
pruning fails or the pruned model does not run is recorded in ``failed_ratios`` and the search steps around it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structure_models as SM
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from prunekit.structure.handlers import StructureError
from prunekit.structure.target import solve_increasing
from prunekit.structure.ties import retie_, tied_parameters

HERE = Path(__file__).resolve().parent
Job = dict[str, Any]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# -- transport: tensors as safetensors, the rest as JSON -----------------------------------------------------------


class TransportError(RuntimeError):
    """A pruned model could not be carried from the worker to the parent without loss."""


def model_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Every parameter and buffer under each name it has (tied tensors appear once per name)."""
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def example_items(example: Any) -> list[tuple[str, Any]]:
    return sorted(example.items()) if isinstance(example, dict) else [("input", example)]


def tensor_digest(named: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 of names, dtypes, shapes and bytes (non-tensor values by ``repr``), in name order."""
    h = hashlib.sha256()
    for name, value in sorted(named, key=lambda kv: kv[0]):
        if not isinstance(value, Tensor):
            h.update(f"{name}={value!r}\n".encode())
            continue
        t = value.detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # raw bytes: bfloat16 has no numpy dtype
    return h.hexdigest()


def build_dense(spec: Mapping[str, Any]) -> tuple[nn.Module, Any]:
    """The dense model and example input (batch 1) that ``spec`` names (``model``: a key of
    ``structure_models.BY_NAME``, ``quick``, ``seed``), built as ``structure_coverage.py`` builds them; the global
    random state is left as it was."""
    bm = SM.BY_NAME[spec["model"]]
    with torch.random.fork_rng(devices=[]):
        model = bm.build(bool(spec["quick"]), seed=int(spec["seed"]))
    return model.eval(), bm.example(bool(spec["quick"]), 1)


_PLAIN = (bool, int, float, str, type(None))
_SEQUENCES: dict[str, Callable[[list[Any]], Any]] = {"list": list, "tuple": tuple, "Size": torch.Size}
_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"})


def encode_value(v: Any) -> Any:
    """JSON for a plain attribute value: scalars as they are, lists, tuples, ``torch.Size`` and str-keyed dicts
    tagged with their type (JSON has no tuple); anything else raises ``TypeError``."""
    if type(v) in _PLAIN:
        return v
    for tag, cls in _SEQUENCES.items():
        if type(v) is cls:
            return {"type": tag, "items": [encode_value(x) for x in v]}
    if type(v) is dict and all(isinstance(k, str) for k in v):
        return {"type": "dict", "items": {k: encode_value(x) for k, x in v.items()}}
    raise TypeError(f"{type(v).__module__}.{type(v).__qualname__}")


def decode_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return v
    if v["type"] == "dict":
        return {k: decode_value(x) for k, x in v["items"].items()}
    return _SEQUENCES[v["type"]]([decode_value(x) for x in v["items"]])


def _same(a: Any, b: Any, depth: int = 0) -> bool:
    """Whether attribute values ``a`` (dense model) and ``b`` (its pruned deep copy) are equal."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, nn.Module):
        return True  # submodules are compared as modules of the tree
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, _PLAIN):
        return bool(a == b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, depth) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], depth) for k in a)
    if isinstance(a, types.MethodType):  # deep copies bind to the copied object
        return a.__func__ is b.__func__ and type(a.__self__) is type(b.__self__)
    if depth < 2 and hasattr(a, "__dict__") and not isinstance(a, type):
        return _same(vars(a), vars(b), depth + 1)
    try:
        return bool(a == b)
    except Exception:
        return False


def _diff_vars(
    module: str,
    path: list[str],
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    changes: list[dict[str, Any]],
    problems: list[str],
    helpers: set[int],
) -> None:
    for key in sorted(old.keys() | new.keys()):
        if not path and key in _MODULE_INTERNALS:
            continue
        attr, where = [*path, key], ".".join([module or "<model>", *path, key])
        if key not in new:
            changes.append({"module": module, "attr": attr, "delete": True})
            continue
        v = new[key]
        if key in old and _same(old[key], v):
            continue
        if "hook" in key and isinstance(v, dict):
            problems.append(f"{where}: hooks were added or removed")
            continue
        try:
            changes.append({"module": module, "attr": attr, "value": encode_value(v)})
            continue
        except TypeError:
            pass
        o = old.get(key)
        if not path and type(o) is type(v) and hasattr(v, "__dict__") and not isinstance(v, (Tensor, nn.Module, type)):
            if id(v) not in helpers:  # a helper object shared by several modules (a config): its fields, once
                helpers.add(id(v))
                _diff_vars(module, attr, vars(o), vars(v), changes, problems, helpers)
            continue
        problems.append(f"{where}: a changed {type(v).__qualname__}, which JSON cannot express")


def attribute_changes(dense: nn.Module, pruned: nn.Module) -> tuple[list[dict[str, Any]], list[str]]:
    """The attributes of ``pruned``'s modules (and of helper objects they hold, such as a Hugging Face config) that
    differ from ``dense``'s, as ``{"module", "attr": [name, ...], "value" | "delete"}``, and the changes JSON cannot
    express (empty when the pruned model can be transported)."""
    dmods = dict(dense.named_modules(remove_duplicate=False))
    pmods = dict(pruned.named_modules(remove_duplicate=False))
    if dmods.keys() != pmods.keys() or any(type(dmods[n]) is not type(m) for n, m in pmods.items()):
        return [], ["the module tree changed (modules added, removed or replaced)"]
    changes: list[dict[str, Any]] = []
    problems: list[str] = []
    helpers: set[int] = set()
    for name, m in pmods.items():
        _diff_vars(name, [], vars(dmods[name]), vars(m), changes, problems, helpers)
    return changes, problems


def apply_changes(model: nn.Module, changes: list[dict[str, Any]]) -> None:
    mods = dict(model.named_modules(remove_duplicate=False))
    for c in changes:
        obj: Any = mods[c["module"]]
        for a in c["attr"][:-1]:
            obj = getattr(obj, a)
        if c.get("delete"):
            delattr(obj, c["attr"][-1])
        else:
            setattr(obj, c["attr"][-1], decode_value(c["value"]))


def tensor_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Parameters and buffers by identity: ``{"kind", "names", "requires_grad", "tensor"}``, tied names together."""
    groups: dict[int, dict[str, Any]] = {}
    for kind, named in (
        ("parameter", model.named_parameters(remove_duplicate=False)),
        ("buffer", model.named_buffers(remove_duplicate=False)),
    ):
        for name, t in named:
            g = groups.setdefault(id(t), {"kind": kind, "names": [], "requires_grad": t.requires_grad, "tensor": t})
            g["names"].append(name)
    return list(groups.values())


def save_pruned(model: nn.Module, dense: nn.Module, output: Tensor, spec: Mapping[str, Any], out_dir: Path, tag: str) -> Path:
    """Write ``TAG.safetensors``, ``TAG.out.safetensors`` and the manifest ``TAG.json`` (returned); raises
    :class:`TransportError` when an attribute change cannot be expressed in JSON."""
    changes, problems = attribute_changes(dense, model)
    if problems:
        raise TransportError(f"not transportable without serializing objects: {'; '.join(problems)[:250]}")
    groups = tensor_groups(model)
    storage = Counter(g["tensor"].untyped_storage().data_ptr() for g in groups)
    tensors: dict[str, Tensor] = {}
    notes: list[str] = []
    for g in groups:
        t = g["tensor"].detach()
        if storage[t.untyped_storage().data_ptr()] > 1 or not t.is_contiguous():
            if t.numel() and storage[t.untyped_storage().data_ptr()] > 1:
                notes.append(f"{g['names'][0]} shared storage with another tensor; restored as a separate tensor")
            t = t.clone(memory_format=torch.contiguous_format)
        tensors[g["names"][0]] = t
    save_file(tensors, str(out_dir / f"{tag}.safetensors"))
    save_file({"output": output.detach().contiguous()}, str(out_dir / f"{tag}.out.safetensors"))
    manifest = {
        "model": spec["model"],
        "quick": bool(spec["quick"]),
        "seed": int(spec["seed"]),
        "tensors": f"{tag}.safetensors",
        "output": f"{tag}.out.safetensors",
        "groups": [{k: g[k] for k in ("kind", "names", "requires_grad")} for g in groups],
        "attributes": changes,
        "notes": notes,
    }
    path = out_dir / f"{tag}.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def load_pruned(res: dict[str, Any]) -> tuple[nn.Module, float]:
    """The pruned model of a successful task and the largest absolute difference between its output on the example
    and the worker's: the dense model rebuilt by name, the saved tensors put in (tied names share one
    ``nn.Parameter`` again), the recorded attributes set. Raises :class:`TransportError` if the names do not match
    or the outputs differ beyond float tolerance."""
    path = Path(res["file"])
    man = json.loads(path.read_text())
    model, example = build_dense(man)
    saved = {n for g in man["groups"] for n in g["names"]}
    have = {n for n, _ in model_tensors(model)}
    if saved != have:
        odd = sorted(saved ^ have)
        raise TransportError(f"saved tensors do not match the rebuilt model's: {', '.join(odd[:4])} ({len(odd)} names)")
    tensors = load_file(str(path.parent / man["tensors"]))
    mods = dict(model.named_modules(remove_duplicate=False))
    for g in man["groups"]:
        t = tensors[g["names"][0]]
        value = nn.Parameter(t, requires_grad=g["requires_grad"]) if g["kind"] == "parameter" else t
        for name in g["names"]:
            owner, _, leaf = name.rpartition(".")
            setattr(mods[owner], leaf, value)
    apply_changes(model, man["attributes"])
    model.eval()
    ref = load_file(str(path.parent / man["output"]))["output"]
    with torch.no_grad():
        out = SM.output_tensor(SM.call(model, example))
    if out.shape != ref.shape:
        raise TransportError(f"rebuilt model's output has shape {list(out.shape)}, the worker's {list(ref.shape)}")
    if not torch.equal(out.isnan(), ref.isnan()):
        raise TransportError("rebuilt model's output has NaNs where the worker's has none, or the other way round")
    diff = float((out.double() - ref.double()).abs().nan_to_num(0.0).max()) if out.numel() else 0.0
    tol = 1e-5 * max(1.0, float(ref.double().abs().nan_to_num(0.0).max())) if ref.numel() else 0.0
    if diff > tol:
        raise TransportError(f"rebuilt model's output differs from the worker's by {diff:.3g} (tolerance {tol:.3g})")
    return model, diff


# -- worker side ------------------------------------------------------------------------------------------------


def _logits_sum(out: Any) -> torch.Tensor:
    t = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if t is None:
        t = out[0]
    return t.sum()


def _fix_attention(model: nn.Module, job: Job, pruner: Any) -> None:
    """Head-count attributes after pruning, as Torch-Pruning's examples set them (``pruner.num_heads``)."""
    mods = dict(model.named_modules())
    for a in job["attention"]:
        m = mods[a["module"]]
        q = mods[f"{a['module']}.{a.get('q') or a['qkv']}"]
        nh = int(pruner.num_heads.get(q, a["num_heads"]))
        width = q.out_features if isinstance(q, nn.Linear) else int(q.weight.shape[1]) // 3
        nkv = nh
        if a.get("k"):
            nkv = int(pruner.num_heads.get(mods[f"{a['module']}.{a['k']}"], a["num_kv_heads"]))
        for attr in ("num_attention_heads", "num_heads", "n_head"):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, nh)
        for attr in ("attention_head_size", "head_dim"):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, width // nh)
        if isinstance(getattr(m, "all_head_size", None), int):
            m.all_head_size = width
        if isinstance(getattr(m, "split_size", None), int):
            m.split_size = width
        if isinstance(getattr(m, "num_key_value_heads", None), int):
            m.num_key_value_heads = nkv
        if isinstance(getattr(m, "num_key_value_groups", None), int):
            m.num_key_value_groups = nh // nkv
        if isinstance(getattr(m, "embed_dim", None), int) and a.get("q"):
            m.embed_dim = width


def retie_like(base: nn.Module, model: nn.Module) -> list[str]:
    """Share again, in the pruned copy ``model``, every parameter that is tied in ``base`` and whose owners in
    ``model`` now hold equal separate copies; returns the re-tied paths (none if any tie's copies differ)."""
    mods = dict(model.named_modules(remove_duplicate=False))
    ties = [[(fqn, mods[fqn], name) for fqn, _, name in owners] for owners in tied_parameters(base)]
    try:
        return retie_(ties)
    except StructureError:
        return []


def prune_once(base: nn.Module, example: Any, job: Job, ratio: float) -> tuple[nn.Module, float]:
    """A pruned copy of ``base`` at ``ratio`` and the seconds Torch-Pruning took (pruner + step + attribute fix)."""
    import torch_pruning as tp

    model = copy.deepcopy(base)
    mods = dict(model.named_modules())
    kwargs: dict[str, Any] = {}
    heads: dict[nn.Module, int] = {}
    for a in job["attention"]:
        if a.get("qkv"):
            heads[mods[f"{a['module']}.{a['qkv']}"]] = a["num_heads"]
            continue
        heads[mods[f"{a['module']}.{a['q']}"]] = a["num_heads"]
        heads[mods[f"{a['module']}.{a['k']}"]] = a["num_kv_heads"]
        heads[mods[f"{a['module']}.{a['v']}"]] = a["num_kv_heads"]
    if heads:
        kwargs["num_heads"] = heads
    if job["recipe"] == "llm":
        model.config.use_cache = False  # type: ignore[union-attr]
        kwargs.update(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)
    elif job["hf"]:
        kwargs["output_transform"] = _logits_sum
    t0 = time.perf_counter()
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[mods[f] for f in job["ignored"]],
        **kwargs,
    )
    pruner.step()
    _fix_attention(model, job, pruner)
    seconds = time.perf_counter() - t0
    retie_like(base, model)
    return model.eval(), seconds


def _check_forward(model: nn.Module, example: Any, shape: list[int]) -> Tensor:
    """The model's output tensor on ``example``; raises if it does not have the dense model's shape."""
    with torch.no_grad():
        t = SM.output_tensor(SM.call(model, example))
    if list(t.shape) != shape:
        raise RuntimeError(f"pruned model's output has shape {list(t.shape)}, expected {shape}")
    return t


def run_task(base: nn.Module, example: Any, job: Job, task: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"tag": task["tag"], "ok": False}
    try:
        if "ratio" in task:
            model, secs = prune_once(base, example, job, float(task["ratio"]))
            res.update(ratio=float(task["ratio"]), prune_s=secs, tries=1)
        else:
            target, tol = int(task["match_params"]), float(job.get("tolerance", 0.02))
            best: dict[str, Any] = {}  # only the closest pruned model is kept (a few copies of GPT-2 add up)
            errors: list[str] = []

            def g(r: float) -> float:
                try:
                    m, s = prune_once(base, example, job, r)
                    _check_forward(m, example, job["out_shape"])
                except Exception as e:
                    errors.append(f"ratio {r:.3f}: {first_line(e)}")
                    raise
                v = target / count_params(m) - 1.0  # increasing in r: fewer parameters left
                if not best or abs(v) < abs(best["v"]):
                    best.update(v=v, r=r, model=m, secs=s)
                return v

            g0 = target / count_params(base) - 1.0
            hi, start, iters = float(job.get("max_ratio", 0.95)), float(task.get("start", 0.5)), int(job.get("max_iters", 8))
            seen = solve_increasing(g, 0.0, hi, g0, start, tol, iters)
            model = best["model"]
            res.update(ratio=best["r"], prune_s=best["secs"], tries=len(seen) + len(errors), target_params=target,
                       failed_ratios=errors)  # fmt: skip
        res["params"] = count_params(model)
        res["tied"] = [g["names"] for g in tensor_groups(model) if g["kind"] == "parameter" and len(g["names"]) > 1]
        res["removed_nothing"] = res["params"] == count_params(base)
        output = _check_forward(model, example, job["out_shape"])
        path = save_pruned(model, base, output, job, out_dir, task["tag"])
        res.update(ok=True, file=str(path))
    except Exception as e:  # the peer's failure is a result, not a crash of the benchmark
        res["error"] = first_line(e)
    return res


def worker(job_path: Path) -> None:
    job: Job = json.loads(job_path.read_text())
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    out_dir = Path(job["out_dir"])
    base, example = build_dense(job)
    for what, got, want in (
        ("dense model", tensor_digest(model_tensors(base)), job["dense_sha256"]),
        ("example input", tensor_digest(example_items(example)), job["example_sha256"]),
    ):
        if got != want:
            raise RuntimeError(
                f"the worker's rebuilt {what} of {job['model']!r} (quick={job['quick']}, seed={job['seed']}) is not "
                f"bit-identical to the parent's (sha256 {got[:12]} vs {want[:12]}): rebuilding is not deterministic"
            )
    results: list[dict[str, Any]] = []
    for task in job["tasks"]:
        results.append(run_task(base, example, job, task, out_dir))
        tmp = out_dir / "results.json.tmp"
        tmp.write_text(json.dumps(results))
        os.replace(tmp, out_dir / "results.json")


# -- parent side ------------------------------------------------------------------------------------------------


def run_job(model: nn.Module, example: Any, job: Job, scratch: Path, timeout: float) -> tuple[list[dict[str, Any]], str | None]:
    """Run ``job`` in a fresh Python process; returns (task results, job-level error such as a timeout).

    ``job`` names the benchmark model (``model``, ``quick``, ``seed``: :func:`build_dense`); ``model`` and
    ``example`` are the parent's own, whose digests the worker checks its rebuilt ones against."""
    missing = {"model", "quick", "seed"} - job.keys()
    if missing:
        raise ValueError(f"the job must name the benchmark model; missing: {', '.join(sorted(missing))}")
    scratch.mkdir(parents=True, exist_ok=True)
    job = dict(
        job,
        out_dir=str(scratch),
        dense_sha256=tensor_digest(model_tensors(model)),
        example_sha256=tensor_digest(example_items(example)),
    )
    (scratch / "results.json").unlink(missing_ok=True)
    job_file = scratch / "job.json"
    job_file.write_text(json.dumps(job))
    err: str | None = None
    with open(scratch / "stderr.txt", "w") as errf:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(job_file)],
            stdout=subprocess.DEVNULL,
            stderr=errf,
            start_new_session=True,  # its own process group: a timeout ends the worker and anything it started
        )
        try:
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                lines = [ln for ln in (scratch / "stderr.txt").read_text(errors="replace").splitlines() if ln.strip()]
                err = f"worker exited with code {rc}: {lines[-1][:300] if lines else ''}"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err = f"timeout after {timeout:.0f} s (killed)"
    path = scratch / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    return results, err


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def version() -> str:
    try:
        import torch_pruning as tp

        return str(tp.__version__)
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Torch-Pruning worker of benchmarks/structure_coverage.py")
    ap.add_argument("job", type=Path)
    worker(ap.parse_args().job)
