"""Events of the reference layer, sent through ``zope.event``.

A subscriber vetoes a :class:`ReferenceAdded` or a :class:`KeyChanged` by
raising: these are sent *before* the change, which then does not happen.
The others are sent after the change.
"""

from __future__ import annotations

import sys
from typing import Any

import zope.event
from zope.interface import implementedBy

__all__ = ["ReferenceAdded", "ReferenceRemoved", "KeyChanged", "TargetReplaced",
           "RefModeChanged", "notify", "listened", "own_subscriber"]


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


def listened(cls: type) -> bool:
    """Whether an event of class ``cls`` would reach a subscriber.

    Assignments send two events each; making them costs more than the rest
    of an assignment when nobody listens.  When zope.component's dispatcher
    is ``zope.event``'s only subscriber (as it is whenever zope.component
    is imported), this asks the current site manager for the subscriptions
    to ``cls`` the way that dispatcher does (the registry's lookup cache
    answers); any other subscriber listens to everything.
    """
    subscribers = zope.event.subscribers
    n = len(subscribers)
    if n == 1:
        first = subscribers[0]
    elif n == 2 and subscribers[1] is own_subscriber[0]:
        first = subscribers[0]
    elif n == 2 and subscribers[0] is own_subscriber[0]:
        first = subscribers[1]
    else:
        return n > 0
    if first is _dispatch[0]:
        return bool(_dispatch[1]().adapters.subscriptions(_SPECS[cls], None))
    if first is own_subscriber[0]:
        return False
    return _listened_slow(cls, first)


def _listened_slow(cls: type, subscriber: Any) -> bool:
    module = sys.modules.get("zope.component.event")
    if module is not None and subscriber is getattr(module, "dispatch", None):
        _dispatch[:] = [subscriber, sys.modules["zope.component"].getSiteManager]
        return listened(cls)
    return True


#: The package's own zope.event subscriber (pclasses.refs.frameworks), which
#: does not listen to these events.
own_subscriber: list[Any] = [object()]


#: zope.component's dispatcher and getSiteManager, once seen subscribed.
_dispatch: list[Any] = [object(), None]
_SPECS: dict[type, tuple[Any]] = {
    cls: (implementedBy(cls),)
    for cls in (ReferenceAdded, ReferenceRemoved, KeyChanged, TargetReplaced, RefModeChanged)}
