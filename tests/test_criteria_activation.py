"""Activation-based unit criteria (APoZ, near-zero fraction, mean, variance, entropy) with hand-computed values."""

import math

import pytest
import torch
from torch import nn

from prunekit import Channel, ConfigError, ScoreContext, Target
from prunekit.scoring import ActivationEntropy, ActivationMean, ActivationVariance, APoZ, NearZero
from prunekit.scoring.activation import histogram_entropy
from prunekit.testing.models import TinyConvNet

# Linear(2, 3) with W = [[1, 0], [0, 1], [-1, -1]], no bias: pre-activations are x0, x1, -(x0 + x1)
X = torch.tensor([[1.0, 2.0], [-1.0, 3.0], [2.0, -5.0], [0.0, 0.0005]])
# relu outputs per unit: u0 = [1, 0, 2, 0], u1 = [2, 3, 0, 0.0005], u2 = [0, 0, 3, 0]


def _setup(batches=((X,),)):
    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    return lin, Target("", "weight", lin), ScoreContext(lin, calibration=list(batches))


def _units(scorer, lin, t, ctx):
    s = scorer.score(t, scorer.collect(ctx, [t]), ctx)
    assert s.shape == lin.weight.shape
    return Channel(0).unit_scores(s)  # the channel sum recovers the unit score exactly


def test_apoz_hand_computed():
    lin, t, ctx = _setup()
    assert torch.allclose(_units(APoZ(), lin, t, ctx), torch.tensor([1 - 2 / 4, 1 - 1 / 4, 1 - 3 / 4]))


def test_near_zero_with_threshold():
    lin, t, ctx = _setup()
    # |a| <= 1e-3 also catches u1's 0.0005
    assert torch.allclose(_units(NearZero(threshold=1e-3), lin, t, ctx), torch.tensor([0.5, 0.5, 0.25]))
    assert torch.allclose(_units(NearZero(threshold=0.0), lin, t, ctx), _units(APoZ(), lin, t, ctx))
    with pytest.raises(ConfigError, match=r"scorer\.threshold"):
        NearZero(threshold=-1)


def test_mean_and_variance_hand_computed_and_accumulate_over_batches():
    lin, t, ctx = _setup()
    mean = _units(ActivationMean(), lin, t, ctx)
    assert torch.allclose(mean, torch.tensor([0.75, 5.0005 / 4, 0.75]))
    var = _units(ActivationVariance(), lin, t, ctx)
    expected = torch.tensor([[1.0, 0.0, 2.0, 0.0], [2.0, 3.0, 0.0, 0.0005], [0.0, 0.0, 3.0, 0.0]]).var(1, unbiased=False)
    assert torch.allclose(var, expected)
    # three uneven batches give the same statistics as one
    lin3, t3, ctx3 = _setup(((X[:1],), (X[1:3],), (X[3:],)))
    assert torch.allclose(_units(ActivationVariance(), lin3, t3, ctx3), expected)
    assert torch.allclose(_units(ActivationMean(), lin3, t3, ctx3), mean)
    # without the nonlinearity the mean is of |a|
    none = _units(ActivationMean(nonlinearity="none"), lin, t, ctx)
    assert torch.allclose(none[0], torch.tensor((1 + 1 + 2 + 0) / 4))


def test_entropy_hand_computed():
    v = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0], [1.0, 5.0, 2.0], [1.0, 5.0, 4.0]])
    h = histogram_entropy(v, bins=2)
    # column 0: two values, two per bin -> ln 2; column 1: constant -> 0; column 2: 1,1,2 | 4 -> 3/4, 1/4
    assert torch.allclose(
        h, torch.tensor([math.log(2), 0.0, -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))], dtype=torch.float64)
    )
    lin, t, ctx = _setup()
    ent = _units(ActivationEntropy(bins=2), lin, t, ctx)
    # u2 = [0, 0, 3, 0]: 3 | 1 -> H(3/4, 1/4); u0 = [1, 0, 2, 0]: bins [0, 1), [1, 2]: 2 | 2 -> ln 2
    assert float(ent[0]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(ent[2]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-6)
    with pytest.raises(ConfigError, match=r"scorer\.bins"):
        ActivationEntropy(bins=1)


def test_conv_units_are_channels_over_all_positions_and_observe_picks_the_site():
    model = TinyConvNet()
    x = torch.randn(3, 3, 6, 6)
    ctx = ScoreContext(model, calibration=[(x,)])
    t = Target("conv1", "weight", model.conv1)
    with torch.no_grad():
        pre = model.conv1(x)
        model.train()
        post_bn = torch.nn.functional.batch_norm(pre, None, None, model.bn1.weight, model.bn1.bias, training=True)
    direct = _units(APoZ(), model.conv1, t, ctx)
    assert torch.allclose(direct, (pre > 0).float().mean((0, 2, 3)))
    bn = _units(APoZ(observe={"conv1": "bn1"}), model.conv1, t, ctx)
    assert torch.allclose(bn, (post_bn > 0).float().mean((0, 2, 3)))


def test_collect_is_scoped_and_restores_buffers():
    model = TinyConvNet()
    bn_mean, n_tracked = model.bn1.running_mean.clone(), model.bn1.num_batches_tracked.clone()
    ctx = ScoreContext(model, calibration=[(torch.randn(2, 3, 6, 6),)] * 3)
    targets = [Target("conv1", "weight", model.conv1), Target("fc", "weight", model.fc)]
    for scorer in (APoZ(), NearZero(), ActivationMean(), ActivationVariance(), ActivationEntropy()):
        stats = scorer.collect(ctx, targets)
        assert set(stats["units"]) == {"conv1.weight", "fc.weight"}
        assert not any(m._forward_hooks for m in model.modules())
        assert torch.equal(model.bn1.running_mean, bn_mean) and torch.equal(model.bn1.num_batches_tracked, n_tracked)


def test_config_errors_and_missing_data():
    with pytest.raises(ConfigError, match=r"scorer\.nonlinearity"):
        APoZ(nonlinearity="gelu")
    with pytest.raises(ConfigError, match="calibration"):
        APoZ().check_context(ScoreContext(nn.Linear(2, 2)))


def test_unused_target_warns_and_scores_zero():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    unused = nn.Linear(2, 4)  # a target the forward pass never reaches
    t = Target("x", "weight", unused)
    ctx = ScoreContext(model, calibration=[(torch.ones(1, 2),)])
    with pytest.warns(UserWarning, match="no activation reached x.weight"):
        stats = APoZ().collect(ctx, [t])
    assert torch.equal(APoZ().score(t, stats, ctx), torch.zeros(4, 2))


def test_observe_keys_must_name_modules():
    model = TinyConvNet()
    ctx = ScoreContext(model, calibration=[(torch.randn(2, 3, 6, 6),)])
    with pytest.raises(ConfigError, match=r"scorer\.observe\.conv9"):
        APoZ(observe={"conv9": "bn1"}).collect(ctx, [Target("conv1", "weight", model.conv1)])
