"""Optimal Brain Surgeon on one layer: saliencies and the compensating weight update (pure tensor maths, no hooks).

Hassibi & Stork 1993, "Second order derivatives for network pruning: Optimal Brain Surgeon"; applied layer-wise
to the reconstruction loss as in L-OBS (Dong et al. 2017), OBC (Frantar & Alistarh 2022) and SparseGPT
(Frantar & Alistarh 2023), which reuses :func:`obs_prune` with ``method="blocked"``.

For a layer ``y = W x`` with inputs ``X`` (d x n), each output row ``w`` is judged by the reconstruction loss
``E(w') = (1/n) ||(w' - w)^T X||^2``, a quadratic with Hessian ``H = 2 X X^T / n`` (:func:`reconstruction_hessian`),
damped by ``lambda = damping * mean(diag H)`` (default 1 %). Removing weight ``q`` and re-optimising the others
costs (exactly, since ``E`` is quadratic)::

    dE_q = w_q^2 / (2 [H^-1]_qq)                    (saliency)
    dw   = -(w_q / [H^-1]_qq) * H^-1[:, q]          (compensating update of the remaining weights)

and removing a set ``S`` at once costs ``1/2 w_S^T ([H^-1]_SS)^-1 w_S`` with update ``-H^-1[:, S] ([H^-1]_SS)^-1 w_S``.
The loss predicted by every function here is the *damped* loss ``E + lambda/2 ||dw||^2``; with ``damping=0`` it is
the reconstruction loss itself.

Inputs with ``H_qq = 0`` (never active in the calibration data) are dead: their weights are set to 0 at no cost,
as SparseGPT does, and ``H_qq`` is set to 1 so that ``H`` stays invertible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError

ObsMethod = Literal["auto", "exact", "blocked"]
EXACT_MAX_ELEMENTS = 1 << 24
"""``method="auto"`` runs exact sequential OBS while rows x cols^2 stays below this (about a 256 x 256 layer)."""


@dataclass(frozen=True)
class ObsResult:
    """Outcome of :func:`obs_prune`: the updated weight, its keep-mask and the predicted loss increase per row."""

    weight: Tensor
    mask: Tensor
    loss: Tensor

    @property
    def total_loss(self) -> float:
        return float(self.loss.sum())


def reconstruction_hessian(gram: Tensor, n: int) -> Tensor:
    """``H = 2 X X^T / n`` from ``gram = X X^T`` over ``n`` input rows (tokens / im2col positions)."""
    if n <= 0:
        raise ConfigError("scorer", n, "the layer saw no input rows; pass calibration data")
    return 2.0 * gram / n


def prepare(weight: Tensor, hessian: Tensor, damping: float) -> tuple[Tensor, Tensor, Tensor]:
    """float64 ``(W, H + lambda I, dead)`` with dead input columns zeroed in ``W`` and given ``H_qq = 1``."""
    if not damping >= 0:
        raise ConfigError("damping", damping, "must be >= 0")
    w = weight.detach().reshape(weight.shape[0], -1).to(torch.float64).clone()
    h = hessian.detach().to(torch.float64).clone()
    if h.shape != (w.shape[1], w.shape[1]):
        raise ConfigError(
            "hessian", tuple(h.shape), f"expected ({w.shape[1]}, {w.shape[1]}) for a weight with {w.shape[1]} columns"
        )
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    lam = damping * float(torch.diagonal(h).mean())
    h += lam * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return w, h, dead


def inverse(h: Tensor) -> Tensor:
    """``H^-1`` through a Cholesky factorisation; a clear error if ``H`` is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(h)
    # A rank-deficient H can factor "successfully" in floating point with pivots at rounding level: reject those too.
    tiny = 1e3 * torch.finfo(h.dtype).eps * float(torch.diagonal(h).abs().max()) if h.numel() else 0.0
    if int(info) != 0 or float(torch.diagonal(chol).min()) ** 2 <= tiny:
        raise ConfigError(
            "damping", "too small", "the layer Hessian is (nearly) singular; use more calibration data or a larger damping"
        )
    return torch.cholesky_inverse(chol)


def obs_saliency(weight: Tensor, hessian: Tensor, damping: float = 0.01) -> Tensor:
    """Per weight, ``w_q^2 / (2 [H^-1]_qq)``: the loss increase of removing it alone with OBS compensation.

    Shaped like ``weight``; weights on dead inputs score 0.
    """
    w, h, dead = prepare(weight, hessian, damping)
    d = torch.diagonal(inverse(h))  # (C,)
    sal = w.pow(2) / (2 * d)
    sal[:, dead] = 0.0
    return sal.reshape(weight.shape).to(torch.float32)


def _set_update(w: Tensor, hinv: Tensor, pruned: Tensor) -> tuple[Tensor, float]:
    """Remove the columns ``pruned`` of one row at once: the optimal update and its exact loss increase."""
    s = torch.nonzero(pruned).flatten()
    if s.numel() == 0:
        return w.clone(), 0.0
    ws = w[s]
    sol = torch.linalg.solve(hinv[s][:, s], ws)  # ([H^-1]_SS)^-1 w_S
    out = w - hinv[:, s] @ sol
    out[s] = 0.0
    return out, float(0.5 * ws @ sol)


def _greedy_paths(w: Tensor, hinv: Tensor, steps: int, row_chunk: int) -> tuple[Tensor, Tensor]:
    """Exact sequential OBS per row: the order in which weights are removed and each step's loss increase."""
    rows, cols = w.shape
    dev = w.device
    order = torch.empty(rows, steps, dtype=torch.long, device=dev)
    inc = torch.empty(rows, steps, dtype=torch.float64, device=dev)
    for r0 in range(0, rows, row_chunk):
        r1 = min(rows, r0 + row_chunk)
        ww = w[r0:r1].clone()  # (r, C)
        hi = hinv.expand(r1 - r0, cols, cols).clone()  # (r, C, C): each row's own H^-1 as weights leave
        gone = torch.zeros(r1 - r0, cols, dtype=torch.bool, device=dev)
        ar = torch.arange(r1 - r0, device=dev)
        for t in range(steps):
            d = torch.diagonal(hi, dim1=1, dim2=2)  # (r, C)
            sal = ww.pow(2) / d
            sal[gone] = float("inf")
            q = sal.argmin(1)  # (r,)
            dq = d[ar, q]
            col = hi[ar, :, q]  # (r, C) = H^-1[:, q]
            order[r0:r1, t] = q
            inc[r0:r1, t] = ww[ar, q].pow(2) / (2 * dq)
            ww -= (ww[ar, q] / dq)[:, None] * col
            ww[ar, q] = 0.0
            hi -= col[:, :, None] * col[:, None, :] / dq[:, None, None]  # H^-1 without row/col q
            gone[ar, q] = True
    return order, inc


def _exact(w: Tensor, hinv: Tensor, n_prune: int, per_row: bool) -> tuple[Tensor, Tensor, Tensor]:
    rows, cols = w.shape
    if per_row:
        k = round(n_prune / rows)
        steps = k
    else:
        steps = min(cols, n_prune)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    if steps > 0:
        order, inc = _greedy_paths(w, hinv, steps, max(1, EXACT_MAX_ELEMENTS // (cols * cols)))
        if per_row:
            chosen = torch.ones(rows, steps, dtype=torch.bool, device=w.device)
        else:
            # OBC's global selection: the n_prune cheapest steps over all rows. A running max makes each row's
            # costs non-decreasing, so (with a stable sort in row-major order) every row takes a prefix of its path.
            key = torch.cummax(inc, dim=1).values.reshape(-1)
            pick = torch.sort(key, stable=True).indices[:n_prune]
            chosen = torch.zeros(rows * steps, dtype=torch.bool, device=w.device)
            chosen[pick] = True
            chosen = chosen.reshape(rows, steps)
        for r in range(rows):
            keep[r, order[r][chosen[r]]] = False
    return _apply_mask(w, hinv, keep)


def _apply_mask(w: Tensor, hinv: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    out = torch.empty_like(w)
    loss = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    for r in range(w.shape[0]):
        out[r], loss[r] = _set_update(w[r], hinv, ~keep[r])
    return out, keep, loss


def _blocked(
    w: Tensor, hinv: Tensor, sparsity: float, block: int, per_row: bool, nm: tuple[int, int] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Columns left to right in blocks (SparseGPT's order): within a block, weights are fixed one column at a time
    with the exact OBS update of the columns not yet fixed; the block's update reaches later blocks lazily.

    With ``U`` the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``), the inverse Hessian of the columns still
    free at column ``i`` has first row ``U_ii U[i, i:]``, so fixing column ``i`` to ``q_i`` updates the free columns
    by ``-((w_i - q_i) / U_ii) U[i, i:]`` and costs ``(w_i - q_i)^2 / (2 U_ii^2)``, exactly.
    """
    rows, cols = w.shape
    w = w.clone()
    u = torch.linalg.cholesky(hinv, upper=True)
    diag = torch.diagonal(u)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    loss = torch.zeros(rows, dtype=torch.float64, device=w.device)
    pruned_total = 0
    pruned_rows = torch.zeros(rows, dtype=torch.long, device=w.device)
    for i1 in range(0, cols, block):
        i2 = min(cols, i1 + block)
        w1 = w[:, i1:i2].clone()  # (R, B)
        err = torch.zeros_like(w1)
        k1 = torch.ones_like(w1, dtype=torch.bool)
        if nm is None:
            sal = w1.pow(2) / diag[i1:i2].pow(2)  # (R, B)
            if per_row:
                k = max(0, min(i2 - i1, round(sparsity * i2) - int(pruned_rows[0])))
                idx = torch.sort(sal, dim=1, stable=True).indices[:, :k]
                k1.scatter_(1, idx, False)
            else:
                k = max(0, min(sal.numel(), round(sparsity * rows * i2) - pruned_total))
                idx = torch.sort(sal.reshape(-1), stable=True).indices[:k]
                k1.view(-1)[idx] = False
        for j in range(i2 - i1):
            i = i1 + j
            if nm is not None and j % nm[1] == 0:
                g1 = min(i2 - i1, j + nm[1])
                sal = w1[:, j:g1].pow(2) / diag[i : i1 + g1].pow(2)
                n_drop = max(0, (g1 - j) - nm[0])
                idx = torch.sort(sal, dim=1, stable=True).indices[:, :n_drop]
                k1[:, j:g1].scatter_(1, idx, False)
            wi = w1[:, j]
            q = torch.where(k1[:, j], wi, torch.zeros_like(wi))
            e = (wi - q) / u[i, i]
            loss += e.pow(2) / 2
            w1[:, j:] -= e[:, None] * u[i, i:i2][None, :]
            w1[:, j] = q
            err[:, j] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
        keep[:, i1:i2] = k1
        pruned_total += int((~k1).sum())
        pruned_rows += (~k1).sum(1)
    return w, keep, loss


def obs_prune(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float | None = None,
    *,
    mask: Tensor | None = None,
    damping: float = 0.01,
    method: ObsMethod = "auto",
    block_size: int = 128,
    per_row: bool = False,
    nm: tuple[int, int] | None = None,
) -> ObsResult:
    """Prune one layer's weight (out, in, ...) to ``sparsity`` with OBS compensation; the input is not modified.

    Args:
        hessian: ``H = 2 X X^T / n`` over the layer input (see :func:`reconstruction_hessian`), (cols, cols).
        sparsity: fraction of weights removed (exactly ``round(sparsity * numel)``; per row with ``per_row``).
        mask: instead of choosing, remove exactly the weights where ``mask`` is False (exact joint update).
        method: ``exact`` = sequential greedy OBS, one weight at a time with a full ``H^-1`` downdate per row, and
            OBC's global choice of how many weights each row loses; ``blocked`` = the column-block order of SparseGPT
            (``block_size`` columns at a time, mask chosen per block), for large layers; ``auto`` picks ``exact`` when
            rows x cols^2 <= ``EXACT_MAX_ELEMENTS``.
        nm: N:M along the input dimension (``blocked`` only): of every M consecutive weights keep N.
    Returns:
        :class:`ObsResult` with the updated weight (zeros where pruned), the keep-mask and the predicted increase of
        the damped reconstruction loss per output row.
    """
    w, h, _ = prepare(weight, hessian, damping)
    hinv = inverse(h)
    rows, cols = w.shape
    if mask is not None:
        if mask.shape != weight.shape:
            raise ConfigError("mask", tuple(mask.shape), f"must match the weight shape {tuple(weight.shape)}")
        new, keep, loss = _apply_mask(w, hinv, mask.reshape(rows, cols).bool().to(w.device))
    else:
        if nm is not None:
            s = 1.0 - nm[0] / nm[1]
        elif sparsity is not None:
            s = float(sparsity)
        else:
            raise ConfigError("sparsity", None, "give a sparsity, an N:M pattern or a mask")
        if not 0.0 <= s <= 1.0:
            raise ConfigError("sparsity", s, "must be in [0, 1]")
        if nm is not None and not (0 < nm[0] <= nm[1] and block_size % nm[1] == 0):
            raise ConfigError("nm", nm, f"need 0 < N <= M and block_size ({block_size}) a multiple of M")
        if method == "auto":
            method = "exact" if nm is None and rows * cols * cols <= EXACT_MAX_ELEMENTS else "blocked"
        if method == "exact":
            if nm is not None:
                raise ConfigError("method", method, "N:M needs method='blocked'")
            n_prune = round(s * cols) * rows if per_row else round(s * rows * cols)
            new, keep, loss = _exact(w, hinv, n_prune, per_row)
        elif method == "blocked":
            if block_size < 1:
                raise ConfigError("block_size", block_size, "must be >= 1")
            new, keep, loss = _blocked(w, hinv, s, block_size, per_row, nm)
        else:
            raise ConfigError("method", method, "allowed: auto, exact, blocked")
    return ObsResult(
        new.reshape(weight.shape).to(weight.dtype).to(weight.device),
        keep.reshape(weight.shape).to(weight.device),
        loss,
    )


@torch.no_grad()
def obs_prune_layer_(module: nn.Module, hessian: Tensor, sparsity: float | None = None, **kwargs: Any) -> ObsResult:
    """:func:`obs_prune` on ``module.weight``, writing the updated weight back in place (its bias is untouched)."""
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise ConfigError("module", type(module).__name__, "has no weight tensor")
    res = obs_prune(weight, hessian, sparsity, **kwargs)
    weight.copy_(res.weight)
    return res
