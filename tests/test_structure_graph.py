"""Dependency groups from torch.fx: chains, flatten blocks, joins, pass-through modules, and frozen groups."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from prunekit.masks import attach_mask_, finalize_
from prunekit.models import build_model
from prunekit.structure import Group, StructureError, apply_plan_, build_groups, plan_from_masks


def _group_of(groups: list[Group], fqn: str, role: str = "producer") -> Group:
    return next(g for g in groups if any(m.fqn == fqn and m.role == role for m in g.members))


def _roles(g: Group) -> set[tuple[str, str, int]]:
    return {(m.fqn, m.role, m.block) for m in g.members}


def test_conv_flatten_linear_is_a_block_of_spatial_features() -> None:
    groups = build_groups(build_model({"name": "lenet5_caffe"}), torch.randn(1, 1, 28, 28))
    g = _group_of(groups, "features.3")
    assert g.prunable and g.size == 50
    assert _roles(g) == {("features.3", "producer", 1), ("classifier.1", "consumer", 16)}  # 50 x (4 x 4) = 800


def test_conv_bn_chain_and_model_boundaries() -> None:
    groups = build_groups(build_model({"name": "vgg11_bn"}), torch.randn(1, 3, 32, 32))
    g = _group_of(groups, "features.0")
    assert _roles(g) == {("features.0", "producer", 1), ("features.1", "follower", 1), ("features.4", "consumer", 1)}
    assert not _group_of(groups, "classifier").prunable
    assert "model output" in _group_of(groups, "classifier").reasons
    assert any("model input" in r for r in _group_of(groups, "features.0", "consumer").reasons)


def test_option_a_shortcut_freezes_the_stream_with_a_reason() -> None:
    groups = build_groups(build_model({"name": "resnet20"}), torch.randn(1, 3, 32, 32))
    stream = _group_of(groups, "layer1.0.conv2")
    assert not stream.prunable
    assert any("layer2.0.shortcut (ZeroPadShortcut)" in r and "padding" in r for r in stream.reasons)
    inner = _group_of(groups, "layer2.0.conv1")
    assert inner.prunable and {m.fqn for m in inner.members} == {"layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2"}


class _Sep(nn.Module):
    """Conv-BN-ReLU, depthwise conv-BN-ReLU, pointwise conv, global pool, Linear: a depthwise pass-through."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn_dw = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.relu(self.bn_dw(self.dw(x)))
        x = self.pw(x).mean((2, 3))
        out: Tensor = self.fc(x)
        return out


def test_depthwise_conv_passes_its_group_through() -> None:
    m = _Sep().eval()
    x = torch.randn(2, 3, 8, 8)
    g = _group_of(build_groups(m, x), "conv")
    assert _roles(g) == {
        ("conv", "producer", 1),
        ("bn", "follower", 1),
        ("dw", "follower", 1),
        ("bn_dw", "follower", 1),
        ("pw", "consumer", 1),
    }
    # the mean over spatial dims keeps pw's channels, so pw's output units are prunable into fc
    pw = _group_of(build_groups(m, x), "pw")
    assert pw.prunable and _roles(pw) == {("pw", "producer", 1), ("fc", "consumer", 1)}
    # kill 3 channels of conv; zero their bias and the depthwise path's bias so the reference is exact
    keep = torch.ones(8, 3, 3, 3, dtype=torch.bool)
    keep[[1, 4, 6]] = False
    attach_mask_(m.conv, "weight", keep)
    with torch.no_grad():
        for p in (m.conv.bias, m.bn.bias, m.dw.bias, m.bn_dw.bias):
            p[[1, 4, 6]] = 0
    plan = plan_from_masks(m, x)
    finalize_(m)
    slim = apply_plan_(copy.deepcopy(m), plan)
    assert (slim.dw.in_channels, slim.dw.out_channels, slim.dw.groups, slim.pw.in_channels) == (5, 5, 5, 5)
    torch.testing.assert_close(slim(x), m(x))


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.a(torch.relu(self.a(x))) * self.b(x))
        return out


def test_module_called_twice_and_gating_join_into_one_group() -> None:
    groups = build_groups(_Shared(), torch.randn(2, 4))
    g = _group_of(groups, "a")
    assert {("a", "producer"), ("b", "producer"), ("head", "consumer"), ("a", "consumer")} <= {(m.fqn, m.role) for m in g.members}


def test_linear_layernorm_on_last_dim() -> None:
    m = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3))
    g = _group_of(build_groups(m, torch.randn(2, 5, 4)), "0")
    assert _roles(g) == {("0", "producer", 1), ("1", "follower", 1), ("3", "consumer", 1)}


def test_tied_weights_freeze_their_groups() -> None:
    m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 10))
    m[3].weight = m[0].weight
    groups = build_groups(m, torch.randint(0, 10, (2, 3)))
    g = _group_of(groups, "0")
    assert not g.prunable and any("shares a weight with 3" in r for r in g.reasons)


def test_untraceable_model_is_a_clear_error_with_fx_only() -> None:
    with pytest.raises(StructureError, match=r"torch.fx cannot trace CharGPT \(failed in the top-level forward\)"):
        build_groups(build_model({"name": "char_gpt"}), torch.zeros(1, 8, dtype=torch.long), tracer="fx")


class _Branchy(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x if x.sum() > 0 else -x


def test_trace_failure_names_the_submodule() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(_Branchy()))
    with pytest.raises(StructureError, match=r"cannot trace Sequential \(failed in '1.0' \(_Branchy\)\)"):
        build_groups(m, torch.randn(1, 2), tracer="fx")
    # the default falls back to recording one forward pass, which follows the branch taken
    g = _group_of(build_groups(m, torch.randn(1, 2)), "0")
    assert "model output" in g.reasons


class _Inception(nn.Module):
    """Two conv branches concatenated (offsets 0 and 3), BatchNorm over the concatenation, then conv and Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1)
        self.bn = nn.BatchNorm2d(7)
        self.c = nn.Conv2d(7, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4 + 3 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.a(x)
        y = torch.relu(self.bn(torch.cat([a, self.b(x)], 1)))
        z = torch.cat((torch.relu(self.c(y)), a), dim=1).flatten(1)
        out: Tensor = self.fc(z)
        return out


def test_concatenation_maps_offsets() -> None:
    m = _Inception().eval()
    x = torch.randn(2, 2, 4, 4)
    groups = build_groups(m, x)
    ga, gb, gc = (_group_of(groups, n) for n in "abc")
    assert {(mb.fqn, mb.role, mb.block, mb.offset) for mb in ga.members} == {
        ("a", "producer", 1, 0),
        ("bn", "follower", 1, 0),
        ("c", "consumer", 1, 0),
        ("fc", "consumer", 16, 80),
    }
    assert ("bn", "follower", 1, 3) in {(mb.fqn, mb.role, mb.block, mb.offset) for mb in gb.members}
    assert ("fc", "consumer", 16, 0) in {(mb.fqn, mb.role, mb.block, mb.offset) for mb in gc.members}
    # kill a[1], b[0], b[2], c[4]: exact after zeroing their biases and the BatchNorm shift of the removed channels
    dead = {"a": [1], "b": [0, 2], "c": [4]}
    for name, idx in dead.items():
        conv = getattr(m, name)
        keep = torch.ones_like(conv.weight, dtype=torch.bool)
        keep[idx] = False
        attach_mask_(conv, "weight", keep)
        with torch.no_grad():
            conv.bias[idx] = 0
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
        m.bn.bias.uniform_(-1, 1)
        m.bn.bias[[1, 3, 5]] = 0
        m.bn.weight[[1, 3, 5]] = 0
    plan = plan_from_masks(m, x)
    entries = {(e.module, e.axis): e.kept for e in plan.entries}
    assert entries[("bn", "out")] == (0, 2, 4, 6)
    assert entries[("c", "in")] == (0, 2, 4, 6)
    assert len(entries[("fc", "in")]) == 4 * 16 + 2 * 16
    finalize_(m)
    slim = apply_plan_(copy.deepcopy(m), plan)
    assert (slim.bn.num_features, slim.c.out_channels, slim.fc.in_features) == (4, 4, 96)
    torch.testing.assert_close(slim(x), m(x))


def test_groupnorm_removes_only_whole_groups() -> None:
    m = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(2, 2, 4, 4)
    keep = torch.ones_like(m[0].weight, dtype=torch.bool)
    keep[[0, 2, 3]] = False  # channel 0 alone (group {0,1} stays) and the whole group {2,3}
    attach_mask_(m[0], "weight", keep)
    with torch.no_grad():
        m[0].bias[[2, 3]] = 0
        m[1].bias[[2, 3]] = 0
    plan = plan_from_masks(m, x)
    assert {(e.module, e.axis): e.kept for e in plan.entries}[("1", "out")] == (0, 1, 4, 5)
    finalize_(m)
    slim = apply_plan_(copy.deepcopy(m), plan)
    assert (slim[1].num_groups, slim[1].num_channels) == (2, 4)
    torch.testing.assert_close(slim(x), m(x))


def test_unsupported_module_freezes_its_input_group_with_a_reason() -> None:
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ConvTranspose2d(4, 3, 3), nn.Conv2d(3, 2, 1))
    g = _group_of(build_groups(m, torch.randn(1, 2, 6, 6)), "0")
    assert not g.prunable
    assert any("in 1 (ConvTranspose2d)" in r and "conv_transpose2d has no structure rule" in r for r in g.reasons)
