"""Shared machinery of folding and dead-unit analysis: where each group's units sit on module axes, dense
connectivity of Linear/conv weights, per-channel statistics of consumer inputs, and the set of constant units.

A unit is *constant* when its value at every consumer input is the same for every sample and position. Two tests,
both required (:func:`constant_units`):

* structural (exact for every input): every producer's weights from non-constant inputs to the unit are zero, so
  its output is ``bias`` plus contributions of constant units; the set is the least fixed point of that rule,
  starting from units with no non-zero incoming weight at all (a zero-padded conv producer needs all its weights
  to the unit zero). Between producer and consumer the graph
  (:mod:`prunekit.structure.graph`) only admits element-wise ops, pooling, flatten, residual adds/products and
  per-channel followers (BatchNorm, depthwise conv, GroupNorm), which map constants to constants except at
  zero-padded borders;
* numerical: on the example input, the unit's entries of each consumer's input are constant across batch and
  positions (catches zero-padded borders of depthwise convs or pooling, and any op the first rule misses).

A group whose followers include a module that mixes units (``LayerNorm``, RMSNorm, anything not known to act per
channel) has no constant units, and removing any of its units is not exact.

Parameters and buffers in a group (``param`` members: a layer scale, a class token, position embeddings) are not
on module axes: :class:`UnitMap` keeps them apart (``UnitMap.groups`` holds the module members only, so folding and
dead-unit analysis see the modules they change; the plans they build come from the full groups and slice the
tensors too). They do not depend on the input, so a tensor that varies only along its channel dim keeps both
tests valid: multiplied or added (a layer scale ``(C,)``, a conv scale ``(C, 1, 1)``) it maps a constant unit to a
constant, like a per-channel follower; concatenated along the sequence (a class token ``(1, 1, D)``) it is a
constant of its own at its position, which the numerical check sees on any example input. One that also varies
along other dims (position embeddings ``(1, N, D)``) makes a unit's value depend on the position; conservatively,
such a group has no constant units (only units with no outputs can go).

A group in which a parameter acts as a *weight* (``param_role`` producer or consumer: the rows or columns of a
fused expert weight read by ``F.linear``, see :mod:`prunekit.structure.graph`) is not tracked at all
(:attr:`UnitMap.tracked`): neither test above sees what such a tensor writes into a unit or reads from it, so
folding and dead-unit analysis leave those groups (and any plan entries for them) as they are.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.masks import module_type_name
from prunekit.structure.graph import Group, Member
from prunekit.structure.handlers import StructureError, handler_for, model_tensor

log = logging.getLogger(__name__)

Example = Tensor | tuple[Tensor, ...] | Mapping[str, Any]
PER_CHANNEL_FOLLOWERS = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "Conv1d", "Conv2d", "Conv3d"})
_CONVS = ("Conv1d", "Conv2d", "Conv3d")


def full_weight(module: nn.Module) -> Tensor | None:
    """The (effective, masked) weight as ``(out, in, K)``: a Linear (or Hugging Face ``Conv1D``) is ``K = 1``, a conv
    ``K = prod(kernel)`` with grouped convolutions expanded to a dense block-diagonal ``in``; ``None`` for other
    module types."""
    name = module_type_name(module)
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor):
        return None
    w = w.detach()
    if name == "Linear":
        return w[:, :, None]
    if name == "Conv1D":  # Hugging Face's linear layer with the weight stored (in, out)
        return w.t()[:, :, None]
    if name not in _CONVS:
        return None
    out, cin_g = w.shape[:2]
    w = w.reshape(out, cin_g, -1)  # (out, in/groups, K)
    g = int(module.groups)  # type: ignore[arg-type]
    if g == 1:
        return w
    full = w.new_zeros(out, cin_g * g, w.shape[2])
    og = out // g
    for i in range(g):
        full[i * og : (i + 1) * og, i * cin_g : (i + 1) * cin_g] = w[i * og : (i + 1) * og]
    return full


def zero_padded(module: nn.Module) -> bool:
    """True for a conv that pads its input with zeros (a constant input is then not constant at the borders)."""
    if module_type_name(module) not in _CONVS or getattr(module, "padding_mode", "zeros") != "zeros":
        return False
    pad = module.padding
    if isinstance(pad, str):
        return pad != "valid" and any(int(k) > 1 for k in module.kernel_size)  # type: ignore[union-attr]
    return any(int(p) != 0 for p in pad)  # type: ignore[union-attr]


def unit_axis(member: Member, units: Tensor) -> Tensor:
    """Axis indices of ``member`` that carry the group's ``units`` (1-D long): ``offset + u*block + j``."""
    return (member.offset + units[:, None] * member.block + torch.arange(member.block)[None, :]).flatten()


def per_unit(member: Member, axis_values: Tensor, size: int) -> Tensor:
    """``(size, block)`` view of a boolean vector over ``member``'s axis: row ``u`` holds unit ``u``'s entries."""
    return axis_values[unit_axis(member, torch.arange(size))].reshape(size, member.block)


class UnitMap:
    """Where each group's units sit: on producers' ``out`` axes and on consumers' ``in`` axes.

    A member's unit may be a block of axis entries (a flattened channel on a consumer, an attention head on a
    projection) at an offset (a ``torch.cat`` operand, a piece of a fused qkv projection), so an axis can hold
    several groups.
    """

    def __init__(self, model: nn.Module, groups: list[Group]) -> None:
        # module members only; ``params[i]``: group i's parameter/buffer members (module docstring)
        self.groups = [dataclasses.replace(g, members=tuple(m for m in g.members if m.role != "param")) for g in groups]
        self.params = {i: g.params for i, g in enumerate(groups) if g.params}
        self.tensor_shapes: dict[str, tuple[int, ...]] = {}
        for ms in self.params.values():
            for m in ms:
                found = model_tensor(model, m.fqn)
                if found is None:
                    raise StructureError(f"group member {m.fqn!r} is not a parameter or buffer of the model")
                self.tensor_shapes[m.fqn] = tuple(found[2].shape)
        self.mods = dict(model.named_modules(remove_duplicate=False))
        # groups where a tensor is a weight (fused experts) are not analysed (module docstring)
        self.tracked = [i for i, g in enumerate(groups) if g.prunable and g.producers and not g.weight_params]
        self.slots: dict[tuple[str, str], list[tuple[int, Member]]] = {}
        for i, g in enumerate(self.groups):
            for m in g.members:
                if m.role != "follower":
                    self.slots.setdefault((m.fqn, m.axis), []).append((i, m))
        self.weights = {f: full_weight(self.mods[f]) for f, _ in self.slots}

    def size(self, fqn: str, axis: str) -> int:
        m = self.mods[fqn]
        h = handler_for(m, fqn)
        return h.num_out(m) if axis == "out" else h.num_in(m)

    def axis_mask(self, fqn: str, axis: str, units: dict[int, Tensor]) -> Tensor:
        """Boolean over ``fqn``'s ``axis``: True at the entries of the units marked in ``units`` (group -> bool)."""
        out = torch.zeros(self.size(fqn, axis), dtype=torch.bool)
        for gi, m in self.slots.get((fqn, axis), []):
            u = units.get(gi)
            if u is not None and bool(u.any()):
                out[unit_axis(m, u.nonzero().flatten())] = True
        return out

    def in_mask(self, fqn: str, units: dict[int, Tensor]) -> Tensor:
        return self.axis_mask(fqn, "in", units)

    def out_mask(self, fqn: str, units: dict[int, Tensor]) -> Tensor:
        return self.axis_mask(fqn, "out", units)

    def position_dependent_tensors(self, gi: int) -> list[str]:
        """``param`` members of group ``gi`` that vary along a dim other than their channel dim (position
        embeddings (1, N, D)): the group then gets no constant units (module docstring)."""
        return [
            f"{m.fqn} {self.tensor_shapes[m.fqn]}"
            for m in self.params.get(gi, ())
            if any(n != 1 for d, n in enumerate(self.tensor_shapes[m.fqn]) if d != m.dim)
        ]

    def mixing_followers(self, gi: int) -> list[str]:
        """Followers of group ``gi`` not known to act per channel (LayerNorm, RMSNorm, unknown types)."""
        return [
            f"{m.fqn} ({module_type_name(self.mods[m.fqn])})"
            for m in self.groups[gi].members
            if m.role == "follower" and module_type_name(self.mods[m.fqn]) not in PER_CHANNEL_FOLLOWERS
        ]


@dataclass
class InputStats:
    """Per input channel of one consumer, over every call, sample and position: min, max, mean, rows seen."""

    lo: Tensor
    hi: Tensor
    total: Tensor
    rows: int = 0

    @property
    def value(self) -> Tensor:
        return self.total / max(self.rows, 1)

    def constant(self, tol: float) -> Tensor:
        return (self.hi - self.lo) <= tol * (1 + self.value.abs())


def run_model(model: nn.Module, inputs: Example) -> Any:
    """``model(**inputs)`` for a dict (a tokenizer's output), ``model(*inputs)`` for a tuple, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def measure_inputs(model: nn.Module, example_input: Example, fqns: list[str]) -> dict[str, InputStats]:
    """Run ``model`` (eval mode) on the example input and collect :class:`InputStats` at each module's input."""
    mods = dict(model.named_modules(remove_duplicate=False))
    stats: dict[str, InputStats] = {}

    def hook(fqn: str, cdim: int) -> Any:
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
            if x is None:
                return
            x = x.detach()
            x = x.movedim(cdim % x.dim(), -1).reshape(-1, x.shape[cdim]).double()  # (rows, C)
            lo, hi, total = x.amin(0), x.amax(0), x.sum(0)
            s = stats.get(fqn)
            if s is None:
                stats[fqn] = InputStats(lo, hi, total, x.shape[0])
            else:
                s.lo, s.hi, s.total, s.rows = (
                    torch.minimum(s.lo, lo),
                    torch.maximum(s.hi, hi),
                    s.total + total,
                    s.rows + x.shape[0],
                )

        return fn

    handles = [
        mods[f].register_forward_pre_hook(hook(f, handler_for(mods[f], f).channel_dim(mods[f])), with_kwargs=True) for f in fqns
    ]
    try:
        with eval_mode(model):
            run_model(model, example_input)
    finally:
        for h in handles:
            h.remove()
    single = sorted(f for f, s in stats.items() if s.rows < 2)
    if single:
        log.warning(
            "the example input gives one sample and position at %s: constant units are only checked structurally there; "
            "use a batch of at least 2",
            ", ".join(single),
        )
    return stats


def numerically_constant(umap: UnitMap, stats: dict[str, InputStats], gi: int, tol: float) -> Tensor:
    """Units of group ``gi`` constant (on the example input) at the input of every consumer of the group; none when
    a parameter of the group varies along positions (module docstring)."""
    g = umap.groups[gi]
    if umap.position_dependent_tensors(gi):
        return torch.zeros(g.size, dtype=torch.bool)
    ok = torch.ones(g.size, dtype=torch.bool)
    for m in g.members:
        if m.role != "consumer":
            continue
        s = stats.get(m.fqn)
        if s is None:  # never called on the example input
            return torch.zeros(g.size, dtype=torch.bool)
        ok &= per_unit(m, s.constant(tol), g.size).all(1)
    return ok


def constant_units(umap: UnitMap, stats: dict[str, InputStats], tol: float) -> dict[int, Tensor]:
    """Constant units of every prunable group: the least fixed point of the structural rule (module docstring),
    intersected with the numerical check."""
    numeric = {
        gi: numerically_constant(umap, stats, gi, tol)
        if not umap.mixing_followers(gi)
        else torch.zeros(umap.groups[gi].size, dtype=torch.bool)
        for gi in umap.tracked
    }
    const = {gi: torch.zeros(umap.groups[gi].size, dtype=torch.bool) for gi in umap.tracked}
    changed = True
    while changed:
        changed = False
        for gi in umap.tracked:
            g = umap.groups[gi]
            cand = numeric[gi].clone()
            for p in g.producers:
                cand &= per_unit(p, _no_live_input(umap, p.fqn, const), g.size).all(1)
            new = cand & ~const[gi]
            if bool(new.any()):
                const[gi] |= new
                changed = True
    return const


def _no_live_input(umap: UnitMap, fqn: str, const: dict[int, Tensor]) -> Tensor:
    """Output units of producer ``fqn`` whose weights from non-constant inputs are all zero."""
    w = umap.weights.get(fqn)
    m = umap.mods[fqn]
    if w is None:  # e.g. Embedding: no unit inputs; a unit is constant when its whole weight slice is zero
        dim = handler_for(m, fqn).unit_dim(m)
        weight = getattr(m, "weight", None)
        if dim is None or not isinstance(weight, Tensor):
            return torch.zeros(umap.size(fqn, "out"), dtype=torch.bool)
        return ~weight.detach().transpose(0, dim).reshape(weight.shape[dim], -1).ne(0).any(1).cpu()
    # a zero-padded conv turns a constant input into a position-dependent output: only all-zero weights count
    live = torch.ones(w.shape[1], dtype=torch.bool) if zero_padded(m) else ~umap.in_mask(fqn, const)
    return ~w.ne(0).any(-1)[:, live.to(w.device)].any(1).cpu()
