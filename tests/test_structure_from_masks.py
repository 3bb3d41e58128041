"""Exactness: a model slimmed by ``plan_from_masks`` + ``apply_plan_`` computes what the masked model computes.

Reference rule. A unit whose weights are all masked still emits its bias (and BatchNorm's shift), so the masked
reference also has the removed units' bias and BatchNorm weight/bias zeroed (:func:`_silence_removed_`). With
that, the removed units output exactly 0 after BatchNorm/ReLU and removing them changes nothing but rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from prunekit.masks import finalize_, masked_params, update_mask_
from prunekit.models import build_model
from prunekit.patterns import Channel
from prunekit.pruner import Pruner
from prunekit.recipe import PruneRecipe, Targets
from prunekit.structure import PrunePlan, apply_plan_, build_groups, plan_from_masks


@torch.no_grad()
def _randomize_bn_(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
            m.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)


@torch.no_grad()
def _silence_removed_(model: nn.Module, plan: PrunePlan) -> None:
    """Zero every 1-D parameter entry (bias, BatchNorm weight/bias) of the units the plan removes."""
    mods = dict(model.named_modules())
    for e in plan.entries:
        if e.axis != "out":
            continue
        removed = sorted(set(range(e.size)) - set(e.kept))
        for p in mods[e.module].parameters(recurse=False):
            if p.dim() == 1 and p.shape[0] == e.size:
                p[removed] = 0


def _check_consistent(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features)
        elif isinstance(m, nn.Conv2d):
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups)
        elif isinstance(m, nn.BatchNorm2d):
            assert m.weight.shape == m.running_mean.shape == (m.num_features,)  # type: ignore[union-attr]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _slim_and_compare(name: str, kwargs: dict[str, object], masked: nn.Module, x: Tensor) -> tuple[nn.Module, PrunePlan]:
    masked.eval()
    plan = plan_from_masks(masked, x)
    finalize_(masked)
    _silence_removed_(masked, plan)
    slim = apply_plan_(copy.deepcopy(masked), plan)
    _check_consistent(slim)
    with torch.no_grad():
        ref = masked(x)
        out = slim(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert _n_params(slim) < _n_params(masked)

    # the JSON plan replays on a fresh model from the registry loaded with the same (reference) weights
    fresh = build_model({"name": name, "kwargs": kwargs}).eval()
    fresh.load_state_dict(masked.state_dict())
    apply_plan_(fresh, PrunePlan.from_json(plan.to_json()))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, rtol=0, atol=0)
    assert fresh.state_dict().keys() == slim.state_dict().keys()
    return slim, plan


CASES = [
    ("lenet_300_100", {}, (4, 1, 28, 28), ("5",)),
    ("lenet5_caffe", {}, (4, 1, 28, 28), ("classifier.3",)),
    ("vgg11_bn", {}, (2, 3, 32, 32), ("classifier",)),
    ("resnet20", {}, (2, 3, 32, 32), ("fc",)),
    ("resnet20", {"shortcut": "B"}, (2, 3, 32, 32), ("fc",)),
]


@pytest.mark.parametrize(("name", "kwargs", "shape", "exclude"), CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_channel_masks_slim_exactly(
    name: str, kwargs: dict[str, object], shape: tuple[int, ...], exclude: tuple[str, ...]
) -> None:
    model = build_model({"name": name, "kwargs": kwargs})
    _randomize_bn_(model)
    recipe = PruneRecipe(sparsity=0.5, pattern=Channel(0), targets=Targets(exclude=exclude))
    Pruner(recipe).attach(model).prune_()
    x = torch.randn(shape)
    dense_units = {mp.key: mp.mask.shape[0] for mp in masked_params(model)}
    slim, plan = _slim_and_compare(name, kwargs, model, x)
    assert len(plan) > 0
    if name != "resnet20":  # plain chains: every masked layer loses exactly half its units
        mods = dict(slim.named_modules())
        for key, n in dense_units.items():
            w = mods[key.rsplit(".", 1)[0]].weight
            assert w.shape[0] == n - round(0.5 * n), key


def test_resnet_option_a_stream_is_left_alone() -> None:
    model = build_model({"name": "resnet20"})
    Pruner(PruneRecipe(sparsity=0.5, pattern=Channel(0), targets=Targets(exclude=("fc",)))).attach(model).prune_()
    plan = plan_from_masks(model.eval(), torch.randn(1, 3, 32, 32))
    touched = {(e.module, e.axis) for e in plan.entries}
    assert {("layer1.0.conv1", "out"), ("layer1.0.bn1", "out"), ("layer1.0.conv2", "in")} <= touched
    frozen = {("conv1", "out"), ("bn1", "out"), ("layer1.0.conv2", "out"), ("layer3.2.bn2", "out"), ("fc", "in")}
    assert not touched & frozen


def test_residual_join_removes_channels_dead_in_every_producer() -> None:
    """Option-B ResNet: a stream channel goes only when all convs writing to the residual stream prune it."""
    kwargs = {"shortcut": "B"}
    model = build_model({"name": "resnet20", "kwargs": kwargs})
    _randomize_bn_(model)
    x = torch.randn(2, 3, 32, 32)
    Pruner(PruneRecipe(sparsity=0.0, pattern=Channel(0), targets=Targets(exclude=("fc",)))).attach(model).prune_()
    stream = next(g for g in build_groups(model, x) if any(m.fqn == "layer1.0.conv2" for m in g.producers))
    assert {m.fqn for m in stream.producers} == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert stream.prunable
    mods = dict(model.named_modules())
    for p in stream.producers:
        w = mods[p.fqn].weight
        keep = torch.ones_like(w, dtype=torch.bool)
        keep[[0, 3, 5]] = False
        if p.fqn == "layer1.2.conv2":
            keep[7] = False  # dead in one producer only: must stay
        update_mask_(mods[p.fqn], "weight", keep)
    slim, plan = _slim_and_compare("resnet20", kwargs, model, x)
    entries = {(e.module, e.axis): e for e in plan.entries}
    assert len(entries[("conv1", "out")].kept) == 13 and 7 in entries[("conv1", "out")].kept
    assert len(entries[("layer2.0.shortcut.0", "in")].kept) == 13
    assert slim.layer1[0].bn2.num_features == 13
