"""PrunePlan: JSON round trip, validation on load naming the bad entry, safe replay."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunekit.masks import attach_mask_
from prunekit.structure import PlanEntry, PlanError, PrunePlan, StructureError, apply_plan_


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))


PLAN = PrunePlan((PlanEntry("0", "out", 5, (0, 2, 4)), PlanEntry("2", "in", 5, (0, 2, 4))))


def test_json_round_trip() -> None:
    text = PLAN.to_json()
    assert json.loads(text) == {
        "version": 1,
        "entries": [
            {"module": "0", "axis": "out", "size": 5, "kept": [0, 2, 4]},
            {"module": "2", "axis": "in", "size": 5, "kept": [0, 2, 4]},
        ],
    }
    assert PrunePlan.from_json(text) == PLAN


def test_apply_updates_tensors_and_attributes() -> None:
    m = _mlp()
    x = torch.randn(3, 4)
    w0, w2 = m[0].weight.detach().clone(), m[2].weight.detach().clone()
    apply_plan_(m, PLAN)
    assert (m[0].out_features, m[2].in_features) == (3, 3)
    torch.testing.assert_close(m[0].weight, w0[[0, 2, 4]])
    torch.testing.assert_close(m[2].weight, w2[:, [0, 2, 4]])
    assert m(x).shape == (3, 2)


def test_tensor_view_lists_changed_tensors_without_changing_the_model() -> None:
    m = _mlp()
    assert PLAN.tensor_view(m) == [("0.weight", (5, 4), (3, 4)), ("0.bias", (5,), (3,)), ("2.weight", (2, 5), (2, 3))]
    assert m[0].out_features == 5


def test_replaying_twice_is_refused_before_any_change() -> None:
    m = apply_plan_(_mlp(), PLAN)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(PlanError, match=r"plan entry 0 \(0.out\): plan expects 5 units, the module has 3"):
        apply_plan_(m, PLAN)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"module": "0", "axis": "up", "size": 5, "kept": [0]}, r"plan entry 0 \(0\): 'axis' must be 'out' or 'in'"),
        ({"module": "0", "axis": "out", "size": 5, "kept": [2, 1]}, r"plan entry 0 \(0.out\): 'kept' must be strictly"),
        ({"module": "0", "axis": "out", "size": 5, "kept": [5]}, r"in \[0, 5\)"),
        ({"module": "0", "axis": "out", "size": 5, "kept": []}, "'kept' is empty"),
        ({"module": "0", "axis": "out", "size": 5, "kept": [0.5]}, "'kept' must hold integers"),
        ({"module": "0", "axis": "out", "size": 0, "kept": [0]}, "'size' must be a positive integer"),
        ({"module": "0", "axis": "out", "kept": [0]}, "expected keys module, axis, size, kept"),
    ],
)
def test_from_json_validates_and_names_the_entry(entry: dict[str, object], match: str) -> None:
    with pytest.raises(PlanError, match=match):
        PrunePlan.from_json(json.dumps({"version": 1, "entries": [entry]}))


def test_from_json_rejects_bad_documents() -> None:
    with pytest.raises(PlanError, match="not valid JSON"):
        PrunePlan.from_json("{")
    with pytest.raises(PlanError, match="version 4; this prunekit reads versions 1, 2, 3"):
        PrunePlan.from_json('{"version": 4, "entries": []}')
    with pytest.raises(PlanError, match=r"version 1: unknown keys \['depth'\]"):
        PrunePlan.from_json('{"version": 1, "entries": [], "depth": []}')
    with pytest.raises(PlanError, match="duplicate"):
        PrunePlan((PlanEntry("0", "out", 5, (0,)), PlanEntry("0", "out", 5, (1,))))


def test_apply_errors_name_module() -> None:
    with pytest.raises(PlanError, match=r"plan entry 0 \(9.out\): the model has no module '9'"):
        apply_plan_(_mlp(), PrunePlan((PlanEntry("9", "out", 5, (0,)),)))
    m = nn.Sequential(nn.ConvTranspose2d(2, 2, 3))
    with pytest.raises(StructureError, match="'0' of type ConvTranspose2d has no structure handler"):
        apply_plan_(m, PrunePlan((PlanEntry("0", "out", 2, (0,)),)))
    masked = _mlp()
    attach_mask_(masked[0], "weight")
    with pytest.raises(PlanError, match=r"finalize_"):
        apply_plan_(masked, PLAN)


def test_error_types_are_prunekit_errors() -> None:
    from prunekit.errors import PrunekitError

    assert issubclass(PlanError, StructureError) and issubclass(StructureError, PrunekitError)


def test_handler_refusal_leaves_the_model_untouched() -> None:
    m = nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 1))
    plan = PrunePlan(
        (PlanEntry("0", "out", 4, (0, 1, 2)), PlanEntry("1", "out", 4, (0, 1, 2)), PlanEntry("2", "in", 4, (0, 1, 2)))
    )
    with pytest.raises(StructureError, match=r"GroupNorm.*groups \[1\] would be split"):
        apply_plan_(m, plan)
    assert (m[0].out_channels, m[1].num_channels, m[2].in_channels) == (4, 4, 4)
    apply_plan_(
        m, PrunePlan((PlanEntry("0", "out", 4, (2, 3)), PlanEntry("1", "out", 4, (2, 3)), PlanEntry("2", "in", 4, (2, 3))))
    )
    assert (m[0].out_channels, m[1].num_groups, m[2].in_channels) == (2, 1, 2)


def test_add_bias_entry_adds_a_zero_bias_once() -> None:
    plan = PrunePlan((PlanEntry("0", "out", 5, (1, 3)),), add_bias=("0",))
    m = apply_plan_(nn.Sequential(nn.Linear(4, 5, bias=False)), plan)
    assert m[0].bias is not None and m[0].bias.shape == (2,) and not m[0].bias.any()
    assert "0.bias" in m.state_dict()
    with torch.device("meta"):  # persistence rehearses the load on the meta device
        meta = apply_plan_(nn.Sequential(nn.Linear(4, 5, bias=False)), plan)
    assert meta[0].bias.shape == (2,)
    has_bias = nn.Sequential(nn.Linear(4, 5))
    b = has_bias[0].bias.detach().clone()
    apply_plan_(has_bias, PrunePlan(add_bias=("0",)))  # the folded model already has it: left alone
    assert torch.equal(has_bias[0].bias, b)
    assert PrunePlan.from_json(plan.to_json()) == plan
    with pytest.raises(PlanError, match=r"plan add_bias 0: a bias can only be added to Linear, Conv1d, Conv2d, Conv3d, not ReLU"):
        apply_plan_(nn.Sequential(nn.ReLU()), PrunePlan(add_bias=("0",)))
    with pytest.raises(PlanError, match=r"plan add_bias: duplicate modules"):
        PrunePlan(add_bias=("0", "0"))
