"""The seed's two key changes.

* Right object, wrong key: :func:`rekey` gives the reference id at a key
  (and every one under it) a new key, moving the object.
* Wrong object, right key: :func:`replace_target` puts another object at a
  key; the reference ids stay, so references resolve to the new object.
"""

from __future__ import annotations

from typing import Any

from .containment import _set_location, container_key, move, ours, raw_del, raw_set
from .events import TargetReplaced, notify
from .location import child, is_key_root, join_key, key_root, resolve, split_key, unwrap
from .registry import registry_of

__all__ = ["rekey", "replace_target"]


def _parent_and_name(connection: Any, key: str) -> tuple[Any, str]:
    names = split_key(key)
    if not names:
        raise ValueError("the key root has no parent")
    parent = resolve(connection, join_key(names[:-1])) if len(names) > 1 else key_root(connection)
    if parent is None:
        raise KeyError(f"no container at {join_key(names[:-1])}")
    return parent, names[-1]


def rekey(connection: Any, old_key: str, new_key: str) -> Any:
    """Move the object at ``old_key`` to ``new_key``; every reference to it
    (or to anything under it) follows.  No source is rewritten.  Returns
    the object."""
    obj = resolve(connection, old_key)
    if obj is None:
        raise KeyError(f"nothing at {old_key}")
    parent, name = _parent_and_name(connection, new_key)
    return move(obj, parent, name)


def replace_target(connection: Any, key: str, new_obj: Any) -> Any:
    """Put ``new_obj`` at ``key`` in place of the object there, in one step
    (allowed in every mode: no reference dangles).  References to ``key``
    now resolve to ``new_obj``.  Returns the old object."""
    parent, name = _parent_and_name(connection, key)
    parent = unwrap(parent)
    old = child(parent, name)
    if old is None:
        raise KeyError(f"nothing at {key}")
    if new_obj is old:
        return old
    if getattr(new_obj, "__parent__", None) is not None and child(
            new_obj.__parent__, getattr(new_obj, "__name__", "")) is new_obj:
        raise ValueError("the new object is placed elsewhere; remove it first")
    container_key(parent)  # the parent must be located
    with ours(old, new_obj):
        raw_del(parent, name)
        _set_location(old, None, None)
        _set_location(new_obj, parent, name)
        raw_set(parent, name, new_obj)
    jar = parent._p_jar
    if getattr(new_obj, "_p_jar", None) is None and jar is not None:
        jar.add(new_obj)
    registry = registry_of(connection, create=False)
    if registry is not None:
        registry.bump()
    notify(TargetReplaced(key, old, new_obj))
    return old


_ = is_key_root  # re-exported for symmetry with containment
