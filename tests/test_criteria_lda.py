"""Class-discriminative LDA criterion: per-unit Fisher discriminant ratio, hand-computed; label sources."""

import pytest
import torch
from torch import nn

from prunekit import Channel, ConfigError, ScoreContext, Target
from prunekit.scoring import LDA

# identity layer (no nonlinearity): unit k's response is x_k. Labels: 0, 0, 1, 1.
X = torch.tensor([[0.0, 1.0, 2.0], [1.0, 3.0, 2.0], [4.0, 1.0, 2.0], [5.0, 3.0, 2.0]])
Y = torch.tensor([0, 0, 1, 1])


def _identity():
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3))
    return lin, Target("", "weight", lin)


def _units(scorer, lin, t, ctx):
    return Channel(0).unit_scores(scorer.score(t, scorer.collect(ctx, [t]), ctx))


def test_fisher_ratio_hand_computed():
    lin, t = _identity()
    ctx = ScoreContext(lin, calibration=[(X[:2], Y[:2]), (X[2:], Y[2:])])
    units = _units(LDA(nonlinearity="none", eps=1e-8), lin, t, ctx)
    # unit 0: class means 0.5, 4.5, overall 2.5 -> S_B = 4; S_W = mean of 0.25 = 0.25 -> 16
    # unit 1: class means 2, 2 -> S_B = 0 -> 0; unit 2: constant -> 0
    assert torch.allclose(units, torch.tensor([16.0, 0.0, 0.0]), rtol=1e-6)


def test_one_hot_labels_and_dict_batches():
    lin, t = _identity()
    onehot = torch.nn.functional.one_hot(Y, 2).float()
    a = _units(LDA(nonlinearity="none"), lin, t, ScoreContext(lin, calibration=[(X, onehot)]))
    assert torch.allclose(a, torch.tensor([16.0, 0.0, 0.0]), rtol=1e-6)


def test_label_sources():
    lin, t = _identity()
    unlabelled = ScoreContext(lin, calibration=[(X,)])
    with pytest.raises(ConfigError, match="labels"):
        LDA(labels="batch").collect(unlabelled, [t])
    with pytest.warns(UserWarning, match="predicted"):
        auto = _units(LDA(nonlinearity="none"), lin, t, unlabelled)
    # predicted class = argmax of the identity output: rows -> 2, 1, 0, 0
    pred = _units(LDA(labels="predicted", nonlinearity="none"), lin, t, unlabelled)
    assert torch.allclose(auto, pred)
    y = torch.tensor([2, 1, 0, 0])
    manual = _units(LDA(nonlinearity="none"), lin, t, ScoreContext(lin, calibration=[(X, y)]))
    assert torch.allclose(pred, manual)
    # "predicted" ignores labels in the batch
    labelled = ScoreContext(lin, calibration=[(X, Y)])
    assert torch.allclose(_units(LDA(labels="predicted", nonlinearity="none"), lin, t, labelled), pred)


def test_lda_errors():
    with pytest.raises(ConfigError, match=r"scorer\.labels"):
        LDA(labels="gold")
    with pytest.raises(ConfigError, match=r"scorer\.eps"):
        LDA(eps=0)
    lin, t = _identity()
    with pytest.raises(ConfigError, match="labels"):
        LDA().collect(ScoreContext(lin, calibration=[(X, Y[:3])]), [t])
