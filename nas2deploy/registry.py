"""One generic registry over a Python entry-point group.

Built-in methods and exporters are found exactly the way a third-party package's are: through
the ``nas2deploy.methods`` and ``nas2deploy.exporters`` entry-point groups. A plugin that fails to
import is reported by ``entries()`` (and the ``methods``/``exporters`` commands) but never breaks
the others; asking for a name that does not exist fails loudly with the names that do.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import UsageError

T = TypeVar("T")

METHODS_GROUP = "nas2deploy.methods"
EXPORTERS_GROUP = "nas2deploy.exporters"


@dataclass
class Entry(Generic[T]):
    name: str
    value: str  # "module:attr"
    dist: str  # distribution that declared it
    obj: T | None
    error: str | None  # why it could not be loaded, if it could not


class Registry(Generic[T]):
    def __init__(self, group: str, kind: str):
        self.group = group
        self.kind = kind
        self._cache: dict[str, Entry[T]] | None = None

    def _load(self) -> dict[str, Entry[T]]:
        if self._cache is None:
            found: dict[str, Entry[T]] = {}
            for ep in md.entry_points(group=self.group):
                dist = ep.dist.name if ep.dist is not None else "?"
                if ep.name in found:
                    # Two distributions claim one name: keep the first, say so on use.
                    found[ep.name].error = (
                        f"name claimed by both {found[ep.name].dist} and {dist}"
                    )
                    continue
                try:
                    obj, err = ep.load(), None
                except Exception as exc:  # a broken third-party plugin must not break listing
                    obj, err = None, f"{type(exc).__name__}: {exc}"
                found[ep.name] = Entry(ep.name, ep.value, dist, obj, err)
            self._cache = found
        return self._cache

    def refresh(self) -> None:
        self._cache = None

    def entries(self) -> list[Entry[T]]:
        return sorted(self._load().values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        return sorted(self._load())

    def get(self, name: str) -> T:
        entries = self._load()
        if name not in entries:
            avail = ", ".join(self.names()) or "none installed"
            raise UsageError(f"unknown {self.kind} {name!r}; available: {avail}")
        entry = entries[name]
        if entry.obj is None:
            raise UsageError(f"{self.kind} {name!r} from {entry.dist} failed to load: {entry.error}")
        return entry.obj


methods: Registry = Registry(METHODS_GROUP, "method")
exporters: Registry = Registry(EXPORTERS_GROUP, "exporter")
