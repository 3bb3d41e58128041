"""Scoped hooks for data-driven criteria: every hook is removed when its ``with`` block exits.

Typical use inside ``AbstractScorer.collect``::

    with forward_hooks(modules, record):          # activations
        run_calibration(ctx, backward=False)
    grads = accumulate_gradients(ctx, targets, lambda g: g.pow(2))   # e.g. a diagonal Fisher
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.scoring.base import ScoreContext, Target

ForwardFn = Callable[[str, nn.Module, tuple[Any, ...], Any], None]


@contextmanager
def forward_hooks(modules: Mapping[str, nn.Module], fn: ForwardFn) -> Iterator[None]:
    """Call ``fn(name, module, inputs, output)`` after each forward of each module, only inside the block."""
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: fn(n, mod, i, o)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's ``.grad`` and every buffer (e.g. BatchNorm running stats) on exit."""
    params = list(model.parameters())
    grads = [p.grad.clone() if p.grad is not None else None for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def batch_input(batch: Any) -> Any:
    """The model input of a batch: ``x`` of ``(x, y)`` / ``[x, y]``, the batch itself otherwise."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def run_calibration(ctx: ScoreContext, backward: bool) -> int:
    """Run every calibration batch through ``ctx.loss_fn`` (or a bare forward); returns the number of batches."""
    n = 0
    for batch in ctx.batches():
        if ctx.loss_fn is not None:
            with torch.set_grad_enabled(backward):
                loss = ctx.loss_fn(ctx.model, batch)
            if backward:
                loss.backward()
        else:
            if backward:
                raise ConfigError("scorer", "loss_fn", "a loss function is needed to compute gradients")
            with torch.no_grad():
                ctx.model(batch_input(batch))
        n += 1
    return n


def accumulate_gradients(
    ctx: ScoreContext, targets: Sequence[Target], transform: Callable[[Tensor], Tensor] = lambda g: g
) -> dict[str, Tensor]:
    """Sum ``transform(grad)`` of each target over calibration batches (one backward per batch).

    Gradients and buffers (BatchNorm statistics) are saved and restored, so scoring never disturbs training.
    """
    params = {t.key: t.weight for t in targets}
    sums: dict[str, Tensor] = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    if ctx.loss_fn is None:
        raise ConfigError("scorer", "loss_fn", "this criterion needs gradients: pass ScoreContext(loss_fn=...)")
    with preserved_state(ctx.model):
        for batch in ctx.batches():
            ctx.model.zero_grad(set_to_none=True)
            ctx.loss_fn(ctx.model, batch).backward()
            for k, p in params.items():
                if p.grad is not None:
                    sums[k] += transform(p.grad.detach().float())
    return sums


@torch.no_grad()
def input_sq_norms(ctx: ScoreContext, targets: Sequence[Target]) -> dict[str, Tensor]:
    """Per input feature, the squared L2 norm of each target module's input over the calibration set.

    For a Linear input of shape (..., in) this is ``sum over all tokens of x_j^2`` (shape (in,)), the statistic
    behind activation-aware criteria such as Wanda's ``|W_ij| * ||X_j||_2``.
    """
    mods = {t.key: t.module for t in targets}
    acc: dict[str, Tensor] = {}

    def record(name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0].detach().float()
        x = x.reshape(-1, x.shape[-1])  # (tokens, in)
        sq = x.pow(2).sum(0)
        acc[name] = acc[name] + sq if name in acc else sq

    with forward_hooks(mods, record):
        run_calibration(ctx, backward=False)
    return acc
