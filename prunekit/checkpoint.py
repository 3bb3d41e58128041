"""Checkpoints without pickle: tensors in safetensors, metadata in JSON, written atomically.

Layout of a checkpoint directory::

    model.safetensors      model state_dict, masks included (shared tensors stored once)
    optimizer.safetensors  optimizer state tensors (optional)
    prunekit.json          format, versions, model spec, recipe, pruner state, mask modes, aliases, extra
    plan.json              structured removals applied after building the model (optional; slim models)
    <side files>           e.g. a Hugging Face ``config.json`` the model spec refers to (optional)

A slim (physically pruned) model is stored as the *original* architecture's spec plus ``plan.json``: loading
rebuilds the original, applies the plan (:func:`prunekit.structure.plan.apply_plan_`), then loads the weights
strictly (see :mod:`prunekit.structure.persist`).

A checkpoint is written to a temporary sibling directory and renamed into place, so a crash never leaves a
half-written checkpoint, and an existing directory is only replaced when ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from prunekit import masks as M
from prunekit.errors import CheckpointError

if TYPE_CHECKING:
    from prunekit.structure.plan import PrunePlan

FORMAT = "prunekit-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
OPTIM = "optimizer.safetensors"
META = "prunekit.json"
PLAN = "plan.json"
_RESERVED = (WEIGHTS, OPTIM, META, PLAN)


def _dedupe(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Store tensors that share memory (tied weights) once; return the aliases to restore them."""
    seen: dict[tuple[Any, ...], str] = {}
    out: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for k, v in sd.items():
        v = v.detach()
        sig = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() and sig in seen:
            aliases[k] = seen[sig]
            continue
        seen[sig] = k
        out[k] = v.contiguous().cpu().clone() if v.numel() else v.contiguous().cpu()
    return out, aliases


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str), encoding="utf-8")


def _versions() -> dict[str, str]:
    from prunekit import __version__

    return {"prunekit": __version__, "torch": torch.__version__}


def atomic_dir(path: Path, overwrite: bool) -> tuple[Path, Any]:
    """A fresh temporary directory beside ``path`` and a ``commit()`` that moves it into place."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; choose a new output directory (or pass overwrite=True)")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))

    def commit() -> None:
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    return tmp, commit


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_spec: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    pruner_state: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    plan: PrunePlan | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` (with its masks) and optional metadata to the directory ``path``, atomically.

    ``plan``: the structured removals that turn the architecture ``model_spec`` builds into ``model`` (written to
    ``plan.json`` and re-applied on load). ``files``: extra text files (name -> content) written in the same
    atomic step, e.g. a Hugging Face ``config.json`` or a report.
    """
    path = Path(path)
    for name in files or {}:
        if name in _RESERVED or Path(name).name != name or name.startswith("."):
            raise CheckpointError(
                f"{path}: cannot write side file {name!r} (a plain file name other than {', '.join(_RESERVED)})"
            )
    tmp, commit = atomic_dir(path, overwrite)
    try:
        tensors, aliases = _dedupe(model.state_dict())
        save_file(tensors, str(tmp / WEIGHTS))
        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "versions": _versions(),
            "model": model_spec,
            "recipe": recipe,
            "pruner": pruner_state,
            "masks": {mp.key: M.mask_mode(mp.module, mp.name) for mp in M.masked_params(model)},
            "aliases": aliases,
            "extra": extra or {},
        }
        if plan is not None:
            (tmp / PLAN).write_text(plan.to_json(indent=1) + "\n", encoding="utf-8")
            meta["plan"] = PLAN
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if optimizer is not None:
            osd = optimizer.state_dict()
            otensors: dict[str, Tensor] = {}
            scalars: dict[str, dict[str, Any]] = {}
            for idx, st in osd["state"].items():
                for k, v in st.items():
                    if isinstance(v, Tensor):
                        otensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
                    else:
                        scalars.setdefault(str(idx), {})[k] = v
            save_file(otensors, str(tmp / OPTIM))
            meta["optimizer"] = {"param_groups": osd["param_groups"], "scalars": scalars}
        _write_json(tmp / META, meta)
        commit()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@dataclass
class Checkpoint:
    model: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / META
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a prunekit checkpoint (no {META})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: unreadable metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a prunekit checkpoint (format field missing)")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: format version {meta['format_version']} is newer than this prunekit reads ({FORMAT_VERSION})"
        )
    return meta


def _load_tensors(p: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(p))
    except FileNotFoundError:
        raise CheckpointError(f"missing {p}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a valid safetensors file ({e})") from None


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    strict: bool = True,
) -> Checkpoint:
    """Load a checkpoint into ``model`` (or rebuild it from the stored model spec). Never unpickles.

    Masks found in the file are attached (with their stored mode) before the weights are loaded, so a plain,
    freshly built model comes back masked exactly as it was saved. A checkpoint with a ``plan.json`` (a slim
    model) applies the plan first, to the rebuilt model or to ``model``, which must then be the original
    architecture.
    """
    path = Path(path)
    meta = read_meta(path)
    if model is None:
        if not meta.get("model"):
            raise CheckpointError(f"{path}: no model spec stored; pass the model to load into")
        from prunekit.structure.persist import build_from_spec

        model = build_from_spec(path, meta["model"])
    plan = read_plan(path, meta)
    if plan is not None:
        from prunekit.structure.persist import apply_stored_plan_

        apply_stored_plan_(model, plan, path / PLAN)
    sd = _load_tensors(path / WEIGHTS)
    for alias, src in meta.get("aliases", {}).items():
        sd[alias] = sd[src]
    M.restore_masks_(model, sd, meta.get("masks") or {})
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {str(e).splitlines()[0]}") from None
    if optimizer is not None:
        load_optimizer_state(path, optimizer, meta)
    return Checkpoint(model, meta)


def read_plan(path: str | Path, meta: Mapping[str, Any] | None = None) -> PrunePlan | None:
    """The structured plan stored in checkpoint ``path`` (None for an ordinary checkpoint)."""
    path = Path(path)
    meta = meta if meta is not None else read_meta(path)
    name = meta.get("plan")
    if name is None:
        return None
    if name != PLAN:
        raise CheckpointError(f"{path / META}: 'plan' must be {PLAN!r}, got {name!r}")
    from prunekit.structure.plan import PlanError, PrunePlan

    p = path / PLAN
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read the structured plan ({e.strerror or e})") from None
    try:
        return PrunePlan.from_json(text)
    except PlanError as e:
        raise PlanError(f"{p}: {e}") from None


def load_optimizer_state(path: str | Path, optimizer: torch.optim.Optimizer, meta: dict[str, Any] | None = None) -> None:
    """Restore optimizer state saved by :func:`save_checkpoint`.

    In reparam mode the trainable tensors are the parametrizations' ``original``s, so build the optimizer after
    the masks are attached (after :func:`load_checkpoint`) and then call this.
    """
    path = Path(path)
    meta = meta if meta is not None else read_meta(path)
    if "optimizer" not in meta:
        raise CheckpointError(f"{path}: no optimizer state stored")
    state: dict[int, dict[str, Any]] = {}
    for k, v in _load_tensors(path / OPTIM).items():
        idx, _, name = k.partition(".")
        state.setdefault(int(idx), {})[name] = v
    for idx, sc in meta["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(sc)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this optimizer ({e})") from None
