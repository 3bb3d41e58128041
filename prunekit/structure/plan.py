"""``PrunePlan``: a JSON-serialisable, replayable list of removals, and :func:`apply_plan_`, the only mutation.

Three kinds of entries, all replayed on a freshly built model by :func:`apply_plan_`:

* **unit entries** (:class:`PlanEntry`), one per (module, axis), not per tensor: "module ``fqn`` had ``size`` units
  on its ``out`` (or ``in``) axis and keeps ``kept``". The module's handler (:mod:`prunekit.structure.handlers`)
  maps that to every tensor it touches (weight dim 0 or 1, bias, BatchNorm running stats, grouped-conv per-group
  columns) and to the module attributes. A per-tensor plan could leave a module half-pruned (weight sliced, bias
  not, ``out_features`` stale); :meth:`PrunePlan.tensor_view` lists the per-tensor effect for inspection.
  The one exception: an entry whose ``module`` is the path of a parameter or buffer used outside any handled module
  (a layer scale, a class token, position embeddings, a fused expert weight: ``param`` members of a group) slices
  that tensor alone, along the *last* dim of size ``size`` (:func:`~prunekit.structure.handlers.tensor_dim`; the
  dependency graph only plans such entries when that is the dim it couples), so the JSON needs no other field.
  Its axis is ``out``, or ``in`` for the input columns of a tensor used as a functional linear map's weight
  (Mixtral's ``down_proj`` (E, H, I): ``in`` of size I slices dim 2, ``out`` of size H dim 1); a tensor may have an
  entry on each axis. Both dims are resolved on the tensor's shape before anything is sliced.
* **bias entries** (``add_bias``): the module (a ``Linear`` or convolution built with ``bias=False``) gets a zero
  bias parameter before its units are removed. Folding a removed unit's constant output into a consumer that has no
  bias (:func:`prunekit.structure.folding.fold_removed_`) creates that parameter on the live model; recording it here
  lets a fresh model grow the same parameter, so the slim ``state_dict`` loads into it. A module that already has
  a bias is left alone (the folded model has it; a fresh model does not).
* **depth entries** (:class:`DepthEntry`): the block ``module`` (a residual block, a transformer layer) is replaced
  in its parent (``Sequential``, ``ModuleList`` or attribute) by a :class:`~prunekit.structure.skip.SkipBlock`
  returning its first input (see :mod:`prunekit.structure.depth` for when that is exact).
* **split modules** (``split``): ``nn.MultiheadAttention`` modules replaced by their
  :class:`~prunekit.structure.attention.SplitMultiheadAttention` (separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``,
  same outputs) *before* anything else, so that unit entries can name the projections (attention heads). Modules
  already split are left alone.

``size`` (unit entries) and ``class`` (depth entries) make replay safe: applying a plan to a model whose module
does not have ``size`` units on that axis, or whose block is not of that class (e.g. a plan applied twice), raises
before anything is changed.

JSON: ``{"version": 1, "entries": [...]}`` when the plan has unit entries only (what prunekit 0.1 wrote, so older
readers still read it); ``{"version": 2, "entries": [...], "add_bias": [fqn, ...], "depth": [{"module", "class",
"output", "length"}, ...]}`` when it also adds biases or removes blocks; version 3 adds ``"split": [fqn, ...]`` and
is written only when the plan splits attention modules (older prunekit cannot apply such a plan). Versions 1 to 3
are read; a missing or empty ``split`` means none.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from prunekit.masks import masked_params, module_type_name
from prunekit.structure.attention import SplitMultiheadAttention, SplitRecord, swap_in_split_attention_
from prunekit.structure.handlers import (
    StructureError,
    eager_experts_if_misaligned_,
    handler_for,
    handler_for_or_none,
    model_tensor,
    select_,
    sync_attention_attributes_,
    sync_expert_attributes_,
    tensor_aliases,
    tensor_dim,
)
from prunekit.structure.skip import OUTPUTS, Output, SkipBlock, plain_attributes
from prunekit.structure.ties import retie_, tied_parameters

log = logging.getLogger(__name__)
Axis = Literal["out", "in"]
AXES: tuple[Axis, ...] = ("out", "in")
PLAN_VERSION = 3
_READABLE = (1, 2, 3)
_KEYS = {1: {"version", "entries"}, 2: {"version", "entries", "add_bias", "depth"}}
_KEYS[3] = _KEYS[2] | {"split"}
_BIASABLE = ("Linear", "Conv1d", "Conv2d", "Conv3d")


class PlanError(StructureError):
    """A plan is malformed or does not fit the model; the message names the entry."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class PlanEntry:
    """Module ``module`` had ``size`` units on ``axis`` and keeps the sorted unique indices ``kept``."""

    module: str
    axis: Axis
    size: int
    kept: tuple[int, ...]

    def validate(self, where: str) -> None:
        if not isinstance(self.module, str):
            raise PlanError(f"{where}: 'module' must be a string, got {self.module!r}")
        if self.axis not in AXES:
            raise PlanError(f"{where} ({self.module}): 'axis' must be 'out' or 'in', got {self.axis!r}")
        if not _is_int(self.size) or self.size < 1:
            raise PlanError(f"{where} ({self.module}.{self.axis}): 'size' must be a positive integer, got {self.size!r}")
        k = self.kept
        if not k:
            raise PlanError(f"{where} ({self.module}.{self.axis}): 'kept' is empty; at least one unit must stay")
        if any(not _is_int(i) for i in k):
            raise PlanError(f"{where} ({self.module}.{self.axis}): 'kept' must hold integers")
        if any(b <= a for a, b in itertools.pairwise(k)) or k[0] < 0 or k[-1] >= self.size:
            raise PlanError(
                f"{where} ({self.module}.{self.axis}): 'kept' must be strictly increasing indices in [0, {self.size})"
            )

    @property
    def removed(self) -> int:
        return self.size - len(self.kept)


@dataclass(frozen=True)
class DepthEntry:
    """Block ``module`` (of class ``class_name``) is replaced by a :class:`SkipBlock` returning its first input.

    ``output``: ``"tensor"``, or ``"tuple"`` of ``length`` (hidden states, then ``None``s) for callers that index
    the block's result.
    """

    module: str
    class_name: str
    output: Output = "tensor"
    length: int = 1

    def validate(self, where: str) -> None:
        if not isinstance(self.module, str) or not self.module:
            raise PlanError(f"{where}: 'module' must be the non-empty path of a block, got {self.module!r}")
        if not isinstance(self.class_name, str) or not self.class_name:
            raise PlanError(f"{where} ({self.module}): 'class' must be the block's class name, got {self.class_name!r}")
        if self.output not in OUTPUTS:
            raise PlanError(f"{where} ({self.module}): 'output' must be 'tensor' or 'tuple', got {self.output!r}")
        if not _is_int(self.length) or self.length < 1 or (self.output == "tensor" and self.length != 1):
            raise PlanError(
                f"{where} ({self.module}): 'length' must be 1 for a tensor output, a positive integer for a tuple; "
                f"got {self.length!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "class": self.class_name, "output": self.output, "length": self.length}


def _inside(fqn: str, block: str) -> bool:
    return fqn == block or fqn.startswith(block + ".")


@dataclass(frozen=True)
class PrunePlan:
    """Unit entries (unique ``(module, axis)``), modules that get a zero bias, blocks replaced by identities, and
    attention modules split first (module docstring)."""

    entries: tuple[PlanEntry, ...] = ()
    add_bias: tuple[str, ...] = ()
    depth: tuple[DepthEntry, ...] = ()
    split: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for i, e in enumerate(self.entries):
            e.validate(f"plan entry {i}")
            if (e.module, e.axis) in seen:
                raise PlanError(f"plan entry {i} ({e.module}.{e.axis}): duplicate module/axis")
            seen.add((e.module, e.axis))
        for i, b in enumerate(self.add_bias):
            if not isinstance(b, str) or not b:
                raise PlanError(f"plan add_bias {i}: must be a module path, got {b!r}")
        if len(set(self.add_bias)) != len(self.add_bias):
            raise PlanError(f"plan add_bias: duplicate modules in {list(self.add_bias)}")
        for i, s in enumerate(self.split):
            if not isinstance(s, str) or not s:
                raise PlanError(f"plan split {i}: must be the non-empty path of an attention module, got {s!r}")
        if len(set(self.split)) != len(self.split):
            raise PlanError(f"plan split: duplicate modules in {list(self.split)}")
        for i, d in enumerate(self.depth):
            d.validate(f"plan depth entry {i}")
            for j, other in enumerate(self.depth[:i]):
                if _inside(d.module, other.module) or _inside(other.module, d.module):
                    raise PlanError(f"plan depth entry {i} ({d.module}): overlaps depth entry {j} ({other.module})")
            for j, e in enumerate(self.entries):
                if _inside(e.module, d.module):
                    raise PlanError(
                        f"plan entry {j} ({e.module}.{e.axis}) is inside block {d.module}, removed by depth entry {i}"
                    )
            for b in self.add_bias:
                if _inside(b, d.module):
                    raise PlanError(f"plan add_bias {b} is inside block {d.module}, removed by depth entry {i}")
            for s in self.split:
                if _inside(s, d.module):
                    raise PlanError(f"plan split {s} is inside block {d.module}, removed by depth entry {i}")

    def __len__(self) -> int:
        """Unit entries, biases added and blocks removed (``split`` is not counted: it changes no output)."""
        return len(self.entries) + len(self.add_bias) + len(self.depth)

    # -- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        entries = [{"module": e.module, "axis": e.axis, "size": e.size, "kept": list(e.kept)} for e in self.entries]
        if not self.add_bias and not self.depth and not self.split:
            return {"version": 1, "entries": entries}
        out: dict[str, Any] = {
            "version": 2,  # readable by prunekit versions that predate ``split``
            "entries": entries,
            "add_bias": list(self.add_bias),
            "depth": [d.to_dict() for d in self.depth],
        }
        if self.split:
            out["version"] = PLAN_VERSION
            out["split"] = list(self.split)
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: object) -> PrunePlan:
        if not isinstance(data, dict):
            raise PlanError(f"plan must be a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version not in _READABLE:
            raise PlanError(f"plan version {version!r}; this prunekit reads versions {', '.join(map(str, _READABLE))}")
        allowed = _KEYS[cast(int, version)]
        if set(data) - allowed:
            raise PlanError(f"plan version {version}: unknown keys {sorted(set(data) - allowed)}; allowed: {sorted(allowed)}")
        raw = data.get("entries")
        if not isinstance(raw, list):
            raise PlanError("plan 'entries' must be a list")
        entries = []
        for i, r in enumerate(raw):
            if not isinstance(r, dict) or set(r) != {"module", "axis", "size", "kept"}:
                raise PlanError(f"plan entry {i}: expected keys module, axis, size, kept; got {r!r}"[:300])
            if not isinstance(r["kept"], list):
                raise PlanError(f"plan entry {i} ({r['module']}): 'kept' must be a list")
            entries.append(PlanEntry(r["module"], r["axis"], r["size"], tuple(r["kept"])))
        add_bias = data.get("add_bias", [])
        if not isinstance(add_bias, list):
            raise PlanError("plan 'add_bias' must be a list of module paths")
        raw_depth = data.get("depth", [])
        if not isinstance(raw_depth, list):
            raise PlanError("plan 'depth' must be a list")
        depth = []
        for i, r in enumerate(raw_depth):
            if not isinstance(r, dict) or set(r) != {"module", "class", "output", "length"}:
                raise PlanError(f"plan depth entry {i}: expected keys module, class, output, length; got {r!r}"[:300])
            depth.append(DepthEntry(r["module"], r["class"], r["output"], r["length"]))
        split = data.get("split", [])
        if not isinstance(split, list):
            raise PlanError("plan 'split' must be a list of attention module paths")
        return cls(tuple(entries), tuple(add_bias), tuple(depth), tuple(split))

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from None
        return cls.from_dict(data)

    # -- inspection --------------------------------------------------------------------------------------
    def tensor_view(self, model: nn.Module) -> list[tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]]:
        """``(tensor name, shape before, shape after)`` for every parameter/buffer the plan changes, adds or drops.

        ``None`` stands for "absent" (a bias the plan adds, the tensors of a removed block). Computed by applying
        the plan to a deep copy, so it is exactly what :func:`apply_plan_` would do; ``model`` is not changed.
        """
        before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        after = {k: tuple(v.shape) for k, v in apply_plan_(copy.deepcopy(model), self).state_dict().items()}
        names = list(before) + [k for k in after if k not in before]
        return [(k, before.get(k), after.get(k)) for k in names if after.get(k) != before.get(k)]


@dataclass(frozen=True)
class _TensorSlice:
    """A unit entry naming a parameter or buffer: ``owner.<name>`` keeps ``entry.kept`` along ``dim``."""

    owner: nn.Module
    name: str
    dim: int
    entry: PlanEntry

    def apply(self) -> None:
        select_(self.owner, self.name, self.dim, torch.tensor(self.entry.kept, dtype=torch.long))


def _check_tensor(model: nn.Module, e: PlanEntry, where: str, masked: set[str]) -> _TensorSlice:
    """Resolve a unit entry whose ``module`` is not a module: it must name a parameter or buffer of the model that
    has ``e.size`` entries along some dim (the last such dim is sliced, :func:`tensor_dim`)."""
    if e.module in masked:
        raise PlanError(f"{where}: tensor carries a prunekit mask; call prunekit.masks.finalize_(model) before slimming")
    found = model_tensor(model, e.module)
    if found is None:
        raise PlanError(f"{where}: the model has no module {e.module!r} (nor a parameter or buffer of that path)")
    owner, name, t = found
    if e.axis != "out" and t.dim() < 2:
        raise PlanError(
            f"{where}: {e.module!r} {tuple(t.shape)} has only the 'out' axis (its sliced dim); 'in', the input columns "
            "of a tensor used as a weight, needs 2 or more dims"
        )
    if handler_for_or_none(owner) is not None:
        raise PlanError(
            f"{where}: {e.module!r} belongs to a {module_type_name(owner)}, whose handler slices it; name the module instead"
        )
    others = tensor_aliases(model, e.module)
    if others:
        raise PlanError(f"{where}: {e.module!r} is also registered as {', '.join(others)}; slicing one name would untie them")
    dim = tensor_dim(tuple(t.shape), e.size)
    if dim is None:
        raise PlanError(
            f"{where}: plan expects {e.size} units along a dim of {e.module!r}, whose shape is {tuple(t.shape)} "
            "(plan already applied?)"
        )
    return _TensorSlice(owner, name, dim, e)


def _check(model: nn.Module, plan: PrunePlan) -> tuple[list[tuple[nn.Module, PlanEntry]], list[_TensorSlice]]:
    """Module entries with their modules, and entries naming parameters/buffers resolved; :class:`PlanError` names
    the first entry that does not fit the model."""
    mods = dict(model.named_modules())
    masked_params_ = list(masked_params(model))
    masked = {mp.fqn for mp in masked_params_}
    masked_tensors = {mp.key for mp in masked_params_}
    out = []
    tensors: list[_TensorSlice] = []
    for i, e in enumerate(plan.entries):
        where = f"plan entry {i} ({e.module}.{e.axis})"
        m = mods.get(e.module)
        if m is None:
            ts = _check_tensor(model, e, where, masked_tensors)
            other = next((o for o in tensors if o.entry.module == e.module and o.dim == ts.dim), None)
            if other is not None:
                raise PlanError(
                    f"{where}: slices dim {ts.dim} of {e.module!r}, as its {other.entry.axis} entry does "
                    f"(both have {e.size} units: the dims cannot be told apart)"
                )
            tensors.append(ts)
            continue
        if e.module in masked:
            raise PlanError(f"{where}: module carries prunekit masks; call prunekit.masks.finalize_(model) before slimming")
        h = handler_for(m, e.module)
        have = h.num_out(m) if e.axis == "out" else h.num_in(m)
        if have != e.size:
            raise PlanError(f"{where}: plan expects {e.size} units, the module has {have} (plan already applied?)")
        out.append((m, e))
    for b in plan.add_bias:
        m = mods.get(b)
        if m is None:
            raise PlanError(f"plan add_bias {b}: the model has no module {b!r}")
        if module_type_name(m) not in _BIASABLE or "bias" not in m._parameters:
            raise PlanError(f"plan add_bias {b}: a bias can only be added to {', '.join(_BIASABLE)}, not {module_type_name(m)}")
    for i, d in enumerate(plan.depth):
        where = f"plan depth entry {i} ({d.module})"
        m = mods.get(d.module)
        if m is None:
            raise PlanError(f"{where}: the model has no module {d.module!r}")
        if module_type_name(m) != d.class_name:
            raise PlanError(
                f"{where}: plan expects a {d.class_name}, the model has a {module_type_name(m)} (plan already applied?)"
            )
    return out, tensors


def add_zero_bias_(module: nn.Module) -> bool:
    """Give a ``Linear``/conv built with ``bias=False`` a zero bias (one per output unit); False if it has one."""
    if module._parameters.get("bias") is not None:
        return False
    w = cast(torch.Tensor, module.weight)  # also when a reparametrization computes it
    n = handler_for(module).num_out(module)
    module._parameters["bias"] = nn.Parameter(torch.zeros(n, dtype=w.dtype, device=w.device), w.requires_grad)
    return True


def _apply_entries(module: nn.Module, entries: list[PlanEntry], bias: bool) -> None:
    if bias:
        add_zero_bias_(module)
    if not entries:
        return
    h = handler_for(module, entries[0].module)
    for i, e in enumerate(entries):
        if i and h.passthrough(module):  # out and in are one axis: change it once
            continue
        kept = torch.tensor(e.kept, dtype=torch.long)
        (h.prune_out if e.axis == "out" else h.prune_in)(module, kept)


def _replace_block_(model: nn.Module, d: DepthEntry) -> None:
    parent_name, _, name = d.module.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = parent.get_submodule(name)
    setattr(parent, name, SkipBlock(d.class_name, d.output, d.length, plain_attributes(old)))


def _split_(model: nn.Module, plan: PrunePlan) -> SplitRecord:
    """Split the plan's attention modules (already split ones are skipped); :class:`PlanError` names a bad one."""
    mods = dict(model.named_modules())
    masked = {mp.fqn for mp in masked_params(model)}
    for i, name in enumerate(plan.split):
        where = f"plan split {i} ({name})"
        m = mods.get(name)
        if m is None:
            raise PlanError(f"{where}: the model has no module {name!r}")
        if isinstance(m, SplitMultiheadAttention):
            continue
        if not isinstance(m, nn.MultiheadAttention):
            raise PlanError(
                f"{where}: only nn.MultiheadAttention (or an already split SplitMultiheadAttention) can be split, "
                f"not {module_type_name(m)}"
            )
        if any(_inside(f, name) for f in masked):
            raise PlanError(f"{where}: module carries prunekit masks; call prunekit.masks.finalize_(model) before slimming")
    try:
        rec = swap_in_split_attention_(model, plan.split)
    except StructureError as e:
        raise PlanError(f"plan split: {e}") from None
    if rec.names:
        log.info("split nn.MultiheadAttention into q/k/v/out projections: %s", ", ".join(rec.names))
    return rec


@torch.no_grad()
def apply_plan_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Apply the plan to ``model`` in place: attention splits, biases, then unit removals, then block replacements;
    returns ``model``.

    All or nothing: every entry is checked against the model, and each module's removals are first rehearsed on
    a copy of that module (so a handler's refusal, e.g. a GroupNorm group split in two, leaves the model
    untouched; attention modules split for the plan are put back). An entry naming a parameter or buffer (module
    docstring) must name one registered once, outside any handled module, with a dim of ``size`` entries (and, on
    axis ``in``, 2 or more dims; its two entries may not resolve to one dim); it is checked up front and sliced
    after the modules; then the widths fused expert modules keep as attributes follow their weights
    (:func:`~prunekit.structure.handlers.sync_expert_attributes_`). Pass-through modules (BatchNorm, depthwise
    conv), whose ``out`` and ``in`` are the same axis, are changed once even if the plan names both. A weight tied
    between modules (embedding and output head) is sliced for each owner and shared again afterwards; a plan that
    would slice it differently for two owners is refused (:mod:`prunekit.structure.ties`).
    """
    split = _split_(model, plan)
    by_module: dict[int, tuple[nn.Module, list[PlanEntry], bool]] = {}
    try:
        module_entries, tensor_entries = _check(model, plan)
        for m, e in module_entries:
            by_module.setdefault(id(m), (m, [], False))[1].append(e)
        mods = dict(model.named_modules())
        for b in plan.add_bias:
            m = mods[b]
            by_module[id(m)] = (m, by_module.get(id(m), (m, [], False))[1], True)
        for m, entries, bias in by_module.values():
            _apply_entries(copy.deepcopy(m), entries, bias)
        ties = [t for t in tied_parameters(model) if any(id(m) in by_module for _, m, _ in t)]
        for t in ties:  # owners of a tied weight rehearse together (one deepcopy keeps the weight shared)
            copies = copy.deepcopy([m for _, m, _ in t])
            for (_, m, _), c in zip(t, copies):
                if id(m) in by_module:
                    _apply_entries(c, *by_module[id(m)][1:])
            retie_([[(f, c, n) for (f, _, n), c in zip(t, copies)]])
    except Exception:
        split.undo()
        raise
    for m, entries, bias in by_module.values():
        _apply_entries(m, entries, bias)
    for ts in tensor_entries:
        ts.apply()
    retied = retie_(ties)
    if retied:
        log.info("tied weights kept tied: %s", "; ".join(retied))
    for d in plan.depth:
        _replace_block_(model, d)
    changed = sync_attention_attributes_(model)
    if changed:
        log.info("attention head counts updated: %s", ", ".join(changed))
    changed = sync_expert_attributes_(model)
    if changed:
        log.info("expert widths updated: %s", ", ".join(changed))
    misaligned = eager_experts_if_misaligned_(model)
    if misaligned:
        log.info("experts widths not a multiple of 16 bytes (%s): per-expert loop instead of grouped_mm", ", ".join(misaligned))
    return model


def merge_plans(plans: Iterable[PrunePlan]) -> PrunePlan:
    """Concatenate plans over disjoint (module, axis) pairs, bias modules and blocks; the union of their splits."""
    ps = list(plans)
    return PrunePlan(
        tuple(e for p in ps for e in p.entries),
        tuple(dict.fromkeys(b for p in ps for b in p.add_bias)),
        tuple(d for p in ps for d in p.depth),
        tuple(dict.fromkeys(s for p in ps for s in p.split)),
    )
