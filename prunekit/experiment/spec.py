"""Experiment specs: what one run trains, prunes and evaluates, as a typed frozen dataclass with a YAML form.

An experiment is a dataset, a model, a pruning recipe and a list of *phases* run in order on one model:

* ``train``: train for some epochs (fields of :class:`~prunekit.train.TrainConfig` override the spec's ``train:``
  defaults); with ``pruning: true`` the recipe's schedule runs during training (gradual pruning). Masks made by
  earlier phases are always enforced.
* ``prune``: prune once to the recipe's target, or inside ``repeat`` to round ``r`` of ``n``'s share of it
  (``1 - (1 - target)^(r/n)``: every round removes the same fraction of what is left, as in
  :class:`~prunekit.schedules.Iterative`).
* ``rewind``: reset the surviving weights, keeping the masks: ``init`` (Frankle & Carbin 2019), ``step N`` (the
  weights after N optimizer steps of the run; Frankle et al. 2020), ``reinit`` (fresh random weights: "train the
  pruned architecture from scratch"), or ``none``. A bare ``rewind`` uses the spec's top-level ``rewind:`` option.
* ``repeat: {times: n, phases: [...]}`` unrolls into n rounds (train-prune-retrain, Han et al. 2015; IMP).

One-shot, iterative and from-scratch protocols are phase lists::

    phases: [train, prune, {train: {epochs: 10}}]                                   # one-shot + fine-tune
    phases: [train, {repeat: {times: 5, phases: [prune, rewind, train]}}]           # IMP; rewind: init | step 500
    phases: [train, prune, {rewind: reinit}, train]                                 # pruned architecture, from scratch

``protocols:`` holds named phase lists, one chosen by ``protocol:``. Each experiment is identified by
:func:`experiment_hash`, a hash of everything that can change its results (not its ``name`` or ``protocol`` label).
A spec file may also hold a ``sweep:``; see :mod:`prunekit.experiment.sweep`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prunekit.config import coerce, from_dict, read_yaml, to_dict
from prunekit.errors import ConfigError
from prunekit.recipe import PruneRecipe, recipe_from_dict, recipe_to_dict
from prunekit.schedules import Iterative
from prunekit.train import TrainConfig

log = logging.getLogger(__name__)

EXPERIMENT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _prefixed(prefix: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a ConfigError it raises is re-raised with its field under ``prefix``."""
    try:
        return fn()
    except ConfigError as e:
        if e.field == prefix or e.field.startswith((f"{prefix}.", f"{prefix}[")):
            raise
        raise ConfigError(f"{prefix}.{e.field}", e.value, e.allowed) from None


# -- parts -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """A registered dataset (``prunekit list datasets``) and its loader options; optional subsets for quick runs."""

    name: str = field(metadata=_help("registered dataset name"))
    options: dict[str, Any] = field(default_factory=dict, metadata=_help("loader options, e.g. {standardize: true}"))
    train_subset: int | None = field(default=None, metadata=_help("use only the first N training samples"))
    test_subset: int | None = field(default=None, metadata=_help("use only the first N test samples"))

    def __post_init__(self) -> None:
        from prunekit.data import DATASETS

        try:
            loader = DATASETS.get(self.name)
        except ConfigError as e:
            raise ConfigError("name", self.name, e.allowed) from None
        try:
            inspect.signature(loader).bind("train", None, True, **self.options)
        except TypeError as e:
            raise ConfigError("options", self.options, str(e)) from None
        for name, n in (("train_subset", self.train_subset), ("test_subset", self.test_subset)):
            if n is not None and n < 1:
                raise ConfigError(name, n, "must be a positive number of samples")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model (``prunekit list models``) and its constructor arguments."""

    name: str = field(metadata=_help("registered model name"))
    kwargs: dict[str, Any] = field(default_factory=dict, metadata=_help("constructor arguments"))

    def __post_init__(self) -> None:
        from prunekit.models import MODELS

        try:
            fn = MODELS.get(self.name)
        except ConfigError as e:
            raise ConfigError("name", self.name, e.allowed) from None
        try:
            inspect.signature(fn).bind(**self.kwargs)
        except TypeError as e:
            raise ConfigError("kwargs", self.kwargs, str(e)) from None

    def to_spec(self) -> dict[str, Any]:
        """The ``{"name", "kwargs"}`` form that :func:`prunekit.models.build_model` and checkpoints use."""
        return {"name": self.name, "kwargs": to_dict(self.kwargs)}


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation on the test split: after the last phase (the reported number) and optionally after each prune."""

    batch_size: int = field(default=1000, metadata=_help("evaluation batch size"))
    after_prune: bool = field(default=True, metadata=_help("also evaluate right after every prune phase"))

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size", self.batch_size, "must be a positive integer")


RewindKind = Literal["none", "init", "step", "reinit"]
_REWIND_HELP = 'one of none, init, reinit, "step N" (weights after N optimizer steps of the run)'


@dataclass(frozen=True)
class Rewind:
    """Where a ``rewind`` phase sends the surviving weights; its YAML form is the string :meth:`shorthand`."""

    kind: RewindKind = "none"
    step: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "init", "step", "reinit"):
            raise ConfigError("rewind", self.kind, _REWIND_HELP)
        if self.kind == "step" and (not isinstance(self.step, int) or self.step < 0):
            raise ConfigError("rewind", self.step, "step must be a non-negative number of optimizer steps")

    def shorthand(self) -> str:
        return f"step {self.step}" if self.kind == "step" else self.kind


def parse_rewind(value: Any, field_name: str = "rewind") -> Rewind:
    """``"none" | "init" | "reinit" | "step N"`` (or a :class:`Rewind`) -> :class:`Rewind`; the one place this is parsed."""
    if isinstance(value, Rewind):
        return value
    if value is None or value is False:
        return Rewind()
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in ("none", "init", "reinit"):
        return Rewind(text)  # type: ignore[arg-type]
    m = re.fullmatch(r"step\s*[ =:]?\s*(\d+)", text or "")
    if m:
        return Rewind("step", int(m.group(1)))
    raise ConfigError(field_name, value, _REWIND_HELP)


# -- phases ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainPhase:
    """Train with ``config``; with ``pruning`` the recipe's schedule updates masks during this phase."""

    config: TrainConfig
    pruning: bool = False


@dataclass(frozen=True)
class PrunePhase:
    """Prune once: to ``sparsity`` if given, else to round ``round`` of ``rounds`` of the recipe's target."""

    sparsity: float | None = field(default=None, metadata=_help("explicit target (default: the recipe's)"))
    round: int = field(default=1, metadata=_help("this prune is round `round` of `rounds` (set by repeat)"))
    rounds: int = field(default=1, metadata=_help("number of rounds the target is reached in"))
    calibration_batches: int = field(default=8, metadata=_help("training batches given to data-driven scorers"))

    def __post_init__(self) -> None:
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ConfigError("sparsity", self.sparsity, "must be in [0, 1)")
        if self.rounds < 1:
            raise ConfigError("rounds", self.rounds, "must be >= 1")
        if not 1 <= self.round <= self.rounds:
            raise ConfigError("round", self.round, f"must be in 1..rounds ({self.rounds})")
        if self.calibration_batches < 0:
            raise ConfigError("calibration_batches", self.calibration_batches, "must be >= 0")

    def target(self, final: float) -> float:
        """Sparsity after this prune: ``1 - (1 - final)^(round/rounds)`` (exactly ``final`` in the last round)."""
        if self.sparsity is not None:
            return float(self.sparsity)
        return Iterative(rounds=self.rounds, every=1).sparsity_at(self.round - 1, final)


@dataclass(frozen=True)
class RewindPhase:
    """Reset the surviving weights (masks kept) to ``to``."""

    to: Rewind


Phase = TrainPhase | PrunePhase | RewindPhase


# -- the experiment --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One concrete run: data, model, pruning recipe, phases, evaluation and seed. See the module docstring.

    ``seed`` seeds the model's initialisation and every phase's data order (``TrainConfig.seed`` of each phase
    equals it). ``train`` and ``rewind`` are the defaults the phases were built from; ``phases`` hold the
    resolved values. ``name`` and ``protocol`` are labels and do not enter :func:`experiment_hash`.
    """

    data: DataSpec = field(metadata=_help("dataset and loader options"))
    model: ModelSpec = field(metadata=_help("model name and constructor arguments"))
    name: str = field(default="experiment", metadata=_help("label; run directories are <name>-<hash>"))
    seed: int = field(default=0, metadata=_help("seeds model initialisation and data order"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=_help("training defaults for train phases"))
    pruning: PruneRecipe | None = field(default=None, metadata=_help("pruning recipe (sparsity = final target)"))
    phases: tuple[Phase, ...] = field(default=(), metadata=_help("train / prune / rewind / repeat, in order"))
    rewind: Rewind = field(default_factory=Rewind, metadata=_help(f"default for bare rewind phases: {_REWIND_HELP}"))
    eval: EvalConfig = field(default_factory=EvalConfig, metadata=_help("final and after-prune evaluation"))
    protocol: str = field(default="", metadata=_help("name of the protocol the phases came from (label)"))
    version: int = field(default=EXPERIMENT_VERSION, metadata=_help("experiment format version"))

    def __post_init__(self) -> None:
        if self.version != EXPERIMENT_VERSION:
            raise ConfigError("version", self.version, f"this prunekit reads experiment version {EXPERIMENT_VERSION}")
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError("name", self.name, "letters, digits and _ . + - only (it names the run directory)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", self.seed, "must be a non-negative integer")
        if not self.phases:
            raise ConfigError("phases", [], "at least one phase (train, prune, rewind)")
        prunes = False
        for i, ph in enumerate(self.phases):
            if isinstance(ph, TrainPhase):
                if ph.config.seed != self.seed:
                    raise ConfigError(f"phases[{i}].train.seed", ph.config.seed, f"must equal the experiment seed {self.seed}")
                prunes = prunes or ph.pruning
            elif isinstance(ph, PrunePhase):
                prunes = True
            if (isinstance(ph, PrunePhase) or (isinstance(ph, TrainPhase) and ph.pruning)) and self.pruning is None:
                raise ConfigError(f"phases[{i}]", phase_to_dict(ph), "prunes, but the experiment has no pruning: recipe")
        if self.pruning is not None and not prunes:
            raise ConfigError("phases", [phase_to_dict(p) for p in self.phases], "pruning: is set but no phase prunes")

    @property
    def epoch_budget(self) -> int:
        """Total training epochs over all phases."""
        return sum(p.config.epochs for p in self.phases if isinstance(p, TrainPhase))

    @property
    def target_sparsity(self) -> float:
        """The recipe's final target (0 without pruning)."""
        return self.pruning.target if self.pruning is not None else 0.0

    def replace(self, **changes: Any) -> Experiment:
        return dataclasses.replace(self, **changes)


# -- plain data <-> typed --------------------------------------------------------------------------------------


def _train_fields(cfg: TrainConfig, base: TrainConfig | None) -> dict[str, Any]:
    full: dict[str, Any] = to_dict(cfg)
    full.pop("seed")
    if base is None:
        return full
    ref = to_dict(base)
    return {k: v for k, v in full.items() if v != ref[k]}


def phase_to_dict(phase: Phase, base: TrainConfig | None = None, default_rewind: Rewind | None = None) -> Any:
    """YAML form of one phase; train configs as differences from ``base`` (all fields when ``base`` is None)."""
    if isinstance(phase, TrainPhase):
        d = _train_fields(phase.config, base)
        if phase.pruning:
            d["pruning"] = True
        return {"train": d}
    if isinstance(phase, PrunePhase):
        defaults = PrunePhase()
        return {
            "prune": {
                f.name: getattr(phase, f.name)
                for f in dataclasses.fields(phase)
                if getattr(phase, f.name) != getattr(defaults, f.name)
            }
        }
    if default_rewind is not None and phase.to == default_rewind:
        return "rewind"
    return {"rewind": phase.to.shorthand()}


def experiment_to_dict(exp: Experiment) -> dict[str, Any]:
    """The YAML form written to ``experiment.yaml``; :func:`experiment_from_dict` reads it back to an equal value."""
    return {
        "name": exp.name,
        "seed": exp.seed,
        "data": to_dict(exp.data),
        "model": exp.model.to_spec(),
        "train": _train_fields(exp.train, None),
        "pruning": recipe_to_dict(exp.pruning) if exp.pruning is not None else None,
        "rewind": exp.rewind.shorthand(),
        "protocol": exp.protocol,
        "phases": [phase_to_dict(p, exp.train, exp.rewind) for p in exp.phases],
        "eval": to_dict(exp.eval),
        "version": exp.version,
    }


def canonical_dict(exp: Experiment) -> dict[str, Any]:
    """Everything that can change the results, fully resolved: the content of :func:`experiment_hash`."""
    return {
        "seed": exp.seed,
        "data": to_dict(exp.data),
        "model": exp.model.to_spec(),
        "pruning": recipe_to_dict(exp.pruning) if exp.pruning is not None else None,
        "phases": [phase_to_dict(p) for p in exp.phases if not (isinstance(p, RewindPhase) and p.to.kind == "none")],
        "eval": to_dict(exp.eval),
        "version": exp.version,
    }


def experiment_hash(exp: Experiment) -> str:
    """Short stable hash of :func:`canonical_dict` (after a round trip through plain data, so 2 and 2.0 agree)."""
    normal = experiment_from_dict(experiment_to_dict(exp))
    text = json.dumps(canonical_dict(normal), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_name(exp: Experiment) -> str:
    """``<name>-<hash>``: the run directory's name."""
    return f"{exp.name}-{experiment_hash(exp)}"


TOP_KEYS = ("name", "seed", "data", "model", "train", "pruning", "phases", "protocols", "protocol", "rewind", "eval", "version")


def _shorthand_named(value: Any, field_name: str, extra: str) -> Any:
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(field_name, value, f"expected a name or a mapping {{name: ..., {extra}: ...}}")
    return value


def _train_phase(raw: Any, base_raw: dict[str, Any], seed: int, where: str) -> TrainPhase:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(where, raw, "expected a mapping of training fields (train: {epochs: 10, lr: 0.01})")
    raw = dict(raw)
    pruning = coerce(raw.pop("pruning", False), bool, f"{where}.pruning")
    if "seed" in raw:
        raise ConfigError(f"{where}.seed", raw["seed"], "set the experiment's top-level seed (one seed per run)")
    cfg = from_dict(TrainConfig, {**base_raw, **raw, "seed": seed}, where)
    return TrainPhase(cfg, pruning)


def _parse_phases(
    raw: Any, where: str, base_raw: dict[str, Any], seed: int, default_rewind: Rewind, in_repeat: bool = False
) -> list[Phase]:
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(where, raw, "expected a list of phases: train, prune, rewind or repeat")
    out: list[Phase] = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if isinstance(item, str):
            item = {item: None}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(
                here, item, "expected one of: train, prune, rewind, {train: {...}}, {prune: {...}}, {repeat: {...}}"
            )
        ((kind, value),) = item.items()
        if kind == "train":
            out.append(_train_phase(value, base_raw, seed, f"{here}.train"))
        elif kind == "prune":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = {"sparsity": value}  # prune: 0.5
            out.append(from_dict(PrunePhase, {} if value is None else value, f"{here}.prune"))
        elif kind == "rewind":
            out.append(RewindPhase(default_rewind if value is None else parse_rewind(value, f"{here}.rewind")))
        elif kind == "repeat":
            out.extend(_repeat(value, f"{here}.repeat", base_raw, seed, default_rewind, in_repeat))
        else:
            raise ConfigError(here, kind, "unknown phase; allowed: train, prune, rewind, repeat")
    return out


def _repeat(value: Any, where: str, base_raw: dict[str, Any], seed: int, default_rewind: Rewind, nested: bool) -> list[Phase]:
    if nested:
        raise ConfigError(where, value, "repeat cannot be nested")
    if not isinstance(value, dict) or set(value) - {"times", "phases"} or "phases" not in value:
        raise ConfigError(where, value, "expected {times: N, phases: [...]}")
    times = coerce(value.get("times", 1), int, f"{where}.times")
    if times < 1:
        raise ConfigError(f"{where}.times", times, "must be >= 1")
    body = _parse_phases(value["phases"], f"{where}.phases", base_raw, seed, default_rewind, in_repeat=True)
    out: list[Phase] = []
    for r in range(1, times + 1):
        for ph in body:
            if isinstance(ph, PrunePhase) and ph.sparsity is None and ph.rounds == 1:
                ph = dataclasses.replace(ph, round=r, rounds=times)
            out.append(ph)
    return out


def experiment_from_dict(data: Any) -> Experiment:
    """Build and validate an :class:`Experiment` from plain data (one experiment: no ``sweep:``)."""
    if not isinstance(data, dict):
        raise ConfigError("experiment", data, "expected a mapping of experiment fields")
    if "sweep" in data:
        raise ConfigError("sweep", data["sweep"], "a sweep describes many experiments; use expand() / load_experiments()")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), (*TOP_KEYS, "sweep"), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(str(unknown[0]), data[unknown[0]], f"unknown key; {hint}allowed keys: {', '.join(TOP_KEYS)}, sweep")
    d = dict(data)
    seed = coerce(d.get("seed", 0), int, "seed")
    base_raw = d.get("train") or {}
    if not isinstance(base_raw, dict):
        raise ConfigError("train", base_raw, "expected a mapping of training fields")
    if "seed" in base_raw:
        raise ConfigError("train.seed", base_raw["seed"], "set the experiment's top-level seed (one seed per run)")
    d["train"] = from_dict(TrainConfig, {**base_raw, "seed": seed}, "train")
    d["rewind"] = parse_rewind(d.get("rewind", "none"), "rewind")
    if d.get("pruning") is not None:
        d["pruning"] = _prefixed("pruning", lambda: recipe_from_dict(data["pruning"]))
    if "data" not in d:
        raise ConfigError("data", None, "missing; e.g. data: {name: mnist}")
    if "model" not in d:
        raise ConfigError("model", None, "missing; e.g. model: {name: lenet_300_100}")
    d["data"] = from_dict(DataSpec, _shorthand_named(d["data"], "data", "options"), "data")
    d["model"] = from_dict(ModelSpec, _shorthand_named(d["model"], "model", "kwargs"), "model")
    if "eval" in d:
        d["eval"] = from_dict(EvalConfig, d["eval"] or {}, "eval")
    d["phases"] = tuple(_select_phases(d, base_raw, seed))
    if d.get("pruning") is not None and not any(
        isinstance(p, PrunePhase) or (isinstance(p, TrainPhase) and p.pruning) for p in d["phases"]
    ):
        # e.g. a dense protocol in a sweep over protocols: one dense run, not one per sparsity
        log.info("no phase of %s prunes; its pruning: section is dropped", d.get("protocol") or "this experiment")
        d["pruning"] = None
    d.pop("protocols", None)
    d["protocol"] = str(d.get("protocol") or "")
    return from_dict(Experiment, d)


def _select_phases(d: dict[str, Any], base_raw: dict[str, Any], seed: int) -> list[Phase]:
    rewind: Rewind = d["rewind"]
    protocols = d.get("protocols")
    if protocols is not None:
        if not isinstance(protocols, dict) or not protocols:
            raise ConfigError("protocols", protocols, "expected a mapping of protocol name -> list of phases")
        if "phases" in d:
            raise ConfigError("phases", d["phases"], "give either phases: or protocols: with protocol:, not both")
        parsed = {str(k): _parse_phases(v, f"protocols.{k}", base_raw, seed, rewind) for k, v in protocols.items()}
        name = d.get("protocol")
        if name is None or str(name) not in parsed:
            raise ConfigError("protocol", name, f"choose one of the protocols: {', '.join(parsed)}")
        return parsed[str(name)]
    if "phases" not in d or d["phases"] is None:
        if d.get("pruning") is not None:
            raise ConfigError("phases", None, "missing; e.g. phases: [train, prune, {train: {epochs: 5}}]")
        return [TrainPhase(d["train"])]
    return _parse_phases(d["phases"], "phases", base_raw, seed, rewind)


def read_spec(path: str | Path) -> dict[str, Any]:
    """Parse a spec YAML file into plain data (``name`` defaults to the file's stem)."""
    p = Path(path)
    data = read_yaml(p, "spec")
    if not isinstance(data, dict):
        raise ConfigError("spec", str(p), "expected a mapping of experiment fields")
    data.setdefault("name", p.stem)
    return data


def dump_experiment(exp: Experiment) -> str:
    return yaml.safe_dump(experiment_to_dict(exp), sort_keys=False)


def load_experiment(path: str | Path) -> Experiment:
    """Read one concrete experiment (e.g. a run directory's ``experiment.yaml``)."""
    return experiment_from_dict(read_spec(path))
