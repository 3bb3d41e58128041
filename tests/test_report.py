import torch
from torch import nn

from prunekit import Pruner, PruneRecipe, sparsity_report
from prunekit.report import count_flops


def test_hand_computed_flops_and_sizes():
    m = nn.Sequential(nn.Linear(10, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    Pruner(PruneRecipe(sparsity=0.75, overrides={"2": 0.5})).attach(m).prune_()
    dense, eff, per = count_flops(m, torch.randn(3, 10))
    # linear FLOPs = 2 * batch * in * out
    assert dense == 2 * 3 * 10 * 4 + 2 * 3 * 4 * 2
    assert per["0.weight"] == (240, 60) and per["2.weight"] == (48, 24)
    assert eff == 84
    rep = sparsity_report(m, torch.randn(3, 10))
    assert rep.total_params == 48 and rep.total_nonzero == 10 + 4
    assert rep.dense_bytes == 48 * 4
    assert rep.compressed_bytes == 14 * 4 + 5 + 1  # kept values + ceil(40/8) + ceil(8/8) bitmap bytes
    assert [round(s.sparsity, 2) for s in rep.layers] == [0.75, 0.5]
    assert "| 0.weight | 4x10 | 40 | 10 | 75.00% |" in rep.to_markdown()


def test_report_of_unmasked_model_counts_zeros():
    m = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        m.weight[:2] = 0
    rep = sparsity_report(m)
    assert rep.sparsity == 0.5 and rep.masked_params == 0 and rep.dense_flops is None
