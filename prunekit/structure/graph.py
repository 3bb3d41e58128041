"""Dependency analysis: which output units, across modules, must be removed together.

The model is traced with ``torch.fx`` and shapes are propagated with an example input
(``torch.fx.passes.shape_prop.ShapeProp``). Every tensor value then carries a *channel space*: which group its
channel dimension belongs to, where that dimension is, and the block size (after ``flatten`` of (N, C, H, W) a
channel is a block of H*W consecutive features). Spaces are merged with a union-find:

* a Linear/Conv/Embedding (a *producer*) starts a new space for its output units;
* pass-through modules (BatchNorm, LayerNorm, GroupNorm, depthwise conv) and element-wise ops (activations,
  dropout, pooling over spatial dims) keep their input's space;
* element-wise binary ops between two tensors (residual ``a + b``, gating ``a * b``) merge both spaces;
* ``flatten``/``view``/``reshape`` that folds the trailing dims into the channel dim multiplies the block size;
* ``torch.cat`` along the channel dim lays the operands' spaces side by side (a value is a sequence of
  segments; members record their ``offset``); along another dim it merges them like ``a + b``;
* a Linear/Conv consuming a value becomes a *consumer* of that value's space(s) (its ``in`` axis).

A space that reaches something we cannot map (model input or output, channel padding or slicing such as option-A
``ZeroPadShortcut``, ``split``/``chunk``, attention head reshapes, reductions over channels, unknown functions or
modules, a weight shared by two modules) is frozen: the :class:`Group` lists the reasons and is not prunable.
The result is a list of :class:`Group`; the handler of each member's module type says which tensors an axis maps to.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from prunekit.masks import module_type_name
from prunekit.structure.handlers import HANDLERS, StructureError, handler_for

Role = Literal["producer", "follower", "consumer"]


@dataclass(frozen=True)
class Member:
    """One module in a group. ``producer``/``follower``: its ``out`` axis; ``consumer``: its ``in`` axis.

    Unit ``c`` of the group is index ``offset + c*block + j`` (``0 <= j < block``) of the member's axis: ``block > 1``
    after a flatten of spatial dims, ``offset > 0`` when the group is not the first input of a ``torch.cat``.
    """

    fqn: str
    role: Role
    block: int = 1
    offset: int = 0

    @property
    def axis(self) -> Literal["out", "in"]:
        return "in" if self.role == "consumer" else "out"


@dataclass(frozen=True)
class Group:
    """Units that must be removed together: ``size`` units shared by every member; ``reasons`` non-empty = frozen."""

    size: int
    members: tuple[Member, ...]
    reasons: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        return not self.reasons and any(m.role == "producer" for m in self.members)

    @property
    def producers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == "producer")


# -- op tables -----------------------------------------------------------------------------------------------

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.ELU, nn.SELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)  # fmt: skip
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_ELEMENTWISE_FUNCS: set[Any] = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.elu, F.mish,
    torch.sigmoid, torch.tanh, F.dropout, torch.nn.functional.dropout2d,
}  # fmt: skip
_SPATIAL_FUNCS: set[Any] = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}  # fmt: skip
_BINARY_FUNCS: set[Any] = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to", "type_as"}
_BINARY_METHODS = {"add", "sub", "mul", "div"}
_RESHAPE_FUNCS: set[Any] = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_SHAPE_METHODS = {"size", "dim"}  # read a tensor, return no tensor


# -- union-find of channel spaces -------------------------------------------------------------------------------


class _Spaces:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.members: list[list[Member]] = []
        self.reasons: list[list[str]] = []

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.members.append([])
        self.reasons.append([])
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            self.reasons[ra].append(f"{where}: joins {self.size[ra]} with {self.size[rb]} channels")
        self.parent[rb] = ra
        self.members[ra] += self.members[rb]
        self.reasons[ra] += self.reasons[rb]
        return ra

    def freeze(self, s: int, reason: str) -> None:
        self.reasons[self.find(s)].append(reason)

    def add(self, s: int, m: Member) -> None:
        self.members[self.find(s)].append(m)


@dataclass(frozen=True)
class _Seg:
    """A run of channels from one space; each channel is ``block`` consecutive entries of the channel dim."""

    space: int
    block: int = 1


@dataclass(frozen=True)
class _Chan:
    """A tensor value's channel dim (non-negative) and its segments in order (several after ``torch.cat``)."""

    segs: tuple[_Seg, ...]
    dim: int


class _Tracer(fx.Tracer):
    """Records the module path being traced, so a tracing failure can name the module it happened in."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module sees the exception first
                self.failed_in = f"{self.stack[-1]}' ({type(m).__name__})"
            raise
        finally:
            self.stack.pop()


def trace(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> fx.GraphModule:
    """FX-trace ``model`` and annotate every node with its output shape; :class:`StructureError` if that fails."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, ...)
        where = f"'{tracer.failed_in}" if tracer.failed_in else "the top-level forward"
        raise StructureError(f"torch.fx cannot trace {type(model).__name__} (failed in {where}): {type(e).__name__}: {e}") from e
    gm = fx.GraphModule(tracer.root, graph)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    modes = [(m, m.training) for m in model.modules()]
    gm.eval()  # no BatchNorm statistics updates, no dropout
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    except Exception as e:
        raise StructureError(f"shape propagation of {type(model).__name__} with the example input failed: {e}") from e
    finally:
        for m, mode in modes:
            m.training = mode
    return gm


def _shape(n: Any) -> tuple[int, ...] | None:
    meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if _shape(a) is not None]


def build_groups(model: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> list[Group]:
    """Coupled channel groups of ``model`` (see the module docstring). Unsupported parts freeze their groups."""
    gm = trace(model, example_input)
    mods = dict(gm.named_modules())
    sp = _Spaces()
    chan: dict[fx.Node, _Chan] = {}
    # (fqn, axis, offset) -> space: a module called twice shares its units
    role_space: dict[tuple[str, str, int], int] = {}

    # a parameter shared by two modules (tied embeddings) cannot be sliced for one of them only
    owners: dict[int, list[str]] = {}
    for fqn, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(fqn)
    shared = {f: [o for o in fs if o != f] for fs in owners.values() if len(fs) > 1 for f in fs}

    def freeze(c: _Chan, why: str) -> None:
        for seg in c.segs:
            sp.freeze(seg.space, why)

    def freeze_inputs(node: fx.Node, why: str) -> None:
        for a in node.all_input_nodes:
            if a in chan:
                freeze(chan[a], f"{_where(node)}: {why}")

    def attach(space: int, member: Member) -> int:
        key = (member.fqn, member.axis, member.offset)
        if key in role_space:
            space = sp.union(role_space[key], space, f"{member.fqn} called more than once")
        else:
            sp.add(space, member)
        role_space[key] = space
        if member.fqn in shared:
            sp.freeze(space, f"{member.fqn} shares a weight with {', '.join(shared[member.fqn])}")
        return space

    def attach_all(c: _Chan, fqn: str, role: Role) -> _Chan:
        """Attach ``fqn`` to every segment of ``c`` at its offset; returns ``c`` with the (merged) spaces."""
        segs, off = [], 0
        for seg in c.segs:
            segs.append(_Seg(attach(seg.space, Member(fqn, role, seg.block, off)), seg.block))
            off += sp.size[sp.find(seg.space)] * seg.block
        return _Chan(tuple(segs), c.dim)

    def width(c: _Chan) -> int:
        return sum(sp.size[sp.find(seg.space)] * seg.block for seg in c.segs)

    def fresh(n: int, dim: int, reason: str | None = None) -> _Chan:
        s = sp.new(n)
        if reason:
            sp.freeze(s, reason)
        return _Chan((_Seg(s),), dim)

    for node in gm.graph.nodes:
        shape = _shape(node)
        ins = _tensor_inputs(node)
        x = ins[0] if ins else None
        cx = chan.get(x) if x is not None else None

        if node.op == "placeholder":
            if shape is not None and len(shape) >= 2:
                chan[node] = fresh(shape[1], 1, f"model input {node.name}")
            continue
        if node.op == "output":
            for a in node.all_input_nodes:
                if a in chan:
                    freeze(chan[a], "model output")
            continue
        if node.op == "get_attr":
            continue

        if node.op == "call_module":
            m = mods[str(node.target)]
            fqn = str(node.target)
            if module_type_name(m) in HANDLERS:
                h = handler_for(m, fqn)
                if len(ins) != 1 or shape is None:
                    freeze_inputs(node, f"{fqn} called with {len(ins)} tensor inputs")
                    continue
                in_shape = _shape(x)
                assert in_shape is not None
                cdim = h.channel_dim(m) % len(shape)
                if isinstance(m, nn.Embedding):
                    s = attach(sp.new(h.num_out(m)), Member(fqn, "producer"))
                    chan[node] = _Chan((_Seg(s),), cdim)
                    continue
                ok = cx is not None and cx.dim == h.channel_dim(m) % len(in_shape) and width(cx) == h.num_in(m)
                if h.passthrough(m):
                    if ok and cx is not None and all(seg.block == 1 for seg in cx.segs):
                        chan[node] = _Chan(attach_all(cx, fqn, "follower").segs, cdim)
                    else:
                        freeze_inputs(node, f"{fqn}: channel layout not understood")
                        c = fresh(h.num_out(m), cdim, f"{fqn}: input channel layout not understood")
                        chan[node] = attach_all(c, fqn, "follower")
                    continue
                # producer + consumer (Linear, Conv)
                if cx is not None:
                    if ok and (h.channel_dim(m) == -1 or all(seg.block == 1 for seg in cx.segs)):
                        attach_all(cx, fqn, "consumer")
                    else:
                        freeze(cx, f"{_where(node)}: consumes channel dim {cx.dim} in a layout not understood")
                s = attach(sp.new(h.num_out(m)), Member(fqn, "producer"))
                chan[node] = _Chan((_Seg(s),), cdim)
                continue
            if isinstance(m, _ELEMENTWISE_MODULES) and cx is not None and len(ins) == 1:
                if isinstance(m, nn.PReLU) and m.num_parameters > 1:
                    freeze_inputs(node, f"{fqn}: PReLU with per-channel weights has no handler")
                chan[node] = cx
                continue
            if isinstance(m, _SPATIAL_MODULES) and cx is not None and len(ins) == 1:
                if cx.dim == 1 and all(seg.block == 1 for seg in cx.segs):
                    chan[node] = cx
                else:
                    freeze_inputs(node, f"{fqn}: pooling over the channel dim")
                continue
            if isinstance(m, nn.Flatten) and cx is not None:
                _reshape(node, cx, x, shape, chan, sp)
                continue
            freeze_inputs(node, f"{fqn}: {module_type_name(m)} has no structure handler or rule")
            continue

        # call_function / call_method
        t = node.target
        if node.op == "call_method" and t in _SHAPE_METHODS:
            continue
        if node.op == "call_function" and t is getattr and cx is not None:
            if node.args[1] not in ("shape", "dtype", "device"):
                freeze_inputs(node, f"getattr {node.args[1]}")
            continue
        if shape is None:
            freeze_inputs(node, f"{t}: non-tensor result")
            continue
        is_fn = node.op == "call_function"
        name = getattr(t, "__name__", str(t))
        if (is_fn and t in _ELEMENTWISE_FUNCS) or (not is_fn and t in _ELEMENTWISE_METHODS):
            if len(ins) == 1 and cx is not None:
                chan[node] = cx
            elif ins:
                freeze_inputs(node, f"{name} with several tensor inputs")
            continue
        if is_fn and t in _SPATIAL_FUNCS:
            if cx is not None and cx.dim == 1 and all(seg.block == 1 for seg in cx.segs):
                chan[node] = cx
            else:
                freeze_inputs(node, f"{name}: pooling over the channel dim")
            continue
        if (is_fn and t in _BINARY_FUNCS) or (not is_fn and t in _BINARY_METHODS):
            _binary(node, ins, shape, chan, sp, name)
            continue
        if ((is_fn and t in _RESHAPE_FUNCS) or (not is_fn and t in _RESHAPE_METHODS)) and cx is not None:
            _reshape(node, cx, x, shape, chan, sp)
            continue
        if is_fn and t is torch.cat:
            _cat(node, shape, chan, sp, fresh)
            continue
        if is_fn and t is operator.getitem:
            freeze_inputs(node, "indexing/slicing a tensor is not mapped to channels")
        elif is_fn and t is F.pad:
            freeze_inputs(node, "padding is not mapped to channels")
        elif ins:
            freeze_inputs(node, f"{node.op} {name} has no structure rule")

    roots = sorted({sp.find(i) for i in range(len(sp.parent))})
    groups = []
    for r in roots:
        members = tuple(dict.fromkeys(sp.members[r]))
        if members:
            groups.append(Group(sp.size[r], members, tuple(dict.fromkeys(sp.reasons[r]))))
    return groups


def _where(node: fx.Node) -> str:
    """``node_name in module.path (Type)`` for reasons."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, cls = list(stack.values())[-1]
        return f"{node.name} in {path} ({getattr(cls, '__name__', cls)})"
    return node.name


def _reshape(
    node: fx.Node, cx: _Chan, x: fx.Node | None, shape: tuple[int, ...] | None, chan: dict[fx.Node, _Chan], sp: _Spaces
) -> None:
    """Folding the dims after the channel dim into it: every channel becomes a block of their product."""
    in_shape = _shape(x)
    if in_shape is None or shape is None:
        for seg in cx.segs:
            sp.freeze(seg.space, f"{_where(node)}: reshape with unknown shapes")
        return
    if in_shape == shape:
        chan[node] = cx
        return
    d = cx.dim
    if len(shape) == d + 1 and shape[:d] == in_shape[:d] and shape[d] == math.prod(in_shape[d:]):
        inner = math.prod(in_shape[d + 1 :])
        chan[node] = _Chan(tuple(_Seg(seg.space, seg.block * inner) for seg in cx.segs), d)
        return
    for seg in cx.segs:
        sp.freeze(seg.space, f"{_where(node)}: reshape {in_shape} -> {shape} splits or moves the channel dim")


def _join(a: _Chan, b: _Chan, sp: _Spaces, where: str) -> tuple[_Seg, ...] | None:
    """Merge two values whose channels are added/multiplied/concatenated side by side, segment by segment."""
    if len(a.segs) != len(b.segs) or any(
        x.block != y.block or sp.size[sp.find(x.space)] != sp.size[sp.find(y.space)] for x, y in zip(a.segs, b.segs)
    ):
        for seg in a.segs + b.segs:
            sp.freeze(seg.space, f"{where}: operands' channel segments do not line up")
        return None
    return tuple(_Seg(sp.union(x.space, y.space, where), x.block) for x, y in zip(a.segs, b.segs))


def _binary(
    node: fx.Node, ins: list[fx.Node], shape: tuple[int, ...], chan: dict[fx.Node, _Chan], sp: _Spaces, name: str
) -> None:
    """Element-wise op: tensors carrying channels merge their spaces; broadcast constants must not vary by channel."""
    carried = [a for a in ins if a in chan]
    if not carried:
        return
    where = f"{_where(node)} ({name})"
    nd = len(shape)
    offs = {a: nd - len(_shape(a) or ()) for a in ins}  # dims align from the right under broadcasting
    first = chan[carried[0]]
    out_dim = first.dim + offs[carried[0]]
    segs: tuple[_Seg, ...] | None = first.segs
    for a in ins:
        c = chan.get(a)
        if c is None:
            s = _shape(a) or ()
            k = out_dim - offs[a]
            if 0 <= k < len(s) and s[k] != 1:
                for seg in first.segs:
                    sp.freeze(seg.space, f"{where} with a tensor that varies along the channel dim")
            continue
        if a is carried[0] or segs is None:
            continue
        if c.dim + offs[a] != out_dim:
            for seg in first.segs + c.segs:
                sp.freeze(seg.space, f"{where}: operands' channel dims do not line up")
            continue
        segs = _join(_Chan(segs, out_dim), c, sp, where)
    if segs is not None:
        chan[node] = _Chan(segs, out_dim)


def _cat(node: fx.Node, shape: tuple[int, ...], chan: dict[fx.Node, _Chan], sp: _Spaces, fresh: Callable[..., _Chan]) -> None:
    """``torch.cat`` along the channel dim stacks segments (offsets); along another dim it joins like ``a + b``."""
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    where = f"{_where(node)} (cat)"
    if not isinstance(parts, (list, tuple)) or not isinstance(dim, int) or not all(isinstance(p, fx.Node) for p in parts):
        for a in node.all_input_nodes:
            if a in chan:
                for seg in chan[a].segs:
                    sp.freeze(seg.space, f"{where}: arguments not understood")
        return
    dim %= len(shape)
    carried = [chan[p] for p in parts if p in chan]
    cdims = {c.dim for c in carried}
    if len(cdims) != 1:
        for c in carried:
            for seg in c.segs:
                sp.freeze(seg.space, f"{where}: operands' channel dims do not line up")
        return
    (cdim,) = cdims
    if cdim != dim:  # e.g. along time or space: the channels of all operands coincide
        segs: tuple[_Seg, ...] | None = carried[0].segs
        for c in carried[1:]:
            if segs is not None:
                segs = _join(_Chan(segs, cdim), c, sp, where)
        if segs is not None:
            chan[node] = _Chan(segs, cdim)
        return
    out: list[_Seg] = []
    for p in parts:
        cp = chan.get(p)
        if cp is None:  # a tensor of unknown origin: its channels form a frozen segment
            ps = _shape(p)
            assert ps is not None
            cp = fresh(ps[dim], dim, f"{where}: operand {p.name} has no known channels")
        out += cp.segs
    chan[node] = _Chan(tuple(out), dim)
