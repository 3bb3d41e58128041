import pytest
import torch

from prunekit import ER, ERK, LAMP, ConfigError, Global, Uniform
from prunekit.allocation import AllocationItem, erk_densities, lamp_scores, round_counts


def _items(*tensors, fixed=None):
    fixed = fixed or {}
    return [
        AllocationItem(f"l{i}", t.shape, t.numel(), lambda t=t: t.reshape(-1), fixed.get(f"l{i}")) for i, t in enumerate(tensors)
    ]


def test_uniform_and_fixed_overrides():
    items = _items(torch.rand(4, 8), torch.rand(2, 4), fixed={"l1": 0.25})
    assert Uniform().allocate(items, 0.5) == {"l0": 0.5, "l1": 0.25}


def test_global_hand_computed():
    a = torch.tensor([[0.1, 0.2], [0.9, 0.8]])
    b = torch.tensor([[0.15, 0.05, 0.95, 0.3]])
    # 4 lowest of all 8: 0.05, 0.1, 0.15, 0.2 -> two from a, two from b
    assert Global().allocate(_items(a, b), 0.5) == {"l0": 0.5, "l1": 0.5}
    # 6 lowest: a loses 0.1, 0.2 (and would not lose 0.8, 0.9); b loses 0.05, 0.15, 0.3 and... the 6th is 0.8
    assert Global().allocate(_items(a, b), 0.75) == {"l0": 0.75, "l1": 0.75}


def test_global_cap_keeps_layers_alive_and_total_exact():
    small = torch.full((2, 5), 0.001)  # would be emptied by a global threshold
    big = torch.rand(10, 10) + 1
    out = Global().allocate(_items(small, big), 0.5)  # default: keep at least one unit
    assert out["l0"] == 0.9 and round(out["l0"] * 10 + out["l1"] * 100) == 55
    out = Global(max_layer_sparsity=0.5).allocate(_items(small, big), 0.5)
    assert out["l0"] == 0.5 and round(out["l0"] * 10 + out["l1"] * 100) == 55
    with pytest.raises(ConfigError, match="max_layer_sparsity"):
        Global(max_layer_sparsity=1.5)


def test_lamp_scores_hand_computed():
    # Lee 2021 Eq. 2 with s = |w|: w = [1, 2, 3] -> squared [1, 4, 9]; scores 1/14, 4/13, 9/9.
    got = lamp_scores(torch.tensor([3.0, 1.0, 2.0]))
    assert torch.allclose(got, torch.tensor([1.0, 1 / 14, 4 / 13]))
    assert torch.isneginf(lamp_scores(torch.tensor([float("-inf"), 1.0]))[0])


def test_lamp_allocation_total_exact():
    items = _items(torch.rand(30, 20), torch.rand(10, 5) * 0.01, torch.rand(4, 4))
    out = LAMP().allocate(items, 0.8)
    assert round(sum(out[i.key] * i.num_units for i in items)) == round(0.8 * (600 + 50 + 16))


def test_er_hand_computed_with_rounding():
    # shapes (4, 8) and (2, 4): raw (4+8)/32 = 0.375 and (2+4)/8 = 0.75; density 0.5 -> eps = 20 / 18.
    d = erk_densities([torch.Size([4, 8]), torch.Size([2, 4])], [32, 8], 0.5, kernel=False)
    assert d == pytest.approx([0.375 * 20 / 18, 0.75 * 20 / 18])
    out = ER().allocate(_items(torch.rand(4, 8), torch.rand(2, 4)), 0.5)
    assert out == {"l0": 19 / 32, "l1": 1 / 8}  # 18.67 and 1.33 pruned, rounded to the exact total of 20


def test_erk_dense_fallback():
    # density 0.8: eps = 32 / 18, layer 2 would get 0.75 * 1.78 > 1 -> dense; layer 1 takes the rest (24 of 32).
    d = erk_densities([torch.Size([4, 8]), torch.Size([2, 4])], [32, 8], 0.8, kernel=False)
    assert d == pytest.approx([0.75, 1.0])


def test_erk_uses_kernel_dims():
    d = erk_densities(
        [torch.Size([8, 4, 3, 3]), torch.Size([8, 4, 1, 1])], [288, 32], 0.1, kernel=True
    )  # eps = 32 / 32 = 1, no layer saturates
    raw = [(8 + 4 + 3 + 3) / 288, (8 + 4 + 1 + 1) / 32]
    assert d[0] / d[1] == pytest.approx(raw[0] / raw[1])
    assert ERK().allocate(_items(torch.rand(8, 4, 3, 3), torch.rand(8, 4, 1, 1)), 0.7)


def test_round_counts_respects_total_and_bounds():
    assert round_counts([1.5, 1.5, 1.0], 4, [3, 3, 3]) == [2, 1, 1]
    assert sum(round_counts([0.2, 0.7, 9.9], 10, [1, 1, 8])) == 10
