"""``SQLStore``: a database handle whose database is SQL.

The seed's store, "a persistent object whose ``__getitem__`` calls an SQL
method to retrieve something from a database, then sets ``_p_jar`` and
``_p_oid``": an :class:`SQLStore` is a :class:`~pclasses.tree.handle.DatabaseHandle`
(stored in a parent database, found by name in the tree) whose target is an
``sqlite:///path`` or ``postgresql://...`` URL.  Its *mappings* (kept in the
store, so in the parent database) say which table holds objects of which
persistent class; :meth:`get`, :meth:`new`, :meth:`delete` and
:meth:`query` work on the store's jar for the transaction manager of the
connection the store was loaded through, so rows and ZODB objects commit
together.  ZODB objects refer to rows through remote references
(``pclasses.get_reference`` / ``RemoteAttribute``) via this handle.

This class is pickled into databases: its path
``pclasses.stores.sqlstore.SQLStore`` is frozen (design decision D14).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from persistent import Persistent

from ..errors import StoreMappingError
from ..tree.handle import DatabaseHandle
from .mapping import BoundMapping, spec
from .sqldb import SQLDatabase, standalone_database

__all__ = ["SQLStore"]

_LOCAL_JARS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LOCAL_LOCK = threading.Lock()


class SQLStore(DatabaseHandle):
    """The SQL database at ``url`` as store ``name`` (see the module)."""

    def __init__(self, name: str, url: str, *, read_only: bool = False) -> None:
        if not isinstance(url, str) or ":" not in url:
            raise ValueError(f"an SQL store URL is sqlite:///path or postgresql://..., "
                             f"not {url!r}")
        super().__init__(name, url, read_only=read_only)
        self.mappings: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<SQLStore {self.name!r}>"

    @property
    def url(self) -> str:
        return str(self.target)

    # -- the SQL database and the jar -------------------------------------------------

    def database(self) -> SQLDatabase:
        """The store's :class:`SQLDatabase` (in the tree's multi-database when the
        store is stored in a database; else one per process)."""
        if self._p_jar is None:
            return standalone_database(self.name, self.url)
        db = self.db()
        if not isinstance(db, SQLDatabase):
            raise StoreMappingError(self.name, "", f"{db!r} is not the database of an SQL store")
        return db

    def connection(self) -> Any:
        """The store's jar on the transaction manager of the connection it was
        loaded through (a store not stored anywhere: the thread's manager)."""
        jar: Any
        if self._p_jar is None:
            import transaction

            tm = transaction.manager.manager
            db = standalone_database(self.name, self.url)
            with _LOCAL_LOCK:
                per_tm = _LOCAL_JARS.setdefault(tm, {})
                jar = per_tm.get(id(db))
                if jar is None or jar.opened is None:
                    jar = per_tm[id(db)] = db.open(tm)
        else:
            jar = self._p_jar.connections.get(self.name)
            if jar is None:
                jar = super().connection()
        db = jar._db
        mappings = self.mappings
        if len(db.bound) < len(mappings):
            for name, stored in list(mappings.items()):
                if name not in db.bound:
                    db.bind(name, stored)
        return jar

    def _bound(self, name: str) -> tuple[Any, BoundMapping]:
        jar: Any = self.connection()
        stored = self.mappings.get(name)
        if stored is None:
            raise StoreMappingError(self.name, name, "no such mapping (store.map it first)")
        bound = jar._db.bound.get(name)
        if bound is None or bound.cls is not stored["class"] or bound.table != stored["table"]:
            bound = jar._db.bind(name, stored)
        return jar, bound

    # -- mappings ---------------------------------------------------------------------------

    def map(self, name: str, table: str, key: str, cls: type, columns: Any = None, *,
            kind: str | None = None) -> None:
        """Table ``table`` holds objects of ``cls`` keyed by column ``key`` (see
        the module); mapping the same name again the same way does nothing."""
        if not isinstance(name, str) or not name or "\x00" in name:
            raise StoreMappingError(self.name, str(name), "a mapping needs a non-empty name")
        if not (isinstance(cls, type) and issubclass(cls, Persistent)):
            raise StoreMappingError(self.name, name, f"{cls!r} is not a persistent class")
        if isinstance(columns, str):
            raise StoreMappingError(self.name, name, "columns is a list of column names")
        wanted = spec(table, key, cls, columns, kind)
        old = self.mappings.get(name)
        if old is not None:
            if old == wanted:
                self.connection()
                return
            raise StoreMappingError(self.name, name, f"already maps table {old['table']!r} "
                                    f"to {old['class'].__name__} differently")
        if kind is not None:
            from .kinds import oid_kinds

            oid_kinds[kind]  # an unknown kind fails here
        jar: Any = self.connection()
        jar.db().bind(name, wanted)  # checks the table, adds the version column
        self.mappings = {**self.mappings, name: wanted}

    # -- rows -------------------------------------------------------------------------------

    def get(self, name: str, key: Any) -> Any:
        """The row ``key`` of mapping ``name`` as a persistent object (a ghost);
        a missing key raises :class:`~pclasses.errors.RowNotFoundError` (a ``KeyError``)."""
        jar, bound = self._bound(name)
        return jar.load(bound, key)

    def new(self, name: str, obj: Any, key: Any = None) -> Any:
        """Add ``obj`` as a row of mapping ``name`` (inserted when the transaction
        commits); the key comes from the kind's factory when not given.  Returns the key."""
        jar, bound = self._bound(name)
        return jar.add(bound, obj, key)

    def delete(self, obj: Any) -> None:
        """Delete ``obj``'s row when the transaction commits."""
        jar: Any = self.connection()
        owner: Any = getattr(obj, "_p_jar", None)
        if owner is not jar:
            raise ValueError(f"{obj!r} is not a row of SQL store {self.name!r} "
                             f"(in this transaction)")
        jar.remove(obj)

    def query(self, name: str, where: str, params: Any = ()) -> list[Any]:
        """The rows of mapping ``name`` matching the SQL condition ``where``
        (with the driver's placeholders: ``?`` for SQLite, ``%s`` for psycopg)."""
        jar, bound = self._bound(name)
        return jar.query(bound, where, params)  # type: ignore[no-any-return]

    def key(self, obj: Any) -> Any:
        """The key of row object ``obj``."""
        jar: Any = self.connection()
        owner: Any = getattr(obj, "_p_jar", None)
        if owner is not jar:
            raise ValueError(f"{obj!r} is not a row of SQL store {self.name!r}")
        from .mapping import split_oid

        return jar.db().mapping(split_oid(obj._p_oid)[0]).key_of(obj._p_oid)
