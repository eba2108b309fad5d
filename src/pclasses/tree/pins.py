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
    """The oids pinned in the database of ``conn``."""
    pins = conn.root().get(PINS_KEY)
    return set(pins.keys()) if pins is not None else set()
