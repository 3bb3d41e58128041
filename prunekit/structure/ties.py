"""Tied weights: one parameter owned by several modules (an input embedding and the output head of a language model).

The dependency graph (:func:`prunekit.structure.graph.build_groups`) lets a tied matrix shrink only along one dim
and in one group (:func:`tied_weight_dim` says which dim an axis slices); :func:`apply_plan_` slices each owner
separately, which would leave two copies, so it notes the ties first (:func:`tied_parameters`) and shares the
result again afterwards (:func:`retie_`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from prunekit.structure.handlers import StructureError, handler_for_or_none

Owner = tuple[str, nn.Module, str]  # (module path, module, parameter name)


def tied_weight_dim(module: nn.Module, axis: Literal["out", "in"]) -> int | None:
    """The dim of ``module.weight`` that ``axis`` slices, for module types whose weight may be tied, else ``None``:
    ``nn.Embedding`` (V, d) has ``out`` = dim 1 and ``in`` (vocabulary) = dim 0; ``nn.Linear`` (out, in) the reverse."""
    if handler_for_or_none(module) is None or not isinstance(module, (nn.Embedding, nn.Linear)):
        return None
    if isinstance(module, nn.Embedding):
        return 1 if axis == "out" else 0
    return 0 if axis == "out" else 1


def tied_parameters(model: nn.Module) -> list[list[Owner]]:
    """Every parameter owned by more than one module, as its owners (in ``named_modules`` order)."""
    owners: dict[int, list[Owner]] = {}
    for fqn, m in model.named_modules(remove_duplicate=False):
        for name, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((fqn, m, name))
    return [o for o in owners.values() if len({id(m) for _, m, _ in o}) > 1]


@torch.no_grad()
def retie_(ties: list[list[Owner]]) -> list[str]:
    """Share each tie's parameter again after its owners were sliced one by one; returns the re-tied paths.

    All owners must hold tensors of one shape and equal values (the same slices of the same matrix); otherwise a
    :class:`StructureError` names them (a plan that slices a tied matrix differently for two owners is malformed).
    """
    done = []
    for owners in ties:
        params = [m._parameters[name] for _, m, name in owners]
        first = params[0]
        if all(p is first for p in params):
            continue
        assert first is not None
        for (fqn, _, name), p in zip(owners, params):
            if p is None or p.shape != first.shape or not torch.equal(p, first):
                where = ", ".join(f"{f}.{n}" for f, _, n in owners)
                raise StructureError(f"tied weight {where}: the plan slices it differently for {fqn}.{name}")
        for _, m, name in owners[1:]:
            m._parameters[name] = first
        done.append(", ".join(f"{f}.{n}" for f, _, n in owners))
    return done
