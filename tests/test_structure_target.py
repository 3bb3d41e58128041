"""Cost targets: the shorthand, the ratio search, and plans that reach a requested parameter or MAC reduction."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.structure import apply_plan_
from prunekit.structure.compare import count_macs, count_params
from prunekit.structure.importance import (
    GlobalGroups,
    StructuredConfig,
    config_from_dict,
    config_to_dict,
    plan_for_target,
    structured_plan,
)
from prunekit.structure.target import ShrinkTarget, parse_target, solve_increasing
from prunekit.testing.models import TinyConvNet, TinyMLP


@pytest.mark.parametrize(
    ("text", "metric", "reduction"),
    [("macs=2x", "macs", 2.0), ("params=1.5", "params", 1.5), ("MACs 3X", "macs", 3.0), (" params: 4x ", "params", 4.0)],
)
def test_shorthand(text: str, metric: str, reduction: float) -> None:
    t = parse_target(text)
    assert t == ShrinkTarget(metric, reduction)  # type: ignore[arg-type]
    assert parse_target(str(t)) == t


def test_mapping_none_and_instances() -> None:
    assert parse_target({"metric": "macs", "reduction": "2x"}) == ShrinkTarget("macs", 2.0)
    assert parse_target(None) is None and parse_target("none") is None
    t = ShrinkTarget("params", 2)
    assert parse_target(t) is t and str(t) == "params=2x"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("flops=2x", "target"),
        ("macs", "target"),
        ("macs=0.5x", "target.reduction"),
        ("macs=1x", "target.reduction"),
        ({"metric": "macs"}, "target"),
        ({"metric": "latency", "reduction": 2}, "target.metric"),
        ({"metric": "macs", "reduction": "lots"}, "target.reduction"),
        (2.0, "target"),
    ],
)
def test_bad_targets_name_the_field(value: object, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_target(value)
    assert e.value.field == field


def test_config_round_trip_and_shorthand_in_the_dataclass() -> None:
    c = config_from_dict({"target": "macs=2x", "allocator": "global"})
    assert c.target == ShrinkTarget("macs", 2.0)
    d = config_to_dict(c)
    assert d["target"] == "macs=2x" and config_from_dict(d) == c
    assert StructuredConfig(target="params=3x").target == ShrinkTarget("params", 3.0)  # type: ignore[arg-type]
    assert config_to_dict(StructuredConfig())["target"] is None
    with pytest.raises(ConfigError, match="target"):
        config_from_dict({"target": "macs=two"})


# -- the search ----------------------------------------------------------------------------------------------------


def _quadratic(want: float) -> Callable[[float], float]:
    """g(x) = (1 - x)^-2 / want - 1: the reduction of a layer pruned on both sides."""
    return lambda x: (1.0 - x) ** -2 / want - 1.0


def test_solver_lands_within_tolerance() -> None:
    g = _quadratic(3.0)
    seen = solve_increasing(g, 0.0, 0.95, 1 / 3 - 1, 0.2, 1e-3, 12)
    x, v = seen[-1]
    assert abs(v) <= 1e-3 and x == pytest.approx(1 - 3**-0.5, abs=1e-3)
    assert len(seen) <= 4  # a straight line in log coordinates: the secant is nearly exact


def test_solver_stops_at_the_top_when_unreachable() -> None:
    g = _quadratic(1000.0)
    seen = solve_increasing(g, 0.0, 0.9, 1 / 1000 - 1, 0.5, 0.01, 12)
    assert max(x for x, _ in seen) == pytest.approx(0.9) and all(v < 0 for _, v in seen)


def test_solver_steps_around_failures() -> None:
    def g(x: float) -> float:
        if 0.45 < x < 0.55:
            raise RuntimeError("does not divide")
        return (1.0 - x) ** -1 / 3.0 - 1.0

    seen = solve_increasing(g, 0.0, 0.95, 1 / 3 - 1, 0.5, 0.01, 12)  # starts where g fails
    assert abs(seen[-1][1]) <= 0.01

    def never(x: float) -> float:
        raise RuntimeError("does not divide")

    with pytest.raises(RuntimeError, match="divide"):  # nothing evaluated: the last error is raised
        solve_increasing(never, 0.0, 0.95, -0.5, 0.5, 0.01, 12)


# -- plans for a target --------------------------------------------------------------------------------------------

X = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return TinyMLP(16, 12, 8, 4).eval()


def _widths(m: nn.Module) -> list[int]:
    return [mod.out_features for mod in m.modules() if isinstance(mod, nn.Linear)]


def test_hand_computed_closest_plan(caplog: pytest.LogCaptureFixture) -> None:
    """TinyMLP 16-12-8-4, uniform: MACs 16*h1 + h1*h2 + 4*h2 (dense 320). 2x asks for 160: (7, 5) gives 167
    (1.916x) and (7, 4) gives 156 (2.051x); no width pair lands within 1 %, so the closest, (7, 4), is returned
    with a warning."""
    m = _mlp()
    before = copy.deepcopy(m.state_dict())
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.importance"):
        r = plan_for_target(m, X, StructuredConfig(target=ShrinkTarget("macs", 2.0)))
    slim = apply_plan_(copy.deepcopy(m), r.plan)
    assert _widths(slim) == [7, 4, 4]
    assert (r.dense_cost, r.cost) == (320, 156) and r.reduction == pytest.approx(320 / 156)
    assert r.reachable and not r.within and "closest plan" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # the model is not changed


@pytest.mark.parametrize("allocator", [None, GlobalGroups(max_fraction=0.9)])
@pytest.mark.parametrize("target", ["params=1.5x", "macs=1.5x", "params=3x"])
def test_reached_reduction_is_measured_on_the_slim_model(target: str, allocator: GlobalGroups | None) -> None:
    torch.manual_seed(0)
    m = TinyConvNet(3, 16, 32, 5).eval()
    x = torch.randn(1, 3, 8, 8)
    cfg = config_from_dict({"target": target} | ({"allocator": allocator} if allocator else {}))
    r = plan_for_target(m, x, cfg)
    slim = apply_plan_(copy.deepcopy(m), r.plan)
    cost = count_params(slim) if cfg.target.metric == "params" else count_macs(slim, x)  # type: ignore[union-attr]
    dense = count_params(m) if cfg.target.metric == "params" else count_macs(m, x)  # type: ignore[union-attr]
    assert (r.dense_cost, r.cost) == (dense, cost) and r.reduction == pytest.approx(dense / cost)
    assert abs(r.reduction / cfg.target.reduction - 1) <= 0.05  # type: ignore[union-attr]
    assert r.within == (abs(r.reduction / cfg.target.reduction - 1) <= 0.01)  # type: ignore[union-attr]
    assert r.plans <= 16
    assert structured_plan(m, x, cfg).to_dict() == r.plan.to_dict()  # the same search, deterministic


def test_unreachable_target_names_what_is_reachable() -> None:
    with pytest.raises(ConfigError, match=r"unreachable: removing 95% of the eligible units gives [0-9.]+x") as e:
        plan_for_target(_mlp(), X, StructuredConfig(target=ShrinkTarget("params", 1000.0)))
    assert e.value.field == "target"
    with pytest.raises(ConfigError, match="unreachable"):  # nothing eligible: every plan keeps the dense cost
        plan_for_target(_mlp(), X, StructuredConfig(target=ShrinkTarget("macs", 2.0), types=("Conv2d",)))
    with pytest.raises(ConfigError, match="target"):
        plan_for_target(_mlp(), X, StructuredConfig())


def test_attention_heads_are_searched_on_a_split_copy_and_the_plan_replays() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    m = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(16, 3)).eval()
    x = torch.randn(1, 5, 8)
    r = plan_for_target(m, x, StructuredConfig(target=ShrinkTarget("macs", 2.0)))
    assert isinstance(m[1].layers[0].self_attn, nn.MultiheadAttention)  # the caller's modules are back
    assert r.plan.split  # heads were pruned: the plan splits the attention first
    slim = apply_plan_(copy.deepcopy(m), r.plan)
    assert count_macs(slim, x) == r.cost and math.isclose(r.reduction, count_macs(m, x) / r.cost)
    assert abs(r.reduction / 2.0 - 1) <= 0.05
