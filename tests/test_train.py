"""Trainer: schedules, config validation, pruner hook, reported vs best-seen metric, bit-identical resume."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from prunekit import CheckpointError, ConfigError, Polynomial, Pruner, PruneRecipe
from prunekit.checkpoint import META, OPTIM, WEIGHTS
from prunekit.data import RandomCropFlip, load_dataset
from prunekit.models import build_model
from prunekit.train import EpochRecord, TrainConfig, Trainer, TrainEvent, lr_at, train, train_config_from_dict


def blobs(n=96, shape=(8,), classes=3):
    return load_dataset("synthetic", "train", n=n, shape=shape, classes=classes), load_dataset(
        "synthetic", "test", n=48, shape=shape, classes=classes
    )


def mlp(d_in=8, classes=3):
    return nn.Sequential(nn.Linear(d_in, 16), nn.ReLU(), nn.Linear(16, classes))


# -- learning-rate schedules (pure functions of the step) ----------------------------------------------------


def test_warmup_is_linear_then_constant():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(cfg, s, 100, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_step_schedule_multiplies_by_gamma_at_milestone_epochs():
    cfg = TrainConfig(lr=0.1, lr_schedule="step", milestones=(2, 3), gamma=0.1, epochs=4)
    got = [lr_at(cfg, s, 40, 10) for s in (0, 19, 20, 29, 30, 39)]
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_goes_from_lr_to_min_lr_after_warmup():
    cfg = TrainConfig(lr=1.0, lr_schedule="cosine", warmup_steps=10, min_lr=0.1)
    assert lr_at(cfg, 9, 110, 10) == 1.0 and lr_at(cfg, 10, 110, 10) == 1.0
    assert lr_at(cfg, 60, 110, 10) == pytest.approx(0.55) and lr_at(cfg, 110, 110, 10) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"optimizer": "adam", "nesterov": True}, "nesterov"),
        ({"lr_schedule": "step", "milestones": (3, 2)}, "milestones"),
        ({"milestones": (2,)}, "milestones"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kwargs)
    assert e.value.field == field


def test_config_from_plain_data_and_help_metadata():
    cfg = train_config_from_dict({"optimizer": "sgd", "milestones": [80, 120], "lr_schedule": "step", "epochs": "160"})
    assert cfg.milestones == (80, 120) and cfg.epochs == 160
    with pytest.raises(ConfigError, match="did you mean 'momentum'"):
        train_config_from_dict({"momentun": 0.9})
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))


# -- training ----------------------------------------------------------------------------------------------


def test_learns_the_synthetic_task_and_reports_the_final_epoch():
    tr, te = blobs()
    torch.manual_seed(0)
    res = train(mlp(), TrainConfig(epochs=5, batch_size=16, optimizer="adam", lr=1e-2), tr, te, progress=False)
    assert res.metric == "accuracy" and res.final_epoch == 5 and len(res.history) == 5
    assert res.final == res.history[-1].metrics["accuracy"] and res.final > 0.9
    assert res.steps == 5 * 6 and res.to_dict()["reported"] == "final"


def test_best_seen_is_kept_apart_from_the_reported_final_metric():
    tr, te = blobs()
    t = Trainer(mlp(), TrainConfig(), tr, te, progress=False)
    accs = [0.5, 0.9, 0.7]
    t.history = [EpochRecord(i + 1, i, 1.0, 0.1, {"loss": 1.0, "accuracy": a}, None, 0.0) for i, a in enumerate(accs)]
    r = t.result()
    assert (r.final, r.final_epoch, r.best_seen, r.best_seen_epoch) == (0.7, 3, 0.9, 2)
    assert r.summary().startswith("accuracy after the final epoch (3): 0.7000") and "not the reported number" in r.summary()


def test_language_model_reports_perplexity_lower_is_better():
    tr, te = load_dataset("synthetic_lm", "train", block_size=8), load_dataset("synthetic_lm", "test", block_size=8)
    torch.manual_seed(0)
    spec = {"vocab_size": 16, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16}
    model = build_model({"name": "char_gpt", "kwargs": spec})
    res = train(model, TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=1e-2), tr, te, progress=False)
    m = res.history[-1].metrics
    assert res.metric == "perplexity" and m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert res.final < 8.0  # two successors per token: the best achievable perplexity is 2, uniform is 16
    assert res.best_seen == min(r.metrics["perplexity"] for r in res.history)


def test_pruner_steps_after_every_optimizer_step_and_callbacks_see_events():
    tr, te = blobs()
    pruner = Pruner(PruneRecipe(sparsity=0.75, schedule=Polynomial(begin=0, end=12, every=3)))
    seen: list[tuple[str, int]] = []

    def cb(ev: TrainEvent) -> None:
        seen.append((ev.kind, ev.step))
        if ev.kind == "step":
            assert ev.trainer.pruner is not None and ev.trainer.pruner.step_count == ev.step

    res = train(mlp(), TrainConfig(epochs=3, batch_size=16), tr, te, pruner=pruner, callbacks=[cb], progress=False)
    assert pruner.step_count == res.steps == 18
    assert seen[:6] == [("step", s) for s in range(1, 7)] and seen[6] == ("epoch", 6) and seen[-1] == ("epoch", 18)
    assert res.history[-1].sparsity == pytest.approx(0.75, abs=0.01)


def test_training_leaves_global_rng_and_determinism_flags_alone():
    tr, te = blobs()
    before_flag = torch.are_deterministic_algorithms_enabled()
    model = mlp()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    seen = []
    cb = lambda ev: seen.append(torch.are_deterministic_algorithms_enabled())  # noqa: E731
    train(model, TrainConfig(epochs=1, batch_size=32, deterministic=True), tr, te, callbacks=[cb], progress=False)
    assert torch.equal(torch.get_rng_state(), state) and all(seen) and torch.are_deterministic_algorithms_enabled() == before_flag


# -- resume ------------------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def resume_setup(tmp_path, mode):
    """Conv + BN + dropout model, crop/flip augmentation, gradual pruner, SGD momentum, warm-up + cosine."""
    base_tr, te = blobs(n=60, shape=(2, 6, 6))
    tr = dataclasses.replace(base_tr, augment=RandomCropFlip(2))
    cfg = TrainConfig(
        epochs=3,
        batch_size=16,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
        lr_schedule="cosine",
        warmup_steps=3,
        checkpoint_every=5,
    )

    def make(callbacks=(), ckpt=None):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(144, 3)
        )
        pruner = Pruner(PruneRecipe(sparsity=0.6, mode=mode, schedule=Polynomial(begin=0, end=8, every=2)))
        return Trainer(model, cfg, tr, te, pruner=pruner, callbacks=callbacks, progress=False, checkpoint_dir=ckpt)

    return make


@pytest.mark.parametrize("mode", ["inplace", "packed", "reparam"])
# 4 batches per epoch, checkpoints every 5 steps and at epoch ends. ("step", 7): killed two steps after the
# mid-epoch checkpoint at step 5, so steps 6-7 are redone; ("epoch", 8): killed right after the epoch-2 checkpoint.
@pytest.mark.parametrize("stop_at", [("step", 7), ("epoch", 8)])
def test_interrupted_run_resumes_bit_identically(tmp_path, mode, stop_at):
    make = resume_setup(tmp_path, mode)
    ref_trainer = make()
    ref = ref_trainer.fit()

    def stop(ev: TrainEvent) -> None:
        if (ev.kind, ev.step) == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        make(callbacks=[stop], ckpt=tmp_path / "run").fit()
    resumed_trainer = make(ckpt=tmp_path / "run")
    resumed = resumed_trainer.fit(resume=True)

    ref_sd, got_sd = ref_trainer.model.state_dict(), resumed_trainer.model.state_dict()
    assert ref_sd.keys() == got_sd.keys() and all(torch.equal(ref_sd[k], got_sd[k]) for k in ref_sd)
    assert [(r.train_loss, r.metrics, r.sparsity, r.lr) for r in ref.history] == [
        (r.train_loss, r.metrics, r.sparsity, r.lr) for r in resumed.history
    ]
    assert resumed.final == ref.final and resumed.steps == ref.steps == 12
    ref_opt, got_opt = ref_trainer.optimizer.state_dict()["state"], resumed_trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(ref_opt[i]["momentum_buffer"], got_opt[i]["momentum_buffer"]) for i in ref_opt)
    assert resumed_trainer.pruner is not None and resumed_trainer.pruner.step_count == 12


def test_checkpoint_holds_no_pickle_and_refuses_a_different_config(tmp_path):
    make = resume_setup(tmp_path, "inplace")
    make(ckpt=tmp_path / "run").fit()
    files = sorted(p.name for p in (tmp_path / "run" / "last").iterdir())
    assert files == sorted([META, OPTIM, WEIGHTS])
    tr, te = blobs(n=60, shape=(2, 6, 6))
    other = Trainer(mlp(72), TrainConfig(epochs=3), tr, te, progress=False, checkpoint_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match="different training config"):
        other.fit(resume=True)


def test_resume_of_a_finished_run_returns_its_result_without_training(tmp_path):
    make = resume_setup(tmp_path, "inplace")
    first = make(ckpt=tmp_path / "run").fit()
    again = make(ckpt=tmp_path / "run").fit(resume=True)
    assert again.final == first.final and again.steps == first.steps
