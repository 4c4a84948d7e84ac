"""One generic registry for every kind of pluggable component.

Components register with a decorator (built-in ones) or through a Python entry-point
group (third-party packages), so ``pip install my-method`` makes a new name available
without any change to this project.
"""

from __future__ import annotations

import difflib
import logging
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate component name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Map names to components of one kind.

    ``kind`` names the kind in error messages ("unlearner", "attack", ...).
    ``entry_point_group`` is the ``importlib.metadata`` group scanned once, lazily, on the
    first lookup. ``base`` is checked for classes registered here, when given.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, base: type | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.base = base
        self._items: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; a name already taken by another object is an error."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            raise RegistryError(
                f"{self.kind} name {name!r} is already registered to {_describe(existing)}; "
                f"choose another name for {_describe(obj)}"
            )
        if self.base is not None and isinstance(obj, type) and not issubclass(obj, self.base):
            raise TypeError(f"{self.kind} {name!r} must subclass {self.base.__name__}, got {_describe(obj)}")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the component called ``name``, or raise with the valid names and the nearest match."""
        self._load_entry_points()
        if name in self._items:
            return self._items[name]
        valid = sorted(self._items)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown {self.kind} {name!r}; registered: {', '.join(valid) or '(none)'}.{hint}")

    def names(self) -> list[str]:
        """Return every registered name, sorted."""
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load_entry_points()
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for entry_point in entry_points(group=self.entry_point_group):
            try:
                obj = entry_point.load()
            except Exception as error:  # a broken plug-in must not break every other name
                logger.error("failed to load %s plug-in %r (%s): %s", self.kind, entry_point.name, entry_point.value, error)
                continue
            self.add(entry_point.name, obj)


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", "?")
    name = getattr(obj, "__qualname__", repr(obj))
    return f"{module}.{name}"
