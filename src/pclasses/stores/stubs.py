"""Stubs (seed 001, scenario 1): DB-2 keeps stubs for objects of DB-1.

``enable_stubs(db2, for_databases=["db1"])`` is a setting of an open
database.  When an object of DB-2 refers to an object of a listed database,
DB-2 stores a :class:`Stub` instead (one per target, found again through the
index ``root["pclasses.stubs"]``), holding the target's database name, oid,
class and keys as plain data, and the referring record refers only to the
stub.  Loading the referring object forwards to the real object: the
connection's reader replaces a reference to a stub by the target (a ghost of
the other database's connection).  DB-2 then holds no cross-database
reference at all, so it packs, exports and garbage-collects on its own; the
tree's reference walk (``refs-check``, ``gc``) reads a stub's record with
the record engine and counts it as a reference into the other database.

:class:`Stub`'s path ``pclasses.stores.stubs.Stub`` is frozen (D14).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from persistent import Persistent

from ..connection import Connection, add_connection_hook, add_writer_hook, install

__all__ = ["Stub", "STUBS_KEY", "enable_stubs", "stub_targets"]

#: The root key of DB-2's index of its stubs ``(database, oid) -> Stub``.
STUBS_KEY = "pclasses.stubs"
_MARK = b"pclasses.stores.stubs"


class Stub(Persistent):  # type: ignore[misc]
    """DB-2's stand-in for object ``oid`` (class ``klass``) of database ``database``."""

    def __init__(self, database: str, oid: bytes, klass: str | None,
                 keys: dict[str, Any] | None = None) -> None:
        self.database = database
        self.oid = oid
        self.klass = klass
        self.keys = dict(keys or {})

    def __repr__(self) -> str:
        from ZODB.utils import oid_repr

        return f"<Stub {self.database}:{oid_repr(self.oid)} {self.klass or ''}>"

    def target(self, connection: Any = None) -> Any:
        """The real object (a ghost), through ``connection``'s connection group."""
        conn = connection if connection is not None else self._p_jar
        return conn.get_connection(self.database).get(self.oid)


def _keys_of(obj: Any) -> dict[str, Any]:
    jar = obj._p_jar
    db = jar.db()
    if getattr(db, "pclasses_foreign", False):  # a row of an SQL store
        from .mapping import split_oid

        name = split_oid(obj._p_oid)[0]
        return {"mapping": name, "key": db.mapping(name).key_of(obj._p_oid)}
    return {}


def _stub_for(connection: Any, obj: Any) -> Stub:
    from BTrees.OOBTree import OOBTree

    name = obj._p_jar.db().database_name
    key = (name, bytes(obj._p_oid))
    cache = connection.__dict__.setdefault("_pclasses_stubs", {})
    stub = cache.get(key)
    if stub is not None and stub._p_jar in (None, connection):
        return stub  # type: ignore[no-any-return]
    root = connection.root()
    index = root.get(STUBS_KEY)
    if index is None:
        index = root[STUBS_KEY] = OOBTree()
    stub = index.get(key)
    if stub is None:
        klass = f"{type(obj).__module__}.{type(obj).__qualname__}"
        stub = Stub(name, key[1], klass, _keys_of(obj))
        index[key] = stub
    cache[key] = stub
    return stub  # type: ignore[no-any-return]


def _wrap_writer(writer: Any, connection: Any, names: frozenset[str]) -> None:
    original = writer.persistent_id

    def persistent_id(obj: Any) -> Any:
        jar = getattr(obj, "_p_jar", None) if isinstance(obj, Persistent) else None
        if jar is not None and jar is not connection and obj._p_oid is not None:
            db = jar.db()
            if getattr(db, "database_name", None) in names:
                return original(_stub_for(connection, obj))
        return original(obj)

    writer.persistent_id = persistent_id
    writer._p.persistent_id = persistent_id


def _patch_reader(connection: Any) -> None:
    reader = getattr(connection, "_reader", None)
    if reader is None or "load_persistent" in reader.__dict__:
        return
    original = reader.load_persistent

    def load_persistent(oid: Any, klass: Any) -> Any:
        obj = original(oid, klass)
        if type(obj) is Stub and getattr(connection._db, "pclasses_stubs", None):
            return obj.target(connection)
        return obj

    reader.load_persistent = load_persistent


def _on_connection(connection: Any) -> None:
    if getattr(connection._db, "pclasses_stubs", None):
        _patch_reader(connection)


def _on_commit(connection: Any, writer: Any) -> None:
    names = getattr(connection._db, "pclasses_stubs", None)
    if names:
        _wrap_writer(writer, connection, names)


# Connections of databases with stubs read stubs as their targets and write
# references to the listed databases' objects as stubs (the hooks cost a
# getattr elsewhere).
add_connection_hook(_on_connection)
add_writer_hook(_on_commit)


def _upgrade(connection: Any) -> None:
    if isinstance(connection, Connection):
        _patch_reader(connection)


def enable_stubs(db: Any, for_databases: Iterable[str]) -> None:
    """Make ``db`` keep stubs for the objects of ``for_databases`` it refers
    to (an empty list turns stubs off again for new references)."""
    if isinstance(for_databases, str):
        raise TypeError("for_databases is a list of database names")
    names = frozenset(for_databases)
    if db.database_name in names:
        raise ValueError(f"database {db.database_name!r} cannot keep stubs for itself")
    db.pclasses_stubs = names
    install(db)
    connection_map = getattr(db, "_connectionMap", None)
    if connection_map is not None:
        connection_map(_upgrade)


def stub_targets(data: bytes) -> list[tuple[str, bytes]]:
    """``(database, oid)`` a stub's record refers to (read with the record
    engine, never unpickled); ``[]`` for any other record."""
    if _MARK not in bytes(data[:96]):
        return []
    from ..record.reader import read_record

    try:
        info = read_record(bytes(data))
    except Exception:
        return []
    if info.klass.module != "pclasses.stores.stubs" or info.klass.name != "Stub":
        return []
    state = info.state
    if not isinstance(state, dict):
        return []
    database, oid = state.get("database"), state.get("oid")
    if isinstance(database, str) and isinstance(oid, bytes):
        return [(database, oid)]
    return []
