"""Data-free unit criteria: L_p / L0 norms of weight groups and FPGM, hand-computed."""

import math

import pytest
import torch
from torch import nn

from prunekit import Channel, ConfigError, Pruner, PruneRecipe, ScoreContext, Target, get_mask
from prunekit.recipe import recipe_from_dict, recipe_to_dict
from prunekit.scoring import FPGM, UnitNorm
from prunekit.scoring.norms import fpgm_distances


def _lin(w):
    lin = nn.Linear(len(w[0]), len(w), bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
    return lin, Target("", "weight", lin)


def test_unit_norms_hand_computed_and_recovered_by_channel():
    lin, t = _lin([[3.0, -4.0], [1.0, 0.0], [0.0, 0.0]])
    ctx = ScoreContext(lin)
    for p, expected in [(2, [5.0, 1.0, 0.0]), (1, [7.0, 1.0, 0.0]), (0, [2.0, 1.0, 0.0]), (math.inf, [4.0, 1.0, 0.0])]:
        s = UnitNorm(p=p).score(t, {}, ctx)
        assert s.shape == lin.weight.shape
        assert torch.allclose(Channel(0).unit_scores(s), torch.tensor(expected))
        assert torch.allclose(s[0], torch.tensor(expected[0] / 2))  # spread evenly over the unit


def test_unit_norm_over_input_channels():
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape(3, 2, 1, 1))
    t = Target("", "weight", conv)
    s = UnitNorm(p=1, dim=1).score(t, {}, ScoreContext(conv))
    assert torch.allclose(Channel(1).unit_scores(s), torch.tensor([1.0 + 3 + 5, 2.0 + 4 + 6]))


def test_fpgm_hand_computed():
    # the centre filter is the geometric median of the other four: sum of distances 8 (redundant);
    # each outer filter: 2 + 4 + 2 * sqrt(8)
    lin, t = _lin([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0], [-2.0, 0.0], [0.0, -2.0]])
    d = fpgm_distances(lin.weight)
    assert torch.allclose(d, torch.tensor([6 + 2 * math.sqrt(8)] * 2 + [8.0] + [6 + 2 * math.sqrt(8)] * 2))
    units = Channel(0).unit_scores(FPGM().score(t, {}, ScoreContext(lin)))
    assert int(units.argmin()) == 2
    # a much larger filter far from the rest is kept, exactly as its norm would; a small one near the median goes
    lin2, t2 = _lin([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.1, 0.1], [30.0, 30.0]])
    units2 = Channel(0).unit_scores(FPGM().score(t2, {}, ScoreContext(lin2)))
    assert int(units2.argmin()) == 3 and int(units2.argmax()) == 4


def test_config_errors():
    with pytest.raises(ConfigError, match=r"scorer\.p"):
        UnitNorm(p=-1)
    with pytest.raises(ConfigError, match=r"scorer\.dim"):
        UnitNorm(dim=-1)
    with pytest.raises(ConfigError, match=r"scorer\.p"):
        FPGM(p=0.5)


def test_l0_through_a_recipe_prunes_the_emptiest_units():
    lin, _ = _lin([[1.0, 1.0, 1.0], [0.0, 0.0, 9.0], [1.0, 1.0, 0.0], [5.0, 0.0, 0.0]])
    recipe = recipe_from_dict({"sparsity": 0.5, "pattern": "channel", "scorer": {"name": "unit_norm", "p": 0}})
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe
    Pruner(recipe).attach(nn.Sequential(lin)).prune_()
    # non-zero counts 3, 1, 2, 1: the two single-weight units go (magnitude would keep the 9 and the 5)
    assert get_mask(lin).all(1).tolist() == [True, False, True, False]


def test_fpgm_in_a_pruner_with_channel_pattern():
    lin, _ = _lin([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0], [-2.0, 0.0], [0.0, -2.0], [0.1, 0.0]])
    Pruner(PruneRecipe(sparsity=2 / 6, pattern=Channel(0), scorer=FPGM())).attach(nn.Sequential(lin)).prune_()
    assert get_mask(lin).all(1).tolist() == [True, True, False, True, True, False]
