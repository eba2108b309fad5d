"""Placeholders for references whose target is gone.

A :class:`Dangling` stands where a referenced object was (packed away,
deleted): falsy, knowing the target's database, oid and class, raising
:class:`~pclasses.errors.DanglingReferenceError` (a ``POSKeyError``) on any
other use, including being stored again.

:func:`install_placeholders` makes a database's connections return one for
ZODB's own cross-database references (``['m', ...]``, ``['n', ...]``) whose
target is gone, logging the database and oid, instead of a ghost that raises
``POSKeyError`` deep inside application code (ZODB issue #206).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from ZODB.POSException import POSKeyError
from ZODB.serialize import ObjectReader
from ZODB.utils import oid_repr

from ..connection import add_connection_hook
from ..errors import DanglingReferenceError

__all__ = ["Dangling", "is_dangling", "install_placeholders"]

log = logging.getLogger(__name__)


class Dangling:
    """The placeholder of a gone target: ``database_name``, ``oid``, ``klass``."""

    __slots__ = ("database_name", "oid", "klass")

    database_name: str
    oid: bytes
    klass: str | None

    def __init__(self, database_name: str, oid: bytes, klass: str | None = None) -> None:
        object.__setattr__(self, "database_name", database_name)
        object.__setattr__(self, "oid", oid)
        object.__setattr__(self, "klass", klass)

    def error(self) -> DanglingReferenceError:
        return DanglingReferenceError(database_name=self.database_name, oid=self.oid,
                                      klass=self.klass)

    def _raise(self, *args: Any, **kw: Any) -> NoReturn:
        raise self.error()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        what = f" {self.klass}" if self.klass else ""
        return f"<Dangling {self.database_name}:{oid_repr(self.oid)}{what}>"

    def __getattr__(self, name: str) -> NoReturn:
        raise self.error()

    def __eq__(self, other: object) -> bool:
        return (type(other) is Dangling and (self.database_name, self.oid)
                == (other.database_name, other.oid))

    def __hash__(self) -> int:
        return hash((Dangling, self.database_name, self.oid))

    __setattr__ = __delattr__ = __call__ = __getitem__ = __setitem__ = _raise
    __iter__ = __len__ = __contains__ = __reduce__ = __reduce_ex__ = _raise
    __getstate__ = __copy__ = __deepcopy__ = _raise


def is_dangling(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`Dangling` placeholder."""
    return type(obj) is Dangling


def _exists(conn: Any, oid: bytes) -> bool:
    if conn._cache.get(oid, None) is not None:
        return True
    try:
        conn._storage.load(oid)
    except POSKeyError:
        return False
    return True


def _dangling(database: str, oid: bytes, klass: Any) -> Dangling:
    if isinstance(klass, tuple):
        text: str | None = ".".join(str(k) for k in klass)
    elif isinstance(klass, type):
        text = f"{klass.__module__}.{klass.__qualname__}"
    else:
        text = None
    log.warning("dangling cross-database reference to %s:%s (%s): a placeholder is used",
                database, oid_repr(oid), text or "class unknown")
    return Dangling(database, oid, text)


def _load_multi_persistent(reader: Any, database_name: str, oid: bytes, klass: Any) -> Any:
    conn = reader._conn.get_connection(database_name)
    if isinstance(oid, str):
        oid = oid.encode("ascii")
    if not _exists(conn, oid):
        return _dangling(database_name, oid, klass)
    return ObjectReader.loaders["m"](reader, database_name, oid, klass)


def _load_multi_oid(reader: Any, database_name: str, oid: bytes) -> Any:
    conn = reader._conn.get_connection(database_name)
    if isinstance(oid, str):
        oid = oid.encode("ascii")
    if not _exists(conn, oid):
        return _dangling(database_name, oid, None)
    return ObjectReader.loaders["n"](reader, database_name, oid)


_LOADERS = dict(ObjectReader.loaders, m=_load_multi_persistent, n=_load_multi_oid)


def _patch_reader(connection: Any) -> None:
    db = getattr(connection, "_db", None)
    reader = getattr(connection, "_reader", None)
    if reader is not None and getattr(db, "pclasses_dangling", "raise") == "placeholder":
        reader.loaders = _LOADERS


def install_placeholders(db: Any) -> None:
    """Placeholders for ``db``'s gone cross-database targets (its connections,
    those it already made included)."""
    from ..connection import install

    db.pclasses_dangling = "placeholder"
    add_connection_hook(_patch_reader)
    install(db)
    connection_map = getattr(db, "_connectionMap", None)
    if connection_map is not None:
        connection_map(_patch_reader)
