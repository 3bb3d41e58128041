"""Raw parameters and buffers in channel groups: layer scales, class tokens, position embeddings, conv scales.

A parameter used outside any handled module that meets a channel-carrying value element-wise (or is concatenated
with it along another dim) becomes a ``param`` member of the group and is sliced with it; a plan names it by its
path and slices the last dim of the entry's size. Exactness: the reference zeroes the removed units' slices of
every producer, follower and parameter (:func:`prunekit.testing.structure.zero_removed_units`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit.masks import attach_mask_, finalize_
from prunekit.structure import Group, PlanEntry, PlanError, PrunePlan, apply_plan_, build_groups, plan_from_masks
from prunekit.structure._units import UnitMap
from prunekit.structure.folding import fold_removed_
from prunekit.structure.graph import Tracing
from prunekit.structure.handlers import tensor_dim
from prunekit.structure.importance import StructuredConfig, structured_plan
from prunekit.testing.structure import assert_replays, halve_exactly

TRACERS: tuple[Tracing, ...] = ("fx", "record")


# -- models ----------------------------------------------------------------------------------------------------


class LayerScaleBlock(nn.Module):
    """Channels-last residual MLP block with a layer scale: ``x + gamma * fc2(gelu(fc1(x)))``, x (N, H, W, C)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.gamma * self.fc2(F.gelu(self.fc1(x)))
        return out


class LayerScaleNet(nn.Module):
    """Conv stem (N, 3, H, W) -> (N, H, W, C) -> two layer-scale blocks -> spatial mean -> head (N, 5)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList([LayerScaleBlock(c) for _ in range(2)])
        self.head = nn.Linear(c, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x).permute(0, 2, 3, 1)
        for b in self.blocks:
            h = b(h)
        out: Tensor = self.head(h.mean((1, 2)))
        return out


class TinyViT(nn.Module):
    """Patches (N, P, 12) -> Linear -> class token (1, 1, D) concatenated on the sequence dim -> + position
    embeddings (1, P + 1, D) -> two residual MLP blocks (no LayerNorm) -> head on the class token (N, 3)."""

    def __init__(self, d: int = 16, patches: int = 6) -> None:
        super().__init__()
        self.patch = nn.Linear(12, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, patches + 1, d))
        self.fc1 = nn.ModuleList([nn.Linear(d, 24) for _ in range(2)])
        self.fc2 = nn.ModuleList([nn.Linear(24, d) for _ in range(2)])
        self.head = nn.Linear(d, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch(x)
        h = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), h), dim=1) + self.pos
        for fc1, fc2 in zip(self.fc1, self.fc2):
            h = h + fc2(torch.relu(fc1(h)))
        out: Tensor = self.head(h[:, 0])
        return out


class ScaledConvNet(nn.Module):
    """conv1 -> ``relu(h * scale + shift)`` with a parameter scale and a buffer shift, both (C, 1, 1) -> conv2 ->
    mean -> head. Convs without padding, so constant units fold exactly."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3)
        self.scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.register_buffer("shift", torch.rand(c, 1, 1))
        self.conv2 = nn.Conv2d(c, 6, 3)
        self.head = nn.Linear(6, 4)
        assert self.conv1.bias is not None
        with torch.no_grad():
            self.conv1.bias.uniform_(0.1, 1.0)  # dead filters emit a non-zero constant: folding is needed

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1(x) * self.scale + self.shift)
        out: Tensor = self.head(self.conv2(h).mean((2, 3)))
        return out


class SquareWeightNet(nn.Module):
    """``conv(x) * w`` with x (N, 4, C) giving (N, C, C) channels on dim 1 and w (C, C): w couples its dim 0, but
    a plan of C units would slice its last dim of size C (dim 1)."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, c, 1)
        self.w = nn.Parameter(torch.randn(c, c))
        self.out = nn.Conv1d(c, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.out(self.conv(x) * self.w)
        return out


class ScaleReadElsewhere(nn.Module):
    """A layer scale that is also summed into the output: slicing it would change that sum."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, c)
        self.gamma = nn.Parameter(torch.rand(c))
        self.fc2 = nn.Linear(c, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.gamma * self.fc1(x)) + self.gamma.sum()
        return out


# -- helpers ---------------------------------------------------------------------------------------------------


def _group_of(groups: list[Group], producer: str) -> tuple[int, Group]:
    return next((i, g) for i, g in enumerate(groups) if any(m.fqn == producer and m.role == "producer" for m in g.members))


def _params(g: Group) -> dict[str, int | None]:
    return {m.fqn: m.dim for m in g.params}


# -- the plan rule ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "size", "dim"),
    [((8,), 8, 0), ((1, 1, 8), 8, 2), ((1, 7, 8), 8, 2), ((8, 1, 1), 8, 0), ((6, 6), 6, 1), ((1, 8, 8), 8, 2), ((4,), 5, None)],
)
def test_tensor_dim_is_the_last_dim_of_that_size(shape: tuple[int, ...], size: int, dim: int | None) -> None:
    assert tensor_dim(shape, size) == dim


# -- (a) layer scale -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tracer", TRACERS)
def test_layer_scale_is_sliced_with_the_residual_stream(tracer: Tracing) -> None:
    model = LayerScaleNet()
    x = torch.randn(2, 3, 6, 6)
    groups, plan, slim = halve_exactly(model, x, tracer)
    _, stream = _group_of(groups, "stem")
    assert stream.prunable and stream.size == 8
    assert _params(stream) == {"blocks.0.gamma": 0, "blocks.1.gamma": 0}
    assert all(m.role == "param" and m.axis == "out" and m.block == 1 and m.offset == 0 for m in stream.params)
    entries = {e.module: e for e in plan.entries}
    assert entries["blocks.0.gamma"].axis == "out" and entries["blocks.0.gamma"].size == 8
    gamma = slim.get_parameter("blocks.0.gamma")
    assert gamma.shape == (4,) and isinstance(gamma, nn.Parameter)
    assert ("blocks.1.gamma", (8,), (4,)) in plan.tensor_view(model)
    assert_replays(lambda: copy.deepcopy(model), slim, plan, x)


def test_layer_scale_group_is_scored_by_its_modules_and_planned() -> None:
    model = LayerScaleNet().eval()
    x = torch.randn(2, 3, 6, 6)
    plan = structured_plan(model, x, StructuredConfig(ratio=0.5))
    kept = {e.module: len(e.kept) for e in plan.entries}
    assert kept["stem"] == kept["blocks.0.gamma"] == kept["blocks.1.gamma"] == 4
    slim = apply_plan_(copy.deepcopy(model), plan)
    assert slim(x).shape == (2, 5)


# -- (b) class token and position embeddings -------------------------------------------------------------------


@pytest.mark.parametrize("tracer", TRACERS)
def test_class_token_and_position_embeddings_join_the_stream(tracer: Tracing) -> None:
    model = TinyViT()
    x = torch.randn(2, 6, 12)
    groups, plan, slim = halve_exactly(model, x, tracer)
    _, stream = _group_of(groups, "patch")
    assert stream.prunable and stream.size == 16
    assert _params(stream) == {"cls_token": 2, "pos": 2}
    assert {m.fqn for m in stream.producers} == {"patch", "fc2.0", "fc2.1"}
    assert (slim.get_parameter("cls_token").shape, slim.get_parameter("pos").shape) == ((1, 1, 8), (1, 7, 8))
    assert_replays(lambda: copy.deepcopy(model), slim, plan, x)


def test_position_dependent_parameters_give_no_constant_units() -> None:
    """Folding keeps a stream unit whose producers are all dead: the position embeddings make it vary."""
    model = TinyViT().eval()
    x = torch.randn(4, 6, 12)
    groups = build_groups(model, x)
    gi, _ = _group_of(groups, "patch")
    umap = UnitMap(model, groups)
    assert umap.position_dependent_tensors(gi) == ["pos (1, 7, 16)"]
    assert all(m.role != "param" for m in umap.groups[gi].members)
    for fc in (model.patch, *model.fc2):
        keep = torch.ones_like(fc.weight, dtype=torch.bool)
        keep[3] = False
        attach_mask_(fc, "weight", keep)
    plan = plan_from_masks(model, x)
    assert {e.module for e in plan.entries} >= {"cls_token", "pos", "patch"}
    folded, report = fold_removed_(model, plan, x)
    assert [k.unit for k in report.kept] == [3] and report.removed == 0
    assert not any(e.removed for e in folded.entries)


# -- (c) a (C, 1, 1) conv scale and a buffer ---------------------------------------------------------------------


@pytest.mark.parametrize("tracer", TRACERS)
def test_conv_scale_parameter_and_buffer_are_sliced(tracer: Tracing) -> None:
    model = ScaledConvNet()
    x = torch.randn(2, 3, 9, 9)
    groups, plan, slim = halve_exactly(model, x, tracer)
    _, g = _group_of(groups, "conv1")
    assert g.prunable and _params(g) == {"scale": 0, "shift": 0}
    assert slim.get_parameter("scale").shape == (4, 1, 1) and slim.get_buffer("shift").shape == (4, 1, 1)
    assert "shift" in dict(slim.named_buffers())
    assert_replays(lambda: copy.deepcopy(model), slim, plan, x)


class ViewedScale(nn.Module):
    """The scale reaches the product through views and reads that touch no entry (dtype, shape)."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 1)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.conv2 = nn.Conv2d(c, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(x).type_as(self.gamma)
        g = self.gamma.type_as(h).exp()[None, :, None, None].expand_as(h)
        out: Tensor = self.conv2(h * g.reshape(h.shape[0], self.gamma.shape[0], h.shape[2], -1))
        return out


@pytest.mark.parametrize("tracer", TRACERS)
def test_parameter_reaches_the_product_through_views(tracer: Tracing) -> None:
    model = ViewedScale()
    x = torch.randn(2, 3, 4, 4)
    groups, plan, slim = halve_exactly(model, x, tracer)
    _, g = _group_of(groups, "conv1")
    assert g.prunable and _params(g) == {"gamma": 0}, g.reasons
    assert_replays(lambda: copy.deepcopy(model), slim, plan, x)


def test_dead_filters_before_a_per_channel_scale_fold_exactly() -> None:
    model = ScaledConvNet().eval()
    x = torch.randn(4, 3, 9, 9)
    keep = torch.ones_like(model.conv1.weight, dtype=torch.bool)
    keep[[2, 5]] = False
    attach_mask_(model.conv1, "weight", keep)
    with torch.no_grad():
        ref = model(x)
    plan, report = fold_removed_(model, plan_from_masks(model, x), x)
    assert not report.kept and report.removed == 2 and report.folded == 2
    assert {e.module: e.kept for e in plan.entries}["scale"] == (0, 1, 3, 4, 6, 7)
    finalize_(model)
    slim = apply_plan_(copy.deepcopy(model), plan)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), ref, rtol=0, atol=1e-5)


# -- (d) tensors that cannot be mapped stay frozen ----------------------------------------------------------------


def test_parameter_coupled_on_another_dim_than_the_plan_rule_freezes() -> None:
    groups = build_groups(SquareWeightNet(), torch.randn(2, 4, 6))
    _, g = _group_of(groups, "conv")
    assert not g.prunable and not g.params
    assert any("w (6, 6) varies along the channels on its dim 0" in r and "(dim 1)" in r for r in g.reasons), g.reasons


def test_parameter_used_elsewhere_freezes() -> None:
    groups = build_groups(ScaleReadElsewhere(), torch.randn(2, 4))
    _, g = _group_of(groups, "fc1")
    assert not g.prunable
    assert any("gamma is also used by" in r for r in g.reasons), g.reasons


def test_parameter_of_a_handled_module_freezes() -> None:
    class RawNormWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.norm, self.fc2 = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.fc2(self.fc1(x) * self.norm.weight)
            return out

    _, g = _group_of(build_groups(RawNormWeight(), torch.randn(2, 4)), "fc1")
    assert not g.prunable and any("norm.weight belongs to norm (LayerNorm)" in r for r in g.reasons), g.reasons


def test_plain_constant_still_freezes() -> None:
    class Const(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.fc2(self.fc1(x) * torch.arange(6.0))
            return out

    _, g = _group_of(build_groups(Const(), torch.randn(2, 4)), "fc1")
    assert not g.prunable and any("varies along the channel dim" in r for r in g.reasons), g.reasons


# -- plan entries naming tensors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (PlanEntry("blocks.0.nothing", "out", 8, (0,)), r"has no module 'blocks\.0\.nothing' \(nor a parameter or buffer"),
        (PlanEntry("blocks.0.gamma", "in", 8, (0,)), r"blocks\.0\.gamma.*only the 'out' axis"),
        (PlanEntry("blocks.0.gamma", "out", 5, (0,)), r"plan expects 5 units along a dim of 'blocks\.0\.gamma'.*\(8,\)"),
        (PlanEntry("head.weight", "out", 5, (0,)), r"'head\.weight' belongs to a Linear, whose handler slices it"),
    ],
)
def test_bad_tensor_entries_are_refused_before_anything_changes(entry: PlanEntry, match: str) -> None:
    model = LayerScaleNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = PrunePlan((PlanEntry("stem", "out", 8, (0, 1)), entry))
    with pytest.raises(PlanError, match=match):
        apply_plan_(model, plan)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_tensor_registered_twice_is_refused() -> None:
    model = LayerScaleNet()
    model.blocks[1].gamma = model.blocks[0].gamma
    with pytest.raises(PlanError, match=r"also registered as blocks\.1\.gamma"):
        apply_plan_(model, PrunePlan((PlanEntry("blocks.0.gamma", "out", 8, (0, 1)),)))
    _, g = _group_of(build_groups(model, torch.randn(2, 3, 6, 6)), "stem")
    assert not g.prunable and any("is also registered as" in r for r in g.reasons), g.reasons


# -- (e) Hugging Face ViT and ConvNeXt --------------------------------------------------------------------------


def _hf_round_trip(model: nn.Module, example: dict[str, Tensor], out: Callable[[Any], Tensor], tmp_path: Path) -> nn.Module:
    """structured_plan -> apply_plan_ -> save_slim -> load_slim: the loaded model gives the slim model's outputs."""
    from prunekit.structure.persist import load_slim, save_slim

    plan = structured_plan(model, example, StructuredConfig(ratio=0.5))
    slim = apply_plan_(copy.deepcopy(model), plan).eval()
    back = load_slim(save_slim(tmp_path / "slim", slim, plan)).eval()
    with torch.no_grad():
        a, b = out(slim(**example)), out(back(**example))
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    return slim


def test_hf_vit_stream_with_class_token_and_positions_is_prunable(tmp_path: Path) -> None:
    T = pytest.importorskip("transformers")
    cfg = T.ViTConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                      patch_size=8, num_labels=10)  # fmt: skip
    model = T.ViTForImageClassification(cfg).eval()
    example = {"pixel_values": torch.randn(2, 3, 32, 32)}
    stream = next(g for g in build_groups(model, example) if any(m.role == "param" for m in g.members))
    assert stream.prunable and stream.size == 64
    assert _params(stream) == {"vit.embeddings.cls_token": 2, "vit.embeddings.position_embeddings": 2}
    slim = _hf_round_trip(model, example, lambda o: o.logits, tmp_path)
    emb = slim.get_submodule("vit.embeddings")
    assert emb.cls_token.shape == (1, 1, 32) and emb.position_embeddings.shape == (1, 17, 32)


def test_hf_convnext_stream_with_layer_scale_is_prunable(tmp_path: Path) -> None:
    T = pytest.importorskip("transformers")
    cfg = T.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[2, 1])
    model = T.ConvNextModel(cfg).eval()
    example = {"pixel_values": torch.randn(2, 3, 32, 32)}
    groups = build_groups(model, example)
    _, stage0 = _group_of(groups, "embeddings.patch_embeddings")
    assert stage0.prunable
    assert _params(stage0) == {
        "encoder.stages.0.layers.0.layer_scale_parameter": 0,
        "encoder.stages.0.layers.1.layer_scale_parameter": 0,
    }
    _, last = _group_of(groups, "encoder.stages.1.downsampling_layer.1")  # ConvNextModel returns this stream
    assert not last.prunable and "model output" in last.reasons
    slim = _hf_round_trip(model, example, lambda o: o.pooler_output, tmp_path)
    assert slim.get_parameter("encoder.stages.0.layers.0.layer_scale_parameter").shape == (8,)
