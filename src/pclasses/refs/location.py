"""Canonical locations: keys, the key root, and locators.

A key is the text path of names from the database's *key root*: its root
mapping, or the root mapping's ``"Application"`` object when it has one (as
Zope databases do).  ``place(conn.root(), "cities", Folder())`` puts the
folder at ``"/cities"``; the key root itself is ``"/"``.

An object's location is found, in this order, by

1. the locator functions registered with :func:`register_locator`
   (``locator(obj) -> (parent, name) | None``);
2. ``__parent__`` and ``__name__`` (zope.location's containment);
3. ``getPhysicalPath()`` (OFS), read as a key from the key root.

Nothing here changes anything; containment operations live in
:mod:`pclasses.refs.containment`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from persistent import Persistent
from ZODB.Connection import RootConvenience
from ZODB.utils import z64

from ..errors import UnlocatedError

__all__ = ["APPLICATION", "same", "register_locator", "unregister_locator", "key_root", "locate",
           "key_of", "resolve", "split_key", "join_key", "parent_of", "is_key_root",
           "describe"]

#: The name of the root-mapping entry that, when present, is the key root.
APPLICATION = "Application"
#: Chains longer than this are taken for cycles.
MAX_DEPTH = 10_000

Locator = Callable[[Any], "tuple[Any, str] | None"]
_locators: list[Locator] = []


def register_locator(locator: Locator) -> None:
    """Add a function ``locator(obj) -> (parent, name) | None``."""
    if locator not in _locators:
        _locators.append(locator)


def unregister_locator(locator: Locator) -> None:
    if locator in _locators:
        _locators.remove(locator)


def describe(obj: Any) -> str:
    oid = getattr(obj, "_p_oid", None)
    from ZODB.utils import oid_repr

    where = f" {oid_repr(oid)}" if oid is not None else ""
    return f"{type(obj).__module__}.{type(obj).__qualname__}{where}"


def root_of(connection: Any) -> Any:
    """The root mapping object (not ZODB's ``RootConvenience``)."""
    return connection.get(z64)


def key_root(connection: Any) -> Any:
    """The key root of ``connection``'s database."""
    root = root_of(connection)
    app = root.get(APPLICATION)
    return root if app is None else app


def unwrap(container: Any) -> Any:
    """ZODB's ``conn.root()`` wraps the root mapping; use the mapping."""
    if type(container) is RootConvenience:
        return container.__dict__["_root"]
    return container


def same(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same object (OFS: also behind acquisition wrappers)."""
    return a is b or (a is not None and getattr(a, "aq_base", a) is getattr(b, "aq_base", b))


def is_key_root(obj: Any) -> bool:
    oid = getattr(obj, "_p_oid", None)
    if oid == z64:
        return obj.get(APPLICATION) is None
    if oid is None or (getattr(obj, "__name__", None) != APPLICATION
                       and getattr(obj, "__parent__", None) is not None):
        return False
    jar = getattr(obj, "_p_jar", None)
    return jar is not None and same(jar.get(z64).get(APPLICATION), obj)


def parent_of(obj: Any) -> tuple[Any, str] | None:
    """``(parent, name)`` of ``obj`` by the locators, or ``None``."""
    for locator in _locators:
        found = locator(obj)
        if found is not None:
            return found
    try:
        parent = obj.__parent__
        name = obj.__name__
    except AttributeError:
        return None
    if parent is None or not isinstance(name, str):
        return None
    return unwrap(parent), name


def locate(obj: Any) -> tuple[Any, str]:
    """``(connection, key)`` of ``obj``; :class:`UnlocatedError` without one."""
    if not isinstance(obj, Persistent):
        raise UnlocatedError(describe(obj), "only persistent objects can be referenced")
    names: list[str] = []
    cur = obj
    for _ in range(MAX_DEPTH):
        # the common case inline: __parent__/__name__, no locators
        parent = None if _locators else getattr(cur, "__parent__", None)
        if parent is not None and cur._p_oid != z64:
            name = getattr(cur, "__name__", None)
            if name != APPLICATION and isinstance(name, str) and name and "/" not in name:
                if type(parent) is RootConvenience:
                    parent = parent.__dict__["_root"]
                names.append(name)
                cur = parent
                continue
        if is_key_root(cur):
            break
        found = parent_of(cur)
        if found is None:
            path = _physical_path(cur)
            if path is not None:
                names.extend(reversed(path))
                cur = None
                break
            raise UnlocatedError(describe(obj), "it is not placed in a container "
                                 "(no __parent__/__name__, no locator, no getPhysicalPath)")
        parent, name = found
        if "/" in name or not name:
            raise UnlocatedError(describe(obj), f"name {name!r} cannot be part of a key")
        names.append(name)
        cur = parent
    else:
        raise UnlocatedError(describe(obj), "its chain of parents does not end")
    jar = obj._p_jar
    if jar is None:
        jar = _jar_of(obj, cur)
        if jar is None:
            raise UnlocatedError(describe(obj), "its container is not in a database")
    names.reverse()
    return jar, "/" + "/".join(names)


def _physical_path(obj: Any) -> list[str] | None:
    method = getattr(obj, "getPhysicalPath", None)
    if method is None:
        return None
    try:
        path = [p for p in method() if p]
    except Exception:
        return None
    return path


def _jar_of(obj: Any, top: Any) -> Any:
    jar = getattr(obj, "_p_jar", None)
    if jar is not None:
        return jar
    cur = obj
    for _ in range(MAX_DEPTH):
        found = parent_of(cur)
        if found is None:
            break
        cur = found[0]
        jar = getattr(cur, "_p_jar", None)
        if jar is not None:
            return jar
    return getattr(top, "_p_jar", None)


def key_of(obj: Any) -> str:
    return locate(obj)[1]


def split_key(key: str) -> list[str]:
    if not isinstance(key, str) or not key.startswith("/"):
        raise ValueError(f"key {key!r} must be a text path starting with '/'")
    return [n for n in key.split("/") if n]


def join_key(names: Any) -> str:
    return "/" + "/".join(names)


def child(container: Any, name: str) -> Any:
    try:
        return container[name]
    except (KeyError, TypeError, AttributeError):
        getter = getattr(container, "_getOb", None)
        if getter is not None:
            try:
                return getter(name)
            except (KeyError, AttributeError):
                return None
        return None


def resolve(connection: Any, key: str) -> Any:
    """The object at ``key`` in ``connection``'s database, or ``None``."""
    cur = key_root(connection)
    for name in split_key(key):
        cur = child(cur, name)
        if cur is None:
            return None
    return cur
