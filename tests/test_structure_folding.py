"""Folding: units with all incoming weights masked are removed exactly although their bias / BatchNorm shift is not 0."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from prunekit.masks import attach_mask_, finalize_
from prunekit.models import build_model
from prunekit.patterns import Channel
from prunekit.pruner import Pruner
from prunekit.recipe import PruneRecipe, Targets
from prunekit.structure import PlanEntry, PrunePlan, apply_plan_, plan_from_masks
from prunekit.structure.folding import FoldReport, fold_removed_


@torch.no_grad()
def _randomize_(model: nn.Module) -> None:
    """Non-zero biases and BatchNorm statistics everywhere, so removed units emit non-zero constants."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            m.bias.uniform_(-0.5, 1.0)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
            m.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 1.0)


def _kill_(module: nn.Module, units: list[int]) -> None:
    """Mask every incoming weight of ``units`` (output rows / filters)."""
    keep = torch.ones_like(module.weight, dtype=torch.bool)
    keep[units] = False
    attach_mask_(module, "weight", keep)


def _fold_and_slim(model: nn.Module, x: Tensor, rtol: float = 0.0) -> tuple[nn.Module, PrunePlan, FoldReport]:
    """plan_from_masks -> fold_removed_ -> finalize_ -> apply_plan_; the slim model must equal the masked one."""
    model.eval()
    with torch.no_grad():
        ref = model(x)
    plan, report = fold_removed_(model, plan_from_masks(model, x), x)
    finalize_(model)
    slim = apply_plan_(copy.deepcopy(model), plan)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), ref, rtol=rtol, atol=1e-5)
    return slim, plan, report


def _replays(build: Callable[[], nn.Module], slim: nn.Module, plan: PrunePlan, x: Tensor) -> None:
    """The JSON plan replays on a fresh model, which then loads the slim weights (persistence without pickle)."""
    fresh = apply_plan_(build().eval(), PrunePlan.from_json(plan.to_json()))
    fresh.load_state_dict(slim.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), slim(x), rtol=0, atol=0)


def test_mlp_biases_fold_into_the_next_linear() -> None:
    model = build_model({"name": "lenet_300_100"})
    _randomize_(model)
    Pruner(PruneRecipe(sparsity=0.5, pattern=Channel(0), targets=Targets(exclude=("5",)))).attach(model).prune_()
    x = torch.randn(8, 1, 28, 28)
    slim, _, report = _fold_and_slim(model, x)
    assert report.removed == 150 + 50 and not report.kept
    assert report.folded > 50  # ReLU(b) > 0 for about 2/3 of the removed units
    assert set(report.changed) == {"3.bias", "5.bias"} and not report.added_bias
    assert [m.out_features for m in slim.modules() if isinstance(m, nn.Linear)] == [150, 50, 10]


class ConvBnConv(nn.Module):
    """conv-BN-ReLU-conv(padding 0)-BN-ReLU-pool-Linear; ``bias2``: whether the second conv has a bias."""

    def __init__(self, bias2: bool = False, pad2: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=pad2, bias=bias2)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        out: Tensor = self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))
        return out


@pytest.mark.parametrize("bias2", [False, True], ids=["bn-running-mean", "conv-bias"])
def test_conv_bn_shift_folds_into_the_next_conv(bias2: bool) -> None:
    model = ConvBnConv(bias2=bias2)
    _randomize_(model)
    with torch.no_grad():
        model.bn1.bias[[1, 4, 6]] = torch.tensor([2.0, 1.5, 3.0])  # the shift survives the ReLU
    _kill_(model.conv1, [1, 4, 6])
    x = torch.randn(4, 3, 10, 10)
    slim, plan, report = _fold_and_slim(model, x)
    assert slim.conv1.out_channels == slim.bn1.num_features == slim.conv2.in_channels == 5
    assert report.folded == 3
    # without a conv bias the correction lands in the following BatchNorm's running mean: no new parameter
    assert report.changed == (("conv2.bias",) if bias2 else ("bn2.running_mean",))
    assert not report.added_bias and plan.add_bias == ()
    _replays(lambda: ConvBnConv(bias2=bias2), slim, plan, x)


def test_zero_padded_consumer_keeps_units_with_a_non_zero_constant() -> None:
    model = ConvBnConv(pad2=1)
    _randomize_(model)
    with torch.no_grad():
        model.bn1.bias[[1, 4, 6]] = torch.tensor(
            [2.0, -5.0, 1.0]
        )  # unit 4: ReLU(negative) = 0, nothing to fold, removable despite the padding
    _kill_(model.conv1, [1, 4, 6])
    slim, _, report = _fold_and_slim(model, torch.randn(4, 3, 10, 10))
    assert {(k.unit, "zero-pads" in k.reason) for k in report.kept} == {(1, True), (6, True)}
    assert slim.conv1.out_channels == 7 and report.removed == 1 and report.folded == 0


class ConvFlattenLinear(nn.Module):
    """conv-ReLU-pool-conv-ReLU-avgpool(padding, counts the padding)-flatten-Linear: per-feature constants."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 10, 3)
        self.pool = nn.AvgPool2d(2, padding=1, count_include_pad=True)  # border features see fewer constant entries
        self.fc1 = nn.Linear(10 * 3 * 3, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)  # (B, 6, 6, 6)
        x = self.pool(torch.relu(self.conv2(x)))  # (B, 10, 3, 3)
        out: Tensor = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return out


def test_flatten_block_folds_each_feature() -> None:
    model = ConvFlattenLinear()
    _randomize_(model)
    with torch.no_grad():
        model.conv2.bias[[2, 7, 9]] = torch.tensor([0.3, 0.8, 1.2])
    _kill_(model.conv2, [2, 7, 9])
    _kill_(model.fc1, [0, 11])
    x = torch.randn(4, 1, 16, 16)
    slim, plan, report = _fold_and_slim(model, x)
    assert slim.fc1.in_features == 7 * 9 and slim.fc1.out_features == 18
    assert report.removed == 5 and report.folded >= 3 and not report.kept
    _replays(ConvFlattenLinear, slim, plan, x)


def test_grouped_conv_consumer_folds_within_its_group() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Sigmoid(), nn.Conv2d(8, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    _kill_(model[0], [1, 6])  # one input channel in each of the two groups
    x = torch.randn(3, 3, 6, 6)
    slim, _, report = _fold_and_slim(model, x)
    assert slim[2].in_channels == 6 and report.folded == 2


class NoBiasHead(nn.Module):
    """Linear-ReLU-Linear(bias=False): folding needs a new bias, recorded in the plan."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


def test_bias_free_consumer_gets_a_bias_recorded_in_the_plan() -> None:
    model = NoBiasHead()
    with torch.no_grad():
        model.fc1.bias.fill_(0.5)
    _kill_(model.fc1, [2, 3])
    x = torch.randn(6, 5)
    slim, plan, report = _fold_and_slim(model, x)
    assert report.added_bias == ("fc2",) and plan.add_bias == ("fc2",)
    assert slim.fc2.bias is not None and slim.fc2.weight.shape == (3, 4)
    assert PrunePlan.from_json(plan.to_json()).add_bias == ("fc2",) and plan.to_dict()["version"] == 2
    _replays(NoBiasHead, slim, plan, x)


def test_units_that_are_not_constant_are_kept_with_a_reason() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(6, 5)
    plan = PrunePlan((PlanEntry("0", "out", 6, (0, 1, 2, 3)), PlanEntry("2", "in", 6, (0, 1, 2, 3))))
    with torch.no_grad():
        model[0].weight[5] = 0  # unit 5 is constant, unit 4 is not
        model[0].bias[5] = 0.7
        ref = model(x)
    folded, report = fold_removed_(model, plan, x)
    assert [(k.unit, "not constant" in k.reason) for k in report.kept] == [(4, True)]
    assert folded.entries[0].kept == (0, 1, 2, 3, 4)
    slim = apply_plan_(copy.deepcopy(model), folded)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), ref, rtol=0, atol=1e-5)


def test_layernorm_group_keeps_every_unit() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3)).eval()
    _kill_(model[0], [1])
    x = torch.randn(4, 5)
    plan, report = fold_removed_(model, plan_from_masks(model, x), x)
    assert len(plan.entries) == 0 and "LayerNorm" in report.kept[0].reason


def test_fold_after_apply_is_refused() -> None:
    model = NoBiasHead()
    _kill_(model.fc1, [2])
    x = torch.randn(3, 5)
    plan = plan_from_masks(model, x)
    finalize_(model)
    apply_plan_(model, plan)
    from prunekit.structure import PlanError

    with pytest.raises(PlanError, match="before apply_plan_"):
        fold_removed_(model, plan, x)


def test_resnet_folds_what_it_can_and_keeps_the_rest() -> None:
    """ResNet-20 (1x1 projections): a pruned filter's BN shift reaches a zero-padded 3x3 conv, so only units whose
    constant the ReLU zeroes can go; the plan stays exact either way."""
    kwargs = {"shortcut": "B"}
    model = build_model({"name": "resnet20", "kwargs": kwargs})
    _randomize_(model)
    Pruner(PruneRecipe(sparsity=0.5, pattern=Channel(0), targets=Targets(exclude=("fc",)))).attach(model).prune_()
    x = torch.randn(2, 3, 32, 32)
    slim, plan, report = _fold_and_slim(model, x, rtol=1e-4)
    assert report.removed > 20 and len(report.kept) > 20
    assert all("zero-pads" in k.reason for k in report.kept)
    _replays(lambda: build_model({"name": "resnet20", "kwargs": kwargs}), slim, plan, x)
