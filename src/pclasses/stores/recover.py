"""``pclasses sql-recover``: prepared transactions left behind by a crash.

A PostgreSQL store prepares its transaction at vote and commits it at
finish (:mod:`.jar`).  A process that dies in between leaves a prepared
transaction holding its locks.  Its global id starts with ``pclasses:``
(prepared transactions of anyone else are never touched); before preparing,
the store logged in table ``pclasses_prepared`` which ZODB databases took
part, and the ZODB transaction's metadata names the id (extension
``"pclasses.sql"``).  So the ZODB side *finished* exactly when one of those
databases' transaction logs holds a transaction naming the id:
:func:`recover` then commits the prepared transaction (``resolve=True``),
else rolls it back.  A ZODB database that cannot be read leaves the
transaction alone ("unknown").
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import PClassesError, SQLRecoveryError
from .dialect import dialect_for, is_our_gid
from .jar import EXTENSION_KEY

__all__ = ["PreparedTransaction", "RecoveryReport", "recover", "stores_of"]

#: How far before a transaction was prepared its ZODB side may have begun.
SLACK = dt.timedelta(minutes=10)


@dataclass
class PreparedTransaction:
    """One prepared transaction a store left behind."""

    store: str
    gid: str
    prepared: str
    databases: list[str]
    #: ``finished``, ``not-finished`` or ``unknown`` (a database could not be read)
    zodb: str
    #: ``committed``, ``rolled-back``, or ``None`` (left as it was)
    action: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "gid": self.gid, "prepared": self.prepared,
                "databases": list(self.databases), "zodb": self.zodb,
                "action": self.action, "error": self.error}


@dataclass
class RecoveryReport:
    """What :func:`recover` found (and did)."""

    target: str
    resolve: bool
    stores: list[str] = field(default_factory=list)
    transactions: list[PreparedTransaction] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing is left prepared (after a resolve) or nothing was found."""
        return all(t.action is not None for t in self.transactions)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "resolve": self.resolve, "stores": list(self.stores),
                "prepared": [t.to_dict() for t in self.transactions]}


def stores_of(target: str) -> list[tuple[str, str]]:
    """``(name, url)`` of the SQL stores ``target`` names: itself when it is a
    store URL, else every store of the tree whose root database it is."""
    from ..tree.databases import databases_of, foreign_scheme

    if foreign_scheme(target) is not None:
        return [("store", target)]
    from ..tree.opening import open as open_tree
    from ..tree.walk import open_all

    try:
        db = open_tree(target, tree=True, read_only=True, create=False)
    except (PClassesError, OSError, ValueError) as exc:
        raise SQLRecoveryError(target, f"cannot open the root database: {exc}") from exc
    try:
        open_all(db, read_only=True)
        known = databases_of(db).known
        return sorted((name, info.target) for name, info in known.items()
                      if foreign_scheme(info.target) is not None)
    finally:
        databases_of(db).close_all()


def recover(target: str, *, resolve: bool = False) -> RecoveryReport:
    """List the prepared transactions the stores of ``target`` left behind;
    with ``resolve``, commit those whose ZODB side finished and roll back
    the others (see the module)."""
    from .dialect import _safe

    report = RecoveryReport(_safe(target) if "://" in target else target, resolve)
    for name, url in stores_of(target):
        report.stores.append(name)
        dialect = dialect_for(url)
        if not dialect.two_phase:
            continue  # SQLite commits at vote: nothing is ever left prepared
        conn = dialect.connect()
        try:
            logged = dialect.logged(conn)
            for gid, prepared in dialect.prepared(conn):
                if not is_our_gid(gid):
                    continue
                try:
                    targets = json.loads(logged.get(gid, "null") or "null")
                except ValueError:
                    targets = None
                if not isinstance(targets, list):
                    state = "unknown"
                    targets = []
                else:
                    state = _zodb_state(gid, prepared, targets)
                item = PreparedTransaction(name, gid, _iso(prepared), targets, state)
                report.transactions.append(item)
                if not resolve or state == "unknown":
                    continue
                try:
                    if state == "finished":
                        dialect.commit_prepared(conn, gid)
                        item.action = "committed"
                    else:
                        dialect.rollback_prepared(conn, gid)
                        item.action = "rolled-back"
                    dialect.forget_prepared(conn, gid)
                except Exception as exc:  # another recoverer got there first...
                    item.error = str(exc).strip() or type(exc).__name__
        finally:
            conn.close()
    return report


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _plain_target(target: object) -> bool:
    """A FileStorage path or a ``zeo://`` URI (never a ZConfig file, whose
    ``%import`` would run code named by the data)."""
    from ..database import target_kind

    if not isinstance(target, str) or not target or "\x00" in target:
        return False
    kind = target_kind(target)
    if kind == "uri":
        return target.startswith("zeo://")
    return kind == "filestorage" and target.startswith("/")


def _zodb_state(gid: str, prepared: Any, targets: list[str]) -> str:
    """``finished`` when a transaction of one of ``targets`` names ``gid``."""
    from ZODB.TimeStamp import TimeStamp

    from ..database import open_storage

    start = None
    if isinstance(prepared, dt.datetime):
        t = (prepared - SLACK).astimezone(dt.timezone.utc)
        start = TimeStamp(t.year, t.month, t.day, t.hour, t.minute,
                          t.second + t.microsecond / 1e6).raw()
    unknown = False
    for target in targets:
        if not _plain_target(target):  # the log is data: open only what we write
            unknown = True
            continue
        try:
            storage = open_storage(target, read_only=True)
        except (PClassesError, OSError, ValueError):
            unknown = True
            continue
        try:
            for txn in storage.iterator(start):
                ext = getattr(txn, "extension", None) or {}
                if gid in (ext.get(EXTENSION_KEY) or ()):
                    return "finished"
        finally:
            storage.close()
    return "unknown" if unknown else "not-finished"
