"""Optimal Brain Damage and the diagonal-Hessian estimators (exact, Fisher, Hutchinson) on quadratic losses."""

import pytest
import torch
from torch import nn

from prunekit import ConfigError, ScoreContext, Target
from prunekit.scoring import OBD
from prunekit.scoring._curvature import hessian_diagonal


def _regression(orthogonal=False):
    """Linear(3, 1, no bias) with MSE loss: H = 2 X^T X / n exactly. Orthogonal X columns make H diagonal."""
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    if orthogonal:
        x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [-1.0, 0.0, 0.0]])
    else:
        x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([[1.0], [0.0], [2.0], [-1.0]])

    def loss(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    return lin, x, y, loss


def test_exact_diagonal_is_analytic():
    lin, x, y, loss = _regression()
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(x[:2], y[:2]), (x[2:], y[2:])], loss_fn=loss)
    h = hessian_diagonal(ctx, [t], "exact")["weight"]
    # per batch of 2: h_qq = 2 mean x_q^2; averaged over the two batches = 2 mean over all 4 rows
    assert torch.allclose(h, 2 * (x**2).mean(0, keepdim=True))


def test_fisher_is_mean_squared_per_sample_gradient():
    lin, x, y, loss = _regression()
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(x, y)], loss_fn=loss)
    f = hessian_diagonal(ctx, [t], "fisher")["weight"]
    resid = x @ lin.weight.detach().T - y  # (4, 1)
    per_sample = 2 * resid * x  # d (r_n^2) / dw
    assert torch.allclose(f, (per_sample**2).mean(0, keepdim=True))


def test_hutchinson_is_exact_for_a_diagonal_hessian_and_seeded():
    lin, x, y, loss = _regression(orthogonal=True)
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(x, y)], loss_fn=loss)
    h = hessian_diagonal(ctx, [t], "hutchinson", probes=3, seed=7)["weight"]
    # with H diagonal, v_q (H v)_q = H_qq v_q^2 = H_qq for every Rademacher v
    assert torch.allclose(h, 2 * (x**2).mean(0, keepdim=True))


def test_hutchinson_is_unbiased_on_a_full_hessian():
    lin, x, y, loss = _regression()
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(x, y)], loss_fn=loss)
    a = hessian_diagonal(ctx, [t], "hutchinson", probes=400, seed=1)["weight"]
    assert torch.equal(a, hessian_diagonal(ctx, [t], "hutchinson", probes=400, seed=1)["weight"])
    assert torch.allclose(a, 2 * (x**2).mean(0, keepdim=True), rtol=0.15)


def test_obd_is_the_exact_loss_increase_at_a_minimum():
    """At the least-squares optimum of a quadratic loss, removing one weight costs exactly 1/2 h_qq w_q^2."""
    lin, x, y, loss = _regression()
    with torch.no_grad():
        lin.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(x, y)], loss_fn=loss)
    scorer = OBD(hessian="exact")
    s = scorer.score(t, scorer.collect(ctx, [t]), ctx)
    base = float(loss(lin, (x, y)).detach())
    for q in range(3):
        w = lin.weight.detach().clone()
        w[0, q] = 0.0
        measured = float(((x @ w.T - y) ** 2).mean()) - base
        assert float(s[0, q]) == pytest.approx(measured, rel=1e-4, abs=1e-6)


def test_obd_auto_uses_exact_for_small_and_fisher_for_large():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 40))
    x = torch.randn(6, 4)
    ctx = ScoreContext(model, calibration=[(x,)], loss_fn=lambda m, b: m(b[0]).pow(2).sum())
    small, large = Target("0", "weight", model[0]), Target("2", "weight", model[2])
    stats = OBD(exact_max_numel=20).collect(ctx, [small, large])
    assert torch.allclose(stats["h"]["0.weight"], hessian_diagonal(ctx, [small], "exact")["0.weight"])
    assert torch.allclose(stats["h"]["2.weight"], hessian_diagonal(ctx, [large], "fisher")["2.weight"])
    s = OBD(exact_max_numel=20).score(small, stats, ctx)
    assert torch.allclose(s, 0.5 * stats["h"]["0.weight"] * model[0].weight.detach() ** 2)


def test_obd_leaves_grads_and_buffers_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    running = model[1].running_mean.clone()
    ctx = ScoreContext(model, calibration=[(torch.randn(5, 4),)], loss_fn=lambda m, b: m(b[0]).pow(2).sum())
    targets = [Target("0", "weight", model[0]), Target("3", "weight", model[3])]
    for est in ("exact", "fisher", "hutchinson"):
        if est == "fisher":  # BatchNorm1d in training mode refuses single samples: batch gradient, with a warning
            with pytest.warns(UserWarning, match="single samples"):
                OBD(hessian=est).collect(ctx, targets)
        else:
            OBD(hessian=est).collect(ctx, targets)
        assert all(torch.all(p.grad == 3.0) for p in model.parameters())
        assert torch.equal(model[1].running_mean, running)


def test_obd_config_errors():
    with pytest.raises(ConfigError, match=r"scorer\.hessian"):
        OBD(hessian="gauss")
    with pytest.raises(ConfigError, match=r"scorer\.probes"):
        OBD(probes=0)
    with pytest.raises(ConfigError, match="loss"):
        OBD().check_context(ScoreContext(nn.Linear(2, 2), batch=(torch.ones(1, 2),)))
