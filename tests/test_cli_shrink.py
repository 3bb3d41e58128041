"""``prunekit shrink``: end to end on a tiny saved model; bad input exits 2 with one line; atomic, input untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from prunekit import load_checkpoint, save_checkpoint
from prunekit.checkpoint import PLAN
from prunekit.cli.main import main
from prunekit.models import build_model
from prunekit.structure import PrunePlan

SPEC = {"name": "mlp", "kwargs": {"in_features": 16, "hidden": [12, 10], "num_classes": 4}}
FAST = ["--repeats", "2"]


def _ckpt(tmp_path: Path, input_shape: tuple[int, ...] | None = (1, 16)) -> Path:
    extra = {"input_shape": list(input_shape)} if input_shape else {}
    return save_checkpoint(tmp_path / "in", build_model(SPEC), model_spec=SPEC, extra=extra)


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_shrink_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _ckpt(tmp_path)
    before = _digest(src)
    out = tmp_path / "slim"
    args = ["shrink", "--model", str(src), "--ratio", "0.5", "--batch-size", "4", "--threads", "1", *FAST]
    assert main([*args, "--out", str(out)]) == 0
    assert _digest(src) == before  # the input is untouched
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "plan.json", "prunekit.json", "report.md", "report.json"}
    slim = load_checkpoint(out).model
    assert [m.out_features for m in slim if isinstance(m, torch.nn.Linear)] == [6, 5, 4]
    rep = json.loads((out / "report.json").read_text())
    assert rep["before"]["params"] == _params(build_model(SPEC)) and rep["after"]["params"] == _params(slim)
    assert rep["batch_size"] == 4 and rep["repeats"] == 2 and rep["threads"] == 1 and rep["before"]["latency_s"] > 0
    assert rep["before"]["macs"] == 16 * 12 + 12 * 10 + 10 * 4 and rep["after"]["macs"] == 16 * 6 + 6 * 5 + 5 * 4
    printed = capsys.readouterr().out
    assert "| parameters |" in printed and "MACs per sample" in printed and "latency, batch 4" in printed
    assert (out / "report.md").read_text().strip() in printed
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["model"] == SPEC and meta["extra"]["shrink"]["config"]["ratio"] == 0.5
    assert slim(torch.randn(3, 16)).shape == (3, 4)


def test_cost_target_is_searched_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MLP 16-12-10-4, uniform ratio: params 16*h1 + h1 + h1*h2 + h2 + 4*h2 + 4 (dense 378); 2x asks for 189."""
    src = _ckpt(tmp_path)
    out = tmp_path / "slim"
    assert main(["shrink", "--model", str(src), "--target", "params=2x", *FAST, "--out", str(out)]) == 0
    meta = json.loads((out / "prunekit.json").read_text())["extra"]["shrink"]
    found = meta["target_search"]
    assert meta["config"]["target"] == "params=2x" and found["target"] == "params=2x"
    slim = load_checkpoint(out).model
    h1, h2, _ = [m.out_features for m in slim if isinstance(m, torch.nn.Linear)]
    params = 16 * h1 + h1 + h1 * h2 + h2 + 4 * h2 + 4
    assert params == _params(slim) and found["reduction"] == pytest.approx(378 / params)
    assert abs(found["reduction"] / 2 - 1) <= 0.05 and found["within_tolerance"] == (abs(found["reduction"] / 2 - 1) <= 0.01)
    printed = capsys.readouterr().out
    assert printed.startswith("target params=2x: ratio") and "fewer parameters" in (out / "report.md").read_text()


def test_recipe_file_flags_override_and_set(tmp_path: Path) -> None:
    src = _ckpt(tmp_path)
    recipe = tmp_path / "shrink.yaml"
    recipe.write_text("ratio: 0.25\nscorer: {name: magnitude, p: 2}\nallocator: global\nround_to: 2\nexclude: ['3']\n")
    out = tmp_path / "slim"
    args = ["shrink", "--model", str(src), "--recipe", str(recipe), "--ratio", "0.5", "--set", "scorer.p=1", *FAST]
    assert main([*args, "--out", str(out)]) == 0
    cfg = json.loads((out / "prunekit.json").read_text())["extra"]["shrink"]["config"]
    assert cfg["ratio"] == 0.5 and cfg["scorer"] == {"name": "magnitude", "p": 1.0} and cfg["allocator"]["name"] == "global"
    slim = load_checkpoint(out).model
    widths = [m.out_features for m in slim if isinstance(m, torch.nn.Linear)]
    assert widths[1] == 10 and widths[0] % 2 == 0 and widths[0] < 12  # '3' (the second Linear) excluded


def test_data_driven_criterion_and_dataset_example(tmp_path: Path) -> None:
    src = _ckpt(tmp_path, input_shape=None)  # no recorded input shape: the example comes from the dataset
    out = tmp_path / "slim"
    args = ["shrink", "--model", str(src), "--ratio", "0.5", "--criterion", "taylor", "--calibration", "synthetic"]
    assert main([*args, "--calibration-batches", "2", "--calibration-batch-size", "8", *FAST, "--out", str(out)]) == 0
    assert json.loads((out / "prunekit.json").read_text())["extra"]["input_shape"] == [1, 16]


def test_shrink_twice_and_prune_keep_the_composed_plan(tmp_path: Path) -> None:
    src = _ckpt(tmp_path)
    s1, s2, pruned = tmp_path / "s1", tmp_path / "s2", tmp_path / "pruned"
    assert main(["shrink", "--model", str(src), "--ratio", "0.5", *FAST, "--out", str(s1)]) == 0
    assert main(["shrink", "--model", str(s1), "--ratio", "0.5", *FAST, "--out", str(s2)]) == 0
    plan = PrunePlan.from_json((s2 / PLAN).read_text())
    assert {(e.module, e.axis): (e.size, len(e.kept)) for e in plan.entries}[("1", "out")] == (12, 3)
    assert main(["prune", "--model", str(s2), "--sparsity", "0.5", "--out", str(pruned)]) == 0
    m = load_checkpoint(pruned).model  # a pruned slim model: plan carried, masks on the slim weights
    assert [x.out_features for x in m if isinstance(x, torch.nn.Linear)] == [3, 3, 4]


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (["--ratio", "1.5"], "ratio"),
        (["--ratio", "lots"], "ratio"),
        (["--criterion", "nosuch"], "nosuch"),
        (["--allocator", "lamp"], "allocator"),
        (["--reduction", "median"], "reduction"),
        (["--round-to", "0"], "round_to"),
        (["--roles", "owner"], "roles"),
        (["--set", "ratio"], "--set"),
        (["--example-shape", "1,a"], "--example-shape"),
        (["--batch-size", "0"], "--batch-size"),
        (["--threads", "0"], "--threads"),
        (["--types", "Conv2d"], "removes no unit"),
        (["--target", "flops=2x"], "target"),
        (["--target", "macs=0.5"], "target.reduction"),
        (["--target", "params=500x"], "unreachable"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], word: str) -> None:
    src = _ckpt(tmp_path)
    out = tmp_path / "slim"
    assert main(["shrink", "--model", str(src), *flags, *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prunekit shrink: error:") and word in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "word"),
    [("ratio: [1, 2]\n", "ratio"), ("- 1\n- 2\n", "mapping"), ("ratoi: 0.5\n", "ratoi"), ("ratio: 0.5\n  bad: [\n", "YAML")],
)
def test_bad_recipe_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, word: str) -> None:
    src = _ckpt(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert main(["shrink", "--model", str(src), "--recipe", str(recipe), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err


def test_output_is_new_outside_the_input_and_written_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _ckpt(tmp_path)
    before = _digest(src)
    (tmp_path / "exists").mkdir()
    assert main(["shrink", "--model", str(src), "--out", str(tmp_path / "exists")]) == 2
    assert main(["shrink", "--model", str(src), *FAST, "--out", str(src / "inside")]) == 2
    assert main(["shrink", "--model", str(src), *FAST, "--out", str(src)]) == 2
    assert "already exists" in capsys.readouterr().err

    import prunekit.checkpoint as ck

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        main(["shrink", "--model", str(src), *FAST, "--out", str(tmp_path / "slim")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "in"]  # no output, no temporary directory
    assert _digest(src) == before


def test_help_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["shrink", "--help"])
    out = capsys.readouterr().out
    for flag in ("--ratio", "--criterion", "--allocator", "--round-to", "--exclude", "--example-shape", "--batch-size"):
        assert flag in out
    assert main(["list", "group_allocators"]) == 0
    listed = capsys.readouterr().out
    assert "uniform" in listed and "global" in listed
