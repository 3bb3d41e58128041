"""Dead units after unstructured pruning: found to a fixed point across layers, removed exactly, counted per group."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from prunekit.masks import attach_mask_, finalize_
from prunekit.structure import apply_plan_
from prunekit.structure.dead_units import DeadUnitReport, dead_unit_plan
from prunekit.structure.folding import FoldReport, fold_removed_


def _mask_(module: nn.Module, zero: list[tuple[object, ...]]) -> None:
    """Element mask on ``module.weight`` with the given index expressions pruned, plus 30 % random sparsity."""
    keep = torch.rand_like(module.weight) > 0.3
    for idx in zero:
        keep[idx] = False
    attach_mask_(module, "weight", keep)


def _slim_exactly(model: nn.Module, x: Tensor) -> tuple[nn.Module, DeadUnitReport, FoldReport]:
    model.eval()
    with torch.no_grad():
        ref = model(x)
    plan, report = dead_unit_plan(model, x)
    plan, fold = fold_removed_(model, plan, x)
    assert not fold.kept  # everything the analysis found is removable exactly
    finalize_(model)
    slim = apply_plan_(copy.deepcopy(model), plan)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), ref, rtol=0, atol=1e-5)
    return slim, report, fold


class MLP3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 10)
        self.fc2 = nn.Linear(10, 9)
        self.fc3 = nn.Linear(9, 4)
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                fc.bias.uniform_(0.1, 1.0)  # constants survive the ReLU: folding is needed

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out


def test_mlp_dead_units_cascade_both_ways() -> None:
    model = MLP3()
    rows_except_3 = [r for r in range(9) if r != 3]
    _mask_(model.fc1, [(2,)])  # fc1 unit 2: no inputs
    _mask_(
        model.fc2,
        [
            (slice(None), 5),  # fc1 unit 5: no outputs
            (rows_except_3, 7),  # fc1 unit 7 feeds only fc2 unit 3 ...
            (6, [c for c in range(10) if c != 2]),  # fc2 unit 6 is fed only by fc1 unit 2 (constant): constant too
        ],
    )
    _mask_(model.fc3, [(slice(None), 3)])  # ... which has no outputs: fc1 unit 7 has none either
    with torch.no_grad():
        model.fc2.weight[3, 7] = 1.0  # (re-set in case the random mask had pruned it; masks re-zero pruned entries)
    model.fc2.weight_mask[3, 7] = True  # type: ignore[index]
    slim, report, _ = _slim_exactly(model, torch.randn(16, 8))
    counts = {g.group: (g.no_inputs, g.no_outputs) for g in report.groups}
    assert counts["fc1"][0] >= 1 and counts["fc1"][1] >= 2  # unit 2 constant; units 5 and 7 unused
    assert counts["fc2"][0] >= 1 and counts["fc2"][1] >= 1  # unit 6 constant; unit 3 unused
    assert report.rounds >= 2
    assert slim.fc1.out_features == 10 - sum(counts["fc1"]) and slim.fc2.out_features == 9 - sum(counts["fc2"])
    assert "| fc1 | 10 |" in report.to_markdown()


def test_mlp_exact_counts_without_random_sparsity() -> None:
    model = MLP3()
    keep1 = torch.ones(10, 8, dtype=torch.bool)
    keep1[2] = False
    keep2 = torch.ones(9, 10, dtype=torch.bool)
    keep2[:, 5] = False
    keep2[[r for r in range(9) if r != 3], 7] = False
    keep2[6, [c for c in range(10) if c != 2]] = False
    keep3 = torch.ones(4, 9, dtype=torch.bool)
    keep3[:, 3] = False
    for fc, k in ((model.fc1, keep1), (model.fc2, keep2), (model.fc3, keep3)):
        attach_mask_(fc, "weight", k)
    slim, report, fold = _slim_exactly(model, torch.randn(16, 8))
    assert fold.folded == 2  # fc1.2 into fc2 and fc2.6 into fc3 (fc1.2 also fed fc2.6, which goes)
    assert [(g.group, g.size, g.no_inputs, g.no_outputs) for g in report.groups] == [("fc1", 10, 1, 2), ("fc2", 9, 1, 1)]
    assert report.rounds == 3  # fc2.3 unused, then fc1.7 unused, then nothing new
    assert (slim.fc1.out_features, slim.fc2.in_features, slim.fc2.out_features, slim.fc3.in_features) == (7, 7, 7, 7)


class ResFlatNet(nn.Module):
    """stem conv-BN-ReLU, a residual block relu(x + BN(conv(x))), conv (valid) - ReLU - flatten - Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 5)
        with torch.no_grad():
            for bn in (self.bn0, self.bn_a):
                bn.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
                bn.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
                bn.bias.uniform_(0.1, 0.5)
            self.conv2.bias.uniform_(0.2, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn0(self.stem(x)))  # (B, 8, 6, 6)
        x = torch.relu(x + self.bn_a(self.conv_a(x)))
        x = torch.relu(self.conv2(x))  # (B, 6, 4, 4)
        out: Tensor = self.fc(x.flatten(1))
        return out


def test_conv_net_flatten_and_residual() -> None:
    model = ResFlatNet()
    _mask_(model.conv_a, [(3,), (slice(None), 5)])  # stream unit 3 dead in the branch only; unit 5 read by nobody ...
    _mask_(model.conv2, [(1,), (slice(None), 5)])  # ... (conv2 ignores it too); conv2 filter 1: no inputs
    fc_keep = torch.ones(5, 6 * 16, dtype=torch.bool)
    fc_keep[:, 4 * 16 : 5 * 16] = False  # conv2 channel 4 (a block of 16 flattened features) feeds nothing
    attach_mask_(model.fc, "weight", fc_keep)
    slim, report, fold = _slim_exactly(model, torch.randn(4, 3, 6, 6))
    assert fold.folded == 1 and fold.changed == ("fc.bias",)  # conv2 filter 1: 16 per-feature constants
    counts = {g.group: (g.no_inputs, g.no_outputs) for g in report.groups}
    assert counts["conv2"] == (1, 1)
    assert counts["stem"] == (0, 1)  # unit 5 of the residual stream: no outputs anywhere
    assert slim.bn0.num_features == slim.bn_a.num_features == slim.conv_a.out_channels == 7  # unit 3 stays
    assert slim.conv2.out_channels == 4 and slim.fc.in_features == 4 * 16
    assert ("fc", "model output") in report.skipped


def test_no_dead_units_gives_an_empty_plan() -> None:
    model = MLP3().eval()
    plan, report = dead_unit_plan(model, torch.randn(4, 8))
    assert len(plan) == 0 and report.groups == () and report.no_inputs == report.no_outputs == 0


def test_tiny_llama_dead_heads_and_mlp_units() -> None:
    """Recorded graph (no fx): a key/value group whose o_proj columns are pruned and MLP units without outputs or
    inputs are removed; the slim model computes the same hidden states."""
    transformers = pytest.importorskip("transformers")
    from prunekit.structure.handlers import sync_attention_attributes_

    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100
    )
    model = transformers.LlamaModel(config).eval()
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight[:, [3, 9, 20]] = 0  # no outputs
        model.layers[1].mlp.gate_proj.weight[5] = 0  # no inputs in both gating producers: silu(0) * 0 = 0
        model.layers[1].mlp.up_proj.weight[5] = 0
        model.layers[1].self_attn.o_proj.weight[:, :16] = 0  # query heads 0-1, i.e. key/value head 0: no outputs
    ids = {"input_ids": torch.randint(0, 100, (2, 7))}
    with torch.no_grad():
        ref = model(**ids).last_hidden_state
    plan, report = dead_unit_plan(model, ids)
    assert sorted((g.group, g.no_inputs, g.no_outputs) for g in report.groups) == [
        ("layers.0.mlp.gate_proj", 0, 3),
        ("layers.1.mlp.gate_proj", 1, 0),
        ("layers.1.self_attn.k_proj", 0, 1),
    ]
    plan, fold = fold_removed_(model, plan, ids)
    assert fold.removed == 5 and fold.folded == 0 and not fold.kept
    slim = apply_plan_(copy.deepcopy(model), plan)
    sync_attention_attributes_(slim)
    assert slim.layers[1].self_attn.q_proj.out_features == 16 and slim.layers[1].self_attn.k_proj.out_features == 8
    with torch.no_grad():
        torch.testing.assert_close(slim(**ids).last_hidden_state, ref, rtol=0, atol=1e-5)
