"""Exact selection of the lowest-scoring units, in one tensor or across many without concatenating them.

Tie rule, used everywhere: among equal scores the unit with the lower flat index is pruned first; across
tensors, the tensor that comes first in the given order is pruned first. Scores must not be NaN; ``-inf``
is allowed and means "prune first" (used to keep masks nested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from prunekit.errors import MaskError

ScoreFn = Callable[[], Tensor]
"""Lazily computes one tensor's 1-D unit scores (called once per pass, so scores are never all held at once)."""


def _check_scores(scores: Tensor) -> None:
    if torch.isnan(scores).any():
        raise MaskError("scores contain NaN; a scorer must return finite values (or -inf for 'prune first')")


def keep_lowest_pruned(scores: Tensor, n_prune: int) -> Tensor:
    """Boolean keep-mask over a 1-D score vector with exactly ``n_prune`` False entries.

    Runs in O(n) with ``kthvalue`` rather than a full sort; ties are broken by index (lower index pruned).
    """
    if scores.dim() != 1:
        raise ValueError("keep_lowest_pruned expects 1-D scores")
    n = scores.numel()
    if n_prune <= 0:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    if n_prune >= n:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    _check_scores(scores)
    s = scores.float() + 0.0  # canonicalise -0.0 to +0.0 so float and radix order agree
    t = torch.kthvalue(s.cpu() if s.device.type == "mps" else s, n_prune).values.to(s.device)
    keep = s > t
    quota = n_prune - int((s < t).sum())
    ties = (s == t).nonzero().squeeze(1)
    keep[ties[quota:]] = True  # the first `quota` tied units (lowest indices) stay pruned
    return keep


# ---------------------------------------------------------------------------------------------------------
# Global selection: radix select over order-preserving integer keys, streamed over tensors in chunks.
# ---------------------------------------------------------------------------------------------------------

_CHUNK = 1 << 22  # elements per chunk: bounds temporary memory to a few tens of MB whatever the tensor size
# 32-bit keys are resolved in three passes of 12, 12 and 8 bits.
_LEVELS: tuple[tuple[int, int], ...] = ((20, 12), (8, 12), (0, 8))


def ordered_keys(x: Tensor) -> Tensor:
    """Map float32 values to int64 keys in [0, 2**32) whose integer order equals the float order.

    IEEE-754 bit patterns of non-negative floats are already ordered as integers; for negative floats the
    magnitude bits are flipped. ``-0.0`` is mapped like ``+0.0``.
    """
    i = (x.float() + 0.0).contiguous().view(torch.int32)
    i = torch.where(i < 0, i ^ 0x7FFFFFFF, i)
    return i.to(torch.int64) + (1 << 31)


def global_prune_counts(score_fns: Sequence[ScoreFn], n_prune: int) -> list[int]:
    """How many units each tensor loses when the ``n_prune`` globally lowest-scoring units are pruned.

    Equivalent to concatenating all scores and taking the ``n_prune`` smallest (with the tie rule above), but
    never builds the concatenation: three histogram passes (12 + 12 + 8 bits of the order-preserving key)
    find the exact threshold key, and per-tensor histograms give each tensor's count. Extra memory is one
    tensor's scores plus one chunk of keys.
    """
    n_t = len(score_fns)
    if n_prune <= 0 or n_t == 0:
        return [0] * n_t
    prefix = 0  # the key bits fixed so far
    fixed_bits = 0
    below = torch.zeros(n_t, dtype=torch.int64)  # per tensor: units whose key is below the current prefix range
    total_units = None
    k = n_prune
    for shift, width in _LEVELS:
        hist = torch.zeros(n_t, 1 << width, dtype=torch.int64)
        sizes = []
        for ti, fn in enumerate(score_fns):
            s = fn().reshape(-1)
            sizes.append(s.numel())
            for start in range(0, s.numel(), _CHUNK):
                chunk = s[start : start + _CHUNK]
                if fixed_bits == 0:
                    _check_scores(chunk)
                key = ordered_keys(chunk)
                if fixed_bits:
                    key = key[(key >> (shift + width)) == prefix]
                hist[ti] += torch.bincount((key >> shift) & ((1 << width) - 1), minlength=1 << width)
            del s
        if total_units is None:
            total_units = sum(sizes)
            if n_prune >= total_units:
                return sizes
        cum = hist.sum(0).cumsum(0)
        if int(cum[-1]) < k:
            raise MaskError("scores changed between selection passes; a scorer must be deterministic for a given step")
        b = int(torch.searchsorted(cum, torch.tensor(k), right=False))  # first bucket whose cumulative >= k
        before = int(cum[b - 1]) if b > 0 else 0
        below += hist[:, :b].sum(1)
        k -= before
        prefix = (prefix << width) | b
        fixed_bits += width
        tie_counts = hist[:, b]
    # `prefix` is now the exact key of the n_prune-th smallest unit; `below` counts keys strictly smaller and
    # `k` is how many of the tied units are still to prune, taken in tensor order.
    counts = []
    for ti in range(n_t):
        take = min(k, int(tie_counts[ti]))
        k -= take
        counts.append(int(below[ti]) + take)
    return counts
