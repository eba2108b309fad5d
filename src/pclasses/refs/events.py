"""Events of the reference layer, sent through ``zope.event``.

A subscriber vetoes a :class:`ReferenceAdded` or a :class:`KeyChanged` by
raising: these are sent *before* the change, which then does not happen.
The others are sent after the change.
"""

from __future__ import annotations

from typing import Any

import zope.event

__all__ = ["ReferenceAdded", "ReferenceRemoved", "KeyChanged", "TargetReplaced",
           "RefModeChanged", "notify"]


class _Event:
    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class ReferenceAdded(_Event):
    """``source.name`` is about to refer to the target at ``key`` (vetoable)."""

    __slots__ = ("source", "name", "key", "ref_id")

    def __init__(self, source: Any, name: str, key: str, ref_id: str) -> None:
        self.source, self.name, self.key, self.ref_id = source, name, key, ref_id


class ReferenceRemoved(_Event):
    """``source.name`` no longer refers to the target at ``key``."""

    __slots__ = ("source", "name", "key", "ref_id")

    def __init__(self, source: Any, name: str, key: str | None, ref_id: str) -> None:
        self.source, self.name, self.key, self.ref_id = source, name, key, ref_id


class KeyChanged(_Event):
    """The object at ``old_key`` is about to move to ``new_key`` (vetoable);
    references follow it."""

    __slots__ = ("old_key", "new_key", "object")

    def __init__(self, old_key: str, new_key: str, object: Any = None) -> None:  # noqa: A002
        self.old_key, self.new_key, self.object = old_key, new_key, object


class TargetReplaced(_Event):
    """``new`` took the place of ``old`` at ``key``."""

    __slots__ = ("key", "old", "new")

    def __init__(self, key: str, old: Any, new: Any) -> None:
        self.key, self.old, self.new = key, old, new


class RefModeChanged(_Event):
    """The effective mode of the reference ``ref_id`` changed from ``old`` to ``new``."""

    __slots__ = ("ref_id", "old", "new", "database")

    def __init__(self, ref_id: str, old: str, new: str, database: str = "") -> None:
        self.ref_id, self.old, self.new, self.database = ref_id, old, new, database


def notify(event: Any) -> None:
    if zope.event.subscribers:
        zope.event.notify(event)
