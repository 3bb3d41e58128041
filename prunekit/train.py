"""The trainer: one loop for dense training, pruning during training and fine-tuning.

    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, epochs=160,
                      lr_schedule="step", milestones=(80, 120), seed=0)
    result = Trainer(model, cfg, load_dataset("cifar10", "train"), load_dataset("cifar10", "test"),
                     pruner=Pruner(recipe), checkpoint_dir="runs/x").fit(resume=True)
    result.final        # the reported number: the metric after the final epoch

What it does, in order, for every batch: set the learning rate (a pure function of the step), forward, loss,
backward, optional gradient clipping, ``optimizer.step()``, then ``pruner.step(ctx)``: the pruner's schedule sees
every optimizer step, with the batch and the loss function in ``ctx`` for data-driven criteria. Then callbacks.

**Reported metric.** ``TrainResult.final`` is the evaluation metric after the *final* epoch (test accuracy for
classification, perplexity for language models). The best value seen during training is kept as
``best_seen``, labelled as such and never reported as the result: picking the best epoch by its test score selects
on the test set and flatters the number.

**Reproducibility.** The data order and augmentation of epoch ``e`` are a pure function of ``(seed, e)``; the
global torch RNG (dropout) is seeded at the start and forked, so training leaves the caller's RNG untouched.
A checkpoint (``checkpoint_dir/last``, written atomically through :mod:`prunekit.checkpoint`: safetensors + JSON,
never pickle) holds the model with its masks, the optimizer state, the pruner state, the RNG state (base64 in the
JSON), the step, the position inside the epoch and the history, so ``fit(resume=True)`` after an interruption
continues bit-identically. Python's ``random`` and NumPy's global RNG are not used by prunekit and not saved.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from prunekit.checkpoint import load_checkpoint, load_optimizer_state, read_meta, save_checkpoint
from prunekit.config import from_dict, to_dict
from prunekit.data.base import Task, TensorDataset, batches, num_batches
from prunekit.errors import CheckpointError, ConfigError
from prunekit.pruner import Pruner
from prunekit.recipe import recipe_to_dict
from prunekit.scoring.base import ScoreContext

log = logging.getLogger(__name__)

OptimizerName = Literal["sgd", "adam", "adamw"]
LRScheduleName = Literal["none", "step", "cosine"]
STATE_VERSION = 1
LAST = "last"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (hardware, progress bars and paths are not part of it)."""

    epochs: int = field(default=1, metadata=_help("passes over the training set"))
    batch_size: int = field(default=128, metadata=_help("training batch size"))
    optimizer: OptimizerName = field(default="sgd", metadata=_help("sgd, adam or adamw"))
    lr: float = field(default=0.1, metadata=_help("peak learning rate"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    nesterov: bool = field(default=False, metadata=_help("Nesterov momentum (SGD)"))
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=_help("Adam/AdamW betas"))
    weight_decay: float = field(default=0.0, metadata=_help("L2 (sgd, adam) or decoupled (adamw) weight decay"))
    decay_norm_and_bias: bool = field(default=True, metadata=_help("also decay 1-D parameters (biases, norm scales)"))
    lr_schedule: LRScheduleName = field(default="none", metadata=_help("none, step (x gamma at milestones) or cosine"))
    warmup_steps: int = field(default=0, metadata=_help("linear warm-up from lr/warmup_steps to lr over these steps"))
    milestones: tuple[int, ...] = field(default=(), metadata=_help("epochs at which the step schedule multiplies lr by gamma"))
    gamma: float = field(default=0.1, metadata=_help("step schedule factor"))
    min_lr: float = field(default=0.0, metadata=_help("cosine schedule floor"))
    grad_clip: float = field(default=0.0, metadata=_help("clip the global gradient norm to this (0: off)"))
    eval_every: int = field(default=1, metadata=_help("evaluate every this many epochs (and always after the last)"))
    eval_batch_size: int = field(default=1000, metadata=_help("evaluation batch size"))
    drop_last: bool = field(default=False, metadata=_help("drop the last incomplete training batch"))
    seed: int = field(default=0, metadata=_help("seeds data order, augmentation and the torch RNG (dropout)"))
    deterministic: bool = field(default=False, metadata=_help("torch.use_deterministic_algorithms during training"))
    checkpoint_every: int = field(default=0, metadata=_help("also checkpoint every this many steps (0: epoch ends only)"))

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every": self.eval_every}
        positive["eval_batch_size"] = self.eval_batch_size
        for name, v in positive.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(name, v, "must be a positive integer")
        for name, v in {"warmup_steps": self.warmup_steps, "checkpoint_every": self.checkpoint_every}.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(name, v, "must be a non-negative integer")
        if not self.lr > 0:
            raise ConfigError("lr", self.lr, "must be positive")
        for name, x in {"momentum": self.momentum, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip}.items():
            if x < 0:
                raise ConfigError(name, x, "must be non-negative")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError("min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ConfigError("optimizer", self.optimizer, "allowed: sgd, adam, adamw")
        if self.lr_schedule not in ("none", "step", "cosine"):
            raise ConfigError("lr_schedule", self.lr_schedule, "allowed: none, step, cosine")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov", self.nesterov, "needs optimizer: sgd with momentum > 0")
        if list(self.milestones) != sorted(set(self.milestones)) or any(m < 1 for m in self.milestones):
            raise ConfigError("milestones", self.milestones, "must be increasing positive epochs")
        if self.milestones and self.lr_schedule != "step":
            raise ConfigError("milestones", self.milestones, "only used by lr_schedule: step")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("betas", self.betas, "each must be in [0, 1)")


def train_config_from_dict(data: Any) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from plain data (parsed YAML/JSON)."""
    return from_dict(TrainConfig, data, "train")


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then the schedule. A pure function."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "step":
        return float(cfg.lr * cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones))
    if cfg.lr_schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over ``model.parameters()`` (order matters for resuming; see :class:`Trainer`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]]
    if cfg.decay_norm_and_bias or cfg.weight_decay == 0:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def task_loss(task: Task, output: Tensor, y: Tensor, reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """Cross-entropy over classes (N, C) or over every position of language-model logits (N, T, V)."""
    if task == "language_model":
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1), reduction=reduction)
    return F.cross_entropy(output, y, reduction=reduction)


def calibration_context(
    model: nn.Module, data: TensorDataset, n_batches: int, batch_size: int, seed: int = 0, step: int = 0
) -> ScoreContext:
    """A :class:`ScoreContext` with ``n_batches`` shuffled ``(x, y)`` batches of ``data`` and the task's loss.

    Data-driven criteria (Taylor, OBD, OBS, activation statistics, LDA) score with it.
    """

    def loss_fn(m: nn.Module, batch: Any) -> Tensor:
        out = m(batch[0])
        return task_loss(data.task, getattr(out, "logits", out), batch[1])

    g = torch.Generator().manual_seed(seed)
    calib = list(itertools.islice(batches(data, batch_size, shuffle=True, generator=g), n_batches))
    return ScoreContext(model, step=step, calibration=calib, loss_fn=loss_fn)


def metric_name(task: Task) -> str:
    return "perplexity" if task == "language_model" else "accuracy"


def higher_is_better(metric: str) -> bool:
    return metric == "accuracy"


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and accuracy (classification) or perplexity (language model) over the whole split, in eval mode."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    loss_sum, correct, count = 0.0, 0, 0
    try:
        for x, y in batches(data.without_augmentation(), batch_size):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += float(task_loss(data.task, out, y, "sum"))
            count += y.numel()
            if data.task == "classification":
                correct += int((out.argmax(-1) == y).sum())
    finally:
        model.train(was_training)
    loss = loss_sum / max(1, count)
    if data.task == "language_model":
        return {"loss": loss, "perplexity": math.exp(loss)}
    return {"loss": loss, "accuracy": correct / max(1, count)}


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _cuda_index(model: nn.Module) -> int | None:
    d = _device_of(model)
    if d.type != "cuda":
        return None
    return d.index if d.index is not None else torch.cuda.current_device()


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), Python's ``random`` and NumPy, e.g. before building a model."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)


def _plain(data: Any) -> Any:
    """``data`` as it comes back from the checkpoint's JSON (tuples become lists, and so on)."""
    return json.loads(json.dumps(data, default=str))


def _b64(t: Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: 1-based ``epoch``, optimizer steps so far, mean training loss, last lr, evaluation, sparsity."""

    epoch: int
    step: int
    train_loss: float
    lr: float
    metrics: dict[str, float]
    sparsity: float | None
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :meth:`Trainer.fit`. ``final`` is THE reported number; ``best_seen`` is not.

    ``final``: ``metric`` after the final epoch. ``best_seen``: the best ``metric`` over all evaluated epochs, kept
    for diagnosis only (choosing the epoch by its test score is selection on the test set).
    """

    metric: str
    final: float
    final_epoch: int
    best_seen: float
    best_seen_epoch: int
    history: tuple[EpochRecord, ...]
    steps: int

    def summary(self) -> str:
        text = f"{self.metric} after the final epoch ({self.final_epoch}): {self.final:.4f}"
        if self.best_seen_epoch != self.final_epoch:
            text += (
                f"; best seen during training {self.best_seen:.4f} at epoch {self.best_seen_epoch}"
                " (best-seen, not the reported number)"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dataclasses.asdict(self)
        d["history"] = [dataclasses.asdict(r) for r in self.history]
        d["reported"] = "final"
        return d


@dataclass(frozen=True)
class TrainEvent:
    """What a callback sees: ``kind`` "step" (after the optimizer and pruner steps) or "epoch" (after evaluation)."""

    kind: Literal["step", "epoch"]
    trainer: Trainer
    epoch: int
    step: int
    loss: float | None = None
    record: EpochRecord | None = None


Callback = Callable[[TrainEvent], None]


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside, the previous setting after. On CUDA, PyTorch also needs
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment (set it before starting Python)."""
    if not enabled:
        yield
        return
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench


class Trainer:
    """Trains ``model`` on ``train_data``, evaluating on ``eval_data``; see the module docstring.

    The pruner (if any) is attached before the optimizer is built, so the optimizer's parameter order is the
    same in a fresh run and in a resumed one (in reparam mode attaching moves weights into parametrizations),
    and then bound to the optimizer. ``checkpoint_dir`` enables checkpoints at epoch ends (and every
    ``config.checkpoint_every`` steps) and ``fit(resume=True)``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: TensorDataset,
        eval_data: TensorDataset | None = None,
        *,
        pruner: Pruner | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        model_spec: dict[str, Any] | None = None,
    ) -> None:
        if eval_data is not None and eval_data.task != train_data.task:
            raise ConfigError("eval_data", eval_data.name, f"task {eval_data.task} differs from training task {train_data.task}")
        self.model, self.config, self.train_data, self.eval_data = model, config, train_data, eval_data
        self.pruner, self.callbacks, self.progress = pruner, tuple(callbacks), progress
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.model_spec = model_spec
        if pruner is not None:
            pruner.attach(model)
        self.optimizer = build_optimizer(model, config)
        if pruner is not None:
            pruner.attach(model, self.optimizer)  # adopts the masks attached above; binds the optimizer
        self.steps_per_epoch = num_batches(len(train_data), config.batch_size, config.drop_last)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.metric = metric_name(train_data.task) if eval_data is not None else "train_loss"
        # progress
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self.batch_in_epoch = 0  # batches of the current epoch completed
        self.history: list[EpochRecord] = []
        self._loss_sum, self._loss_count, self._epoch_seconds = 0.0, 0, 0.0
        self._rng: dict[str, Tensor] | None = None  # RNG states to install at the start of fit (resume)

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train for ``config.epochs`` epochs (continuing from ``checkpoint_dir/last`` with ``resume``)."""
        if resume:
            if self.checkpoint_dir is None:
                raise ConfigError("resume", True, "needs a checkpoint_dir")
            if (self.checkpoint_dir / LAST).exists():
                self.load_state(self.checkpoint_dir / LAST)
        cuda = _cuda_index(self.model)
        with torch.random.fork_rng(devices=[] if cuda is None else [cuda]), _deterministic(self.config.deterministic):
            if self._rng is not None:
                torch.set_rng_state(self._rng["torch"])
                if cuda is not None and "cuda" in self._rng:
                    torch.cuda.set_rng_state(self._rng["cuda"], cuda)
            else:
                torch.manual_seed(self.config.seed)
            while self.epoch < self.config.epochs:
                self._train_epoch()
        return self.result()

    def _batch_loss(self, model: nn.Module, batch: Any) -> Tensor:
        x, y = batch
        return task_loss(self.train_data.task, model(x), y)

    def _train_epoch(self) -> None:
        cfg, model = self.config, self.model
        g = _epoch_generator(cfg.seed, self.epoch)
        it = batches(
            self.train_data, cfg.batch_size, shuffle=True, generator=g, drop_last=cfg.drop_last, start=self.batch_in_epoch
        )
        bar = tqdm(
            it,
            total=self.steps_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not self.progress,
            leave=False,
        )
        t0 = time.perf_counter()
        model.train()
        lr = lr_at(cfg, self.step, self.total_steps, self.steps_per_epoch)
        try:
            lr, t0 = self._run_batches(bar, lr, t0)
        finally:
            bar.close()
        self._epoch_seconds += time.perf_counter() - t0
        self._end_epoch(lr)

    def _run_batches(self, bar: Any, lr: float, t0: float) -> tuple[float, float]:
        cfg, model, device = self.config, self.model, _device_of(self.model)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            lr = lr_at(cfg, self.step, self.total_steps, self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._batch_loss(model, (x, y))
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if self.pruner is not None:
                self.pruner.step(ScoreContext(model, step=self.step, batch=(x, y), loss_fn=self._batch_loss))
            value = float(loss.detach())
            self._loss_sum += value * len(y)
            self._loss_count += len(y)
            self.step += 1
            self.batch_in_epoch += 1
            if self.progress and self.step % 10 == 0:
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}", refresh=False)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                self._epoch_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self._checkpoint()
            self._emit(TrainEvent("step", self, self.epoch, self.step, loss=value))
        return lr, t0

    def _end_epoch(self, lr: float) -> None:
        cfg = self.config
        epoch = self.epoch + 1
        metrics: dict[str, float] = {}
        if self.eval_data is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            metrics = evaluate(self.model, self.eval_data, cfg.eval_batch_size)
        record = EpochRecord(
            epoch,
            self.step,
            self._loss_sum / max(1, self._loss_count),
            lr,
            metrics,
            self.pruner.sparsity() if self.pruner is not None else None,
            self._epoch_seconds,
        )
        self.history.append(record)
        self.epoch, self.batch_in_epoch = epoch, 0
        self._loss_sum, self._loss_count, self._epoch_seconds = 0.0, 0, 0.0
        log.info("epoch %d/%d: train loss %.4f %s", epoch, cfg.epochs, record.train_loss, metrics)
        self._checkpoint()
        self._emit(TrainEvent("epoch", self, epoch, self.step, record=record))

    def _emit(self, event: TrainEvent) -> None:
        for cb in self.callbacks:
            cb(event)

    # -- results -----------------------------------------------------------------------------------------
    def result(self) -> TrainResult:
        """Final-epoch metric (reported) and best-seen metric (diagnostic) from the history so far."""
        if not self.history:
            raise ConfigError("result", None, "no epoch has finished yet")
        if self.metric == "train_loss":
            series = [(r.epoch, r.train_loss) for r in self.history]
        else:
            series = [(r.epoch, r.metrics[self.metric]) for r in self.history if self.metric in r.metrics]
        final_epoch, final = series[-1]
        sign = 1.0 if higher_is_better(self.metric) else -1.0
        best_epoch, best = max(series, key=lambda s: sign * s[1])
        return TrainResult(self.metric, final, final_epoch, best, best_epoch, tuple(self.history), self.step)

    # -- state -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-able trainer state (tensors of the RNG as base64)."""
        rng: dict[str, Any] = {"torch": _b64(torch.get_rng_state())}
        cuda = _cuda_index(self.model)
        if cuda is not None:  # dropout on a GPU draws from that device's generator
            rng["cuda"] = _b64(torch.cuda.get_rng_state(cuda))
        return {
            "version": STATE_VERSION,
            "config": to_dict(self.config),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "loss_sum": self._loss_sum,
            "loss_count": self._loss_count,
            "epoch_seconds": self._epoch_seconds,
            "history": [dataclasses.asdict(r) for r in self.history],
            "rng": rng,
        }

    def save_state(self, path: str | Path) -> Path:
        """Checkpoint model (with masks), optimizer, pruner and trainer state to the directory ``path``, atomically."""
        p = self.pruner
        return save_checkpoint(
            path,
            self.model,
            model_spec=self.model_spec,
            recipe=recipe_to_dict(p.recipe) if p is not None else None,
            pruner_state=p.state_dict() if p is not None else None,
            optimizer=self.optimizer,
            extra={"trainer": self.state()},
            overwrite=True,
        )

    def load_state(self, path: str | Path) -> None:
        """Restore everything :meth:`save_state` wrote; ``fit`` then continues where the run stopped."""
        meta = read_meta(path)
        st = (meta.get("extra") or {}).get("trainer")
        if not isinstance(st, dict) or st.get("version") != STATE_VERSION:
            raise CheckpointError(f"{path}: no trainer state (version {STATE_VERSION}) in this checkpoint")
        if st["config"] != _plain(to_dict(self.config)):
            changed = sorted(k for k, v in _plain(to_dict(self.config)).items() if st["config"].get(k) != v)
            raise CheckpointError(f"{path}: saved with a different training config (fields: {', '.join(changed)})")
        if (meta.get("pruner") is None) != (self.pruner is None):
            raise CheckpointError(f"{path}: the saved run {'had' if meta.get('pruner') else 'had no'} pruner; this one differs")
        load_checkpoint(path, self.model)
        load_optimizer_state(path, self.optimizer, meta)
        if self.pruner is not None:
            if meta.get("recipe") != _plain(recipe_to_dict(self.pruner.recipe)):
                raise CheckpointError(f"{path}: saved with a different pruning recipe")
            self.pruner.load_state_dict(meta["pruner"])
        self.epoch, self.step, self.batch_in_epoch = int(st["epoch"]), int(st["step"]), int(st["batch_in_epoch"])
        self._loss_sum, self._loss_count = float(st["loss_sum"]), int(st["loss_count"])
        self._epoch_seconds = float(st["epoch_seconds"])
        self.history = [EpochRecord(**r) for r in st["history"]]
        self._rng = {k: _unb64(v) for k, v in st["rng"].items()}
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    def _checkpoint(self) -> None:
        if self.checkpoint_dir is not None:
            self.save_state(self.checkpoint_dir / LAST)


def train(
    model: nn.Module,
    config: TrainConfig,
    train_data: TensorDataset,
    eval_data: TensorDataset | None = None,
    **kwargs: Any,
) -> TrainResult:
    """``Trainer(model, config, train_data, eval_data, **kwargs).fit()``."""
    return Trainer(model, config, train_data, eval_data, **kwargs).fit()
