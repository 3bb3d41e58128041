"""Per-type handlers: each removal equals selecting the same outputs (or feeding only the kept inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.structure.handlers import HANDLERS, StructureError, handler_for

KEPT = torch.tensor([0, 2, 3])


def test_linear_out_and_in() -> None:
    lin = nn.Linear(5, 4)
    x = torch.randn(3, 5)
    ref = lin(x)
    h = handler_for(lin)
    h.prune_out(lin, KEPT)
    assert (lin.out_features, lin.weight.shape, lin.bias.shape) == (3, (3, 5), (3,))
    torch.testing.assert_close(lin(x), ref[:, KEPT])
    # inputs 1 and 4 are zero: dropping them changes nothing
    x[:, [1, 4]] = 0
    ref = lin(x)
    h.prune_in(lin, KEPT)
    assert lin.in_features == 3 and lin.weight.shape == (3, 3)
    torch.testing.assert_close(lin(x[:, KEPT]), ref)


def test_linear_parameters_stay_trainable_parameters() -> None:
    lin = nn.Linear(5, 4)
    handler_for(lin).prune_out(lin, KEPT)
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.requires_grad
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]


def test_conv_out_and_in() -> None:
    conv = nn.Conv2d(4, 5, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    ref = conv(x)
    handler_for(conv).prune_out(conv, KEPT)
    assert conv.out_channels == 3 and conv.weight.shape == (3, 4, 3, 3)
    torch.testing.assert_close(conv(x), ref[:, KEPT])
    x[:, 1] = 0
    ref = conv(x)
    handler_for(conv).prune_in(conv, KEPT)
    assert conv.in_channels == 3
    torch.testing.assert_close(conv(x[:, KEPT]), ref)


def test_depthwise_conv_keeps_groups_consistent() -> None:
    conv = nn.Conv1d(4, 4, 3, groups=4)
    x = torch.randn(2, 4, 7)
    ref = conv(x)
    h = handler_for(conv)
    assert h.passthrough(conv)
    h.prune_out(conv, KEPT)
    assert (conv.in_channels, conv.out_channels, conv.groups) == (3, 3, 3)
    torch.testing.assert_close(conv(x[:, KEPT]), ref[:, KEPT])


def test_grouped_conv_balanced_removal_and_refusal() -> None:
    conv = nn.Conv2d(4, 4, 1, groups=2)  # groups: in/out channels {0,1} and {2,3}
    x = torch.randn(1, 4, 2, 2)
    x[:, [1, 3]] = 0
    ref = conv(x)
    h = handler_for(conv)
    assert not h.passthrough(conv)
    h.prune_in(conv, torch.tensor([0, 2]))
    assert conv.in_channels == 2 and conv.weight.shape == (4, 1, 1, 1)
    torch.testing.assert_close(conv(x[:, [0, 2]]), ref)
    with pytest.raises(StructureError, match="same number per group"):
        h.prune_out(conv, torch.tensor([0, 1, 2]))


def test_batchnorm_selects_affine_and_running_stats() -> None:
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
    bn.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
    nn.init.normal_(bn.weight)
    x = torch.randn(2, 4, 3, 3)
    ref = bn(x)
    handler_for(bn).prune_out(bn, KEPT)
    assert bn.num_features == 3 and bn.running_var.shape == (3,)  # type: ignore[union-attr]
    torch.testing.assert_close(bn(x[:, KEPT]), ref[:, KEPT])


def test_layernorm_updates_normalized_shape() -> None:
    ln = nn.LayerNorm(4)
    handler_for(ln).prune_out(ln, KEPT)
    assert ln.normalized_shape == (3,) and ln.weight.shape == (3,)
    assert ln(torch.randn(2, 3)).shape == (2, 3)
    ln2 = nn.LayerNorm((2, 4))
    with pytest.raises(StructureError, match="one normalised dimension"):
        handler_for(ln2).prune_out(ln2, KEPT)


def test_groupnorm_whole_groups_only() -> None:
    gn = nn.GroupNorm(3, 6)  # groups {0,1} {2,3} {4,5}
    nn.init.normal_(gn.weight)
    x = torch.randn(2, 6, 3)
    ref = gn(x)
    kept = torch.tensor([0, 1, 4, 5])
    handler_for(gn).prune_out(gn, kept)
    assert (gn.num_groups, gn.num_channels) == (2, 4)
    torch.testing.assert_close(gn(x[:, kept]), ref[:, kept])  # whole groups: exact
    with pytest.raises(StructureError, match=r"whole groups of 2; groups \[0\] would be split"):
        handler_for(gn).prune_out(gn, torch.tensor([0, 2, 3]))


def test_embedding_dims_and_rows() -> None:
    emb = nn.Embedding(6, 4, padding_idx=3)
    idx = torch.tensor([[0, 3, 5]])
    ref = emb(idx)
    h = handler_for(emb)
    h.prune_out(emb, KEPT)
    assert emb.embedding_dim == 3
    torch.testing.assert_close(emb(idx), ref[..., KEPT])
    h.prune_in(emb, torch.tensor([0, 3, 5]))
    assert (emb.num_embeddings, emb.padding_idx) == (3, 1)
    torch.testing.assert_close(emb(torch.tensor([[0, 1, 2]])), ref[..., KEPT])
    with pytest.raises(StructureError, match="padding_idx 1 would be removed"):
        h.prune_in(emb, torch.tensor([0, 2]))


def test_unknown_module_type_is_named() -> None:
    m = nn.Sequential(nn.ConvTranspose2d(2, 2, 3))
    with pytest.raises(StructureError, match=r"module '0' of type ConvTranspose2d has no structure handler"):
        handler_for(m[0], "0")


def test_registry_is_keyed_by_class_name() -> None:
    assert {"Linear", "Conv1d", "Conv2d", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "Embedding"} <= set(
        HANDLERS.names()
    )
