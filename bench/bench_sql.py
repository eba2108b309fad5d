"""SQL stores (issue 15): what rows as persistent objects cost.

* **Reading N rows**: ``store.query(name, "1=1")`` and reading two attributes
  of every row object, against the driver alone (plain ``sqlite3`` / psycopg:
  one SELECT, two fields of every tuple); and ``store.get`` of every key
  (one indexed SELECT each) against the driver's own SELECT by key.
  Reported as the overhead per row in microseconds and as the ratio.
* **A commit touching one row and one ZODB object** against a commit of the
  ZODB object alone (FileStorage), in one transaction manager.

Each measurement alternates the two sides (``--rounds`` pairs, each side
timed over ``--repeat`` operations) and reports medians.  PostgreSQL is
measured with ``--pg`` (a server started from the system's binaries with
``tests/pgserver.py``, or ``--pg-url URL``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import transaction  # noqa: E402
from persistent import Persistent  # noqa: E402

import pclasses  # noqa: E402


class BenchItem(Persistent):
    """A row of the benchmark table."""


class BenchNote(Persistent):
    """The ZODB object of the commit benchmark."""


def make_rows(conn: Any, n: int, placeholder: str) -> None:
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT, qty INTEGER)")
    rows = [(i, f"item {i}", i % 97) for i in range(1, n + 1)]
    sql = f"INSERT INTO items (id, title, qty) VALUES ({', '.join([placeholder] * 3)})"
    if hasattr(conn, "executemany"):
        conn.executemany(sql, rows)
    else:
        with conn.cursor() as cur:
            cur.executemany(sql, rows)


def paired(a: Any, b: Any, rounds: int) -> tuple[float, float]:
    """Medians of ``a()`` and ``b()`` timed alternately (a full garbage
    collection before each, so neither pays for the other's garbage)."""
    ta: list[float] = []
    tb: list[float] = []
    for r in range(rounds):
        for f, out in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            gc.collect()
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def measure(directory: Path, url: str, driver_connect: Any, n: int, rounds: int,
            gets: int, repeat: int, label: str) -> dict[str, Any]:
    db = pclasses.open(directory / f"{label}.fs", tree=True)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    store = pclasses.tree_of(db).add(conn, "sql", url)
    store.map("item", "items", "id", BenchItem)
    conn.root()["note"] = BenchNote()
    tm.commit()
    raw = driver_connect()
    ph = "?" if url.startswith("sqlite") else "%s"
    keys = list(range(1, n + 1))

    def ours_scan() -> None:
        tm.abort()  # a new transaction: every row is read again
        total = 0
        for row in store.query("item", "1=1"):
            total += len(row.title) + row.qty

    def driver_scan() -> None:
        total = 0
        for _id, title, qty in raw.execute("SELECT id, title, qty FROM items").fetchall():
            total += len(title) + qty

    def ours_get() -> None:
        tm.abort()
        total = 0
        for k in keys[:gets]:
            total += store.get("item", k).qty

    def driver_get() -> None:
        total = 0
        sql = f"SELECT title, qty FROM items WHERE id = {ph}"
        for k in keys[:gets]:
            total += raw.execute(sql, (k,)).fetchone()[1]

    note = conn.root()["note"]
    counter = [0]

    def both() -> None:
        for _ in range(repeat):
            counter[0] += 1
            note.n = counter[0]
            store.get("item", 1).qty = counter[0]
            tm.commit()

    def zodb_alone() -> None:
        for _ in range(repeat):
            counter[0] += 1
            note.n = counter[0]
            tm.commit()

    ours_scan()  # warm up (caches, the version column)
    s_ours, s_drv = paired(ours_scan, driver_scan, rounds)
    g_ours, g_drv = paired(ours_get, driver_get, rounds)
    c_both, c_zodb = paired(both, zodb_alone, rounds)
    tm.abort()
    conn.close()
    raw.close()
    pclasses.tree_of(db).close()
    return {
        "rows": n,
        "scan_us_per_row": {"store": s_ours / n * 1e6, "driver": s_drv / n * 1e6,
                            "overhead": (s_ours - s_drv) / n * 1e6, "ratio": s_ours / s_drv},
        "get_us_per_row": {"store": g_ours / gets * 1e6, "driver": g_drv / gets * 1e6,
                           "overhead": (g_ours - g_drv) / gets * 1e6,
                           "ratio": g_ours / g_drv},
        "commit_ms": {"row_and_zodb": c_both / repeat * 1e3, "zodb_alone": c_zodb / repeat * 1e3,
                      "ratio": c_both / c_zodb},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--gets", type=int, default=2000, help="gets per timed run")
    parser.add_argument("--repeat", type=int, default=100, help="commits per timed run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg", action="store_true",
                        help="also PostgreSQL, on a server started from the system's binaries")
    parser.add_argument("--pg-url", default=None, help="also PostgreSQL, on this database")
    parser.add_argument("--json", action="store_true", help="indented JSON (default: one line)")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = directory / "bench.db"
        c = sqlite3.connect(path)
        make_rows(c, args.rows, "?")
        c.commit()
        c.close()
        result["sqlite"] = measure(
            directory, f"sqlite:///{path}",
            lambda: sqlite3.connect(path, isolation_level=None), args.rows, args.rounds,
            min(args.gets, args.rows), args.repeat, "sqlite")
        server = None
        url = args.pg_url
        if args.pg and url is None:
            from pgserver import PostgresServer

            server = PostgresServer()
            url = server.url(server.createdb())
        if url is not None:
            import psycopg

            try:
                with psycopg.connect(url, autocommit=True) as pg:
                    make_rows(pg, args.rows, "%s")
                result["postgresql"] = measure(
                    directory, url, lambda: psycopg.connect(url, autocommit=True), args.rows,
                    args.rounds, min(args.gets, args.rows), args.repeat, "pg")
            finally:
                if server is not None:
                    server.stop()
    print(json.dumps(result, indent=2) if args.json else json.dumps(result))


if __name__ == "__main__":
    main()
