"""Diagonal curvature of the loss with respect to each target: exact, Fisher and Hutchinson estimates.

All three estimate ``h_qq = d^2 L / dw_q^2`` for ``L`` = the loss averaged over calibration batches:

* ``exact``: one double-backward per weight (batched with ``is_grads_batched``), affordable for small tensors.
* ``fisher``: the empirical Fisher ``F_qq = mean over samples n of (d l_n / dw_q)^2``, from one backward per
  *sample* (batches are split into single samples). It equals the Gauss-Newton diagonal at a minimum of a
  likelihood loss; it is always >= 0. If a batch cannot be split into samples, or the model refuses single
  samples (BatchNorm in training mode), that batch's gradient is used instead, with a warning.
* ``hutchinson``: ``E_v[v * (H v)]`` over Rademacher vectors ``v`` (Hutchinson 1989; Yao et al. 2020, PyHessian),
  unbiased for the true diagonal, ``probes`` Hessian-vector products per batch, seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunekit.scoring._calibration import Site, loss_of, split_samples
from prunekit.scoring.base import ScoreContext, Target
from prunekit.scoring.hooks import preserved_state

HessianEstimate = Literal["exact", "fisher", "hutchinson"]


def _exact_diag(grad: Tensor, w: Tensor, chunk: int = 256) -> Tensor:
    """diag of d(grad)/dw, one Hessian row per basis vector, ``chunk`` rows per batched backward."""
    g = grad.reshape(-1)
    n = g.numel()
    out = torch.empty(n, dtype=torch.float32, device=w.device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        basis = torch.zeros(stop - start, n, dtype=g.dtype, device=g.device)  # one-hot rows e_q, q in [start, stop)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        try:
            (rows,) = torch.autograd.grad(g, w, grad_outputs=basis, retain_graph=True, is_grads_batched=True, allow_unused=True)
        except RuntimeError:  # an op without a batching rule: fall back to one backward per weight
            loop = [torch.autograd.grad(g[q], w, retain_graph=True, allow_unused=True)[0] for q in range(start, stop)]
            rows = torch.stack([torch.zeros_like(w) if r is None else r for r in loop])
        if rows is None:
            out[start:stop] = 0.0
            continue
        rows = rows.reshape(stop - start, n)
        out[start:stop] = rows[torch.arange(stop - start), torch.arange(start, stop)].float()
    return out.reshape(w.shape)


def hessian_diagonal(
    ctx: ScoreContext, targets: Sequence[Target], method: HessianEstimate, probes: int = 4, seed: int = 0
) -> dict[str, Tensor]:
    """``{target key: estimate of diag(H)}`` (float32, shaped like the weight), averaged over calibration batches."""
    params = {t.key: t.weight for t in targets}
    sums = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    batches = list(ctx.batches())
    if not batches:
        return sums
    with preserved_state(ctx.model), torch.enable_grad():
        if method == "fisher":
            count = 0
            for batch in batches:
                samples = split_samples(batch)
                if samples is None:
                    warnings.warn("Fisher: batch cannot be split into samples; using the batch gradient", stacklevel=3)
                    samples = [batch]
                try:
                    per_sample = [torch.autograd.grad(loss_of(ctx, s), list(params.values()), allow_unused=True) for s in samples]
                except (RuntimeError, ValueError) as e:  # e.g. BatchNorm in training mode refuses single samples
                    warnings.warn(f"Fisher: the model rejects single samples ({e}); using the batch gradient", stacklevel=3)
                    per_sample = [torch.autograd.grad(loss_of(ctx, batch), list(params.values()), allow_unused=True)]
                for grads in per_sample:
                    for k, g in zip(params, grads):
                        if g is not None:
                            sums[k] += g.detach().float().pow(2)
                    count += 1
            return {k: v / count for k, v in sums.items()}
        gen = torch.Generator().manual_seed(seed)
        for batch in batches:
            loss = loss_of(ctx, batch)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
            if method == "exact":
                for k, g in zip(params, grads):
                    if g is not None and g.requires_grad:
                        sums[k] += _exact_diag(g, params[k])
                continue
            live = [(k, g) for k, g in zip(params, grads) if g is not None and g.requires_grad]
            for _ in range(probes):
                vs = [torch.randint(0, 2, g.shape, generator=gen).to(g) * 2 - 1 for _, g in live]
                hvs = torch.autograd.grad(
                    [g for _, g in live], [params[k] for k, _ in live], grad_outputs=vs, retain_graph=True, allow_unused=True
                )
                for (k, _), v, hv in zip(live, vs, hvs):
                    if hv is not None:
                        sums[k] += (v * hv).detach().float() / probes
    return {k: v / len(batches) for k, v in sums.items()}


def gate_derivatives(
    ctx: ScoreContext, sites: Mapping[str, Site], second: bool, fn: Callable[[str, Tensor, Tensor | None], None]
) -> int:
    """Per calibration batch, the first (and with ``second``, the exact diagonal second) derivative of the loss
    with respect to a gate ``z_k = 1`` multiplying each unit ``k`` of each site's output (Molchanov et al. 2019).

    The gates are injected by scoped forward hooks (``output * z``) and removed afterwards. Calls
    ``fn(site key, dL/dz (units,), d^2L/dz^2 (units,) or None)`` once per batch and site.
    """
    gates: dict[str, Tensor] = {}

    def make_hook(key: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
            site = sites[key]
            out = output[0] if isinstance(output, (tuple, list)) else output
            view = [1] * out.dim()
            view[site.channel_dim if out.dim() > 1 else 0] = site.units
            if key not in gates:  # one gate per batch, created where the output lives
                gates[key] = torch.ones(site.units, device=out.device, requires_grad=True)
            gated = out * gates[key].to(out.dtype).reshape(view)
            return (gated, *output[1:]) if isinstance(output, (tuple, list)) else gated

        return hook

    n = 0
    handles = [s.module.register_forward_hook(make_hook(k)) for k, s in sites.items()]
    try:
        with preserved_state(ctx.model), torch.enable_grad():
            for batch in ctx.batches():
                gates.clear()
                loss = loss_of(ctx, batch)
                keys = list(gates)
                grads = torch.autograd.grad(loss, [gates[k] for k in keys], create_graph=second, allow_unused=True)
                for k, g in zip(keys, grads):
                    if g is None:
                        g = torch.zeros_like(gates[k])
                    h = None
                    if second:
                        h = _exact_diag(g, gates[k]) if g.requires_grad else torch.zeros_like(gates[k])
                    fn(k, g.detach().float(), h)
                n += 1
    finally:
        for handle in handles:
            handle.remove()
    return n
