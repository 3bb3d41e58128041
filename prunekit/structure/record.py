"""Runtime recording of a model's dataflow into a ``torch.fx.Graph``, for models that ``torch.fx`` cannot trace.

``torch.fx.symbolic_trace`` fails on data-dependent control flow, on ``**kwargs`` forwards and on models that
return dicts of tensors or cache objects (most Hugging Face models). Running the model once on an example input
always works, so :func:`record_graph` does that under a :class:`~torch.overrides.TorchFunctionMode` and writes
every torch function and tensor method it sees as an fx node, with the shape of its result in
``node.meta["tensor_meta"]`` (the same annotation :class:`torch.fx.passes.shape_prop.ShapeProp` makes). Modules
with a structure handler (Linear, Conv, norms, Embedding, ...) are recorded as one ``call_module`` node each and
their insides are not recorded, exactly as fx treats leaf modules; everything else (attention, activations,
reshapes) is recorded op by op. :func:`prunekit.structure.graph.build_groups` then reads either graph the same way.

How values are followed: a tensor produced by a recorded op is known by its ``id`` (every recorded tensor is kept
alive until recording ends, so ids are never reused); a tensor that no recorded op produced is a parameter or
buffer (a ``get_attr`` node naming it) or a constant (a ``get_attr`` node ``_constant``). In-place ops and
``x[i] = y`` make the tensor's later uses point at the in-place node. The recorded graph is a description of one
execution, not a program: it is never run.

Only what ran is seen: branches not taken with the example input are not analysed, as with any tracer; give an
example input that exercises the path you prune with (e.g. ``use_cache=False`` for generation models, which
:func:`record_graph` sets for Hugging Face configs that have it). A data-dependent loop records the iterations
that ran: a mixture-of-experts layer records the experts the example routes tokens to, and since every expert
indexes the same fused weight the same way, the coupling seen is the same.

Hugging Face mixture-of-experts models dispatch their experts to fused kernels (``grouped_mm`` by default in
transformers 5, ``batched_mm``); while recording, :func:`record_graph` switches them to ``"eager"`` with the
model's ``set_experts_implementation`` and restores the previous choice afterwards, so the recorded ops are the
documented per-expert computation (``F.linear(x, gate_up_proj[e])``, ``chunk``, ``act(gate) * up``, ``F.linear(h,
down_proj[e])``, ``index_add_``), as gradients stay enabled to keep other fused inference paths off.
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.overrides import TorchFunctionMode

from prunekit.structure.handlers import StructureError

log = logging.getLogger(__name__)
# Tensor dunders recorded as the fx target fx itself would write: (target, swap operands)
_DUNDERS: dict[str, tuple[Any, bool]] = {
    "__add__": (operator.add, False), "__radd__": (operator.add, True), "__iadd__": (operator.add, False),
    "__sub__": (operator.sub, False), "__rsub__": (operator.sub, True), "__isub__": (operator.sub, False),
    "__mul__": (operator.mul, False), "__rmul__": (operator.mul, True), "__imul__": (operator.mul, False),
    "__truediv__": (operator.truediv, False), "__rtruediv__": (operator.truediv, True),
    "__itruediv__": (operator.truediv, False), "__matmul__": (torch.matmul, False), "__rmatmul__": (torch.matmul, True),
    "__getitem__": (operator.getitem, False), "__setitem__": (operator.setitem, False),
    "__neg__": ("neg", False), "__pow__": ("pow", False),
}  # fmt: skip


@dataclass(frozen=True)
class TensorMeta:
    """What ``build_groups`` reads from ``node.meta["tensor_meta"]``."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def _is_method(func: Any) -> bool:
    q = getattr(func, "__qualname__", "")
    return q.startswith(("TensorBase.", "Tensor.")) and not q.startswith("Tensor.__torch_function__")


def _tensors(x: Any) -> Iterator[Tensor]:
    """Every tensor in a nest of tuples, lists and dicts (Hugging Face ``ModelOutput`` is a dict)."""
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, Mapping):
        for v in x.values():
            yield from _tensors(v)


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, is_leaf: Callable[[nn.Module], bool]) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.node_of: dict[int, fx.Node] = {}
        self.alive: list[Tensor] = []  # keeps every recorded tensor alive: ids stay unique while recording
        self.names = {id(t): n for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]}
        self.fqn = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.is_leaf = is_leaf
        self.depth = 0  # > 0 while inside a leaf module: its internals are not recorded
        self.stack: list[tuple[str, type]] = []
        self.leaf_inputs: list[list[Any]] = []

    # -- values -------------------------------------------------------------------------------------------
    def _set(self, t: Tensor, node: fx.Node) -> None:
        node.meta["tensor_meta"] = TensorMeta(tuple(t.shape), t.dtype)
        if self.stack:
            path, cls = self.stack[-1]
            node.meta["nn_module_stack"] = {path: (path, cls)}
        self.node_of[id(t)] = node
        self.alive.append(t)

    def value(self, x: Any) -> Any:
        """Argument -> fx argument: tensors become nodes (get_attr for parameters, buffers and constants)."""
        if isinstance(x, Tensor):
            node = self.node_of.get(id(x))
            if node is None:
                node = self.graph.get_attr(self.names.get(id(x), "_constant"))
                self._set(x, node)
            return node
        if isinstance(x, (list, tuple)) and not isinstance(x, torch.Size):
            vals = [self.value(v) for v in x]
            return vals if isinstance(x, list) else tuple(vals)
        if isinstance(x, dict):
            return {k: self.value(v) for k, v in x.items()}
        if x is None or isinstance(x, (int, float, bool, str, slice, torch.dtype, torch.device, torch.Size, type(...))):
            if isinstance(x, slice):
                return slice(self.value(x.start), self.value(x.stop), self.value(x.step))
            return tuple(x) if isinstance(x, torch.Size) else x
        return f"<{type(x).__name__}>"  # opaque objects (caches, functions): kept as a label

    def emit(self, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        node = self.graph.create_node(op, target, tuple(self.value(a) for a in args), self.value(kwargs))
        if isinstance(out, Tensor):
            self._set(out, node)
        elif isinstance(out, (list, tuple)):
            node.meta["tensor_meta"] = None
            for i, t in enumerate(out):
                if isinstance(t, Tensor):
                    self._set(t, self.graph.call_function(operator.getitem, (node, i)))

    # -- torch functions ----------------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth > 0:
            return out
        name = getattr(func, "__name__", "")
        in_place = False
        if _is_method(func) or name in _DUNDERS:
            if name in _DUNDERS:
                target, swap = _DUNDERS[name]
                in_place = name.startswith("__i") or name == "__setitem__"
                if swap:
                    args = (args[1], args[0], *args[2:])
                op = "call_method" if isinstance(target, str) else "call_function"
            elif name == "__get__" or name.startswith("_"):
                op, target = "call_function", func
            else:
                in_place = name.endswith("_") and not name.endswith("__")
                op, target = "call_method", name.rstrip("_") if in_place else name
        else:
            op, target = "call_function", func
            in_place = "out" in kwargs
        if in_place:  # the mutated tensor's later uses see this node
            out = args[0] if name == "__setitem__" or "out" not in kwargs else kwargs["out"]
            if not isinstance(out, Tensor):
                return out
            self.emit(op, target, args, kwargs, out)
            return args[0] if name == "__setitem__" else out
        if next(_tensors(out), None) is None:
            return out  # shape reads, .item(), comparisons to Python numbers...
        self.emit(op, target, args, kwargs, out)
        return out

    # -- module hooks -------------------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.stack.append((self.fqn.get(id(module), "?"), type(module)))
        if self.is_leaf(module):
            if self.depth == 0:
                self.leaf_inputs.append([self.value(a) for a in args] + [self.value(v) for v in kwargs.values()])
            self.depth += 1

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if self.is_leaf(module):
            self.depth -= 1
            if self.depth == 0:
                ins = self.leaf_inputs.pop()
                node = self.graph.create_node("call_module", self.fqn[id(module)], tuple(ins), {})
                if isinstance(out, Tensor):
                    self._set(out, node)
                else:
                    node.meta["tensor_meta"] = None
        self.stack.pop()


@contextmanager
def _hf_no_cache(model: nn.Module) -> Iterator[None]:
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "use_cache", None)
    if old:
        cfg.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if old:
            cfg.use_cache = old  # type: ignore[union-attr]


@contextmanager
def _hf_eager_experts(model: nn.Module) -> Iterator[None]:
    """Hugging Face mixture-of-experts layers run their per-expert loop (``"eager"``) instead of a fused kernel."""
    get, put = getattr(model, "get_experts_implementation", None), getattr(model, "set_experts_implementation", None)
    if not callable(get) or not callable(put):
        yield
        return
    try:
        before = get()
        switch = any(v not in (None, "eager") for v in before.values())
        if switch:
            put("eager")
    except (RuntimeError, ValueError, KeyError, AttributeError) as e:  # a load-time-only kernel, an odd config
        log.info("recording with the model's experts implementation (cannot switch it to eager: %s)", e)
        switch = False
    try:
        yield
    finally:
        if switch:
            put(before)


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model(*input)`` for a tensor or tuple, ``model(**input)`` for a dict (e.g. a tokenizer's output)."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    return model(*(example_input if isinstance(example_input, tuple) else (example_input,)))


def record_graph(model: nn.Module, example_input: Any, is_leaf: Callable[[nn.Module], bool]) -> fx.Graph:
    """Run ``model`` once on ``example_input`` (eval mode, state restored) and return the recorded graph.

    ``is_leaf(module)`` says which modules are recorded as single ``call_module`` nodes. Gradients stay enabled
    while recording: PyTorch's fused inference paths (``nn.TransformerEncoderLayer``'s fast path) are then not
    taken, so the recorded ops are the module's documented computation.
    """
    rec = _Recorder(model, is_leaf)
    inputs = (
        example_input.items()
        if isinstance(example_input, Mapping)
        else enumerate(example_input if isinstance(example_input, tuple) else (example_input,))
    )
    for key, v in inputs:
        for i, t in enumerate(_tensors(v)):
            rec._set(t, rec.graph.placeholder(f"input_{key}_{i}"))
    hooks = []
    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
        hooks.append(m.register_forward_hook(rec.post_hook, with_kwargs=True))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with _hf_no_cache(model), _hf_eager_experts(model), torch.enable_grad(), warnings.catch_warnings(), rec:
            # gradients are on only to keep fused inference paths off; scalar reads (``float(x.mean())``) would warn
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
            out = call_model(model, example_input)
    except StructureError:
        raise
    except Exception as e:
        where = f" in '{rec.stack[-1][0]}' ({rec.stack[-1][1].__name__})" if rec.stack else ""
        raise StructureError(f"running {type(model).__name__} on the example input failed{where}: {type(e).__name__}: {e}") from e
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    rec.graph.output(tuple(rec.value(t) for t in _tensors(out)))
    return rec.graph
