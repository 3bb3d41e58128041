"""Running experiments: run directory contents, no-op re-runs, resume after a kill, phases, rewinding, locking, logs."""

import hashlib
import json
import logging

import pytest
import torch

from prunekit import CheckpointError, ConfigError, load_checkpoint, masks_of
from prunekit.experiment import (
    REINIT_SEED_OFFSET,
    collect_runs,
    experiment_from_dict,
    experiment_hash,
    load_experiment,
    run_experiment,
    run_status,
)
from prunekit.experiment.rundir import run_lock
from prunekit.models import build_model

MODEL = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [24], "num_classes": 10}}


def exp(**changes):
    d = {
        "name": "t",
        "data": {"name": "digits"},
        "model": MODEL,
        "train": {"epochs": 2, "batch_size": 128, "optimizer": "adam", "lr": 0.01},
        "pruning": {"sparsity": 0.75, "allocator": "global"},
        "phases": ["train", "prune", {"train": {"epochs": 2, "lr": 0.003}}],
    }
    d.update(changes)
    return experiment_from_dict(d)


def digest(d):
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def without_seconds(x):
    if isinstance(x, dict):
        return {k: without_seconds(v) for k, v in x.items() if k not in ("seconds",)}
    if isinstance(x, list):
        return [without_seconds(v) for v in x]
    return x


def weights(run_dir):
    m = load_checkpoint(run_dir / "checkpoint").model
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_run_directory_holds_what_the_issue_lists(tmp_path):
    e = exp()
    r = run_experiment(e, tmp_path)
    d = r.run_dir
    assert r.status == "done" and d.name == f"t-{experiment_hash(e)}" and run_status(d) == "done"
    names = {p.name for p in d.iterdir()} - {".lock"}
    assert names == {"experiment.yaml", "metrics.json", "sparsity.json", "checkpoint", "log.txt", "DONE"}
    assert experiment_hash(load_experiment(d / "experiment.yaml")) == experiment_hash(e)
    m = json.loads((d / "metrics.json").read_text())
    train_phases = [p for p in m["phases"] if p["kind"] == "train"]
    # the reported number is the final evaluation, which equals the last epoch's; best-seen is labelled
    assert (
        m["reported"] == "final"
        and m["final"]["accuracy"] == train_phases[-1]["final"] == train_phases[-1]["history"][-1]["metrics"]["accuracy"]
    )
    assert "NOT the reported number" in m["best_seen"]["note"]
    assert m["best_seen"]["value"] == max(r["metrics"]["accuracy"] for p in train_phases for r in p["history"])
    assert m["sparsity"]["target"] == 0.75 and m["sparsity"]["masked"] == pytest.approx(0.75, abs=1e-3)
    assert m["params"]["masked_nonzero"] == round(0.25 * m["params"]["masked"])
    assert m["flops"]["effective"] < m["flops"]["dense"] and m["epochs"] == 4 and m["final"]["accuracy"] > 0.8
    prune = m["phases"][1]
    assert prune["kind"] == "prune" and prune["target"] == 0.75 and "accuracy" in prune["eval"]
    layers = json.loads((d / "sparsity.json").read_text())["layers"]
    assert [x["name"] for x in layers] == ["1.weight", "3.weight"] and all(0 < x["sparsity"] < 1 for x in layers)
    model = load_checkpoint(d / "checkpoint").model
    masks = masks_of(model)
    assert sum(int((~v).sum()) for v in masks.values()) == round(0.75 * sum(v.numel() for v in masks.values()))
    log_text = (d / "log.txt").read_text()
    assert "epoch 2/2" in log_text and "done: accuracy" in log_text


def test_rerunning_a_finished_run_is_a_no_op(tmp_path, caplog):
    e = exp()
    first = run_experiment(e, tmp_path)
    before = digest(first.run_dir)
    with caplog.at_level(logging.INFO, logger="prunekit"):
        again = run_experiment(e, tmp_path)
    assert again.status == "skipped" and again.metrics == first.metrics
    assert digest(first.run_dir) == before
    assert any("skipped" in r.getMessage() for r in caplog.records)


class Kill(Exception):
    pass


@pytest.mark.parametrize(
    "mode, kill_at",
    [
        ("inplace", 7),  # mid-epoch in the first training phase (12 steps per epoch, 2 x 2 epochs)
        ("reparam", 30),  # in the fine-tuning phase, after masks exist
        ("inplace", 48),  # the last step: every phase trained, the run not finished
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, mode, kill_at):
    e = exp(
        pruning={"sparsity": 0.75, "allocator": "global", "mode": mode},
        train={"epochs": 2, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "checkpoint_every": 4},
        phases=["train", "prune", {"train": {"epochs": 2, "lr": 0.05}}],
    )
    ref = run_experiment(e, tmp_path / "ref")
    steps = []

    def kill(ev):
        if ev.kind == "step":
            steps.append(ev.step)
            if len(steps) == kill_at:
                raise Kill

    with pytest.raises(Kill):
        run_experiment(e, tmp_path / "b", callbacks=[kill])
    run_dir = tmp_path / "b" / ref.run_dir.name
    assert run_status(run_dir) == "partial" and not (run_dir / "metrics.json").exists()
    resumed = run_experiment(e, tmp_path / "b")
    assert resumed.status == "done"
    got = json.loads((run_dir / "metrics.json").read_text())
    want = json.loads((ref.run_dir / "metrics.json").read_text())
    assert without_seconds(got) == without_seconds(want)
    a, b = weights(ref.run_dir), weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "resum" in (run_dir / "log.txt").read_text()


def test_iterative_rounds_prune_geometrically_and_keep_earlier_masks(tmp_path):
    e = exp(
        pruning={"sparsity": 0.875, "allocator": "uniform"},
        phases=[{"train": {"epochs": 1}}, {"repeat": {"times": 3, "phases": ["prune", {"train": {"epochs": 1}}]}}],
    )
    m = run_experiment(e, tmp_path).metrics
    assert m is not None
    prunes = [p for p in m["phases"] if p["kind"] == "prune"]
    assert [p["target"] for p in prunes] == pytest.approx([0.5, 0.75, 0.875])
    assert [p["sparsity"] for p in prunes] == pytest.approx([0.5, 0.75, 0.875], abs=2e-3)
    assert m["sparsity"]["masked"] == pytest.approx(0.875, abs=2e-3) and m["epochs"] == 4


@pytest.mark.parametrize("mode", ["inplace", "packed", "reparam"])
def test_rewind_to_init_keeps_the_mask_and_restores_the_initial_weights(tmp_path, mode):
    e = exp(pruning={"sparsity": 0.6, "mode": mode}, phases=["train", "prune", {"rewind": "init"}])
    run_dir = run_experiment(e, tmp_path).run_dir
    model = load_checkpoint(run_dir / "checkpoint").model
    torch.manual_seed(e.seed)
    init = build_model(MODEL)
    masks = masks_of(model)
    for i in (1, 3):
        assert torch.equal(model[i].weight, init[i].weight * masks[f"{i}.weight"])
        assert torch.equal(model[i].bias, init[i].bias)
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.6 * sum(m.numel() for m in masks.values()))


def test_reinit_draws_new_weights_under_the_final_mask(tmp_path):
    e = exp(phases=["train", "prune", {"rewind": "reinit"}])
    model = load_checkpoint(run_experiment(e, tmp_path).run_dir / "checkpoint").model
    torch.manual_seed(e.seed + REINIT_SEED_OFFSET)
    fresh = build_model(MODEL)
    torch.manual_seed(e.seed)
    init = build_model(MODEL)
    mask = masks_of(model)["1.weight"]
    assert torch.equal(model[1].weight, fresh[1].weight * mask) and not torch.equal(fresh[1].weight, init[1].weight)


def test_rewind_to_step_n_restores_the_weights_after_n_steps(tmp_path):
    # digits has 1438 training images: batch 719 gives exactly 2 steps per epoch
    train = {"epochs": 1, "batch_size": 719, "optimizer": "sgd", "lr": 0.1}
    two_steps = exp(train=train, pruning=None, phases=["train"])
    ref = load_checkpoint(run_experiment(two_steps, tmp_path / "a").run_dir / "checkpoint").model
    e = exp(train=train, pruning={"sparsity": 0.5}, phases=[{"train": {"epochs": 3}}, "prune", {"rewind": "step 2"}])
    model = load_checkpoint(run_experiment(e, tmp_path / "b").run_dir / "checkpoint").model
    mask = masks_of(model)["1.weight"]
    assert torch.equal(model[1].weight, ref[1].weight * mask) and torch.equal(model[3].bias, ref[3].bias)


def test_rewind_beyond_the_steps_that_run_is_a_config_error(tmp_path):
    e = exp(phases=[{"train": {"epochs": 1}}, "prune", {"rewind": "step 1000"}, "train"])
    with pytest.raises(ConfigError) as err:
        run_experiment(e, tmp_path)
    assert err.value.field == "phases[2].rewind" and "12 optimizer steps" in err.value.allowed


def test_gradual_pruning_during_a_train_phase_and_a_data_driven_prune(tmp_path):
    gradual = exp(
        pruning={"sparsity": 0.8, "schedule": {"name": "polynomial", "begin": 0, "end": 10, "every": 2}},
        phases=["train", {"train": {"pruning": True}}],
    )
    m = run_experiment(gradual, tmp_path).metrics
    assert m is not None and m["sparsity"]["masked"] == pytest.approx(0.8, abs=2e-3)
    assert m["phases"][1]["history"][0]["sparsity"] > 0  # pruned while training
    taylor = exp(pruning={"sparsity": 0.5, "scorer": "taylor"}, phases=["train", {"prune": {"calibration_batches": 2}}])
    m = run_experiment(taylor, tmp_path).metrics
    assert m is not None and m["sparsity"]["masked"] == pytest.approx(0.5, abs=2e-3)


def test_a_run_held_by_another_process_is_skipped(tmp_path):
    e = exp()
    run_dir = tmp_path / f"t-{experiment_hash(e)}"
    run_dir.mkdir(parents=True)
    with run_lock(run_dir) as mine:
        assert mine
        r = run_experiment(e, tmp_path)
    assert r.status == "locked" and not (run_dir / "work").exists()


def test_log_file_gets_info_while_the_callers_handlers_see_only_warnings(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    r = run_experiment(exp(), tmp_path)
    assert "INFO prunekit.train: epoch 1/2" in (r.run_dir / "log.txt").read_text()
    assert not [x for x in caplog.records if x.levelno < logging.WARNING]
    assert logging.getLogger("prunekit").propagate and logging.getLogger("prunekit").level == logging.NOTSET


def test_a_directory_holding_a_different_experiment_is_refused(tmp_path):
    e = exp()
    run_dir = tmp_path / f"t-{experiment_hash(e)}"
    run_dir.mkdir()
    (run_dir / "experiment.yaml").write_text("name: t\ndata: digits\nmodel: mlp\n")
    with pytest.raises(CheckpointError, match="different experiment"):
        run_experiment(e, tmp_path)


def test_runs_of_a_sweep_train_their_common_dense_phase_once_with_the_same_result(tmp_path):
    def plain(metrics):
        return without_seconds({**metrics, "phases": [{k: v for k, v in p.items() if k != "shared"} for p in metrics["phases"]]})

    sweep = tmp_path / "sweep"
    first = run_experiment(exp(pruning={"sparsity": 0.5, "allocator": "global"}), sweep)
    (entry,) = (sweep / ".shared").iterdir()
    e = exp()  # the same dense phase, another sparsity
    reused = run_experiment(e, sweep)
    alone = run_experiment(e, tmp_path / "alone")
    assert reused.metrics is not None and alone.metrics is not None and first.metrics is not None
    assert reused.metrics["phases"][0]["shared"] == entry.name and "shared" not in first.metrics["phases"][0]
    assert plain(reused.metrics) == plain(alone.metrics)
    a, b = weights(reused.run_dir), weights(alone.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_text = (reused.run_dir / "log.txt").read_text()
    assert "loaded the shared dense prefix" in log_text and "phase 1/3" not in log_text
    other_seed = run_experiment(exp(seed=1), sweep)
    assert other_seed.metrics is not None and "shared" not in other_seed.metrics["phases"][0]
    assert len(list((sweep / ".shared").iterdir())) == 2
    assert len(collect_runs([sweep])) == 3  # the shared entries are not runs
