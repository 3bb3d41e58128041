"""Scoped calibration passes for the data-driven criteria (activations, gradients, layer inputs, curvature).

Every helper here leaves the model as it found it: forward hooks are removed when the helper returns (also on
error), the ``.grad`` of every parameter is restored, and buffers (BatchNorm running statistics) are restored,
so scoring never disturbs training. Statistics accumulate over all of ``ctx.batches()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.scoring._reduce import channel_dim_of
from prunekit.scoring.base import ScoreContext, Target
from prunekit.scoring.hooks import batch_input, forward_hooks, preserved_state


def batch_labels(batch: Any) -> Tensor | None:
    """Labels carried by a batch: ``y`` of ``(x, y, ...)``, or ``batch["labels"]`` of a dict batch; else None."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    if isinstance(batch, Mapping) and isinstance(batch.get("labels"), Tensor):
        return batch["labels"]  # type: ignore[no-any-return]
    return None


def loss_of(ctx: ScoreContext, batch: Any) -> Tensor:
    if ctx.loss_fn is None:
        raise ConfigError("scorer", "loss_fn", "this criterion needs gradients: pass ScoreContext(loss_fn=...)")
    return ctx.loss_fn(ctx.model, batch)


def forward(ctx: ScoreContext, batch: Any) -> None:
    """One forward pass without gradients, through ``ctx.loss_fn`` when given (so the model is called as the
    user calls it), else ``model(x)``."""
    with torch.no_grad():
        if ctx.loss_fn is not None:
            ctx.loss_fn(ctx.model, batch)
        else:
            ctx.model(batch_input(batch))


# -- where a unit's activation is observed ---------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """The module whose output holds a target's unit activations, and the dim of that output indexing units."""

    key: str
    module: nn.Module
    channel_dim: int
    units: int


def sites_for(model: nn.Module, targets: Sequence[Target], observe: Mapping[str, str]) -> dict[str, Site]:
    """One observation site per target: the target module itself, or ``observe[target fqn]`` (e.g. the BatchNorm
    after a conv, so that the statistic sees what the next layer sees)."""
    modules = dict(model.named_modules())
    for k in observe:
        if k not in modules:
            raise ConfigError(f"scorer.observe.{k}", observe[k], "the key must be the fqn of a target module of this model")
    out: dict[str, Site] = {}
    for t in targets:
        name = observe.get(t.fqn)
        if name is None:
            module = t.module
        elif name in modules:
            module = modules[name]
        else:
            raise ConfigError(f"scorer.observe.{t.fqn}", name, "no module of this name in the model")
        out[t.key] = Site(t.key, module, channel_dim_of(module), int(t.weight.shape[0]))
    return out


def _units_of(site: Site, output: Any) -> Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise ConfigError("scorer", type(output).__name__, f"{site.key}: observed module must output a tensor")
    got = output.shape[site.channel_dim] if output.dim() > 1 else output.shape[0]
    if got != site.units:
        raise ConfigError(
            "scorer.observe",
            site.key,
            f"the observed output has {got} units along dim {site.channel_dim}, the target {site.units}",
        )
    return output


def warn_unobserved(targets: Sequence[Target], seen: Iterable[str], what: str) -> None:
    """Warn about targets for which calibration produced no statistics (their scores fall back to 0)."""
    got = set(seen)
    missing = [t.key for t in targets if t.key not in got]
    if missing:
        warnings.warn(f"no {what} reached {', '.join(missing)} during calibration; those targets score 0", stacklevel=3)


def observe_outputs(ctx: ScoreContext, sites: Mapping[str, Site], fn: Callable[[Any, dict[str, Tensor], Any], None]) -> int:
    """Forward every calibration batch without gradients and call ``fn(batch, {key: site output}, model output)``.

    Only one batch of outputs is held at a time. Returns the number of batches.
    """
    current: dict[str, Tensor] = {}
    model_out: list[Any] = [None]
    by_name = {k: s.module for k, s in sites.items()}

    def record(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        current[name] = _units_of(sites[name], output).detach()

    def record_model(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        model_out[0] = output

    n = 0
    with preserved_state(ctx.model), forward_hooks(by_name, record):
        handle = ctx.model.register_forward_hook(record_model)
        try:
            for batch in ctx.batches():
                current.clear()
                forward(ctx, batch)
                fn(batch, dict(current), model_out[0])
                n += 1
        finally:
            handle.remove()
    return n


def observe_outputs_and_grads(ctx: ScoreContext, sites: Mapping[str, Site], fn: Callable[[str, Tensor, Tensor], None]) -> int:
    """Forward and backward every calibration batch; call ``fn(key, activation, dLoss/dactivation)`` per site.

    The gradient is captured by a tensor hook on the site output, which dies with the batch's graph.
    """
    by_name = {k: s.module for k, s in sites.items()}

    def record(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        out = _units_of(sites[name], output)
        if out.requires_grad:
            act = out.detach()
            out.register_hook(lambda g, name=name, act=act: fn(name, act, g.detach()))

    n = 0
    with preserved_state(ctx.model), forward_hooks(by_name, record):
        for batch in ctx.batches():
            with torch.enable_grad():
                loss_of(ctx, batch).backward()
            n += 1
    return n


# -- gradients ---------------------------------------------------------------------------------------------


def per_batch_gradients(ctx: ScoreContext, targets: Sequence[Target], fn: Callable[[dict[str, Tensor]], None]) -> int:
    """For each calibration batch, call ``fn({target key: dLoss/dw})`` with that batch's gradient alone."""
    params = {t.key: t.weight for t in targets}
    n = 0
    with preserved_state(ctx.model):
        for batch in ctx.batches():
            for mp in ctx.model.parameters():
                mp.grad = None
            for tp in params.values():
                tp.grad = None
            with torch.enable_grad():
                loss_of(ctx, batch).backward()
            fn(
                {
                    k: (p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32))
                    for k, p in params.items()
                }
            )
            n += 1
    return n


def split_samples(batch: Any) -> list[Any] | None:
    """Single-sample batches from a batch of tensors (tuple/list/dict/tensor, all with the same leading size).

    Returns None when the batch cannot be split that way.
    """
    if isinstance(batch, Tensor):
        return [batch[i : i + 1] for i in range(batch.shape[0])] if batch.dim() > 0 else None
    if isinstance(batch, (tuple, list)):
        if not batch or not all(isinstance(b, Tensor) and b.dim() > 0 for b in batch):
            return None
        n = batch[0].shape[0]
        if any(b.shape[0] != n for b in batch):
            return None
        return [type(batch)(b[i : i + 1] for b in batch) for i in range(n)]
    if isinstance(batch, Mapping):
        tensors = [v for v in batch.values() if isinstance(v, Tensor)]
        if not tensors or any(v.dim() == 0 or v.shape[0] != tensors[0].shape[0] for v in tensors):
            return None
        return [{k: (v[i : i + 1] if isinstance(v, Tensor) else v) for k, v in batch.items()} for i in range(tensors[0].shape[0])]
    return None


# -- layer inputs (for the layer-wise OBS Hessian) --------------------------------------------------------------


def layer_input_matrix(module: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as rows matching ``weight.reshape(out, -1)``: (tokens, in) for Linear, (positions, in*k*k)
    for Conv2d (im2col), so that the output is ``rows @ W.T`` (+ bias)."""
    if isinstance(module, nn.Linear):
        return x.detach().reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise ConfigError("scorer", module, "layer-wise OBS supports Conv2d with groups=1 and zero padding only")
        pad = module.padding
        if isinstance(pad, str):
            if pad == "valid":
                pad = (0, 0)
            elif all(s == 1 for s in module.stride) and all(
                ((k - 1) * d) % 2 == 0 for k, d in zip(module.kernel_size, module.dilation)
            ):
                pad = tuple((k - 1) * d // 2 for k, d in zip(module.kernel_size, module.dilation))
            else:
                raise ConfigError("scorer", pad, "padding='same' with an even kernel is not supported by layer-wise OBS")
        cols = F.unfold(
            x.detach(), module.kernel_size, dilation=module.dilation, padding=pad, stride=module.stride
        )  # (N, in*k*k, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise ConfigError("scorer", type(module).__name__, "layer-wise OBS supports Linear and Conv2d layers")


def layer_input_grams(
    ctx: ScoreContext, targets: Sequence[Target], dtype: torch.dtype = torch.float64
) -> dict[str, tuple[Tensor, int]]:
    """Per target, ``(sum over rows x of x x^T, number of rows)`` of its layer input over the calibration set."""
    acc: dict[str, tuple[Tensor, int]] = {}
    mods = {t.key: t.module for t in targets}

    def record(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        rows = layer_input_matrix(module, inputs[0]).to(dtype)  # (n, d)
        gram = rows.T @ rows  # (d, d)
        if name in acc:
            g, k = acc[name]
            acc[name] = (g + gram, k + rows.shape[0])
        else:
            acc[name] = (gram, rows.shape[0])

    with preserved_state(ctx.model), forward_hooks(mods, record):
        for batch in ctx.batches():
            forward(ctx, batch)
    return acc
