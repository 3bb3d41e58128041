"""Depth pruning: remove whole residual blocks / transformer layers, scored by their influence on the hidden states.

A removed block is replaced by a :class:`~prunekit.structure.skip.SkipBlock` returning its first input (a
``depth`` entry of :class:`~prunekit.structure.plan.PrunePlan`, replayed by
:func:`~prunekit.structure.plan.apply_plan_` like any other entry). Exactness: a residual block computing
``x + f(x)`` (a pre-norm transformer layer, ``x + attn(norm(x))`` then ``+ mlp(norm(.))``) is removed exactly iff
``f(x) = 0``, e.g. when its output projections (``o_proj``, ``down_proj``) are pruned to zero; a ResNet basic block
``relu(x + F(x))`` iff ``F(x) = 0`` (its last BatchNorm's ``gamma`` and ``beta`` zero) and ``x >= 0`` (``x`` comes
out of a ReLU). Otherwise (a post-norm layer such as BERT's, ``norm(x + f(x))``, is never an identity; any block
with ``f(x) != 0``) removal changes the outputs and is meant to be followed by fine-tuning. A block that changes
the shape of its input (a downsampling block) cannot be replaced.

Combining with unit removal: depth first, then the unit plan computed on the shallower model (its dependency
groups no longer contain the removed blocks); :func:`prunekit.structure.persist.compose_plans` joins the two plans
into one that replays on the original architecture.

Block influence, after ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than
You Expect", https://arxiv.org/abs/2403.03853, eq. 1): with ``X_i`` the hidden states entering block ``i`` and
``X_{i+1}`` those leaving it, ``x_t`` the vector of token (or position) ``t`` along the hidden dimension,

    BI_i = 1 - E_t [ <X_{i,t}, X_{i+1,t}> / (||X_{i,t}||_2 ||X_{i+1,t}||_2) ]

(``metric="cosine"``; 0 when the block leaves every token's direction unchanged). ``metric="relative"`` is the
relative change ``||X_{i+1} - X_i||_F / ||X_i||_F``, i.e. ``||f(x)|| / ||x||`` for a residual block (0 iff the
block is an identity on the input). ShortGPT removes the layers with the lowest BI (:func:`lowest_influence`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunekit.masks import module_type_name
from prunekit.structure._units import Example, eval_mode, run_model
from prunekit.structure.handlers import StructureError
from prunekit.structure.plan import DepthEntry, PrunePlan
from prunekit.structure.skip import SkipBlock

log = logging.getLogger(__name__)

Inputs = Example
Metric = Literal["cosine", "relative"]


@dataclass
class _Seen:
    """What one block received and returned on the example input (first call only)."""

    x: Tensor | None = None
    y: Tensor | None = None
    output: str = "none"  # "tensor", "tuple" or the name of an unsupported type
    length: int = 1


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    x = args[0] if args else kwargs.get("hidden_states")
    return x if isinstance(x, Tensor) else None


@torch.no_grad()
def _observe(model: nn.Module, inputs: Inputs, names: Sequence[str]) -> dict[str, _Seen]:
    """Run ``model`` once (eval mode) and record each named block's first input and output."""
    seen = {n: _Seen() for n in names}

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            s = seen[name]
            if s.x is not None:
                return
            s.x = _first_input(args, kwargs)
            if isinstance(out, Tensor):
                s.y, s.output = out, "tensor"
            elif isinstance(out, tuple) and out and isinstance(out[0], Tensor):
                s.y, s.output, s.length = out[0], "tuple", len(out)
            else:
                s.output = type(out).__name__

        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True) for n in names]
    try:
        with eval_mode(model):
            run_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _stacks(model: nn.Module) -> list[str]:
    """Children of ``ModuleList``/``Sequential`` containers holding two or more modules of one class."""
    out = []
    for fqn, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)):
            kids = list(m.named_children())
            if len(kids) >= 2 and len({type(k) for _, k in kids}) == 1 and not isinstance(kids[0][1], SkipBlock):
                out += [f"{fqn}.{n}" if fqn else n for n, _ in kids]
    return out


def _replaceable(s: _Seen) -> bool:
    return s.x is not None and s.y is not None and s.output in ("tensor", "tuple") and s.x.shape == s.y.shape


def block_candidates(model: nn.Module, inputs: Inputs) -> list[str]:
    """Blocks that can be removed: members of repeated stacks (a ``ModuleList``/``Sequential`` of two or more modules
    of one class: ResNet stages, transformer layer lists) that have parameters and return a tensor (or a tuple
    starting with one) of their first input's shape; nested candidates (inside another) are dropped."""
    names = [n for n in _stacks(model) if any(True for _ in model.get_submodule(n).parameters())]
    seen = _observe(model, inputs, names)
    ok = [n for n in names if _replaceable(seen[n])]
    return [n for n in ok if not any(n.startswith(o + ".") for o in ok)]


def _influence(x: Tensor, y: Tensor, metric: Metric, dim: int) -> float:
    x, y = x.detach().double(), y.detach().double()
    if metric == "relative":
        nx = float(x.norm())
        return float((y - x).norm()) / nx if nx > 0 else (0.0 if bool(torch.equal(x, y)) else math.inf)
    dot = (x * y).sum(dim)
    norms = x.norm(dim=dim) * y.norm(dim=dim)
    cos = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
    cos = torch.where((x == y).all(dim), torch.ones_like(cos), cos)  # unchanged (also all-zero) tokens: cos = 1
    return float(1 - cos.mean())


def block_influence(
    model: nn.Module,
    inputs: Inputs,
    blocks: Sequence[str] | None = None,
    metric: Metric = "cosine",
    dim: int | None = None,
) -> dict[str, float]:
    """Block influence of each block on ``inputs`` (module docstring), in model order.

    ``blocks`` defaults to :func:`block_candidates`. ``dim``: the hidden dimension the cosine runs along; by default
    the last one for 2-D/3-D hidden states (tokens ``(B, T, D)``) and dim 1 for 4-D/5-D feature maps (``(N, C, H, W)``:
    every position is a token).
    """
    names = list(blocks) if blocks is not None else block_candidates(model, inputs)
    seen = _observe(model, inputs, names)
    out = {}
    for n in names:
        s = seen[n]
        if not _replaceable(s):
            raise StructureError(_why_not(n, model, s))
        assert s.x is not None and s.y is not None
        d = dim if dim is not None else (1 if s.x.dim() >= 4 else -1)
        out[n] = _influence(s.x, s.y, metric, d)
    log.info("block influence (%s): %s", metric, ", ".join(f"{k} {v:.4g}" for k, v in out.items()))
    return out


def lowest_influence(scores: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` blocks with the lowest influence (ties: the earlier block), in model order."""
    if not 0 <= k <= len(scores):
        raise StructureError(f"cannot remove {k} of {len(scores)} blocks")
    order = list(scores)
    picked = set(sorted(order, key=lambda n: (scores[n], order.index(n)))[:k])
    return [n for n in order if n in picked]


def _why_not(name: str, model: nn.Module, s: _Seen) -> str:
    what = f"block {name!r} ({module_type_name(model.get_submodule(name))})"
    if s.x is None:
        return f"{what} was not called with a tensor input on the example input"
    if s.output not in ("tensor", "tuple"):
        return f"{what} returns {s.output}; only a tensor or a tuple starting with the hidden states can be skipped"
    assert s.y is not None
    return f"{what} maps {tuple(s.x.shape)} to {tuple(s.y.shape)}; an identity cannot replace it"


def depth_plan(model: nn.Module, blocks: Sequence[str], inputs: Inputs) -> PrunePlan:
    """The plan replacing ``blocks`` by identities; the example ``inputs`` tell what each block returns.

    A block that is missing, never called, or changes its input's shape raises a :class:`StructureError`.
    """
    mods = dict(model.named_modules())
    for n in blocks:
        if n not in mods or not n:
            raise StructureError(f"the model has no block {n!r}")
    seen = _observe(model, inputs, blocks)
    entries = []
    for n in blocks:
        s = seen[n]
        if not _replaceable(s):
            raise StructureError(_why_not(n, model, s))
        entries.append(DepthEntry(n, module_type_name(mods[n]), "tensor" if s.output == "tensor" else "tuple", s.length))
    return PrunePlan(depth=tuple(entries))
