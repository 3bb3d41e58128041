"""Runtime recording of a forward pass into an fx graph (the fallback where torch.fx cannot trace)."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import Tensor, nn

from prunekit.structure import StructureError, build_groups
from prunekit.structure.graph import program_graph
from prunekit.structure.handlers import handler_for_or_none
from prunekit.structure.record import record_graph


def _leaf(m: nn.Module) -> bool:
    return handler_for_or_none(m) is not None


class _DictModel(nn.Module):
    """Keyword inputs, a dict output, Python control flow on values, an in-place op and a setitem."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.c = nn.Linear(6, 3)

    def forward(self, x: Tensor, scale: Tensor) -> dict[str, Tensor]:
        h = self.a(x)
        if float(h.mean()) > 1e9:  # data-dependent branch: fx cannot trace this
            h = -h
        h.mul_(2.0)
        out = self.b(torch.relu(h)) * scale
        other = torch.zeros(x.shape[0], 6)
        other[:, :] = h  # setitem: h's channels reach `other` in a way the walker does not map
        return {"y": out, "z": self.c(other)}


def test_record_builds_nodes_for_leaves_functions_and_inplace_ops() -> None:
    m = _DictModel()
    g = record_graph(m, {"x": torch.randn(2, 4), "scale": torch.ones(1)}, _leaf)
    ops = [(n.op, n.target) for n in g.nodes]
    assert ("call_module", "a") in ops and ("call_module", "b") in ops and ("call_module", "c") in ops
    assert ("call_method", "mul") in ops  # h.mul_ recorded as mul, and later uses of h see it
    assert ("call_function", operator.setitem) in ops
    assert [n.name for n in g.nodes if n.op == "placeholder"] == ["input_x_0", "input_scale_0"]
    relu = next(n for n in g.nodes if n.target is torch.relu)
    assert relu.args[0].target == "mul" and relu.meta["tensor_meta"].shape == (2, 6)


def test_dict_model_groups_setitem_freezes_conservatively() -> None:
    m = _DictModel()
    groups = build_groups(m, {"x": torch.randn(2, 4), "scale": torch.ones(1)})
    a = next(g for g in groups if any(mm.fqn == "a" and mm.role == "producer" for mm in g.members))
    assert not a.prunable and any("setitem" in r for r in a.reasons)


def test_fx_is_used_where_it_traces_and_recording_is_forced_on_request() -> None:
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    fx_graph = program_graph(m, torch.randn(1, 4))
    rec_graph = program_graph(m, torch.randn(1, 4), tracer="record")
    assert sum(n.op == "call_module" for n in rec_graph.nodes) == 2 < sum(n.op == "call_module" for n in fx_graph.nodes)

    def members(tracer: str) -> list[tuple[int, tuple[object, ...]]]:
        return [(g.size, g.members) for g in build_groups(m, torch.randn(1, 4), tracer=tracer)]  # type: ignore[arg-type]

    assert members("record") == members("fx")
    with pytest.raises(StructureError, match="tracer must be one of auto, fx, record"):
        program_graph(m, torch.randn(1, 4), tracer="jit")  # type: ignore[arg-type]


class _Fails(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), _Raise())

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.inner(x)
        return out


class _Raise(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("boom")


def test_a_failing_forward_names_the_module() -> None:
    with pytest.raises(StructureError, match=r"running _Fails on the example input failed in 'inner.1' \(_Raise\).*boom"):
        build_groups(_Fails(), torch.randn(1, 4))


def test_recording_restores_training_mode_and_leaves_no_hooks() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    build_groups(m, torch.randn(1, 4), tracer="record")
    assert all(mod.training for mod in m.modules())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
