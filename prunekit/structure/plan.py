"""``PrunePlan``: a JSON-serialisable, replayable list of unit removals, and :func:`apply_plan_`, the only mutation.

Granularity: one entry per (module, axis), not per tensor. An entry says "module ``fqn`` had ``size`` units on
its ``out`` (or ``in``) axis and keeps ``kept``"; the module's handler (:mod:`prunekit.structure.handlers`) maps
that to every tensor it touches (weight dim 0 or 1, bias, BatchNorm running stats, grouped-conv per-group columns)
and to the module attributes. A per-tensor plan could leave a module half-pruned (weight sliced, bias not,
``out_features`` stale); :meth:`PrunePlan.tensor_view` lists the per-tensor effect for inspection.

``size`` makes replay safe: applying a plan to a model whose module does not have ``size`` units on that axis
(e.g. a plan applied twice) raises before anything is changed.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from prunekit.masks import masked_params
from prunekit.structure.handlers import StructureError, handler_for

Axis = Literal["out", "in"]
AXES: tuple[Axis, ...] = ("out", "in")
PLAN_VERSION = 1


class PlanError(StructureError):
    """A plan is malformed or does not fit the model; the message names the entry."""


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
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise PlanError(f"{where} ({self.module}.{self.axis}): 'size' must be a positive integer, got {self.size!r}")
        k = self.kept
        if not k:
            raise PlanError(f"{where} ({self.module}.{self.axis}): 'kept' is empty; at least one unit must stay")
        if any(not isinstance(i, int) or isinstance(i, bool) for i in k):
            raise PlanError(f"{where} ({self.module}.{self.axis}): 'kept' must hold integers")
        if any(b <= a for a, b in itertools.pairwise(k)) or k[0] < 0 or k[-1] >= self.size:
            raise PlanError(
                f"{where} ({self.module}.{self.axis}): 'kept' must be strictly increasing indices in [0, {self.size})"
            )

    @property
    def removed(self) -> int:
        return self.size - len(self.kept)


@dataclass(frozen=True)
class PrunePlan:
    """An ordered tuple of :class:`PlanEntry`; ``(module, axis)`` pairs are unique."""

    entries: tuple[PlanEntry, ...] = ()

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for i, e in enumerate(self.entries):
            e.validate(f"plan entry {i}")
            if (e.module, e.axis) in seen:
                raise PlanError(f"plan entry {i} ({e.module}.{e.axis}): duplicate module/axis")
            seen.add((e.module, e.axis))

    def __len__(self) -> int:
        return len(self.entries)

    # -- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "entries": [{"module": e.module, "axis": e.axis, "size": e.size, "kept": list(e.kept)} for e in self.entries],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: object) -> PrunePlan:
        if not isinstance(data, dict):
            raise PlanError(f"plan must be a JSON object, got {type(data).__name__}")
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {data.get('version')!r}; this prunekit reads version {PLAN_VERSION}")
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
        return cls(tuple(entries))

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e}") from None
        return cls.from_dict(data)

    # -- inspection --------------------------------------------------------------------------------------
    def tensor_view(self, model: nn.Module) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
        """``(tensor name, shape before, shape after)`` for every parameter/buffer the plan changes.

        Computed by applying the plan to a deep copy, so it is exactly what :func:`apply_plan_` would do;
        ``model`` is not changed.
        """
        before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        after = {k: tuple(v.shape) for k, v in apply_plan_(copy.deepcopy(model), self).state_dict().items()}
        return [(k, before[k], after[k]) for k in before if after.get(k) != before[k]]


def _check(model: nn.Module, plan: PrunePlan) -> list[tuple[nn.Module, PlanEntry]]:
    mods = dict(model.named_modules())
    masked = {mp.fqn for mp in masked_params(model)}
    out = []
    for i, e in enumerate(plan.entries):
        where = f"plan entry {i} ({e.module}.{e.axis})"
        m = mods.get(e.module)
        if m is None:
            raise PlanError(f"{where}: the model has no module {e.module!r}")
        if e.module in masked:
            raise PlanError(f"{where}: module carries prunekit masks; call prunekit.masks.finalize_(model) before slimming")
        h = handler_for(m, e.module)
        have = h.num_out(m) if e.axis == "out" else h.num_in(m)
        if have != e.size:
            raise PlanError(f"{where}: plan expects {e.size} units, the module has {have} (plan already applied?)")
        out.append((m, e))
    return out


def _apply_entries(module: nn.Module, entries: list[PlanEntry]) -> None:
    h = handler_for(module, entries[0].module)
    for i, e in enumerate(entries):
        if i and h.passthrough(module):  # out and in are one axis: change it once
            continue
        kept = torch.tensor(e.kept, dtype=torch.long)
        (h.prune_out if e.axis == "out" else h.prune_in)(module, kept)


@torch.no_grad()
def apply_plan_(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """Remove the plan's units from ``model`` in place; returns ``model``.

    All or nothing: every entry is checked against the model, and each module's removals are first rehearsed on
    a copy of that module (so a handler's refusal, e.g. a GroupNorm group split in two, leaves the model
    untouched). Pass-through modules (BatchNorm, depthwise conv), whose ``out`` and ``in`` are the same axis, are
    changed once even if the plan names both.
    """
    by_module: dict[int, tuple[nn.Module, list[PlanEntry]]] = {}
    for m, e in _check(model, plan):
        by_module.setdefault(id(m), (m, []))[1].append(e)
    for m, entries in by_module.values():
        _apply_entries(copy.deepcopy(m), entries)
    for m, entries in by_module.values():
        _apply_entries(m, entries)
    return model


def merge_plans(plans: Iterable[PrunePlan]) -> PrunePlan:
    """Concatenate plans over disjoint (module, axis) pairs."""
    return PrunePlan(tuple(e for p in plans for e in p.entries))
