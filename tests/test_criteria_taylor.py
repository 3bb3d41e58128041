"""Taylor criteria (Molchanov 2017 / 2019) with hand-computed expectations."""

import pytest
import torch
from torch import nn

from prunekit import Channel, ConfigError, ScoreContext, Target
from prunekit.scoring import Taylor, TaylorActivation
from prunekit.testing.models import TinyConvNet

X1, X2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])


def _linear(w, out=2):
    lin = nn.Linear(2, out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
    return lin


def _sum_loss(m, b):
    return m(b[0]).sum()


def test_first_order_weights_hand_computed():
    # loss = sum(W x): dL/dW_ij = x_j per batch; I = mean_b (g_b w)^2
    lin = _linear([[1.0, 2.0], [-1.0, 0.5]])
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(X1,), (X2,)], loss_fn=_sum_loss)
    s = Taylor().score(t, Taylor().collect(ctx, [t]), ctx)
    assert torch.allclose(s, torch.tensor([[5.0, 10.0], [5.0, 0.625]]))
    # group criterion: mean_b (sum over the row of g_b w)^2 = [mean(25, 1), mean(0, 12.25)], spread over the row
    unit = Taylor(group="unit")
    su = unit.score(t, unit.collect(ctx, [t]), ctx)
    assert torch.allclose(Channel(0).unit_scores(su), torch.tensor([13.0, 6.125]))
    assert torch.allclose(su[0], torch.tensor([6.5, 6.5]))


def test_second_order_hand_computed():
    # L_b = 1/2 (w.x_b)^2: g_b = (w.x_b) x_b, exact h = mean_b x_b^2 = [5, 2.5], c = 1/2 h w^2 = [2.5, 5]
    lin = _linear([[1.0, 2.0]], out=1)
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(X1,), (X2,)], loss_fn=lambda m, b: 0.5 * m(b[0]).pow(2).sum())
    so = Taylor(order=2, hessian="exact")
    s = so.score(t, so.collect(ctx, [t]), ctx)
    # t_b = g_b w - c: [2.5, 15] and [0.5, -7]; mean of squares
    assert torch.allclose(s, torch.tensor([[3.25, 137.0]]))
    su = Taylor(order=2, hessian="exact", group="unit")
    unit = Channel(0).unit_scores(su.score(t, su.collect(ctx, [t]), ctx))
    assert torch.allclose(unit, torch.tensor([(17.5**2 + 6.5**2) / 2]))


def test_activation_taylor_hand_computed_and_equals_unit_taylor():
    lin = _linear([[1.0, 2.0], [-1.0, 0.5]])
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(X1,), (X2,)], loss_fn=_sum_loss)
    # dL/da = 1, so a * dL/da = a = W x: [5, 0] and [1, -3.5]
    am = TaylorActivation()
    assert torch.allclose(Channel(0).unit_scores(am.score(t, am.collect(ctx, [t]), ctx)), torch.tensor([3.0, 1.75]))
    sq = TaylorActivation(formulation="squared")
    gate = Channel(0).unit_scores(sq.score(t, sq.collect(ctx, [t]), ctx))
    assert torch.allclose(gate, torch.tensor([13.0, 6.125]))
    # the gate form equals the weight-group form for a layer without bias (sum_s g_s w_s = sum a dL/da)
    unit = Taylor(group="unit")
    assert torch.allclose(gate, Channel(0).unit_scores(unit.score(t, unit.collect(ctx, [t]), ctx)))
    l2 = TaylorActivation(normalize="l2")
    v = Channel(0).unit_scores(l2.score(t, l2.collect(ctx, [t]), ctx))
    assert torch.allclose(v, torch.tensor([3.0, 1.75]) / torch.tensor([3.0, 1.75]).norm())


def test_second_order_gate_hand_computed_and_exact_for_a_quadratic_loss():
    # L_b = 1/2 (z w.x_b)^2 with a gate z = 1: dL/dz = (w.x_b)^2, d2L/dz2 = (w.x_b)^2; w.x = 5 and 1
    lin = _linear([[1.0, 2.0]], out=1)
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(X1,), (X2,)], loss_fn=lambda m, b: 0.5 * m(b[0]).pow(2).sum())
    so = TaylorActivation(formulation="squared", order=2)
    unit = Channel(0).unit_scores(so.score(t, so.collect(ctx, [t]), ctx))
    # (25 - 12.5)^2 and (1 - 0.5)^2: exactly the squared loss change of removing the unit in each batch
    assert torch.allclose(unit, torch.tensor([(12.5**2 + 0.5**2) / 2]))
    assert not lin._forward_hooks
    with pytest.raises(ConfigError, match=r"scorer\.order"):
        TaylorActivation(order=2)


def test_activation_taylor_takes_abs_of_the_spatial_mean():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.tensor([[[[1.0, -3.0], [2.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # spatial means 0 and 1
    t = Target("", "weight", conv)
    ctx = ScoreContext(conv, calibration=[(x,)], loss_fn=_sum_loss)
    s = TaylorActivation().score(t, TaylorActivation().collect(ctx, [t]), ctx)
    assert torch.allclose(s, torch.tensor([[[[0.5]]]]))


def test_activation_taylor_is_the_true_loss_change_for_a_loss_linear_in_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 3)
    ctx = ScoreContext(model, calibration=[(x,)], loss_fn=_sum_loss)
    t = Target("0", "weight", model[0])
    sq = TaylorActivation(formulation="squared")
    pred = Channel(0).unit_scores(sq.score(t, sq.collect(ctx, [t]), ctx)).sqrt()
    with torch.no_grad():
        base = float(model(x).sum())
    for k in range(4):
        with torch.no_grad():
            saved = model[2].weight[:, k].clone()
            model[2].weight[:, k] = 0.0  # remove unit k
            change = float(model(x).sum()) - base
            model[2].weight[:, k] = saved
        assert abs(change) == pytest.approx(float(pred[k]), rel=1e-5, abs=1e-6)


def test_taylor_leaves_model_state_alone():
    model = TinyConvNet()
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    bn_mean = model.bn1.running_mean.clone()
    ctx = ScoreContext(model, calibration=[(torch.randn(2, 3, 6, 6),)] * 2, loss_fn=_sum_loss)
    targets = [Target("conv1", "weight", model.conv1), Target("fc", "weight", model.fc)]
    for scorer in (
        Taylor(),
        Taylor(order=2),
        TaylorActivation(observe={"conv1": "bn1"}),
        TaylorActivation(formulation="squared", order=2),
    ):
        scorer.collect(ctx, targets)
        assert all(torch.all(p.grad == 2.0) for p in model.parameters())
        assert torch.equal(model.bn1.running_mean, bn_mean)
        assert not any(m._forward_hooks for m in model.modules())


def test_observe_errors_and_config_errors():
    model = TinyConvNet()
    ctx = ScoreContext(model, batch=(torch.randn(2, 3, 6, 6),), loss_fn=_sum_loss)
    t = [Target("conv1", "weight", model.conv1)]
    with pytest.raises(ConfigError, match="observe"):
        TaylorActivation(observe={"conv1": "nope"}).collect(ctx, t)
    with pytest.raises(ConfigError, match="units"):
        TaylorActivation(observe={"conv1": "fc"}).collect(ctx, t)
    with pytest.raises(ConfigError, match=r"scorer\.order"):
        Taylor(order=3)
    with pytest.raises(ConfigError, match=r"scorer\.group"):
        Taylor(group="row")
    with pytest.raises(ConfigError, match=r"scorer\.formulation"):
        TaylorActivation(formulation="mean")
    with pytest.raises(ConfigError, match="loss"):
        Taylor().check_context(ScoreContext(model, batch=(torch.randn(2, 3, 6, 6),)))
