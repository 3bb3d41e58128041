import pytest
import torch
from torch import nn

from prunekit import ConfigError, Magnitude, RandomScore, ScoreContext, Target
from prunekit.scoring.hooks import accumulate_gradients, forward_hooks, input_sq_norms


def _target():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.0, 4.0]]))
    return lin, Target("fc", "weight", lin)


def test_magnitude_hand_computed():
    lin, t = _target()
    ctx = ScoreContext(lin)
    assert Magnitude().score(t, {}, ctx).tolist() == [[1.0, 2.0, 3.0], [0.5, 0.0, 4.0]]
    assert Magnitude(p=2).score(t, {}, ctx).tolist() == [[1.0, 4.0, 9.0], [0.25, 0.0, 16.0]]
    with pytest.raises(ConfigError, match=r"scorer\.p"):
        Magnitude(p=0)


def test_random_is_reproducible_per_seed_step_and_tensor():
    lin, t = _target()
    a = RandomScore(seed=1).score(t, {}, ScoreContext(lin, step=5))
    assert torch.equal(a, RandomScore(seed=1).score(t, {}, ScoreContext(lin, step=5)))
    assert not torch.equal(a, RandomScore(seed=1).score(t, {}, ScoreContext(lin, step=6)))
    assert not torch.equal(a, RandomScore(seed=2).score(t, {}, ScoreContext(lin, step=5)))


def test_forward_hooks_are_scoped():
    lin, _ = _target()
    seen = []
    with forward_hooks({"fc": lin}, lambda n, m, i, o: seen.append(n)):
        lin(torch.ones(1, 3))
    lin(torch.ones(1, 3))
    assert seen == ["fc"] and not lin._forward_hooks


def test_input_sq_norms_hand_computed():
    # Wanda-style statistic ||X_j||_2^2 over all tokens: torchao's test inputs [100, 10, 1, 0.1].
    lin = nn.Linear(4, 1)
    t = Target("", "weight", lin)
    x = torch.tensor([[100.0, 10.0, 1.0, 0.1]])
    ctx = ScoreContext(lin, calibration=[(x,), (x,)])
    norms = input_sq_norms(ctx, [t])["weight"]
    assert torch.allclose(norms, 2 * x[0] ** 2)
    assert not lin._forward_hooks


def test_accumulate_gradients_restores_existing_grads():
    lin, t = _target()
    lin.weight.grad = torch.full_like(lin.weight, 7.0)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    ctx = ScoreContext(lin, calibration=[x, x], loss_fn=lambda m, b: m(b).sum())
    g = accumulate_gradients(ctx, [t])["fc.weight"]
    assert torch.allclose(g, 2 * x.expand(2, 3))  # d(sum(Wx+b))/dW = x for each output row, two batches
    assert lin.weight.grad.eq(7.0).all()


def test_data_scorers_must_get_data():
    class NeedsActs(RandomScore):
        requires = frozenset({"weights", "activations"})

    with pytest.raises(ConfigError, match="calibration"):
        NeedsActs().check_context(ScoreContext(nn.Linear(2, 2)))
