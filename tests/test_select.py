import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.select import global_prune_counts, keep_lowest_pruned, ordered_keys


def test_keep_lowest_hand_computed_with_ties():
    s = torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0, 1.0])
    # prune 2: the lowest value is 1.0 three times; the two with the lowest indices (1 and 3) go.
    assert keep_lowest_pruned(s, 2).tolist() == [True, False, True, False, True, True]
    assert keep_lowest_pruned(s, 0).all() and not keep_lowest_pruned(s, 6).any()


def test_ordered_keys_preserve_float_order():
    x = torch.tensor([-float("inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    k = ordered_keys(x)
    assert (k[1:] >= k[:-1]).all()
    assert k[3] == k[4]  # -0.0 and +0.0 are the same score
    pos = torch.tensor([0.0, 1e-30, 2.0, float("inf")])
    assert torch.equal(ordered_keys(pos), pos.view(torch.int32))  # non-negative scores: free reinterpretation


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=5),
    frac=st.floats(0, 1),
    ties=st.booleans(),
    nonneg=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_global_counts_equal_concatenated_selection(sizes, frac, ties, nonneg, seed):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(n, generator=g) for n in sizes]
    if nonneg:
        ts = [t.abs() for t in ts]
    if ties:
        ts = [t.round() for t in ts]  # many exact ties, across tensors too
    total = sum(sizes)
    k = round(frac * total)
    keep = keep_lowest_pruned(torch.cat(ts), k)
    expected, off = [], 0
    for t in ts:
        expected.append(int((~keep[off : off + t.numel()]).sum()))
        off += t.numel()
    assert global_prune_counts([lambda t=t: t for t in ts], k) == expected


def test_global_counts_handle_neg_inf_and_chunking(monkeypatch):
    import prunekit.select as S

    monkeypatch.setattr(S, "_CHUNK", 7)  # force many chunks
    monkeypatch.setattr(S, "_GATHER_LIMIT", 0)  # and the streaming third pass
    a = torch.tensor([float("-inf")] * 5 + [1.0, 2.0])
    b = torch.tensor([0.5, float("-inf"), 3.0])
    assert S.global_prune_counts([lambda: a, lambda: b], 7) == [5, 2]  # six -inf, then 0.5 from b


def test_nondeterministic_scores_fail_clearly():
    import pytest

    from prunekit import MaskError

    with pytest.raises(MaskError, match="deterministic"):
        for _ in range(20):  # a random score function changes between passes; some draw must expose it
            global_prune_counts([lambda: torch.rand(1000)], 500)


def test_lazy_scores_give_the_same_counts_without_materialising(monkeypatch):
    import prunekit.select as S

    monkeypatch.setattr(S, "_CHUNK", 64)
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(1000, generator=g), torch.randn(37, generator=g), torch.randn(500, generator=g)]
    keeps = [torch.rand(w.shape, generator=g) > 0.3 for w in ws]
    eager = [lambda w=w, k=k: w.abs().masked_fill(~k, float("-inf")) for w, k in zip(ws, keeps)]
    lazy = [lambda w=w, k=k: S.LazyScores(w, torch.abs, k) for w, k in zip(ws, keeps)]
    for n in (0, 1, 300, 900, 1200, 1537):
        assert S.global_prune_counts(lazy, n) == S.global_prune_counts(eager, n)
    assert torch.equal(S.as_tensor(lazy[1]()), eager[1]())
