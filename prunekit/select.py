"""Exact selection of the lowest-scoring units, in one tensor or across many without concatenating them.

Tie rule, used everywhere: among equal scores the unit with the lower flat index is pruned first; across
tensors, the tensor that comes first in the given order is pruned first. Scores must not be NaN; ``-inf``
is allowed and means "prune first" (used to keep masks nested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import MaskError


@dataclass(frozen=True)
class LazyScores:
    """Scores of an element-wise criterion, computed chunk by chunk from ``base`` and never materialised whole.

    ``fn`` maps a 1-D slice of ``base`` to its scores; entries where ``keep`` is False score ``-inf`` (nested
    masks). For a 62.5M-element weight this avoids a 250 MB temporary per selection pass.
    """

    base: Tensor
    fn: Callable[[Tensor], Tensor]
    keep: Tensor | None = None

    def numel(self) -> int:
        return self.base.numel()

    def chunk(self, start: int, stop: int) -> Tensor:
        s = self.fn(self.base.reshape(-1)[start:stop]).float()
        if self.keep is not None:
            s = s.masked_fill(~self.keep.reshape(-1)[start:stop], float("-inf"))
        return s

    def materialize(self) -> Tensor:
        return self.chunk(0, self.numel())


def as_tensor(scores: Tensor | LazyScores) -> Tensor:
    """The scores as one tensor (materialising lazy ones)."""
    return scores.materialize() if isinstance(scores, LazyScores) else scores


ScoreFn = Callable[[], "Tensor | LazyScores"]
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

_CHUNK = 1 << 20  # elements per chunk: a few MB of temporaries whatever the tensor size
_GATHER_LIMIT = 1 << 24  # candidates always kept in memory after the first pass (64 MB of int32 keys)


def ordered_keys(x: Tensor) -> Tensor:
    """int32 keys whose *signed* integer order equals the float order of ``x`` (``-0.0`` keyed as ``+0.0``).

    IEEE-754 bit patterns of non-negative floats are already ordered as integers, so for scores without a sign
    bit (magnitudes) this is a free reinterpretation; for negative floats the magnitude bits are flipped.
    """
    x = x.float().contiguous()
    i = x.view(torch.int32)
    if bool((i < 0).any()):  # a sign bit somewhere: negative scores or -0.0
        i = (x + 0.0).view(torch.int32)
        i = torch.where(i < 0, i ^ 0x7FFFFFFF, i)
    return i


def _chunks(fn: ScoreFn, check: bool) -> Iterator[Tensor]:
    src = fn()
    if isinstance(src, LazyScores):
        parts: Iterator[Tensor] = (src.chunk(a, a + _CHUNK) for a in range(0, src.numel(), _CHUNK))
    else:
        flat = src.reshape(-1)
        parts = (flat[a : a + _CHUNK] for a in range(0, flat.numel(), _CHUNK))
    for chunk in parts:
        if check:
            _check_scores(chunk)
        yield ordered_keys(chunk)


_CHANGED = "scores changed between selection passes; a scorer must be deterministic for a given step"


def _pick(hist: Tensor, k: int) -> tuple[int, int]:
    """Bucket holding the k-th smallest (1-based) and how many lie in buckets before it."""
    cum = hist.sum(0).cumsum(0)
    if int(cum[-1]) < k:
        raise MaskError(_CHANGED)
    b = int(torch.searchsorted(cum, torch.tensor(k), right=False))
    return b, (int(cum[b - 1]) if b > 0 else 0)


def global_prune_counts(score_fns: Sequence[ScoreFn], n_prune: int) -> list[int]:
    """How many units each tensor loses when the ``n_prune`` globally lowest-scoring units are pruned.

    Equivalent to concatenating all scores and taking the ``n_prune`` smallest (with the tie rule above), but
    never builds the concatenation. Radix select over order-preserving int32 keys: pass 1 histograms the top
    12 bits of every key; pass 2 keeps only keys in the chosen bucket and histograms the next 12 bits; the last
    8 bits are resolved on the kept candidates (or by a third pass when the bucket is too crowded to keep).
    Per-tensor histograms give each tensor's count. Extra memory: one tensor's scores, one chunk of keys and
    the candidates of one bucket.
    """
    n_t = len(score_fns)
    if n_prune <= 0 or n_t == 0:
        return [0] * n_t
    # Pass 1: top 12 bits (arithmetic shift of the signed key: -2048..2047, offset to 0..4095).
    hist1 = torch.zeros(n_t, 4096, dtype=torch.int64)
    sizes = []
    for ti, fn in enumerate(score_fns):
        n = 0
        for key in _chunks(fn, check=True):
            hist1[ti] += torch.bincount((key >> 20) + 2048, minlength=4096)
            n += key.numel()
        sizes.append(n)
    if n_prune >= sum(sizes):
        return sizes
    b1, before = _pick(hist1, n_prune)
    k = n_prune - before
    below = hist1[:, :b1].sum(1)
    top = b1 - 2048
    # Pass 2: next 12 bits of the keys in bucket b1; keep those keys if they are few enough (at most ~3 % of
    # the scores' bytes, so the third pass runs only for pathologically concentrated scores).
    # The candidates go into one buffer allocated up front (its size is known from pass 1): many small long-lived
    # tensors interleaved with the chunks' temporaries would fragment the C heap and keep freed memory resident.
    n_cand = hist1[:, b1]
    gather = int(n_cand.sum()) <= max(_GATHER_LIMIT, sum(sizes) // 32)
    cand = torch.empty(int(n_cand.sum()) if gather else 0, dtype=torch.int32)
    offsets = [0, *torch.cumsum(n_cand, 0).tolist()]
    kept: list[list[Tensor]] = [[] for _ in range(n_t)]
    hist2 = torch.zeros(n_t, 4096, dtype=torch.int64)
    for ti, fn in enumerate(score_fns):
        pos = offsets[ti]
        for key in _chunks(fn, check=False):
            sel = key[(key >> 20) == top]
            hist2[ti] += torch.bincount((sel >> 8) & 0xFFF, minlength=4096)
            if gather:
                if pos + sel.numel() > offsets[ti + 1]:
                    raise MaskError(_CHANGED)
                cand[pos : pos + sel.numel()] = sel
                pos += sel.numel()
            del sel
        if gather:
            kept[ti].append(cand[offsets[ti] : pos])
    b2, before = _pick(hist2, k)
    k -= before
    below += hist2[:, :b2].sum(1)
    mid = top * 4096 + b2  # value of key >> 8
    # Last 8 bits.
    hist3 = torch.zeros(n_t, 256, dtype=torch.int64)
    for ti, fn in enumerate(score_fns):
        parts = kept[ti] if gather else (key for key in _chunks(fn, check=False))
        for key in parts:
            sel = key[(key >> 8) == mid]
            hist3[ti] += torch.bincount(sel & 0xFF, minlength=256)
    b3, before = _pick(hist3, k)
    k -= before
    below += hist3[:, :b3].sum(1)
    tie_counts = hist3[:, b3]
    # Keys strictly below the threshold key are pruned; `k` of the tied ones go, in tensor order.
    counts = []
    for ti in range(n_t):
        take = min(k, int(tie_counts[ti]))
        k -= take
        counts.append(int(below[ti]) + take)
    return counts
