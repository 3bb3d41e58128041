"""Typed errors. Every error a user can fix derives from :class:`PrunekitError`.

The command line turns a :class:`PrunekitError` into one line on stderr and exit code 2; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable


class PrunekitError(Exception):
    """Base class for errors caused by user input (recipe, flag, model, file)."""


class ConfigError(PrunekitError, ValueError):
    """A configuration value is wrong. The message names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str | Iterable[str]) -> None:
        if not isinstance(allowed, str):
            allowed = ", ".join(str(a) for a in allowed)
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: invalid value {value!r}; {allowed}")


class MaskError(PrunekitError, ValueError):
    """A mask does not fit its tensor, or a tensor has no mask where one is needed."""


class CheckpointError(PrunekitError, OSError):
    """A checkpoint cannot be written or read (missing file, bad format, would overwrite an input)."""


class ModelLoadError(PrunekitError):
    """A model path cannot be turned into a model (unknown format, missing optional dependency)."""
