import json

import pytest
import torch

from prunekit import CheckpointError, Pruner, PruneRecipe, load_checkpoint, masks_of, save_checkpoint
from prunekit.checkpoint import META, WEIGHTS
from prunekit.models import build_model
from prunekit.testing.models import TiedEmbeddingLM, TinyMLP


@pytest.mark.parametrize("mode", ["inplace", "packed", "reparam"])
def test_round_trip_restores_masks_into_a_plain_model(tmp_path, mode):
    m = TinyMLP()
    Pruner(PruneRecipe(sparsity=0.6, mode=mode)).attach(m).prune_()
    save_checkpoint(tmp_path / "ck", m, extra={"note": "x"})
    fresh = load_checkpoint(tmp_path / "ck", TinyMLP()).model
    for k, v in masks_of(m).items():
        assert torch.equal(masks_of(fresh)[k], v)
    x = torch.randn(2, 16)
    assert torch.equal(m(x), fresh(x))
    meta = json.loads((tmp_path / "ck" / META).read_text())
    assert meta["versions"]["torch"] == torch.__version__ and meta["masks"]["fc1.weight"] == mode


def test_rebuild_from_model_spec(tmp_path):
    spec = {"name": "mlp", "kwargs": {"in_features": 8, "hidden": [5], "num_classes": 3}}
    m = build_model(spec)
    save_checkpoint(tmp_path / "ck", m, model_spec=spec)
    got = load_checkpoint(tmp_path / "ck").model
    x = torch.randn(1, 8)
    assert torch.equal(m(x), got(x))


def test_tied_weights_saved_once_and_stay_tied(tmp_path):
    m = TiedEmbeddingLM()
    save_checkpoint(tmp_path / "ck", m)
    assert "head.weight" in json.loads((tmp_path / "ck" / META).read_text())["aliases"]
    fresh = TiedEmbeddingLM()
    load_checkpoint(tmp_path / "ck", fresh)
    assert fresh.head.weight is fresh.emb.weight and torch.equal(fresh.emb.weight, m.emb.weight)


def test_never_overwrites_and_leaves_no_partial_output(tmp_path):
    m = TinyMLP()
    out = save_checkpoint(tmp_path / "ck", m)
    before = (out / WEIGHTS).read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(out, TinyMLP())
    assert (out / WEIGHTS).read_bytes() == before
    save_checkpoint(out, TinyMLP(), overwrite=True)
    assert (out / WEIGHTS).read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary directories left behind


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import prunekit.checkpoint as C

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(C, "_write_json", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", TinyMLP())
    assert list(tmp_path.iterdir()) == []


def test_bad_files_give_typed_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a prunekit checkpoint"):
        load_checkpoint(tmp_path, TinyMLP())
    out = save_checkpoint(tmp_path / "ck", TinyMLP())
    (out / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(out, TinyMLP())
    out2 = save_checkpoint(tmp_path / "ck2", TinyMLP())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(out2, TiedEmbeddingLM())
    (out2 / META).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(out2, TinyMLP())


def test_no_pickle_anywhere(tmp_path):
    out = save_checkpoint(tmp_path / "ck", TinyMLP(), optimizer=torch.optim.Adam(TinyMLP().parameters()))
    for f in out.iterdir():
        assert f.suffix in (".safetensors", ".json"), f
