"""Fused mixture-of-experts weights in channel groups: the experts' intermediate units, and the residual stream
through the router and the experts.

Mixtral of Experts (Jiang et al. 2024): ``y = sum_{i in top-k(x)} G(x)_i * SwiGLU_i(x)`` with ``G(x) =
softmax(topk(x W_g))`` and ``SwiGLU_i(x) = W2_i (silu(W1_i x) * W3_i x)``; Hugging Face stores every expert in two
fused tensors, ``gate_up_proj`` (E, 2I, H) = ``[W1_i; W3_i]`` and ``down_proj`` (E, H, I) = ``W2_i``, and loops over
the experts the tokens were routed to: ``F.linear(x_e, gate_up_proj[e]).chunk(2, -1)``, ``act(gate) * up``,
``F.linear(h, down_proj[e])``, ``* weights``, ``index_add_``. Intermediate unit ``c`` is row ``c`` and ``I + c`` of
``gate_up_proj`` and column ``c`` of ``down_proj``, of every expert (the tensor is fused: one kept set for all).
Exactness: the reference zeroes the removed units' rows of every producer, module or tensor
(:func:`prunekit.testing.structure.zero_removed_units`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit.structure import Group, PlanEntry, PlanError, PrunePlan, apply_plan_, build_groups
from prunekit.structure._units import UnitMap
from prunekit.structure.from_masks import plan_for_groups
from prunekit.structure.graph import Member, Tracing
from prunekit.structure.importance import StructuredConfig, param_unit_scores, select_kept, structured_plan
from prunekit.testing.structure import assert_replays, halve_exactly, zero_removed_units

# -- models ----------------------------------------------------------------------------------------------------


class FusedExperts(nn.Module):
    """Mixtral-style experts: ``gate_up_proj`` (E, 2I, H), ``down_proj`` (E, H, I); tokens x (T, H), routing
    ``top_k_index``/``top_k_weights`` (T, k) -> (T, H): ``y_t = sum_j w_tj W2_e (silu(W1_e x_t) * W3_e x_t)``,
    ``e = top_k_index[t, j]``, looping over the experts hit (Hugging Face's eager implementation)."""

    def __init__(self, experts: int, hidden: int, inter: int) -> None:
        super().__init__()
        self.num_experts, self.hidden_dim, self.intermediate_dim = experts, hidden, inter
        self.gate_up_proj = nn.Parameter(torch.randn(experts, 2 * inter, hidden) / hidden**0.5)
        self.down_proj = nn.Parameter(torch.randn(experts, hidden, inter) / inter**0.5)

    def forward(self, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        final = torch.zeros_like(x)
        with torch.no_grad():
            expert_mask = F.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)  # (E, k, T)
            hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit:
            e = e[0]
            pos, tok = torch.where(expert_mask[e])
            gate, up = F.linear(x[tok], self.gate_up_proj[e]).chunk(2, dim=-1)
            h = F.linear(F.silu(gate) * up, self.down_proj[e]) * top_k_weights[tok, pos, None]
            final.index_add_(0, tok, h)
        return final


class MoEBlock(nn.Module):
    """Router ``Linear`` (H -> E), softmax, top-2, renormalised weights, fused experts; x (B, S, H)."""

    def __init__(self, experts: int, hidden: int, inter: int) -> None:
        super().__init__()
        self.router = nn.Linear(hidden, experts, bias=False)
        self.experts = FusedExperts(experts, hidden, inter)

    def forward(self, x: Tensor) -> Tensor:
        b, s, h = x.shape
        flat = x.reshape(-1, h)
        w, idx = torch.topk(F.softmax(self.router(flat), dim=-1), 2, dim=-1)
        out: Tensor = self.experts(flat, idx, w / w.sum(-1, keepdim=True)).reshape(b, s, h)
        return out


class TinyMoE(nn.Module):
    """x (B, S, 8) -> Linear -> two residual MoE blocks (no norm) -> Linear head (B, S, 4)."""

    def __init__(self, experts: int = 3, hidden: int = 12, inter: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(8, hidden)
        self.blocks = nn.ModuleList([MoEBlock(experts, hidden, inter) for _ in range(2)])
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for b in self.blocks:
            h = h + b(h)
        out: Tensor = self.head(h)
        return out


class FunctionalMLP(nn.Module):
    """Raw weights in functional linear maps: ``relu(fc1(x)) @ w`` (w (6, 7): rows in, columns out), then
    ``F.linear(h, w2, b2)`` (w2 (5, 7), b2 (5,)), then ``fc2``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.w = nn.Parameter(torch.randn(6, 7) / 6**0.5)
        self.w2 = nn.Parameter(torch.randn(5, 7) / 7**0.5)
        self.b2 = nn.Parameter(torch.randn(5))
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(torch.relu(self.fc1(x)) @ self.w)
        out: Tensor = self.fc2(torch.relu(F.linear(h, self.w2, self.b2)))
        return out


# -- helpers ---------------------------------------------------------------------------------------------------


def _x() -> Tensor:
    return torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(3))


def _group_with(groups: list[Group], fqn: str, part: str) -> tuple[int, Group]:
    return next((i, g) for i, g in enumerate(groups) if any(m.fqn == fqn and m.part == part for m in g.members))


def _members(g: Group) -> set[tuple[str, str, int | None, int, int]]:
    return {(m.fqn, m.part, m.dim, m.block, m.offset) for m in g.members}


# -- (a) a hand-written Mixtral-style layer --------------------------------------------------------------------


def test_intermediate_units_of_fused_experts_form_one_group_per_layer() -> None:
    groups = build_groups(TinyMoE().eval(), _x())
    for b in ("blocks.0", "blocks.1"):
        _, g = _group_with(groups, f"{b}.experts.gate_up_proj", "producer")
        assert g.prunable and g.size == 5, g.reasons
        # every expert hit by the example indexes the same tensors: one group, gate rows at 0, up rows at I
        assert _members(g) == {
            (f"{b}.experts.gate_up_proj", "producer", 1, 1, 0),
            (f"{b}.experts.gate_up_proj", "producer", 1, 1, 5),
            (f"{b}.experts.down_proj", "consumer", 2, 1, 0),
        }
        assert not g.producers and g.param_producers and g.label == f"{b}.experts.gate_up_proj"
        assert {m.axis for m in g.members if m.fqn.endswith("down_proj")} == {"in"}
        assert sum(any(m.fqn == f"{b}.experts.gate_up_proj" and m.dim == 1 for m in g.members) for g in groups) == 1


def test_stream_passes_through_router_and_experts() -> None:
    groups = build_groups(TinyMoE().eval(), _x())
    _, stream = _group_with(groups, "embed", "producer")
    assert stream.prunable and stream.size == 12, stream.reasons
    assert {m for m in _members(stream) if "blocks.0" in m[0]} == {
        ("blocks.0.router", "consumer", None, 1, 0),
        ("blocks.0.experts.gate_up_proj", "consumer", 2, 1, 0),
        ("blocks.0.experts.down_proj", "producer", 1, 1, 0),
    }
    _, routes = _group_with(groups, "blocks.0.router", "producer")
    assert not routes.prunable and any("softmax over the channel dim" in r for r in routes.reasons)


def test_halving_every_group_is_exact_andassert_replays() -> None:
    model = TinyMoE()
    x = _x()
    _, plan, slim = halve_exactly(model, x)
    entries = {(e.module, e.axis): e for e in plan.entries}
    gu = entries[("blocks.0.experts.gate_up_proj", "out")]
    assert gu.size == 10 and len(gu.kept) == 4  # both halves: gate rows c and up rows 5 + c
    assert [k for k in gu.kept if k >= 5] == [k + 5 for k in gu.kept if k < 5]
    assert entries[("blocks.0.experts.down_proj", "in")].kept == tuple(k for k in gu.kept if k < 5)
    stream = (entries[("blocks.0.experts.gate_up_proj", "in")], entries[("blocks.0.experts.down_proj", "out")])
    assert [e.size for e in stream] == [12, 12] and stream[0].kept == stream[1].kept
    experts = slim.get_submodule("blocks.0.experts")
    assert experts.gate_up_proj.shape == (3, 4, 6) and experts.down_proj.shape == (3, 6, 2)
    assert isinstance(experts.gate_up_proj, nn.Parameter)
    assert (experts.intermediate_dim, experts.hidden_dim) == (2, 6)  # widths follow the weights
    assert_replays(TinyMoE, slim, plan, x)


def test_an_example_hitting_some_experts_plans_for_all() -> None:
    """One token reaches 2 of the 3 experts: the group is the same (the tensor is fused), and the plan is exact on
    inputs that reach every expert."""
    model = TinyMoE().eval()
    x = _x()
    one = x[:1, :1]
    groups = build_groups(model, one)
    gi, g = _group_with(groups, "blocks.0.experts.gate_up_proj", "producer")
    assert g.prunable and g.size == 5
    kept = {gi: torch.tensor([0, 3])}
    slim = apply_plan_(copy.deepcopy(model), plan_for_groups(model, groups, kept))
    assert slim.get_submodule("blocks.0.experts").gate_up_proj.shape == (3, 4, 12)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), zero_removed_units(model, groups, kept)(x), rtol=1e-5, atol=1e-5)


def test_structured_plan_ranks_intermediate_units_by_l2_norm() -> None:
    model = TinyMoE().eval()
    with torch.no_grad():
        for b in model.blocks:
            for c in (1, 3):  # tiny gate row, up row and down column in every expert
                b.experts.gate_up_proj[:, [c, 5 + c]] *= 1e-3
                b.experts.down_proj[:, :, c] *= 1e-3
    x = _x()
    config = StructuredConfig(ratio=0.4, types=("FusedExperts",))
    plan = structured_plan(model, x, config)
    entries = {(e.module, e.axis): e.kept for e in plan.entries}
    pairs = (("gate_up_proj", "out"), ("down_proj", "in"))
    assert set(entries) == {(f"blocks.{i}.experts.{p}", a) for i in (0, 1) for p, a in pairs}
    assert entries[("blocks.0.experts.down_proj", "in")] == (0, 2, 4)
    assert entries[("blocks.1.experts.gate_up_proj", "out")] == (0, 2, 4, 5, 7, 9)
    slim = apply_plan_(copy.deepcopy(model), plan)
    with torch.no_grad():
        assert slim(x).shape == (2, 6, 4)


def test_param_unit_scores_are_l2_norms_across_experts() -> None:
    t = torch.randn(3, 10, 12)
    gate = param_unit_scores(t, Member("w", "param", 1, 0, 1, "producer"), 5)
    up = param_unit_scores(t, Member("w", "param", 1, 5, 1, "producer"), 5)
    torch.testing.assert_close(gate, t[:, :5].pow(2).sum((0, 2)).sqrt())
    torch.testing.assert_close(up, t[:, 5:].pow(2).sum((0, 2)).sqrt())
    blocks = param_unit_scores(t, Member("w", "param", 2, 0, 2, "consumer"), 6)  # a unit is 2 columns
    torch.testing.assert_close(blocks, t.reshape(3, 10, 6, 2).pow(2).sum((0, 1, 3)).sqrt())


def test_default_types_leave_the_experts_whole() -> None:
    plan = structured_plan(TinyMoE().eval(), _x(), StructuredConfig(ratio=0.5))
    assert not any("experts" in e.module for e in plan.entries)


def test_fused_expert_groups_are_not_folded_or_analysed_for_dead_units() -> None:
    model = TinyMoE().eval()
    groups = build_groups(model, _x())
    umap = UnitMap(model, groups)
    gi, _ = _group_with(groups, "blocks.0.experts.gate_up_proj", "producer")
    si, _ = _group_with(groups, "embed", "producer")
    assert gi not in umap.tracked and si not in umap.tracked


# -- sizes the plan rule cannot tell apart ------------------------------------------------------------------------


def test_hidden_equal_to_twice_intermediate_freezes_the_intermediate_units() -> None:
    """gate_up_proj (3, 10, 10): a plan entry of 10 units would slice its last dim (the hidden one)."""
    groups = build_groups(TinyMoE(hidden=10, inter=5).eval(), _x())
    _, g = _group_with(groups, "blocks.0.experts.gate_up_proj", "producer")
    assert not g.prunable and g.size == 10  # frozen before chunk could cut it into gate and up
    assert any("gate_up_proj (3, 10, 10) varies along the channels on its dim 1" in r and "(dim 2)" in r for r in g.reasons)
    _, stream = _group_with(groups, "embed", "producer")
    assert stream.prunable, stream.reasons


def test_hidden_equal_to_intermediate_freezes_the_stream() -> None:
    """down_proj (3, 6, 6): the stream's plan entry of 6 units would slice dim 2 (the intermediate one)."""
    groups = build_groups(TinyMoE(hidden=6, inter=6).eval(), _x())
    _, stream = _group_with(groups, "embed", "producer")
    assert not stream.prunable
    assert any("down_proj (3, 6, 6) varies along the channels on its dim 1" in r for r in stream.reasons)
    _, g = _group_with(groups, "blocks.0.experts.gate_up_proj", "producer")
    assert g.prunable, g.reasons


def test_plan_entries_resolving_to_one_dim_are_refused() -> None:
    model = TinyMoE(hidden=10, inter=5)
    plan = PrunePlan(
        (
            PlanEntry("blocks.0.experts.gate_up_proj", "out", 10, (0, 1)),
            PlanEntry("blocks.0.experts.gate_up_proj", "in", 10, (0, 1)),
        )
    )
    with pytest.raises(PlanError, match=r"slices dim 2 of 'blocks\.0\.experts\.gate_up_proj', as its out entry does"):
        apply_plan_(model, plan)
    assert model.blocks[0].experts.gate_up_proj.shape == (3, 10, 10)


def test_expert_weight_used_elsewhere_freezes() -> None:
    class Leaky(TinyMoE):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) + self.blocks[0].experts.down_proj.sum()

    groups = build_groups(Leaky().eval(), _x())
    _, g = _group_with(groups, "blocks.0.experts.gate_up_proj", "producer")
    assert not g.prunable and any("down_proj is also used by" in r for r in g.reasons), g.reasons


# -- functional linear maps with raw weights ------------------------------------------------------------------


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_matmul_and_functional_linear_with_raw_weights(tracer: Tracing) -> None:
    model = FunctionalMLP()
    x = torch.randn(3, 4)
    groups, plan, slim = halve_exactly(model, x, tracer)
    _, a = _group_with(groups, "fc1", "producer")
    assert _members(a) == {("fc1", "producer", None, 1, 0), ("w", "consumer", 0, 1, 0)}
    _, b = _group_with(groups, "w", "producer")
    assert b.prunable and _members(b) == {("w", "producer", 1, 1, 0), ("w2", "consumer", 1, 1, 0)}
    _, c = _group_with(groups, "w2", "producer")
    assert _members(c) == {("w2", "producer", 0, 1, 0), ("b2", "follower", 0, 1, 0), ("fc2", "consumer", None, 1, 0)}
    assert slim.get_parameter("w").shape == (3, 3) and slim.get_parameter("w2").shape == (2, 3)
    assert slim.get_parameter("b2").shape == (2,)
    assert_replays(FunctionalMLP, slim, plan, x)


# -- (b) Hugging Face Mixtral -----------------------------------------------------------------------------------


def _mixtral() -> tuple[nn.Module, dict[str, Tensor]]:
    T = pytest.importorskip("transformers")
    cfg = T.MixtralConfig(
        hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, vocab_size=64, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    ids = {"input_ids": torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))}
    return T.MixtralForCausalLM(cfg).eval(), ids


def test_mixtral_expert_intermediate_units_are_halved_exactly(tmp_path: Path) -> None:
    from prunekit.structure.persist import load_slim, save_slim

    model, ids = _mixtral()
    before = model.get_experts_implementation()
    config = StructuredConfig(ratio=0.5, types=("MixtralExperts",))
    plan = structured_plan(model, ids, config)
    assert model.get_experts_implementation() == before  # recorded with the eager loop, then switched back
    assert {(e.module, e.axis, e.size, len(e.kept)) for e in plan.entries} == {
        (f"model.layers.{i}.mlp.experts.{p}", a, n, n // 2)
        for i in (0, 1)
        for p, a, n in (("gate_up_proj", "out", 48), ("down_proj", "in", 24))
    }
    slim = apply_plan_(copy.deepcopy(model), plan).eval()
    experts = slim.get_submodule("model.layers.1.mlp.experts")
    assert experts.gate_up_proj.shape == (4, 24, 32) and experts.down_proj.shape == (4, 32, 12)
    assert experts.intermediate_dim == 12

    groups = build_groups(model, ids)
    kept = select_kept(model, groups, config)
    assert sorted(groups[i].label for i in kept) == [f"model.layers.{i}.mlp.experts.gate_up_proj" for i in (0, 1)]
    ref = zero_removed_units(model, groups, kept)
    with torch.no_grad():
        logits = slim(**ids).logits
        torch.testing.assert_close(logits, ref(**ids).logits, rtol=1e-5, atol=1e-5)
        slim.set_experts_implementation("eager")
        torch.testing.assert_close(slim(**ids).logits, logits, rtol=1e-5, atol=1e-5)
        slim.set_experts_implementation(before)

    back = load_slim(save_slim(tmp_path / "slim", slim, plan)).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(**ids).logits, logits, rtol=0, atol=0)


def test_mixtral_stream_through_router_and_experts_is_prunable() -> None:
    """The residual stream reaches the router's and the experts' weights; RMSNorm makes its removal inexact, but
    the slim model runs with every experts implementation and the router's ``hidden_dim`` follows its weight."""
    model, ids = _mixtral()
    groups = build_groups(model, ids)
    si, stream = _group_with(groups, "model.embed_tokens", "producer")
    assert stream.prunable and stream.size == 32, stream.reasons
    assert {m for m in _members(stream) if m[0].startswith("model.layers.0.mlp")} == {
        ("model.layers.0.mlp.gate.weight", "consumer", 1, 1, 0),
        ("model.layers.0.mlp.experts.gate_up_proj", "consumer", 2, 1, 0),
        ("model.layers.0.mlp.experts.down_proj", "producer", 1, 1, 0),
    }
    slim = apply_plan_(copy.deepcopy(model), plan_for_groups(model, groups, {si: torch.arange(0, 32, 2)}))
    assert slim.get_submodule("model.layers.0.mlp.gate").hidden_dim == 16
    with torch.no_grad():
        logits = slim(**ids).logits
        slim.set_experts_implementation("eager")
        torch.testing.assert_close(slim(**ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_mixtral_odd_expert_widths_fall_back_to_the_per_expert_loop() -> None:
    """grouped_mm needs rows of 16 bytes: 24 -> 11 intermediate units (44 bytes) switches the slim model to eager."""
    model, ids = _mixtral()
    plan = structured_plan(model, ids, StructuredConfig(ratio=13 / 24, types=("MixtralExperts",)))
    assert {len(e.kept) for e in plan.entries if e.axis == "in"} == {11}
    slim = apply_plan_(copy.deepcopy(model), plan).eval()
    assert "eager" in str(slim.get_experts_implementation()) and "eager" not in str(model.get_experts_implementation())
    with torch.no_grad():
        assert torch.isfinite(slim(**ids).logits).all()
