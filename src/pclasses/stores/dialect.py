"""SQL dialects: what differs between SQLite and PostgreSQL for a store.

A :class:`Dialect` connects (in autocommit mode: a store opens its write
transactions itself), names the driver's placeholder, introspects a table's
columns, adds the store's version column, keeps key sequences, and opens and
ends transactions: SQLite commits at vote (it is the last resource),
PostgreSQL prepares at vote and commits the prepared transaction at finish.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import DatabaseUnavailableError

__all__ = ["Dialect", "SQLiteDialect", "PostgreSQLDialect", "dialect_for", "quote",
           "VERSION_COLUMN", "SEQUENCES_TABLE", "GID_PREFIX", "PREPARED_TABLE", "is_our_gid"]

#: The column a store adds to every mapped table (optimistic concurrency).
VERSION_COLUMN = "pclasses_version"
#: The table of key sequences (oid kind ``"int"``).
SEQUENCES_TABLE = "pclasses_sequences"
#: Every prepared transaction a store makes has a global id starting so.
GID_PREFIX = "pclasses:"
#: PostgreSQL: the table naming, for each prepared transaction, the ZODB
#: databases whose transaction log decides it (a row is inserted before
#: PREPARE and deleted inside the prepared transaction: it disappears when
#: the transaction commits).
PREPARED_TABLE = "pclasses_prepared"
_GID = re.compile(r"pclasses:[0-9a-f]{12}:[0-9a-f]{32}")


def is_our_gid(gid: str) -> bool:
    """Whether prepared transaction ``gid`` was made by a store."""
    return bool(_GID.fullmatch(gid))


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier (``schema.table`` quoted part by part)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{name!r} is not an SQL identifier")
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


class Dialect:
    """What a store needs of one SQL database kind."""

    name = ""
    #: The driver's placeholder (``store.query`` takes the same).
    placeholder = "?"
    #: Whether a vote prepares a real two-phase commit (else: commits).
    two_phase = False
    #: The SQL function giving the larger of two values.
    greatest = "GREATEST"

    def __init__(self, url: str) -> None:
        self.url = url
        self._log_ready = False

    def connect(self) -> Any:
        raise NotImplementedError

    def columns(self, conn: Any, table: str) -> list[tuple[str, str]]:
        """``(name, declared type)`` of every column of ``table``, in order."""
        raise NotImplementedError

    def add_version_column(self, conn: Any, table: str) -> None:
        conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(VERSION_COLUMN)} "
                     f"INTEGER NOT NULL DEFAULT 0")

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        conn.execute("ROLLBACK")

    def savepoint(self, conn: Any, name: str) -> None:
        conn.execute(f"SAVEPOINT {name}")

    def rollback_to(self, conn: Any, name: str) -> None:
        conn.execute(f"ROLLBACK TO SAVEPOINT {name}")

    def prepare(self, conn: Any, gid: str) -> None:
        raise NotImplementedError

    def commit_prepared(self, conn: Any, gid: str) -> None:
        raise NotImplementedError

    def rollback_prepared(self, conn: Any, gid: str) -> None:
        raise NotImplementedError

    def prepared(self, conn: Any) -> list[tuple[str, Any]]:
        """``(gid, prepared at)`` of this database's prepared transactions."""
        return []

    def log_prepared(self, admin: Any, conn: Any, gid: str, targets: str) -> None:
        raise NotImplementedError

    def forget_prepared(self, admin: Any, gid: str) -> None:
        pass

    def logged(self, conn: Any) -> dict[str, str]:
        return {}

    def ensure_sequences(self, conn: Any) -> None:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SEQUENCES_TABLE} "
                     f"(name TEXT PRIMARY KEY, value BIGINT NOT NULL)")

    def next_value(self, conn: Any, name: str, table: str | None, key: str) -> int:
        """The next number of sequence ``name``, above every key of ``table``
        (an integer column; ``None``: just the next number)."""
        p = self.placeholder
        conn.execute(f"INSERT INTO {SEQUENCES_TABLE} (name, value) VALUES ({p}, 0) "
                     f"ON CONFLICT (name) DO NOTHING", (name,))
        if table is None:
            row = conn.execute(f"UPDATE {SEQUENCES_TABLE} SET value = value + 1 "
                               f"WHERE name = {p} RETURNING value", (name,)).fetchone()
            return int(row[0])
        row = conn.execute(
            f"UPDATE {SEQUENCES_TABLE} SET value = {self.greatest}(value + 1, "
            f"(SELECT COALESCE(MAX({quote(key)}), 0) + 1 FROM {quote(table)})) "
            f"WHERE name = {p} RETURNING value", (name,)).fetchone()
        return int(row[0])

    def is_locked(self, exc: BaseException) -> bool:
        """Whether ``exc`` says another transaction holds what we need."""
        return False


class SQLiteDialect(Dialect):
    """The standard library's sqlite3: ``sqlite:///relative/path`` or
    ``sqlite:////absolute/path``."""

    name = "sqlite"
    placeholder = "?"
    two_phase = False
    greatest = "MAX"
    #: Seconds a statement waits for another connection's write lock.
    timeout = 30.0

    def __init__(self, url: str) -> None:
        super().__init__(url)
        if not url.lower().startswith("sqlite:///"):
            raise DatabaseUnavailableError("sqlite", url, "an SQLite URL is sqlite:///path")
        self.path = unquote(url[len("sqlite:///"):].split("?", 1)[0])
        if not self.path:
            raise DatabaseUnavailableError("sqlite", url, "the URL names no file")

    def connect(self) -> Any:
        import sqlite3

        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise DatabaseUnavailableError("sqlite", self.url, str(exc)) from exc
        return conn

    def columns(self, conn: Any, table: str) -> list[tuple[str, str]]:
        rows = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
        return [(r[1], r[2] or "") for r in rows]

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def is_locked(self, exc: BaseException) -> bool:
        import sqlite3

        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class PostgreSQLDialect(Dialect):
    """PostgreSQL through psycopg 3 (``pip install pclasses[postgresql]``)."""

    name = "postgresql"
    placeholder = "%s"
    two_phase = True

    def connect(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:
            raise DatabaseUnavailableError(
                "postgresql", _safe(self.url),
                "the PostgreSQL driver is missing: pip install 'pclasses[postgresql]'") from exc
        try:
            return psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise DatabaseUnavailableError("postgresql", _safe(self.url),
                                           str(exc).strip()) from exc

    def columns(self, conn: Any, table: str) -> list[tuple[str, str]]:
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (quote(table),)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def log_prepared(self, admin: Any, conn: Any, gid: str, targets: str) -> None:
        """Record ``gid``'s ZODB ``targets`` (JSON) before it is prepared, and
        delete the record inside the transaction itself (``conn``)."""
        if not self._log_ready:
            admin.execute(f"CREATE TABLE IF NOT EXISTS {PREPARED_TABLE} (gid TEXT PRIMARY "
                          f"KEY, targets TEXT NOT NULL, created TIMESTAMPTZ NOT NULL "
                          f"DEFAULT now())")
            self._log_ready = True
        admin.execute(f"INSERT INTO {PREPARED_TABLE} (gid, targets) VALUES (%s, %s)",
                      (gid, targets))
        conn.execute(f"DELETE FROM {PREPARED_TABLE} WHERE gid = %s", (gid,))

    def forget_prepared(self, admin: Any, gid: str) -> None:
        admin.execute(f"DELETE FROM {PREPARED_TABLE} WHERE gid = %s", (gid,))

    def logged(self, conn: Any) -> dict[str, str]:
        """``gid -> targets`` of the prepared log (empty when there is none)."""
        if conn.execute("SELECT to_regclass(%s)", (PREPARED_TABLE,)).fetchone()[0] is None:
            return {}
        rows = conn.execute(f"SELECT gid, targets FROM {PREPARED_TABLE}").fetchall()
        return {r[0]: r[1] for r in rows}

    def prepare(self, conn: Any, gid: str) -> None:
        conn.execute(f"PREPARE TRANSACTION '{_literal(gid)}'")

    def commit_prepared(self, conn: Any, gid: str) -> None:
        conn.execute(f"COMMIT PREPARED '{_literal(gid)}'")

    def rollback_prepared(self, conn: Any, gid: str) -> None:
        conn.execute(f"ROLLBACK PREPARED '{_literal(gid)}'")

    def prepared(self, conn: Any) -> list[tuple[str, Any]]:
        rows = conn.execute("SELECT gid, prepared FROM pg_prepared_xacts "
                            "WHERE database = current_database() ORDER BY prepared").fetchall()
        return [(r[0], r[1]) for r in rows]

    def is_locked(self, exc: BaseException) -> bool:
        code = getattr(getattr(exc, "diag", None), "sqlstate", None)
        return code in ("40001", "40P01", "55P03")  # serialization, deadlock, lock


def _literal(gid: str) -> str:
    if not is_our_gid(gid) and not re.fullmatch(r"[\w:.-]{1,200}", gid):
        raise ValueError(f"{gid!r} is not a transaction id this package handles")
    return gid.replace("'", "''")


def _safe(url: str) -> str:
    """``url`` without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def dialect_for(url: str) -> Dialect:
    """The dialect of a store URL (``sqlite:`` or ``postgresql:``/``postgres:``)."""
    scheme = url.split(":", 1)[0].lower() if isinstance(url, str) and ":" in url else ""
    if scheme == "sqlite":
        return SQLiteDialect(url)
    if scheme in ("postgresql", "postgres"):
        return PostgreSQLDialect(url)
    raise DatabaseUnavailableError(str(scheme or "?"), str(url),
                                   "an SQL store URL starts with sqlite: or postgresql:")
