"""Pins: a child keeps the objects other databases refer to through pack.

Packing one database alone keeps what is reachable from its own root, so an
object only another database refers to would be packed away.  When a
handle has ``pin=True``, :func:`pclasses.get_reference` records the target
in the child's root mapping under ``"pclasses.pins"`` (an ``OOBTree`` oid ->
object), in the same transaction as the reference: pack keeps it.
:func:`pclasses.collect_garbage` drops pins that no reference holds any more.
"""

from __future__ import annotations

from typing import Any

from ..classtable import root_entry_oid
from ..record.reader import PersistentRef, read_record

__all__ = ["PINS_KEY", "pin", "pinned"]

PINS_KEY = "pclasses.pins"


def pin(handle: Any, obj: Any) -> None:
    """Pin ``obj`` (an object of ``handle``'s database) in its database."""
    from BTrees.OOBTree import OOBTree

    conn = obj._p_jar
    root = conn.root()
    pins = root.get(PINS_KEY)
    if pins is None:
        pins = root[PINS_KEY] = OOBTree()
    if obj._p_oid not in pins:
        pins[obj._p_oid] = obj


def pinned(conn: Any) -> set[bytes]:
    """The oids pinned in the database of ``conn``.

    Read with the inert record reader: the pin tree's buckets refer to the
    pinned objects with their classes, so loading them through ZODB would
    resolve (import) every pinned object's class.
    """
    oid = root_entry_oid(conn, PINS_KEY)
    if oid is None:
        return set()
    storage = conn._storage
    state = _state(storage, oid)
    if not state:  # an empty tree
        return set()
    if len(state) == 1:  # one bucket's state, kept inside the tree's own record
        inner = state[0][0] if isinstance(state[0], tuple) and state[0] else ()
        return _keys(inner[0] if isinstance(inner, tuple) and inner else ())
    keys: set[bytes] = set()
    bucket = state[1]
    seen: set[bytes] = set()
    while isinstance(bucket, PersistentRef) and bucket.reference.oid not in seen:
        seen.add(bucket.reference.oid)
        items = _state(storage, bucket.reference.oid)
        keys |= _keys(items[0])
        bucket = items[1] if len(items) > 1 else None
    return keys


def _state(storage: Any, oid: bytes) -> Any:
    data, _serial = storage.load(oid)
    state = read_record(data, oid).state
    return state if isinstance(state, tuple) else ()


def _keys(items: Any) -> set[bytes]:
    if not isinstance(items, tuple):
        return set()
    return {k for k in items[::2] if isinstance(k, bytes)}
