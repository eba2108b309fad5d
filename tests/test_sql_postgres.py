"""SQL stores on a real PostgreSQL server (issue 15): two-phase commit with
prepared transactions, conflicts, savepoints, and recovery after a crash
between prepare and commit (``pclasses sql-recover``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import transaction
from ZODB.POSException import ConflictError

import pclasses

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install "
                              "'pclasses[postgresql]'")

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from sql_models import Doc, Item  # noqa: E402
from sql_util import Vetoer  # noqa: E402

ITEMS = ("CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT, qty INTEGER);"
         "INSERT INTO items (id, title, qty) VALUES (1, 'apple', 3), (2, 'pear', 5)")


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def prepared(url: str) -> list[str]:
    return [r[0] for r in rows(url, "SELECT gid FROM pg_prepared_xacts "
                                    "WHERE database = current_database()")]


@pytest.fixture
def pg_url(pg_server):
    name = pg_server.createdb()
    url = pg_server.url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ITEMS)
    return url


@pytest.fixture
def tree(tmp_path, pg_url):
    db = pclasses.open(tmp_path / "root.fs", tree=True)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    store = pclasses.tree_of(db).add(conn, "sql", pg_url)
    store.map("item", "items", "id", Item)
    tm.commit()
    yield db, tm, conn, store, pg_url
    tm.abort()
    conn.close()
    pclasses.tree_of(db).close()


def test_a_row_and_a_zodb_object_commit_together(tree):
    """A row and a ZODB object changed together commit together, through a
    prepared transaction that is committed at finish (none is left)."""
    _db, tm, conn, store, url = tree
    row = store.get("item", 1)
    row.qty = 8
    doc = conn.root()["doc"] = Doc("d")
    conn.add(doc)
    doc.item = row
    key = store.new("item", Item("plum", 1))
    tm.commit()
    assert key == 3
    assert rows(url, "SELECT id, qty FROM items ORDER BY id") == [(1, 8), (2, 5), (3, 1)]
    assert prepared(url) == []
    assert doc.item.qty == 8


def test_a_veto_at_vote_changes_neither_side(tree):
    """A third resource refusing at vote: the prepared (or open) PostgreSQL
    transaction is rolled back and the ZODB object is unchanged."""
    for key in ("a-first", "zz-last"):  # before and after the store's vote
        _db, tm, conn, store, url = tree
        store.get("item", 1).qty = 99
        conn.root()["x"] = 1
        tm.get().join(Vetoer(key))
        with pytest.raises(RuntimeError, match="vetoed"):
            tm.commit()
        tm.abort()
        assert rows(url, "SELECT qty FROM items WHERE id = 1") == [(3,)]
        assert "x" not in conn.root()
        assert prepared(url) == []


def test_two_transaction_managers_conflict_and_attempts_retry(tree):
    """The second of two transaction managers changing one row gets ZODB's
    ConflictError; ``attempts()`` retries it with fresh state."""
    db, tm1, _conn1, store1, url = tree
    tm2 = transaction.TransactionManager()
    conn2 = db.open(tm2)
    store2 = conn2.root()["pclasses.databases"]["sql"]
    runs = 0
    for attempt in tm2.attempts():
        with attempt:
            runs += 1
            store2.get("item", 2).qty += 1
            if runs == 1:
                store1.get("item", 2).qty += 100
                tm1.commit()
    assert runs == 2
    assert rows(url, "SELECT qty FROM items WHERE id = 2") == [(106,)]
    r1, r2 = store1.get("item", 1), store2.get("item", 1)
    r1.title, r2.title = "one", "two"
    tm1.commit()
    with pytest.raises(ConflictError):
        tm2.commit()
    tm2.abort()
    conn2.close()
    assert prepared(url) == []


def test_savepoints_are_sql_savepoints(tree):
    """A savepoint rollback with a PostgreSQL store joined undoes the rows
    changed, inserted and deleted after it and keeps the ones before."""
    _db, tm, _conn, store, url = tree
    a = store.get("item", 1)
    a.qty = 10
    sp = tm.savepoint()
    a.qty = 20
    store.new("item", Item("fig", 1), key=9)
    store.delete(store.get("item", 2))
    tm.savepoint()  # written to PostgreSQL inside the transaction
    sp.rollback()
    assert a.qty == 10
    assert store.get("item", 2).title == "pear"
    with pytest.raises(KeyError):
        store.get("item", 9)
    tm.commit()
    assert rows(url, "SELECT id, qty FROM items ORDER BY id") == [(1, 10), (2, 5)]


CRASHER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import transaction, pclasses
    from sql_models import Item

    class Crash:
        def __init__(self, phase, key):
            self.phase, self.key = phase, key
        def sortKey(self):
            return self.key
        def abort(self, txn):
            pass
        tpc_abort = abort
        def tpc_begin(self, txn):
            pass
        def commit(self, txn):
            pass
        def tpc_vote(self, txn):
            if self.phase == "vote":
                os._exit(17)
        def tpc_finish(self, txn):
            if self.phase == "finish":
                os._exit(17)

    db = pclasses.open({root!r}, tree=True)
    conn = db.open()
    store = conn.root()["pclasses.databases"]["sql"]
    store.get("item", 1).qty = {qty}
    conn.root()["marker"] = {qty}
    transaction.get().join(Crash({phase!r}, {key!r}))
    transaction.commit()
    os._exit(0)
""")


def crash(tmp_path: Path, phase: str, key: str, qty: int) -> None:
    script = tmp_path / f"crash_{phase}.py"
    script.write_text(CRASHER.format(tests=str(TESTS), root=str(tmp_path / "root.fs"),
                                     qty=qty, phase=phase, key=key))
    env_path = str(Path(pclasses.__file__).parent.parent)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 17, result.stderr


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pclasses.cli", *args], capture_output=True,
                          text=True, timeout=120,
                          env={"PYTHONPATH": str(Path(pclasses.__file__).parent.parent),
                               "PATH": "/usr/bin:/bin"})


def test_a_crash_between_prepare_and_commit_is_recovered(tmp_path, pg_url):
    """A process dies after PostgreSQL prepared: once after the ZODB side
    finished (recovery commits the row), once before (recovery rolls it
    back).  ``sql-recover`` lists only our prepared transactions and never
    touches another one."""
    url = pg_url
    db = pclasses.open(tmp_path / "root.fs", tree=True)
    conn = db.open()
    pclasses.tree_of(db).add(conn, "sql", url).map("item", "items", "id", Item)
    transaction.commit()
    conn.close()
    pclasses.tree_of(db).close()
    # a prepared transaction that is not ours
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("BEGIN")
        other.execute("UPDATE items SET title = 'theirs' WHERE id = 2")
        other.execute("PREPARE TRANSACTION 'someone-else'")

    crash(tmp_path, "finish", "o-between", 41)  # ZODB finished, PostgreSQL prepared
    ours = [g for g in prepared(url) if g.startswith("pclasses:")]
    assert len(ours) == 1

    listed = cli("sql-recover", url, "--json")
    assert listed.returncode == 3, listed.stderr
    doc = json.loads(listed.stdout)
    assert [t["gid"] for t in doc["prepared"]] == ours
    assert doc["prepared"][0]["zodb"] == "finished"
    assert doc["prepared"][0]["action"] is None

    done = cli("sql-recover", str(tmp_path / "root.fs"), "--resolve", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prepared"][0]["action"] == "committed"
    assert rows(url, "SELECT qty FROM items WHERE id = 1") == [(41,)]
    assert prepared(url) == ["someone-else"]

    # after PostgreSQL's vote (its key sorts after every printable key): prepared,
    # ZODB never finished
    crash(tmp_path, "vote", "\U0010ffff" * 3 + "q-after", 77)
    done = cli("sql-recover", url, "--resolve", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prepared"][0]["action"] == "rolled-back"
    assert rows(url, "SELECT qty FROM items WHERE id = 1") == [(41,)]
    assert prepared(url) == ["someone-else"]
    db2 = pclasses.open(tmp_path / "root.fs")
    try:
        c = db2.open()
        assert c.root()["marker"] == 41
        c.close()
    finally:
        db2.close()
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("ROLLBACK PREPARED 'someone-else'")


def test_sql_recover_is_in_the_help():
    """``pclasses --help`` lists the sql-recover command."""
    result = cli("--help")
    assert "sql-recover" in result.stdout


def test_uuid_uid_and_int_kinds_on_postgresql(tmp_path, pg_url):
    """Keys of PostgreSQL's uuid, text and integer columns round-trip (kinds
    inferred from the column types), and rows can be queried with %s."""
    import uuid

    from sql_models import Person

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE u (id uuid PRIMARY KEY, name text);"
                  "CREATE TABLE t (uid varchar(40) PRIMARY KEY, name text)")
    db = pclasses.open(tmp_path / "root.fs", tree=True)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        store = pclasses.tree_of(db).add(conn, "pg", pg_url)
        store.map("byuuid", "u", "id", Person)
        store.map("bytext", "t", "uid", Person)
        k1 = store.new("byuuid", Person("a"))
        k2 = store.new("bytext", Person("b"))
        tm.commit()
        assert isinstance(k1, uuid.UUID) and isinstance(k2, str)
        assert store.get("byuuid", k1).name == "a"
        assert store.get("bytext", k2).name == "b"
        assert [p.name for p in store.query("byuuid", "name = %s", ("a",))] == ["a"]
        assert store.query("byuuid", "name = %s", ("a",))[0] is store.get("byuuid", k1)
        tm.abort()
        conn.close()
    finally:
        pclasses.tree_of(db).close()


def test_threads_incrementing_one_row_lose_nothing(tree):
    """Four threads with their own connections increment one PostgreSQL row
    through ``attempts()``: a writer blocked by a prepared transaction sees
    the new version, conflicts, retries; no increment is lost, nothing is
    left prepared."""
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
    assert rows(url, "SELECT qty FROM items WHERE id = 1") == [(43,)]
    assert prepared(url) == []


def test_sql_recover_opens_only_what_stores_log(tmp_path, pg_url):
    """The prepared log is data: a logged target that is a ZConfig file (whose
    ``%import`` would run code) is never opened; its transaction is reported
    with an unknown ZODB side and left prepared, even with --resolve."""
    pkg = tmp_path / "evil_h25"
    pkg.mkdir()
    marker = tmp_path / "MARKER"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    conf = tmp_path / "evil.conf"
    conf.write_text("%import evil_h25\n<filestorage>\n  path x.fs\n</filestorage>\n")
    gid = "pclasses:000000000001:" + "ab" * 16
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE pclasses_prepared (gid TEXT PRIMARY KEY, targets TEXT NOT "
                  "NULL, created TIMESTAMPTZ NOT NULL DEFAULT now())")
        c.execute("INSERT INTO pclasses_prepared (gid, targets) VALUES (%s, %s)",
                  (gid, json.dumps([str(conf)])))
        c.execute("BEGIN")
        c.execute("UPDATE items SET qty = 0")
        c.execute(f"PREPARE TRANSACTION '{gid}'")
    env = {"PYTHONPATH": f"{Path(pclasses.__file__).parent.parent}:{tmp_path}",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "pclasses.cli", "sql-recover", pg_url,
                           "--resolve", "--json"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 3, done.stderr
    item = json.loads(done.stdout)["prepared"][0]
    assert (item["gid"], item["zodb"], item["action"]) == (gid, "unknown", None)
    assert not marker.exists()
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f"ROLLBACK PREPARED '{gid}'")


def test_recovery_with_the_root_database_on_zeo(tmp_path, pg_url, zeo_server):
    """The same recovery when the ZODB side is a real ZEO server: the prepared
    log names the ZEO storage and ``sql-recover`` reads its transactions."""
    url = pg_url
    root = zeo_server.fresh_uri()
    db = pclasses.open(root, tree=True)
    conn = db.open()
    pclasses.tree_of(db).add(conn, "sql", url).map("item", "items", "id", Item)
    transaction.commit()
    conn.close()
    pclasses.tree_of(db).close()

    script = tmp_path / "crash_zeo.py"
    script.write_text(CRASHER.format(tests=str(TESTS), root=root, qty=55, phase="finish",
                                     key="zz-between"))
    env = {"PYTHONPATH": str(Path(pclasses.__file__).parent.parent), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 17, result.stderr
    assert len(prepared(url)) == 1
    done = cli("sql-recover", root, "--resolve", "--json")
    assert done.returncode == 0, done.stderr
    item = json.loads(done.stdout)["prepared"][0]
    assert (item["zodb"], item["action"]) == ("finished", "committed")
    assert item["databases"][0].startswith("zeo://")
    assert rows(url, "SELECT qty FROM items WHERE id = 1") == [(55,)]
    assert prepared(url) == []


def test_postgresql_finishes_after_every_zodb_storage(tree):
    """The PostgreSQL jar's sortKey sorts after every printable key (every
    ZODB storage finishes first) and before an SQLite jar's."""
    _db, _tm, _conn, store, _url = tree
    key = store.connection().sortKey()
    highest = max(c for c in map(chr, range(0x110000)) if c.isprintable())
    for other in (highest * 40, "t0_1:('127.0.0.1', 8100)", "/var/Data.fs"):
        assert key > other
    from pclasses.stores.jar import LAST_SORT_KEY

    assert key < LAST_SORT_KEY + "pclasses.sqlite"
