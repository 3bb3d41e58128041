"""Redundancy criteria (activation correlation, weight cosine) and exact folding of redundant units."""

import pytest
import torch
from torch import nn

from prunekit import Channel, ConfigError, ScoreContext, Target
from prunekit.scoring import ActivationCorrelation, Fold, WeightCosine, affine_fit, apply_folds_, fold_unit_
from prunekit.scoring._reduce import greedy_elimination


def test_greedy_elimination_hand_computed():
    sim = torch.tensor([[1.0, 0.9, 0.2, 0.1], [0.9, 1.0, 0.3, 0.5], [0.2, 0.3, 1.0, 0.6], [0.1, 0.5, 0.6, 1.0]])
    strength = torch.tensor([1.0, 2.0, 1.0, 1.0])
    scores, order, partner = greedy_elimination(sim, strength)
    # (0, 1) first: 0 is weaker -> out at 1 - 0.9; then (2, 3) at 0.6: equal strength, higher index 3 goes;
    # then (1, 2) at 0.3: 2 is weaker; 1 is last
    assert order == [0, 3, 2] and partner == [1, 2, 1]
    assert torch.allclose(scores, torch.tensor([0.1, 2.0, 0.7, 0.4]))
    # flagged units go first with score 0; scores never decrease along the order
    scores2, order2, partner2 = greedy_elimination(sim, strength, torch.tensor([False, False, True, False]))
    assert order2[0] == 2 and partner2[0] == -1 and float(scores2[2]) == 0.0


def test_affine_fit():
    a = torch.tensor([0.0, 1.0, 2.0, 5.0])
    assert affine_fit(a, 3 * a - 2) == pytest.approx((3.0, -2.0))
    assert affine_fit(torch.ones(4), torch.full((4,), 7.0)) == pytest.approx((0.0, 7.0))


def _duplicate_net():
    """Linear(3, 4) -> Linear(4, 2), no nonlinearity. Unit 3 = 2 * unit 0 + 1 exactly, unit 1 is constant 0.5."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight[3] = 2 * net[0].weight[0]
        net[0].bias[3] = 2 * net[0].bias[0] + 1
        net[0].weight[1] = 0.0
        net[0].bias[1] = 0.5
    return net


def test_correlation_finds_constant_and_affine_duplicates_and_folding_is_exact():
    net = _duplicate_net()
    x = torch.randn(64, 3)
    t = Target("0", "weight", net[0])
    ctx = ScoreContext(net, calibration=[(x[:40],), (x[40:],)])
    scorer = ActivationCorrelation(nonlinearity="none")
    stats = scorer.collect(ctx, [t])
    units = Channel(0).unit_scores(scorer.score(t, stats, ctx))
    # constant unit 1 first; of the pair (0, 3) with |rho| = 1 the lower-variance unit 0 goes
    assert torch.argsort(units, stable=True)[:2].tolist() == [1, 0]
    assert float(units[0]) == pytest.approx(0.0, abs=1e-6)
    folds = stats["folds"]["0.weight"]
    assert folds[0] == Fold(1, -1, 0.0, pytest.approx(0.5))
    # a_0 = (a_3 - 1) / 2
    assert folds[1].drop == 0 and folds[1].keep == 3
    assert (folds[1].alpha, folds[1].beta) == (pytest.approx(0.5, rel=1e-5), pytest.approx(-0.5, rel=1e-5))
    with torch.no_grad():
        before = net(x)
    apply_folds_(net[1], folds[:2])
    with torch.no_grad():  # remove the two units from the first layer too
        net[0].weight[[0, 1]] = 0.0
        net[0].bias[[0, 1]] = 0.0
    assert torch.allclose(net(x), before, atol=1e-5)  # exact removal of two of four units


def test_fold_rule_on_linear_by_hand():
    nxt = nn.Linear(3, 1)
    with torch.no_grad():
        nxt.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        nxt.bias.fill_(0.5)
    fold_unit_(nxt, drop=2, keep=0, alpha=2.0, beta=-1.0)
    # W[:, 0] += 2 * 3; b += -1 * 3; W[:, 2] = 0
    assert nxt.weight.tolist() == [[7.0, 2.0, 0.0]] and nxt.bias.tolist() == [-2.5]
    with pytest.raises(ConfigError, match="bias"):
        fold_unit_(nn.Linear(3, 1, bias=False), 2, 0, 1.0, 1.0)


def test_fold_into_conv_next_layer_exact_without_offset():
    torch.manual_seed(0)
    c1 = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        c1.weight[2] = 0.5 * c1.weight[0]
        c1.bias[2] = 0.5 * c1.bias[0]
    net = nn.Sequential(c1, nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1))
    x = torch.randn(2, 2, 5, 5)
    ctx = ScoreContext(net, calibration=[(x,)])
    t = Target("0", "weight", c1)
    stats = ActivationCorrelation().collect(ctx, [t])  # relu(0.5 z) = 0.5 relu(z): an exact positive multiple
    fold = stats["folds"]["0.weight"][0]
    assert (fold.drop, fold.keep) == (2, 0)
    assert fold.alpha == pytest.approx(0.5, rel=1e-5) and fold.beta == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        before = net(x)
    fold_unit_(net[2], fold.drop, fold.keep, fold.alpha, 0.0)
    assert torch.allclose(net(x), before, atol=1e-5)


def test_weight_cosine_ranks_scaled_copies_and_zero_units_first():
    lin = nn.Linear(3, 5)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -1.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.1, 0.0, 0.3, 0.0, 0.0]))
    t = Target("", "weight", lin)
    units = Channel(0).unit_scores(WeightCosine().score(t, {}, ScoreContext(lin)))
    order = torch.argsort(units, stable=True).tolist()
    # unit 3 is all zero (weights and bias); unit 0 is a positive multiple (1/3) of unit 2, so the smaller goes
    assert set(order[:2]) == {3, 0}
    assert float(units[3]) == 0.0 and float(units[0]) == pytest.approx(0.0, abs=1e-6)
    # the bias matters: without it unit 0 and 2 are still parallel; with a different bias they are not
    with torch.no_grad():
        lin.bias[2] = -5.0
    units_b = Channel(0).unit_scores(WeightCosine().score(t, {}, ScoreContext(lin)))
    assert float(units_b[0]) > 0.1
    units_nb = Channel(0).unit_scores(WeightCosine(with_bias=False).score(t, {}, ScoreContext(lin)))
    assert float(units_nb[0]) == pytest.approx(0.0, abs=1e-6)
