"""Reference for structural removal in tests and benchmarks: the dense model with the removed units zeroed."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from prunekit.structure.from_masks import plan_for_groups
from prunekit.structure.graph import Group, Tracing, build_groups
from prunekit.structure.handlers import StructureError, handler_for, model_tensor
from prunekit.structure.plan import PrunePlan, apply_plan_


@torch.no_grad()
def zero_removed_units(model: nn.Module, groups: Sequence[Group], kept: Mapping[int, Tensor]) -> nn.Module:
    """A copy of ``model`` with the structured mask applied: for every group ``i`` in ``kept``, the output slices of
    its producers and followers at the removed units are zeroed (weight along the handler's unit dim, and bias), and
    so are the slices of its ``param`` members along their ``dim`` (a layer scale, a class token, position
    embeddings, the rows of a fused expert weight such as Mixtral's ``gate_up_proj``, both halves), so a removed
    unit is zero everywhere, as in the slimmed model where it does not exist. Consumers, modules or tensors (the
    columns of ``down_proj``), are left alone: they read zeros there.

    For groups without a unit-mixing follower (LayerNorm, RMSNorm) the copy computes what the physically slimmed
    model computes, which is how exactness is checked.
    """
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    for i, k in kept.items():
        g = groups[i]
        dead = torch.ones(g.size, dtype=torch.bool)
        dead[k] = False
        gone = dead.nonzero().flatten()
        for m in g.members:
            if m.part == "consumer":
                continue
            idx = m.offset + (gone[:, None] * m.block + torch.arange(m.block)[None, :]).flatten()
            if m.role == "param":
                found = model_tensor(ref, m.fqn)
                if found is None or m.dim is None:
                    raise StructureError(f"group member {m.fqn!r} is not a parameter or buffer of the model")
                found[2].index_fill_(m.dim, idx.to(found[2].device), 0.0)
                continue
            mod = mods[m.fqn]
            d = handler_for(mod, m.fqn).unit_dim(mod)
            w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
            if isinstance(w, Tensor):
                w.index_fill_(0 if d is None or w.dim() == 1 else d, idx, 0.0)
            if isinstance(b, Tensor):
                b.index_fill_(0, idx, 0.0)
    return ref


def halve_exactly(model: nn.Module, x: Tensor, tracer: Tracing = "auto") -> tuple[list[Group], PrunePlan, nn.Module]:
    """Remove a random half of every prunable group of ``model`` (in eval mode); assert the zeroed reference
    (:func:`zero_removed_units`) equals the slim model and that parameters went down. Returns (groups, plan, slim)."""
    model.eval()
    groups = build_groups(model, x, tracer=tracer)
    gen = torch.Generator().manual_seed(1)
    kept = {
        i: torch.randperm(g.size, generator=gen)[: g.size // 2].sort().values
        for i, g in enumerate(groups)
        if g.prunable and g.size > 1
    }
    ref = zero_removed_units(model, groups, kept)
    plan = plan_for_groups(model, groups, kept)
    slim = apply_plan_(copy.deepcopy(model), plan)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), ref(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    return groups, plan, slim


def assert_replays(build: Callable[[], nn.Module], slim: nn.Module, plan: PrunePlan, x: Tensor) -> None:
    """The JSON plan replays on a freshly built model, which then loads the slim weights strictly (same outputs)."""
    text = plan.to_json()
    assert PrunePlan.from_json(text) == plan
    fresh = apply_plan_(build().eval(), PrunePlan.from_json(text))
    fresh.load_state_dict(slim.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), slim(x), rtol=0, atol=0)
