"""Depth: residual blocks and transformer layers replaced by identities through the plan; ShortGPT block influence."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.models import build_model
from prunekit.structure import PlanEntry, PlanError, PrunePlan, StructureError, apply_plan_, build_groups
from prunekit.structure.depth import block_candidates, block_influence, depth_plan, lowest_influence
from prunekit.structure.plan import DepthEntry
from prunekit.structure.skip import SkipBlock

RESNET_BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


@torch.no_grad()
def _resnet_with_silent_block(block: str = "layer2.1") -> nn.Module:
    model = build_model({"name": "resnet20"}).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)  # type: ignore[union-attr]
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    bn2 = model.get_submodule(block).bn2
    bn2.weight.zero_()  # the residual branch outputs exactly 0: relu(x + 0) = x for x >= 0
    bn2.bias.zero_()
    return model


def test_resnet_candidates_are_the_shape_preserving_blocks() -> None:
    model = build_model({"name": "resnet20"})
    assert block_candidates(model, torch.randn(2, 3, 32, 32)) == RESNET_BLOCKS  # layer2.0/3.0 downsample


def test_silent_block_has_zero_influence_and_its_removal_is_exact() -> None:
    model = _resnet_with_silent_block()
    x = torch.randn(2, 3, 32, 32)
    for metric in ("cosine", "relative"):
        scores = block_influence(model, x, metric=metric)  # type: ignore[arg-type]
        assert list(scores) == RESNET_BLOCKS and scores["layer2.1"] == 0.0
        assert all(v > 0.01 for k, v in scores.items() if k != "layer2.1")
        assert lowest_influence(scores, 1) == ["layer2.1"]
    plan = depth_plan(model, ["layer2.1"], x)
    slim = apply_plan_(copy.deepcopy(model), plan)
    assert isinstance(slim.layer2[1], SkipBlock) and "layer2.1.conv1.weight" not in slim.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(slim(x), model(x), rtol=0, atol=1e-6)
    assert len(build_groups(slim, x)) > 0  # the slim model still traces


def test_block_removal_replays_on_a_fresh_resnet() -> None:
    model = _resnet_with_silent_block()
    x = torch.randn(2, 3, 32, 32)
    plan = depth_plan(model, lowest_influence(block_influence(model, x), 3), x)
    assert len(plan.depth) == 3 and all(d.class_name == "BasicBlock" and d.output == "tensor" for d in plan.depth)
    slim = apply_plan_(copy.deepcopy(model), plan)
    fresh = apply_plan_(build_model({"name": "resnet20"}).eval(), PrunePlan.from_json(plan.to_json()))
    fresh.load_state_dict(slim.state_dict())  # strict: same tensors
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), slim(x), rtol=0, atol=0)
    n = sum(p.numel() for p in slim.parameters())
    assert n < sum(p.numel() for p in model.parameters())
    with pytest.raises(PlanError, match=r"plan expects a BasicBlock, the model has a SkipBlock \(plan already applied\?\)"):
        apply_plan_(slim, plan)


def test_shape_changing_block_is_refused() -> None:
    model = build_model({"name": "resnet20"})
    with pytest.raises(StructureError, match=r"block 'layer2.0' \(BasicBlock\) maps \(1, 16, 32, 32\) to \(1, 32, 16, 16\)"):
        depth_plan(model, ["layer2.0"], torch.randn(1, 3, 32, 32))
    with pytest.raises(StructureError, match=r"no block 'layer9\.0'"):
        depth_plan(model, ["layer9.0"], torch.randn(1, 3, 32, 32))
    with pytest.raises(StructureError, match="cannot remove 8 of 7 blocks"):
        lowest_influence(dict.fromkeys(RESNET_BLOCKS, 0.0), 8)


def test_depth_json_round_trip_and_version() -> None:
    plan = PrunePlan(
        (PlanEntry("fc", "in", 64, (0, 1)),),
        depth=(DepthEntry("layer1.1", "BasicBlock"), DepthEntry("h.2", "Block", "tuple", 3)),
    )
    data = json.loads(plan.to_json())
    assert data["version"] == 2
    assert data["depth"][1] == {"module": "h.2", "class": "Block", "output": "tuple", "length": 3}
    assert PrunePlan.from_json(plan.to_json()) == plan
    assert PrunePlan(plan.entries).to_dict()["version"] == 1  # unit entries only: readable by prunekit 0.1


def _doc(depth: list[object], entries: list[object] | None = None) -> str:
    return json.dumps({"version": 2, "entries": entries or [], "add_bias": [], "depth": depth})


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (_doc([{"module": "layer1.1", "class": "BasicBlock"}]), r"plan depth entry 0: expected keys module, class, output"),
        (
            _doc([{"module": "layer1.1", "class": "BasicBlock", "output": "list", "length": 1}]),
            r"plan depth entry 0 \(layer1.1\): 'output' must be 'tensor' or 'tuple', got 'list'",
        ),
        (
            _doc([{"module": "layer1.1", "class": "BasicBlock", "output": "tensor", "length": 2}]),
            r"'length' must be 1 for a tensor output",
        ),
        (_doc([{"module": "", "class": "BasicBlock", "output": "tensor", "length": 1}]), r"'module' must be the non-empty path"),
        (
            _doc([{"module": "layer1", "class": "Sequential", "output": "tensor", "length": 1},
                  {"module": "layer1.1", "class": "BasicBlock", "output": "tensor", "length": 1}]),
            r"plan depth entry 1 \(layer1.1\): overlaps depth entry 0 \(layer1\)",
        ),
        (
            _doc(
                [{"module": "layer1.1", "class": "BasicBlock", "output": "tensor", "length": 1}],
                [{"module": "layer1.1.conv1", "axis": "out", "size": 16, "kept": [0]}],
            ),
            r"plan entry 0 \(layer1.1.conv1.out\) is inside block layer1.1, removed by depth entry 0",
        ),
        (json.dumps({"version": 2, "entries": [], "depth": {}}), "plan 'depth' must be a list"),
    ],
)  # fmt: skip
def test_malformed_depth_entries_name_the_problem(doc: str, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        PrunePlan.from_json(doc)


def test_depth_entry_must_fit_the_model() -> None:
    model = build_model({"name": "resnet20"})
    with pytest.raises(
        PlanError, match=r"plan depth entry 0 \(layer1.1\): plan expects a Bottleneck, the model has a BasicBlock"
    ):
        apply_plan_(model, PrunePlan(depth=(DepthEntry("layer1.1", "Bottleneck"),)))
    with pytest.raises(PlanError, match=r"plan depth entry 0 \(layer4.0\): the model has no module 'layer4.0'"):
        apply_plan_(model, PrunePlan(depth=(DepthEntry("layer4.0", "BasicBlock"),)))


def test_skip_block_returns_a_tuple_when_the_block_did() -> None:
    skip = SkipBlock("Layer", "tuple", 3, {"layer_idx": 2, "attention_type": "full_attention"})
    x = torch.randn(2, 3)
    out = skip(x, attention_mask=None)
    assert isinstance(out, tuple) and out[0] is x and out[1:] == (None, None)
    assert skip(hidden_states=x)[0] is x and (skip.layer_idx, skip.attention_type) == (2, "full_attention")


def test_slim_checkpoint_with_removed_blocks_round_trips(tmp_path: Path) -> None:
    from prunekit.structure.persist import load_slim, save_slim

    model = _resnet_with_silent_block()
    x = torch.randn(2, 3, 32, 32)
    plan = depth_plan(model, ["layer1.1", "layer2.1"], x)
    slim = apply_plan_(model, plan)
    save_slim(tmp_path / "ckpt", slim, plan, model_spec={"name": "resnet20"})
    loaded = load_slim(tmp_path / "ckpt").eval()
    assert isinstance(loaded.layer1[1], SkipBlock)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), slim(x), rtol=0, atol=0)


def test_depth_then_units_compose_into_one_replayable_plan() -> None:
    from prunekit.masks import finalize_
    from prunekit.patterns import Channel
    from prunekit.pruner import Pruner
    from prunekit.recipe import PruneRecipe, Targets
    from prunekit.structure import fold_removed_, plan_from_masks
    from prunekit.structure.persist import compose_plans

    kwargs = {"shortcut": "B"}
    model = build_model({"name": "resnet20", "kwargs": kwargs}).eval()
    x = torch.randn(2, 3, 32, 32)
    depth = depth_plan(model, ["layer1.1", "layer3.2"], x)
    apply_plan_(model, depth)  # units are planned on the shallower model
    Pruner(PruneRecipe(sparsity=0.5, pattern=Channel(0), targets=Targets(exclude=("fc",)))).attach(model).prune_()
    units, _ = fold_removed_(model, plan_from_masks(model, x), x)
    finalize_(model)
    apply_plan_(model, units)
    plan = compose_plans(depth, units)
    assert len(plan.depth) == 2 and len(plan.entries) == len(units.entries)
    fresh = apply_plan_(build_model({"name": "resnet20", "kwargs": kwargs}).eval(), PrunePlan.from_json(plan.to_json()))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


transformers = pytest.importorskip("transformers")


@torch.no_grad()
def test_tiny_llama_gqa_layers_removed() -> None:
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=100
    )
    model = transformers.LlamaModel(config).eval()
    layer = model.layers[2]
    layer.self_attn.o_proj.weight.zero_()  # f(x) = 0: x + attn + mlp = x
    layer.mlp.down_proj.weight.zero_()
    ids = {"input_ids": torch.randint(0, 100, (2, 7))}
    assert block_candidates(model, ids) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    scores = block_influence(model, ids)
    assert scores["layers.2"] == 0.0 and lowest_influence(scores, 1) == ["layers.2"]
    ref = model(**ids).last_hidden_state
    exact = apply_plan_(copy.deepcopy(model), depth_plan(model, ["layers.2"], ids))
    torch.testing.assert_close(exact(**ids).last_hidden_state, ref, rtol=0, atol=1e-6)

    plan = depth_plan(model, ["layers.1", "layers.2"], ids)
    slim = apply_plan_(copy.deepcopy(model), plan)
    out = slim(**ids, use_cache=True)
    assert out.last_hidden_state.shape == (2, 7, 32) and torch.isfinite(out.last_hidden_state).all()
    fresh = apply_plan_(transformers.LlamaModel(config).eval(), PrunePlan.from_json(plan.to_json()))
    fresh.load_state_dict(slim.state_dict())
    torch.testing.assert_close(fresh(**ids).last_hidden_state, out.last_hidden_state, rtol=0, atol=0)


@torch.no_grad()
def test_tiny_bert_layer_removed() -> None:
    config = transformers.BertConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=100,
        max_position_embeddings=32,
    )
    model = transformers.BertModel(config).eval()
    ids = {"input_ids": torch.randint(0, 100, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    blocks = block_candidates(model, ids)
    assert blocks == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    plan = depth_plan(model, lowest_influence(block_influence(model, ids), 1), ids)
    slim = apply_plan_(copy.deepcopy(model), plan)
    out = slim(**ids)
    assert out.last_hidden_state.shape == (2, 9, 32) and out.pooler_output.shape == (2, 32)
    assert sum(isinstance(m, SkipBlock) for m in slim.modules()) == 1
