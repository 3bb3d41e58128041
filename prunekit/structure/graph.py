"""Dependency analysis: which output units, across modules, must be removed together.

The model's dataflow comes from ``torch.fx`` tracing with shapes propagated on an example input
(``torch.fx.passes.shape_prop.ShapeProp``) or, where fx cannot trace (Hugging Face models, dict inputs and
outputs, data-dependent control flow), from recording one forward pass (:mod:`prunekit.structure.record`).
Every tensor value then carries a *channel space*: which group its channel dimension belongs to, where that
dimension is, and the block size (after ``flatten`` of (N, C, H, W) a channel is a block of H*W consecutive
features). Spaces are merged with a weighted union-find (:class:`_Spaces`):

* a Linear/Conv/Embedding (a *producer*) starts a new space for its output units;
* pass-through modules (BatchNorm, LayerNorm, RMSNorm, GroupNorm, depthwise conv) and element-wise ops
  (activations, dropout, pooling over spatial dims) keep their input's space;
* element-wise binary ops between two tensors (residual ``a + b``, gating ``a * b``) merge both spaces;
* ``flatten``/``view``/``reshape`` that folds the trailing dims into the channel dim multiplies the block size;
  one that splits the channel dim into (heads, head_dim) makes a unit a whole head (the space is coarsened);
* ``transpose``/``permute``/``unsqueeze``/indexing that leaves the channel dim whole move it; reductions and
  softmax over other dims keep it;
* ``q @ k.transpose(-2, -1)``, ``attn @ v`` and ``scaled_dot_product_attention`` pair the heads of their
  operands (under grouped-query attention a unit becomes a key/value head with its query heads);
* ``torch.cat`` along the channel dim lays the operands' spaces side by side (a value is a sequence of
  segments; members record their ``offset``); along another dim it merges them like ``a + b``; ``split``/``chunk``
  undo a cat, or cut a fused producer (GPT-2's ``c_attn``) into one space per piece;
* a Linear/Conv consuming a value becomes a *consumer* of that value's space(s) (its ``in`` axis);
* a parameter or buffer of the model used outside a handled module (ConvNeXt's layer scale ``gamma * x``, ViT's
  class token ``torch.cat((cls, x), 1)`` and position embeddings ``x + pos``, a ``(C, 1, 1)`` conv scale), directly
  or through views (``expand``, ``unsqueeze``, ``[None, :, None]``, casts, element-wise functions), that meets a
  channel-carrying value in an element-wise op or a ``torch.cat`` along another dim and varies along the channel dim
  becomes a ``param`` member: its path is the member's ``fqn`` and it is sliced with the group along the dim it
  couples (``Member.dim``). A plan names that dim only implicitly, by the size (:func:`~prunekit.structure.
  handlers.tensor_dim`: the last dim of that size), so the space is frozen when the coupled dim is not that one,
  when the tensor is used anywhere in a way not mapped (a matmul, the model output, a broadcast over the channels),
  belongs to a handled module, or is registered under two names.

A space that reaches something we cannot map (model input or output, channel padding or slicing such as option-A
``ZeroPadShortcut``, reductions over channels, unknown functions or modules, a weight shared by two modules, a
constant that varies along the channels) is
frozen: the :class:`Group` lists the reasons and is not prunable, and those dims are left untouched. That includes
``nn.MultiheadAttention``, which computes every head in one fused call; the reason says to split it first with
:func:`prunekit.structure.attention.split_attention_` (separate q/k/v/out Linears, the same outputs). The result
is a list of :class:`Group`; the handler of each member's module type says which tensors an axis maps to.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from prunekit.masks import module_type_name
from prunekit.structure.attention import SPLIT_ADVICE
from prunekit.structure.handlers import StructureError, handler_for_or_none, tensor_aliases, tensor_dim
from prunekit.structure.record import record_graph
from prunekit.structure.ties import tied_weight_dim

log = logging.getLogger(__name__)
Tracing = Literal["auto", "fx", "record"]

ModuleRole = Literal["producer", "follower", "consumer"]
Role = Literal["producer", "follower", "consumer", "param"]


@dataclass(frozen=True)
class Member:
    """One module or tensor in a group. ``producer``/``follower``: the module's ``out`` axis; ``consumer``: its
    ``in`` axis; ``param``: a parameter or buffer of the model (``fqn`` is its path, e.g.
    ``encoder.stages.0.layers.0.layer_scale_parameter``), used outside any handled module, whose dim ``dim`` (of
    size ``tensor.shape[dim]``, always the last dim of that size) carries the units; its axis is called ``out``.

    Unit ``c`` of the group is index ``offset + c*block + j`` (``0 <= j < block``) of the member's axis: ``block > 1``
    after a flatten of spatial dims, ``offset > 0`` when the group is not the first input of a ``torch.cat``.
    ``dim`` is ``None`` for module members.
    """

    fqn: str
    role: Role
    block: int = 1
    offset: int = 0
    dim: int | None = None

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

    @property
    def params(self) -> tuple[Member, ...]:
        """Members that are parameters or buffers (role ``param``), not modules."""
        return tuple(m for m in self.members if m.role == "param")


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
    torch.sigmoid, torch.tanh, F.dropout, torch.nn.functional.dropout2d, torch.exp, torch.rsqrt, torch.sqrt,
    torch.neg, torch.abs, torch.erf, torch.square, torch.pow, torch.clamp, F.softplus, F.hardtanh, torch.where,
}  # fmt: skip
_SPATIAL_FUNCS: set[Any] = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}  # fmt: skip
_BINARY_FUNCS: set[Any] = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul}
# element-wise methods; with several tensor operands (pow(t), masked_fill(mask)) they follow the binary rule
_ELEMENTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "half", "bfloat16", "double", "to",
    "type_as", "neg", "pow", "exp", "sqrt", "rsqrt", "abs", "erf", "square", "clamp", "clamp_min", "masked_fill",
    "type", "sin", "cos", "reciprocal",
}  # fmt: skip
_FIRST_OPERAND_METHODS = {"type_as", "to", "view_as", "reshape_as", "expand_as"}
_BINARY_METHODS = {"add", "sub", "mul", "div"}
_RESHAPE_FUNCS: set[Any] = {torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "unsqueeze", "squeeze"}
_SPLIT_FUNCS: set[Any] = {torch.split, torch.chunk}
_SPLIT_METHODS = {"split", "chunk"}
_REDUCTIONS = {"softmax", "log_softmax", "mean", "sum", "amax", "amin", "var", "std", "norm", "logsumexp", "prod"}
_SHAPE_METHODS = {"size", "dim"}  # read a tensor, return no tensor


# -- union-find of channel spaces -------------------------------------------------------------------------------


class _Spaces:
    """Union-find of channel spaces, *weighted*: a space may be coarser than a space merged into it.

    ``ratio[i]`` is how many units of node ``i`` make one unit of its parent. Attention coarsens spaces: after
    ``view(B, S, H, head_dim)`` a unit of the ``q_proj`` output space is a head (``head_dim`` consecutive
    features), and under grouped-query attention a key/value head serves several query heads, so the query space
    is coarsened once more to whole key/value groups. A member or a value segment keeps the node it was attached
    to; its block in units of the root is its own block times ``scale(node)``.
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.ratio: list[int] = []
        self.size: list[int] = []
        self.members: list[list[tuple[int, Member]]] = []
        self.reasons: list[list[str]] = []

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.ratio.append(1)
        self.size.append(size)
        self.members.append([])
        self.reasons.append([])
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        path = []
        while self.parent[s] != s:
            path.append(s)
            s = self.parent[s]
        acc = 1
        for n in reversed(path):  # nearest the root first: accumulate units-per-root-unit outwards
            acc *= self.ratio[n]
            self.ratio[n], self.parent[n] = acc, s
        return s

    def scale(self, s: int) -> int:
        """Units of node ``s`` per unit of its root."""
        return 1 if self.find(s) == s else self.ratio[s]

    def eff(self, seg: _Seg) -> tuple[int, int]:
        """(root, entries per root unit) of a value segment."""
        return self.find(seg.space), seg.block * self.scale(seg.space)

    def _link(self, child: int, root: int, ratio: int) -> int:
        self.parent[child], self.ratio[child] = root, ratio
        self.members[root] += self.members[child]
        self.reasons[root] += self.reasons[child]
        self.members[child], self.reasons[child] = [], []
        return root

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            self.reasons[ra].append(f"{where}: joins {self.size[ra]} with {self.size[rb]} channels")
        return self._link(rb, ra, 1)

    def union_scaled(self, fine: int, coarse: int, f: int, where: str) -> int:
        """Merge so that one unit of ``coarse`` is ``f`` consecutive units of ``fine``; returns the root."""
        rf, rc = self.find(fine), self.find(coarse)
        if rf == rc:
            if self.scale(fine) != f * self.scale(coarse):
                self.reasons[rf].append(f"{where}: inconsistent unit sizes")
            return rf
        if self.size[rf] != f * self.size[rc]:
            self.reasons[rc].append(f"{where}: {self.size[rf]} units cannot form {self.size[rc]} groups of {f}")
        return self._link(rf, rc, f)

    def coarsen(self, s: int, f: int) -> int:
        """A new root whose unit is ``f`` consecutive units of ``s``'s root."""
        r = self.find(s)
        c = self.new(self.size[r] // f)
        return self._link(r, c, f)

    def freeze(self, s: int, reason: str) -> None:
        self.reasons[self.find(s)].append(reason)

    def add(self, s: int, m: Member) -> None:
        self.members[self.find(s)].append((s, m))

    def resolved_members(self, root: int) -> tuple[Member, ...]:
        out = [Member(m.fqn, m.role, m.block * self.scale(node), m.offset, m.dim) for node, m in self.members[root]]
        return tuple(dict.fromkeys(out))


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


@dataclass(frozen=True)
class _PView:
    """A value that is a view of the model's parameter or buffer ``fqn``: dim ``i`` of the value holds dim
    ``dims[i]`` of the tensor (``None``: a dim added by ``expand``/``unsqueeze``, along which the value repeats)."""

    fqn: str
    dims: tuple[int | None, ...]


class _Tracer(fx.Tracer):
    """Records the module path being traced, so a tracing failure can name the module it happened in."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Leaves are the modules the walker has a rule for; other ``torch.nn`` containers (``TransformerEncoder``)
        are traced through (fx's default stops at every ``torch.nn`` module)."""
        return _is_leaf(m) or isinstance(m, (*_ELEMENTWISE_MODULES, *_SPATIAL_MODULES, nn.Flatten))

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


def _is_leaf(m: nn.Module) -> bool:
    return handler_for_or_none(m) is not None


def program_graph(model: nn.Module, example_input: Any, tracer: Tracing = "auto") -> fx.Graph:
    """The graph ``build_groups`` reads: ``torch.fx`` symbolic tracing, or runtime recording
    (:mod:`prunekit.structure.record`) where tracing fails or is not wanted (``tracer="record"``)."""
    if tracer not in ("auto", "fx", "record"):
        raise StructureError(f"tracer must be one of auto, fx, record; got {tracer!r}")
    if tracer != "record" and not isinstance(example_input, Mapping):
        try:
            return trace(model, example_input).graph
        except StructureError as e:
            if tracer == "fx":
                raise
            log.info("%s; recording one forward pass instead", e)
    return record_graph(model, example_input, _is_leaf)


def build_groups(model: nn.Module, example_input: Any, tracer: Tracing = "auto") -> list[Group]:
    """Coupled channel groups of ``model`` (see the module docstring). Unsupported parts freeze their groups.

    ``example_input``: a tensor, a tuple of positional tensors, or a dict of keyword tensors (a tokenizer's
    output). ``tracer``: ``"fx"``, ``"record"`` or ``"auto"`` (fx, falling back to recording).
    """
    graph = program_graph(model, example_input, tracer)
    mods = dict(model.named_modules(remove_duplicate=False))
    sp = _Spaces()
    chan: dict[fx.Node, _Chan] = {}
    pieces: dict[fx.Node, list[_Chan | None]] = {}  # outputs of split/chunk, read by the getitem nodes after them
    # (fqn, axis, offset) -> space: a module called twice shares its units
    role_space: dict[tuple[str, str, int], int] = {}

    # a parameter shared by two modules (tied embeddings) cannot be sliced for one of them only
    owners: dict[int, list[str]] = {}
    for fqn, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(fqn)
    shared = {f: [o for o in fs if o != f] for fs in owners.values() if len(fs) > 1 for f in fs}
    tied: list[tuple[Member, int]] = []  # members of modules that share a parameter, checked once all is known

    # parameters and buffers read outside handled modules (get_attr nodes) may become "param" members
    tensors = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    pview: dict[fx.Node, _PView] = {}  # values that are views of one of ``tensors``
    mapped: set[tuple[fx.Node, fx.Node]] = set()  # (user, view) uses that are understood: views, attachments, shape reads
    tensor_spaces: dict[str, list[tuple[int, int]]] = {}  # tensor path -> (space, dim) it was attached to

    def freeze(c: _Chan, why: str) -> None:
        for seg in c.segs:
            sp.freeze(seg.space, why)

    def freeze_inputs(node: fx.Node, why: str) -> None:
        for a in node.all_input_nodes:
            if a in chan:
                freeze(chan[a], f"{_where(node)}: {why}")

    def attach(space: int, member: Member) -> None:
        key = (member.fqn, member.axis, member.offset)
        if key in role_space:
            sp.union(role_space[key], space, f"{member.fqn} called more than once")
        else:
            sp.add(space, member)
        role_space[key] = space
        if member.fqn in shared:
            tied.append((member, space))

    def attach_all(c: _Chan, fqn: str, role: Role) -> None:
        """Attach ``fqn`` to every segment of ``c`` at its offset."""
        off = 0
        for seg in c.segs:
            attach(seg.space, Member(fqn, role, seg.block, off))
            root, block = sp.eff(seg)
            off += sp.size[root] * block

    def width(c: _Chan) -> int:
        return sum(sp.size[r] * b for r, b in map(sp.eff, c.segs))

    def unit_blocks(c: _Chan) -> bool:
        return all(sp.eff(seg)[1] == 1 for seg in c.segs)

    def fresh(n: int, dim: int, reason: str | None = None) -> _Chan:
        s = sp.new(n)
        if reason:
            sp.freeze(s, reason)
        return _Chan((_Seg(s),), dim)

    def attach_tensor(node: fx.Node, a: fx.Node, k: int, where: str) -> None:
        """Make the tensor that ``a`` views a ``param`` member of ``node``'s channels; ``k``: the dim of ``a`` aligned
        with them. Frozen when the plan rule (:func:`tensor_dim`) would slice another dim of the tensor."""
        c, pv, a_shape = chan.get(node), pview[a], _shape(a) or ()
        if c is None:  # the channels did not line up: frozen already
            return
        t = tensors[pv.fqn]
        j = pv.dims[k]
        n = width(c)
        if j is None or int(t.shape[j]) != n or a_shape[k] != n:
            freeze(c, f"{where}: {pv.fqn} {tuple(t.shape)} is repeated along the channel dim")
            return
        r = tensor_dim(tuple(t.shape), n)
        if r != j:
            freeze(
                c,
                f"{where}: {pv.fqn} {tuple(t.shape)} varies along the channels on its dim {j}, but a plan of {n} units "
                f"would slice its last dim of size {n} (dim {r})",
            )
            return
        mapped.add((node, a))
        off = 0
        for seg in c.segs:
            attach(seg.space, Member(pv.fqn, "param", seg.block, off, j))
            tensor_spaces.setdefault(pv.fqn, []).append((seg.space, j))
            root, block = sp.eff(seg)
            off += sp.size[root] * block

    for node in graph.nodes:
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
            if str(node.target) in tensors and shape is not None:
                pview[node] = _PView(str(node.target), tuple(range(len(shape))))
            continue

        if node.op == "call_module":
            m = mods[str(node.target)]
            fqn = str(node.target)
            h = handler_for_or_none(m)
            if h is not None:
                if len(ins) != 1 or shape is None:
                    freeze_inputs(node, f"{fqn} called with {len(ins)} tensor inputs")
                    continue
                in_shape = _shape(x)
                assert in_shape is not None
                cdim = h.channel_dim(m) % len(shape)
                if isinstance(m, nn.Embedding):
                    s = sp.new(h.num_out(m))
                    attach(s, Member(fqn, "producer"))
                    chan[node] = _Chan((_Seg(s),), cdim)
                    continue
                ok = cx is not None and cx.dim == h.channel_dim(m) % len(in_shape) and width(cx) == h.num_in(m)
                if h.passthrough(m):
                    if ok and cx is not None and unit_blocks(cx):
                        attach_all(cx, fqn, "follower")
                        chan[node] = _Chan(cx.segs, cdim)
                    else:
                        freeze_inputs(node, f"{fqn}: channel layout not understood")
                        c = fresh(h.num_out(m), cdim, f"{fqn}: input channel layout not understood")
                        attach_all(c, fqn, "follower")
                        chan[node] = c
                    continue
                # producer + consumer (Linear, Conv)
                if cx is not None:
                    if ok and (h.channel_dim(m) == -1 or unit_blocks(cx)):
                        attach_all(cx, fqn, "consumer")
                    else:
                        freeze(cx, f"{_where(node)}: consumes channel dim {cx.dim} in a layout not understood")
                s = sp.new(h.num_out(m))
                attach(s, Member(fqn, "producer"))
                chan[node] = _Chan((_Seg(s),), cdim)
                continue
            if isinstance(m, _ELEMENTWISE_MODULES) and cx is not None and len(ins) == 1:
                if isinstance(m, nn.PReLU) and m.num_parameters > 1:
                    freeze_inputs(node, f"{fqn}: PReLU with per-channel weights has no handler")
                chan[node] = cx
                continue
            if isinstance(m, _SPATIAL_MODULES) and cx is not None and len(ins) == 1:
                if cx.dim == 1 and unit_blocks(cx):
                    chan[node] = cx
                else:
                    freeze_inputs(node, f"{fqn}: pooling over the channel dim")
                continue
            if isinstance(m, nn.Flatten) and cx is not None:
                _reshape(node, cx, x, shape, chan, sp)
                continue
            if isinstance(m, nn.MultiheadAttention):
                freeze_inputs(node, _mha_reason(fqn))
                continue
            freeze_inputs(node, f"{fqn}: {module_type_name(m)} has no structure handler or rule")
            continue

        # call_function / call_method
        t = node.target
        is_fn = node.op == "call_function"
        name = getattr(t, "__name__", str(t))
        if (node.op == "call_method" and t in _SHAPE_METHODS) or (
            is_fn and t is getattr and node.args[1] in ("shape", "dtype", "device")
        ):
            mapped.update((node, a) for a in node.all_input_nodes if a in pview)  # reads no entries
        if node.op == "call_method" and t in _SHAPE_METHODS:
            continue
        if is_fn and t is getattr and cx is not None:
            if node.args[1] not in ("shape", "dtype", "device"):
                freeze_inputs(node, f"getattr {node.args[1]}")
            continue
        if (is_fn and t in _SPLIT_FUNCS) or (not is_fn and t in _SPLIT_METHODS):
            if cx is not None:
                pieces[node] = _split(node, cx, x, role_space, sp, freeze_inputs)
            continue
        if is_fn and t is F.multi_head_attention_forward:  # nn.MultiheadAttention's fused call (runtime recording)
            freeze_inputs(node, _mha_reason(_mha_fqn(node)))
            continue
        if is_fn and t is operator.getitem and isinstance(node.args[0], fx.Node) and node.args[0] in pieces:
            got = pieces[node.args[0]]
            i = node.args[1]
            if isinstance(i, int) and -len(got) <= i < len(got) and got[i] is not None:
                chan[node] = got[i]  # type: ignore[assignment]
            continue
        if shape is None:
            freeze_inputs(node, f"{name}: non-tensor result")
            continue
        if x is not None and len(ins) > 1 and not is_fn and t in _FIRST_OPERAND_METHODS:
            mapped.update((node, a) for a in ins[1:] if a in pview)  # read for its dtype or shape only
            ins = [x]  # type_as(other), view_as(other)...: the other tensor gives only a dtype or shape
        if x in pview and len(ins) == 1:
            v = _view_of(node, pview[x], x, shape)
            if v is not None:
                pview[node] = v
                mapped.add((node, x))
                continue
        if not is_fn and t in ("view_as", "reshape_as", "expand_as") and cx is not None:
            (_reshape if t != "expand_as" else _expand)(node, cx, x, shape, chan, sp)
            continue
        if (is_fn and t in _ELEMENTWISE_FUNCS) or (not is_fn and t in _ELEMENTWISE_METHODS):
            if len(ins) == 1 and cx is not None:
                chan[node] = cx
            elif ins:
                for a, k in _binary(node, ins, shape, chan, sp, name, pview.__contains__):
                    attach_tensor(node, a, k, f"{_where(node)} ({name})")
            continue
        if is_fn and t in _SPATIAL_FUNCS:
            if cx is not None and cx.dim == 1 and unit_blocks(cx):
                chan[node] = cx
            else:
                freeze_inputs(node, f"{name}: pooling over the channel dim")
            continue
        if (is_fn and t in _BINARY_FUNCS) or (not is_fn and t in _BINARY_METHODS):
            for a, k in _binary(node, ins, shape, chan, sp, name, pview.__contains__):
                attach_tensor(node, a, k, f"{_where(node)} ({name})")
            continue
        if cx is not None and (
            (is_fn and t in _RESHAPE_FUNCS) or (not is_fn and t in _RESHAPE_METHODS) or name in ("unsqueeze", "squeeze")
        ):
            _reshape(node, cx, x, shape, chan, sp)
            continue
        if cx is not None and name in ("transpose", "swapaxes", "swapdims", "permute", "t"):
            _move(node, cx, x, chan, sp, freeze_inputs)
            continue
        if cx is not None and name in ("expand", "broadcast_to", "repeat"):
            _expand(node, cx, x, shape, chan, sp)
            continue
        if cx is not None and name in _REDUCTIONS and len(ins) == 1:
            _reduce(node, cx, x, chan, freeze_inputs, name)
            continue
        if name in ("matmul", "bmm") and len(ins) == 2:
            _matmul(node, ins[0], ins[1], shape, chan, sp, freeze_inputs)
            continue
        if is_fn and t is F.scaled_dot_product_attention:
            _sdpa(node, shape, chan, sp, freeze_inputs)
            continue
        if is_fn and t is torch.cat:
            for a, k in _cat(node, shape, chan, sp, fresh, pview.__contains__):
                attach_tensor(node, a, k, f"{_where(node)} (cat)")
            continue
        if is_fn and t is operator.getitem and cx is not None:
            _index(node, cx, x, chan, freeze_inputs)
        elif is_fn and t is F.pad:
            freeze_inputs(node, "padding is not mapped to channels")
        elif ins:
            freeze_inputs(node, f"{node.op} {name} has no structure rule")

    _check_ties(tied, shared, mods, sp)
    _check_tensors(model, tensors, tensor_spaces, pview, mapped, sp)
    roots = sorted({sp.find(i) for i in range(len(sp.parent))})
    groups = []
    for r in roots:
        members = sp.resolved_members(r)
        if members:
            groups.append(Group(sp.size[r], members, tuple(dict.fromkeys(sp.reasons[r]))))
    return groups


def _check_ties(
    tied: list[tuple[Member, int]], shared: Mapping[str, list[str]], mods: Mapping[str, nn.Module], sp: _Spaces
) -> None:
    """Tied weights (an embedding and an output head sharing one matrix) may shrink only along one dim, in one group.

    Every space attached to a module that shares a parameter is frozen unless all sharing modules are Embedding /
    Linear, each touches the tied matrix along the same dim ``d`` from one and the same space (offset 0, unit size
    1), and any space on the other dim is frozen anyway (the vocabulary: model input or output). Slicing that space
    then slices the one matrix once for all of them; ``apply_plan_`` keeps the tie.
    """

    def freeze_all(fqns: set[str], why: str) -> None:
        for m, s in tied:
            if m.fqn in fqns:
                sp.freeze(s, why)

    done: set[str] = set()
    for fqn in list(dict.fromkeys(m.fqn for m, _ in tied)):
        if fqn in done:
            continue
        fqns = {fqn, *shared[fqn]}
        done |= fqns
        default = f"{fqn} shares a weight with {', '.join(shared[fqn])}"
        recs = [(m, s) for m, s in tied if m.fqn in fqns]
        dims = [tied_weight_dim(mods[m.fqn], m.axis) for m, _ in recs]
        if any(d is None for d in dims):
            freeze_all(fqns, default)
            continue
        open_recs = [(m, s, d) for (m, s), d in zip(recs, dims) if not sp.reasons[sp.find(s)]]
        if not open_recs:
            continue
        d0 = open_recs[0][2]
        roots = {sp.find(s) for _, s, _ in open_recs}
        seen = {m.fqn for m, _, d in open_recs if d == d0}
        ok = (
            all(d == d0 for _, _, d in open_recs)
            and len(roots) == 1
            and all(m.offset == 0 and m.block == 1 for m, _, _ in open_recs)
            and seen == fqns
        )
        if not ok:
            freeze_all(fqns, f"{default} and they would shrink it along different dims or groups")


def _check_tensors(
    model: nn.Module,
    tensors: Mapping[str, Tensor],
    tensor_spaces: Mapping[str, list[tuple[int, int]]],
    pview: Mapping[fx.Node, _PView],
    mapped: set[tuple[fx.Node, fx.Node]],
    sp: _Spaces,
) -> None:
    """Freeze the spaces of a ``param`` member that slicing would break elsewhere.

    A tensor is sliced once, along one dim, for every use: each use of it (or of a view of it) must be one of the
    attachments, a view, or a shape read. It must also be registered under one name and not belong to a module
    with a handler (that module's handler slices its tensors), and every attachment must couple the same dim.
    """
    handled: dict[int, str] = {}
    for fqn, m in model.named_modules():
        if handler_for_or_none(m) is not None:
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
                handled.setdefault(id(t), f"{fqn or '<root>'} ({module_type_name(m)})")
    unmapped: dict[str, str] = {}
    for n, pv in pview.items():
        for u in n.users:
            if (u, n) not in mapped and pv.fqn not in unmapped:
                op = getattr(u.target, "__name__", str(u.target))
                unmapped[pv.fqn] = "the model output" if u.op == "output" else f"{_where(u)} ({op})"
    for path, spaces in tensor_spaces.items():
        t = tensors[path]
        why = []
        others = tensor_aliases(model, path)
        if others:
            why.append(f"{path} is also registered as {', '.join(others)}")
        if id(t) in handled:
            why.append(f"{path} belongs to {handled[id(t)]}, whose handler slices it")
        if path in unmapped:
            why.append(f"{path} is also used by {unmapped[path]}, which is not mapped to channels")
        dims = sorted({d for _, d in spaces})
        if len(dims) > 1:
            why.append(f"{path} {tuple(t.shape)} would be sliced along dims {dims}")
        for s, _ in spaces:
            for w in why:
                sp.freeze(s, w)


def _view_of(node: fx.Node, pv: _PView, x: fx.Node, shape: tuple[int, ...]) -> _PView | None:
    """The view of ``pv``'s tensor that ``node`` computes from ``x`` (its only tensor operand, a view of that tensor),
    when every entry keeps a known place: element-wise functions and casts (scalars as other operands), ``expand``,
    reshapes that only add or drop size-1 dims, ``transpose``/``permute``, indexing with full slices and ``None``.
    ``None`` for anything else (that use is then not mapped)."""
    in_shape = _shape(x)
    if in_shape is None:
        return None
    t = node.target
    is_fn = node.op == "call_function"
    name = getattr(t, "__name__", str(t))
    elementwise = (is_fn and (t in _ELEMENTWISE_FUNCS or t in _BINARY_FUNCS)) or (
        not is_fn and (t in _ELEMENTWISE_METHODS or t in _BINARY_METHODS or t in ("to", "type_as"))
    )
    if elementwise:
        return pv if shape == in_shape else None
    if name in ("expand", "expand_as", "broadcast_to"):
        extra = len(shape) - len(in_shape)
        ok = extra >= 0 and all(a in (b, 1) for a, b in zip(in_shape, shape[extra:]))
        return _PView(pv.fqn, (None,) * extra + pv.dims) if ok else None
    if name in ("view", "reshape", "flatten", "unsqueeze", "squeeze", "view_as", "reshape_as"):
        kept = [d for d, n in enumerate(in_shape) if n != 1]
        if [in_shape[d] for d in kept] != [n for n in shape if n != 1]:
            return None
        it = iter(kept)
        return _PView(pv.fqn, tuple(pv.dims[next(it)] if n != 1 else None for n in shape))
    nd = len(in_shape)
    try:
        if name == "permute":
            dims = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
            perm = [int(cast(int, v)) % nd for v in cast(Sequence[Any], dims)]
            return _PView(pv.fqn, tuple(pv.dims[d] for d in perm)) if sorted(perm) == list(range(nd)) else None
        if name in ("transpose", "swapaxes", "swapdims", "t"):
            a, b = (0, 1) if name == "t" else (int(_dims_arg(node, 1, "dim0")) % nd, int(_dims_arg(node, 2, "dim1")) % nd)
            dims_ = list(pv.dims)
            if nd >= 2:
                dims_[a], dims_[b] = dims_[b], dims_[a]
            return _PView(pv.fqn, tuple(dims_))
    except (TypeError, ValueError, IndexError):
        return None
    if is_fn and t is operator.getitem:
        idx = node.args[1]
        items = idx if isinstance(idx, tuple) else (idx,)
        out: list[int | None] = []
        d = 0
        for i, it in enumerate(items):
            if it is None:
                out.append(None)
            elif it is Ellipsis:
                k = nd - sum(1 for v in items if v is not None and v is not Ellipsis)
                if k < 0 or any(v is Ellipsis for v in items[i + 1 :]):
                    return None
                out += pv.dims[d : d + k]
                d += k
            elif isinstance(it, slice) and it.start in (None, 0) and it.step in (None, 1):
                if d >= nd or not (it.stop is None or (isinstance(it.stop, int) and it.stop >= in_shape[d])):
                    return None
                out.append(pv.dims[d])
                d += 1
            else:
                return None
        out += pv.dims[d:]
        return _PView(pv.fqn, tuple(out)) if len(out) == len(shape) else None
    return None


def _mha_fqn(node: fx.Node) -> str:
    """The path of the ``nn.MultiheadAttention`` whose parameters a ``multi_head_attention_forward`` call reads."""
    for a in node.all_input_nodes:
        if a.op == "get_attr":
            for suffix in (".in_proj_weight", ".q_proj_weight", ".out_proj.weight"):
                if str(a.target).endswith(suffix):
                    return str(a.target)[: -len(suffix)]
    return "?"


def _mha_reason(fqn: str) -> str:
    return f"nn.MultiheadAttention {fqn!r} computes all heads in one fused call; {SPLIT_ADVICE}"


def _where(node: fx.Node) -> str:
    """``node_name in module.path (Type)`` for reasons."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, cls = list(stack.values())[-1]
        return f"{node.name} in {path} ({getattr(cls, '__name__', cls)})"
    return node.name


def _freeze_chan(c: _Chan, sp: _Spaces, why: str) -> None:
    for seg in c.segs:
        sp.freeze(seg.space, why)


def _reshape_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[int, int, int, int]] | None:
    """Pair up runs of dims of ``a`` and ``b`` with equal products: ``(a_lo, a_hi, b_lo, b_hi)`` half-open."""
    i = j = 0
    out = []
    while i < len(a) or j < len(b):
        i0, j0, pa, pb = i, j, 1, 1
        if i < len(a):
            pa, i = a[i], i + 1
        if j < len(b):
            pb, j = b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                pb, j = pb * b[j], j + 1
            else:
                return None
        out.append((i0, i, j0, j))
    return out


def _reshape(
    node: fx.Node, cx: _Chan, x: fx.Node | None, shape: tuple[int, ...] | None, chan: dict[fx.Node, _Chan], sp: _Spaces
) -> None:
    """Reshapes that keep channels addressable.

    * the channel dim moves (dims of size 1 added or removed elsewhere): same segments;
    * the channel dim absorbs the dims after it (``flatten`` of (N, C, H, W)): every channel becomes a block of
      their product;
    * the channel dim is split into (a, b) (attention: (B, S, H*d) -> (B, S, H, d)): a unit becomes one index of
      ``a``; where a unit was finer than ``b`` entries the space is coarsened (the unit becomes a head).
    Anything else (the channel dim merged into a dim before it, or split with the channels inside) freezes.
    """
    in_shape = _shape(x)
    why = f"{_where(node)}: reshape {in_shape} -> {shape} splits or moves the channel dim"
    if in_shape is None or shape is None:
        _freeze_chan(cx, sp, f"{_where(node)}: reshape with unknown shapes")
        return
    if in_shape == shape:
        chan[node] = cx
        return
    d = cx.dim
    groups = _reshape_groups(in_shape, shape)
    g = next((g for g in groups or [] if g[0] <= d < g[1]), None)
    if g is None or in_shape[d] == 1:
        _freeze_chan(cx, sp, why)
        return
    in_dims = [i for i in range(g[0], g[1]) if in_shape[i] != 1]
    out_dims = [o for o in range(g[2], g[3]) if shape[o] != 1]
    if in_dims[0] != d or not out_dims:
        _freeze_chan(cx, sp, why)
        return
    if len(out_dims) == 1:  # moved, or absorbing the dims after it
        inner = math.prod(in_shape[i] for i in in_dims[1:])
        chan[node] = _Chan(tuple(_Seg(seg.space, seg.block * inner) for seg in cx.segs), out_dims[0])
        return
    if len(in_dims) != 1:
        _freeze_chan(cx, sp, why)
        return
    b = math.prod(shape[o] for o in out_dims[1:])  # entries of one index along the new channel dim
    segs = []
    for seg in cx.segs:
        root, blk = sp.eff(seg)
        if (sp.size[root] * blk) % b:
            _freeze_chan(cx, sp, why)
            return
        if blk % b == 0:
            segs.append(_Seg(root, blk // b))
        elif b % blk == 0 and sp.size[root] % (b // blk) == 0:
            segs.append(_Seg(sp.coarsen(root, b // blk)))
        else:
            _freeze_chan(cx, sp, why)
            return
    chan[node] = _Chan(tuple(segs), out_dims[0])


def _dims_arg(node: fx.Node, pos: int, key: str) -> Any:
    return node.args[pos] if len(node.args) > pos else node.kwargs.get(key)


def _move(
    node: fx.Node, cx: _Chan, x: fx.Node | None, chan: dict[fx.Node, _Chan], sp: _Spaces, freeze_inputs: Callable[..., None]
) -> None:
    """transpose / permute: the channel dim moves with its axis."""
    nd = len(_shape(x) or ())
    name = getattr(node.target, "__name__", str(node.target))
    d = cx.dim
    try:
        if name == "permute":
            dims = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
            new = [int(cast(int, v)) % nd for v in cast(Sequence[Any], dims)].index(d)
        elif name == "t":
            new = 1 - d if nd == 2 else d
        else:
            a, b = int(_dims_arg(node, 1, "dim0")) % nd, int(_dims_arg(node, 2, "dim1")) % nd
            new = b if d == a else a if d == b else d
    except (TypeError, ValueError, IndexError):
        freeze_inputs(node, f"{name} arguments not understood")
        return
    chan[node] = _Chan(cx.segs, new)


def _expand(
    node: fx.Node, cx: _Chan, x: fx.Node | None, shape: tuple[int, ...] | None, chan: dict[fx.Node, _Chan], sp: _Spaces
) -> None:
    """expand / repeat along other dims (leading dims may be added): the channels stay."""
    in_shape = _shape(x)
    if in_shape is None or shape is None:
        _freeze_chan(cx, sp, f"{_where(node)}: expand with unknown shapes")
        return
    d = cx.dim + len(shape) - len(in_shape)
    if shape[d] != in_shape[cx.dim]:
        _freeze_chan(cx, sp, f"{_where(node)}: repeats the channel dim")
        return
    chan[node] = _Chan(cx.segs, d)


def _reduce(
    node: fx.Node, cx: _Chan, x: fx.Node | None, chan: dict[fx.Node, _Chan], freeze_inputs: Callable[..., None], name: str
) -> None:
    """softmax / mean / sum ... over other dims keep the channels; over the channel dim (or all dims) they freeze."""
    nd = len(_shape(x) or ())
    dim = _dims_arg(node, 1, "dim")
    if dim is None or isinstance(dim, fx.Node):
        freeze_inputs(node, f"{name} over all dims")
        return
    dims = {int(v) % nd for v in (dim if isinstance(dim, (list, tuple)) else [dim])}
    if cx.dim in dims:
        freeze_inputs(node, f"{name} over the channel dim")
        return
    keep = name in ("softmax", "log_softmax") or bool(_dims_arg(node, 2, "keepdim"))
    chan[node] = _Chan(cx.segs, cx.dim if keep else cx.dim - sum(v < cx.dim for v in dims))


def _index(node: fx.Node, cx: _Chan, x: fx.Node | None, chan: dict[fx.Node, _Chan], freeze_inputs: Callable[..., None]) -> None:
    """Basic indexing (ints, slices, None, ...) that leaves the channel dim whole keeps it (at its new position)."""
    in_shape = _shape(x) or ()
    idx = node.args[1]
    items = idx if isinstance(idx, tuple) else (idx,)
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    in_d = out_d = 0
    new: int | None = None
    for it in items:
        if it is Ellipsis:
            k = len(in_shape) - consumed
            if in_d <= cx.dim < in_d + k:
                new = out_d + cx.dim - in_d
            in_d, out_d = in_d + k, out_d + k
            continue
        if it is None:
            out_d += 1
            continue
        if isinstance(it, slice) and all(v is None or isinstance(v, int) for v in (it.start, it.stop, it.step)):
            full = it.start in (None, 0) and it.step in (None, 1) and (it.stop is None or it.stop >= in_shape[in_d])
            if in_d == cx.dim:
                if not full:
                    freeze_inputs(node, "slices the channel dim")
                    return
                new = out_d
            in_d, out_d = in_d + 1, out_d + 1
        elif isinstance(it, int) and in_d != cx.dim:
            in_d += 1
        else:
            freeze_inputs(node, "indexes the channel dim or uses advanced indexing")
            return
    chan[node] = _Chan(cx.segs, new if new is not None else out_d + cx.dim - in_d)


def _split(
    node: fx.Node,
    cx: _Chan,
    x: fx.Node | None,
    role_space: dict[tuple[str, str, int], int],
    sp: _Spaces,
    freeze_inputs: Callable[..., None],
) -> list[_Chan | None]:
    """split / chunk. Along another dim every piece keeps the channels. Along the channel dim a piece must be whole
    segments (undoing a ``torch.cat``), or the split value must come straight from one producer used nowhere else
    (GPT-2's fused ``c_attn`` -> q, k, v): its space is then re-cut into one space per piece, each with the
    producer as a member at the piece's offset."""
    in_shape = _shape(x) or ()
    nd = len(in_shape)
    name = getattr(node.target, "__name__", str(node.target))
    arg = _dims_arg(node, 1, "split_size_or_sections" if name == "split" else "chunks")
    dim = int(_dims_arg(node, 2, "dim") or 0) % max(nd, 1)
    total = in_shape[dim] if nd else 0
    if name == "chunk" and isinstance(arg, int):
        step = -(-total // arg)
        widths = [min(step, total - a) for a in range(0, total, step)]
    elif isinstance(arg, int):
        widths = [min(arg, total - a) for a in range(0, total, arg)]
    elif isinstance(arg, (list, tuple)) and all(isinstance(v, int) for v in arg):
        widths = [int(cast(int, v)) for v in arg]
    else:
        freeze_inputs(node, f"{name} arguments not understood")
        return []
    if dim != cx.dim:
        return [cx for _ in widths]
    # channel dim: whole segments?
    bounds: list[tuple[int, int]] = []
    out: list[_Chan | None] = []
    pos = 0
    seg_ends, acc = [], 0
    for seg in cx.segs:
        r, b = sp.eff(seg)
        acc += sp.size[r] * b
        seg_ends.append(acc)
    for w in widths:
        bounds.append((pos, pos + w))
        pos += w
    starts = [0, *seg_ends[:-1]]
    if all(a in starts and b in seg_ends for a, b in bounds):
        return [_Chan(tuple(cx.segs[starts.index(a) : seg_ends.index(b) + 1]), cx.dim) for a, b in bounds]
    root, blk = sp.eff(cx.segs[0])
    mem = sp.members[root]
    if (
        len(cx.segs) == 1
        and len(x.users) == 1  # type: ignore[union-attr]
        and len(mem) == 1
        and mem[0][1].role == "producer"
        and not sp.reasons[root]
        and all(a % blk == 0 and b % blk == 0 for a, b in bounds)
    ):
        node_id, m = mem[0]
        mblk = m.block * sp.scale(node_id)
        sp.members[root] = []
        role_space.pop((m.fqn, m.axis, m.offset), None)
        for a, b in bounds:
            s = sp.new((b - a) // blk)
            sp.add(s, Member(m.fqn, "producer", mblk, m.offset + (a // blk) * mblk))
            out.append(_Chan((_Seg(s, blk),), cx.dim))
        return out
    freeze_inputs(node, f"{name} cuts channel segments")
    return [None for _ in widths]


def _matmul(
    node: fx.Node,
    a: fx.Node,
    b: fx.Node,
    shape: tuple[int, ...],
    chan: dict[fx.Node, _Chan],
    sp: _Spaces,
    freeze_inputs: Callable[..., None],
) -> None:
    """``a @ b`` with a (..., n, k), b (..., k, m). Channels on a batch dim (attention heads) pair up and stay;
    on ``n`` or ``m`` they stay; on the contracted ``k`` both operands must carry the same channels."""
    sa, sb = _shape(a) or (), _shape(b) or ()
    ca, cb = chan.get(a), chan.get(b)
    no = len(shape)
    if len(sa) < 2 or len(sb) < 2:
        freeze_inputs(node, "matmul with a vector")
        return
    where = f"{_where(node)} (matmul)"

    def out_pos(c: _Chan, n: int, is_a: bool) -> int | None:
        if c.dim == n - 1:
            return None if is_a else no - 1
        if c.dim == n - 2:
            return no - 2 if is_a else None
        return c.dim + no - n  # a batch dim

    pa = out_pos(ca, len(sa), True) if ca else None
    pb = out_pos(cb, len(sb), False) if cb else None
    contracted_a = ca is not None and ca.dim == len(sa) - 1
    contracted_b = cb is not None and cb.dim == len(sb) - 2
    if contracted_a or contracted_b:
        if contracted_a and contracted_b and ca is not None and cb is not None:
            _join(ca, cb, sp, where)
        else:
            freeze_inputs(node, "contracts channels with a tensor that has none")
        return
    if ca is not None and cb is not None and pa is not None and pa == pb:
        segs = _join(_Chan(ca.segs, pa), _Chan(cb.segs, pb), sp, where)
        if segs is not None:
            chan[node] = _Chan(segs, pa)
        return
    for c, p, other, so in ((ca, pa, sb, False), (cb, pb, sa, True)):
        if c is None or p is None:
            continue
        if p < no - 2:  # a batch dim: the other operand must not vary along it
            k = p - (no - len(other))
            if 0 <= k < len(other) - 2 and other[k] != 1 and chan.get(b if not so else a) is None:
                _freeze_chan(c, sp, f"{where}: batched with a tensor that varies along the channel dim")
                continue
        if node in chan:
            _freeze_chan(c, sp, f"{where}: two channel dims in one result")
            _freeze_chan(chan.pop(node), sp, f"{where}: two channel dims in one result")
            continue
        chan[node] = _Chan(c.segs, p)


def _sdpa(
    node: fx.Node, shape: tuple[int, ...], chan: dict[fx.Node, _Chan], sp: _Spaces, freeze_inputs: Callable[..., None]
) -> None:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, ..., enable_gqa)``: heads are dim -3 of q, k, v and of
    the result. Under grouped-query attention (``enable_gqa``, fewer key/value heads) a key/value head serves
    ``Hq / Hkv`` consecutive query heads, so the query heads are grouped to match (the space is coarsened)."""
    args = list(node.args[:3]) + [node.kwargs.get(k) for k in ("query", "key", "value")][len(node.args[:3]) :]
    q, k, v = (args + [None] * 3)[:3]
    where = f"{_where(node)} (scaled_dot_product_attention)"
    cs = [chan.get(n) if isinstance(n, fx.Node) else None for n in (q, k, v)]
    shapes = [_shape(n) if isinstance(n, fx.Node) else None for n in (q, k, v)]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if isinstance(mask, fx.Node) and mask in chan:
        freeze_inputs(node, "attention mask carries channels")
        return
    if any(c is None or s is None or c.dim != len(s) - 3 for c, s in zip(cs, shapes)):
        freeze_inputs(node, "query, key and value do not carry heads on dim -3")
        return
    cq, ck, cv = cs
    sq, sk = shapes[0], shapes[1]
    assert cq is not None and ck is not None and cv is not None and sq is not None and sk is not None
    ms = _shape(mask) if isinstance(mask, fx.Node) else None
    if ms is not None and len(ms) >= 3 and ms[-3] != 1:
        freeze_inputs(node, "attention mask varies across heads")
        return
    kv = _join(ck, cv, sp, where)
    if kv is None:
        return
    rep = sq[-3] // sk[-3]
    if rep != 1:
        kv = tuple(_Seg(seg.space, seg.block * rep) for seg in kv)
    segs = _join(cq, _Chan(kv, cq.dim), sp, where)
    if segs is not None:
        chan[node] = _Chan(segs, len(shape) - 3)


def _join(a: _Chan, b: _Chan, sp: _Spaces, where: str) -> tuple[_Seg, ...] | None:
    """Merge two values whose channels line up entry for entry, segment by segment; returns the joint layout.

    Where one segment's units are coarser (a block of ``f`` of the other's units), the finer space is merged into
    the coarser one with ratio ``f``.
    """
    if len(a.segs) != len(b.segs):
        _freeze_chan(a, sp, f"{where}: operands' channel segments do not line up")
        _freeze_chan(b, sp, f"{where}: operands' channel segments do not line up")
        return None
    out = []
    for x, y in zip(a.segs, b.segs):
        (rx, bx), (ry, by) = sp.eff(x), sp.eff(y)
        if sp.size[rx] * bx != sp.size[ry] * by or (bx % by and by % bx):
            for seg in (x, y):
                sp.freeze(seg.space, f"{where}: operands' channel segments do not line up")
            return None
        if bx == by:
            out.append(_Seg(sp.union(rx, ry, where), bx))
        elif by > bx:
            out.append(_Seg(sp.union_scaled(rx, ry, by // bx, where), by))
        else:
            out.append(_Seg(sp.union_scaled(ry, rx, bx // by, where), bx))
    return tuple(out)


def _binary(
    node: fx.Node,
    ins: list[fx.Node],
    shape: tuple[int, ...],
    chan: dict[fx.Node, _Chan],
    sp: _Spaces,
    name: str,
    is_tensor: Callable[[fx.Node], bool],
) -> list[tuple[fx.Node, int]]:
    """Element-wise op: tensors carrying channels merge their spaces; broadcast constants must not vary by channel,
    except views of the model's parameters and buffers (``is_tensor``), which are returned as ``(operand, its dim
    aligned with the channels)`` for the caller to attach."""
    carried = [a for a in ins if a in chan]
    if not carried:
        return []
    where = f"{_where(node)} ({name})"
    nd = len(shape)
    offs = {a: nd - len(_shape(a) or ()) for a in ins}  # dims align from the right under broadcasting
    first = chan[carried[0]]
    out_dim = first.dim + offs[carried[0]]
    segs: tuple[_Seg, ...] | None = first.segs
    tensors: list[tuple[fx.Node, int]] = []
    for a in ins:
        c = chan.get(a)
        if c is None:
            s = _shape(a) or ()
            k = out_dim - offs[a]
            if 0 <= k < len(s) and s[k] != 1:
                if is_tensor(a):
                    tensors.append((a, k))
                else:
                    _freeze_chan(first, sp, f"{where} with a tensor that varies along the channel dim")
            continue
        if a is carried[0] or segs is None:
            continue
        if c.dim + offs[a] != out_dim:
            _freeze_chan(first, sp, f"{where}: operands' channel dims do not line up")
            _freeze_chan(c, sp, f"{where}: operands' channel dims do not line up")
            continue
        segs = _join(_Chan(segs, out_dim), c, sp, where)
    if segs is None:
        return []
    chan[node] = _Chan(segs, out_dim)
    return tensors


def _cat(
    node: fx.Node,
    shape: tuple[int, ...],
    chan: dict[fx.Node, _Chan],
    sp: _Spaces,
    fresh: Callable[..., _Chan],
    is_tensor: Callable[[fx.Node], bool],
) -> list[tuple[fx.Node, int]]:
    """``torch.cat`` along the channel dim stacks segments (offsets); along another dim it joins like ``a + b``, and
    operands that are views of the model's parameters or buffers (``is_tensor``: ViT's class token) are returned as
    ``(operand, channel dim)`` for the caller to attach; any other operand without channels freezes."""
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    where = f"{_where(node)} (cat)"
    if not isinstance(parts, (list, tuple)) or not isinstance(dim, int) or not all(isinstance(p, fx.Node) for p in parts):
        for a in node.all_input_nodes:
            if a in chan:
                _freeze_chan(chan[a], sp, f"{where}: arguments not understood")
        return []
    dim %= len(shape)
    carried = [chan[p] for p in parts if p in chan]
    cdims = {c.dim for c in carried}
    if len(cdims) != 1:
        for c in carried:
            _freeze_chan(c, sp, f"{where}: operands' channel dims do not line up")
        return []
    (cdim,) = cdims
    if cdim != dim:  # e.g. along time or space: the channels of all operands coincide
        others = [p for p in parts if p not in chan]
        if any(not is_tensor(p) or (_shape(p) or (1,) * len(shape))[cdim] == 1 for p in others):
            for c in carried:  # a constant laid along the same channels
                _freeze_chan(c, sp, f"{where}: joined with a tensor of unknown channels")
            return []
        segs: tuple[_Seg, ...] | None = carried[0].segs
        for c in carried[1:]:
            if segs is not None:
                segs = _join(_Chan(segs, cdim), c, sp, where)
        if segs is None:
            return []
        chan[node] = _Chan(segs, cdim)
        return [(p, cdim) for p in others]
    out: list[_Seg] = []
    for p in parts:
        cp = chan.get(p)
        if cp is None:  # a tensor of unknown origin: its channels form a frozen segment
            ps = _shape(p)
            assert ps is not None
            cp = fresh(ps[dim], dim, f"{where}: operand {p.name} has no known channels")
        out += cp.segs
    chan[node] = _Chan(tuple(out), dim)
    return []
