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


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_match_a_model(tmp_path, seed):
    """Whatever the sequence, committed rows equal the model's committed
    state, and rows read inside a transaction equal the model's current one."""
    rnd = random.Random(seed)
    url = sqlite_file(tmp_path / "m.db", ITEMS)
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
                found = {store.key(r): r.qty for r in store.query("item", "qty >= ?", (500,))}
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
        assert dict(sqlite_rows(url, "SELECT id, qty FROM items")) == committed
    finally:
        tm.abort()
        conn.close()
        pclasses.tree_of(db).close()
