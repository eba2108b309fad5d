"""Containment operations that check before they change.

``place``, ``remove``, ``move`` and ``rename`` keep the reference registry
in step with where objects are: a removal checks the referenced keys under
the removed object with one range scan of the registry (never a walk of the
subtree) and refuses, before anything changes, when an ``always``-mode
reference from outside would dangle; a move gives every reference id under
the moved object its new key, so references follow it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ReferentialIntegrityError
from .events import KeyChanged, notify
from .integrity import (
    blockers,
    database_name,
    defer_check,
    has_links_of,
    ref_ids_in_modes,
)
from .location import child, is_key_root, join_key, locate, parent_of, same, unwrap
from .registry import registry_of

__all__ = ["place", "remove", "move", "rename", "container_key", "raw_set", "raw_del",
           "removed", "rekeyed", "placed", "child_key", "announced", "ours"]


def raw_set(container: Any, name: str, obj: Any) -> None:
    setter = getattr(container, "_pclasses_set", None)
    if setter is not None:
        setter(name, obj)
    else:
        container[name] = obj


def raw_del(container: Any, name: str) -> None:
    deleter = getattr(container, "_pclasses_del", None)
    if deleter is not None:
        deleter(name)
    else:
        del container[name]


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name {name!r} must be non-empty text without '/'")
    return name


def container_key(container: Any) -> tuple[Any, str]:
    """``(connection, key)`` of a container (the key root is ``"/"``)."""
    container = unwrap(container)
    if is_key_root(container) and container._p_jar is not None:
        return container._p_jar, "/"
    return locate(container)


def _child_key(parent_key: str, name: str) -> str:
    return join_key([n for n in parent_key.split("/") if n] + [name])


child_key = _child_key


def _set_location(obj: Any, parent: Any, name: str | None) -> None:
    try:
        obj.__parent__ = parent
        obj.__name__ = name
    except (AttributeError, TypeError):
        pass


def _is_placed(obj: Any) -> bool:
    try:
        found = parent_of(obj)
        if found is None:
            return False
        parent, name = found
        return same(child(parent, name), obj)
    except KeyError:  # a __parent__ that does not load (an imported object's)
        return False


def place(container: Any, name: str, obj: Any) -> Any:
    """Put ``obj`` into ``container`` under ``name``; returns ``obj``.

    An object already placed elsewhere is moved (its references follow).
    The name must be free (remove or :func:`~pclasses.replace_target` first).
    """
    container = unwrap(container)
    _check_name(name)
    if _is_placed(obj):
        return move(obj, container, name)
    if child(container, name) is not None:
        raise KeyError(f"{name!r} is already taken in {container!r}")
    _set_location(obj, container, name)
    with ours(obj):
        raw_set(container, name, obj)
    jar = getattr(container, "_p_jar", None)
    if jar is not None:
        if getattr(obj, "_p_jar", None) is None and hasattr(obj, "_p_oid"):
            jar.add(obj)
        # The registry is made with the first placement, so that writers
        # referencing targets later never race to create it in the root.
        registry = jar.__dict__.get("_pclasses_refreg") or registry_of(jar)
        if registry is not None and registry.keys:
            try:
                key = _child_key(container_key(container)[1], name)
            except Exception:
                return obj
            placed(jar, key)
    return obj


def remove(container: Any, name: str) -> Any:
    """Remove ``name`` from ``container``; returns the removed object.

    Refused with :class:`~pclasses.ReferentialIntegrityError`, before
    anything changes, when an ``always``-mode reference from outside the
    removed subtree refers to it or to anything in it.
    """
    container = unwrap(container)
    obj = child(container, name)
    if obj is None:
        raise KeyError(name)
    jar = getattr(container, "_p_jar", None)
    if jar is not None:
        key = _child_key(container_key(container)[1], name)
        removed(jar, key)
    with ours(obj):
        raw_del(container, name)
    if getattr(obj, "__parent__", None) is container:
        _set_location(obj, None, None)
    return obj


#: ids of objects whose removal or move was checked and booked already
#: (:mod:`pclasses.refs.frameworks` skips the containment events of those).
announced: dict[int, str] = {}


@contextmanager
def ours(*objs: Any) -> Iterator[None]:
    """The package changes these objects' containers itself: the
    containment events of zope.container or OFS for them mean nothing more."""
    for obj in objs:
        announced[id(obj)] = "pclasses"
    try:
        yield
    finally:
        for obj in objs:
            announced.pop(id(obj), None)


def removed(jar: Any, key: str, check: bool = True) -> None:
    """What removing the object at ``key`` means to the registry: refused
    (``check``) when an always-mode reference from outside would dangle;
    otherwise stale links met are dropped, reference ids no longer referred
    to are forgotten, commit-mode ones checked at commit, caches dropped."""
    registry = registry_of(jar, create=False)
    if registry is None:
        return
    rids = registry.subtree(key)
    if not rids:
        return
    breaches, stale = blockers(registry, jar, rids, key)
    if breaches and check:
        raise ReferentialIntegrityError(breaches, f"removing {key}")
    for rid, ref_id, database, oid in stale:
        registry.drop_link(rid, ref_id, database, oid)
    commit_refs = ref_ids_in_modes(registry, ("commit",))
    for _key, rid in rids:
        if not registry.has_links(rid):
            registry.forget(rid)
        elif commit_refs and has_links_of(registry, rid, commit_refs):
            defer_check(registry, jar, rid)
    registry.bump()


def rekeyed(jar: Any, old_key: str, new_key: str) -> None:
    """Give every reference id at or under ``old_key`` its key under ``new_key``."""
    registry = registry_of(jar, create=False)
    if registry is not None:
        rids = registry.subtree(old_key)
        for key, rid in rids:
            registry.set_key(rid, new_key + key[len(old_key):])
        if rids:
            registry.bump()


def placed(jar: Any, key: str) -> None:
    """An object now sits at ``key``: drop what a connection cached for it."""
    registry = jar.__dict__.get("_pclasses_refreg") or registry_of(jar)
    if registry is not None and registry.keys:
        rid = registry.keys.get(key)
        if rid is not None:
            registry.cache().pop(rid, None)


def move(obj: Any, container: Any, name: str | None = None) -> Any:
    """Move ``obj`` into ``container`` (under ``name``, default its own name).

    Every reference id under the moved object gets its new key: references
    follow the move, in every mode, and no source is rewritten.
    """
    container = unwrap(container)
    found = parent_of(obj)
    if found is None or not same(child(found[0], found[1]), obj):
        if name is None:
            raise ValueError("name needed to place an object that is not placed yet")
        return place(container, name, obj)
    old_parent, old_name = found
    name = _check_name(name if name is not None else old_name)
    jar, old_key = locate(obj)
    cjar, ckey = container_key(container)
    if database_name(cjar) != database_name(jar):
        raise ValueError(f"cannot move {old_key} into another database "
                         f"({database_name(cjar)!r}); remove and place instead")
    new_key = _child_key(ckey, name)
    if new_key == old_key:
        return obj
    if new_key.startswith(old_key + "/"):
        raise ValueError(f"cannot move {old_key} into itself ({new_key})")
    if child(container, name) is not None:
        raise KeyError(f"{name!r} is already taken in {ckey}")
    notify(KeyChanged(old_key, new_key, obj))  # a veto raises here
    rekeyed(jar, old_key, new_key)
    with ours(obj):
        raw_del(old_parent, old_name)
        _set_location(obj, container, name)
        raw_set(container, name, obj)
    return obj


def rename(container: Any, old: str, new: str) -> Any:
    """Rename ``old`` to ``new`` in ``container``; references follow."""
    container = unwrap(container)
    obj = child(container, old)
    if obj is None:
        raise KeyError(old)
    return move(obj, container, new)
