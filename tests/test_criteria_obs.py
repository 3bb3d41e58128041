"""Optimal Brain Surgeon on one layer: predicted loss = measured reconstruction loss, and OBS beats magnitude."""

import pytest
import torch
from torch import nn

from prunekit import ConfigError, ScoreContext, Target
from prunekit.scoring import OBS, obs_prune, obs_prune_layer_, obs_saliency, reconstruction_hessian
from prunekit.scoring._calibration import layer_input_grams, layer_input_matrix

SPARSITIES = [0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9]


def _layer(rows=6, cols=12, n=200, seed=0):
    """A weight and correlated inputs X (n, cols): correlation is what makes OBS differ from magnitude."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64)
    x = torch.randn(n, cols, generator=g, dtype=torch.float64) @ mix
    return w, x


def _recon(w_new, w, x):
    """Measured reconstruction loss summed over rows: sum_r (1/n) ||(w'_r - w_r)^T X||^2."""
    return float(((x @ (w_new - w).T) ** 2).sum(1).mean())


def _magnitude(w, s):
    k = round(s * w.numel())
    keep = torch.ones(w.numel(), dtype=torch.bool)
    keep[torch.sort(w.abs().reshape(-1), stable=True).indices[:k]] = False
    return torch.where(keep.reshape(w.shape), w, torch.zeros_like(w))


@pytest.mark.parametrize("method", ["exact", "blocked"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_predicted_loss_equals_measured_reconstruction_loss(method, sparsity):
    w, x = _layer()
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    res = obs_prune(w, h, sparsity, damping=0.0, method=method, block_size=4)
    assert int((~res.mask).sum()) == round(sparsity * w.numel())  # exact count
    assert torch.all(res.weight[~res.mask] == 0)
    assert res.total_loss == pytest.approx(_recon(res.weight, w, x), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_exact_obs_beats_magnitude_at_every_sparsity(sparsity):
    w, x = _layer(seed=1)
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    obs = obs_prune(w, h, sparsity, damping=0.0, method="exact")
    assert _recon(obs.weight, w, x) < _recon(_magnitude(w, sparsity), w, x)


def test_single_weight_saliency_is_the_exact_cost_with_update():
    w, x = _layer(rows=3, cols=5)
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    sal = obs_saliency(w, h, damping=0.0).double()
    hinv = torch.linalg.inv(h)
    assert torch.allclose(sal, w**2 / (2 * torch.diagonal(hinv)), rtol=1e-5)
    for r, q in [(0, 0), (1, 3), (2, 4)]:
        mask = torch.ones_like(w, dtype=torch.bool)
        mask[r, q] = False
        res = obs_prune(w, h, mask=mask, damping=0.0)
        # the compensating update is -(w_q / [H^-1]_qq) H^-1[:, q]
        expected = w[r] - w[r, q] / hinv[q, q] * hinv[:, q]
        assert torch.allclose(res.weight[r], expected, atol=1e-10)
        assert _recon(res.weight, w, x) == pytest.approx(float(sal[r, q]), rel=1e-5)


def test_damped_prediction_equals_damped_loss():
    w, x = _layer(rows=4, cols=8, n=6)  # n < cols: H is singular without damping
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    with pytest.raises(ConfigError, match="damping"):
        obs_prune(w, h, 0.5, damping=0.0)
    res = obs_prune(w, h, 0.5, damping=0.01, method="exact")
    lam = 0.01 * float(torch.diagonal(h).mean())
    measured = _recon(res.weight, w, x) + lam / 2 * float(((res.weight - w) ** 2).sum())
    assert res.total_loss == pytest.approx(measured, rel=1e-8)


def test_exact_global_selection_is_a_prefix_per_row_and_per_row_option():
    w, x = _layer(rows=5, cols=10, seed=3)
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    res = obs_prune(w, h, 0.5, damping=0.0, method="exact")
    assert int((~res.mask).sum()) == 25
    per_row = obs_prune(w, h, 0.5, damping=0.0, method="exact", per_row=True)
    assert (~per_row.mask).sum(1).tolist() == [5] * 5
    # the layer-wide choice is at least as good as forcing every row to the same count
    assert res.total_loss <= per_row.total_loss + 1e-9


def test_blocked_nm_pattern_and_exactness():
    w, x = _layer(rows=4, cols=16, seed=4)
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    res = obs_prune(w, h, damping=0.0, method="blocked", block_size=8, nm=(2, 4))
    groups = res.mask.reshape(4, 4, 4).sum(-1)
    assert torch.all(groups == 2)
    assert res.total_loss == pytest.approx(_recon(res.weight, w, x), rel=1e-9)
    with pytest.raises(ConfigError, match="nm"):
        obs_prune(w, h, damping=0.0, method="blocked", block_size=6, nm=(2, 4))


def test_dead_inputs_are_free():
    w, x = _layer(rows=3, cols=6, seed=5)
    x[:, 2] = 0.0  # input 2 never fires
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    sal = obs_saliency(w, h, damping=0.01)
    assert torch.all(sal[:, 2] == 0) and torch.all(sal[:, [0, 1, 3, 4, 5]] > 0)
    res = obs_prune(w, h, 3 / 18, damping=0.01, method="exact")
    assert torch.all(~res.mask[:, 2]) and res.total_loss == pytest.approx(0.0, abs=1e-12)


def test_auto_uses_exact_for_small_layers():
    w, x = _layer(rows=3, cols=6)
    h = reconstruction_hessian(x.T @ x, x.shape[0])
    a = obs_prune(w, h, 0.5, damping=0.0)
    e = obs_prune(w, h, 0.5, damping=0.0, method="exact")
    assert torch.equal(a.mask, e.mask) and torch.allclose(a.weight, e.weight)


def test_conv_layer_with_calibration_hessian():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    rows = layer_input_matrix(conv, x)  # im2col: output = rows @ W.T + b
    out = (rows @ conv.weight.reshape(3, -1).T + conv.bias).reshape(4, 25, 3).permute(0, 2, 1).reshape(4, 3, 5, 5)
    assert torch.allclose(out, conv(x))
    t = Target("", "weight", conv)
    gram, n = layer_input_grams(ScoreContext(conv, calibration=[x[:2], x[2:]]), [t])["weight"]
    assert n == 100 and torch.allclose(gram, rows.T @ rows)
    before = conv(x).detach()
    w0 = conv.weight.detach().clone()
    res = obs_prune_layer_(conv, reconstruction_hessian(gram, n), 0.5, damping=0.0, method="exact")
    assert torch.equal(conv.weight.detach(), res.weight) and res.weight.shape == w0.shape
    # mean over all (sample, position) rows of the squared error summed over output channels
    measured = float(((conv(x).detach() - before) ** 2).sum(1).reshape(-1).mean())
    assert res.total_loss == pytest.approx(measured, rel=1e-8)


def test_obs_scorer_matches_free_function_and_needs_no_loss():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.randn(32, 5)
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(x[:16],), (x[16:],)])
    scorer = OBS(damping=0.05)
    scorer.check_context(ctx)  # no loss_fn needed: the Hessian comes from layer inputs
    s = scorer.score(t, scorer.collect(ctx, [t]), ctx)
    xd = x.double()
    h = 2 * xd.T @ xd / 32
    h += 0.05 * torch.diagonal(h).mean() * torch.eye(5, dtype=torch.float64)
    expected = lin.weight.detach().double() ** 2 / (2 * torch.diagonal(torch.linalg.inv(h)))
    assert torch.allclose(s.double(), expected, rtol=1e-5)
    assert not lin._forward_hooks
    with pytest.raises(ConfigError, match="calibration"):
        scorer.check_context(ScoreContext(lin))
    with pytest.raises(ConfigError, match="damping"):
        OBS(damping=-1)
