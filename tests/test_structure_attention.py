"""Heads of ``nn.MultiheadAttention``: ``SplitMultiheadAttention`` is an exact drop-in, its heads are dependency
groups, removing them is exact, and plans (``split``) replay on the original architecture and through save/load.

Exactness of removal, as in ``test_structure_transformers.py``: the model whose removed heads have every producer
slice zeroed (the q/k/v rows and biases of the head: the structured mask applied) and the slim model agree. With
q = k = 0 a head attends uniformly and with v = 0 it outputs zeros, so the two are the same function.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from prunekit.models import MODELS, build_model
from prunekit.structure import (
    Group,
    PlanError,
    PrunePlan,
    SplitMultiheadAttention,
    StructureError,
    apply_plan_,
    build_groups,
    dead_unit_plan,
    split_attention_,
)
from prunekit.structure.attention import attention_split
from prunekit.structure.from_masks import plan_for_groups
from prunekit.structure.importance import StructuredConfig, structured_plan
from prunekit.structure.persist import compose_plans, load_slim, save_slim
from prunekit.structure.plan import merge_plans
from prunekit.testing.structure import zero_removed_units

ENCODER = "test_attention_tiny_encoder"
SPEC = {"name": ENCODER, "kwargs": {}}


@MODELS.register(ENCODER)
def tiny_encoder(d_in: int = 8, d_model: int = 16, heads: int = 4, layers: int = 2, ff: int = 32) -> nn.Module:
    """``Linear`` -> ``nn.TransformerEncoder`` (batch_first, no dropout) -> ``Linear``, per token."""
    layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=ff, dropout=0.0, batch_first=True)
    return nn.Sequential(
        nn.Linear(d_in, d_model), nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.Linear(d_model, 3)
    )


def _encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC).eval()


def _x() -> Tensor:
    return torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))


def _rand_params_(m: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero biases everywhere (MultiheadAttention initialises them to zero, which would hide bias bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def _heads(groups: list[Group]) -> list[Group]:
    return [g for g in groups if any(m.fqn.endswith("q_proj") and m.role == "producer" for m in g.members)]


def _roles(g: Group) -> set[tuple[str, str, int, int]]:
    return {(m.fqn.split(".")[-1], m.role, m.block, m.offset) for m in g.members}


# -- (a) SplitMultiheadAttention == nn.MultiheadAttention ------------------------------------------------------------


def _pair(**kw: Any) -> tuple[nn.MultiheadAttention, SplitMultiheadAttention]:
    torch.manual_seed(0)
    mha = _rand_params_(nn.MultiheadAttention(16, 4, **kw))
    return mha, SplitMultiheadAttention.from_mha(mha)


def _same(mha: nn.Module, split: nn.Module, *args: Tensor, **kw: Any) -> None:
    a_out, a_w = mha(*args, **kw)
    b_out, b_w = split(*args, **kw)
    torch.testing.assert_close(b_out, a_out, atol=1e-5, rtol=1e-5)
    if a_w is None:
        assert b_w is None
    else:
        assert b_w is not None
        torch.testing.assert_close(b_w, a_w, atol=1e-6, rtol=1e-5)


def _masks(kind: str, n: int, lq: int, ls: int, heads: int = 4) -> dict[str, Tensor]:
    """attn_mask / key_padding_mask of a kind; no query row is masked everywhere (that gives NaN in both)."""
    g = torch.Generator().manual_seed(2)
    if kind == "none":
        return {}
    if kind == "causal":
        return {"attn_mask": nn.Transformer.generate_square_subsequent_mask(lq), "is_causal": True}
    bool2 = torch.rand(lq, ls, generator=g) > 0.7
    bool2[:, 0] = False
    kpm = torch.zeros(n, ls, dtype=torch.bool)
    kpm[-1, -1] = True
    if kind == "bool2d":
        return {"attn_mask": bool2}
    if kind == "float2d":
        return {"attn_mask": torch.randn(lq, ls, generator=g)}
    if kind == "bool3d":
        m3 = torch.rand(n * heads, lq, ls, generator=g) > 0.7
        m3[:, :, 0] = False
        return {"attn_mask": m3}
    if kind == "float3d":
        return {"attn_mask": torch.randn(n * heads, lq, ls, generator=g)}
    if kind == "kpm_bool":
        return {"key_padding_mask": kpm}
    if kind == "kpm_float":
        return {"key_padding_mask": torch.zeros(n, ls).masked_fill(kpm, -1e4)}
    if kind == "both_bool":
        return {"attn_mask": bool2, "key_padding_mask": kpm}
    if kind == "both_float":
        return {"attn_mask": torch.randn(lq, ls, generator=g), "key_padding_mask": torch.zeros(n, ls).masked_fill(kpm, -1e4)}
    if kind == "causal_kpm":
        return {
            "attn_mask": nn.Transformer.generate_square_subsequent_mask(lq),
            "is_causal": True,
            "key_padding_mask": kpm.float() * -1e4,
        }
    raise ValueError(kind)


KINDS = [
    "none",
    "causal",
    "bool2d",
    "float2d",
    "bool3d",
    "float3d",
    "kpm_bool",
    "kpm_float",
    "both_bool",
    "both_float",
    "causal_kpm",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("weights", ["none", "avg", "per_head"])
def test_split_equals_mha_self_attention(kind: str, batch_first: bool, weights: str) -> None:
    mha, split = _pair(batch_first=batch_first)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    kw = {"need_weights": weights != "none", "average_attn_weights": weights == "avg", **_masks(kind, 2, 5, 5)}
    _same(mha.eval(), split.eval(), x, x, x, **kw)  # grad enabled: MultiheadAttention takes its documented path
    with torch.no_grad():  # MultiheadAttention's fused fast path where it applies: only float rounding differs
        _same(mha, split, x, x, x, **kw)


@pytest.mark.parametrize("kind", ["none", "bool2d", "float3d", "kpm_bool", "both_float", "causal"])
@pytest.mark.parametrize("weights", ["none", "avg", "per_head"])
def test_split_equals_mha_unbatched(kind: str, weights: str) -> None:
    mha, split = _pair(batch_first=True)
    x = torch.randn(5, 16)
    kw = _masks(kind, 1, 5, 5)
    if "key_padding_mask" in kw:
        kw["key_padding_mask"] = kw["key_padding_mask"][0]
    _same(mha.eval(), split.eval(), x, x, x, need_weights=weights != "none", average_attn_weights=weights == "avg", **kw)


@pytest.mark.parametrize("options", [{}, {"bias": False}, {"add_bias_kv": True}, {"add_zero_attn": True},
                                     {"add_bias_kv": True, "add_zero_attn": True}])  # fmt: skip
@pytest.mark.parametrize("kind", ["none", "both_bool", "float3d"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_split_equals_mha_cross_attention_kdim_vdim_and_options(options: dict[str, Any], kind: str, need_weights: bool) -> None:
    mha, split = _pair(kdim=12, vdim=10, batch_first=True, **options)
    assert not mha._qkv_same_embed_dim and (split.kdim, split.vdim, split.embed_dim) == (12, 10, 16)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 12), torch.randn(2, 7, 10)
    _same(mha.eval(), split.eval(), q, k, v, need_weights=need_weights, **_masks(kind, 2, 5, 7))
    # the same options with one packed in_proj_weight (self-attention, kdim = vdim = embed_dim)
    mha, split = _pair(batch_first=True, **options)
    x = torch.randn(2, 5, 16)
    _same(mha.eval(), split.eval(), x, x, x, need_weights=need_weights, **_masks(kind, 2, 5, 5))


def test_training_mode_dropout_zero_and_gradients_match() -> None:
    mha, split = _pair(batch_first=True, dropout=0.0)
    mha.train(), split.train()
    assert split.training
    x = torch.randn(2, 5, 16)
    for need_weights in (True, False):
        a, _ = mha(x, x, x, need_weights=need_weights)
        b, _ = split(x, x, x, need_weights=need_weights)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    mha.zero_grad(), split.zero_grad()
    mha(x, x, x)[0].square().sum().backward()
    split(x, x, x)[0].square().sum().backward()
    assert mha.in_proj_weight.grad is not None and split.q_proj.weight.grad is not None
    e = 16
    for i, lin in enumerate((split.q_proj, split.k_proj, split.v_proj)):
        torch.testing.assert_close(lin.weight.grad, mha.in_proj_weight.grad[i * e : (i + 1) * e], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(split.out_proj.weight.grad, mha.out_proj.weight.grad, atol=1e-5, rtol=1e-4)


def test_training_mode_dropout_is_applied() -> None:
    _, split = _pair(batch_first=True, dropout=0.5)
    x = torch.randn(2, 5, 16)
    split.train()
    assert not torch.equal(split(x, x, x)[0], split(x, x, x)[0])
    split.eval()
    assert torch.equal(split(x, x, x)[0], split(x, x, x)[0])


def test_is_causal_without_mask_and_bad_masks_raise_like_torch() -> None:
    _, split = _pair(batch_first=True)
    x = torch.randn(2, 5, 16)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        split(x, x, x, is_causal=True)
    with pytest.raises(RuntimeError, match="2D attn_mask"):
        split(x, x, x, attn_mask=torch.zeros(4, 5))
    with pytest.raises(RuntimeError, match="3D attn_mask"):
        split(x, x, x, attn_mask=torch.zeros(2 * 3, 5, 5))
    with pytest.raises(RuntimeError, match="key_padding_mask"):
        split(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(StructureError, match="multiple of num_heads"):
        SplitMultiheadAttention(10, 4)


def test_constructor_matches_multihead_attention_layout() -> None:
    m = SplitMultiheadAttention(16, 4, batch_first=True, add_bias_kv=True)
    assert (m.num_heads, m.head_dim, m.embed_dim) == (4, 4, 16) and m.in_proj_weight is None and not m._qkv_same_embed_dim
    assert [type(c).__name__ for c in m.children()] == ["Linear"] * 6
    assert m.bias_k is not None and tuple(m.bias_k.weight.shape) == (16, 1)
    x = torch.randn(2, 5, 16)
    assert m(x, x, x)[0].shape == (2, 5, 16)


def test_from_mha_refuses_masked_modules_and_other_types() -> None:
    from prunekit.masks import attach_mask_

    mha = nn.MultiheadAttention(16, 4)
    attach_mask_(mha.out_proj, "weight", torch.ones(16, 16, dtype=torch.bool))
    with pytest.raises(StructureError, match="masks"):
        SplitMultiheadAttention.from_mha(mha, "attn")
    with pytest.raises(StructureError, match=r"expected an nn\.MultiheadAttention"):
        SplitMultiheadAttention.from_mha(nn.Linear(2, 2))  # type: ignore[arg-type]


# -- split_attention_ on transformer containers ---------------------------------------------------------------------


def test_split_attention_keeps_encoder_outputs_and_returns_names() -> None:
    model = _rand_params_(_encoder())
    ref = copy.deepcopy(model)
    x = _x()
    assert split_attention_(model) == ["1.layers.0.self_attn", "1.layers.1.self_attn"]
    assert all(isinstance(layer.self_attn, SplitMultiheadAttention) for layer in model[1].layers)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)  # both on the documented (slow) path
    with torch.no_grad():  # nn.TransformerEncoderLayer's fused fast path for the original: float rounding only
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
    assert "1.layers.0.self_attn.q_proj.weight" in model.state_dict()
    assert split_attention_(model) == []  # nothing left to split


def test_nested_tensor_encoder_with_padding_mask_still_runs() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2).eval()  # enable_nested_tensor: the fast path packs padded inputs
    ref = copy.deepcopy(enc)
    split_attention_(enc)
    assert not enc.use_nested_tensor
    x = torch.randn(2, 5, 16)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    with torch.no_grad():
        a, b = ref(x, src_key_padding_mask=pad), enc(x, src_key_padding_mask=pad)
    keep = ~pad  # the nested path returns zeros at padded positions
    torch.testing.assert_close(b[keep], a[keep], atol=1e-4, rtol=1e-4)


def test_decoder_layers_self_and_cross_attention() -> None:
    torch.manual_seed(0)
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0), 2).eval()
    _rand_params_(dec)
    ref = copy.deepcopy(dec)
    assert len(split_attention_(dec)) == 4
    tgt, mem = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    torch.testing.assert_close(dec(tgt, mem, tgt_mask=mask, tgt_is_causal=True), ref(tgt, mem, tgt_mask=mask, tgt_is_causal=True))


def test_split_attention_errors_name_the_module() -> None:
    model = _encoder()
    with pytest.raises(StructureError, match=r"cannot split '0': a Linear"):
        split_attention_(model, ["0"])
    with pytest.raises(StructureError, match="cannot split 'nope': no such module"):
        split_attention_(model, ["nope"])
    assert isinstance(model[1].layers[0].self_attn, nn.MultiheadAttention)  # nothing changed
    with pytest.raises(StructureError, match="the model itself"):
        split_attention_(nn.MultiheadAttention(16, 4))


def test_attention_split_context_puts_the_originals_back() -> None:
    model = _encoder()
    orig = model[1].layers[0].self_attn
    with attention_split(model) as names:
        assert len(names) == 2 and isinstance(model[1].layers[0].self_attn, SplitMultiheadAttention)
    assert model[1].layers[0].self_attn is orig


# -- (b) dependency groups ----------------------------------------------------------------------------------------


def test_unsplit_attention_is_frozen_with_advice() -> None:
    groups = build_groups(_encoder(), _x())
    reasons = [r for g in groups for r in g.reasons]
    assert any("'1.layers.0.self_attn'" in r and "split_attention_(model)" in r for r in reasons)
    assert not _heads(groups)


def test_heads_are_units_of_one_group_per_layer() -> None:
    model = _encoder()
    split_attention_(model)
    groups = build_groups(model, _x())
    heads = _heads(groups)
    assert len(heads) == 2 and all(g.prunable and g.size == 4 for g in heads)
    # one unit = one head: 4 rows of q_proj, k_proj, v_proj and 4 columns of out_proj
    assert _roles(heads[0]) == {("q_proj", "producer", 4, 0), ("k_proj", "producer", 4, 0), ("v_proj", "producer", 4, 0),
                                ("out_proj", "consumer", 4, 0)}  # fmt: skip
    assert {m.fqn.rsplit(".", 2)[0] for m in heads[1].members} == {"1.layers.1"}


@pytest.mark.parametrize("options", [{"add_bias_kv": True, "add_zero_attn": True}, {"bias": False}])
def test_heads_with_options_and_a_padding_mask_input(options: dict[str, Any]) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True, **options)
            self.out = nn.Linear(16, 3)

        def forward(self, x: Tensor, pad: Tensor) -> Tensor:
            h = self.inp(x)
            a, _ = self.attn(h, h, h, key_padding_mask=pad)  # weights returned (averaged) and discarded
            return self.out(a + h)

    torch.manual_seed(0)
    model = _rand_params_(Net()).eval()
    split_attention_(model)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, -1] = True
    groups = build_groups(model, (_x(), pad))
    (heads,) = _heads(groups)
    assert heads.prunable and heads.size == 4
    extra = {("bias_k", "producer", 4, 0), ("bias_v", "producer", 4, 0)} if options.get("add_bias_kv") else set()
    assert {r for r in _roles(heads) if r[0].startswith("bias")} == extra
    _check_exact_head_removal(model, (_x(), pad), groups)


# -- (c) exact removal --------------------------------------------------------------------------------------------


def _run(model: nn.Module, example: Any) -> Tensor:
    with torch.no_grad():
        out: Tensor = model(*example) if isinstance(example, tuple) else model(example)
    return out


def _check_exact_head_removal(model: nn.Module, example: Any, groups: list[Group]) -> nn.Module:
    """Remove heads 1 and 2 of every head group: zeroed reference == slim model; returns the slim model."""
    kept = {i: torch.tensor([0, 3]) for i, g in enumerate(groups) if g in _heads(groups)}
    ref = zero_removed_units(model, groups, kept)
    slim = apply_plan_(copy.deepcopy(model), plan_for_groups(model, groups, kept))
    torch.testing.assert_close(_run(slim, example), _run(ref, example), atol=1e-5, rtol=1e-5)
    return slim


def test_removing_two_of_four_heads_is_exact_and_updates_num_heads() -> None:
    model = _rand_params_(_encoder())
    split_attention_(model)
    slim = _check_exact_head_removal(model, _x(), build_groups(model, _x()))
    for layer in slim[1].layers:
        att = layer.self_attn
        assert (att.num_heads, att.q_proj.out_features, att.k_proj.out_features, att.out_proj.in_features) == (2, 8, 8, 8)
        assert att.embed_dim == 16
    # the slim module still returns (averaged) attention weights, over the kept heads
    x = torch.randn(2, 5, 16)
    out, w = slim[1].layers[0].self_attn(x, x, x)
    assert out.shape == (2, 5, 16) and w is not None and w.shape == (2, 5, 5)
    assert slim[1].layers[0].self_attn(x, x, x, average_attn_weights=False)[1].shape == (2, 2, 5, 5)


# -- (d) plans: structured_plan, JSON, replay on the original ----------------------------------------------------


def _head_plan(model: nn.Module) -> PrunePlan:
    return structured_plan(model, _x(), StructuredConfig(ratio=0.5, include=("*q_proj",)))


def test_structured_plan_splits_records_and_replays_on_the_original() -> None:
    model = _rand_params_(_encoder())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _head_plan(model)
    # the caller's model is not changed: the split was for the analysis only
    assert isinstance(model[1].layers[0].self_attn, nn.MultiheadAttention)
    assert model.state_dict().keys() == before.keys() and all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert plan.split == ("1.layers.0.self_attn", "1.layers.1.self_attn")
    assert {e.module.rsplit(".", 1)[-1] for e in plan.entries} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    data = json.loads(plan.to_json())
    assert data["version"] == 3 and data["split"] == list(plan.split)
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan

    slim = apply_plan_(copy.deepcopy(model), again)
    assert [layer.self_attn.num_heads for layer in slim[1].layers] == [2, 2]
    # exact: the masked reference (heads zeroed in the split model) equals the slim model
    split = copy.deepcopy(model)
    split_attention_(split)
    groups = build_groups(split, _x())
    kept = {}
    for i, g in enumerate(groups):
        if g in _heads(groups):
            q = next(m.fqn for m in g.members if m.fqn.endswith("q_proj"))
            e = next(e for e in plan.entries if e.module == q and e.axis == "out")
            kept[i] = torch.tensor(sorted({k // 4 for k in e.kept}))  # head_dim 4: kept rows -> kept heads
    assert all(len(k) == 2 for k in kept.values())
    torch.testing.assert_close(_run(slim, _x()), _run(zero_removed_units(split, groups, kept), _x()), atol=1e-5, rtol=1e-5)

    # replay on a freshly built original (nn.MultiheadAttention) and load the slim weights: identical outputs
    fresh = apply_plan_(_encoder(seed=5), PrunePlan.from_json(plan.to_json()))
    fresh.load_state_dict(slim.state_dict())
    assert torch.equal(_run(fresh, _x()), _run(slim, _x()))


def test_plan_without_attention_changes_keeps_the_old_format() -> None:
    model = _encoder()
    plan = structured_plan(model, _x(), StructuredConfig(ratio=0.5, include=("*linear1",)))
    assert plan.split == () and plan.to_dict()["version"] == 1 and "split" not in plan.to_dict()
    assert isinstance(model[1].layers[0].self_attn, nn.MultiheadAttention)
    slim = apply_plan_(copy.deepcopy(model), plan)
    assert isinstance(slim[1].layers[0].self_attn, nn.MultiheadAttention)  # untouched attention is not split


def test_already_split_models_record_their_splits() -> None:
    model = _encoder()
    split_attention_(model)
    plan = structured_plan(model, _x(), StructuredConfig(ratio=0.5, include=("*linear1",)))
    assert plan.split == ("1.layers.0.self_attn", "1.layers.1.self_attn")  # the original has nn.MultiheadAttention
    slim = apply_plan_(copy.deepcopy(model), plan)
    fresh = apply_plan_(_encoder(seed=3), plan)
    fresh.load_state_dict(slim.state_dict())
    assert torch.equal(_run(fresh, _x()), _run(slim, _x()))


def test_merge_and_compose_carry_split() -> None:
    a = PrunePlan(split=("x.attn",))
    b = PrunePlan(split=("x.attn", "y.attn"))
    assert merge_plans([a, b]).split == ("x.attn", "y.attn")
    assert compose_plans(a, b).split == ("x.attn", "y.attn")
    assert PrunePlan.from_json(json.dumps({"version": 3, "entries": []})).split == ()
    assert PrunePlan.from_json(json.dumps({"version": 2, "entries": [], "add_bias": [], "depth": []})).split == ()


def test_dead_heads_are_found_and_only_their_module_is_split() -> None:
    model = _rand_params_(_encoder())
    att = model[1].layers[0].self_attn
    with torch.no_grad():  # head 1 of layer 0: no inputs (q, k, v rows and biases zero): it outputs zeros
        for part in range(3):
            rows = slice(part * 16 + 4, part * 16 + 8)
            att.in_proj_weight[rows] = 0
            att.in_proj_bias[rows] = 0
    plan, report = dead_unit_plan(model, _x())
    assert isinstance(model[1].layers[0].self_attn, nn.MultiheadAttention)
    assert plan.split == ("1.layers.0.self_attn",)
    q = next(e for e in plan.entries if e.module == "1.layers.0.self_attn.q_proj" and e.axis == "out")
    assert q.kept == (0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15) and report.no_inputs == 1
    slim = apply_plan_(copy.deepcopy(model), plan)
    torch.testing.assert_close(_run(slim, _x()), _run(model, _x()), atol=1e-5, rtol=1e-5)


# -- (e) save_slim -> load_slim -----------------------------------------------------------------------------------


def test_save_slim_load_slim_with_split_attention(tmp_path: Path) -> None:
    model = _rand_params_(_encoder())
    plan = structured_plan(model, _x(), StructuredConfig(ratio=0.5))  # heads, residual stream and MLPs
    assert plan.split and any(e.module.endswith("q_proj") and e.axis == "out" for e in plan.entries)
    slim = apply_plan_(copy.deepcopy(model), plan)
    out = save_slim(tmp_path / "slim", slim, plan, model_spec=SPEC)
    loaded = load_slim(out).eval()
    assert isinstance(loaded[1].layers[1].self_attn, SplitMultiheadAttention)
    assert loaded[1].layers[1].self_attn.num_heads == slim[1].layers[1].self_attn.num_heads == 2
    assert torch.equal(_run(loaded, _x()), _run(slim, _x()))
    # a plan lacking the split does not fit the original architecture: refused when saving
    with pytest.raises(PlanError, match=r"has no module '1\.layers\.0\.self_attn\.q_proj'"):
        save_slim(tmp_path / "bad", slim, dataclasses.replace(plan, split=()), model_spec=SPEC)


# -- (f) bad splits ------------------------------------------------------------------------------------------------


def test_bad_split_names_raise_plan_errors_and_change_nothing() -> None:
    model = _encoder()
    with pytest.raises(PlanError, match=r"plan split 0 \(0\): only nn.MultiheadAttention .* not Linear"):
        apply_plan_(model, PrunePlan(split=("0",)))
    with pytest.raises(PlanError, match=r"plan split 0 .*: the model has no module 'missing'"):
        apply_plan_(model, PrunePlan(split=("missing",)))
    # a bad entry after a good split: the split is undone
    plan = PrunePlan((), split=("1.layers.0.self_attn",))
    bad = PrunePlan.from_dict({**plan.to_dict(), "entries": [{"module": "1.layers.0.self_attn.q_proj", "axis": "out",
                                                              "size": 99, "kept": [0]}]})  # fmt: skip
    with pytest.raises(PlanError, match="plan expects 99 units"):
        apply_plan_(model, bad)
    assert isinstance(model[1].layers[0].self_attn, nn.MultiheadAttention)
    for raw, msg in [
        ({"version": 3, "entries": [], "split": "a"}, "'split' must be a list"),
        ({"version": 3, "entries": [], "split": [""]}, "plan split 0: must be the non-empty path"),
        ({"version": 3, "entries": [], "split": ["a", "a"]}, "duplicate modules"),
        ({"version": 2, "entries": [], "split": ["a"]}, r"version 2: unknown keys \['split'\]"),
    ]:
        with pytest.raises(PlanError, match=msg):
            PrunePlan.from_dict(raw)
    with pytest.raises(PlanError, match="inside block"):
        PrunePlan.from_dict({"version": 3, "entries": [], "add_bias": [], "split": ["1.layers.0.self_attn"],
                             "depth": [{"module": "1.layers.0", "class": "TransformerEncoderLayer", "output": "tensor",
                                        "length": 1}]})  # fmt: skip


def test_masked_attention_is_not_split_by_a_plan() -> None:
    from prunekit.masks import attach_mask_

    model = _encoder()
    attach_mask_(model[1].layers[0].self_attn.out_proj, "weight", torch.ones(16, 16, dtype=torch.bool))
    with pytest.raises(PlanError, match="carries prunekit masks"):
        apply_plan_(model, PrunePlan(split=("1.layers.0.self_attn",)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = _head_plan(model)  # the masked module stays whole: only layer 1's heads go
    assert plan.split == ("1.layers.1.self_attn",)


def test_cli_shrink_prunes_heads_of_an_nn_transformer_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prunekit import load_checkpoint, save_checkpoint
    from prunekit.checkpoint import PLAN
    from prunekit.cli.main import main

    src = save_checkpoint(tmp_path / "in", _encoder(), model_spec=SPEC, extra={"input_shape": [2, 5, 8]})
    out = tmp_path / "slim"
    args = ["shrink", "--model", str(src), "--ratio", "0.5", "--include", "*q_proj", "--batch-size", "2", "--threads", "1"]
    assert main([*args, "--repeats", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    plan = PrunePlan.from_json((out / PLAN).read_text())
    assert plan.split == ("1.layers.0.self_attn", "1.layers.1.self_attn")
    slim = load_checkpoint(out).model.eval()
    assert [layer.self_attn.num_heads for layer in slim[1].layers] == [2, 2]
    # the input checkpoint still loads as the original architecture
    assert isinstance(load_checkpoint(src).model[1].layers[0].self_attn, nn.MultiheadAttention)
    assert _run(slim, _x()).shape == (2, 5, 3)
