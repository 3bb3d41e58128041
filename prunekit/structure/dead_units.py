"""Dead units after unstructured pruning: units left with no inputs or no outputs, found to a fixed point.

Element-wise masks can leave a unit of a dependency group (a producer's output row or filter, with everything
coupled to it) with

* **no inputs**: every weight from a non-constant input is pruned, so the unit outputs a constant (its bias through
  BatchNorm and the activation). It is removed and the constant folded into its consumers
  (:func:`~prunekit.structure.folding.fold_removed_`);
* **no outputs**: every weight from it into a kept output of every consumer is pruned, so it feeds nothing. It is
  removed with its incoming weights; nothing needs folding.

Both propagate: a unit whose only live outputs went to a removed unit has no outputs either (backwards), and a unit
fed only by constant units is constant (forwards). For unit ``c`` of a group with producers ``P`` and consumers ``Q``
(``j(c)``: the input entries of ``c`` at a consumer, ``block`` of them after a flatten)::

    const(c)   <=>  for all p in P:  W_p[c, i] = 0  for every input i not in const   (and c measured constant)
    unused(c)  <=>  for all q in Q:  W_q[r, j(c)] = 0  for every output r of q not removed
    removed    =    const | unused   (whole GroupNorm groups only; at least one unit per group)

Both sets only grow, so iterating to the fixed point terminates; ``const`` is
:func:`prunekit.structure._units.constant_units` (structural and numerical, see there). A residual join is one group
whose producers are all the branches: a unit dead in one branch only keeps its inputs in the others and stays.
Groups that are frozen (model input/output, unsupported ops) or whose followers mix units (LayerNorm) are skipped
and listed in the report.

:func:`dead_unit_plan` does not change the model; slim it with::

    plan, report = dead_unit_plan(model, x)
    plan, _ = fold_removed_(model, plan, x)   # folds the constants of units with no inputs
    finalize_(model)
    apply_plan_(model, plan)

``nn.MultiheadAttention`` modules are split (:class:`~prunekit.structure.attention.SplitMultiheadAttention`) for the
analysis and put back; the plan's ``split`` names those whose heads it removes, and ``apply_plan_`` splits them
first. Folding needs the model in the form the plan describes: with a non-empty ``plan.split``, call
``split_attention_(model, plan.split)`` (outputs unchanged) before ``fold_removed_``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunekit.structure._units import Example, UnitMap, constant_units, measure_inputs, per_unit
from prunekit.structure.attention import attention_split
from prunekit.structure.from_masks import plan_for_groups, with_temporary_splits
from prunekit.structure.graph import Group, build_groups
from prunekit.structure.plan import PrunePlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupDeadUnits:
    """Dead units of one group (named by its first producer)."""

    group: str
    size: int
    no_inputs: int  # constant: removed, constant folded
    no_outputs: int  # feed nothing: removed

    @property
    def removed(self) -> int:
        return self.no_inputs + self.no_outputs


@dataclass(frozen=True)
class DeadUnitReport:
    """Per-group counts (groups with dead units only), fixed-point rounds, and groups not analysed with the reason."""

    groups: tuple[GroupDeadUnits, ...]
    rounds: int
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def no_inputs(self) -> int:
        return sum(g.no_inputs for g in self.groups)

    @property
    def no_outputs(self) -> int:
        return sum(g.no_outputs for g in self.groups)

    def to_markdown(self) -> str:
        rows = ["| group | units | no inputs | no outputs | removed |", "|---|---:|---:|---:|---:|"]
        rows += [f"| {g.group} | {g.size} | {g.no_inputs} | {g.no_outputs} | {g.removed} |" for g in self.groups]
        return "\n".join(rows)


def _whole_groupnorm_groups(umap: UnitMap, gi: int, dead: Tensor) -> Tensor:
    """``dead`` restricted to GroupNorm normalisation groups that are dead entirely."""
    dead = dead.clone()
    for m in umap.groups[gi].members:
        gn = umap.mods[m.fqn]
        if isinstance(gn, nn.GroupNorm):
            gid = (m.offset + torch.arange(len(dead))) // (gn.num_channels // gn.num_groups)
            for k in gid.unique():
                sel = gid == k
                if not bool(dead[sel].all()):
                    dead[sel] = False
    return dead


def _unused(umap: UnitMap, gi: int, removed: dict[int, Tensor]) -> Tensor:
    """Units of group ``gi`` with no non-zero weight into a non-removed output of any consumer."""
    g = umap.groups[gi]
    out = torch.ones(g.size, dtype=torch.bool)
    for m in g.members:
        if m.role != "consumer":
            continue
        w = umap.weights[m.fqn]
        if w is None:
            return torch.zeros(g.size, dtype=torch.bool)
        rows = ~umap.out_mask(m.fqn, removed)
        cols = w.ne(0).any(-1)[rows.to(w.device)].any(0).cpu()  # (in,): inputs that reach a live output
        out &= ~per_unit(m, cols, g.size).any(1)
    return out


@torch.no_grad()
def dead_unit_plan(
    model: nn.Module, example_input: Example, groups: list[Group] | None = None, tol: float = 1e-6
) -> tuple[PrunePlan, DeadUnitReport]:
    """The plan removing every dead unit (module docstring) and a :class:`DeadUnitReport`; ``model`` is unchanged.

    Zero weights are read from the effective weights, so masks may be attached (either mode) or already baked in.
    Without ``groups``, ``nn.MultiheadAttention`` modules are split for the analysis and put back (module
    docstring); masked ones are left as they are (their heads stay frozen).
    """
    with attention_split(model, enabled=groups is None) as split:
        gs = groups if groups is not None else build_groups(model, example_input)
        plan, report = _dead_unit_plan(model, example_input, gs, tol)
        return with_temporary_splits(model, plan, split), report


def _dead_unit_plan(
    model: nn.Module, example_input: Example, groups: list[Group], tol: float
) -> tuple[PrunePlan, DeadUnitReport]:
    umap = UnitMap(model, groups)
    skipped: list[tuple[str, str]] = []
    for i, g in enumerate(groups):
        if not g.producers:
            continue
        if not g.prunable:
            skipped.append((g.producers[0].fqn, g.reasons[0] if g.reasons else "no producer"))
        elif umap.mixing_followers(i):
            skipped.append((g.producers[0].fqn, f"{umap.mixing_followers(i)[0]} normalises across units"))
    active = [gi for gi in umap.tracked if not umap.mixing_followers(gi)]
    consumers = sorted({m.fqn for gi in active for m in groups[gi].members if m.role == "consumer"})
    const = constant_units(umap, measure_inputs(model, example_input, consumers), tol)

    removed = {gi: torch.zeros(groups[gi].size, dtype=torch.bool) for gi in active}
    unused = {gi: torch.zeros(groups[gi].size, dtype=torch.bool) for gi in active}
    rounds = 0
    while True:
        rounds += 1
        unused = {gi: _unused(umap, gi, removed) for gi in active}
        new = {}
        for gi in active:
            dead = _whole_groupnorm_groups(umap, gi, const[gi] | unused[gi])
            if bool(dead.all()):
                log.warning("every unit of the group of %s is dead; keeping unit 0", groups[gi].producers[0].fqn)
                dead[0] = False
            new[gi] = dead
        if all(torch.equal(new[gi], removed[gi]) for gi in active):
            break
        removed = new

    per_group = []
    for gi in active:
        r = removed[gi]
        if bool(r.any()):
            g = groups[gi]
            no_out = int((r & unused[gi]).sum())
            per_group.append(GroupDeadUnits(g.producers[0].fqn, g.size, int(r.sum()) - no_out, no_out))
    report = DeadUnitReport(tuple(per_group), rounds, tuple(skipped))
    for d in per_group:
        log.info("dead units of %s (%d units): %d with no inputs, %d with no outputs", d.group, d.size, d.no_inputs, d.no_outputs)
    log.info(
        "dead units: %d with no inputs (constants to fold), %d with no outputs, in %d groups after %d rounds; %d groups skipped",
        report.no_inputs,
        report.no_outputs,
        len(per_group),
        rounds,
        len(skipped),
    )
    kept = {gi: (~r).nonzero().flatten() for gi, r in removed.items() if bool(r.any())}
    return plan_for_groups(model, groups, kept), report
