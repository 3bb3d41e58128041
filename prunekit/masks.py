"""Masks: one boolean buffer per pruned tensor, saved in ``state_dict`` and restored by ``load_state_dict``.

Two enforcement modes (in place, reparametrized) behind one switch, the in-place one with two storages:

* ``"inplace"`` (default): the parameter stays an ordinary ``nn.Parameter`` whose pruned entries are exactly
  zero. Its gradient is masked as soon as it is accumulated, the weight is re-zeroed after every step of a
  bound optimizer, and the optimizer state of pruned entries (momentum, Adam moments) is cleared whenever the
  mask changes. The mask buffer is ``<param>_mask`` on the owning module.
* ``"packed"``: in place, as ``"inplace"``, with the mask stored as bits: ``<param>_mask`` is a 1-D ``uint8`` buffer of
  ``ceil(numel / 8)`` bytes (bit ``j`` of byte ``i`` is entry ``8 i + j`` of the flattened tensor, 1 = kept), an
  overhead of 1/32 of float32 weights instead of 1/4. Every use unpacks it into a temporary (the gradient
  hook, the re-zeroing after each optimizer step), so training steps cost more than with ``"inplace"``; it is meant
  for models whose masks would not fit as one byte per weight (a 7B-parameter model: 7 GB of bool masks, 0.9 GB
  packed). :func:`get_mask` returns an unpacked copy; change packed masks with :func:`update_mask_`.
* ``"reparam"``: ``torch.nn.utils.parametrize`` computes ``weight = original * mask`` on the fly, so the
  dense ``original`` keeps receiving gradients through the mask (or straight through it with
  ``straight_through=True``), as movement pruning, straight-through masks and RigL need. The mask buffer lives
  on the parametrization (``parametrizations.<param>.0.mask``).

``finalize_`` bakes masks into plain weights and removes every trace, leaving an ordinary ``nn.Module``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.errors import MaskError

MaskMode = Literal["inplace", "packed", "reparam"]
MODES: tuple[MaskMode, ...] = ("inplace", "packed", "reparam")
IN_PLACE: tuple[MaskMode, ...] = ("inplace", "packed")  # enforced on the parameter itself, buffer <param>_mask
_STATE_ATTR = "_prunekit_masks"  # module attribute: {param name: _MaskState}; not part of state_dict


class MaskParametrization(nn.Module):
    """``weight = original * mask``; with ``straight_through`` the gradient reaches ``original`` unmasked."""

    def __init__(self, mask: Tensor, straight_through: bool = False) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.straight_through = straight_through

    def forward(self, x: Tensor) -> Tensor:
        mask: Tensor = self.mask  # type: ignore[assignment]
        masked = x * mask.to(x.dtype)
        if self.straight_through:
            return x + (masked - x).detach()
        return masked


@dataclass
class _MaskState:
    mode: MaskMode
    grad_hook: Any = None  # RemovableHandle of the in-place gradient hook
    hooked: Any = None  # weakref to the parameter that carries grad_hook (a deep copy has a new parameter)
    shape: tuple[int, ...] = ()  # the parameter's shape, for unpacking a packed mask


_BITS = torch.arange(8, dtype=torch.uint8)  # bit j of a packed byte is entry 8 i + j


def pack_bits(mask: Tensor) -> Tensor:
    """A boolean tensor -> 1-D ``uint8`` of ``ceil(numel / 8)`` bytes; bit ``j`` of byte ``i`` = entry ``8 i + j``."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


# row b: the 8 bits of byte value b, lowest first (unpacking is one gather: 2.5x faster than shifting on CPU)
_UNPACK = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).to(torch.uint8)  # (256, 8)


def unpack_bits(packed: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Inverse of :func:`pack_bits` as a ``uint8`` tensor of 0/1 entries of ``shape`` (the form weights are multiplied by)."""
    n = math.prod(shape)
    table = _UNPACK if packed.device.type == "cpu" else _UNPACK.to(packed.device)
    return table.index_select(0, packed.int()).view(-1)[:n].view(shape)  # (bytes, 8) -> flat -> shape


def packed_size(shape: tuple[int, ...] | torch.Size) -> int:
    """Bytes of the packed mask of a tensor of ``shape``."""
    return -(-math.prod(shape) // 8)


@dataclass(frozen=True)
class MaskedParam:
    """A masked tensor: the owning module, its fqn and the parameter name."""

    fqn: str
    module: nn.Module
    name: str

    @property
    def key(self) -> str:
        return f"{self.fqn}.{self.name}" if self.fqn else self.name

    @property
    def mask(self) -> Tensor:
        return get_mask(self.module, self.name)

    @property
    def param(self) -> Tensor:
        return raw_param(self.module, self.name)


def _states(module: nn.Module) -> dict[str, _MaskState]:
    st: dict[str, _MaskState] | None = module.__dict__.get(_STATE_ATTR)
    if st is None:
        st = {}
        module.__dict__[_STATE_ATTR] = st
    return st


def mask_mode(module: nn.Module, name: str) -> MaskMode | None:
    st = module.__dict__.get(_STATE_ATTR, {}).get(name)
    return st.mode if st else None


def has_mask(module: nn.Module, name: str = "weight") -> bool:
    return mask_mode(module, name) is not None


def module_type_name(module: nn.Module) -> str:
    """The class name a user wrote (``Linear``), also when parametrize has swapped in ``ParametrizedLinear``."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


def raw_param(module: nn.Module, name: str) -> Tensor:
    """The trainable tensor: the parameter itself (in place) or the parametrization's ``original`` (reparam)."""
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original  # type: ignore[no-any-return]
    return getattr(module, name)  # type: ignore[no-any-return]


def get_mask(module: nn.Module, name: str = "weight") -> Tensor:
    """The boolean mask of ``module.<name>`` (True = kept): the buffer itself, or for ``"packed"`` an unpacked copy."""
    st = module.__dict__.get(_STATE_ATTR, {}).get(name)
    mode = st.mode if st else None
    if mode == "inplace":
        return module._buffers[f"{name}_mask"]  # type: ignore[return-value]
    if mode == "packed":
        return unpack_bits(module._buffers[f"{name}_mask"], st.shape).bool()  # type: ignore[arg-type]
    if mode == "reparam":
        return _parametrization(module, name).mask  # type: ignore[return-value]
    raise MaskError(f"{type(module).__name__}.{name} has no prunekit mask")


def _parametrization(module: nn.Module, name: str) -> MaskParametrization:
    for p in getattr(module.parametrizations, name):
        if isinstance(p, MaskParametrization):
            return p
    raise MaskError(f"{type(module).__name__}.{name} is parametrized but has no prunekit mask")


def _check_mask(param: Tensor, mask: Tensor, where: str) -> Tensor:
    if mask.shape != param.shape:
        raise MaskError(f"{where}: mask shape {tuple(mask.shape)} does not match tensor shape {tuple(param.shape)}")
    return mask.to(device=param.device, dtype=torch.bool)


def _keep_u8(module: nn.Module, name: str, st: _MaskState) -> Tensor:
    """The in-place mask as 0/1 ``uint8`` of the parameter's shape (multiplying by the bool mask's uint8 view is
    several times faster on CPU than by the bool tensor itself: bool is not a vectorised dtype there)."""
    buf: Tensor = module._buffers[f"{name}_mask"]  # type: ignore[assignment]
    return unpack_bits(buf, st.shape) if st.mode == "packed" else buf.view(torch.uint8)


def _grad_hook(module_ref: weakref.ref[nn.Module], name: str, st: _MaskState) -> Any:
    key = f"{name}_mask"
    packed = st.mode == "packed"

    def hook(p: Tensor) -> None:
        # Runs once per masked tensor per backward: keep the Python path minimal.
        grad, module = p.grad, module_ref()
        if grad is not None and module is not None:
            buf: Tensor = module._buffers[key]  # type: ignore[assignment]
            grad.mul_(unpack_bits(buf, st.shape) if packed else buf.view(torch.uint8))

    return hook


def _install_grad_hook(module: nn.Module, name: str, st: _MaskState) -> None:
    p = module._parameters[name]
    assert p is not None
    st.grad_hook = p.register_post_accumulate_grad_hook(_grad_hook(weakref.ref(module), name, st))
    st.hooked = weakref.ref(p)


def _hook_is_live(module: nn.Module, name: str, st: _MaskState) -> bool:
    return st.hooked is not None and st.hooked() is module._parameters.get(name)


def _ensure_grad_hooks(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: (re)install gradient hooks where the parameter changed, e.g. in a ``copy.deepcopy``.

    Tensor hooks are not copied by ``deepcopy``; module hooks are, so this module-level function (no closure over
    the module) keeps every copy of a masked model enforcing its own masks.
    """
    for name, st in module.__dict__.get(_STATE_ATTR, {}).items():
        if st.mode in IN_PLACE and not _hook_is_live(module, name, st):
            _install_grad_hook(module, name, st)


@torch.no_grad()
def _rezero_after_load(module: nn.Module, incompatible: Any) -> None:
    """load_state_dict post-hook: loaded weights may be dense; re-apply in-place masks."""
    for name, st in module.__dict__.get(_STATE_ATTR, {}).items():
        if st.mode in IN_PLACE:
            getattr(module, name).mul_(_keep_u8(module, name, st))


def _module_hooks(module: nn.Module, install: bool) -> None:
    for hooks, fn in ((module._forward_pre_hooks, _ensure_grad_hooks), (module._load_state_dict_post_hooks, _rezero_after_load)):
        present = [k for k, f in hooks.items() if f is fn]
        if install and not present:
            if fn is _ensure_grad_hooks:
                module.register_forward_pre_hook(_ensure_grad_hooks)
            else:
                module.register_load_state_dict_post_hook(_rezero_after_load)
        elif not install:
            for k in present:
                del hooks[k]


def attach_mask_(
    module: nn.Module,
    name: str = "weight",
    mask: Tensor | None = None,
    mode: MaskMode = "inplace",
    straight_through: bool = False,
) -> Tensor:
    """Give ``module.<name>`` a mask (all ones by default) and start enforcing it. Returns :func:`get_mask`."""
    if mode not in MODES:
        from prunekit.errors import ConfigError

        raise ConfigError("mode", mode, f"allowed: {', '.join(MODES)}")
    if has_mask(module, name):
        raise MaskError(f"{type(module).__name__}.{name} already has a mask; use update_mask_")
    param = getattr(module, name, None)
    if not isinstance(param, Tensor):
        raise MaskError(f"{type(module).__name__} has no tensor named {name!r}")
    where = f"{type(module).__name__}.{name}"
    m = torch.ones_like(param, dtype=torch.bool) if mask is None else _check_mask(param, mask, where).clone()
    st = _MaskState(mode, shape=tuple(param.shape))
    if mode in IN_PLACE:
        if f"{name}_mask" in module._buffers or hasattr(module, f"{name}_orig"):
            raise MaskError(f"{where}: found torch.nn.utils.prune state; import it with from_torch_prune_ first")
        if name not in module._parameters:
            raise MaskError(f"{where} is not a parameter of the module; in-place masks need an nn.Parameter")
        module.register_buffer(f"{name}_mask", pack_bits(m) if mode == "packed" else m)
        with torch.no_grad():
            param.mul_(m)
        _install_grad_hook(module, name, st)
        _module_hooks(module, install=True)
    else:
        parametrize.register_parametrization(module, name, MaskParametrization(m, straight_through), unsafe=True)
    _states(module)[name] = st
    return get_mask(module, name)


@torch.no_grad()
def update_mask_(module: nn.Module, name: str, mask: Tensor) -> None:
    """Replace the mask's contents (the buffer object is kept, so optimizer hooks and state_dict stay valid)."""
    mode = mask_mode(module, name)
    where = f"{type(module).__name__}.{name}"
    if mode == "packed":
        param = raw_param(module, name)
        m = _check_mask(param, mask, where)
        module._buffers[f"{name}_mask"].copy_(pack_bits(m))  # type: ignore[union-attr]
        param.mul_(m)
        return
    buf = get_mask(module, name)
    buf.copy_(_check_mask(buf, mask, where))
    if mode == "inplace":
        raw_param(module, name).mul_(buf)


@torch.no_grad()
def apply_masks_(model: nn.Module) -> None:
    """Re-zero every in-place masked weight (no-op for reparametrized ones, which are masked on the fly).

    Runs after every step of a bound optimizer, so it reads the mask states directly rather than through
    :func:`masked_params` (no wrapper object or mode lookup per tensor), and multiplies each weight by its mask's uint8
    view (a plain loop: ``torch._foreach_mul_`` with a float and a uint8 list takes its slow mixed-dtype path and
    measured ~30 % slower on LeNet-300-100).
    """
    for module in model.modules():
        states = module.__dict__.get(_STATE_ATTR)
        if not states:
            continue
        for name, st in states.items():
            p = module._parameters.get(name) if st.mode in IN_PLACE else None
            if p is not None:
                p.mul_(_keep_u8(module, name, st))


def masked_params(model: nn.Module) -> Iterator[MaskedParam]:
    """Every masked tensor in ``model``, in module registration order."""
    for fqn, module in model.named_modules():
        for name in list(module.__dict__.get(_STATE_ATTR, {})):
            yield MaskedParam(fqn, module, name)


def masks_of(model: nn.Module) -> dict[str, Tensor]:
    """``{"<module fqn>.<param>": mask}`` for every masked tensor."""
    return {mp.key: mp.mask for mp in masked_params(model)}


def detach_mask_(module: nn.Module, name: str = "weight", bake: bool = True) -> None:
    """Stop masking ``module.<name>``. With ``bake`` the weight keeps its pruned zeros; the mask is dropped."""
    st = _states(module).pop(name, None)
    if st is None:
        raise MaskError(f"{type(module).__name__}.{name} has no prunekit mask")
    if st.mode in IN_PLACE:
        if _hook_is_live(module, name, st):
            st.grad_hook.remove()
        if not any(x.mode in IN_PLACE for x in _states(module).values()):
            _module_hooks(module, install=False)
        if bake:
            with torch.no_grad():
                getattr(module, name).mul_(_keep_u8(module, name, st))
        module._buffers.pop(f"{name}_mask")
    else:
        # copy.deepcopy shares the generated Parametrized<Class> between copies, and removing a parametrization
        # deletes the property from that class; a private class keeps the other copies intact.
        cls = type(module)
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(module, name, leave_parametrized=bake)


def finalize_(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight and remove masks, hooks and parametrizations. Returns ``model``."""
    for mp in list(masked_params(model)):
        detach_mask_(mp.module, mp.name, bake=True)
    unbind_optimizers_(model)
    return model


# --------------------------------------------------------------------------------------------------------
# Optimizers: re-zero after every step; clear the state of pruned entries when a mask changes.
# --------------------------------------------------------------------------------------------------------

# Bindings live outside the model so that ``copy.deepcopy(model)`` never inherits the original's optimizer.
_BINDINGS: weakref.WeakKeyDictionary[nn.Module, list[tuple[weakref.ref[torch.optim.Optimizer], Any]]] = (
    weakref.WeakKeyDictionary()
)


def bind_optimizer_(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Re-zero masked weights after every ``optimizer.step()`` (:func:`apply_masks_` as a step post-hook)."""
    if optimizer in bound_optimizers(model):
        return
    model_ref = weakref.ref(model)

    def post_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        m = model_ref()
        if m is not None:
            apply_masks_(m)

    _BINDINGS.setdefault(model, []).append((weakref.ref(optimizer), optimizer.register_step_post_hook(post_step)))


def bound_optimizers(model: nn.Module) -> list[torch.optim.Optimizer]:
    return [o for ref, _ in _BINDINGS.get(model, []) if (o := ref()) is not None]


def unbind_optimizers_(model: nn.Module) -> None:
    for _, h in _BINDINGS.pop(model, []):
        h.remove()


@torch.no_grad()
def clear_optimizer_state_(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Zero every per-parameter state tensor (momentum, exp_avg, exp_avg_sq, ...) at pruned entries.

    Returns how many state tensors were masked.
    """
    n = 0
    for mp in masked_params(model):
        p = mp.param
        state = optimizer.state.get(p)
        if not state:
            continue
        keep = mp.mask
        for v in state.values():
            if isinstance(v, Tensor) and v.shape == p.shape:
                v.mul_(keep.to(v.dtype))
                n += 1
    return n


# --------------------------------------------------------------------------------------------------------
# Loading and interop
# --------------------------------------------------------------------------------------------------------


def restore_masks_(model: nn.Module, state_dict: dict[str, Tensor], modes: dict[str, MaskMode] | None = None) -> int:
    """Attach masks for every mask key in ``state_dict`` that ``model`` lacks, so ``load_state_dict`` can fill them.

    ``modes`` maps "<module fqn>.<param>" to its mode (from checkpoint metadata); keys are recognised both as
    ``<fqn>.<param>_mask`` (in place: ``packed`` when the tensor is ``uint8``) and
    ``<fqn>.parametrizations.<param>.0.mask`` (reparam).
    """
    modes = modes or {}
    found: dict[str, MaskMode] = {}
    for k, v in state_dict.items():
        if k.endswith("_mask") and not k.endswith("parametrizations"):
            found[k[: -len("_mask")]] = "packed" if v.dtype == torch.uint8 else "inplace"
        elif ".parametrizations." in f".{k}" and k.endswith(".0.mask"):
            head, _, tail = f".{k}".rpartition(".parametrizations.")
            found[f"{head[1:]}.{tail.split('.')[0]}".lstrip(".")] = "reparam"
    mods = dict(model.named_modules())
    n = 0
    for key, mode in found.items():
        fqn, _, name = key.rpartition(".")
        module = mods.get(fqn)
        if module is None or has_mask(module, name) or not isinstance(getattr(module, name, None), Tensor):
            continue
        attach_mask_(module, name, mode=modes.get(key, mode))
        n += 1
    return n


@torch.no_grad()
def from_torch_prune_(model: nn.Module, mode: MaskMode = "inplace") -> int:
    """Convert ``torch.nn.utils.prune`` state (``<p>_orig`` + ``<p>_mask`` + forward pre-hook) to prunekit masks."""
    from torch.nn.utils import prune as tprune

    n = 0
    for _, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            methods = hook._pruning_methods if isinstance(hook, tprune.PruningContainer) else [hook]
            if not isinstance(hook, tprune.BasePruningMethod):
                continue
            name = methods[-1]._tensor_name
            mask = module._buffers[f"{name}_mask"].bool()
            tprune.remove(module, name)  # weight = orig * mask, as a plain parameter
            attach_mask_(module, name, mask, mode=mode)
            n += 1
    return n


@torch.no_grad()
def to_torch_prune_(model: nn.Module) -> int:
    """Convert prunekit masks to ``torch.nn.utils.prune`` state (``custom_from_mask``), for users going the other way."""
    from torch.nn.utils import prune as tprune

    n = 0
    for mp in list(masked_params(model)):
        mask = mp.mask.clone()
        detach_mask_(mp.module, mp.name, bake=True)
        tprune.custom_from_mask(mp.module, mp.name, mask)
        n += 1
    return n
