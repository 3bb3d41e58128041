import hashlib
import json
import subprocess
import sys

import pytest
import torch

from prunekit import load_checkpoint, masks_of, save_checkpoint
from prunekit.cli.main import main
from prunekit.models import build_model

SPEC = {"name": "mlp", "kwargs": {"in_features": 16, "hidden": [12], "num_classes": 4}}


def _ckpt(tmp_path):
    return save_checkpoint(tmp_path / "in", build_model(SPEC), model_spec=SPEC, extra={"input_shape": [1, 16]})


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_list_shows_every_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("scorers:", "magnitude", "allocators:", "lamp", "patterns:", "nm", "schedules:", "polynomial"):
        assert word in out


def test_help_mentions_recipe_fields(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = capsys.readouterr().out
    assert "--sparsity" in out and "--scorer" in out and "--skip-first" in out and "--set KEY=VALUE" in out


def test_prune_prunekit_checkpoint_with_recipe_and_flag_override(tmp_path, capsys):
    src = _ckpt(tmp_path)
    before = _digest(src)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sparsity: 0.5\nallocator: global\nscorer: {name: magnitude, p: 2}\n")
    out = tmp_path / "out"
    assert main(["prune", "--model", str(src), "--recipe", str(recipe), "--sparsity", "0.75", "--out", str(out)]) == 0
    assert _digest(src) == before  # the input is untouched
    m = load_checkpoint(out).model
    total = sum(v.numel() for v in masks_of(m).values())
    assert sum(int((~v).sum()) for v in masks_of(m).values()) == round(0.75 * total)
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["recipe"]["sparsity"] == 0.75 and meta["recipe"]["scorer"]["p"] == 2.0
    assert (out / "report.md").exists() and "FLOPs dense" in capsys.readouterr().out


def test_prune_torch_export_program(tmp_path):
    model = build_model(SPEC)
    ep = torch.export.export(model, (torch.randn(2, 16),))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    out = tmp_path / "out"
    assert main(["prune", "--model", str(tmp_path / "m.pt2"), "--pattern", "2:4", "--out", str(out)]) == 0
    gm = torch.export.load(str(out / "model.pt2")).module()
    weights = [p for n, p in gm.named_parameters() if n.endswith("weight")]
    assert len(weights) == 2
    for w in weights:
        assert w.reshape(w.shape[0], -1, 4).ne(0).sum(-1).le(2).all()


def test_prune_huggingface_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    out = tmp_path / "out"
    assert main(["prune", "--model", str(tmp_path / "bert"), "--sparsity", "0.5", "--exclude", "pooler*", "--out", str(out)]) == 0
    pruned = transformers.BertModel.from_pretrained(out)
    w = pruned.encoder.layer[0].intermediate.dense.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)
    assert float((pruned.pooler.dense.weight == 0).float().mean()) < 0.1
    assert (out / "masks.safetensors").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sparsity", "1.5"], "sparsity"),
        (["--sparsity", "0.5", "--scorer", "magnitud"], "did you mean 'magnitude'"),
        (["--sparsity", "0.5", "--pattern", "4:2"], "pattern"),
        (["--sparsity", "0.5", "--set", "schedule.every=-1"], "schedule"),
        (["--sparsity", "0.5", "--set", "nonsense"], "--set"),
    ],
)
def test_bad_input_exit_2_with_one_line(tmp_path, capsys, args, needle):
    src = _ckpt(tmp_path)
    assert main(["prune", "--model", str(src), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_malformed_recipe_file_and_bad_paths(tmp_path, capsys):
    src = _ckpt(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("sparsity: [oops\n")
    assert main(["prune", "--model", str(src), "--recipe", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert main(["prune", "--model", str(tmp_path / "nope"), "--sparsity", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert main(["prune", "--model", str(src), "--sparsity", "0.5", "--out", str(src)]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 3 and "not valid YAML" in errs[0] and "no such file" in errs[1] and "already exists" in errs[2]


def test_console_script_exit_code_for_bad_flag():
    r = subprocess.run([sys.executable, "-m", "prunekit", "prune", "--model", "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "--out" in r.stderr


def test_demo_meets_its_promise(tmp_path, capsys):
    # The README's main job: 90 % sparsity, pruned accuracy within 2 points of dense.
    assert main(["demo", "--no-progress", "--json", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert summary["pruned_accuracy"] >= summary["dense_accuracy"] - 0.02
    assert "test accuracy" in out
    m = load_checkpoint(tmp_path / "demo").model
    assert masks_of(m)


def test_prune_with_a_data_driven_criterion_and_calibration_data(tmp_path, capsys):
    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "num_classes": 10}}
    src = save_checkpoint(tmp_path / "in", build_model(spec), model_spec=spec, extra={"input_shape": [1, 64]})
    out = tmp_path / "out"
    args = ["prune", "--model", str(src), "--sparsity", "0.5", "--pattern", "channel", "--scorer", "taylor"]
    assert main([*args, "--calibration", "digits", "--calibration-batches", "2", "--out", str(out)]) == 0
    m = load_checkpoint(out).model
    assert int((~masks_of(m)["1.weight"]).all(1).sum()) == 8  # half of the 16 hidden neurons removed
    assert main([*args, "--out", str(tmp_path / "o2")]) == 2  # without data: one clear line
    assert "calibration" in capsys.readouterr().err.strip().splitlines()[-1]
