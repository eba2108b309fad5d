"""Helpers of the SQL store tests: real SQLite files and PostgreSQL databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import transaction

import pclasses

ITEMS = "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT, qty INTEGER)"
PEOPLE = "CREATE TABLE people (uid TEXT PRIMARY KEY, name TEXT)"


def sqlite_file(path: Path, *statements: str) -> str:
    """An SQLite file at ``path`` after ``statements``; returns its store URL."""
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def sqlite_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """What a plain sqlite3 connection reads (committed data only)."""
    conn = sqlite3.connect(url[len("sqlite:///"):])
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


class Vetoer:
    """A third resource that refuses at vote (sorting wherever ``key`` says)."""

    def __init__(self, key: str = "~vetoer") -> None:
        self.key = key
        self.aborted = False

    def sortKey(self) -> str:
        return self.key

    def abort(self, txn: Any) -> None:
        self.aborted = True

    tpc_abort = abort

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        raise RuntimeError("vetoed at vote")

    def tpc_finish(self, txn: Any) -> None:  # pragma: no cover - never reached
        raise AssertionError("finished after a veto")


def make_tree(tmp_path: Path, url: str, **map_kw: Any) -> tuple[Any, Any, Any, Any]:
    """A root FileStorage with an SQL store ``sql`` mapping ``item`` -> items:
    ``(db, tm, conn, store)``."""
    from sql_models import Item

    db = pclasses.open(tmp_path / "root.fs", tree=True)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    store = pclasses.tree_of(db).add(conn, "sql", url)
    store.map("item", "items", "id", Item, **map_kw)
    tm.commit()
    return db, tm, conn, store
