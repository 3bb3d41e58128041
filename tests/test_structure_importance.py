"""Group importance and allocation: hand-computed group scores, exact removal counts, caps, rounding, every scorer."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.scoring import SCORERS, ScoreContext
from prunekit.structure import apply_plan_, build_groups
from prunekit.structure.importance import (
    GROUP_ALLOCATORS,
    GlobalGroups,
    Steps,
    StructuredConfig,
    UniformGroups,
    axis_scores,
    combine_members,
    config_from_dict,
    config_to_dict,
    group_multiple,
    group_scores,
    removal_steps,
    select_kept,
    structured_plan,
)
from prunekit.testing.models import TinyConvNet, TinyMLP

NONE_SUM = {"normalize": "none", "reduction": "sum"}


class LinReLULin(nn.Module):
    """Linear(3, 4) - ReLU - Linear(4, 2): one prunable group of 4 hidden units (fc1 producer, fc2 consumer)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)
        with torch.no_grad():
            # |row| sums (fc1 out units): 1, 2, 6, 3
            self.fc1.weight.copy_(torch.tensor([[1.0, 0, 0], [0, -2, 0], [3, 0, -3], [1, 1, -1]]))
            # |column| sums (fc2 in units): 4, 1, 2, 2
            self.fc2.weight.copy_(torch.tensor([[2.0, 0.5, 1, -1], [-2, 0.5, 1, 1]]))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


class ConvBNConv(nn.Module):
    """Conv2d(2, 3, 1) - BatchNorm2d(3) - ReLU - Conv2d(3, 2, 1): a group of 3 channels with a follower."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([[2.0, -1], [0.5, 0.5], [-1, 1]]).reshape(3, 2, 1, 1))  # L1: 3, 1, 2
            self.bn.weight.copy_(torch.tensor([0.5, -4.0, 1.0]))  # |gamma|: 0.5, 4, 1
            self.conv2.weight.copy_(torch.tensor([[0.5, -0.5, 2], [0.5, 0.5, -3]]).reshape(2, 3, 1, 1))  # L1: 1, 1, 5

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return out


class ConvGroupNormConv(nn.Module):
    """Conv2d(2, 8, 1) - GroupNorm(2 groups) - Conv2d(8, 2, 1): only whole normalisation groups of 4 can go."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 1)
        self.gn = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2(torch.relu(self.gn(self.conv1(x))))
        return out


def _scores_by_size(model: nn.Module, x: Tensor, **cfg: object) -> dict[int, Tensor]:
    groups = build_groups(model, x)
    got = group_scores(model, groups, config_from_dict(cfg))
    return {groups[i].size: s for i, s in got.items()}


# -- hand-computed group scores ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (NONE_SUM, [5, 3, 8, 5]),  # producer [1, 2, 6, 3] + consumer [4, 1, 2, 2]
        ({"normalize": "none", "reduction": "mean"}, [2.5, 1.5, 4, 2.5]),
        ({"normalize": "none", "reduction": "max"}, [4, 2, 6, 3]),
        ({"normalize": "mean", "reduction": "sum"}, [1 / 3 + 16 / 9, 2 / 3 + 4 / 9, 2 + 8 / 9, 1 + 8 / 9]),
        ({"normalize": "max", "reduction": "sum"}, [1 / 6 + 1, 1 / 3 + 1 / 4, 1 + 1 / 2, 1 / 2 + 1 / 2]),
        (
            {"normalize": "l2", "reduction": "sum"},
            [1 / 50**0.5 + 4 / 5, 2 / 50**0.5 + 1 / 5, 6 / 50**0.5 + 2 / 5, 3 / 50**0.5 + 2 / 5],
        ),
        ({"normalize": "none", "reduction": "sum", "roles": ["producer"]}, [1, 2, 6, 3]),
        ({"normalize": "none", "reduction": "sum", "roles": ["consumer"]}, [4, 1, 2, 2]),
        ({"normalize": "none", "reduction": "sum", "scorer": {"name": "magnitude", "p": 2}}, [1 + 8, 4 + 0.5, 18 + 2, 3 + 2]),
    ],
)
def test_linear_relu_linear_group_scores_by_hand(cfg: dict[str, object], expected: list[float]) -> None:
    got = _scores_by_size(LinReLULin(), torch.randn(1, 3), **cfg)
    assert set(got) == {4}  # only the hidden group is prunable (input and output are frozen)
    torch.testing.assert_close(got[4], torch.tensor(expected, dtype=torch.float64))


def test_conv_bn_conv_scores_and_followers_change_the_decision() -> None:
    model, x = ConvBNConv(), torch.randn(1, 2, 4, 4)
    plain = _scores_by_size(model, x, **NONE_SUM)[3]
    torch.testing.assert_close(plain, torch.tensor([4.0, 2, 7], dtype=torch.float64))  # conv1 [3,1,2] + conv2 [1,1,5]
    with_bn = _scores_by_size(model, x, roles=["producer", "follower", "consumer"], **NONE_SUM)[3]
    torch.testing.assert_close(with_bn, torch.tensor([4.5, 6, 8], dtype=torch.float64))
    groups = build_groups(model, x)
    (gi,) = [i for i, g in enumerate(groups) if g.size == 3]
    drop_one = {"ratio": 0.34, **NONE_SUM}
    assert select_kept(model, groups, config_from_dict(drop_one))[gi].tolist() == [0, 2]
    kept = select_kept(model, groups, config_from_dict({**drop_one, "roles": ["producer", "follower", "consumer"]}))
    assert kept[gi].tolist() == [1, 2]


def test_flattened_channel_is_scored_over_its_block_of_columns() -> None:
    model, x = TinyConvNet(), torch.randn(1, 3, 8, 8)
    got = _scores_by_size(model, x, **NONE_SUM)[16]  # conv2 (16 filters) -> flatten (16 x 2 x 2) -> fc
    fc_cols = model.fc.weight.detach().abs().sum(0).reshape(16, 4).sum(1)  # channel c = columns 4c..4c+3
    expected = model.conv2.weight.detach().abs().sum((1, 2, 3)) + fc_cols
    torch.testing.assert_close(got, expected.double())


def test_grouped_conv_input_axis() -> None:
    conv = nn.Conv2d(4, 6, 1, groups=2)
    s = torch.arange(conv.weight.numel(), dtype=torch.float32).reshape(conv.weight.shape)  # (6, 2, 1, 1)
    got = axis_scores(conv, "c", "in", s)
    assert got is not None
    # input channel i: column i % 2 of the rows (i // 2) * 3 .. (i // 2) * 3 + 2
    expected = torch.stack([s[(i // 2) * 3 : (i // 2) * 3 + 3, i % 2].sum() for i in range(4)])
    torch.testing.assert_close(got, expected)


def test_hf_conv1d_axes_are_transposed() -> None:
    transformers = pytest.importorskip("transformers")
    conv = transformers.pytorch_utils.Conv1D(6, 4)  # GPT-2's linear layer: weight (in=4, out=6)
    s = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.testing.assert_close(axis_scores(conv, "c", "out", s), s.sum(0))
    torch.testing.assert_close(axis_scores(conv, "c", "in", s), s.sum(1))


def test_constant_member_carries_no_ranking_and_is_left_out() -> None:
    u = torch.tensor([1.0, 3.0, 2.0])
    const = torch.full((3,), 7.0)
    torch.testing.assert_close(combine_members([u, const], "none", "sum"), u.double())
    torch.testing.assert_close(combine_members([const], "none", "sum"), const.double())  # nothing better: kept


# -- allocation: exact counts, caps, rounding --------------------------------------------------------------------


def _removed(model: nn.Module, x: Tensor, config: StructuredConfig) -> dict[int, int]:
    groups = build_groups(model, x)
    kept = select_kept(model, groups, config)
    return {groups[i].size: groups[i].size - len(k) for i, k in kept.items()}


def test_tie_break_removes_the_lower_index() -> None:
    model = LinReLULin()  # scores [5, 3, 8, 5]: unit 1, then the tie 0/3 -> unit 0
    groups = build_groups(model, torch.randn(1, 3))
    kept = select_kept(model, groups, config_from_dict({"ratio": 0.5, **NONE_SUM}))
    assert [k.tolist() for k in kept.values()] == [[2, 3]]


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_uniform_removes_round_ratio_of_every_group(ratio: float) -> None:
    got = _removed(TinyMLP(), torch.randn(1, 16), StructuredConfig(ratio=ratio))
    assert got == {12: round(ratio * 12), 8: round(ratio * 8)}


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_global_removes_exactly_round_ratio_of_all_units(ratio: float) -> None:
    got = _removed(TinyMLP(), torch.randn(1, 16), StructuredConfig(ratio=ratio, allocator=GlobalGroups()))
    assert sum(got.values()) == round(ratio * 20)


def test_global_threshold_separates_kept_from_removed() -> None:
    model, x = TinyMLP(), torch.randn(1, 16)
    config = StructuredConfig(ratio=0.5, allocator=GlobalGroups())
    groups = build_groups(model, x)
    scores = group_scores(model, groups, config)
    kept = select_kept(model, groups, config)
    gone = [float(s[i]) for gi, s in scores.items() for i in range(len(s)) if i not in kept[gi].tolist()]
    stay = [float(s[i]) for gi, s in scores.items() for i in kept[gi].tolist()]
    assert max(gone) <= min(stay)


def test_global_cap_limits_each_group() -> None:
    got = _removed(TinyMLP(), torch.randn(1, 16), StructuredConfig(ratio=0.9, allocator=GlobalGroups(max_fraction=0.25)))
    assert got == {12: 3, 8: 2}  # floor(0.25 * size) each, short of round(0.9 * 20) = 18


def test_never_removes_every_unit() -> None:
    for alloc in (UniformGroups(), GlobalGroups()):
        got = _removed(TinyMLP(), torch.randn(1, 16), StructuredConfig(ratio=0.99, allocator=alloc))
        assert got == {12: 11, 8: 7}


def test_round_to_keeps_multiples_rounded_up() -> None:
    got = _removed(TinyMLP(), torch.randn(1, 16), StructuredConfig(ratio=0.5, round_to=8))
    assert got == {12: 4}  # 12 -> 8 kept (6 asked, 4 allowed); 8 -> cannot go below one multiple of 8
    got = _removed(TinyMLP(), torch.randn(1, 16), StructuredConfig(ratio=0.5, round_to=4))
    assert got == {12: 4, 8: 4}  # 12: kept 6 -> rounded up to 8


def test_round_to_with_global_takes_whole_steps() -> None:
    model, x = TinyMLP(), torch.randn(1, 16)
    config = StructuredConfig(ratio=0.5, round_to=4, allocator=GlobalGroups())
    got = _removed(model, x, config)
    assert all((size - r) % 4 == 0 for size, r in got.items())
    assert sum(got.values()) <= 10


def test_removal_steps_and_group_multiple() -> None:
    steps, order = removal_steps(torch.tensor([5.0, 1, 4, 2, 3, 0, 6, 7, 9, 8]), multiple=4)
    assert steps == Steps(10, (2, 6), (1.0, 5.0))  # kept 8 then 4; never 0
    assert order[:2].tolist() == [5, 1]
    assert group_multiple(SimpleNamespace(round_to=64), 8) == 64  # type: ignore[arg-type]
    assert group_multiple(SimpleNamespace(round_to=6), 4) == 12  # type: ignore[arg-type]
    assert group_multiple(SimpleNamespace(), 8) == 8  # type: ignore[arg-type]
    steps, _ = removal_steps(torch.arange(4.0), multiple=2, atom=4)  # 4 atoms of 4 units, kept units multiple of 2
    assert steps.removed == (4, 8, 12)


def test_groupnorm_removes_whole_normalisation_groups() -> None:
    model, x = ConvGroupNormConv().eval(), torch.randn(2, 2, 4, 4)
    plan = structured_plan(model, x, StructuredConfig(ratio=0.5))
    (entry,) = [e for e in plan.entries if e.module == "conv1"]
    assert entry.kept in ((0, 1, 2, 3), (4, 5, 6, 7))
    slim = apply_plan_(copy.deepcopy(model), plan)
    assert slim.gn.num_groups == 1 and slim(x).shape == (2, 2, 4, 4)


# -- selection and configuration ----------------------------------------------------------------------------------


def test_types_include_exclude_select_groups_by_producer() -> None:
    x = torch.randn(1, 16)
    assert set(_removed(TinyMLP(), x, StructuredConfig(exclude=("fc1",)))) == {8}
    assert set(_removed(TinyMLP(), x, StructuredConfig(include=("fc1",)))) == {12}
    assert _removed(TinyMLP(), x, StructuredConfig(types=("Conv2d",))) == {}


class EmbeddingResidual(nn.Module):
    """Embedding + Linear residual stream into a head: the stream's group has an Embedding producer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, idx: Tensor) -> Tensor:
        h = self.emb(idx)
        h = h + torch.relu(self.fc(h))
        out: Tensor = self.head(h)
        return out


def test_every_producer_must_match_types() -> None:
    model, idx = EmbeddingResidual(), torch.randint(0, 10, (2, 5))
    assert _removed(model, idx, StructuredConfig()) == {}  # the stream is also produced by an Embedding
    assert _removed(model, idx, StructuredConfig(types=("Linear", "Embedding"))) == {8: 4}


def test_config_round_trips_and_rejects_bad_values() -> None:
    cfg = config_from_dict(
        {"ratio": 0.3, "scorer": {"name": "unit_norm", "p": 1}, "allocator": {"name": "global", "max_fraction": 0.5}}
    )
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert GROUP_ALLOCATORS.names() == ["global", "uniform"]
    bad = [
        ({"ratio": 1.0}, "ratio"),
        ({"reduction": "median"}, "reduction"),
        ({"normalize": "z"}, "normalize"),
        ({"roles": ["owner"]}, "roles"),
        ({"round_to": 0}, "round_to"),
        ({"allocator": "lamp"}, "allocator"),
        ({"allocator": {"name": "global", "max_fraction": 2}}, "max_fraction"),
        ({"scorer": "nope"}, "scorer"),
        ({"ratoi": 0.5}, "ratoi"),
    ]
    for data, field in bad:
        with pytest.raises(ConfigError, match=field):
            config_from_dict(data)


# -- every scorer -------------------------------------------------------------------------------------------------

WEIGHT_ONLY = [n for n in SCORERS.names() if SCORERS.get(n).requires == frozenset({"weights"})]


def test_weight_only_scorers_are_found() -> None:
    assert {"magnitude", "random", "unit_norm", "fpgm"} <= set(WEIGHT_ONLY)


@pytest.mark.parametrize("name", WEIGHT_ONLY)
def test_every_weight_only_scorer_gives_an_applicable_plan(name: str) -> None:
    model, x = TinyConvNet().eval(), torch.randn(2, 3, 8, 8)
    config = StructuredConfig(ratio=0.5, scorer=SCORERS.get(name)(), roles=("producer", "follower", "consumer"))
    plan = structured_plan(model, x, config)
    assert {(e.module, e.axis, len(e.kept)) for e in plan.entries} >= {("conv1", "out", 4), ("conv2", "out", 8)}
    slim = apply_plan_(copy.deepcopy(model), plan)
    assert slim(x).shape == (2, 5)


@pytest.mark.parametrize("name", ["taylor", "apoz", "obd"])
def test_data_driven_scorers_use_the_context(name: str) -> None:
    model, x = TinyMLP(), torch.randn(8, 16)
    y = torch.randint(0, 4, (8,))
    ctx = ScoreContext(model, calibration=[(x, y)], loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    config = StructuredConfig(ratio=0.5, scorer=SCORERS.get(name)())
    with pytest.raises(ConfigError):
        structured_plan(model, x, config)  # no calibration data
    plan = structured_plan(model, x, config, ctx)
    assert sorted(len(e.kept) for e in plan.entries if e.axis == "out") == [4, 6]
    with torch.no_grad():
        assert math.isfinite(float(apply_plan_(copy.deepcopy(model), plan)(x).sum()))
