"""Every registered component goes through the same invariants (registry-driven, timm-style)."""

import dataclasses
import itertools

import pytest
import torch

from prunekit import ALLOCATORS, PATTERNS, SCHEDULES, SCORERS, ScoreContext, Target, parse_pattern
from prunekit.allocation import AllocationItem
from prunekit.testing.models import TinyConvNet

PATTERN_EXAMPLES = {"unstructured": "unstructured", "nm": "2:4", "block": "2x2", "channel": "channel"}
SCHEDULE_KW = {
    "oneshot": {"at": 3},
    "constant": {"begin": 2, "every": 3},
    "polynomial": {"begin": 1, "end": 40, "every": 7},
    "iterative": {"rounds": 4, "begin": 0, "every": 9},
}


def test_contract_tables_cover_registries():
    assert set(PATTERN_EXAMPLES) == set(PATTERNS.names())
    assert set(SCHEDULE_KW) == set(SCHEDULES.names())


@pytest.mark.parametrize("name", SCORERS.names())
def test_scorer_contract(name):
    scorer = SCORERS.get(name)()
    model = TinyConvNet()
    ctx = ScoreContext(model, step=4, batch=(torch.randn(2, 3, 6, 6), torch.tensor([0, 3])), loss_fn=lambda m, b: m(b[0]).sum())
    targets = [Target("conv1", "weight", model.conv1), Target("fc", "weight", model.fc)]
    stats = scorer.collect(ctx, targets)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for t in targets:
        s = scorer.score(t, stats, ctx)
        assert s.shape == t.weight.shape and not torch.isnan(s).any()
        assert torch.equal(s, scorer.score(t, stats, ctx))  # deterministic
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # no side effects
    assert dataclasses.is_dataclass(scorer) and scorer.requires


@pytest.mark.parametrize("name", ALLOCATORS.names())
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_allocator_contract(name, sparsity):
    alloc = ALLOCATORS.get(name)()
    shapes = [torch.Size([16, 8, 3, 3]), torch.Size([32, 16]), torch.Size([10, 32]), torch.Size([6, 4])]
    scores = [torch.rand(s).reshape(-1) for s in shapes]
    items = [AllocationItem(f"t{i}", s, s.numel(), lambda i=i: scores[i], 0.25 if i == 3 else None) for i, s in enumerate(shapes)]
    out = alloc.allocate(items, sparsity)
    assert set(out) == {it.key for it in items} and out["t3"] == 0.25
    assert all(0.0 <= v <= 1.0 for v in out.values())
    free = items[:3]
    pruned = sum(round(out[it.key] * it.num_units) for it in free)
    total = sum(it.num_units for it in free)
    if name == "uniform":
        assert all(out[it.key] == sparsity for it in free)
    else:
        assert pruned == round(sparsity * total)  # exact overall count


@pytest.mark.parametrize("name", PATTERNS.names())
def test_pattern_contract(name):
    pat = parse_pattern(PATTERN_EXAMPLES[name])
    scores = torch.rand(8, 4, 3, 3)
    levels = [0.0, 0.25, 0.5] if name == "nm" else [0.0, 0.3, 0.6, 0.9]
    prev = None
    for s in levels:
        keep = pat.select(scores, s)
        assert keep.shape == scores.shape and keep.dtype == torch.bool
        kept_units = int(pat.unit_scores(keep.float()).gt(0).sum())
        if name != "nm":
            assert pat.num_units(scores.shape) - kept_units == round(s * pat.num_units(scores.shape))
        if prev is not None:
            assert (keep <= prev).all()  # same scores, higher sparsity: a subset
        prev = keep
    assert parse_pattern(pat.shorthand()) == pat


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_contract(name):
    sch = SCHEDULES.get(name)(**SCHEDULE_KW[name])
    target = 0.8
    vals = [sch.sparsity_at(t, target) for t in range(200)]
    assert all(0.0 <= v <= target for v in vals)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(vals))
    assert sch.is_update_step(sch.final_step()) and sch.sparsity_at(sch.final_step(), target) == target
    assert vals[-1] == target
