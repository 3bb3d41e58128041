"""Reference for structural removal in tests and benchmarks: the dense model with the removed units zeroed."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from prunekit.structure.graph import Group
from prunekit.structure.handlers import StructureError, handler_for, model_tensor


@torch.no_grad()
def zero_removed_units(model: nn.Module, groups: Sequence[Group], kept: Mapping[int, Tensor]) -> nn.Module:
    """A copy of ``model`` with the structured mask applied: for every group ``i`` in ``kept``, the output slices of
    its producers and followers at the removed units are zeroed (weight along the handler's unit dim, and bias), and
    so are the slices of its ``param`` members (a layer scale, a class token, position embeddings) along their
    ``dim``, so a removed unit is zero everywhere, as in the slimmed model where it does not exist.

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
            if m.role == "consumer":
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
