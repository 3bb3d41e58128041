"""From masks to a plan: a unit of a group is removed when every producer's mask prunes it entirely.

With ``Channel(0)`` masks a producer's output unit ``c`` is dead when its whole weight slice (row ``c`` of a
Linear, filter ``c`` of a conv, column ``c`` of an Embedding) is masked. A group's unit goes only if it is dead in
*every* producer of the group (residual joins have several); a producer without a mask keeps all its units.

Exactness. A dead unit still emits its bias (and, after BatchNorm, ``beta - gamma * mean / std``), which reaches
the next layer through the activation. The slimmed model equals the masked model only if those constants are
zero, or once they are folded into the consumers with :func:`prunekit.structure.folding.fold_removed_` (which also
keeps any unit that cannot be removed exactly). Units left dead by *element* masks (no inputs or no outputs) are
found by :func:`prunekit.structure.dead_units.dead_unit_plan`.
Groups containing a LayerNorm are never exact: removing features changes the statistics it normalises with.
Through a GroupNorm only whole normalisation groups are removed (a group with one live channel stays whole).
A producer's unit may be a block of its output rows (an attention head): it is dead when the whole block is.
Parameters and buffers in a group (``param`` members: a layer scale, a class token, position embeddings) are
sliced with it; they have no masks and do not keep a unit alive, but a class token or position embedding adds a
non-zero value to it, so such a removal is exact only through ``fold_removed_`` (which folds the unit where its
value is constant and keeps it otherwise). A parameter that *produces* the units (the rows of a fused expert
weight, ``param_role="producer"``) has no mask either and keeps every unit: masks never remove units of a group it
produces (score such groups with :func:`~prunekit.structure.importance.structured_plan`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prunekit.masks import get_mask, has_mask
from prunekit.structure._units import per_unit
from prunekit.structure.attention import needed_splits
from prunekit.structure.graph import Group, Member, build_groups
from prunekit.structure.handlers import StructureError, handler_for, model_tensor
from prunekit.structure.plan import Axis, PlanEntry, PrunePlan

log = logging.getLogger(__name__)


def dead_units(module: nn.Module, fqn: str, name: str = "weight") -> Tensor | None:
    """Boolean vector over ``module``'s output units: True where the mask prunes the whole unit; None if unmasked."""
    if not has_mask(module, name):
        return None
    dim = handler_for(module, fqn).unit_dim(module)
    if dim is None:
        return None
    mask = get_mask(module, name)
    return ~mask.transpose(0, dim).reshape(mask.shape[dim], -1).any(1)


def kept_units(model: nn.Module, group: Group) -> Tensor:
    """Sorted indices of ``group``'s units that stay (at least one always stays)."""
    mods = dict(model.named_modules())
    dead = torch.ones(group.size, dtype=torch.bool)
    if group.param_producers:  # a tensor without a mask writes every unit
        dead[:] = False
    for p in group.producers:
        d = dead_units(mods[p.fqn], p.fqn)
        dead &= torch.zeros_like(dead) if d is None else per_unit(p, d.cpu(), group.size).all(1)
    for m in group.members:  # GroupNorm: only whole normalisation groups can go
        gn = mods.get(m.fqn)  # None for a parameter/buffer member
        if isinstance(gn, nn.GroupNorm):
            gid = (m.offset + torch.arange(group.size)) // (gn.num_channels // gn.num_groups)
            for g in gid.unique():
                sel = gid == g
                if not bool(dead[sel].all()):
                    dead[sel] = False
    kept = (~dead).nonzero().flatten()
    if len(kept) == 0:
        log.warning("every unit of the group of %s is pruned; keeping unit 0", group.label)
        kept = torch.zeros(1, dtype=torch.long)
    return kept


def plan_for_groups(model: nn.Module, groups: list[Group], kept: dict[int, Tensor]) -> PrunePlan:
    """Plan entries for ``kept[i]`` (units of ``groups[i]``); groups not in ``kept`` are left alone.

    A module axis fed by several groups (the consumer of a ``torch.cat``, a BatchNorm after it) gets one entry that
    combines them at their offsets. A ``param`` member (a parameter or buffer) gets an entry on its path and axis
    (``in`` for the input columns of a weight, else ``out``), whose ``size`` is the length of the tensor's dim
    ``member.dim`` (the last dim of that size, so :func:`~prunekit.structure.plan.apply_plan_` slices that dim); the
    two halves of a fused ``gate_up_proj`` (offsets 0 and I) share one entry of size 2I.
    """
    mods = dict(model.named_modules())
    keep: dict[tuple[str, Axis], Tensor] = {}

    def axis_size(m: Member) -> int:
        if m.role == "param":
            found = model_tensor(model, m.fqn)
            if found is None or m.dim is None or m.dim >= found[2].dim():
                raise StructureError(f"group member {m.fqn!r} is not a parameter or buffer of the model with a dim {m.dim}")
            return int(found[2].shape[m.dim])
        h = handler_for(mods[m.fqn], m.fqn)
        return h.num_out(mods[m.fqn]) if m.axis == "out" else h.num_in(mods[m.fqn])

    for i, g in enumerate(groups):
        k = kept.get(i)
        if k is None or len(k) == g.size:
            continue
        if not g.prunable:
            raise StructureError(f"group of {[m.fqn for m in g.members]} is not prunable: {'; '.join(g.reasons)}")
        dead = torch.ones(g.size, dtype=torch.bool)
        dead[k] = False
        gone = dead.nonzero().flatten()
        for m in g.members:
            if (m.fqn, m.axis) not in keep:
                keep[(m.fqn, m.axis)] = torch.ones(axis_size(m), dtype=torch.bool)
            keep[(m.fqn, m.axis)][m.offset + (gone[:, None] * m.block + torch.arange(m.block)[None, :]).flatten()] = False
    entries = [PlanEntry(fqn, axis, len(v), tuple(int(i) for i in v.nonzero().flatten())) for (fqn, axis), v in keep.items()]
    # attention the user split (SplitMultiheadAttention) is part of the architecture a replay must reproduce
    return PrunePlan(tuple(entries), split=needed_splits(model, (), (e.module for e in entries)))


def plan_from_masks(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> PrunePlan:
    """The plan that removes every unit all producers of its group have fully masked (see the module docstring)."""
    groups = build_groups(model, example_input)
    kept: dict[int, Tensor] = {}
    for i, g in enumerate(groups):
        if not g.producers:
            continue
        k = kept_units(model, g)
        if len(k) == g.size:
            continue
        if not g.prunable:
            log.info("not removing %d masked units of %s: %s", g.size - len(k), g.label, "; ".join(g.reasons))
            continue
        kept[i] = k
    return plan_for_groups(model, groups, kept)


def with_temporary_splits(model: nn.Module, plan: PrunePlan, temporary: Sequence[str]) -> PrunePlan:
    """``plan`` (from :func:`plan_for_groups` on ``model`` while the attention modules ``temporary`` were split for
    the analysis) with ``split`` naming also the temporarily split modules whose projections it changes; unchanged
    when nothing was split temporarily."""
    if not temporary:
        return plan
    return dataclasses.replace(plan, split=needed_splits(model, temporary, (e.module for e in plan.entries)))
