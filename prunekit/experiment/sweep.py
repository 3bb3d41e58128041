"""Sweeps: a spec file with ``sweep:`` (dotted keys -> lists of values) fans out into concrete experiments.

    sweep:
      pruning.sparsity: [0.5, 0.9]
      protocol: [oneshot, iterative]
      seed: [0, 1, 2]

The runs are the cartesian product (first key outermost); points that give the same experiment (same hash) run once.
``--set KEY=VALUE`` overrides apply before the fan-out; ``--set sweep.KEY=[...]`` sets one axis.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import ConfigError
from prunekit.experiment.spec import TOP_KEYS, Experiment, experiment_from_dict, experiment_hash, read_spec
from prunekit.recipe import set_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweep:
    """Dotted keys of the spec mapped to lists of values; the runs are their cartesian product (first key outermost)."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def points(self) -> list[dict[str, Any]]:
        if not self.axes:
            return [{}]
        keys = [k for k, _ in self.axes]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in self.axes))]

    def __len__(self) -> int:
        n = 1
        for _, v in self.axes:
            n *= len(v)
        return n


def sweep_from_dict(data: Any) -> Sweep:
    if data is None:
        return Sweep()
    if not isinstance(data, dict):
        raise ConfigError(
            "sweep", data, "expected a mapping of dotted key -> list of values, e.g. {pruning.sparsity: [0.5, 0.9]}"
        )
    axes = []
    for k, v in data.items():
        key = str(k)
        if not key or key.split(".")[0] not in TOP_KEYS or key.split(".")[0] in ("name", "version", "protocols"):
            raise ConfigError(f"sweep.{key}", v, f"sweep keys start with one of: {', '.join(TOP_KEYS[1:])}")
        if not isinstance(v, (list, tuple)) or not v:
            raise ConfigError(f"sweep.{key}", v, "expected a non-empty list of values")
        axes.append((key, tuple(v)))
    return Sweep(tuple(axes))


def _point_label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def expand(data: Any) -> list[Experiment]:
    """A spec (plain data, with optional ``sweep:``) -> the concrete experiments, duplicates (same hash) removed."""
    if not isinstance(data, dict):
        raise ConfigError("spec", data, "expected a mapping of experiment fields")
    raw = copy.deepcopy(data)
    sweep = sweep_from_dict(raw.pop("sweep", None))
    out: list[Experiment] = []
    seen: dict[str, str] = {}
    for point in sweep.points():
        d = copy.deepcopy(raw)
        for key, value in point.items():
            set_path(d, key, copy.deepcopy(value))
        try:
            exp = experiment_from_dict(d)
        except ConfigError as e:
            if not any(e.field == k or e.field.startswith((f"{k}.", f"{k}[")) for k in point):
                raise
            raise ConfigError(e.field, e.value, f"{e.allowed} (sweep point {_point_label(point)})") from None
        h = experiment_hash(exp)
        if h in seen:
            log.info("sweep point %s is the same experiment as %s; running it once", _point_label(point), seen[h])
            continue
        seen[h] = _point_label(point) or exp.name
        out.append(exp)
    return out


def apply_sets(data: dict[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides (values parsed as YAML); ``sweep.<dotted key>=[...]`` sets one sweep axis.

    Setting a key that is swept pins it: the sweep over that key is dropped.
    """
    d = copy.deepcopy(data)
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", item, "expected KEY=VALUE, e.g. --set train.epochs=2 or --set sweep.seed=[0,1]")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if key.startswith("sweep."):
            sweep = d.get("sweep")
            if not isinstance(sweep, dict):
                sweep = {}
            sweep[key[len("sweep.") :]] = value if isinstance(value, list) else [value]
            d["sweep"] = sweep
        else:
            sweep = d.get("sweep")
            if isinstance(sweep, dict) and key in sweep:
                del sweep[key]  # a pinned value replaces the sweep over that key
            set_path(d, key, value)
    return d


def load_experiments(path: str | Path, sets: Sequence[str] = ()) -> list[Experiment]:
    """Read a spec file, apply ``--set`` overrides and fan the sweep out into concrete experiments."""
    return expand(apply_sets(read_spec(path), sets))
