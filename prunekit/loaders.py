"""Turn a model path into a model, and write a pruned model back in the same family of format.

Supported inputs: a prunekit checkpoint directory (``prunekit.json``), a Hugging Face model directory
(``config.json`` + safetensors weights; needs the ``transformers`` extra), and a ``torch.export`` program
(``.pt2``). Nothing is unpickled: ``.pt2`` archives that would need pickle are refused.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from prunekit import masks as M
from prunekit.checkpoint import META, atomic_dir, load_checkpoint, read_plan, save_checkpoint
from prunekit.errors import ModelLoadError

Kind = Literal["prunekit", "huggingface", "export"]


@dataclass
class LoadedModel:
    kind: Kind
    model: nn.Module
    path: Path
    example: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    target_modules: tuple[str, ...] | None = None  # for export programs: fqns of modules owning linear/conv weights


def detect(path: Path) -> Kind:
    if path.is_dir() and (path / META).exists():
        return "prunekit"
    if path.is_dir() and (path / "config.json").exists():
        return "huggingface"
    if path.is_file() and path.suffix == ".pt2":
        return "export"
    if not path.exists():
        raise ModelLoadError(f"--model {path}: no such file or directory")
    raise ModelLoadError(
        f"--model {path}: not a recognised model; expected a prunekit checkpoint directory (with {META}), "
        "a Hugging Face model directory (with config.json) or a torch.export program (.pt2)"
    )


def _check_pt2_without_pickle(path: Path) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"{path}: not a torch.export archive ({e})") from None
    with zf:
        for name in zf.namelist():
            if name.endswith(("weights_config.json", "constants_config.json")):
                cfg = json.loads(zf.read(name)).get("config", {})
                if any(isinstance(v, dict) and v.get("use_pickle") for v in cfg.values()):
                    raise ModelLoadError(f"{path}: {name} stores pickled tensors; prunekit never unpickles")
            if "/sample_inputs/" in name:
                import io

                try:
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                except Exception:
                    raise ModelLoadError(f"{path}: sample inputs need pickle to load; prunekit never unpickles") from None


def _export_weight_owners(ep: Any) -> tuple[str, ...]:
    """Module fqns whose ``weight`` feeds an aten linear/conv op in the exported graph."""
    params = ep.graph_signature.inputs_to_parameters
    owners = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and any(
            k in str(node.target) for k in ("aten.linear", "aten.conv", "aten.addmm", "aten.mm")
        ):
            for a in node.args:
                fqn = params.get(getattr(a, "name", ""), "")
                if fqn.endswith(".weight"):
                    owners.append(fqn[: -len(".weight")])
    return tuple(dict.fromkeys(owners))


def _hf_example(cfg: Any) -> Any:
    return {"input_ids": torch.ones(1, 8, dtype=torch.long)} if hasattr(cfg, "vocab_size") else None


def check_output_path(loaded: LoadedModel, out: str | Path) -> None:
    """Refuse an output directory that is the input or lies inside it."""
    out = Path(out)
    if out.resolve() == loaded.path.resolve() or loaded.path.resolve() in out.resolve().parents:
        raise ModelLoadError(f"--out {out} would write inside the input {loaded.path}; choose another directory")


def load_model(path: str | Path) -> LoadedModel:
    p = Path(path)
    kind = detect(p)
    if kind == "prunekit":
        ck = load_checkpoint(p)
        shape = (ck.meta.get("extra") or {}).get("input_shape")
        example = torch.zeros(*shape) if shape else None
        if example is None and isinstance(ck.meta.get("model"), dict) and "huggingface" in ck.meta["model"]:
            example = _hf_example(ck.model.config)
        return LoadedModel(kind, ck.model, p, example, ck.meta)
    if kind == "huggingface":
        try:
            import transformers
        except ImportError:
            raise ModelLoadError(f"{p} is a Hugging Face model; install the extra: pip install 'prunekit[hf]'") from None
        cfg = transformers.AutoConfig.from_pretrained(p, local_files_only=True)
        arch = (cfg.architectures or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModel
        model = cls.from_pretrained(p, local_files_only=True)
        model.eval()
        return LoadedModel(kind, model, p, _hf_example(cfg), {"architecture": arch})
    _check_pt2_without_pickle(p)
    ep = torch.export.load(str(p))
    args, kwargs = ep.example_inputs or ((), {})
    gm = ep.module()
    return LoadedModel(
        kind, gm, p, tuple(args) if not kwargs else None, {"example_inputs": ep.example_inputs}, _export_weight_owners(ep)
    )


def save_pruned(
    loaded: LoadedModel, out: str | Path, *, recipe: dict[str, Any], report: dict[str, Any], pruner_state: dict[str, Any]
) -> Path:
    """Write the pruned model into the new directory ``out`` (never over the input), in the input's format family.

    prunekit checkpoints keep their masks; Hugging Face and export outputs have masks baked into the weights
    and the masks saved beside them in ``masks.safetensors``.
    """
    out = Path(out)
    check_output_path(loaded, out)
    if loaded.kind == "prunekit":
        from prunekit.structure.persist import carried_files

        extra = dict(loaded.meta.get("extra") or {})
        extra["report"] = report
        return save_checkpoint(  # a slim input keeps its plan and side files (the masks are on the slim model)
            out,
            loaded.model,
            model_spec=loaded.meta.get("model"),
            recipe=recipe,
            pruner_state=pruner_state,
            extra=extra,
            plan=read_plan(loaded.path, loaded.meta),
            files=carried_files(loaded.path, loaded.meta),
        )
    tmp, commit = atomic_dir(out, overwrite=False)
    try:
        masks = {k: v.contiguous().cpu() for k, v in M.masks_of(loaded.model).items()}
        M.finalize_(loaded.model)
        save_file(masks, str(tmp / "masks.safetensors"))
        if loaded.kind == "huggingface":
            loaded.model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
            for f in loaded.path.iterdir():  # tokenizer and other side files
                if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt", ".pth")) and not (tmp / f.name).exists():
                    shutil.copy2(f, tmp / f.name)
        else:
            args, kwargs = loaded.meta["example_inputs"]
            ep = torch.export.export(loaded.model, tuple(args), kwargs)
            torch.export.save(ep, str(tmp / "model.pt2"))
        (tmp / "prunekit_report.json").write_text(json.dumps({"recipe": recipe, "report": report}, indent=2), encoding="utf-8")
        commit()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
