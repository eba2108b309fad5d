"""SQL stores against a model (issue 15): random sequences of changes,
inserts, deletes, savepoints, rollbacks, commits and aborts on a real SQLite
store leave the table exactly as a plain dictionary model says."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

import pclasses

sys.path.insert(0, str(Path(__file__).parent))
from sql_models import Item  # noqa: E402
from sql_util import ITEMS, make_tree, sqlite_file, sqlite_rows  # noqa: E402


def backend_url(request, tmp_path, backend: str) -> str:
    """An empty ``items`` table in SQLite or in a fresh PostgreSQL database."""
    if backend == "sqlite":
        return sqlite_file(tmp_path / "m.db", ITEMS)
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver")
    server = request.getfixturevalue("pg_server")
    url = server.url(server.createdb())
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(ITEMS)
    return str(url)


def rows_of(url: str) -> dict[int, int]:
    if url.startswith("sqlite"):
        return dict(sqlite_rows(url, "SELECT id, qty FROM items"))
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        return {r[0]: r[1] for r in c.execute("SELECT id, qty FROM items").fetchall()}


@pytest.mark.parametrize("backend, seed", [("sqlite", s) for s in range(12)]
                         + [("postgresql", s) for s in range(4)])
def test_random_operations_match_a_model(request, tmp_path, backend, seed):
    """Whatever the sequence, committed rows equal the model's committed
    state, and rows read inside a transaction equal the model's current one."""
    rnd = random.Random(seed)
    url = backend_url(request, tmp_path, backend)
    db, tm, conn, store = make_tree(tmp_path, url)
    committed: dict[int, int] = {}
    current: dict[int, int] = {}
    savepoints: list[tuple[object, dict[int, int]]] = []
    try:
        for _step in range(150):
            op = rnd.choice(["set", "set", "new", "renew", "delete", "savepoint",
                             "rollback", "commit", "abort", "check", "query"])
            if op == "set" and current:
                key = rnd.choice(sorted(current))
                value = rnd.randrange(1000)
                store.get("item", key).qty = value
                current[key] = value
            elif op == "new":
                value = rnd.randrange(1000)
                key = store.new("item", Item(f"t{value}", value))
                assert key not in current
                current[key] = value
            elif op == "renew":  # a key deleted (or never used) given again
                free = sorted(set(range(1, 12)) - set(current))
                if free:
                    key = rnd.choice(free)
                    value = rnd.randrange(1000)
                    assert store.new("item", Item("again", value), key=key) == key
                    current[key] = value
            elif op == "query":
                where = "qty >= ?" if backend == "sqlite" else "qty >= %s"
                found = {store.key(r): r.qty for r in store.query("item", where, (500,))}
                assert found == {k: v for k, v in current.items() if v >= 500}
            elif op == "delete" and current:
                key = rnd.choice(sorted(current))
                store.delete(store.get("item", key))
                del current[key]
            elif op == "savepoint":
                savepoints.append((tm.savepoint(), dict(current)))
            elif op == "rollback" and savepoints:
                i = rnd.randrange(len(savepoints))
                sp, state = savepoints[i]
                sp.rollback()
                current = dict(state)
                del savepoints[i + 1:]  # later savepoints are no longer valid
            elif op == "commit":
                tm.commit()
                committed = dict(current)
                savepoints = []
            elif op == "abort":
                tm.abort()
                current = dict(committed)
                savepoints = []
            elif op == "check":
                for key, value in current.items():
                    assert store.get("item", key).qty == value
                for key in set(committed) - set(current):
                    with pytest.raises(KeyError):
                        store.get("item", key)
        tm.commit()
        committed = dict(current)
        assert rows_of(url) == committed
    finally:
        tm.abort()
        conn.close()
        pclasses.tree_of(db).close()


@pytest.mark.parametrize("seed", range(8))
def test_a_concurrent_writer_conflicts_exactly_when_it_should(tmp_path, seed):
    """Another transaction manager updates committed rows between our steps:
    our commit raises ConflictError exactly when we changed or deleted a row
    the other committed after we read it, and never loses the other's work."""
    import transaction
    from ZODB.POSException import ConflictError

    rnd = random.Random(1000 + seed)
    url = sqlite_file(tmp_path / "c.db", ITEMS,
                      "INSERT INTO items (id, title, qty) VALUES " +
                      ", ".join(f"({i}, 't', {i})" for i in range(1, 9)))
    db, tm, conn, store = make_tree(tmp_path, url)
    tm2 = transaction.TransactionManager()
    conn2 = db.open(tm2)
    store2 = conn2.root()["pclasses.databases"]["sql"]
    committed = {i: i for i in range(1, 9)}
    current = dict(committed)
    loaded: dict[int, int] = {}   # key -> step of our first read in this transaction
    other: dict[int, int] = {}    # key -> step of the other's last commit of it
    touched: set[int] = set()
    try:
        for step in range(120):
            op = rnd.choice(["set", "set", "delete", "other", "other", "commit", "abort"])
            keys = sorted(current)
            if op == "set" and keys:
                key = rnd.choice(keys)
                loaded.setdefault(key, step)
                value = rnd.randrange(1000)
                store.get("item", key).qty = value
                current[key] = value
                touched.add(key)
            elif op == "delete" and keys:
                key = rnd.choice(keys)
                loaded.setdefault(key, step)
                store.delete(store.get("item", key))
                del current[key]
                touched.add(key)
            elif op == "other":
                alive = sorted(committed)
                if alive:
                    key = rnd.choice(alive)
                    value = rnd.randrange(1000)
                    store2.get("item", key).qty = value
                    tm2.commit()
                    committed[key] = value
                    other[key] = step
                    if key not in touched:
                        current[key] = value  # we did not change it: the new value
            elif op in ("commit", "abort"):
                conflict = any(k in other and other[k] > loaded.get(k, step + 1)
                               for k in touched)
                if op == "commit" and conflict:
                    with pytest.raises(ConflictError):
                        tm.commit()
                    tm.abort()
                    current = dict(committed)
                elif op == "commit":
                    tm.commit()
                    committed = dict(current)
                else:
                    tm.abort()
                    current = dict(committed)
                loaded, touched = {}, set()
        tm.abort()
        assert dict(sqlite_rows(url, "SELECT id, qty FROM items")) == committed
    finally:
        tm.abort()
        tm2.abort()
        conn2.close()
        conn.close()
        pclasses.tree_of(db).close()
