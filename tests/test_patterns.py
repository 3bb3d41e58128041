import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import NM, Block, Channel, ConfigError, MaskError, Unstructured, parse_pattern


def test_parse_shorthands_in_one_place():
    assert parse_pattern("2:4") == NM(2, 4)
    assert parse_pattern("4x4") == Block(4, 4)
    assert parse_pattern("1x4") == Block(1, 4)
    assert parse_pattern("unstructured") == Unstructured()
    assert parse_pattern("channel") == Channel(0)
    assert parse_pattern("channel:1") == Channel(1)
    assert parse_pattern({"name": "nm", "n": 1, "m": 4}) == NM(1, 4)
    with pytest.raises(ConfigError, match="N:M"):
        parse_pattern("5:4")
    with pytest.raises(ConfigError, match="did you mean"):
        parse_pattern("blok")


def test_unstructured_hand_computed():
    s = torch.tensor([[4.0, 1.0, 3.0], [2.0, 6.0, 5.0]])
    assert Unstructured().select(s, 0.5).tolist() == [[True, False, False], [False, True, True]]


def test_nm_hand_computed_and_tail_group():
    s = torch.tensor([[1.0, 4.0, 2.0, 3.0, 9.0, 1.0]])  # groups [1,4,2,3] and tail [9,1]
    keep = NM(2, 4).select(s, 0.5)
    assert keep.tolist() == [[False, True, False, True, True, True]]  # tail of 2 keeps min(2, N) = 2
    keep = NM(1, 4).select(s, 0.75)
    assert keep.tolist() == [[False, True, False, False, True, False]]


def test_nm_gradual_keeps_more_then_exactly_n():
    s = torch.rand(8, 16)
    assert NM(2, 4).select(s, 0.25).reshape(8, 4, 4).sum(-1).eq(3).all()
    assert NM(2, 4).select(s, 0.5).reshape(8, 4, 4).sum(-1).eq(2).all()
    with pytest.raises(ConfigError):
        NM(2, 4).select(s, 0.6)


def test_nm_conv_uses_flattened_input_dim():
    s = torch.rand(6, 4, 3, 3)  # in*kh*kw = 36, divisible by 4
    keep = NM(2, 4).select(s, 0.5)
    assert keep.reshape(6, 9, 4).sum(-1).eq(2).all()


def test_block_hand_computed_with_edge_scaling():
    s = torch.tensor([[1.0, 1.0, 5.0], [1.0, 1.0, 5.0]])  # 2x2 blocks: [1,1,1,1] sum 4, edge [5,5] scaled x2 = 20
    keep = Block(2, 2).select(s, 0.5)
    assert keep.tolist() == [[False, False, True], [False, False, True]]


def test_channel_hand_computed():
    s = torch.tensor([[1.0, 1.0], [5.0, 0.0], [0.1, 0.1]])
    assert Channel(0).select(s, 1 / 3).tolist() == [[True, True], [True, True], [False, False]]
    assert Channel(1).select(s, 0.5).tolist() == [[True, False], [True, False], [True, False]]


def test_patterns_reject_1d_weights():
    for p in (NM(2, 4), Block(2, 2)):
        with pytest.raises(MaskError, match=r"fc\.bias"):
            p.validate(torch.Size([5]), "fc.bias")


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 40),
    frac=st.floats(0, 1),
    pattern=st.sampled_from(["unstructured", "2x2", "1x4", "3x2", "channel", "channel:1"]),
)
def test_exact_unit_counts(rows, cols, frac, pattern):
    p = parse_pattern(pattern)
    s = torch.rand(rows, cols)
    keep = p.select(s, frac)
    n_units = p.num_units(s.shape)
    pruned_units = n_units - int(p.unit_scores(keep.float()).gt(0).sum())
    assert pruned_units == round(frac * n_units)
    # everything pruned scores no higher than anything kept (threshold separates them)
    u = p.unit_scores(s)
    ku = p.unit_scores(keep.float()) > 0
    if ku.any() and (~ku).any():
        assert u[~ku].max() <= u[ku].min()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 8),
    groups=st.integers(1, 8),
    nm=st.sampled_from([(1, 4), (2, 4), (4, 8), (1, 2), (3, 3)]),
    tail=st.integers(0, 3),
)
def test_nm_exact_n_of_m(rows, groups, nm, tail):
    n, m = nm
    tail = tail % m
    cols = groups * m + tail
    keep = NM(n, m).select(torch.rand(rows, cols), 1 - n / m)
    assert keep[:, : groups * m].reshape(rows, groups, m).sum(-1).eq(n).all()
    if tail:
        assert keep[:, groups * m :].sum(-1).eq(min(n, tail)).all()


def test_ties_are_deterministic():
    s = torch.zeros(4, 8)
    a = Unstructured().select(s, 0.5)
    assert torch.equal(a, Unstructured().select(s, 0.5))
    assert a.reshape(-1)[:16].logical_not().all()  # lowest indices pruned first
    assert math.isclose(float(a.float().mean()), 0.5)
