"""The SQL database of a store, as a member of a tree's multi-database.

:class:`SQLDatabase` plays the part a ``ZODB.DB`` plays for a ZODB child: it
is what the tree's ``databases`` mapping holds under the store's name, and
its :meth:`open` gives a *connection* (the store's jar,
:class:`~pclasses.stores.jar.SQLJar`) on a transaction manager, so ZODB's
``Connection.get_connection(store_name)`` joins the store to the
connections of that transaction like any other database.  It keeps the
mappings bound against the live SQL database (one binding per process).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ..errors import StoreMappingError
from .dialect import Dialect, dialect_for
from .mapping import BoundMapping, bind

__all__ = ["SQLDatabase", "open_store_database", "standalone_database"]


class SQLDatabase:
    """The SQL side of store ``name`` at ``url`` (opened lazily)."""

    #: Not a ZODB database: the tree's record walks skip it.
    pclasses_foreign = True
    xrefs = False

    def __init__(self, name: str, url: str, databases: Any = None, *,
                 read_only: bool = False) -> None:
        self.database_name = name
        self.read_only = read_only
        self.url = url
        self.dialect: Dialect = dialect_for(url)
        self.databases = databases if databases is not None else {name: self}
        self.bound: dict[str, BoundMapping] = {}
        self.by_class: dict[type, BoundMapping] = {}
        self._lock = threading.RLock()
        self._admin: Any = None
        self._jars: weakref.WeakSet[Any] = weakref.WeakSet()  # to close with the database
        self.closed = False
        self._sequences_ready = False

    def __repr__(self) -> str:
        return f"<SQLDatabase {self.database_name!r} {self.dialect.name}>"

    # -- connections ---------------------------------------------------------------

    def connect(self) -> Any:
        """A new DB-API connection (autocommit) to the SQL database."""
        return self.dialect.connect()

    def admin(self) -> Any:
        """A connection of the database's own for introspection and sequences."""
        with self._lock:
            if self._admin is None:
                self._admin = self.connect()
            return self._admin

    def open(self, transaction_manager: Any = None, before: Any = None, **_kw: Any) -> Any:
        """The store's jar on ``transaction_manager`` (ZODB's ``DB.open``)."""
        from .jar import SQLJar

        jar = SQLJar(self)
        jar.open(transaction_manager)
        with self._lock:
            self._jars.add(jar)
        return jar

    def close(self) -> None:
        with self._lock:
            for jar in list(self._jars):
                jar.release()
            self._jars.clear()
            if self._admin is not None:
                self._admin.close()
                self._admin = None
            self.closed = True

    # -- mappings -------------------------------------------------------------------

    def bind(self, name: str, stored: dict[str, Any]) -> BoundMapping:
        """The mapping ``name`` bound against the database (bound on first call)."""
        bound = self.bound.get(name)
        if bound is not None and bound.cls is stored["class"] and bound.table == stored["table"]:
            return bound
        with self._lock:
            conn = self.admin()
            bound = bind(self.database_name, name, stored, self.dialect, conn)
            if not self._sequences_ready:
                from .kinds import IntKind

                if isinstance(bound.kind, IntKind):
                    self.dialect.ensure_sequences(conn)  # autocommit: here to stay
                    self._sequences_ready = True
            self.bound[name] = bound
            self.by_class[bound.cls] = bound
            return bound

    def mapping(self, name: str) -> BoundMapping:
        try:
            return self.bound[name]
        except KeyError:
            raise StoreMappingError(self.database_name, name,
                                    "no such mapping (store.map it first)") from None

    def next_key_number(self, conn: Any, bound: BoundMapping) -> int:
        """The next number of ``bound``'s sequence (on ``conn``, inside its transaction)."""
        from .kinds import IntKind

        if not self._sequences_ready:
            # made at map time (autocommit); here only if that did not happen,
            # inside the caller's transaction (so not remembered)
            self.dialect.ensure_sequences(conn)
            if conn is self._admin:
                self._sequences_ready = True
        table = bound.table if isinstance(bound.kind, IntKind) else None
        return self.dialect.next_value(conn, f"{bound.table}.{bound.key}", table, bound.key)


def open_store_database(info: Any, databases: Any) -> SQLDatabase:
    """The tree's opener for ``sqlite:`` / ``postgresql:`` handles."""
    return SQLDatabase(info.name, info.target, databases,
                       read_only=bool(info.read_only or getattr(databases, "force_read_only",
                                                                 False)))


_STANDALONE: dict[tuple[str, str], SQLDatabase] = {}
_STANDALONE_LOCK = threading.Lock()


def standalone_database(name: str, url: str) -> SQLDatabase:
    """The process's database for a store not stored in any ZODB database."""
    with _STANDALONE_LOCK:
        db = _STANDALONE.get((name, url))
        if db is None or db.closed:
            db = _STANDALONE[(name, url)] = SQLDatabase(name, url)
        return db
