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
  belongs to a handled module, or is registered under two names;
* a parameter used as the weight of a *functional* linear map, ``F.linear(x, W, b)`` or ``x @ W``, where ``W`` is a
  view of the parameter ``P`` (``P`` itself, ``P.t()``, or ``P[e]``: the leading dim indexed by an integer or an
  integer tensor, as fused mixture-of-experts layers store their experts, Mixtral's ``gate_up_proj`` (E, 2I, H)
  and ``down_proj`` (E, H, I)) is a ``param`` member twice: the output rows of ``W`` start a new space like a
  Linear's output units (``param_role="producer"``, ``dim``: the dim of ``P`` holding the rows), and the input
  columns couple with ``x``'s channels (``param_role="consumer"``, ``dim``: the dim of ``P`` holding the columns);
  a bias that is a view of another tensor is a ``param`` follower of the output. Every use of ``P`` must index the
  same dims the same way (each expert of a data-dependent loop indexes ``P`` with its own ``e``; the recorded uses
  merge into one group), and a dim indexed anywhere is never sliced. A plan names a ``param`` member by its path
  and its axis (``in`` for a consumer, else ``out``); the dim is again the last one of the entry's size, so a
  tensor with two coupled dims of equal size (``H == 2I`` for ``gate_up_proj``, ``H == I`` for ``down_proj``)
  freezes one of them;
* ``index_add`` along another dim merges its base and source like ``a + b``; ``zeros_like(x)`` (``ones_like``,
  ``full_like``...) keeps ``x``'s channels like an element-wise op (its width is ``x``'s, so ``final =
  zeros_like(h); final.index_add_(0, tokens, expert_out)`` couples ``h`` with the experts' output); a filled tensor
  of explicit size (``torch.zeros(n, 6)``) is a constant; indexing another dim with an integer tensor
  (``hidden[token_idx]``, a gather of tokens) keeps the channels.

A space that reaches something we cannot map (model input or output, channel padding or slicing such as option-A
``ZeroPadShortcut``, reductions over channels, unknown functions or modules, a weight shared by two modules, a
constant that varies along the channels) is
frozen: the :class:`Group` lists the reasons and is not prunable, and those dims are left untouched. That includes
``nn.MultiheadAttention``, which computes every head in one fused call; the reason says to split it first with
:func:`prunekit.structure.attention.split_attention_` (separate q/k/v/out Linears, the same outputs). The result
is a list of :class:`Group`; the handler of each member's module type says which tensors an axis maps to.
"""

from __future__ import annotations

import dataclasses
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
from prunekit.structure.ties import tied_parameters, tied_weight_dim

log = logging.getLogger(__name__)
Tracing = Literal["auto", "fx", "record"]

ModuleRole = Literal["producer", "follower", "consumer"]
Role = Literal["producer", "follower", "consumer", "param"]


@dataclass(frozen=True)
class Member:
    """One module or tensor in a group. ``producer``/``follower``: the module's ``out`` axis; ``consumer``: its
    ``in`` axis; ``param``: a parameter or buffer of the model (``fqn`` is its path, e.g.
    ``encoder.stages.0.layers.0.layer_scale_parameter``), used outside any handled module, whose dim ``dim`` (of
    size ``tensor.shape[dim]``, always the last dim of that size) carries the units.

    ``param_role`` (``param`` members only) is the part the tensor plays for the units, named like the module roles:
    ``follower`` (the default: element-wise with the channels, a layer scale, a class token, position embeddings,
    the bias of a functional linear), ``producer`` (the rows of the weight of a functional linear map: the units are
    its outputs, e.g. Mixtral's ``gate_up_proj`` dim 1) or ``consumer`` (the weight's input columns, e.g.
    ``down_proj`` dim 2). A ``param`` consumer's axis is ``in``, any other ``param`` member's is ``out``: the
    axis only tells a tensor's two coupled dims apart in a plan (both are found by size, see the module docstring).

    Unit ``c`` of the group is index ``offset + c*block + j`` (``0 <= j < block``) of the member's axis: ``block > 1``
    after a flatten of spatial dims, ``offset > 0`` when the group is not the first input of a ``torch.cat`` (or
    the second half of a fused ``gate_up_proj``). ``dim`` and ``param_role`` are ``None`` for module members.
    """

    fqn: str
    role: Role
    block: int = 1
    offset: int = 0
    dim: int | None = None
    param_role: ModuleRole | None = None

    @property
    def axis(self) -> Literal["out", "in"]:
        return "in" if self.role == "consumer" or self.param_role == "consumer" else "out"

    @property
    def part(self) -> ModuleRole:
        """The role the member plays for the units: a module's ``role``, or a ``param`` member's ``param_role``."""
        if self.role == "param":
            return self.param_role or "follower"
        return self.role


@dataclass(frozen=True)
class Group:
    """Units that must be removed together: ``size`` units shared by every member; ``reasons`` non-empty = frozen."""

    size: int
    members: tuple[Member, ...]
    reasons: tuple[str, ...] = ()

    @property
    def prunable(self) -> bool:
        """Not frozen, and something produces the units: a module, or a parameter used as a weight's rows."""
        return not self.reasons and any(m.part == "producer" for m in self.members)

    @property
    def producers(self) -> tuple[Member, ...]:
        """Modules that produce the units (role ``producer``); parameters doing so are :attr:`param_producers`."""
        return tuple(m for m in self.members if m.role == "producer")

    @property
    def params(self) -> tuple[Member, ...]:
        """Members that are parameters or buffers (role ``param``), not modules."""
        return tuple(m for m in self.members if m.role == "param")

    @property
    def param_producers(self) -> tuple[Member, ...]:
        """``param`` members whose rows produce the units (a fused expert weight's ``gate_up_proj``)."""
        return tuple(m for m in self.members if m.role == "param" and m.param_role == "producer")

    @property
    def weight_params(self) -> tuple[Member, ...]:
        """``param`` members used as a functional linear map's weight (producers and consumers), not followers."""
        return tuple(m for m in self.members if m.role == "param" and m.param_role in ("producer", "consumer"))

    @property
    def label(self) -> str:
        """The group's name in messages: its first producer (module, else parameter), else its first member."""
        first = next(iter(self.producers + self.param_producers + self.members), None)
        return first.fqn if first is not None else "<empty group>"


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
    # filled with one value, but shaped like the operand: its channels keep their width (zeros_like(h).index_add_(...))
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
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
    "type", "sin", "cos", "reciprocal", "zero", "fill",  # zero_/fill_ as runtime recording writes them
}  # fmt: skip
_FIRST_OPERAND_METHODS = {"type_as", "to", "view_as", "reshape_as", "expand_as"}
_BINARY_METHODS = {"add", "sub", "mul", "div"}
_RESHAPE_FUNCS: set[Any] = {torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "unsqueeze", "squeeze"}
_SPLIT_FUNCS: set[Any] = {torch.split, torch.chunk}
_SPLIT_METHODS = {"split", "chunk"}
_REDUCTIONS = {"softmax", "log_softmax", "mean", "sum", "amax", "amin", "var", "std", "norm", "logsumexp", "prod"}
_SHAPE_METHODS = {"size", "dim"}  # read a tensor, return no tensor
_INDEX_ADD = "index_add"


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
        out = [dataclasses.replace(m, block=m.block * self.scale(node)) for node, m in self.members[root]]
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
    ``dims[i]`` of the tensor (``None``: a dim added by ``expand``/``unsqueeze``, along which the value repeats, or
    the result dims of an integer-tensor index, whose entries are picked by data). ``indexed``: dims of the tensor
    indexed by an integer or an index tensor on the way (``P[e]``); slicing such a dim would change what the
    index picks, so it is never sliced."""

    fqn: str
    dims: tuple[int | None, ...]
    indexed: frozenset[int] = frozenset()


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
    shared: dict[str, list[str]] = {}
    for owners in tied_parameters(model):
        first: dict[int, str] = {}  # one path per module (the first), as named_modules() lists it
        for f, m, _ in owners:
            first.setdefault(id(m), f)
        fs = list(first.values())
        shared.update({f: [o for o in fs if o != f] for f in fs})
    tied: list[tuple[Member, int]] = []  # members of modules that share a parameter, checked once all is known

    # parameters and buffers read outside handled modules (get_attr nodes) may become "param" members
    tensors = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    pview: dict[fx.Node, _PView] = {}  # values that are views of one of ``tensors``
    mapped: set[tuple[fx.Node, fx.Node]] = set()  # (user, view) uses that are understood: views, attachments, shape reads
    tensor_spaces: dict[str, list[tuple[int, int, str]]] = {}  # tensor path -> (space, dim, axis) it was attached to
    # (producer path, axis, offset, piece bounds) -> spaces of the pieces a split cut it into: a producer called
    # again (an expert weight in a loop) is cut the same way and its pieces join the earlier ones
    cuts: dict[tuple[str, str, int, tuple[tuple[int, int], ...]], list[int]] = {}

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

    def attach_param(c: _Chan, fqn: str, j: int | None, part: ModuleRole, where: str) -> bool:
        """Attach dim ``j`` of tensor ``fqn`` to every segment of ``c`` as a ``param`` member playing ``part``;
        ``False`` (and ``c`` frozen) when ``j`` is not a dim of the channels' width or the plan rule
        (:func:`tensor_dim`) would slice another dim of the tensor. A weight's rows or columns are attached to the
        frozen group all the same, so that the group that the weight's units form is reported with its reason."""
        t = tensors[fqn]
        n = width(c)
        if j is None or int(t.shape[j]) != n:
            freeze(c, f"{where}: {fqn} {tuple(t.shape)} is repeated or gathered along the channel dim")
            return False
        r = tensor_dim(tuple(t.shape), n)
        ok = r == j
        if not ok:
            freeze(
                c,
                f"{where}: {fqn} {tuple(t.shape)} varies along the channels on its dim {j}, but a plan of {n} units "
                f"would slice its last dim of size {n} (dim {r})",
            )
            if part == "follower":
                return False
        off = 0
        for seg in c.segs:
            m = Member(fqn, "param", seg.block, off, j, part)
            attach(seg.space, m)
            tensor_spaces.setdefault(fqn, []).append((seg.space, j, m.axis))
            root, block = sp.eff(seg)
            off += sp.size[root] * block
        return ok

    def attach_tensor(node: fx.Node, a: fx.Node, k: int, where: str) -> None:
        """Make the tensor that ``a`` views a ``param`` follower of ``node``'s channels; ``k``: the dim of ``a``
        aligned with them. Frozen when the plan rule (:func:`tensor_dim`) would slice another dim of the tensor."""
        c, pv, a_shape = chan.get(node), pview[a], _shape(a) or ()
        if c is None:  # the channels did not line up: frozen already
            return
        if a_shape[k] != width(c):
            freeze(c, f"{where}: {pv.fqn} {tuple(tensors[pv.fqn].shape)} is repeated along the channel dim")
            return
        if attach_param(c, pv.fqn, pv.dims[k], "follower", where):
            mapped.add((node, a))

    def param_linear(node: fx.Node, x: Any, w: fx.Node, b: Any, rows: int, cols: int, shape: tuple[int, ...]) -> None:
        """``F.linear(x, W, b)`` (``rows=0, cols=1``) or ``x @ W`` (``rows=1, cols=0``) with ``W`` a 2-D view of a
        parameter ``P``: ``y[..., r] = sum_k x[..., k] W[r, k] + b[r]``. The result's last dim is a new space whose
        producer is ``P`` along the dim holding ``W``'s rows; ``x``'s channels (its last dim) are consumed by ``P``
        along the dim holding ``W``'s columns; ``b`` (a view of a tensor) follows the result."""
        pv, ws = pview[w], _shape(w) or ()
        where = f"{_where(node)} ({getattr(node.target, '__name__', node.target)} with weight {pv.fqn})"
        cx = chan.get(x) if isinstance(x, fx.Node) else None
        if cx is not None:
            xs = _shape(x) or ()
            if cx.dim != len(xs) - 1 or width(cx) != ws[cols]:
                freeze(cx, f"{where}: consumes channel dim {cx.dim} in a layout not understood")
            else:
                attach_param(cx, pv.fqn, pv.dims[cols], "consumer", where)
        c = fresh(ws[rows], len(shape) - 1)
        chan[node] = c
        mapped.add((node, w))
        attach_param(c, pv.fqn, pv.dims[rows], "producer", where)
        if isinstance(b, fx.Node):
            if b in pview and len(_shape(b) or ()) == 1:
                attach_tensor(node, b, 0, where)
            else:
                freeze(c, f"{where}: the bias is not a parameter or buffer")

    def recut(m: Member, node_id: int, bounds: list[tuple[int, int]], blk: int, dim: int) -> list[_Chan | None]:
        """Cut the space of producer ``m`` (the only member of the split value) into one space per piece, each with
        the producer as a member at the piece's offset (GPT-2's ``c_attn``, a fused expert ``gate_up_proj``)."""
        mblk = m.block * sp.scale(node_id)
        role_space.pop((m.fqn, m.axis, m.offset), None)
        key = (m.fqn, m.axis, m.offset, tuple(bounds))
        before = cuts.get(key)
        out: list[_Chan | None] = []
        spaces = []
        for i, (a, b) in enumerate(bounds):
            s = sp.new((b - a) // blk)
            piece = dataclasses.replace(m, block=mblk, offset=m.offset + (a // blk) * mblk)
            sp.add(s, piece)
            if m.role == "param":
                assert m.dim is not None
                tensor_spaces.setdefault(m.fqn, []).append((s, m.dim, m.axis))
            if before is not None:
                s = sp.union(before[i], s, f"{m.fqn} called more than once")
            spaces.append(s)
            out.append(_Chan((_Seg(s, blk),), dim))
        cuts[key] = spaces
        return out

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
                if isinstance(m, nn.Embedding) and shape is not None and shape[-1] == h.num_out(m):
                    # inputs are indices (OPT's learned positions also take the attention mask): rows of weight out
                    s = sp.new(h.num_out(m))
                    attach(s, Member(fqn, "producer"))
                    chan[node] = _Chan((_Seg(s),), len(shape) - 1)
                    continue
                if len(ins) != 1 or shape is None:
                    freeze_inputs(node, f"{fqn} called with {len(ins)} tensor inputs")
                    continue
                in_shape = _shape(x)
                assert in_shape is not None
                cdim = h.channel_dim(m) % len(shape)
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
                pieces[node] = _split(node, cx, x, recut, sp, freeze_inputs)
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
        indexes_view = (  # P[e], P[idx]: the other tensor inputs are the indices
            is_fn and t is operator.getitem and node.args[0] is x and not any(a in chan or a in pview for a in ins[1:])
        )
        if x in pview and (len(ins) == 1 or indexes_view):
            v = _view_of(node, pview[x], x, shape)
            if v is not None:
                pview[node] = v
                mapped.add((node, x))
                continue
        # a raw 2-D weight: only when the input's channels, if any, are the contracted last dim (channels on
        # another dim, e.g. attention heads, pass through the generic matmul rule and leave the weight unmapped)
        if is_fn and t is F.linear:
            w, b = _dims_arg(node, 1, "weight"), _dims_arg(node, 2, "bias")
            if w in pview and len(_shape(w) or ()) == 2 and x is node.args[0] and x not in pview and _last(cx, x):
                param_linear(node, x, w, b, 0, 1, shape)
                continue
        w = ins[1] if name == "matmul" and len(ins) == 2 else None
        if w in pview and len(_shape(w) or ()) == 2 and x not in pview and _last(cx, x):
            param_linear(node, x, w, None, 1, 0, shape)
            continue
        if name == _INDEX_ADD:
            base, src, dim = node.args[0], _dims_arg(node, 3, "source"), _dims_arg(node, 1, "dim")
            if not (isinstance(base, fx.Node) and isinstance(src, fx.Node) and isinstance(dim, int)):
                freeze_inputs(node, "index_add arguments not understood")
            elif any(c is not None and c.dim == dim % len(shape) for c in (chan.get(base), chan.get(src))):
                freeze_inputs(node, "index_add along the channel dim")
            else:  # base[index[i]] += source[i] along another dim: entry-wise in the channels, like base + source
                for a, k in _binary(node, [base, src], shape, chan, sp, name, pview.__contains__):
                    attach_tensor(node, a, k, f"{_where(node)} ({name})")
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
    tensor_spaces: Mapping[str, list[tuple[int, int, str]]],
    pview: Mapping[fx.Node, _PView],
    mapped: set[tuple[fx.Node, fx.Node]],
    sp: _Spaces,
) -> None:
    """Freeze the spaces of a ``param`` member that slicing would break elsewhere.

    A tensor is sliced once per plan axis, along one dim, for every use: each use of it (or of a view of it) must
    be one of the attachments, a view, or a shape read. It must also be registered under one name and not belong
    to a module with a handler (that module's handler slices its tensors); the attachments on one axis must couple
    the same dim, the two axes (a functional linear's rows and columns) different dims, and no view may index a
    coupled dim with an integer or an index tensor (``P[e]`` indexes dim 0: slicing it would change what ``e``
    picks; those spaces alone freeze).
    """
    handled: dict[int, str] = {}
    for fqn, m in model.named_modules():
        if handler_for_or_none(m) is not None:
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
                handled.setdefault(id(t), f"{fqn or '<root>'} ({module_type_name(m)})")
    unmapped: dict[str, str] = {}
    indexed: dict[str, set[int]] = {}
    for n, pv in pview.items():
        indexed.setdefault(pv.fqn, set()).update(pv.indexed)
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
        by_axis = {a: sorted({d for _, d, ax in spaces if ax == a}) for a in ("out", "in")}
        for a, dims in by_axis.items():
            if len(dims) > 1:
                why.append(f"{path} {tuple(t.shape)} would be sliced along dims {dims} for its {a} axis")
        if set(by_axis["out"]) & set(by_axis["in"]):
            why.append(f"{path} {tuple(t.shape)} couples dim {sorted(set(by_axis['out']) & set(by_axis['in']))} twice")
        for s, d, _ in spaces:
            for w in why:
                sp.freeze(s, w)
            if d in indexed.get(path, ()):
                sp.freeze(s, f"{path} {tuple(t.shape)} is indexed along its dim {d}, which slicing would shift")


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
        return dataclasses.replace(pv, dims=(None,) * extra + pv.dims) if ok else None
    if name in ("view", "reshape", "flatten", "unsqueeze", "squeeze", "view_as", "reshape_as"):
        kept = [d for d, n in enumerate(in_shape) if n != 1]
        if [in_shape[d] for d in kept] != [n for n in shape if n != 1]:
            return None
        it = iter(kept)
        return dataclasses.replace(pv, dims=tuple(pv.dims[next(it)] if n != 1 else None for n in shape))
    nd = len(in_shape)
    try:
        if name == "permute":
            dims = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (list, tuple)) else node.args[1]
            perm = [int(cast(int, v)) % nd for v in cast(Sequence[Any], dims)]
            return dataclasses.replace(pv, dims=tuple(pv.dims[d] for d in perm)) if sorted(perm) == list(range(nd)) else None
        if name in ("transpose", "swapaxes", "swapdims", "t"):
            a, b = (0, 1) if name == "t" else (int(_dims_arg(node, 1, "dim0")) % nd, int(_dims_arg(node, 2, "dim1")) % nd)
            dims_ = list(pv.dims)
            if nd >= 2:
                dims_[a], dims_[b] = dims_[b], dims_[a]
            return dataclasses.replace(pv, dims=tuple(dims_))
    except (TypeError, ValueError, IndexError):
        return None
    if is_fn and t is operator.getitem:  # full slices, None, ints and index tensors (P[e]: an expert's weight)
        layout = _index_layout(node, in_shape, shape)
        if layout is None or layout[1]:
            return None
        src, _, indexed = layout
        return _PView(
            pv.fqn,
            tuple(pv.dims[d] if d is not None else None for d in src),
            pv.indexed | {j for d in indexed if (j := pv.dims[d]) is not None},
        )
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


def _last(c: _Chan | None, x: fx.Node | None) -> bool:
    """No channels, or channels on the last dim of ``x``."""
    return c is None or c.dim == len(_shape(x) or ()) - 1


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


def _index_layout(
    node: fx.Node, in_shape: tuple[int, ...], shape: tuple[int, ...] | None
) -> tuple[list[int | None], set[int], set[int]] | None:
    """How ``x[idx]`` (``node``) maps dims, for basic indexing (ints, slices, ``None``, ``...``) and integer or
    boolean index tensors (PyTorch's advanced indexing: with an index tensor, integers index alongside it; the
    advanced result dims replace the indexed dims where those are adjacent, else they come first).

    Returns ``(src, partial, indexed)``: ``src[i]`` is the input dim kept whole or sliced as output dim ``i``
    (``None``: a new dim, or a dim of the advanced result), ``partial`` the kept dims sliced to a part, ``indexed``
    the input dims consumed by ints or index tensors. ``None`` when the index is not understood or the result
    shape disagrees.
    """
    idx = node.args[1]
    raw = list(idx) if isinstance(idx, (tuple, list)) and not isinstance(idx, fx.Node) else [idx]
    if isinstance(idx, list):  # x[[0, 2]]: a list index is one advanced index
        return None
    items: list[tuple[str, Any, int, int]] = []  # (kind, item, input dims consumed, advanced result dims)
    for it in raw:
        if it is None:
            items.append(("new", it, 0, 0))
        elif it is Ellipsis:
            items.append(("ellipsis", it, 0, 0))
        elif isinstance(it, bool):
            return None
        elif isinstance(it, int):
            items.append(("int", it, 1, 0))
        elif isinstance(it, slice):
            if not all(v is None or isinstance(v, int) for v in (it.start, it.stop, it.step)):
                return None
            items.append(("slice", it, 1, 0))
        elif isinstance(it, fx.Node):
            meta = it.meta.get("tensor_meta")
            dtype, nd_i = getattr(meta, "dtype", None), len(getattr(meta, "shape", None) or ())
            if meta is None or dtype is None:
                return None
            if dtype == torch.bool:
                items.append(("tensor", it, nd_i, 1))
            elif not dtype.is_floating_point and not dtype.is_complex:
                items.append(("tensor", it, 1, nd_i))
            else:
                return None
        else:
            return None
    if sum(k == "ellipsis" for k, *_ in items) > 1:
        return None
    rest = len(in_shape) - sum(c for _, _, c, _ in items)
    if rest < 0:
        return None
    expanded: list[tuple[str, Any, int, int]] = []
    for item in items:
        expanded += [("slice", slice(None), 1, 0)] * rest if item[0] == "ellipsis" else [item]
    if not any(k == "ellipsis" for k, *_ in items):
        expanded += [("slice", slice(None), 1, 0)] * rest
    advanced = any(k == "tensor" for k, *_ in expanded)
    adv_pos = [i for i, (k, *_) in enumerate(expanded) if k == "tensor" or (advanced and k == "int")]
    adv_nd = max((a for k, _, _, a in expanded if k == "tensor"), default=0)
    adjacent = not adv_pos or adv_pos == list(range(adv_pos[0], adv_pos[-1] + 1))
    src: list[int | None] = []
    partial: set[int] = set()
    indexed: set[int] = set()
    d = 0
    for i, (kind, it, consumed, _) in enumerate(expanded):
        if kind == "new":
            src.append(None)
        elif kind == "slice":
            full = it.start in (None, 0) and it.step in (None, 1) and (it.stop is None or it.stop >= in_shape[d])
            if not full:
                partial.add(d)
            src.append(d)
        else:  # an int, or an index tensor: consumed
            indexed.update(range(d, d + consumed))
            if advanced and adjacent and i == adv_pos[0]:
                src += [None] * adv_nd
        d += consumed
    if advanced and not adjacent:
        src = [cast(int | None, None)] * adv_nd + src
    if (
        shape is None
        or len(src) != len(shape)
        or any(s is not None and s not in partial and shape[o] != in_shape[s] for o, s in enumerate(src))
    ):
        return None
    return src, partial, indexed


def _index(node: fx.Node, cx: _Chan, x: fx.Node | None, chan: dict[fx.Node, _Chan], freeze_inputs: Callable[..., None]) -> None:
    """Indexing (ints, slices, None, ..., index tensors) that leaves the channel dim whole keeps it (at its new
    position): ``hidden[token_idx]`` gathers tokens and keeps the channels."""
    layout = _index_layout(node, _shape(x) or (), _shape(node))
    if layout is None:
        freeze_inputs(node, "indexing not understood")
        return
    src, partial, indexed = layout
    if cx.dim in indexed:
        freeze_inputs(node, "indexes the channel dim or uses advanced indexing")
        return
    if cx.dim in partial:
        freeze_inputs(node, "slices the channel dim")
        return
    chan[node] = _Chan(cx.segs, src.index(cx.dim))


def _split(
    node: fx.Node,
    cx: _Chan,
    x: fx.Node | None,
    recut: Callable[[Member, int, list[tuple[int, int]], int, int], list[_Chan | None]],
    sp: _Spaces,
    freeze_inputs: Callable[..., None],
) -> list[_Chan | None]:
    """split / chunk. Along another dim every piece keeps the channels. Along the channel dim a piece must be whole
    segments (undoing a ``torch.cat``), or the split value must come straight from one producer used nowhere else
    (GPT-2's fused ``c_attn`` -> q, k, v; a fused expert weight ``gate_up_proj[e]`` -> gate, up): its space is
    then re-cut into one space per piece (``recut``), each with the producer as a member at the piece's offset."""
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
        and mem[0][1].part == "producer"
        and not sp.reasons[root]
        and all(a % blk == 0 and b % blk == 0 for a, b in bounds)
    ):
        node_id, m = mem[0]
        sp.members[root] = []
        return recut(m, node_id, bounds, blk, cx.dim)
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
