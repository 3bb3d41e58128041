"""Slim models on disk without pickle: the original architecture, the plan that slims it, and the slim weights.

A slim checkpoint is an ordinary prunekit checkpoint directory (:mod:`prunekit.checkpoint`) with one more file::

    model.safetensors   the slim model's state_dict
    plan.json           the PrunePlan that turns the original architecture into the slim one
    prunekit.json       "model": how to build the original architecture, "plan": "plan.json"
    config.json         Hugging Face models only: the original model's config

The model spec is either a prunekit registry entry ``{"name": "resnet20", "kwargs": {...}}`` (as every prunekit
checkpoint records it) or ``{"huggingface": "<model class>", "config": "config.json"}``. Loading builds the
original architecture (``build_model(spec)``, or the ``transformers`` class from ``config.json``: widths may be
non-uniform because the plan, not the config, sets them), applies the plan, then loads the weights strictly, so
:func:`prunekit.checkpoint.load_checkpoint` and ``prunekit prune --model`` read slim checkpoints like any other.
Writes are atomic (the whole directory appears at once); nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.checkpoint import META, PLAN, load_checkpoint, read_meta, save_checkpoint
from prunekit.errors import CheckpointError, ModelLoadError
from prunekit.structure.handlers import sync_attention_attributes_
from prunekit.structure.plan import PlanEntry, PlanError, PrunePlan, apply_plan_

log = logging.getLogger(__name__)

HF_KEY = "huggingface"
HF_CONFIG = "config.json"


def is_huggingface(model: nn.Module) -> bool:
    """A ``transformers`` model: it carries a config that serialises itself and a ``save_pretrained``."""
    return hasattr(getattr(model, "config", None), "to_json_string") and hasattr(model, "save_pretrained")


def is_huggingface_spec(spec: object) -> bool:
    return isinstance(spec, Mapping) and HF_KEY in spec


def model_source(model: nn.Module, model_spec: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """``(model spec, side files)`` that rebuild ``model``'s original architecture.

    A given ``model_spec`` (prunekit registry name + kwargs) wins; otherwise a Hugging Face model is described by
    its class name and its config (the config is never changed by a plan, so it describes the original widths).
    """
    if model_spec is not None:
        if not isinstance(model_spec, Mapping) or ("name" not in model_spec and HF_KEY not in model_spec):
            raise CheckpointError(f"model_spec must be {{'name': <registered model>, 'kwargs': {{...}}}}, got {model_spec!r}")
        return dict(model_spec), {}
    if is_huggingface(model):
        config = model.config
        text = config.to_json_string(use_diff=False)  # type: ignore[union-attr,operator]
        return {HF_KEY: type(model).__name__, "config": HF_CONFIG}, {HF_CONFIG: text}
    raise CheckpointError(
        f"cannot record how to build {type(model).__name__}: pass model_spec={{'name': <registered model>, 'kwargs': {{...}}}} "
        "(prunekit zoo) or use a Hugging Face model"
    )


def build_huggingface(path: str | Path, spec: Mapping[str, Any]) -> nn.Module:
    """The original Hugging Face architecture from ``<path>/config.json`` and the class named in ``spec``."""
    path = Path(path)
    name = spec.get(HF_KEY)
    if spec.get("config") != HF_CONFIG:
        raise CheckpointError(f"{path / META}: model.config must be {HF_CONFIG!r}, got {spec.get('config')!r}")
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(f"{path} holds a Hugging Face model; install the extra: pip install 'prunekit[hf]'") from None
    cls = getattr(transformers, str(name), None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise CheckpointError(
            f"{path / META}: model.{HF_KEY} {name!r} is not a model class of transformers {transformers.__version__}"
        )
    cfg_path = path / HF_CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"missing {cfg_path}")
    try:
        cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{cfg_path}: not a usable Hugging Face config ({str(e).splitlines()[0]})") from None
    model: nn.Module = cls(cfg)
    return model.eval()


def build_from_spec(path: str | Path, spec: Any) -> nn.Module:
    """Build the architecture a checkpoint's model spec describes (prunekit registry or Hugging Face)."""
    if is_huggingface_spec(spec):
        return build_huggingface(path, spec)
    from prunekit.models import build_model

    return build_model(spec)


def apply_stored_plan_(model: nn.Module, plan: PrunePlan, where: str | Path) -> nn.Module:
    """Apply a plan read from ``where`` (a plan that does not fit the model names the file), then set the head counts
    attention modules keep as attributes (:func:`~prunekit.structure.handlers.sync_attention_attributes_`)."""
    try:
        apply_plan_(model, plan)
    except PlanError as e:
        raise PlanError(f"{where}: {e}") from None
    sync_attention_attributes_(model)
    return model


def compose_plans(first: PrunePlan, second: PrunePlan) -> PrunePlan:
    """The single plan equal to applying ``first`` and then ``second`` (whose sizes are ``first``'s kept counts).

    For a (module, axis) in both: ``kept = first.kept[second.kept]`` over ``first``'s size. Other plan fields (lists
    of modules, e.g. blocks removed whole) are concatenated; ``first``'s unit entries inside a block that ``second``
    removes whole are dropped.
    """
    removed_blocks = [str(d.module) for d in getattr(second, "depth", ())]

    def gone(fqn: str) -> bool:
        return any(fqn == b or fqn.startswith(b + ".") for b in removed_blocks)

    by_key = {(e.module, e.axis): e for e in first.entries if not gone(e.module)}
    later = {(e.module, e.axis): e for e in second.entries}
    out: list[PlanEntry] = []
    for key, e in by_key.items():
        s = later.get(key)
        if s is None:
            out.append(e)
            continue
        if s.size != len(e.kept):
            raise PlanError(f"{e.module}.{e.axis}: the second plan expects {s.size} units, the first keeps {len(e.kept)}")
        out.append(PlanEntry(e.module, e.axis, e.size, tuple(e.kept[i] for i in s.kept)))
    out += [s for key, s in later.items() if key not in by_key]
    merged: dict[str, Any] = {}
    for f in dataclasses.fields(PrunePlan):
        if f.name != "entries":
            a, b = tuple(getattr(first, f.name)), tuple(getattr(second, f.name))
            merged[f.name] = tuple(x for x in a if not gone(str(getattr(x, "module", x)))) + tuple(x for x in b if x not in a)
    return dataclasses.replace(first, entries=tuple(out), **merged)


def _check_fits(model: nn.Module, spec: Mapping[str, Any], plan: PrunePlan) -> None:
    """Rehearse the load on the meta device: the original architecture with the plan applied must have exactly
    ``model``'s state_dict keys and shapes (caught at save time, not when someone loads the checkpoint)."""
    if is_huggingface_spec(spec):
        return  # building a transformers model on the meta device is not reliable across versions
    from prunekit.models import build_model

    try:
        with torch.device("meta"):
            ref = build_model(dict(spec))
    except Exception as e:  # a builder that cannot run on the meta device: skip the rehearsal, loading still checks
        log.debug("cannot build %s on the meta device (%s); not checking the plan at save time", spec.get("name"), e)
        return
    apply_stored_plan_(ref, plan, "plan")
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # keys the model lacks (a masked weight in reparam mode is stored under another name) are left to the strict load
    diff = [(k, tuple(v.shape), have[k]) for k, v in ref.state_dict().items() if k in have and have[k] != tuple(v.shape)]
    if diff:
        raise PlanError(
            f"the plan applied to {spec.get('name')!r} does not give the model being saved; "
            f"(tensor, planned shape, model shape): {diff[:3]}"
        )


def save_slim(
    path: str | Path,
    model: nn.Module,
    plan: PrunePlan,
    *,
    model_spec: Mapping[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the slim ``model`` (``plan`` applied to the architecture ``model_spec`` builds) to the new directory
    ``path``, atomically. Hugging Face models need no spec. ``files``: extra text files (e.g. reports)."""
    spec, side = model_source(model, model_spec)
    _check_fits(model, spec, plan)
    return save_checkpoint(
        path, model, model_spec=spec, recipe=recipe, extra=extra, plan=plan, files={**side, **(files or {})}, overwrite=overwrite
    )


def load_slim(path: str | Path) -> nn.Module:
    """Rebuild the original architecture, apply ``plan.json``, load the weights strictly."""
    meta = read_meta(path)
    if meta.get("plan") != PLAN:
        log.info("%s has no %s; loading it as an ordinary checkpoint", path, PLAN)
    return load_checkpoint(path).model


def carried_files(path: str | Path, meta: Mapping[str, Any]) -> dict[str, str]:
    """Side files a checkpoint's model spec refers to (a Hugging Face ``config.json``), to copy into a new
    checkpoint that keeps the spec."""
    spec = meta.get("model")
    if not is_huggingface_spec(spec):
        return {}
    p = Path(path) / HF_CONFIG
    try:
        text = p.read_text(encoding="utf-8")
        json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: unreadable Hugging Face config ({e})") from None
    return {HF_CONFIG: text}
