"""Pruning recipes: a typed, versioned dataclass; YAML is its saved form.

Components are the registered frozen dataclasses themselves, so ``PruneRecipe(scorer=Magnitude(p=2))`` in
Python and ``scorer: {name: magnitude, p: 2}`` in YAML are the same thing. Shorthands (``pattern: "2:4"``,
``scorer: random``) are accepted at this boundary only.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunekit.allocation import ALLOCATORS, AbstractAllocator, Uniform
from prunekit.config import build_component, from_dict, read_yaml, to_dict
from prunekit.errors import ConfigError
from prunekit.masks import MODES, MaskMode
from prunekit.patterns import NM, AbstractPattern, Unstructured, parse_pattern
from prunekit.schedules import SCHEDULES, AbstractSchedule, OneShot
from prunekit.scoring import SCORERS, AbstractScorer, Magnitude
from prunekit.updaters import UPDATERS, AbstractUpdater, NoUpdate

RECIPE_VERSION = 1
DEFAULT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class Targets:
    """Which tensors are pruned: module types, fqn globs to include/exclude, and first/last layer exclusion."""

    types: tuple[str, ...] = field(default=DEFAULT_TYPES, metadata=_help("module class names (globs) to prune"))
    include: tuple[str, ...] = field(default=(), metadata=_help("fqn globs to prune (empty: all of `types`)"))
    exclude: tuple[str, ...] = field(default=(), metadata=_help("fqn globs never pruned"))
    skip_first: bool = field(default=False, metadata=_help("leave the first matching layer dense"))
    skip_last: bool = field(default=False, metadata=_help("leave the last matching layer dense"))
    param: str = field(default="weight", metadata=_help("parameter name to prune in each module"))

    def matches(self, fqn: str, type_name: str) -> bool:
        if not any(fnmatch.fnmatchcase(type_name, t) for t in self.types):
            return False
        if self.include and not any(fnmatch.fnmatchcase(fqn, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(fqn, g) for g in self.exclude)


@dataclass(frozen=True)
class PruneRecipe:
    """Everything that defines a pruning run. ``sparsity`` is the fraction of units removed from the targets."""

    sparsity: float | None = field(default=None, metadata=_help("target fraction of units pruned, in [0, 1) (N:M: implied)"))
    pattern: AbstractPattern = field(default_factory=Unstructured, metadata=_help('unstructured, "N:M", "RxC" or channel[:dim]'))
    scorer: AbstractScorer = field(default_factory=Magnitude, metadata=_help("importance criterion (prunekit list scorers)"))
    allocator: AbstractAllocator = field(default_factory=Uniform, metadata=_help("how sparsity is spread over layers"))
    schedule: AbstractSchedule = field(default_factory=OneShot, metadata=_help("when and how much to prune"))
    update: AbstractUpdater = field(
        default_factory=NoUpdate, metadata=_help("update of the remaining weights when masks change: none or obs")
    )
    targets: Targets = field(default_factory=Targets, metadata=_help("which tensors are pruned"))
    overrides: dict[str, float] = field(default_factory=dict, metadata=_help("fqn glob -> sparsity for those layers"))
    mode: MaskMode = field(
        default="inplace", metadata=_help("mask enforcement: inplace, packed (in place, 1 bit per entry) or reparam")
    )
    nested: bool = field(default=True, metadata=_help("pruned units stay pruned at later updates"))
    version: int = field(default=RECIPE_VERSION, metadata=_help("recipe format version"))

    def __post_init__(self) -> None:
        if self.version != RECIPE_VERSION:
            raise ConfigError("version", self.version, f"this prunekit reads recipe version {RECIPE_VERSION}")
        if self.mode not in MODES:
            raise ConfigError("mode", self.mode, f"allowed: {', '.join(MODES)}")
        if not isinstance(self.update, AbstractUpdater):
            raise ConfigError(
                "update", self.update, f"an updater object ({', '.join(UPDATERS.names())}); recipe_from_dict takes names"
            )
        if self.sparsity is not None and not (isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0):
            raise ConfigError("sparsity", self.sparsity, "must be in [0, 1)")
        for g, s in self.overrides.items():
            if not 0.0 <= s <= 1.0:
                raise ConfigError(f"overrides.{g}", s, "must be in [0, 1]")
        if isinstance(self.pattern, NM):
            if self.sparsity is not None and abs(self.sparsity - self.pattern.sparsity) > 1e-9:
                raise ConfigError(
                    "sparsity",
                    self.sparsity,
                    f"pattern {self.pattern.shorthand()} implies {self.pattern.sparsity:g}; omit sparsity",
                )
            if not isinstance(self.allocator, Uniform):
                raise ConfigError("allocator", self.allocator.registry_name, "N:M fixes every layer's count; use uniform")
        elif self.sparsity is None:
            raise ConfigError("sparsity", None, "missing; give a fraction in [0, 1)")

    @property
    def target(self) -> float:
        """The resolved target sparsity (N:M patterns imply it)."""
        if isinstance(self.pattern, NM):
            return self.pattern.sparsity
        assert self.sparsity is not None
        return float(self.sparsity)

    def override_for(self, fqn: str, key: str) -> float | None:
        for g, s in self.overrides.items():
            if fnmatch.fnmatchcase(key, g) or fnmatch.fnmatchcase(fqn, g):
                return float(s)
        return None

    def replace(self, **changes: Any) -> PruneRecipe:
        return dataclasses.replace(self, **changes)


def recipe_from_dict(data: Any) -> PruneRecipe:
    """Build and validate a recipe from plain data (parsed YAML or JSON)."""
    if not isinstance(data, dict):
        raise ConfigError("recipe", data, "expected a mapping of recipe fields")
    data = dict(data)
    if "pattern" in data:
        data["pattern"] = parse_pattern(data["pattern"])
    if "scorer" in data:
        data["scorer"] = build_component(SCORERS, data["scorer"], "scorer")
    if "allocator" in data:
        data["allocator"] = build_component(ALLOCATORS, data["allocator"], "allocator")
    if "schedule" in data:
        data["schedule"] = build_component(SCHEDULES, data["schedule"], "schedule")
    if "update" in data:
        data["update"] = build_component(UPDATERS, data["update"], "update")
    return from_dict(PruneRecipe, data)


def recipe_to_dict(recipe: PruneRecipe) -> dict[str, Any]:
    d: dict[str, Any] = to_dict(recipe)
    d["pattern"] = recipe.pattern.shorthand()
    if isinstance(recipe.update, NoUpdate):  # the default is left out: recipes (and their hashes) predating it agree
        del d["update"]
    return d


def load_recipe(path: str | Path) -> PruneRecipe:
    return recipe_from_dict(read_yaml(path, "recipe") or {})


def dump_recipe(recipe: PruneRecipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def recipe_hash(recipe: PruneRecipe) -> str:
    """Short stable hash of the recipe's content (names run directories)."""
    canonical = recipe_to_dict(recipe_from_dict(recipe_to_dict(recipe)))  # 2 and 2.0 hash alike
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:12]


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_path(d, "scorer.p", 2)``: assign into nested plain data (used by CLI ``--set``)."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.get(k)
        if isinstance(nxt, str):
            nxt = {"name": nxt}
        if not isinstance(nxt, dict):
            nxt = {}
        cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value
