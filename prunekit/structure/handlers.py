"""Per-module-type surgery: stateless handlers that remove output or input units of one module.

Handlers live in :data:`HANDLERS`, a :class:`~prunekit.registry.Registry` keyed by **class name** (the name
:func:`prunekit.masks.module_type_name` reports, so a parametrized ``Linear`` is still ``"Linear"``), the same
convention as ``Targets.types``. Lookup is by exact name: a subclass of ``nn.Linear`` with its own ``forward`` is
*not* silently treated as a ``Linear``; register a handler for it (``HANDLERS.register("MyLinear")(LINEAR)``).

A handler owns no state: every call gets the module and the 1-D ``kept`` indices (sorted, unique) of the axis it
changes. It replaces parameters and buffers by ``index_select``-ed copies and updates the module's attributes
(``in_features``, ``out_channels``, ``num_features``, ``normalized_shape``, ``groups`` ...), so the module stays
consistent and ``repr``/re-construction agree with its tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from prunekit.errors import PrunekitError
from prunekit.masks import module_type_name
from prunekit.registry import Registry


class StructureError(PrunekitError, ValueError):
    """A structural removal cannot be done: unsupported module, inconsistent plan, or an untraceable model."""


def select_(module: nn.Module, name: str, dim: int, kept: Tensor) -> None:
    """Replace ``module.<name>`` (parameter or buffer; ``None`` is left alone) by its ``index_select`` along ``dim``."""
    if name in module._parameters:
        p = module._parameters[name]
        if p is None:
            return
        module._parameters[name] = nn.Parameter(p.detach().index_select(dim, kept.to(p.device)).clone(), p.requires_grad)
    elif name in module._buffers:
        b = module._buffers[name]
        if b is None:
            return
        module._buffers[name] = b.index_select(dim, kept.to(b.device)).clone()
    else:
        raise StructureError(f"{type(module).__name__} has no parameter or buffer {name!r}")


class AbstractHandler(ABC):
    """Interface of a stateless per-type handler."""

    def passthrough(self, module: nn.Module) -> bool:
        """True when output unit ``i`` depends only on input unit ``i`` (BatchNorm, LayerNorm, depthwise conv):
        the module then passes its input's channel group through instead of starting a new one."""
        return False

    def unit_dim(self, module: nn.Module) -> int | None:
        """The weight dimension that indexes output units (to read Channel masks); ``None``: not a producer."""
        return 0

    @abstractmethod
    def channel_dim(self, module: nn.Module) -> int:
        """Which dimension of the module's input and output carries the channels: ``1`` (N, C, ...) or ``-1``."""

    @abstractmethod
    def num_out(self, module: nn.Module) -> int:
        """Number of output units."""

    @abstractmethod
    def num_in(self, module: nn.Module) -> int:
        """Number of input units."""

    @abstractmethod
    def prune_out(self, module: nn.Module, kept: Tensor) -> None:
        """Keep only output units ``kept``."""

    @abstractmethod
    def prune_in(self, module: nn.Module, kept: Tensor) -> None:
        """Keep only input units ``kept``."""


HANDLERS: Registry[AbstractHandler] = Registry("structure handler")


def handler_for_or_none(module: nn.Module) -> AbstractHandler | None:
    """The handler for ``module``'s class name; RMS norms of any model family (``LlamaRMSNorm``, ``Qwen2RMSNorm``
    ...: a class name ending in ``RMSNorm`` with a 1-D ``weight``) and ``nn.LayerNorm`` subclasses named ``*LayerNorm``
    (ConvNeXt's, whose ``data_format`` may put channels first) share the last-dim norm handler; ``nn.Embedding``
    subclasses (OPT's learned positional embedding, which offsets the indices) get the embedding handler, and
    ``nn.Linear``/``nn.ConvNd`` subclasses that keep the base class's ``forward`` (``NonDynamicallyQuantizableLinear``)
    the base handler; else ``None``."""
    name = module_type_name(module)
    if name in HANDLERS:
        return HANDLERS.get(name)
    w = getattr(module, "weight", None)
    if name.endswith("RMSNorm") and isinstance(w, Tensor) and w.dim() == 1:
        return LAYERNORM
    if isinstance(module, nn.LayerNorm) and name.endswith("LayerNorm"):  # e.g. ConvNeXt's, with a data_format
        return LAYERNORM
    if isinstance(module, nn.Embedding):  # e.g. OPT's learned positions: forward offsets the indices, rows of weight out
        return EMBEDDING
    for base in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):  # subclasses that keep the base forward
        if isinstance(module, base) and type(module).forward is base.forward:
            return HANDLERS.get(base.__name__)
    return None


def handler_for(module: nn.Module, fqn: str = "") -> AbstractHandler:
    """The handler for ``module``'s class, or a :class:`StructureError` naming the module and its type."""
    h = handler_for_or_none(module)
    if h is not None:
        return h
    name = module_type_name(module)
    where = fqn or "<root>"
    raise StructureError(
        f"module {where!r} of type {name} has no structure handler; supported: {', '.join(HANDLERS.names())}. "
        f"Register one with prunekit.structure.handlers.HANDLERS.register({name!r})(handler)"
    )


# -- raw parameters and buffers (group members of role "param") -------------------------------------------------


def tensor_dim(shape: Sequence[int], size: int) -> int | None:
    """The dim of a parameter/buffer of ``shape`` that a plan entry of ``size`` units slices: the *last* dim of that
    size (layer scale (C,) -> 0; class token (1, 1, D) -> 2; position embeddings (1, N, D) -> 2; a conv scale
    (C, 1, 1) -> 0; a fused expert weight ``gate_up_proj`` (E, 2I, H): 2I -> 1, H -> 2, ``down_proj`` (E, H, I):
    H -> 1, I -> 2 when the sizes differ); ``None`` if no dim has that size. The dependency graph only makes a
    tensor a group member when the dim it couples is the one this rule picks, so a plan needs no extra field to be
    replayed (with ``H == 2I`` the intermediate units of ``gate_up_proj`` stay frozen)."""
    dims = [d for d, n in enumerate(shape) if n == size]
    return dims[-1] if dims else None


def model_tensor(model: nn.Module, path: str) -> tuple[nn.Module, str, Tensor] | None:
    """``(owner module, attribute name, tensor)`` of the parameter or buffer registered at ``path`` (e.g.
    ``encoder.layers.0.layer_scale``); ``None`` if ``path`` names no parameter or buffer (a module, a plain tensor
    attribute, a parametrized tensor, nothing)."""
    prefix, _, name = path.rpartition(".")
    try:
        owner = model.get_submodule(prefix)
    except AttributeError:
        return None
    t = owner._parameters.get(name, owner._buffers.get(name))
    return (owner, name, t) if isinstance(t, Tensor) else None


def tensor_aliases(model: nn.Module, path: str) -> list[str]:
    """Other paths at which the tensor registered at ``path`` is registered *in another slot* (another module or
    attribute name): replacing it at ``path`` would untie them. A module reachable by two paths is one slot."""
    found = model_tensor(model, path)
    if found is None:
        return []
    owner, name, t = found
    out = []
    for p, v in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        if v is t and p != path:
            o = model_tensor(model, p)
            if o is None or o[0] is not owner or o[1] != name:
                out.append(p)
    return out


class LinearHandler(AbstractHandler):
    """``nn.Linear``: weight (out, in), bias (out)."""

    def channel_dim(self, module: nn.Module) -> int:
        return -1

    def num_out(self, module: nn.Module) -> int:
        m = cast(nn.Linear, module)
        return int(m.out_features)

    def num_in(self, module: nn.Module) -> int:
        m = cast(nn.Linear, module)
        return int(m.in_features)

    def prune_out(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.Linear, module)
        select_(module, "weight", 0, kept)
        select_(module, "bias", 0, kept)
        m.out_features = len(kept)

    def prune_in(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.Linear, module)
        select_(module, "weight", 1, kept)
        m.in_features = len(kept)


def _per_group(kept: Tensor, total: int, groups: int, what: str, module: nn.Module) -> list[Tensor]:
    """Split global ``kept`` indices into per-group local indices; every group must keep the same number."""
    size = total // groups
    local = [kept[(kept >= g * size) & (kept < (g + 1) * size)] - g * size for g in range(groups)]
    counts = {len(x) for x in local}
    if len(counts) != 1:
        raise StructureError(
            f"{type(module).__name__} with groups={groups}: removing {what} must keep the same number per group "
            f"(kept per group: {[len(x) for x in local]})"
        )
    return local


class ConvHandler(AbstractHandler):
    """``nn.Conv1d/2d/3d``, ordinary, grouped and depthwise (``groups == in_channels == out_channels``).

    Depthwise: output channel i reads only input channel i, so the handler is a pass-through and ``prune_out``
    and ``prune_in`` both remove the channel from input, output and ``groups``. Grouped (1 < groups): each group
    must keep the same number of output (or input) channels, otherwise a :class:`StructureError` is raised.
    """

    @staticmethod
    def _depthwise(module: nn.Module) -> bool:
        m = cast(nn.Conv2d, module)
        return bool(m.groups > 1 and m.groups == m.in_channels == m.out_channels)

    def passthrough(self, module: nn.Module) -> bool:
        return self._depthwise(module)

    def channel_dim(self, module: nn.Module) -> int:
        return 1

    def num_out(self, module: nn.Module) -> int:
        m = cast(nn.Conv2d, module)
        return int(m.out_channels)

    def num_in(self, module: nn.Module) -> int:
        m = cast(nn.Conv2d, module)
        return int(m.in_channels)

    def _prune_depthwise(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.Conv2d, module)
        select_(module, "weight", 0, kept)
        select_(module, "bias", 0, kept)
        m.in_channels = m.out_channels = m.groups = len(kept)

    def prune_out(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.Conv2d, module)
        if self._depthwise(module):
            self._prune_depthwise(module, kept)
            return
        if m.groups > 1:
            _per_group(kept, int(m.out_channels), int(m.groups), "output channels", module)
        select_(module, "weight", 0, kept)
        select_(module, "bias", 0, kept)
        m.out_channels = len(kept)

    def prune_in(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.Conv2d, module)
        if self._depthwise(module):
            self._prune_depthwise(module, kept)
            return
        g = int(m.groups)
        if g == 1:
            select_(module, "weight", 1, kept)
        else:
            local = _per_group(kept, int(m.in_channels), g, "input channels", module)
            w = m.weight
            rows = w.shape[0] // g
            parts = [w.detach()[i * rows : (i + 1) * rows].index_select(1, idx.to(w.device)) for i, idx in enumerate(local)]
            m.weight = nn.Parameter(torch.cat(parts, 0).clone(), w.requires_grad)
        m.in_channels = len(kept)


class _PerChannelHandler(AbstractHandler):
    """A normalisation layer acting per channel: one axis (``out`` and ``in`` are the same units, so the module is a
    pass-through follower), parameters and statistics indexed by channel on dim 0 (no unit dim of a weight matrix).
    Subclasses give the width (:meth:`num_out`) and slice their tensors (:meth:`prune_out`)."""

    def passthrough(self, module: nn.Module) -> bool:
        return True

    def unit_dim(self, module: nn.Module) -> int | None:
        return None

    def channel_dim(self, module: nn.Module) -> int:
        return 1

    def num_in(self, module: nn.Module) -> int:
        return self.num_out(module)

    def prune_in(self, module: nn.Module, kept: Tensor) -> None:
        self.prune_out(module, kept)


class BatchNormHandler(_PerChannelHandler):
    """``nn.BatchNorm1d/2d/3d``: affine weight/bias and running statistics, one entry per channel."""

    def num_out(self, module: nn.Module) -> int:
        m = cast(nn.BatchNorm2d, module)
        return int(m.num_features)

    def prune_out(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.BatchNorm2d, module)
        for name in ("weight", "bias", "running_mean", "running_var"):
            select_(module, name, 0, kept)
        m.num_features = len(kept)


class LastDimNormHandler(_PerChannelHandler):
    """Normalisation over the last dimension with per-feature affine parameters: ``nn.LayerNorm``, ``nn.RMSNorm``
    and the RMS norms of model families (``LlamaRMSNorm`` ...: ``weight`` only, no ``normalized_shape``).

    Removing features changes the statistics these normalise with (mean and variance, or the root mean square),
    so slimming through them is *not* function-preserving even for dead features (unlike BatchNorm in eval mode).
    """

    def channel_dim(self, module: nn.Module) -> int:
        return 1 if getattr(module, "data_format", None) == "channels_first" else -1

    def num_out(self, module: nn.Module) -> int:
        shape = getattr(module, "normalized_shape", None)
        if shape is not None:
            if len(shape) != 1:
                raise StructureError(
                    f"{type(module).__name__} with normalized_shape={tuple(shape)}: only one normalised dimension is supported"
                )
            return int(shape[0])
        return int(cast(Tensor, module.weight).shape[0])

    def prune_out(self, module: nn.Module, kept: Tensor) -> None:
        self.num_out(module)  # validates
        for name in ("weight", "bias"):
            if name in module._parameters:
                select_(module, name, 0, kept)
        if getattr(module, "normalized_shape", None) is not None:
            module.__dict__["normalized_shape"] = (len(kept),)


class GroupNormHandler(_PerChannelHandler):
    """``nn.GroupNorm``: only whole groups can be removed (then ``num_groups`` shrinks and the result is exact)."""

    def num_out(self, module: nn.Module) -> int:
        m = cast(nn.GroupNorm, module)
        return int(m.num_channels)

    def prune_out(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.GroupNorm, module)
        c, g = int(m.num_channels), int(m.num_groups)
        size = c // g
        keep = torch.zeros(c, dtype=torch.bool)
        keep[kept] = True
        per_group = keep.reshape(g, size)
        partial = [i for i in range(g) if 0 < int(per_group[i].sum()) < size]
        if partial:
            raise StructureError(
                f"GroupNorm(num_groups={g}, num_channels={c}): channels can only be removed in whole groups of {size}; "
                f"groups {partial} would be split"
            )
        select_(module, "weight", 0, kept)
        select_(module, "bias", 0, kept)
        m.num_channels = len(kept)
        m.num_groups = len(kept) // size


class EmbeddingHandler(AbstractHandler):
    """``nn.Embedding``: output units are embedding dimensions (weight dim 1); input units are vocabulary rows."""

    def unit_dim(self, module: nn.Module) -> int | None:
        return 1

    def channel_dim(self, module: nn.Module) -> int:
        return -1

    def num_out(self, module: nn.Module) -> int:
        m = cast(nn.Embedding, module)
        return int(m.embedding_dim)

    def num_in(self, module: nn.Module) -> int:
        m = cast(nn.Embedding, module)
        return int(m.num_embeddings)

    def prune_out(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.Embedding, module)
        select_(module, "weight", 1, kept)
        m.embedding_dim = len(kept)

    def prune_in(self, module: nn.Module, kept: Tensor) -> None:
        m = cast(nn.Embedding, module)
        pad = m.padding_idx
        if pad is not None:
            hits = (kept == pad).nonzero()
            if len(hits) == 0:
                raise StructureError(f"Embedding: padding_idx {pad} would be removed")
            m.padding_idx = int(hits[0, 0])
        select_(module, "weight", 0, kept)
        m.num_embeddings = len(kept)


class HFConv1DHandler(AbstractHandler):
    """Hugging Face ``Conv1D`` (GPT-2): a linear layer with ``weight`` stored (in, out) and attributes ``nx``, ``nf``."""

    def unit_dim(self, module: nn.Module) -> int | None:
        return 1

    def channel_dim(self, module: nn.Module) -> int:
        return -1

    def num_out(self, module: nn.Module) -> int:
        return int(cast(Tensor, module.weight).shape[1])

    def num_in(self, module: nn.Module) -> int:
        return int(cast(Tensor, module.weight).shape[0])

    def prune_out(self, module: nn.Module, kept: Tensor) -> None:
        select_(module, "weight", 1, kept)
        select_(module, "bias", 0, kept)
        module.__dict__["nf"] = len(kept)

    def prune_in(self, module: nn.Module, kept: Tensor) -> None:
        select_(module, "weight", 0, kept)
        if hasattr(module, "nx"):
            module.__dict__["nx"] = len(kept)


LINEAR = LinearHandler()
CONV = ConvHandler()
BATCHNORM = BatchNormHandler()
LAYERNORM = LastDimNormHandler()
GROUPNORM = GroupNormHandler()
EMBEDDING = EmbeddingHandler()
HF_CONV1D = HFConv1DHandler()

HANDLERS.register("Linear")(LINEAR)
for _n in ("Conv1d", "Conv2d", "Conv3d"):
    HANDLERS.register(_n)(CONV)
for _n in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
    HANDLERS.register(_n)(BATCHNORM)
HANDLERS.register("LayerNorm")(LAYERNORM)
HANDLERS.register("GroupNorm")(GROUPNORM)
HANDLERS.register("Embedding")(EMBEDDING)
HANDLERS.register("RMSNorm")(LAYERNORM)
HANDLERS.register("Conv1D")(HF_CONV1D)  # transformers.pytorch_utils.Conv1D (torch's own is Conv1d)


# -- attention modules: head counts follow the projections ------------------------------------------------------

_Q_NAMES = ("q_proj", "query", "q", "q_lin", "q_attn")
_K_NAMES = ("k_proj", "key", "k", "k_lin")
_HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")


def _width(m: nn.Module | None) -> int | None:
    if m is None:
        return None
    h = handler_for_or_none(m)
    return h.num_out(m) if h is not None else None


def sync_attention_attributes_(model: nn.Module) -> list[str]:
    """After heads were removed, set the head counts attention modules keep as attributes; returns what changed.

    Removing heads shrinks the q/k/v/o projections (the plan) but not ``num_heads``-style integers, and some
    forwards read them (OPT: ``view(bsz, -1, self.num_heads, self.head_dim)`` — a stale count there silently
    reshapes the *sequence* instead of failing). For every module with an integer ``head_dim`` (or
    ``attention_head_size``) and a query projection child, the head count attributes become
    ``query width // head_dim``, ``num_key_value_heads`` becomes ``key width // head_dim``, ``all_head_size`` the
    query width, and GPT-2's fused ``c_attn`` gets ``split_size`` = its width / 3.
    """
    changed: list[str] = []

    def put(m: nn.Module, fqn: str, attr: str, value: int) -> None:
        if isinstance(getattr(m, attr, None), int) and getattr(m, attr) != value:
            setattr(m, attr, value)
            changed.append(f"{fqn}.{attr}={value}")

    for fqn, m in model.named_modules():
        hd = getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None)
        if not isinstance(hd, int) or hd <= 0:
            continue
        children = dict(m.named_children())
        q = next((w for n in _Q_NAMES if (w := _width(children.get(n))) is not None), None)
        k = next((w for n in _K_NAMES if (w := _width(children.get(n))) is not None), None)
        fused = _width(children.get("c_attn"))
        if fused is not None:  # GPT-2: c_attn = [q | k | v], or [k | v] for cross-attention (q from q_attn)
            parts = 2 if "q_attn" in children else 3
            put(m, fqn, "split_size", fused // parts)
            k = fused // parts
            q = q if q is not None else k
        if q is None:
            continue
        for attr in _HEAD_COUNT_ATTRS:
            put(m, fqn, attr, q // hd)
        if k is not None:
            put(m, fqn, "num_key_value_heads", k // hd)
        put(m, fqn, "all_head_size", q)
    return changed


# -- fused mixture-of-experts modules: widths follow the sliced weights ----------------------------------------


def sync_expert_attributes_(model: nn.Module) -> list[str]:
    """After a plan sliced fused expert weights (``param`` members, see :mod:`prunekit.structure.graph`), set the
    widths mixture-of-experts modules keep as integer attributes; returns ``path.attr=value`` for each change.

    Hugging Face's fused experts (``MixtralExperts``: ``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I); with
    ``is_transposed``: (E, H, 2I), (E, I, H)) keep ``intermediate_dim`` and ``hidden_dim``; the router
    (``MixtralTopKRouter``: ``weight`` (E, H)) keeps ``hidden_dim``, which its forward reads
    (``hidden.reshape(-1, self.hidden_dim)``). For every module without a handler that has an integer ``num_experts``:

    * with a 3-D ``down_proj`` of ``num_experts`` experts: ``intermediate_dim``/``intermediate_size`` become its
      input width (dim 2, or dim 1 if ``is_transposed``) and ``hidden_dim``/``hidden_size`` its output width;
    * else, with a 2-D ``weight`` of ``num_experts`` rows (a router): ``hidden_dim``/``hidden_size`` become its
      column count.

    Only attributes that are already integers change. The model's config keeps the original sizes: it describes
    the architecture a plan is replayed on.
    """
    changed: list[str] = []

    def put(m: nn.Module, fqn: str, attrs: tuple[str, ...], value: int) -> None:
        for attr in attrs:
            old = getattr(m, attr, None)
            if isinstance(old, int) and not isinstance(old, bool) and old != value:
                setattr(m, attr, value)
                changed.append(f"{fqn}.{attr}={value}")

    for fqn, m in model.named_modules():
        e = getattr(m, "num_experts", None)
        if handler_for_or_none(m) is not None or not isinstance(e, int):
            continue
        down, w = m._parameters.get("down_proj"), m._parameters.get("weight")
        if isinstance(down, Tensor) and down.dim() == 3 and down.shape[0] == e:
            hidden, inter = (down.shape[2], down.shape[1]) if getattr(m, "is_transposed", False) else down.shape[1:]
            put(m, fqn, ("intermediate_dim", "intermediate_size"), int(inter))
            put(m, fqn, ("hidden_dim", "hidden_size"), int(hidden))
        elif isinstance(w, Tensor) and w.dim() == 2 and w.shape[0] == e:
            put(m, fqn, ("hidden_dim", "hidden_size"), int(w.shape[1]))
    return changed


_GROUPED_MM_ALIGN = 16  # bytes: torch's grouped matrix product needs every stride a multiple of this


def eager_experts_if_misaligned_(model: nn.Module) -> list[str]:
    """Switch a Hugging Face model to its per-expert loop (``set_experts_implementation("eager")``) when a sliced
    fused expert tensor has a width whose rows are no longer a multiple of 16 bytes, which the default fused kernel
    (``grouped_mm``: ``RuntimeError: strides should be multiple of 16 bytes``) refuses. Both compute the same
    function. Returns the misaligned tensors (empty: nothing changed)."""
    bad: list[str] = []
    for fqn, m in model.named_modules():
        if not isinstance(getattr(m, "num_experts", None), int):
            continue
        for name, t in m.named_parameters(recurse=False):
            if t.dim() == 3 and any(int(n) * t.element_size() % _GROUPED_MM_ALIGN for n in t.shape[1:]):
                bad.append(f"{fqn}.{name} {tuple(t.shape)}")
    switch = getattr(model, "set_experts_implementation", None)
    if bad and callable(switch):
        switch("eager")
        return bad
    return []
