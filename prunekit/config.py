"""Typed configuration: frozen dataclasses are the config, plain dicts (and YAML) their saved form.

``build_component(registry, spec, field)`` turns ``"magnitude"`` or ``{"name": "magnitude", "p": 2}`` into the
registered dataclass, checking every key and value type and naming the offending field on error.
``from_dict``/``to_dict`` do the same for any config dataclass, recursively.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from prunekit.errors import ConfigError
from prunekit.registry import Registry

T = TypeVar("T")


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, field: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert what YAML/CLI give (ints for floats, lists for tuples)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, field)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(field, value, f"expected {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(field, value, f"allowed: {', '.join(repr(a) for a in get_args(tp))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(field, value, "expected a mapping")
        kt, vt = get_args(tp) or (Any, Any)
        return {coerce(k, kt, field): coerce(v, vt, f"{field}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(field, value, "expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(field, value, "expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(field, value, "expected an integer") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(field, value, "expected a number")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(field, value, "expected a number") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(field, value, "expected a string")
        return str(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, field)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: Any, field: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(field or cls.__name__, data, f"expected a mapping of {cls.__name__} fields")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        where = f"{field}.{unknown[0]}" if field else str(unknown[0])
        raise ConfigError(where, data[unknown[0]], f"unknown key; {hint}allowed keys: {', '.join(fields)}")
    kwargs = {k: coerce(v, hints[k], f"{field}.{k}" if field else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if field and not e.field.startswith(field):
            raise ConfigError(f"{field}.{e.field}", e.value, e.allowed) from None
        raise


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config dataclass (registered components carry their ``name``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        name = getattr(type(obj), "registry_name", "")
        if name:
            out["name"] = name
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def build_component(registry: Registry[type[T]], spec: Any, field: str) -> T:
    """``"name"`` or ``{"name": ..., **params}`` (or an instance) -> registered component instance."""
    if not isinstance(spec, (str, dict)):
        if any(isinstance(spec, registry.get(n)) for n in registry):
            return spec  # type: ignore[no-any-return]
        raise ConfigError(field, spec, f"expected a {registry.kind} name or mapping; registered: {', '.join(registry)}")
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name is None:
        raise ConfigError(f"{field}.name", None, f"missing; registered {registry.kind}s: {', '.join(registry)}")
    try:
        cls = registry.get(str(name))
    except ConfigError as e:
        raise ConfigError(field, name, e.allowed) from None
    return from_dict(cls, spec, field)


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file; unreadable files and invalid YAML raise :class:`ConfigError` naming ``what``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(what, str(p), f"cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(what, str(p), f"not valid YAML: {str(e).splitlines()[0]}") from None
