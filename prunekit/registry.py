"""One registry per kind of component. The same object serves Python, recipes and the command line."""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prunekit.errors import ConfigError

T = TypeVar("T")


def first_doc_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class Registry(Generic[T]):
    """A name -> item map with did-you-mean errors. Registering a name twice warns and replaces."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                warnings.warn(f"{self.kind} {name!r} registered again; replacing", stacklevel=2)
            self._items[name] = item
            if isinstance(item, type):
                item.registry_name = name  # type: ignore[attr-defined]
            return item

        return deco

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(str(name), list(self._items), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(self.kind, name, f"{hint}registered {self.kind}s: {', '.join(sorted(self._items))}")

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def describe(self) -> list[tuple[str, str]]:
        return [(n, first_doc_line(self._items[n])) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
