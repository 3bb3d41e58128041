"""Tied weights: an input embedding and the output head sharing one matrix shrink together and stay tied."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from prunekit.structure import PlanEntry, PrunePlan, apply_plan_, build_groups
from prunekit.structure.handlers import StructureError, handler_for_or_none
from prunekit.structure.importance import StructuredConfig, structured_plan
from prunekit.structure.persist import load_slim, save_slim


class TiedLM(nn.Module):
    """emb (V, d) -> residual MLP -> LayerNorm -> head, with ``head.weight is emb.weight``."""

    def __init__(self, vocab: int = 20, dim: int = 8, hidden: int = 12, tie: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, idx: Tensor) -> Tensor:
        e = self.emb(idx)  # (B, T, d)
        return self.head(self.norm(e + self.fc2(torch.relu(self.fc1(e)))))  # (B, T, V)


IDS = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))


def test_tied_stream_is_one_prunable_group() -> None:
    groups = build_groups(TiedLM(), IDS)
    stream = next(g for g in groups if any(m.fqn == "emb" for m in g.members))
    assert stream.prunable and stream.size == 8
    assert {(m.fqn, m.role) for m in stream.members} >= {("emb", "producer"), ("head", "consumer")}


def test_tie_along_different_dims_freezes() -> None:
    class Odd(nn.Module):  # the shared (8, 8) matrix: its dim 1 is emb's units, its dim 0 the head's output units
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(8, 8)
            self.head = nn.Linear(8, 8, bias=False)
            self.head.weight = self.emb.weight
            self.out = nn.Linear(8, 3)

        def forward(self, idx: Tensor) -> Tensor:
            return self.out(torch.relu(self.head(self.emb(idx))))

    groups = build_groups(Odd(), IDS % 8)
    touching = [g for g in groups if any(m.fqn in ("emb", "head") for m in g.members)]
    assert len(touching) == 2 and not any(g.prunable for g in touching)
    assert any("shares a weight" in r for g in touching for r in g.reasons)


def test_removing_stream_channels_keeps_the_tie_and_equals_sliced_weights() -> None:
    torch.manual_seed(0)
    model = TiedLM().eval()
    plan = structured_plan(model, IDS, StructuredConfig(ratio=0.5, types=("Linear", "Embedding")))
    keep = next(e for e in plan.entries if e.module == "emb").kept
    slim = apply_plan_(copy.deepcopy(model), plan)
    assert slim.head.weight is slim.emb.weight and slim.emb.weight.shape == (20, 4)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())

    # reference: the same network written with hand-sliced weights
    k = torch.tensor(keep)
    h = next(e for e in plan.entries if e.module == "fc1" and e.axis == "out").kept
    hk = torch.tensor(h)
    ref = TiedLM(dim=len(keep), hidden=len(h)).eval()
    with torch.no_grad():
        ref.emb.weight.copy_(model.emb.weight[:, k])
        ref.fc1.weight.copy_(model.fc1.weight[hk][:, k])
        ref.fc1.bias.copy_(model.fc1.bias[hk])
        ref.fc2.weight.copy_(model.fc2.weight[k][:, hk])
        ref.fc2.bias.copy_(model.fc2.bias[k])
        ref.norm.weight.copy_(model.norm.weight[k])
        ref.norm.bias.copy_(model.norm.bias[k])
        torch.testing.assert_close(slim(IDS), ref(IDS), rtol=0, atol=0)


def test_a_plan_slicing_a_tie_differently_is_refused() -> None:
    model = TiedLM()
    plan = PrunePlan((PlanEntry("emb", "out", 8, (0, 1, 2, 3)), PlanEntry("head", "in", 8, (4, 5, 6, 7))))
    with pytest.raises(StructureError, match="tied weight"):
        apply_plan_(model, plan)


def test_embedding_subclass_with_its_own_forward_has_a_handler() -> None:
    class Offset(nn.Embedding):  # as OPT's learned positional embedding: shifts the indices
        def forward(self, idx: Tensor) -> Tensor:  # type: ignore[override]
            return super().forward(idx + 2)

    assert handler_for_or_none(Offset(10, 4)) is not None


def test_gpt2_lm_head_tied_stream_round_trips(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = {"input_ids": torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(3))}
    plan = structured_plan(model, ids, StructuredConfig(ratio=0.5, types=("Linear", "Conv1D", "*Embedding")))
    stream = next(e for e in plan.entries if e.module == "transformer.wte")
    assert stream.size == 16 and len(stream.kept) == 8
    slim = apply_plan_(copy.deepcopy(model), plan)
    assert slim.lm_head.weight is slim.transformer.wte.weight
    loaded = load_slim(save_slim(tmp_path / "gpt2", slim, plan))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, slim(**ids).logits)


def test_opt_stream_with_learned_positions_and_tied_head_round_trips(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.OPTConfig(hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=50,
                                 max_position_embeddings=32, word_embed_proj_dim=32)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(cfg).eval()
    ids = {"input_ids": torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(4))}
    groups = build_groups(model, ids)
    stream = next(g for g in groups if any(m.fqn == "model.decoder.embed_positions" for m in g.members))
    assert stream.prunable  # the positional embedding (called with the attention mask) produces the stream too
    plan = structured_plan(model, ids, StructuredConfig(ratio=0.5, types=("Linear", "*Embedding")))
    slim = apply_plan_(copy.deepcopy(model), plan)
    assert slim.lm_head.weight is slim.model.decoder.embed_tokens.weight and slim.lm_head.weight.shape == (50, 16)
    loaded = load_slim(save_slim(tmp_path / "opt", slim, plan))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, slim(**ids).logits)
