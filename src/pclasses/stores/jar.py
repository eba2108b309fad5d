"""The jar of an SQL store: a data manager in the ZODB transaction.

An :class:`SQLJar` is to a store's rows what a ZODB ``Connection`` is to a
database's objects: rows are persistent objects whose ``_p_jar`` is the jar
and whose ``_p_oid`` is made from their key (:mod:`.kinds`); it loads them
(one indexed SELECT), hears of their changes (``register``) and writes them
in the two-phase commit of the transaction it joined:

* ``commit``: every change is written inside one SQL transaction, each
  UPDATE / DELETE guarded by the row's version column (a row another
  transaction changed since it was read raises ZODB's ``ConflictError``, so
  ``transaction.attempts()`` retries);
* ``tpc_vote``: SQLite *commits* here, as the last resource (its
  :meth:`sortKey` sorts after any printable key, so every other resource has
  voted); PostgreSQL *prepares* (``PREPARE TRANSACTION``; its key sorts after
  every printable key too, before SQLite's, so it finishes after every ZODB
  storage), the global id
  being recorded in the ZODB transaction's metadata (extension
  ``"pclasses.sql"``) so ``pclasses sql-recover`` can tell after a crash
  whether the ZODB side finished;
* ``tpc_finish``: PostgreSQL ``COMMIT PREPARED``;
* ``tpc_abort`` / ``abort``: roll back (prepared or not), and every row object
  changed in the transaction is invalidated (reloaded when used).

Savepoints are SQL savepoints: pending changes are written first, so a
rollback returns both the SQL rows and the objects to the savepoint.  Reads
are made outside the write transaction (autocommit) until one is open; a
new transaction makes every cached row a ghost again, so it is re-read.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from persistent import PickleCache
from ZODB.POSException import ConflictError

from ..errors import DuplicateRowError, RowNotFoundError, SQLReferenceError
from .dialect import GID_PREFIX
from .mapping import BoundMapping, split_oid

__all__ = ["SQLJar", "SQLSavepoint", "EXTENSION_KEY", "LAST_SORT_KEY"]

#: The ZODB transaction extension key listing the prepared transactions' ids.
EXTENSION_KEY = "pclasses.sql"
#: SQLite jars sort after every printable key (U+10FFFF is not printable).
LAST_SORT_KEY = "\U0010ffff" * 4


def _oid_text(oid: bytes) -> str:
    return oid.decode("utf-8", "backslashreplace").replace("\x00", ":")


class SQLJar:
    """One connection of a store, on one transaction manager."""

    _storage = None
    _normal_storage = None
    before = None

    def __init__(self, db: Any) -> None:
        self._db = db
        self.connections: dict[str, Any] = {db.database_name: self}
        self._cache = PickleCache(self, 400)
        self.transaction_manager: Any = None
        self.opened: float | None = None
        self._sql: Any = None
        #: oid -> version column value as last read or written
        self._versions: dict[bytes, int] = {}
        #: rows this jar deleted (their objects stay ghosts that cannot load)
        self._gone: set[bytes] = set()
        self._reset()

    def _reset(self) -> None:
        self._txn: Any = None
        self._writing = False
        self._gid: str | None = None
        self._prepared = False
        self._registered: dict[bytes, Any] = {}
        self._written: dict[bytes, Any] = {}
        self._new: dict[bytes, Any] = {}
        self._inserted: set[bytes] = set()
        self._deleted: dict[bytes, Any] = {}
        self._removed: set[bytes] = set()
        self._prefetch: dict[bytes, tuple[dict[str, Any], int]] = {}
        self._savepoints = 0

    def __repr__(self) -> str:
        return f"<SQLJar {self._db.database_name!r}>"

    # -- ZODB connection protocol ------------------------------------------------

    def db(self) -> Any:
        return self._db

    def open(self, transaction_manager: Any = None, delegate: bool = True) -> None:
        import transaction

        if transaction_manager is None:
            transaction_manager = transaction.manager.manager
        self.transaction_manager = transaction_manager
        self.opened = time.time()
        transaction_manager.registerSynch(self)

    def close(self, primary: bool = True) -> None:
        if self._txn is not None:
            from ZODB.POSException import ConnectionStateError

            raise ConnectionStateError("cannot close an SQL store jar joined to a transaction")
        if self.transaction_manager is not None and self.opened is not None:
            self.transaction_manager.unregisterSynch(self)
        self._cache.minimize()
        self.opened = None
        self.transaction_manager = None

    def release(self) -> None:
        """Give the SQL connection back (the database closes)."""
        if self._sql is not None:
            try:
                self._sql.close()
            finally:
                self._sql = None

    def isReadOnly(self) -> bool:
        return bool(self._db.read_only)

    def sortKey(self) -> str:
        # Both sort after every printable key, so every ZODB storage finishes
        # first: its transaction log is what decides a prepared PostgreSQL
        # transaction after a crash.  SQLite, which cannot prepare, comes
        # last of all (it commits at its vote).
        if self._db.dialect.two_phase:
            return f"{LAST_SORT_KEY[:-1]}pclasses.postgresql:{self._db.database_name}:{id(self)}"
        return f"{LAST_SORT_KEY}pclasses.sqlite:{self._db.database_name}:{id(self)}"

    def _implicitlyAdding(self, oid: bytes) -> bool:
        # ZODB asks this only when a ZODB object's record is about to hold a
        # direct reference to one of our rows: refuse, clearly.
        obj = self._cache.get(oid)
        if obj is None:
            obj = self._new.get(oid)
        klass = type(obj).__module__ + "." + type(obj).__qualname__ if obj is not None else "?"
        raise SQLReferenceError(self._db.database_name, klass)

    def get(self, oid: bytes) -> Any:
        """The row object of ``oid`` (a ghost when not loaded)."""
        obj = self._new.get(oid)
        if obj is not None:
            return obj
        obj = self._cache.get(oid)
        if obj is not None:
            return obj
        name, _kind_oid = split_oid(oid)
        bound = self._db.mapping(name)
        obj = bound.cls.__new__(bound.cls)
        self._cache.new_ghost(oid, obj)
        return obj

    __getitem__ = get

    def setstate(self, obj: Any) -> None:
        oid = obj._p_oid
        found = self._prefetch.pop(oid, None)
        if found is None:
            name, _k = split_oid(oid)
            bound = self._db.mapping(name)
            key = bound.key_of(oid)
            row = self._execute(bound.select_one, (bound.kind.to_sql(key),)).fetchone()
            if row is None:
                raise RowNotFoundError(self._db.database_name, name, repr(key))
            found = bound.state_of(row)
        state, version = found
        obj.__setstate__(state)
        self._versions[oid] = version

    def register(self, obj: Any) -> None:
        oid = obj._p_oid
        if oid in self._new:
            return
        self._join()
        self._registered[oid] = obj

    def readCurrent(self, obj: Any) -> None:
        pass

    def oldstate(self, obj: Any, tid: bytes) -> Any:
        raise NotImplementedError("SQL stores keep no history")

    # -- SQL ------------------------------------------------------------------------

    def sql(self) -> Any:
        """This jar's DB-API connection (opened on first use)."""
        if self._sql is None:
            self._sql = self._db.connect()
        return self._sql

    def _execute(self, statement: str, params: Any = ()) -> Any:
        return self.sql().execute(statement, params)

    def _join(self) -> None:
        if self._txn is not None:
            return
        if self._db.read_only:
            from ZODB.POSException import ReadOnlyError

            raise ReadOnlyError(f"the SQL store {self._db.database_name!r} is read-only")
        tm = self.transaction_manager
        if tm is None:
            raise ValueError(f"the SQL store {self._db.database_name!r} jar is closed")
        txn = tm.get()
        txn.join(self)
        self._txn = txn
        if self._db.dialect.two_phase:
            self._gid = (f"{GID_PREFIX}{int(time.time() * 1000):012x}:"
                         f"{uuid.uuid4().hex}")
            ext = txn.extension
            gids = list(ext.get(EXTENSION_KEY, ()))
            gids.append(self._gid)
            ext[EXTENSION_KEY] = gids

    def _begin(self) -> None:
        if not self._writing:
            self._db.dialect.begin(self.sql())
            self._writing = True

    def _conflict(self, oid: bytes, what: str) -> ConflictError:
        return ConflictError(
            message=f"SQL store {self._db.database_name!r}: row {_oid_text(oid)} was "
                    f"{what} by another transaction since it was read", oid=oid)

    def _flush(self) -> None:
        """Write every pending change inside the SQL write transaction."""
        if not (self._registered or self._new or self._deleted):
            return
        mapping = self._db.mapping
        try:
            self._begin()
            for oid in sorted(self._deleted):
                obj = self._deleted[oid]
                bound = mapping(split_oid(oid)[0])
                key = bound.kind.to_sql(bound.key_of(oid))
                cur = self._execute(bound.delete(), (key, self._versions.get(oid, 0)))
                if cur.rowcount != 1:
                    raise self._conflict(oid, "changed or deleted")
                self._written[oid] = obj
                self._removed.add(oid)
                self._cache.invalidate(oid)  # gone for the rest of the transaction
            for oid in sorted(self._new):
                obj = self._new[oid]
                bound = mapping(split_oid(oid)[0])
                values = bound.values(obj, obj.__getstate__())
                key = bound.kind.to_sql(bound.key_of(oid))
                try:
                    self._execute(bound.insert(values), (key, *values.values(), 0))
                except Exception as exc:
                    if _is_integrity(exc):
                        raise self._conflict(oid, "inserted") from exc
                    raise
                self._versions[oid] = 0
                self._inserted.add(oid)
                self._written[oid] = obj
                old = self._cache.get(oid)
                if old is not None and old is not obj:  # the row deleted before
                    del self._cache[oid]
                self._removed.discard(oid)
                self._gone.discard(oid)
                self._cache[oid] = obj
                obj._p_changed = False
            for oid in sorted(self._registered):
                obj = self._registered[oid]
                if obj._p_jar is not self or obj._p_changed is not True:
                    continue
                bound = mapping(split_oid(oid)[0])
                values = bound.values(obj, obj.__getstate__())
                key = bound.kind.to_sql(bound.key_of(oid))
                cur = self._execute(bound.update(values),
                                    (*values.values(), key, self._versions.get(oid, 0)))
                if cur.rowcount != 1:
                    raise self._conflict(oid, "changed or deleted")
                self._versions[oid] = self._versions.get(oid, 0) + 1
                self._written[oid] = obj
                obj._p_changed = False
        except Exception as exc:
            if self._db.dialect.is_locked(exc):
                raise ConflictError(message=f"SQL store {self._db.database_name!r}: "
                                            f"locked by another transaction ({exc})") from exc
            raise
        self._registered.clear()
        self._new.clear()
        self._deleted.clear()

    # -- the store's operations --------------------------------------------------------

    def load(self, bound: BoundMapping, key: Any) -> Any:
        """The row object of ``key`` (a ghost; one SELECT proves it exists)."""
        kind = bound.kind
        key = kind.normalize(key)
        oid = bound.prefix + kind.encode(key)
        obj = self._new.get(oid)
        if obj is not None:
            return obj
        if oid in self._deleted:
            raise RowNotFoundError(self._db.database_name, bound.name, repr(key))
        obj = self._cache.get(oid)
        if obj is not None and (obj._p_changed is not None or oid in self._prefetch):
            return obj
        row = self._execute(bound.select_one, (kind.to_sql(key),)).fetchone()
        if row is None:
            raise RowNotFoundError(self._db.database_name, bound.name, repr(key))
        if obj is None:
            obj = bound.cls.__new__(bound.cls)
            self._cache.new_ghost(oid, obj)
        self._prefetch[oid] = bound.state_of(row)
        return obj

    def add(self, bound: BoundMapping, obj: Any, key: Any) -> Any:
        """Add ``obj`` as a new row (inserted at commit); returns its key."""
        if getattr(obj, "_p_jar", None) is not None:
            raise ValueError(f"{obj!r} already belongs to a database")
        if not isinstance(obj, bound.cls):
            raise TypeError(f"mapping {bound.name!r} holds {bound.cls.__name__} objects, "
                            f"not {type(obj).__name__}")
        self._join()
        bound.values(obj, obj.__getstate__())  # attributes must be columns
        given = key is not None
        for _attempt in range(1000):
            if not given:  # a key this transaction holds already is drawn again
                key = bound.kind.new_key(lambda: self._next_number(bound))
            key = bound.kind.normalize(key)
            oid = bound.oid(key)
            cached = self._cache.get(oid)
            if cached is not None and (oid in self._gone or oid in self._removed) \
                    and cached._p_changed is None:  # the ghost of a deleted row
                del self._cache[oid]
                self._gone.discard(oid)
                self._removed.discard(oid)
                cached = None
            taken = oid in self._new or cached is not None and oid not in self._deleted or (
                given and cached is None and oid not in self._deleted
                and self._execute(bound.select_one, (bound.kind.to_sql(key),)).fetchone())
            if not taken:
                break
            if given:
                raise DuplicateRowError(self._db.database_name, bound.name, repr(key))
        else:
            raise DuplicateRowError(self._db.database_name, bound.name, repr(key))
        obj._p_oid = oid
        obj._p_jar = self
        self._new[oid] = obj
        return key

    def _next_number(self, bound: BoundMapping) -> int:
        if self._writing:
            return int(self._db.next_key_number(self.sql(), bound))
        # Outside a write transaction the sequence moves at once (never reused).
        with self._db._lock:
            return int(self._db.next_key_number(self._db.admin(), bound))

    def remove(self, obj: Any) -> None:
        """Delete ``obj``'s row at commit."""
        if obj._p_jar is not self:
            raise ValueError(f"{obj!r} is not a row of SQL store {self._db.database_name!r}")
        oid = obj._p_oid
        self._join()
        if oid in self._new:
            del self._new[oid]
            self._detach(obj)
            return
        if obj._p_changed is None:
            obj._p_activate()  # its version
        self._registered.pop(oid, None)
        self._deleted[oid] = obj

    def query(self, bound: BoundMapping, where: str, params: Any) -> list[Any]:
        """The row objects matching ``where`` (loaded by the same SELECT); this
        transaction's own changes are written first, so the query sees them."""
        if self._writing or self._registered or self._new or self._deleted:
            self._flush()
        rows = self._execute(bound.select_where(where), tuple(params)).fetchall()
        out = []
        from_sql, encode, prefix = bound.kind.from_sql, bound.kind.encode, bound.prefix
        cache, deleted, versions = self._cache, self._deleted, self._versions
        cls, columns = bound.cls, bound.columns
        for row in rows:
            oid = prefix + encode(from_sql(row[0]))
            if deleted and oid in deleted:
                continue
            obj = cache.get(oid)
            if obj is None:  # loaded at once: the SELECT brought the state
                obj = cls.__new__(cls)
                obj.__setstate__(dict(zip(columns, row[1:])))
                obj._p_jar = self
                obj._p_oid = oid
                cache[oid] = obj
                versions[oid] = int(row[-1] or 0)
            elif obj._p_changed is None:
                self._prefetch[oid] = bound.state_of(row[1:])
            out.append(obj)
        return out

    def _detach(self, obj: Any) -> None:
        oid = obj._p_oid
        if self._cache.get(oid) is obj:
            del self._cache[oid]
        obj._p_jar = None
        obj._p_oid = None

    # -- two-phase commit -----------------------------------------------------------------

    def abort(self, txn: Any) -> None:
        self._rollback()

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        self._flush()

    def tpc_vote(self, txn: Any) -> None:
        if not self._writing:
            return
        dialect = self._db.dialect
        if dialect.two_phase:
            assert self._gid is not None
            with self._db._lock:
                dialect.log_prepared(self._db.admin(), self.sql(), self._gid,
                                     zodb_targets(self))
            dialect.prepare(self.sql(), self._gid)
            self._prepared = True
            self._writing = False
        else:
            try:
                dialect.commit(self.sql())
            except Exception as exc:
                if dialect.is_locked(exc):
                    raise ConflictError(message=str(exc)) from exc
                raise
            self._writing = False

    def tpc_finish(self, txn: Any) -> None:
        try:
            if self._prepared:
                assert self._gid is not None
                self._db.dialect.commit_prepared(self.sql(), self._gid)
        finally:
            for oid in self._removed:  # ghosts now: using them raises RowNotFoundError
                self._cache.invalidate(oid)
                self._versions.pop(oid, None)
                self._gone.add(oid)
            self._end()

    def tpc_abort(self, txn: Any) -> None:
        self._rollback()

    def _rollback(self) -> None:
        try:
            if self._prepared and self._gid is not None:
                self._db.dialect.rollback_prepared(self.sql(), self._gid)
                with self._db._lock:
                    self._db.dialect.forget_prepared(self._db.admin(), self._gid)
            elif self._writing:
                self._db.dialect.rollback(self.sql())
        finally:
            for obj in list(self._new.values()):
                self._detach(obj)
            for oid in self._inserted:
                obj = self._cache.get(oid)
                if obj is not None:
                    self._detach(obj)
            for oid in list(self._written) + list(self._registered) + list(self._deleted):
                self._versions.pop(oid, None)
                if oid not in self._inserted:
                    self._cache.invalidate(oid)
            self._end()

    def _end(self) -> None:
        self._reset()

    # -- savepoints ---------------------------------------------------------------------

    def savepoint(self) -> SQLSavepoint:
        self._flush()
        name = None
        if self._writing:
            self._savepoints += 1
            name = f"pclasses_sp{self._savepoints}"
            self._db.dialect.savepoint(self.sql(), name)
        return SQLSavepoint(self, name, set(self._written), set(self._inserted),
                            set(self._removed))

    # -- synchronizer: every transaction re-reads the rows it uses ------------------

    def beforeCompletion(self, txn: Any) -> None:
        pass

    def afterCompletion(self, txn: Any) -> None:
        self._prefetch.clear()
        self._cache.minimize()

    def newTransaction(self, txn: Any, sync: bool = True) -> None:
        self._prefetch.clear()
        self._cache.minimize()


class SQLSavepoint:
    """A savepoint of a jar: an SQL ``SAVEPOINT`` (or the transaction's start)."""

    def __init__(self, jar: SQLJar, name: str | None, written: set[bytes],
                 inserted: set[bytes], removed: set[bytes]) -> None:
        self.jar = jar
        self.name = name
        self.written = written
        self.inserted = inserted
        self.removed = removed

    def rollback(self) -> None:
        jar = self.jar
        dialect = jar._db.dialect
        if self.name is not None:
            dialect.rollback_to(jar.sql(), self.name)
        elif jar._writing:
            dialect.rollback(jar.sql())
            jar._writing = False
        for obj in list(jar._new.values()):
            jar._detach(obj)
        jar._new.clear()
        for oid in jar._inserted - self.inserted:
            obj = jar._cache.get(oid)
            if obj is not None:
                jar._detach(obj)
            jar._written.pop(oid, None)
            jar._versions.pop(oid, None)
        jar._inserted = set(self.inserted)
        jar._removed = set(self.removed)
        # Everything written may hold later changes: reload what SQL now says.
        stale = list(jar._written)
        stale += list(jar._registered)
        stale += list(jar._deleted)
        for oid in stale:
            if oid not in self.written:
                jar._written.pop(oid, None)
            jar._versions.pop(oid, None)
            jar._cache.invalidate(oid)
        jar._registered.clear()
        jar._deleted.clear()


def zodb_targets(jar: SQLJar) -> str:
    """JSON: what ``pclasses.open`` opens to read the transaction logs of the ZODB
    databases in ``jar``'s connection group (FileStorage paths, ZEO URIs)."""
    import json

    out = []
    for conn in list(jar.connections.values()):
        if conn is jar or isinstance(conn, SQLJar):
            continue
        storage = getattr(conn.db(), "storage", None)
        target = storage_target(storage)
        if target:
            out.append(target)
    return json.dumps(sorted(set(out)))


def storage_target(storage: Any) -> str | None:
    """A target ``pclasses.open`` understands for ``storage``, when there is one."""
    name = getattr(storage, "_file_name", None)
    if isinstance(name, str):
        return os.path.abspath(name)
    addr = getattr(storage, "_addr", None)
    if isinstance(addr, (list, tuple)) and addr and isinstance(addr[0], tuple):
        addr = addr[0]
    if isinstance(addr, tuple) and len(addr) == 2:
        name = getattr(storage, "_storage", "1")
        return f"zeo://{addr[0]}:{addr[1]}?storage={name}"
    return None


def _is_integrity(exc: BaseException) -> bool:
    return type(exc).__name__ in ("IntegrityError", "UniqueViolation")

