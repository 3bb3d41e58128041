"""Planted units: every criterion ranks them as its theory says, and the tests record where each is fooled.

The network is Linear(4, 6) - ReLU - Linear(6, 3), trained against its own output plus noise (MSE), with six
hidden units:

    u0, u1  ordinary units
    u2      dead: bias -100, so its ReLU never fires; its fan-in weights are 3x larger than usual
    u3      an exact duplicate of u0 (same fan-in weights and bias)
    u4      large but irrelevant: fan-in weights x50, fan-out weights x1e-4
    u5      feeds nothing: its fan-out column is zero; bias 2, so it is almost always active

Removing u2 or u5 costs exactly nothing and u4 almost nothing; u0, u1, u3 cost a lot (the measured loss
increase of zeroing each unit's fan-out is checked below).
"""

import dataclasses

import pytest
import torch
from torch import nn

from prunekit import SCORERS, Channel, Pruner, PruneRecipe, ScoreContext, Target, get_mask
from prunekit.recipe import recipe_from_dict, recipe_to_dict
from prunekit.scoring import OBS

DEAD, DUP, LARGE, NOWHERE = 2, 3, 4, 5
CHEAP = {DEAD, NOWHERE, LARGE}  # the three cheapest units by measured loss change


def _planted():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        w1, b1, w2 = torch.randn(6, 4, generator=g), torch.full((6,), 0.5), torch.randn(3, 6, generator=g)
        w1[DUP], b1[DUP] = w1[0], b1[0]
        w1[DEAD] *= 3
        b1[DEAD] = -100.0
        w1[LARGE] *= 50
        b1[LARGE] = 0.0
        w2[:, LARGE] *= 1e-4
        w2[:, NOWHERE] = 0.0
        b1[NOWHERE] = 2.0
        net[0].weight.copy_(w1)
        net[0].bias.copy_(b1)
        net[2].weight.copy_(w2)
        net[2].bias.zero_()
    x = torch.randn(128, 4, generator=g)
    with torch.no_grad():
        y = net(x) + 0.5 * torch.randn(128, 3, generator=g)
    return net, x, y


def _mse(m, b):
    return ((m(b[0]) - b[1]) ** 2).mean()


@pytest.fixture(scope="module")
def planted():
    net, x, y = _planted()
    ctx = ScoreContext(net, calibration=[(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)], loss_fn=_mse)
    return net, x, y, ctx


def _units(name, planted, **kw):
    net, _, _, ctx = planted
    t = Target("0", "weight", net[0])
    scorer = SCORERS.get(name)(**kw)
    stats = scorer.collect(ctx, [t])
    return Channel(0).unit_scores(scorer.score(t, stats, ctx))


def _lowest(u, k):
    return set(torch.argsort(u, stable=True)[:k].tolist())


def test_measured_cost_of_removing_each_unit(planted):
    net, x, y, _ = planted
    costs = []
    with torch.no_grad():
        base = float(_mse(net, (x, y)))
        for k in range(6):
            saved = net[2].weight[:, k].clone()
            net[2].weight[:, k] = 0.0
            costs.append(float(_mse(net, (x, y))) - base)
            net[2].weight[:, k] = saved
    assert costs[DEAD] == 0.0 and costs[NOWHERE] == 0.0 and abs(costs[LARGE]) < 1e-3
    assert min(costs[0], costs[1], costs[DUP]) > 1.0
    assert _lowest(torch.tensor(costs), 3) == CHEAP


LOSS_AWARE = [
    ("taylor", {}),
    ("taylor", {"group": "unit"}),
    ("taylor", {"order": 2, "group": "unit"}),
    ("taylor_activation", {}),
    ("taylor_activation", {"formulation": "squared"}),
    ("taylor_activation", {"formulation": "squared", "order": 2}),
    ("obd", {"hessian": "exact"}),
    ("obd", {"hessian": "fisher"}),
    ("obd", {"hessian": "hutchinson", "probes": 8}),
]


@pytest.mark.parametrize(("name", "kw"), LOSS_AWARE)
def test_loss_aware_criteria_find_the_cheap_units(planted, name, kw):
    """Gradients through a dead ReLU or a zero fan-out are exactly 0, so Taylor and OBD score those units 0, and
    the tiny fan-out of the large unit makes it cheap too: their three lowest units are the three cheapest.
    They are *not* redundancy-aware: u0 and its duplicate u3 both look essential, although either one could be
    removed and folded into the other at no cost."""
    u = _units(name, planted, **kw)
    assert float(u[DEAD]) == 0.0 and float(u[NOWHERE]) == 0.0
    assert float(u[LARGE]) < min(float(u[0]), float(u[1]), float(u[DUP]))
    assert _lowest(u, 3) == CHEAP
    assert min(float(u[0]), float(u[DUP])) > float(u[LARGE])  # fooled by the duplicate: both kept


@pytest.mark.parametrize("name", ["magnitude", "unit_norm", "fpgm"])
def test_weight_criteria_are_fooled_by_large_irrelevant_and_dead_units(planted, name):
    """Data-free criteria see only fan-in weights: the large irrelevant unit ranks first, the dead unit (large fan-in
    weights) and the unit that feeds nothing (ordinary fan-in) are kept."""
    u = _units(name, planted)
    assert int(u.argmax()) == LARGE
    assert not ({DEAD, NOWHERE} & _lowest(u, 2))


@pytest.mark.parametrize("name", ["apoz", "near_zero", "activation_mean", "activation_variance", "activation_entropy"])
def test_activation_criteria_find_dead_units_but_not_units_feeding_nothing(planted, name):
    """Activation statistics catch the dead unit (all zeros: APoZ 1, mean/variance/entropy 0) but
    cannot see that u5's output is thrown away (it is active and varied); the magnitude-like ones also favour the
    large unit."""
    u = _units(name, planted)
    assert int(u.argmin()) == DEAD and float(u[DEAD]) == 0.0
    assert NOWHERE not in _lowest(u, 2)
    if name in ("activation_mean", "activation_variance"):
        assert int(u.argmax()) == LARGE


def test_lda_prefers_a_small_discriminative_unit_to_a_large_indifferent_one():
    """Labels are the sign of x0. u0 = relu(x0) separates the classes; u1 = relu(100 x1) is large but indifferent
    to the class; u2 is dead. LDA ranks u0 > u1 > u2 = 0, where magnitude would rank u1 first."""
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 100.0], [1.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.0, 0.0, -100.0]))
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    t = Target("", "weight", lin)
    ctx = ScoreContext(lin, calibration=[(x[:128], y[:128]), (x[128:], y[128:])])
    scorer = SCORERS.get("lda")()
    u = Channel(0).unit_scores(scorer.score(t, scorer.collect(ctx, [t]), ctx))
    assert float(u[0]) > 10 * float(u[1]) and float(u[2]) == 0.0
    assert int(Channel(0).unit_scores(SCORERS.get("magnitude")().score(t, {}, ctx)).argmax()) == 1


def test_correlation_finds_dead_and_duplicate_units(planted):
    """A constant (dead) unit is redundant outright and goes first; then one of the exact duplicates (|rho| = 1).
    Fooled by the unit that feeds nothing, which is uncorrelated with the others."""
    u = _units("activation_correlation", planted)
    assert torch.argsort(u, stable=True)[:2].tolist() == [DEAD, DUP]
    assert float(u[DUP]) == pytest.approx(0.0, abs=1e-6)
    assert NOWHERE not in _lowest(u, 3)


def test_weight_cosine_finds_the_duplicate_but_is_fooled_by_the_dead_unit(planted):
    """Parallel fan-in vectors are caught (u3 first), but the dead unit's weights are unique, so it looks essential."""
    u = _units("weight_cosine", planted)
    assert int(u.argmin()) == DUP and float(u[DUP]) == pytest.approx(0.0, abs=1e-6)
    assert DEAD not in _lowest(u, 2)


def test_obs_on_the_next_layer_sees_dead_inputs_and_duplicates(planted):
    """Layer-wise OBS on Linear(6, 3), per input column: the dead unit's column has H_qq = 0 (free) and the zero
    fan-out of u5 costs nothing; each duplicate's column is almost free on its own (its partner compensates), the
    classic limit of single-weight saliency: the sequential OBS update handles removing several at once."""
    net, _, _, ctx = planted
    t = Target("2", "weight", net[2])
    scorer = OBS(damping=1e-6)
    cols = Channel(1).unit_scores(scorer.score(t, scorer.collect(ctx, [t]), ctx))
    assert float(cols[DEAD]) == 0.0 and float(cols[NOWHERE]) == 0.0
    assert max(float(cols[0]), float(cols[DUP])) < 0.05 * float(cols[1])


def test_pruner_with_channel_pattern_removes_the_cheap_units(planted):
    ctx = planted[3]
    for scorer, expect_cheap in [({"name": "taylor", "group": "unit"}, True), ({"name": "magnitude"}, False)]:
        model = _planted()[0]
        recipe = recipe_from_dict({"sparsity": 0.5, "pattern": "channel", "scorer": scorer, "targets": {"include": ["0"]}})
        c = dataclasses.replace(ctx, model=model)
        Pruner(recipe).attach(model).prune_(c)
        pruned = set(torch.nonzero(~get_mask(model[0]).all(1)).flatten().tolist())
        assert (pruned == CHEAP) == expect_cheap


@pytest.mark.parametrize("name", SCORERS.names())
def test_every_scorer_round_trips_through_a_recipe(name):
    recipe = PruneRecipe(sparsity=0.5, pattern=Channel(0), scorer=SCORERS.get(name)())
    back = recipe_from_dict(recipe_to_dict(recipe))
    assert back.scorer == recipe.scorer and type(back.scorer) is type(recipe.scorer)
    assert back.scorer.__doc__ and back.scorer.requires <= {"weights", "gradients", "activations", "hessian", "labels"}


def test_cli_lists_the_criteria_and_prunes_with_a_data_free_one(tmp_path, capsys):
    from prunekit.checkpoint import save_checkpoint
    from prunekit.cli.main import main
    from prunekit.models import build_model

    assert main(["list", "scorers"]) == 0
    out = capsys.readouterr().out
    for name in ("unit_norm", "fpgm", "taylor", "obd", "obs", "apoz", "activation_correlation", "weight_cosine", "lda"):
        assert name in out
    spec = {"name": "mlp", "kwargs": {"in_features": 8, "hidden": [6], "num_classes": 3}}
    src = save_checkpoint(tmp_path / "in", build_model(spec), model_spec=spec, extra={"input_shape": [1, 8]})
    args = ["prune", "--model", str(src), "--pattern", "channel", "--sparsity", "0.5"]
    assert main([*args, "--scorer", "{name: fpgm}", "--out", str(tmp_path / "a")]) == 0
    # data-driven criteria need calibration data, which the prune command cannot pass yet: a clear error
    assert main([*args, "--scorer", "apoz", "--out", str(tmp_path / "b")]) == 2
    assert "calibration" in capsys.readouterr().err
