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


def test_flops_of_transformer_encoder_fast_path_are_counted():
    # eval + no_grad would run PyTorch's fused encoder kernel, invisible to FlopCounterMode
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True, dropout=0.0)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    x = torch.randn(1, 5, 8)
    dense, _, _ = count_flops(enc, x)
    # per layer: q, k, v, out projections 4 * 5*8*8, scores and weighted sum 2 * 5*5*8, FFN 2 * 5*8*16 (MACs)
    macs_per_layer = 4 * 5 * 8 * 8 + 2 * 5 * 5 * 8 + 2 * 5 * 8 * 16
    assert dense == 2 * 2 * macs_per_layer
    assert torch.backends.mha.get_fastpath_enabled()  # restored
