"""Slim checkpoints: original architecture + plan.json + slim safetensors weights; save -> load gives the same model.

Hugging Face models are built from configs with random weights (no downloads): a tiny BertModel with a hand-written
plan that only touches the MLP layers (``intermediate.dense`` out, ``output.dense`` in; a different width per layer,
independent of the dependency graph), and a tiny Llama with grouped-query attention and a tiny GPT-2 (fused
``Conv1D`` q/k/v) slimmed by ``structured_plan`` (heads and MLP units, through the graph's runtime-recording fallback).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.checkpoint import PLAN, load_checkpoint
from prunekit.errors import CheckpointError
from prunekit.loaders import load_model
from prunekit.models import build_model
from prunekit.structure import PlanEntry, PlanError, PrunePlan, apply_plan_
from prunekit.structure.handlers import sync_attention_attributes_
from prunekit.structure.importance import GlobalGroups, StructuredConfig, structured_plan
from prunekit.structure.persist import HF_CONFIG, compose_plans, load_slim, save_slim
from prunekit.testing.models import TinyMLP

SPEC = {"name": "resnet20", "kwargs": {"num_classes": 10}}


def _slim_resnet(ratio: float = 0.5) -> tuple[nn.Module, PrunePlan, torch.Tensor]:
    model = build_model(SPEC).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = structured_plan(model, x, StructuredConfig(ratio=ratio, allocator=GlobalGroups(max_fraction=0.9)))
    return apply_plan_(model, plan), plan, x


def test_zoo_model_with_non_uniform_widths_round_trips(tmp_path: Path) -> None:
    slim, plan, x = _slim_resnet()
    widths = {m.out_channels for name, m in slim.named_modules() if name.endswith("conv1") and isinstance(m, nn.Conv2d)}
    assert len(widths) > 3  # global allocation: every block keeps a different width
    out = save_slim(tmp_path / "slim", slim, plan, model_spec=SPEC)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "plan.json", "prunekit.json"]
    assert PrunePlan.from_json((out / PLAN).read_text()) == plan
    loaded = load_slim(out).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in slim.state_dict().items()}
    # the ordinary loaders read it too: load_checkpoint, and `--model` of the command line
    assert torch.equal(load_checkpoint(out).model.eval()(x), slim(x))
    lm = load_model(out)
    assert lm.kind == "prunekit" and torch.equal(lm.model.eval()(x), slim(x))
    # a model passed in must be the original architecture: the plan is applied to it
    fresh = build_model(SPEC)
    assert torch.equal(load_checkpoint(out, fresh).model.eval()(x), slim(x))


def test_save_refuses_a_plan_that_does_not_give_the_model(tmp_path: Path) -> None:
    _, plan, _ = _slim_resnet()
    other = build_model(SPEC)  # the unslimmed model does not match plan + spec
    with pytest.raises(PlanError, match="does not give the model"):
        save_slim(tmp_path / "bad", other, plan, model_spec=SPEC)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(CheckpointError, match="model_spec"):
        save_slim(tmp_path / "bad", TinyMLP(), PrunePlan())
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary directories left


def test_bad_plan_files_name_the_file(tmp_path: Path) -> None:
    slim, plan, _ = _slim_resnet()
    out = save_slim(tmp_path / "slim", slim, plan, model_spec=SPEC)
    good = (out / PLAN).read_text()
    (out / PLAN).write_text("{not json")
    with pytest.raises(PlanError, match=r"plan\.json"):
        load_slim(out)
    data = json.loads(good)
    data["entries"][0]["size"] += 1
    (out / PLAN).write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"plan\.json.*expects"):
        load_slim(out)
    data["entries"][0]["size"] -= 1
    data["entries"][0]["kept"] = data["entries"][0]["kept"][:-1]  # fits the architecture, not the weights
    data["entries"][1]["kept"] = data["entries"][1]["kept"][:-1]
    (out / PLAN).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_slim(out)
    (out / PLAN).unlink()
    with pytest.raises(CheckpointError, match=r"plan\.json"):
        load_slim(out)


def test_successive_plans_compose_into_one(tmp_path: Path) -> None:
    slim, first, x = _slim_resnet(0.25)
    second = structured_plan(slim, x, StructuredConfig(ratio=0.5))
    twice = apply_plan_(slim, second)
    both = compose_plans(first, second)
    once = apply_plan_(build_model(SPEC).eval(), both)
    assert {k: v.shape for k, v in once.state_dict().items()} == {k: v.shape for k, v in twice.state_dict().items()}
    out = save_slim(tmp_path / "slim2", twice, both, model_spec=SPEC)
    with torch.no_grad():
        assert torch.equal(load_slim(out).eval()(x), twice(x))
    with pytest.raises(PlanError, match="expects"):
        compose_plans(second, first)


def test_compose_keeps_entries_of_either_plan() -> None:
    a = PrunePlan((PlanEntry("fc1", "out", 12, (0, 2, 4, 6)),))
    b = PrunePlan((PlanEntry("fc1", "out", 4, (1, 3)), PlanEntry("fc2", "out", 8, (0,))))
    assert compose_plans(a, b).entries == (PlanEntry("fc1", "out", 12, (2, 6)), PlanEntry("fc2", "out", 8, (0,)))


# -- Hugging Face ---------------------------------------------------------------------------------------------------


def _tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model: nn.Module = transformers.BertModel(cfg)
    return model.eval()


def _mlp_plan(widths: list[int]) -> PrunePlan:
    entries = []
    g = torch.Generator().manual_seed(0)
    for layer, keep in enumerate(widths):
        kept = tuple(sorted(torch.randperm(32, generator=g)[:keep].tolist()))
        entries.append(PlanEntry(f"encoder.layer.{layer}.intermediate.dense", "out", 32, kept))
        entries.append(PlanEntry(f"encoder.layer.{layer}.output.dense", "in", 32, kept))
    return PrunePlan(tuple(entries))


def test_huggingface_model_from_config_with_non_uniform_mlp_widths(tmp_path: Path) -> None:
    model = _tiny_bert()
    plan = _mlp_plan([20, 7])
    slim = apply_plan_(model, plan)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    out = save_slim(tmp_path / "bert", slim, plan)
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["model"] == {"huggingface": "BertModel", "config": HF_CONFIG} and meta["plan"] == PLAN
    assert json.loads((out / HF_CONFIG).read_text())["intermediate_size"] == 32  # the original architecture
    loaded = load_slim(out)
    assert type(loaded).__name__ == "BertModel" and not loaded.training
    assert loaded.encoder.layer[0].intermediate.dense.out_features == 20
    assert loaded.encoder.layer[1].output.dense.in_features == 7
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, slim(input_ids=ids).last_hidden_state)
    lm = load_model(out)  # the `--model` loader gives a token example for it
    assert lm.example is not None and lm.example["input_ids"].dtype == torch.long
    assert lm.model(**lm.example).last_hidden_state.shape == (1, 8, 16)


def test_huggingface_spec_errors_name_the_problem(tmp_path: Path) -> None:
    slim = apply_plan_(_tiny_bert(), _mlp_plan([4, 4]))
    out = save_slim(tmp_path / "bert", slim, _mlp_plan([4, 4]))
    meta = json.loads((out / "prunekit.json").read_text())
    meta["model"]["huggingface"] = "NoSuchModel"
    (out / "prunekit.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="NoSuchModel"):
        load_slim(out)
    meta["model"]["huggingface"] = "BertModel"
    (out / "prunekit.json").write_text(json.dumps(meta))
    (out / HF_CONFIG).unlink()
    with pytest.raises(CheckpointError, match=HF_CONFIG):
        load_slim(out)


def test_huggingface_llama_gqa_slimmed_by_group_importance(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = {"input_ids": torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(2))}
    config = StructuredConfig(ratio=0.5, allocator=GlobalGroups(max_fraction=0.75))
    plan = structured_plan(model, ids, config)
    slim = apply_plan_(model, plan)
    attn = slim.model.layers[0].self_attn
    assert attn.k_proj.out_features * 2 == attn.q_proj.out_features  # whole key/value groups with their query heads
    widths = {m.out_features for n, m in slim.named_modules() if n.endswith("gate_proj")}
    out = save_slim(tmp_path / "llama", slim, plan)
    loaded = load_slim(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, slim(**ids).logits)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in slim.state_dict().items()}
    assert len(widths) >= 1 and max(widths) < 48


def test_huggingface_gpt2_heads_and_mlp_round_trip(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2Model(transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16))
    ids = {"input_ids": torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(3))}
    plan = structured_plan(model.eval(), ids, StructuredConfig(ratio=0.5))
    assert {(e.module, e.axis, e.size, len(e.kept)) for e in plan.entries} >= {
        ("h.0.attn.c_attn", "out", 48, 24),  # one of two heads, in each of q, k and v
        ("h.0.mlp.c_fc", "out", 64, 32),
    }
    live = apply_plan_(copy.deepcopy(model), plan)
    sync_attention_attributes_(live)  # GPT-2 reads the fused split size from an attribute
    out = save_slim(tmp_path / "gpt2", live, plan)
    slim = load_slim(out)
    assert slim.h[0].attn.split_size == 8 and slim.h[0].attn.num_heads == 1
    with torch.no_grad():
        torch.testing.assert_close(slim(**ids).last_hidden_state, live(**ids).last_hidden_state)
