"""Live reattachment: broken objects become real again when their class returns.

When a missing class becomes available (registered, aliased, its module
importable again after :meth:`ClassRegistry.refresh`, or its guid put back
in a class table), :func:`reattach` turns the broken objects of every
connection of the registry's databases, open or idle in the pool, back into
instances of the real class, without a restart:

* a persistent broken object (ghost or loaded) gets the real class and is
  made a ghost again, so its next access loads its state through the real
  class's ``__setstate__``; broken objects cannot have uncommitted changes,
  so nothing is lost;
* a non-persistent broken object held in a loaded object's state gets the
  real class and its state in place;
* where Python cannot change an object's class (the real class has a
  different C layout, ``__slots__``, a builtin base), the persistent object
  holding it is made a ghost instead, if it has no uncommitted changes, so
  it reloads with the real class; otherwise the object is counted as left
  broken.

A :class:`~pclasses.events.ClassReattached` event is published through
``zope.event`` for each class, with its count.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import zope.event
from persistent import Persistent
from ZODB.broken import Broken, PersistentBroken
from ZODB.POSException import ConnectionStateError

from .broken import swap_lock
from .events import ClassReattached

#: A class lookup, called as ZODB calls its class factory:
#: ``lookup(connection, module, name)``; a broken class means "not back yet".
Lookup = Callable[[Any, str, str], Any]

__all__ = ["reattach", "ReattachReport"]

# The ``__class__`` setter itself: broken classes refuse attribute assignment,
# and ``object.__setattr__`` refuses persistent objects (their C type has its
# own ``__setattr__``); the descriptor only checks that the layouts agree.
_set_class = object.__dict__["__class__"].__set__


@dataclass
class ReattachReport:
    """Per class ``module.name``: objects reattached, and objects left broken."""

    reattached: dict[str, int] = field(default_factory=dict)
    left_broken: dict[str, int] = field(default_factory=dict)
    #: objects whose holders were made ghosts instead, so that they reload
    #: with the real class (the objects already held stay broken)
    reloaded: dict[str, int] = field(default_factory=dict)
    #: objects another thread was loading: reattached in the background when
    #: their load ends (a second event reports them)
    pending: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.reattached.values())

    def to_dict(self) -> dict[str, Any]:
        return {"reattached": dict(self.reattached), "left_broken": dict(self.left_broken),
                "reloaded": dict(self.reloaded), "pending": dict(self.pending)}


def _real(lookup: Lookup, connection: Any, pair: tuple[str, str]) -> Any:
    try:
        target = lookup(connection, pair[0], pair[1])
    except ConnectionStateError:
        # An idle connection in the pool: database-resident classes cannot
        # be looked up through it until it is opened again.
        target = lookup(None, pair[0], pair[1])
    if isinstance(target, type) and issubclass(target, Broken):
        return None
    return target


def reattach(lookup: Lookup, broken: Mapping[tuple[str, str], type],
             databases: Iterable[Any]) -> ReattachReport:
    """Reattach the broken objects of ``databases`` whose class resolves now.

    ``broken`` maps each ``(module, name)`` to the broken class made for it;
    ``lookup`` resolves a name as the class factory does.  The registry
    (:meth:`pclasses.registry.ClassRegistry.reattach`) passes its own; this
    module knows nothing of the registry above it.
    """
    report = ReattachReport()
    if not broken:
        return report
    plain: dict[type, tuple[str, str]] = {}
    persistent: dict[type, tuple[str, str]] = {}
    for pair, cls in broken.items():
        plain[cls] = pair
        variant = cls.__dict__.get("__Broken_Persistent__")
        if variant is not None:
            persistent[variant] = pair
    classes: dict[tuple[str, str], Any] = {}

    def bump(counter: dict[str, int], pair: tuple[str, str]) -> None:
        key = f"{pair[0]}.{pair[1]}"
        counter[key] = counter.get(key, 0) + 1

    # Persistent broken objects, connection by connection (the class of a
    # database-resident class depends on the connection's class table).
    loading: list[tuple[Any, Any, tuple[str, str]]] = []

    def settle(obj: Any, connection: Any, pair: tuple[str, str]) -> None:
        real = _real(lookup, connection, pair)
        if real is None:
            return
        if obj._p_changed:  # being loaded by another thread right now
            loading.append((obj, connection, pair))
            return
        outcome = _swap_persistent(obj, real)
        if outcome == "swapped":
            classes[pair] = real
            bump(report.reattached, pair)
        elif outcome == "reloaded":
            classes[pair] = real
            bump(report.reloaded, pair)
        else:
            bump(report.left_broken, pair)

    def visit(connection: Any) -> None:
        cache = getattr(connection, "_cache", None)
        if cache is None:
            return
        for _oid, obj in list(cache.items()):
            pair = persistent.get(type(obj))
            if pair is not None:
                settle(obj, connection, pair)

    for db in databases:
        connection_map = getattr(db, "_connectionMap", None)
        if connection_map is not None:
            connection_map(visit)
    # Objects that were being loaded by other threads: let those loads
    # finish, then reattach them; a load still running after a moment is
    # left to a background thread that finishes the job when it ends.
    for _attempt in range(10):
        if not loading:
            break
        time.sleep(0.01)
        waiting, loading[:] = list(loading), []
        for obj, connection, pair in waiting:
            if type(obj) in persistent:
                settle(obj, connection, pair)
    if loading:
        for _obj, _connection, pair in loading:
            bump(report.pending, pair)

    # Non-persistent broken objects, wherever loaded state holds them.
    resolved: dict[tuple[str, str], Any] = {}
    for obj in gc.get_objects():
        found = plain.get(type(obj))
        if found is None:
            continue
        pair = found
        if pair not in resolved:
            resolved[pair] = _real(lookup, None, pair)
        real = resolved[pair]
        if real is None:
            continue
        outcome = _swap_plain(obj, real)
        if outcome == "swapped":
            classes[pair] = real
            bump(report.reattached, pair)
        elif outcome == "reloaded":
            classes[pair] = real
            bump(report.reloaded, pair)
        else:
            bump(report.left_broken, pair)

    for pair, real in classes.items():
        key = f"{pair[0]}.{pair[1]}"
        count = report.reattached.get(key, 0) + report.reloaded.get(key, 0)
        zope.event.notify(ClassReattached(pair[0], pair[1], real, count))
    if loading:
        # Objects other threads were loading are swapped once those loads
        # end; a class gets one event: the finisher notifies only classes
        # this pass did not (its objects are counted in ``report.pending``).
        threading.Thread(target=_finish_later,
                         args=(lookup, list(loading), persistent, frozenset(classes)),
                         name="pclasses-reattach", daemon=True).start()
    return report


def _finish_later(lookup: Lookup, loading: list[tuple[Any, Any, tuple[str, str]]],
                  persistent: dict[type, tuple[str, str]],
                  notified: frozenset[tuple[str, str]] = frozenset(),
                  timeout: float = 60.0) -> None:
    """Reattach objects once the loads other threads were doing have ended."""
    done: dict[tuple[str, str], tuple[Any, int]] = {}
    deadline = time.monotonic() + timeout
    while loading and time.monotonic() < deadline:
        time.sleep(0.01)
        still = []
        for obj, connection, pair in loading:
            if type(obj) not in persistent:
                continue  # someone else reattached it
            if obj._p_changed:
                still.append((obj, connection, pair))
                continue
            real = _real(lookup, connection, pair)
            if real is not None and _swap_persistent(obj, real) != "left":
                done[pair] = (real, done.get(pair, (real, 0))[1] + 1)
        loading = still
    for pair, (real, count) in done.items():
        if pair not in notified:
            zope.event.notify(ClassReattached(pair[0], pair[1], real, count))


def _swap_persistent(obj: Any, real: type) -> str:
    """``"swapped"``, ``"reloaded"`` (its holders were made ghosts) or ``"left"``."""
    if not isinstance(real, type) or not issubclass(real, Persistent):
        return "left"
    if obj._p_changed is not None:
        obj._p_invalidate()  # drop the broken state; the real class reloads it
    try:
        _set_class(obj, real)
    except TypeError:
        # A layout Python cannot switch to (a C type such as a BTree): drop
        # the ghost from its cache so the next load makes a real one, and
        # reload the objects that hold it.
        try:
            del obj._p_jar._cache[obj._p_oid]
        except (KeyError, ValueError, TypeError, AttributeError):
            return "left"
        return "reloaded" if _reload_holders(obj) else "left"
    return "swapped"


def _swap_plain(obj: Any, real: type) -> str:
    """``"swapped"``, ``"reloaded"`` (its holder was made a ghost) or ``"left"``."""
    with swap_lock:  # not while another thread stores this object's state
        return _swap_plain_locked(obj, real)


def _swap_plain_locked(obj: Any, real: type) -> str:
    d = obj.__dict__
    state = d.get("__Broken_state__")
    newargs = d.get("__Broken_newargs__") or ()
    initargs = d.get("__Broken_initargs__")
    # What the original load would have built before applying the state: a
    # call of the class (REDUCE, INST, OBJ) or its __new__ with arguments.
    fresh = None
    if initargs is not None or newargs:
        try:
            fresh = real(*initargs) if initargs is not None else real.__new__(real, *newargs)
        except Exception:
            return "reloaded" if _reload_holders(obj) else "left"
    setstate = getattr(real, "__setstate__", None)
    custom = setstate is not None and not _is_object_setstate(setstate)
    slots = None
    additions: dict[str, Any] = dict(getattr(fresh, "__dict__", {})) if fresh is not None else {}
    if state is not None and not custom:
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if state:
            additions.update(state)
    # Other threads may read the object meanwhile: the real state goes in
    # beside the broken one first, so that whichever class a reader sees,
    # the object has the state that class reads; the broken keys go last.
    broken_keys = [k for k in d if k not in additions]
    d.update(additions)
    try:
        _set_class(obj, real)
    except TypeError:
        for k in additions:
            d.pop(k, None)
        return "reloaded" if _reload_holders(obj) else "left"
    for k in broken_keys:
        d.pop(k, None)
    if custom and state is not None:
        obj.__setstate__(state)
    for k, v in (slots or {}).items():
        setattr(obj, k, v)
    return "swapped"


def _is_object_setstate(method: Any) -> bool:
    return getattr(method, "__func__", None) is None and getattr(
        method, "__qualname__", "").startswith("object.")


def _reload_holders(obj: Any, depth: int = 6) -> bool:
    """Ghostify the unmodified persistent objects whose state holds ``obj``."""
    frontier = [obj]
    seen = {id(obj)}
    for _ in range(depth):
        nxt = []
        for item in frontier:
            for ref in gc.get_referrers(item):
                if id(ref) in seen or ref is frontier:
                    continue
                seen.add(id(ref))
                if isinstance(ref, Persistent) and not isinstance(ref, PersistentBroken):
                    if ref._p_changed is False and ref._p_jar is not None:
                        ref._p_invalidate()
                        return True
                    return False
                if isinstance(ref, (dict, list, tuple, set)):
                    nxt.append(ref)
        frontier = nxt
    return False
