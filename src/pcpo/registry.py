"""One registry shape for every concern (objectives, credit schemes, KL terms, advantages, samplers,
timestep selections, ratio transforms, loss weights, rewards, model families).

A registry maps a name to an entry (a function, a class or a small record). It knows the config field
it serves, so an unknown name fails with one line naming that field and the valid choices, and config
validation takes its choice lists from the registry instead of a copy::

    OBJECTIVES = Registry("objective", field="train.objective")

    @OBJECTIVES.register("clipped", default_credit="native")
    def clipped(...): ...

    OBJECTIVES.get("clipped")          # the function
    OBJECTIVES.meta("clipped")         # {"default_credit": "native"}
    OBJECTIVES.names()                 # ("clipped", ...) in registration order
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → entry, with per-entry metadata and one-line errors naming ``field``."""

    def __init__(self, kind: str, field: str):
        self.kind = kind
        self.field = field
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``entry`` under ``name`` (twice is an error)."""

        def deco(entry: T) -> T:
            self.add(name, entry, **meta)
            return entry

        return deco

    def add(self, name: str, entry: T, **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        self._meta[name] = dict(meta)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"{self.field}: unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return self._entries[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
