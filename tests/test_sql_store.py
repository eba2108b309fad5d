"""SQL stores on SQLite (issue 15): rows as persistent objects in the ZODB
transaction, on real SQLite files and real FileStorages."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
import transaction
from ZODB.POSException import ConflictError, InvalidObjectReference

import pclasses

sys.path.insert(0, str(Path(__file__).parent))
from sql_models import Doc, Item, Person  # noqa: E402
from sql_util import ITEMS, Vetoer, make_tree, sqlite_file, sqlite_rows  # noqa: E402

SEED = "INSERT INTO items (id, title, qty) VALUES (1, 'apple', 3), (2, 'pear', 5)"


@pytest.fixture
def tree(tmp_path):
    url = sqlite_file(tmp_path / "shop.db", ITEMS, SEED)
    db, tm, conn, store = make_tree(tmp_path, url)
    yield db, tm, conn, store, url
    if conn.opened is not None:
        tm.abort()
        conn.close()
        pclasses.tree_of(db).close()


def test_a_row_and_a_zodb_object_commit_together(tmp_path):
    """A row changed and a ZODB object changed in one transaction are both
    committed: plain sqlite3 and a reopened FileStorage see them."""
    url = sqlite_file(tmp_path / "shop.db", ITEMS, SEED)
    db, tm, conn, store = make_tree(tmp_path, url)
    row = store.get("item", 1)
    row.qty = 7
    doc = conn.root()["doc"] = Doc("d")
    conn.add(doc)
    doc.item = row
    tm.commit()
    assert sqlite_rows(url, "SELECT qty FROM items WHERE id = 1") == [(7,)]
    conn.close()
    pclasses.tree_of(db).close()

    db2 = pclasses.open(tmp_path / "root.fs", tree=True)
    try:
        tm2 = transaction.TransactionManager()
        conn2 = db2.open(tm2)
        doc2 = conn2.root()["doc"]
        assert pclasses.tree_of(db2).opened == {"unnamed"}  # loading doc opened nothing
        assert (doc2.item.title, doc2.item.qty) == ("apple", 7)
        assert pclasses.tree_of(db2).opened == {"unnamed", "sql"}
        tm2.abort()
        conn2.close()
    finally:
        pclasses.tree_of(db2).close()


def test_get_is_a_ghost_the_same_object_and_rereads_changes(tree):
    """``get`` returns a ghost (loaded on first use), the same object for the
    same key within a transaction, re-read in the next transaction after
    another writer changed the row."""
    db, tm, conn, store, url = tree
    row = store.get("item", 2)
    assert row._p_changed is None
    assert row.title == "pear"
    assert store.get("item", 2) is row
    raw = sqlite3.connect(url[len("sqlite:///"):])
    raw.execute("UPDATE items SET title = 'quince' WHERE id = 2")
    raw.commit()
    raw.close()
    tm.commit()  # next transaction
    assert store.get("item", 2) is row
    assert row.title == "quince"


def test_a_missing_key_is_a_key_error(tree):
    """``get`` of a key the table does not hold raises an error that is a KeyError."""
    _db, _tm, _conn, store, _url = tree
    with pytest.raises(KeyError) as info:
        store.get("item", 99)
    assert isinstance(info.value, pclasses.PClassesError)


def test_new_rows_get_keys_from_the_sequence_never_reusing_table_keys(tree):
    """``new`` returns the key it inserted; the int kind's sequence skips every
    key already in the table, and an aborted insert leaves no row."""
    _db, tm, _conn, store, url = tree
    raw = sqlite3.connect(url[len("sqlite:///"):])
    raw.execute("INSERT INTO items (id, title, qty) VALUES (40, 'fig', 1)")
    raw.commit()
    raw.close()
    key = store.new("item", Item("plum", 2))
    assert key == 41
    tm.commit()
    assert sqlite_rows(url, "SELECT title, qty FROM items WHERE id = 41") == [("plum", 2)]
    store.new("item", Item("kiwi", 1), key=100)
    tm.abort()
    assert sqlite_rows(url, "SELECT * FROM items WHERE id = 100") == []
    assert store.new("item", Item("lime", 1)) == 42
    tm.commit()


def test_delete_and_query(tree):
    """``delete`` removes the row at commit; ``query`` returns the matching
    rows as the same persistent objects ``get`` gives."""
    _db, tm, _conn, store, url = tree
    found = store.query("item", "qty > ?", (4,))
    assert [r.title for r in found] == ["pear"]
    assert found[0] is store.get("item", 2)
    store.delete(store.get("item", 1))
    tm.commit()
    assert sqlite_rows(url, "SELECT id FROM items") == [(2,)]
    with pytest.raises(KeyError):
        store.get("item", 1)


def test_a_veto_at_vote_changes_neither_side(tree):
    """A third resource refusing at vote: neither the row nor the ZODB object changes."""
    db, tm, conn, store, url = tree
    row = store.get("item", 1)
    row.qty = 99
    conn.root()["x"] = 1
    tm.get().join(Vetoer())
    with pytest.raises(RuntimeError, match="vetoed"):
        tm.commit()
    tm.abort()
    assert sqlite_rows(url, "SELECT qty FROM items WHERE id = 1") == [(3,)]
    assert "x" not in conn.root()
    assert row.qty == 3  # the object was invalidated and re-read


def test_sqlite_sorts_after_every_printable_key(tree):
    """The SQLite jar's sortKey sorts after any printable key, so it votes last."""
    _db, _tm, _conn, store, _url = tree
    key = store.connection().sortKey()
    highest = max(c for c in map(chr, range(0x110000)) if c.isprintable())
    for other in ("~~~~", highest * 40, "z" * 50, "𝔷", "/var/db/Data.fs:140"):
        assert other.isprintable() and key > other


def test_two_transaction_managers_conflict_and_attempts_retry(tree):
    """Two transaction managers change one row: the second commit raises
    ZODB's ConflictError; ``attempts()`` retries and both increments land."""
    db, tm1, conn1, store1, url = tree
    tm2 = transaction.TransactionManager()
    conn2 = db.open(tm2)
    store2 = conn2.root()["pclasses.databases"]["sql"]
    r1 = store1.get("item", 1)
    r2 = store2.get("item", 1)
    assert r1 is not r2
    r1.qty += 1
    r2.qty += 10
    tm1.commit()
    with pytest.raises(ConflictError):
        tm2.commit()
    tm2.abort()
    runs = 0
    for attempt in tm2.attempts():
        with attempt:
            runs += 1
            store2.get("item", 1).qty += 10
    assert runs == 1
    assert sqlite_rows(url, "SELECT qty FROM items WHERE id = 1") == [(14,)]
    conn2.close()


def test_conflict_retried_by_attempts_after_a_concurrent_commit(tree):
    """Inside ``attempts()``, a conflicting commit is retried with fresh state."""
    db, tm1, _conn1, store1, url = tree
    tm2 = transaction.TransactionManager()
    conn2 = db.open(tm2)
    store2 = conn2.root()["pclasses.databases"]["sql"]
    runs = 0
    for attempt in tm2.attempts():
        with attempt:
            runs += 1
            row = store2.get("item", 2)
            row.qty += 1
            if runs == 1:  # another writer gets in first
                store1.get("item", 2).qty += 100
                tm1.commit()
    assert runs == 2
    assert sqlite_rows(url, "SELECT qty FROM items WHERE id = 2") == [(106,)]
    conn2.close()


def test_savepoint_rollback_with_a_store_joined(tree):
    """``transaction.savepoint()`` works with a store joined: rolling back
    undoes row changes, inserts and deletes made after it, keeps those before."""
    _db, tm, conn, store, url = tree
    a = store.get("item", 1)
    a.qty = 10
    sp = tm.savepoint()
    a.qty = 20
    store.get("item", 2).title = "changed"
    store.new("item", Item("new", 1), key=50)
    store.delete(store.get("item", 2))
    conn.root()["z"] = 1
    sp.rollback()
    assert a.qty == 10
    assert store.get("item", 2).title == "pear"
    with pytest.raises(KeyError):
        store.get("item", 50)
    sp2 = tm.savepoint()
    a.qty = 30
    sp2.rollback()
    assert a.qty == 10
    tm.commit()
    assert sqlite_rows(url, "SELECT id, title, qty FROM items ORDER BY id") == [
        (1, "apple", 10), (2, "pear", 5)]


def test_assigning_a_row_directly_is_a_clear_error(tree):
    """Storing a row in a ZODB attribute directly raises the package's error,
    also ZODB's InvalidObjectReference, naming what to use instead."""
    _db, tm, conn, store, _url = tree
    conn.root()["bad"] = store.get("item", 1)
    with pytest.raises(InvalidObjectReference) as info:
        tm.commit()
    assert isinstance(info.value, pclasses.SQLReferenceError)
    assert "get_reference" in str(info.value)
    tm.abort()


def test_remote_reference_to_a_row_and_a_deleted_row_dangles(tree):
    """``get_reference`` to a row is a RemoteReference through the store; once
    the row is deleted the reference gives a Dangling placeholder."""
    _db, tm, conn, store, _url = tree
    doc = conn.root()["doc"] = Doc()
    conn.add(doc)
    ref = pclasses.get_reference(doc, store.get("item", 2))
    assert isinstance(ref, pclasses.RemoteReference)
    assert ref.via is store and ref.database_name == "sql"
    doc.ref = ref
    tm.commit()
    assert doc.ref().title == "pear"
    store.delete(store.get("item", 2))
    tm.commit()
    assert pclasses.is_dangling(doc.ref())
    with pytest.raises(pclasses.DanglingReferenceError):
        doc.ref(strict=True)


def test_map_is_idempotent_adds_the_version_column_and_refuses_changes(tree):
    """Mapping the same name the same way again does nothing; differently,
    a clear error; the table got the store's version column."""
    _db, _tm, _conn, store, url = tree
    store.map("item", "items", "id", Item)
    with pytest.raises(pclasses.StoreMappingError):
        store.map("item", "items", "id", Person)
    cols = [r[1] for r in sqlite_rows(url, "PRAGMA table_info(items)")]
    assert "pclasses_version" in cols
    with pytest.raises(pclasses.StoreMappingError):
        store.map("nope", "no_such_table", "id", Item)


def test_attribute_changes_mark_the_row_changed(tree):
    """Setting an attribute of a row marks it changed, like any persistent object."""
    _db, tm, _conn, store, url = tree
    row = store.get("item", 1)
    row.title = "green apple"
    assert row._p_changed is True
    tm.commit()
    assert not row._p_changed  # saved (a ghost again: re-read when next used)
    assert sqlite_rows(url, "SELECT title FROM items WHERE id = 1") == [("green apple",)]


def test_a_store_stored_directly_in_the_parent_database(tmp_path):
    """An SQLStore stored as any persistent object (not through tree.add) works
    the same, and remote references go through it."""
    url = sqlite_file(tmp_path / "s.db", ITEMS, SEED)
    db = pclasses.open(tmp_path / "root.fs", tree=True)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        store = conn.root()["store"] = pclasses.SQLStore("direct", url)
        conn.add(store)
        store.map("item", "items", "id", Item)
        doc = conn.root()["doc"] = Doc()
        conn.add(doc)
        doc.item = store.get("item", 1)
        tm.commit()
        assert doc.item.title == "apple"
        tm.abort()
        conn.close()
    finally:
        pclasses.tree_of(db).close()


def test_threads_incrementing_one_row_lose_nothing(tree):
    """Four threads, each with its own connection and transaction manager,
    increment one row through ``attempts()``: conflicts are retried and no
    increment is lost."""
    import threading

    db, _tm, _conn, _store, url = tree
    errors: list[BaseException] = []

    def work() -> None:
        try:
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            store = conn.root()["pclasses.databases"]["sql"]
            for _ in range(10):
                for attempt in tm.attempts(50):
                    with attempt:
                        store.get("item", 1).qty += 1
            conn.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sqlite_rows(url, "SELECT qty FROM items WHERE id = 1") == [(3 + 40,)]


def test_a_store_outside_any_database_uses_the_thread_transaction(tmp_path):
    """An SQLStore not stored anywhere works on the thread's transaction manager."""
    url = sqlite_file(tmp_path / "solo.db", ITEMS, SEED)
    store = pclasses.SQLStore("solo", url)
    store.map("item", "items", "id", Item)
    try:
        store.get("item", 1).qty = 30
        key = store.new("item", Item("quince", 4))
        transaction.commit()
        assert sqlite_rows(url, "SELECT id, qty FROM items ORDER BY id") == [
            (1, 30), (2, 5), (key, 4)]
    finally:
        transaction.abort()
        store.database().close()


def test_sql_recover_on_sqlite_and_on_a_missing_target(tree, tmp_path):
    """``sql-recover`` on an SQLite store finds nothing prepared (SQLite commits
    at vote) and exits 0; a target that cannot be opened is one line on
    stderr and exit status 1, never a traceback."""
    import json
    import subprocess

    _db, _tm, _conn, _store, url = tree
    env = {"PYTHONPATH": str(Path(pclasses.__file__).parent.parent), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "pclasses.cli", "sql-recover", url, "--json"],
                        capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["prepared"] == []
    bad = subprocess.run([sys.executable, "-m", "pclasses.cli", "sql-recover",
                          str(tmp_path / "missing.fs")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_refs_check_and_gc_of_a_tree_holding_a_store(tree):
    """The tree's reference check and garbage collection run over a tree
    holding an SQL store and references to its rows: the store is not a ZODB
    database to walk, nothing dangles, the referring object is no garbage."""
    db, tm, conn, store, _url = tree
    doc = conn.root()["doc"] = Doc()
    conn.add(doc)
    doc.item = store.get("item", 1)
    tm.commit()
    report = pclasses.check_refs(db)
    assert report.ok and report.to_dict()["databases"] == ["unnamed"]
    garbage = pclasses.collect_garbage(db, days=0)
    assert doc._p_oid not in garbage.garbage.get("unnamed", [])


def test_the_report_of_a_tree_holding_a_store(tree, tmp_path):
    """``pclasses report`` of a tree holding an SQL store describes the ZODB
    databases (the store is no database to take a census of)."""
    import json
    import subprocess

    db, tm, conn, store, _url = tree
    doc = conn.root()["doc"] = Doc()
    conn.add(doc)
    doc.item = store.get("item", 1)
    tm.commit()
    conn.close()
    pclasses.tree_of(db).close()
    env = {"PYTHONPATH": str(Path(pclasses.__file__).parent.parent), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pclasses.cli", "report",
                           str(tmp_path / "root.fs"), "--json", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert "sql" not in json.dumps([d.get("name") for d in data.get("databases", [])])


def test_query_sees_the_transactions_own_changes(tree):
    """A query made after changes in the same transaction matches the changed,
    new and deleted rows as they now are."""
    _db, tm, _conn, store, url = tree
    store.get("item", 1).qty = 50
    store.new("item", Item("melon", 60), key=9)
    store.delete(store.get("item", 2))
    assert sorted(r.title for r in store.query("item", "qty >= ?", (5,))) == ["apple", "melon"]
    tm.abort()
    assert sqlite_rows(url, "SELECT id, qty FROM items ORDER BY id") == [(1, 3), (2, 5)]
    assert sorted(r.title for r in store.query("item", "qty >= ?", (5,))) == ["pear"]


def test_a_refused_mapping_leaves_the_table_as_it_was(tmp_path):
    """``map`` naming a column the table lacks fails before touching the
    table: no version column is added."""
    url = sqlite_file(tmp_path / "t.db", ITEMS)
    store = pclasses.SQLStore("t", url)
    try:
        with pytest.raises(pclasses.StoreMappingError):
            store.map("item", "items", "id", Item, columns=["title", "colour"])
        columns = [r[1] for r in sqlite_rows(url, "PRAGMA table_info(items)")]
        assert "pclasses_version" not in columns
        assert store.mappings == {}
    finally:
        store.database().close()


def test_a_read_only_store_refuses_changes(tmp_path):
    """A store added with ``read_only=True`` reads rows and refuses to change them."""
    from ZODB.POSException import ReadOnlyError

    url = sqlite_file(tmp_path / "ro.db", ITEMS, SEED)
    db = pclasses.open(tmp_path / "root.fs", tree=True)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        store = pclasses.tree_of(db).add(conn, "ro", url, read_only=True)
        store.map("item", "items", "id", Item)
        tm.commit()
        row = store.get("item", 1)
        assert row.title == "apple"
        with pytest.raises(ReadOnlyError):
            row.qty = 4
        with pytest.raises(ReadOnlyError):
            store.new("item", Item("x", 1))
        tm.abort()
        assert sqlite_rows(url, "SELECT qty FROM items WHERE id = 1") == [(3,)]
        conn.close()
    finally:
        pclasses.tree_of(db).close()


def test_new_with_a_key_the_table_holds_is_a_clear_error(tree):
    """``new`` with a key the table already holds raises ``DuplicateRowError``
    (a KeyError) at once, and the transaction can still commit the rest."""
    _db, tm, _conn, store, url = tree
    with pytest.raises(pclasses.DuplicateRowError):
        store.new("item", Item("again", 1), key=2)
    store.get("item", 1).qty = 11
    tm.commit()
    assert sqlite_rows(url, "SELECT id, title, qty FROM items ORDER BY id") == [
        (1, "apple", 11), (2, "pear", 5)]
