import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunekit import ConfigError, Constant, Iterative, OneShot, Polynomial


def test_polynomial_hand_computed():
    s = Polynomial(begin=0, end=100, every=10)
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - t/T)^3; at t = 50: 0.9 - 0.9 * 0.125
    assert s.sparsity_at(50, 0.9) == pytest.approx(0.7875)
    assert s.sparsity_at(0, 0.9) == 0.0 and s.sparsity_at(100, 0.9) == 0.9 and s.sparsity_at(10**6, 0.9) == 0.9
    assert [t for t in range(120) if s.is_update_step(t)] == list(range(0, 101, 10))


@given(begin=st.integers(0, 50), length=st.integers(0, 500), every=st.integers(1, 97), target=st.floats(0, 0.99))
def test_polynomial_reaches_target_whatever_the_step_grid(begin, length, every, target):
    s = Polynomial(begin=begin, end=begin + length, every=every)
    updates = [t for t in range(begin + length + 5) if s.is_update_step(t)]
    assert updates[-1] == s.final_step() == begin + length
    assert s.sparsity_at(updates[-1], target) == target
    vals = [s.sparsity_at(t, target) for t in updates]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(vals))


def test_iterative_rounds_prune_fraction_of_remaining():
    s = Iterative(rounds=3, begin=10, every=100)
    assert [t for t in range(500) if s.is_update_step(t)] == [10, 110, 210]
    # p = 1 - (1 - 0.875)^(1/3) = 0.5: sparsities 0.5, 0.75, 0.875
    assert [s.sparsity_at(t, 0.875) for t in (10, 110, 210)] == pytest.approx([0.5, 0.75, 0.875])
    assert s.sparsity_at(9, 0.875) == 0.0 and s.final_step() == 210


def test_oneshot_and_constant():
    assert [t for t in range(10) if OneShot(at=3).is_update_step(t)] == [3]
    c = Constant(begin=2, every=3, end=9)
    assert [t for t in range(20) if c.is_update_step(t)] == [2, 5, 8]
    assert c.sparsity_at(1, 0.5) == 0.0 and c.sparsity_at(2, 0.5) == 0.5


def test_schedule_validation_names_fields():
    with pytest.raises(ConfigError, match=r"schedule\.end"):
        Polynomial(begin=10, end=5)
    with pytest.raises(ConfigError, match=r"schedule\.at"):
        OneShot(at=-1)
    with pytest.raises(ConfigError, match=r"schedule\.rounds"):
        Iterative(rounds=0)
