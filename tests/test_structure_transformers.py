"""Dependency groups and exact slimming of transformers: heads (incl. grouped-query attention), MLPs, fused qkv.

Tiny Hugging Face models are built from configs with random weights (no download). Exactness: the model whose
removed units have every producer slice zeroed (weights and bias: the structured mask applied) and the slimmed
model give the same outputs.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from prunekit.models import build_model
from prunekit.structure import Group, build_groups
from prunekit.structure.from_masks import plan_for_groups
from prunekit.structure.handlers import sync_attention_attributes_
from prunekit.structure.plan import apply_plan_
from prunekit.testing.structure import zero_removed_units

T = pytest.importorskip("transformers")

_NORM_WORDS = ("norm", "ln_")


def _mixes(g: Group) -> bool:
    """Groups with a LayerNorm/RMSNorm member: removing units there is not function-preserving."""
    return any(any(w in m.fqn.split(".")[-1].lower() for w in _NORM_WORDS) for m in g.members)


def _roles(g: Group) -> set[tuple[str, str, int, int]]:
    return {(m.fqn.split(".")[-1], m.role, m.block, m.offset) for m in g.members}


def _halve_and_compare(model: nn.Module, example: Any, out: Any = lambda o: o.logits) -> tuple[list[Group], Any]:
    """Remove a random half of every prunable group without norms; masked reference == slim model."""
    model.eval()
    groups = build_groups(model, example)
    gen = torch.Generator().manual_seed(0)
    kept = {
        i: torch.randperm(g.size, generator=gen)[: g.size // 2].sort().values
        for i, g in enumerate(groups)
        if g.prunable and g.size > 1 and not _mixes(g)
    }
    assert kept, "nothing prunable found"
    ref = zero_removed_units(model, groups, kept)
    slim = apply_plan_(copy.deepcopy(model), plan_for_groups(model, groups, kept))
    sync_attention_attributes_(slim)
    with torch.no_grad():
        a, b = (
            out(ref(**example) if isinstance(example, dict) else ref(example)),
            out(slim(**example) if isinstance(example, dict) else slim(example)),
        )
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    return groups, slim


def _ids() -> dict[str, Tensor]:
    return {"input_ids": torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))}


def test_llama_grouped_query_attention_units_are_kv_groups() -> None:
    cfg = T.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
        vocab_size=100, max_position_embeddings=32, head_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    groups, slim = _halve_and_compare(T.LlamaForCausalLM(cfg), _ids())
    heads = [g for g in groups if any(m.fqn.endswith("k_proj") and m.role == "producer" for m in g.members)]
    assert len(heads) == 2 and all(g.size == 2 and g.prunable for g in heads)
    # one unit = one key/value head (8 rows of k_proj, v_proj) with its 4 query heads (32 rows of q_proj, o_proj columns)
    assert _roles(heads[0]) == {("k_proj", "producer", 8, 0), ("v_proj", "producer", 8, 0), ("q_proj", "producer", 32, 0),
                                ("o_proj", "consumer", 32, 0)}  # fmt: skip
    mlp = [g for g in groups if any(m.fqn.endswith("gate_proj") and m.role == "producer" for m in g.members)]
    assert _roles(mlp[0]) == {("gate_proj", "producer", 1, 0), ("up_proj", "producer", 1, 0), ("down_proj", "consumer", 1, 0)}
    attn = slim.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (32, 8, 4)


def test_bert_heads_and_mlp() -> None:
    cfg = T.BertConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                       max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    groups, slim = _halve_and_compare(T.BertForSequenceClassification(cfg), _ids())
    heads = [g for g in groups if any(m.fqn.endswith("query") and m.role == "producer" for m in g.members)]
    assert all(g.size == 4 and g.prunable for g in heads)
    assert slim.bert.encoder.layer[0].attention.self.all_head_size == 32


def test_gpt2_fused_qkv_is_cut_into_three_pieces() -> None:
    cfg = T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
    torch.manual_seed(0)
    groups, slim = _halve_and_compare(T.GPT2LMHeadModel(cfg), _ids())
    heads = [g for g in groups if any(m.fqn.endswith("attn.c_attn") and m.role == "producer" for m in g.members)]
    assert _roles(heads[0]) == {("c_attn", "producer", 16, 0), ("c_attn", "producer", 16, 64), ("c_attn", "producer", 16, 128),
                                ("c_proj", "consumer", 16, 0)}  # fmt: skip
    attn = slim.transformer.h[0].attn
    assert (attn.split_size, attn.num_heads, attn.c_attn.weight.shape[1]) == (32, 2, 96)
    # the embedding is tied to the output head along the stream's dim: one prunable group holds both
    stream = next(g for g in groups if any(m.fqn.endswith("wte") for m in g.members))
    assert stream.prunable and {("transformer.wte", "producer"), ("lm_head", "consumer")} <= {
        (m.fqn, m.role) for m in stream.members
    }


def test_opt_stale_head_count_would_reshape_the_sequence_so_it_is_synced() -> None:
    cfg = T.OPTConfig(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                      max_position_embeddings=32, word_embed_proj_dim=64)  # fmt: skip
    torch.manual_seed(0)
    _, slim = _halve_and_compare(T.OPTForCausalLM(cfg), _ids())
    assert slim.model.decoder.layers[0].self_attn.num_heads == 2


def test_vit_heads_and_mlp() -> None:
    cfg = T.ViTConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                      patch_size=8, num_labels=10)  # fmt: skip
    torch.manual_seed(0)
    groups, _ = _halve_and_compare(T.ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)})
    assert sum(g.prunable and g.size == 4 for g in groups) == 2  # heads of both layers


def test_nn_transformer_encoder_feed_forward() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=48, batch_first=True, dropout=0.0)
    model = nn.Sequential(nn.Linear(8, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, 3))
    groups, _ = _halve_and_compare(model, torch.randn(2, 5, 8), out=lambda o: o)
    ff = [g for g in groups if any(m.fqn.endswith("linear1") and m.role == "producer" for m in g.members)]
    assert len(ff) == 2 and all(g.prunable and g.size == 48 for g in ff)


def test_char_gpt_is_recorded_and_slimmed_exactly() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "char_gpt"})
    _halve_and_compare(model, torch.randint(0, 65, (2, 16)), out=lambda o: o if isinstance(o, Tensor) else o[0])
