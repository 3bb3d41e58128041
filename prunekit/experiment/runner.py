"""Run experiments: phases in order on one model, in a run directory named by the experiment's hash.

    for exp in load_experiments("recipes/digits_quick.yaml"):
        result = run_experiment(exp, "runs")        # no-op if runs/<name>-<hash>/DONE exists
        result.metrics["final"]["accuracy"]

**Resume.** Train phases checkpoint at every epoch end (and every ``checkpoint_every`` steps) through
:class:`~prunekit.train.Trainer`; after each phase the model is saved and ``work/state.json`` records the phase as
done. Re-running an interrupted run loads the last finished phase and resumes the current one from its checkpoint,
so the result is the one an uninterrupted run gives. ``rewind: step N`` snapshots are saved to ``work/`` when
step N is reached; ``init`` and ``reinit`` rebuild the model from the seed (``reinit`` uses
``seed + REINIT_SEED_OFFSET``).

**Shared dense prefix.** The leading train phases of a run that prunes, before anything prunes, depend only on the
data, model, seed and those phases, so runs of a sweep over sparsities or protocols repeat them. The first run saves
them to ``<out>/.shared/<key>/``; later runs in the same ``out`` load them there and continue exactly as a resumed
run would (same result), with those phase records marked ``"shared": key`` (their ``seconds`` are the original
run's; the run's own ``seconds`` exclude them). Not reused when the run has callbacks or ``rewind: step N``
snapshots, which need every step to run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit import __version__
from prunekit import masks as M
from prunekit.checkpoint import load_checkpoint, save_checkpoint
from prunekit.config import to_dict
from prunekit.data import TensorDataset, load_dataset, num_batches
from prunekit.errors import CheckpointError, ConfigError
from prunekit.experiment.rundir import (
    CHECKPOINT_DIR,
    DONE_FILE,
    EXPERIMENT_FILE,
    LOG_FILE,
    METRICS_FILE,
    SHARED_DIR,
    SPARSITY_FILE,
    WORK_DIR,
    read_json,
    run_lock,
    run_log,
    write_json_atomic,
    write_text_atomic,
)
from prunekit.experiment.spec import (
    DataSpec,
    Experiment,
    PrunePhase,
    RewindPhase,
    TrainPhase,
    dump_experiment,
    experiment_from_dict,
    experiment_hash,
    experiment_to_dict,
    load_experiment,
    phase_to_dict,
    run_name,
)
from prunekit.models import build_model
from prunekit.pruner import Pruner
from prunekit.recipe import recipe_to_dict
from prunekit.report import sparsity_report
from prunekit.train import Callback, Trainer, TrainEvent, calibration_context, evaluate, metric_name

log = logging.getLogger(__name__)

REINIT_SEED_OFFSET = 1_000_003
STATE_FILE = "state.json"
BEST_SEEN_NOTE = "best evaluation over all epochs of all train phases; diagnostic only, NOT the reported number"

RunOutcome = Literal["done", "skipped", "locked"]


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_experiment` did: ``done`` (ran now), ``skipped`` (DONE before) or ``locked`` (running elsewhere)."""

    experiment: Experiment
    run_dir: Path
    status: RunOutcome
    metrics: dict[str, Any] | None = field(default=None, repr=False)


# -- data ------------------------------------------------------------------------------------------------------


class DataCache:
    """Loaded splits keyed by dataset spec, so a sweep loads each dataset once."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[TensorDataset, TensorDataset]] = {}

    def get(self, spec: DataSpec) -> tuple[TensorDataset, TensorDataset]:
        key = repr((spec.name, sorted(spec.options.items())))
        if key not in self._items:
            self._items[key] = (
                load_dataset(spec.name, "train", **spec.options),
                load_dataset(spec.name, "test", **spec.options),
            )
        train, test = self._items[key]
        if spec.train_subset is not None:
            train = train.subset(spec.train_subset)
        if spec.test_subset is not None:
            test = test.subset(spec.test_subset)
        return train, test


# -- weights ---------------------------------------------------------------------------------------------------


def _values(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer under its plain name (reparametrized weights as their ``original``), masks excluded."""
    out: dict[str, Tensor] = {}
    for fqn, module in model.named_modules():
        if "parametrizations" in fqn.split("."):
            continue
        names = [n for n, p in module._parameters.items() if p is not None]
        if parametrize.is_parametrized(module):
            names += list(module.parametrizations.keys())
        for n in names:
            out[f"{fqn}.{n}" if fqn else n] = M.raw_param(module, n)
        for n, b in module._buffers.items():
            if b is None or (n.endswith("_mask") and M.has_mask(module, n[: -len("_mask")])):
                continue
            out[f"{fqn}.{n}" if fqn else n] = b
    return out


@torch.no_grad()
def copy_weights_(dst: nn.Module, src: nn.Module) -> None:
    """Copy every parameter and buffer of ``src`` into ``dst``; ``dst`` keeps its masks, which are re-applied."""
    d, s = _values(dst), _values(src)
    if d.keys() != s.keys():
        raise CheckpointError(f"rewind: models differ in tensors {sorted(d.keys() ^ s.keys())[:4]}")
    for k, t in d.items():
        t.copy_(s[k])
    M.apply_masks_(dst)


# -- running ---------------------------------------------------------------------------------------------------


def _json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    return x


class _Run:
    """One experiment in its run directory (see the module docstring)."""

    def __init__(self, exp: Experiment, run_dir: Path, data: DataCache, progress: bool, callbacks: Sequence[Callback]) -> None:
        self.exp, self.run_dir, self.progress, self.callbacks = exp, run_dir, progress, tuple(callbacks)
        self.work = run_dir / WORK_DIR
        self.model_spec = exp.model.to_spec()
        self.train_data, self.test_data = data.get(exp.data)
        self.snapshot_steps = {
            p.to.step for p in exp.phases if isinstance(p, RewindPhase) and p.to.kind == "step" and p.to.step > 0
        }
        self.share = not self.callbacks and not any(isinstance(p, RewindPhase) and p.to.kind == "step" for p in exp.phases)

    def build(self, seed: int) -> nn.Module:
        """The model initialised from ``seed`` (the caller's RNG is left alone)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(self.model_spec)

    def check_rewinds(self) -> None:
        steps = 0
        for i, ph in enumerate(self.exp.phases):
            if isinstance(ph, TrainPhase):
                steps += ph.config.epochs * num_batches(len(self.train_data), ph.config.batch_size, ph.config.drop_last)
            elif isinstance(ph, RewindPhase) and ph.to.kind == "step" and ph.to.step > steps:
                raise ConfigError(f"phases[{i}].rewind", ph.to.shorthand(), f"only {steps} optimizer steps run before this phase")

    # -- state ------------------------------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        p = self.work / STATE_FILE
        if p.exists():
            state: dict[str, Any] = read_json(p)
            if state.get("hash") != experiment_hash(self.exp):
                raise CheckpointError(f"{p}: progress of a different experiment")
            return state
        return {"hash": experiment_hash(self.exp), "completed": 0, "steps": 0, "seconds": 0.0, "phases": []}

    # -- shared dense prefix (see the module docstring) ---------------------------------------------------------
    def dense_prefix(self) -> tuple[int, Path] | None:
        """``(n, directory)`` of the shared entry for the leading n dense train phases, if the run prunes after them."""
        n = 0
        for ph in self.exp.phases:
            if not isinstance(ph, TrainPhase) or ph.pruning:
                break
            n += 1
        if n == 0 or n == len(self.exp.phases):
            return None
        normal = experiment_from_dict(experiment_to_dict(self.exp))  # as experiment_hash: 2 and 2.0 agree
        content = {
            "seed": normal.seed,
            "data": to_dict(normal.data),
            "model": normal.model.to_spec(),
            "phases": [phase_to_dict(p) for p in normal.phases[:n]],
            "version": normal.version,
        }
        key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return n, self.run_dir.parent / SHARED_DIR / key

    def load_shared(self, model: nn.Module, n: int, entry: Path) -> dict[str, Any] | None:
        if not self.share or not (entry / STATE_FILE).exists():
            return None
        shared: dict[str, Any] = read_json(entry / STATE_FILE)
        load_checkpoint(entry / CHECKPOINT_DIR, model)
        phases = [{**rec, "shared": entry.name} for rec in shared["phases"]]
        log.info("phases 1-%d: loaded the shared dense prefix %s (trained by %s)", n, entry, shared.get("run", "?"))
        return {"hash": experiment_hash(self.exp), "completed": n, "steps": shared["steps"], "seconds": 0.0, "phases": phases}

    def save_shared(self, model: nn.Module, state: dict[str, Any], entry: Path) -> None:
        if entry.exists() or any(p.get("shared") for p in state["phases"]):
            return
        tmp = entry.parent / f".{entry.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(tmp / CHECKPOINT_DIR, model, model_spec=self.model_spec)
        write_json_atomic(tmp / STATE_FILE, {"run": self.run_dir.name, "steps": state["steps"], "phases": state["phases"]})
        try:
            os.rename(tmp, entry)
        except OSError:  # another process saved the same prefix meanwhile
            shutil.rmtree(tmp, ignore_errors=True)

    def save_phase(self, model: nn.Module, state: dict[str, Any], i: int) -> None:
        save_checkpoint(self.work / f"done-{i}", model, model_spec=self.model_spec, overwrite=True)
        write_json_atomic(self.work / STATE_FILE, state)
        for old in (self.work / f"done-{i - 1}", self.work / f"phase-{i}"):
            shutil.rmtree(old, ignore_errors=True)

    # -- phases -----------------------------------------------------------------------------------------------
    def snapshot_callback(self, steps_before: int) -> Callback:
        def cb(ev: TrainEvent) -> None:
            g = steps_before + ev.step
            if ev.kind == "step" and g in self.snapshot_steps:
                save_checkpoint(self.work / f"rewind-step-{g}", ev.trainer.model, model_spec=self.model_spec, overwrite=True)
                log.info("saved the weights after step %d for rewinding", g)

        return cb

    def train_phase(self, i: int, ph: TrainPhase, model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
        pruner = Pruner(self.exp.pruning) if ph.pruning and self.exp.pruning is not None else None
        trainer = Trainer(
            model,
            ph.config,
            self.train_data,
            self.test_data,
            pruner=pruner,
            callbacks=(self.snapshot_callback(int(state["steps"])), *self.callbacks),
            progress=self.progress,
            checkpoint_dir=self.work / f"phase-{i}",
            model_spec=self.model_spec,
        )
        if pruner is None and M.masks_of(model):
            M.bind_optimizer_(model, trainer.optimizer)  # earlier masks stay enforced
        res = trainer.fit(resume=True)
        log.info("phase %d (train, %d epochs): %s", i, ph.config.epochs, res.summary())
        rec = res.to_dict()
        rec.update({"phase": i, "kind": "train", "pruning": ph.pruning, "epochs": ph.config.epochs})
        rec["sparsity"] = _masked_sparsity(model)
        return rec

    def prune_phase(self, i: int, ph: PrunePhase, model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
        recipe = self.exp.pruning
        assert recipe is not None  # Experiment validates this
        target = ph.target(recipe.target)
        pruner = Pruner(recipe).attach(model)
        n_calib = ph.calibration_batches if recipe.scorer.requires - {"weights"} else 0
        ctx = calibration_context(
            model, self.train_data, n_calib, self.exp.train.batch_size, seed=self.exp.seed, step=int(state["steps"])
        )
        layers = pruner.update_masks(target, ctx)
        rec: dict[str, Any] = {"phase": i, "kind": "prune", "target": target, "sparsity": pruner.sparsity(), "layers": layers}
        if self.exp.eval.after_prune:
            rec["eval"] = evaluate(model, self.test_data, self.exp.eval.batch_size)
        log.info("phase %d (prune): target %.4f, sparsity %.4f %s", i, target, rec["sparsity"], rec.get("eval", ""))
        return rec

    def rewind_phase(self, i: int, ph: RewindPhase, model: nn.Module) -> dict[str, Any]:
        to = ph.to
        src: nn.Module | None = None
        if to.kind == "init" or (to.kind == "step" and to.step == 0):
            src = self.build(self.exp.seed)
        elif to.kind == "reinit":
            src = self.build(self.exp.seed + REINIT_SEED_OFFSET)
        elif to.kind == "step":
            path = self.work / f"rewind-step-{to.step}"
            if not path.exists():
                raise CheckpointError(f"{path} is missing (interrupted while saving it?); delete {self.run_dir} and run again")
            src = load_checkpoint(path, self.build(self.exp.seed)).model
        if src is not None:
            copy_weights_(model, src)
        log.info("phase %d (rewind): %s", i, to.shorthand())
        return {"phase": i, "kind": "rewind", "to": to.shorthand()}

    # -- the run ----------------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        exp = self.exp
        self.check_rewinds()
        state = self.load_state()
        k = int(state["completed"])
        model = self.build(exp.seed)
        prefix = self.dense_prefix()
        if k > 0:
            load_checkpoint(self.work / f"done-{k - 1}", model)
            log.info("resuming after phase %d of %d", k - 1, len(exp.phases))
        elif prefix is not None:
            state = self.load_shared(model, *prefix) or state
            k = int(state["completed"])
        self.work.mkdir(parents=True, exist_ok=True)
        for i in range(k, len(exp.phases)):
            ph = exp.phases[i]
            log.info("phase %d/%d: %s", i + 1, len(exp.phases), phase_to_dict(ph, exp.train))
            t_phase = time.perf_counter()
            if isinstance(ph, TrainPhase):
                rec = self.train_phase(i, ph, model, state)
                state["steps"] = int(state["steps"]) + int(rec["steps"])
            elif isinstance(ph, PrunePhase):
                rec = self.prune_phase(i, ph, model, state)
            else:
                rec = self.rewind_phase(i, ph, model)
            rec["seconds"] = time.perf_counter() - t_phase
            state["phases"].append(_json_ready(rec))
            state["completed"] = i + 1
            state["seconds"] = float(state["seconds"]) + time.perf_counter() - t0
            t0 = time.perf_counter()
            self.save_phase(model, state, i)
            if prefix is not None and i + 1 == prefix[0]:
                self.save_shared(model, state, prefix[1])
        return self.finish(model, state, time.perf_counter() - t0)

    def finish(self, model: nn.Module, state: dict[str, Any], extra_seconds: float) -> dict[str, Any]:
        exp, run_dir = self.exp, self.run_dir
        final = evaluate(model, self.test_data, exp.eval.batch_size)
        example = self.train_data.get(slice(0, 1))[0]
        rep = sparsity_report(model, example).to_dict()
        metric = metric_name(self.test_data.task)
        metrics = _metrics(exp, state, final, metric, rep, float(state["seconds"]) + extra_seconds)
        extra: dict[str, Any] = {"experiment": experiment_hash(exp), "final": final}
        if self.test_data.task == "classification":
            extra["input_shape"] = [1, *self.train_data.sample_shape]
        save_checkpoint(
            run_dir / CHECKPOINT_DIR,
            model,
            model_spec=self.model_spec,
            recipe=recipe_to_dict(exp.pruning) if exp.pruning is not None else None,
            extra=extra,
            overwrite=True,
        )
        layers = [{k: v for k, v in row.items()} for row in rep["layers"]]
        write_json_atomic(
            run_dir / SPARSITY_FILE,
            {"masked_sparsity": rep["masked_sparsity"], "sparsity": rep["sparsity"], "layers": layers},
        )
        write_json_atomic(run_dir / METRICS_FILE, metrics)
        write_text_atomic(run_dir / DONE_FILE, f"{experiment_hash(exp)}\n")
        shutil.rmtree(self.work, ignore_errors=True)
        log.info("done: %s %.4f after the final phase (%s)", metric, final.get(metric, float("nan")), run_dir)
        return metrics


def _masked_sparsity(model: nn.Module) -> float:
    masks = M.masks_of(model)
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


def _metrics(
    exp: Experiment, state: dict[str, Any], final: dict[str, float], metric: str, rep: dict[str, Any], seconds: float
) -> dict[str, Any]:
    phases: list[dict[str, Any]] = state["phases"]
    best: dict[str, Any] | None = None
    sign = 1.0 if metric == "accuracy" else -1.0
    for p in phases:
        for r in p.get("history", []):
            v = r.get("metrics", {}).get(metric)
            if v is not None and (best is None or sign * v > sign * best["value"]):
                best = {"value": v, "phase": p["phase"], "epoch": r["epoch"]}
    if best is not None:
        best["note"] = BEST_SEEN_NOTE
    return {
        "name": exp.name,
        "hash": experiment_hash(exp),
        "protocol": exp.protocol,
        "seed": exp.seed,
        "metric": metric,
        "reported": "final",
        "final": final,
        "best_seen": best,
        "sparsity": {"target": exp.target_sparsity, "masked": rep["masked_sparsity"], "overall": rep["sparsity"]},
        "params": {
            "total": rep["total_params"],
            "nonzero": rep["total_nonzero"],
            "masked": rep["masked_params"],
            "masked_nonzero": rep["masked_nonzero"],
        },
        "flops": {"dense": rep["dense_flops"], "effective": rep["effective_flops"]},
        "bytes": {"dense": rep["dense_bytes"], "compressed": rep["compressed_bytes"]},
        "epochs": exp.epoch_budget,
        "steps": state["steps"],
        "seconds": seconds,
        "phases": phases,
        "versions": {"prunekit": __version__, "torch": torch.__version__},
    }


def _check_experiment_file(run_dir: Path, exp: Experiment) -> None:
    p = run_dir / EXPERIMENT_FILE
    if p.exists():
        if experiment_hash(load_experiment(p)) != experiment_hash(exp):
            raise CheckpointError(f"{p} describes a different experiment; move that directory away")
    else:
        write_text_atomic(p, dump_experiment(exp))


def run_experiment(
    exp: Experiment,
    out: str | Path,
    *,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
    data: DataCache | None = None,
) -> RunResult:
    """Run ``exp`` in ``out/<name>-<hash>/``: a no-op when DONE, a resume when interrupted. See the module docstring."""
    run_dir = Path(out) / run_name(exp)
    if (run_dir / DONE_FILE).exists():
        log.info("%s: already done (DONE exists); skipped", run_dir)
        return RunResult(exp, run_dir, "skipped", read_json(run_dir / METRICS_FILE))
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) as locked:
        if not locked:
            log.warning("%s is being run by another process; skipped", run_dir)
            return RunResult(exp, run_dir, "locked")
        if (run_dir / DONE_FILE).exists():  # finished by another process meanwhile
            return RunResult(exp, run_dir, "skipped", read_json(run_dir / METRICS_FILE))
        _check_experiment_file(run_dir, exp)
        with run_log(run_dir / LOG_FILE), _logged_failure(run_dir):
            log.info("run %s (epoch budget %d)", run_dir.name, exp.epoch_budget)
            metrics = _Run(exp, run_dir, data or DataCache(), progress, callbacks).execute()
    return RunResult(exp, run_dir, "done", metrics)


@contextlib.contextmanager
def _logged_failure(run_dir: Path) -> Iterator[None]:
    try:
        yield
    except BaseException as e:
        log.error("run stopped (%s: %s); run again to resume", type(e).__name__, e)
        raise


def run_experiments(
    exps: Sequence[Experiment],
    out: str | Path,
    *,
    progress: bool = False,
    on_start: Callable[[int, Experiment], None] | None = None,
) -> list[RunResult]:
    """Run experiments one after another (datasets loaded once); ``on_start(i, exp)`` is called before each."""
    cache = DataCache()
    results = []
    for i, exp in enumerate(exps):
        if on_start is not None:
            on_start(i, exp)
        results.append(run_experiment(exp, out, progress=progress, data=cache))
    return results
