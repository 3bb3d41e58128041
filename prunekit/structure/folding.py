"""Folding: remove units whose output is constant without changing what the model computes.

A unit whose incoming weights are all zero (masked) still emits a constant: a Linear/conv unit its bias ``b``,
after BatchNorm ``beta - gamma * mu / sqrt(var + eps)`` (``mu``, ``var``: running statistics), then the
element-wise activation, ``c = act(BN(b))``. Removing the unit drops that constant from every consumer, so the
slim model is exact only if ``c = 0``. Folding moves ``c`` into the consumers before the unit goes:

* Linear consumer: ``b'_o = b_o + sum_{i removed} W[o, i] c_i``;
* conv consumer: ``b'_o = b_o + sum_{i removed} c_i sum_k W[o, i, k]`` (``k`` over the kernel; grouped convs
  only within a group), exact only if the consumer does not zero-pad its input (``padding=0``, ``padding='valid'``
  or a non-zero ``padding_mode``): at zero-padded borders part of the kernel sees zeros instead of ``c``. A unit
  with ``c != 0`` feeding a zero-padded conv is kept;
* flatten into a Linear (``Member.block > 1``): a channel is ``block`` features with their own constants ``c_{i,j}``
  (different after a pooling with padding, for instance), and the Linear rule applies per feature.

Which units are constant is decided by :func:`prunekit.structure._units.constant_units`: structurally (the
producers' weights from non-constant inputs are zero, so the value is computed from constants by the element-wise
ops, pooling, flatten, residual adds and per-channel followers the dependency graph admits between producer and
consumer) *and* numerically (on the example input, run in eval mode, the unit's entries of each consumer's input
are constant across batch and positions; ``c`` is read there). A removed unit is folded, or dropped with no
correction when its weights into the consumers' kept outputs are all zero (a unit with no outputs); any other
removed unit is kept in the returned plan, with the reason logged and reported. Groups whose followers mix units
(LayerNorm, RMSNorm) keep every unit: removing features changes the statistics the others are normalised with.

Where the correction goes, per consumer: its bias; if it has none and its only user is a BatchNorm, that
BatchNorm's ``running_mean`` (``BN(y + d)`` with ``mu' = mu + d`` equals ``BN(y)`` in eval mode, and in training
mode the batch mean absorbs ``d``), so conv-BN networks need no new parameter; otherwise a zero bias is added. An
added bias is a new tensor, so it is recorded in the returned plan (``PrunePlan.add_bias``): replaying the plan on
a fresh model grows the same parameter, and the slim ``state_dict`` loads into it.

Folding changes values only (like :func:`prunekit.masks.finalize_`); shapes change only in
:func:`~prunekit.structure.plan.apply_plan_`. Exactness holds in eval mode (BatchNorm with running statistics;
dropout off). Typical use::

    plan = plan_from_masks(model, x)          # or dead_unit_plan(model, x)[0]
    plan, report = fold_removed_(model, plan, x)
    finalize_(model)
    apply_plan_(model, plan)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from prunekit.masks import module_type_name
from prunekit.structure._units import (
    Example,
    InputStats,
    UnitMap,
    constant_units,
    measure_inputs,
    numerically_constant,
    per_unit,
    unit_axis,
    zero_padded,
)
from prunekit.structure.from_masks import plan_for_groups
from prunekit.structure.graph import Group, Member, build_groups, trace
from prunekit.structure.handlers import StructureError
from prunekit.structure.plan import PlanError, PrunePlan, add_zero_bias_

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeptUnit:
    """A unit the input plan removed but the folded plan keeps, because removing it would change outputs."""

    group: str  # the group's first producer
    unit: int
    reason: str


@dataclass(frozen=True)
class FoldReport:
    """What :func:`fold_removed_` did."""

    removed: int  # units the returned plan removes
    folded: int  # of which emitted a non-zero constant into some consumer, now folded
    kept: tuple[KeptUnit, ...] = ()
    changed: tuple[str, ...] = ()  # tensors whose values changed: "fc2.bias", "bn.running_mean"
    added_bias: tuple[str, ...] = ()  # modules given a bias (also in the plan's add_bias)


def _removed_units(umap: UnitMap, plan: PrunePlan) -> dict[int, Tensor]:
    """Removed units of each prunable group, read from the plan entry of the group's first producer."""
    entries = {(e.module, e.axis): e for e in plan.entries}
    out: dict[int, Tensor] = {}
    for gi in umap.tracked:
        g = umap.groups[gi]
        p = g.producers[0]
        e = entries.get((p.fqn, "out"))
        if e is None or e.removed == 0:
            continue
        have = umap.size(p.fqn, "out")
        if e.size != have:
            raise PlanError(
                f"plan entry {p.fqn}.out expects {e.size} units, the model has {have}: "
                "fold_removed_ runs on the model before apply_plan_"
            )
        gone = torch.ones(have, dtype=torch.bool)
        gone[list(e.kept)] = False
        r = per_unit(p, gone, g.size).all(1)
        if bool(r.any()):
            out[gi] = r
    return out


def _used(umap: UnitMap, m: Member, size: int, removed: dict[int, Tensor]) -> Tensor:
    """Units of the group (``size``) with a non-zero weight into a kept output of consumer ``m``."""
    w = umap.weights[m.fqn]
    if w is None:
        return torch.ones(size, dtype=torch.bool)
    rows = ~umap.out_mask(m.fqn, removed)
    cols = w.ne(0).any(-1)[rows.to(w.device)].any(0).cpu()  # (in,)
    return per_unit(m, cols, size).any(1)


def _restores(
    umap: UnitMap, removed: dict[int, Tensor], const: dict[int, Tensor], stats: dict[str, InputStats], tol: float
) -> dict[tuple[int, int], str]:
    """Removed units that cannot go exactly, with the reason."""
    out: dict[tuple[int, int], str] = {}
    for gi, r in removed.items():
        g = umap.groups[gi]
        mixing = umap.mixing_followers(gi)
        if mixing:
            for u in r.nonzero().flatten().tolist():
                out[(gi, u)] = f"{mixing[0]} normalises across units: removing any unit changes the others"
            continue
        numeric: Tensor | None = None
        for m in g.members:
            if m.role != "consumer":
                continue
            needs = _used(umap, m, g.size, removed) & r
            if not bool(needs.any()):
                continue
            if umap.weights[m.fqn] is None:
                why = f"consumer {m.fqn} ({module_type_name(umap.mods[m.fqn])}) cannot take a folded constant"
                out.update({(gi, u): why for u in needs.nonzero().flatten().tolist() if (gi, u) not in out})
                continue
            if numeric is None:
                numeric = numerically_constant(umap, stats, gi, tol)
            for u in (needs & ~const[gi]).nonzero().flatten().tolist():
                why = (
                    f"its value at {m.fqn} varies on the example input"
                    if not bool(numeric[u])
                    else "non-zero weights from non-constant inputs reach it"
                )
                out.setdefault((gi, u), f"not constant but feeds {m.fqn}: {why}")
            if zero_padded(umap.mods[m.fqn]):
                vals = stats[m.fqn].value
                for u in (needs & const[gi]).nonzero().flatten().tolist():
                    c = vals[unit_axis(m, torch.tensor([u]))]
                    if bool(c.ne(0).any()):
                        out.setdefault((gi, u), f"constant {float(c[0]):.4g} feeds {m.fqn}, which zero-pads its input")
    return out


def _whole_groupnorm_groups(umap: UnitMap, removed: dict[int, Tensor]) -> dict[tuple[int, int], str]:
    """Units to keep so that GroupNorm followers lose whole normalisation groups only."""
    out: dict[tuple[int, int], str] = {}
    for gi, r in removed.items():
        for m in umap.groups[gi].members:
            gn = umap.mods[m.fqn]
            if not isinstance(gn, nn.GroupNorm):
                continue
            gid = (m.offset + torch.arange(umap.groups[gi].size)) // (gn.num_channels // gn.num_groups)
            for k in gid.unique():
                sel = gid == k
                if bool(r[sel].any()) and not bool(r[sel].all()):
                    for u in (sel & r).nonzero().flatten().tolist():
                        out[(gi, u)] = f"{m.fqn} (GroupNorm) can only lose whole groups"
    return out


def _fx_graph(model: nn.Module, example_input: Example) -> fx.GraphModule | None:
    """The fx graph, to see what follows a bias-free consumer; ``None`` if the model does not trace."""
    if isinstance(example_input, Mapping):
        return None
    try:
        return trace(model, example_input)
    except StructureError as e:
        log.info("folding: no fx graph to find BatchNorms after bias-free consumers (%s); adding biases", e)
        return None


def _bn_after(gm: fx.GraphModule | None, fqn: str, mods: dict[str, nn.Module]) -> nn.Module | None:
    """The BatchNorm that is the only user of the only call of module ``fqn``, if there is one."""
    if gm is None:
        return None
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == fqn]
    if len(calls) != 1 or len(calls[0].users) != 1:
        return None
    user = next(iter(calls[0].users))
    if user.op != "call_module":
        return None
    bn = mods.get(str(user.target))
    return bn if bn is not None and module_type_name(bn) in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d") else None


@torch.no_grad()
def fold_removed_(
    model: nn.Module,
    plan: PrunePlan,
    example_input: Example,
    groups: list[Group] | None = None,
    tol: float = 1e-6,
) -> tuple[PrunePlan, FoldReport]:
    """Fold the constant outputs of the plan's removed units into their consumers (module docstring).

    Returns the plan to apply (the input plan minus units that cannot be removed exactly, plus ``add_bias``
    entries) and a :class:`FoldReport`. ``model`` must not have had the plan applied yet; it may still carry masks.
    ``tol``: relative tolerance of the numerical constancy check.
    """
    groups = build_groups(model, example_input) if groups is None else groups
    umap = UnitMap(model, groups)
    removed = _removed_units(umap, plan)
    if not removed:
        return plan, FoldReport(0, 0)
    consumers = sorted({m.fqn for gi in umap.tracked for m in groups[gi].members if m.role == "consumer"})
    stats = measure_inputs(model, example_input, consumers)
    const = constant_units(umap, stats, tol)

    kept: dict[tuple[int, int], str] = {}
    while True:  # keeping a unit keeps its producers' rows, which other groups' units may feed: repeat
        more = _restores(umap, removed, const, stats, tol)
        more.update({k: v for k, v in _whole_groupnorm_groups(umap, removed).items() if k not in more})
        more = {k: v for k, v in more.items() if bool(removed[k[0]][k[1]])}
        if not more:
            break
        for (gi, u), why in more.items():
            removed[gi][u] = False
            kept[(gi, u)] = why

    # the corrections, per consumer, over its full output axis
    deltas: dict[str, Tensor] = {}
    n_folded = 0
    for gi, r in removed.items():
        g = groups[gi]
        hit = torch.zeros(g.size, dtype=torch.bool)
        for m in g.members:
            if m.role != "consumer":
                continue
            needs = _used(umap, m, g.size, removed) & r
            w = umap.weights[m.fqn]
            if not bool(needs.any()) or w is None:
                continue
            cols = unit_axis(m, needs.nonzero().flatten())
            vals = stats[m.fqn].value[cols]  # (n,) float64
            if not bool(vals.ne(0).any()):
                continue
            idx = needs.nonzero().flatten()
            hit[idx[vals.reshape(-1, m.block).ne(0).any(1)]] = True
            d = w[:, cols.to(w.device), :].sum(-1).double() @ vals.to(w.device)  # (out,)
            deltas[m.fqn] = deltas[m.fqn] + d if m.fqn in deltas else d
        n_folded += int(hit.sum())

    mods = umap.mods
    gm: fx.GraphModule | None = None
    traced = False
    changed: list[str] = []
    added: list[str] = []
    for fqn, d in deltas.items():
        mod = mods[fqn]
        bias = mod._parameters.get("bias")
        if bias is None:
            if not traced:
                traced, gm = True, _fx_graph(model, example_input)
            bn = _bn_after(gm, fqn, mods)
            if bn is not None:
                rm = bn._buffers.get("running_mean")
                if rm is not None:
                    rm.add_(-d.to(rm))
                    changed.append(f"{_fqn_of(mods, bn)}.running_mean")
                continue
            add_zero_bias_(mod)
            added.append(fqn)
            bias = mod._parameters["bias"]
            assert bias is not None
        bias.add_(d.to(bias))
        changed.append(f"{fqn}.bias")

    kept_units = {gi: (~r).nonzero().flatten() for gi, r in removed.items()}
    new_units = plan_for_groups(model, groups, kept_units)
    touched = {(m.fqn, m.axis) for gi in removed for m in groups[gi].members}
    entries = tuple(e for e in plan.entries if (e.module, e.axis) not in touched) + new_units.entries
    out = dataclasses.replace(plan, entries=entries, add_bias=tuple(dict.fromkeys(plan.add_bias + tuple(added))))
    report = FoldReport(
        removed=sum(int(r.sum()) for r in removed.values()),
        folded=n_folded,
        kept=tuple(KeptUnit(groups[gi].producers[0].fqn, u, why) for (gi, u), why in sorted(kept.items())),
        changed=tuple(changed),
        added_bias=tuple(added),
    )
    for k in report.kept:
        log.info("keeping unit %d of %s: %s", k.unit, k.group, k.reason)
    log.info(
        "folding: %d units removed (%d constants folded), %d kept, changed %s",
        report.removed,
        report.folded,
        len(report.kept),
        ", ".join(report.changed) or "nothing",
    )
    return out, report


def _fqn_of(mods: dict[str, nn.Module], module: nn.Module) -> str:
    return next(k for k, v in mods.items() if v is module)
