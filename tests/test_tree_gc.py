"""refs-check and gc across a tree of databases; pins (issue 14)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest
import transaction
import ZODB
from click.testing import CliRunner
from ZODB.FileStorage import FileStorage
from ZODB.utils import oid_repr

import pclasses
from pclasses.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from tree_models import Node, pack_alone  # noqa: E402


def build(tmp_path: Path, pin: bool = False, child: str | None = None):
    """root.src -> remote a.kept; a.garbage unreachable; a.gone referenced and
    deleted (packed away) -> dangling.  ``child``: the child's target (a
    FileStorage next to the root by default)."""
    paths = [tmp_path / f"{n}.fs" for n in ("root", "a")]
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"] = Node("src")
    conn.add(src)
    ha = tree.add(conn, "a", child or paths[1], pin=pin)
    aroot = ha.root()
    holder = aroot["holder"] = Node("holder")
    kept = holder.kept = Node("kept")  # reachable in a only through holder
    garbage = aroot["garbage"] = Node("garbage")
    tm.commit()
    src.kept = pclasses.get_reference(src, kept)
    del aroot["holder"]  # kept now only referenced from root
    del aroot["garbage"]
    tm.commit()
    ids = {"src": src._p_oid, "kept": kept._p_oid, "garbage": garbage._p_oid,
           "holder": holder._p_oid}
    conn.close()
    tree.close()
    return paths, ids


def test_gc_dry_run_finds_garbage_and_keeps_remote_targets(tmp_path):
    """gc reports objects unreachable from every root of the tree; a target of
    a remote reference is alive; a dry run deletes nothing; --apply deletes
    through the storage API (with --force for FileStorage's own pack gc)."""
    paths, ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True, read_only=True)
    report = pclasses.collect_garbage(db, days=0)
    pclasses.tree_of(db).close()
    assert set(report.garbage["a"]) == {ids["garbage"], ids["holder"]}
    assert ids["kept"] not in report.garbage["a"] and report.garbage[db.database_name] == []
    assert not report.applied
    result = CliRunner().invoke(main, ["gc", str(paths[0]), "--days", "0", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc["databases"]["a"]["garbage"]) == {oid_repr(ids["garbage"]),
                                                      oid_repr(ids["holder"])}
    refused = CliRunner().invoke(main, ["gc", str(paths[0]), "--days", "0", "--apply"])
    assert refused.exit_code == 1 and "pack" in refused.output
    result = CliRunner().invoke(main, ["gc", str(paths[0]), "--days", "0", "--apply",
                                       "--force", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["applied"] is True
    fs = FileStorage(str(paths[1]), read_only=True)
    try:
        for oid in (ids["garbage"], ids["holder"]):
            with pytest.raises(KeyError):
                fs.load(oid)
        fs.load(ids["kept"])
    finally:
        fs.close()
    check = CliRunner().invoke(main, ["refs-check", str(paths[0])])
    assert check.exit_code == 0, check.output


def test_grace_period_keeps_recent_objects(tmp_path):
    """--days 1 keeps garbage written in the last day."""
    paths, _ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True, read_only=True)
    report = pclasses.collect_garbage(db)
    pclasses.tree_of(db).close()
    assert report.count == 0 and report.recent["a"] == 2


def test_refs_check_lists_dangling_remote_reference_after_pack(tmp_path):
    """Packing 'a' alone loses the object only root refers to: refs-check exits
    3 and names source, target, form and reason."""
    paths, ids = build(tmp_path)
    pack_alone(paths[1])
    result = CliRunner().invoke(main, ["refs-check", str(paths[0]), "--json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.output)
    assert {"source_database": "unnamed", "source_oid": oid_repr(ids["src"]),
            "target_database": "a", "target_oid": oid_repr(ids["kept"]),
            "form": "remote", "reason": "missing"} in doc["dangling"]
    text = CliRunner().invoke(main, ["refs-check", str(paths[0]), "--referrers"])
    assert text.exit_code == 3 and "referred to by" in text.output


def test_pins_keep_remote_targets_through_pack_alone(tmp_path):
    """With pin=True the child keeps what other databases refer to when packed
    alone; gc drops a pin once no reference holds it."""
    paths, ids = build(tmp_path, pin=True)
    pack_alone(paths[1])
    db = pclasses.open(paths[0], tree=True, read_only=True)
    assert pclasses.check_refs(db).ok
    pclasses.tree_of(db).close()
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    assert conn.root()["src"].kept().name == "kept"
    del conn.root()["src"].kept
    conn.root()["src"]._p_changed = True
    tm.commit()
    conn.close()
    report = pclasses.collect_garbage(db, days=0, apply=True, force=True)
    tree.close()
    assert report.stale_pins["a"] == [ids["kept"]]
    assert ids["kept"] in report.garbage["a"]


def test_refs_check_unavailable_and_unknown(tmp_path):
    """A child that cannot be opened: its references dangle as 'unavailable'."""
    paths, ids = build(tmp_path)
    for p in tmp_path.glob("a.fs*"):
        p.unlink()
    db = pclasses.open(paths[0], tree=True, read_only=True)
    report = pclasses.check_refs(db)
    pclasses.tree_of(db).close()
    assert "a" in report.unavailable
    assert [(d.target_database, d.form, d.reason) for d in report.dangling] == [
        ("a", "remote", "unavailable")]


def test_refs_check_cannot_run(tmp_path):
    """A target that cannot be opened: exit 1, one line."""
    result = CliRunner().invoke(main, ["refs-check", str(tmp_path / "nope.fs")])
    assert result.exit_code == 1 and "Traceback" not in result.output


def _gc_apply_deletes_from_child(root: Path, ids: dict[str, bytes], open_child) -> None:
    """gc --apply on a tree whose child is ``open_child()`` (a storage): the
    child's garbage is gone through the storage API, the remote target stays,
    refs-check is clean afterwards."""
    from ZODB.POSException import POSKeyError

    db = pclasses.open(root, tree=True, read_only=True)
    dry = pclasses.collect_garbage(db, days=0)
    pclasses.tree_of(db).close()
    assert set(dry.garbage["a"]) == {ids["garbage"], ids["holder"]}
    result = CliRunner().invoke(main, ["gc", str(root), "--days", "0", "--apply", "--force",
                                       "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["applied"] is True and doc["databases"]["a"]["count"] == 2
    storage = open_child()
    try:
        for oid in (ids["garbage"], ids["holder"]):
            with pytest.raises(POSKeyError):
                storage.load(oid)
        storage.load(ids["kept"])
    finally:
        storage.close()
    check = CliRunner().invoke(main, ["refs-check", str(root)])
    assert check.exit_code == 0, check.output
    db = pclasses.open(root, tree=True)
    conn = db.open()
    assert conn.root()["src"].kept().name == "kept"
    conn.close()
    pclasses.tree_of(db).close()


@pytest.mark.zeo
def test_gc_apply_deletes_on_a_zeo_child(tmp_path, zeo_server):
    """A child served by a real ZEO server: gc --apply refuses without force
    (the server's storage decides whether pack collects garbage; the client
    cannot tell), and with it deletes the garbage through
    ClientStorage.deleteObject in the tree's one two-phase commit."""
    address, name = zeo_server.fresh()
    paths, ids = build(tmp_path, child=zeo_server.uri(address, name))
    refused = CliRunner().invoke(main, ["gc", str(paths[0]), "--days", "0", "--apply"])
    assert refused.exit_code == 1 and "ZEO client" in refused.output, refused.output
    _gc_apply_deletes_from_child(paths[0], ids,
                                 lambda: zeo_server.client(address, name, read_only=True))


def _relstorage_conf(tmp_path: Path, adapter: str, pack_gc: bool) -> Path:
    conf = tmp_path / "a.conf"
    conf.write_text("%import relstorage\n<relstorage>\n  keep-history false\n"
                    f"  pack-gc {'true' if pack_gc else 'false'}\n{adapter}</relstorage>\n")
    return conf


def _open_conf(conf: Path):
    import ZODB.config

    return ZODB.config.storageFromURL(conf.resolve().as_uri())


def test_gc_apply_deletes_on_a_relstorage_sqlite_child(tmp_path):
    """A child on RelStorage (SQLite adapter): gc refuses while RelStorage's
    own pack-gc is on, and with pack-gc off deletes the garbage through
    RelStorage's deleteObject."""
    pytest.importorskip("relstorage")
    adapter = f"  <sqlite3>\n    data-dir {tmp_path / 'sqlite'}\n  </sqlite3>\n"
    conf = _relstorage_conf(tmp_path, adapter, pack_gc=True)
    paths, ids = build(tmp_path, child=str(conf))
    db = pclasses.open(paths[0], tree=True)
    with pytest.raises(pclasses.GarbageCollectionRefusedError) as info:
        pclasses.collect_garbage(db, days=0, apply=True)
    pclasses.tree_of(db).close()
    assert "pack" in str(info.value)
    _relstorage_conf(tmp_path, adapter, pack_gc=False)
    _gc_apply_deletes_from_child(paths[0], ids, lambda: _open_conf(conf))


def test_gc_apply_deletes_on_a_relstorage_postgresql_child(tmp_path, pg_server):
    """A child on RelStorage over a real PostgreSQL server: gc --apply deletes
    its garbage; the remote target and the root's objects stay."""
    pytest.importorskip("relstorage")
    pytest.importorskip("psycopg2")
    dbname = pg_server.createdb()
    adapter = (f"  <postgresql>\n    dsn {pg_server.dsn(dbname)}\n  </postgresql>\n")
    conf = _relstorage_conf(tmp_path, adapter, pack_gc=False)
    paths, ids = build(tmp_path, child=str(conf))
    _gc_apply_deletes_from_child(paths[0], ids, lambda: _open_conf(conf))


def test_zconfig_multi_database_m_keeps_alive_weak_does_not(tmp_path):
    """On a ZConfig multi-database (no handles): an object of 'b' reached only
    through ZODB's ['m', ...] reference from 'a' is alive; one reached only
    through a weak reference is garbage; refs-check follows both forms and
    is clean; gc --apply --force deletes only the weakly referenced one."""
    import persistent.wref

    paths = {n: tmp_path / f"{n}.fs" for n in ("a", "b")}
    conf = tmp_path / "multi.conf"
    conf.write_text("".join(f"<zodb {n}>\n  <filestorage>\n    path {p}\n  </filestorage>\n"
                            "</zodb>\n" for n, p in paths.items()))
    db = pclasses.open(conf)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    assert db.database_name == "a"
    broot = conn.get_connection("b").root()
    strong, weak = broot["strong"], broot["weak"] = Node("strong"), Node("weak")
    tm.commit()
    conn.root()["src"] = src = Node("src")
    src.strong, src.weak = strong, persistent.wref.WeakRef(weak)
    del broot["strong"], broot["weak"]
    tm.commit()
    ids = {"strong": strong._p_oid, "weak": weak._p_oid}
    conn.close()
    for each in set(db.databases.values()):
        each.close()
    result = CliRunner().invoke(main, ["refs-check", str(conf), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dangling"] == []
    result = CliRunner().invoke(main, ["gc", str(conf), "--days", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["databases"]["b"]["garbage"] == [oid_repr(ids["weak"])]
    result = CliRunner().invoke(main, ["gc", str(conf), "--days", "0", "--apply", "--force"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["refs-check", str(conf), "--json"])
    assert result.exit_code == 3, result.output
    assert [(d["target_oid"], d["form"], d["reason"])
            for d in json.loads(result.output)["dangling"]] == [
        (oid_repr(ids["weak"]), "weak", "missing")]
    fs = FileStorage(str(paths["b"]), read_only=True)
    try:
        fs.load(ids["strong"])
    finally:
        fs.close()


def test_bare_oid_references_are_followed_where_zc_zodbdgc_asserts(tmp_path):
    """An object referred to by bare oid (its class defines __getnewargs__,
    so ZODB writes no class) is followed: refs-check counts it and is clean,
    gc keeps it and collects it once unreferenced.  zc.zodbdgc's check stops
    with AssertionError on the same database."""
    import zc.zodbdgc

    from tree_models import Keyed

    path, conf = tmp_path / "a.fs", tmp_path / "m.conf"
    conf.write_text(f"<zodb a>\n  <filestorage>\n    path {path}\n  </filestorage>\n</zodb>\n")
    db = pclasses.open(path)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    node = conn.root()["n"] = Node("n")
    node.k = Keyed("x")
    tm.commit()
    kept = node.k._p_oid
    conn.close()
    db.close()
    with pytest.raises(AssertionError):
        zc.zodbdgc.check(str(conf))
    result = CliRunner().invoke(main, ["refs-check", str(conf), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["objects"]["a"] == 3  # root, node, the Keyed
    db = pclasses.open(conf)
    assert pclasses.collect_garbage(db, days=0).count == 0
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    del conn.root()["n"].k
    tm.commit()
    conn.close()
    assert pclasses.collect_garbage(db, days=0).garbage["a"] == [kept]
    db.close()


def test_commit_fails_everywhere_when_the_postgresql_child_server_stops(tmp_path):
    """A child on RelStorage over its own real PostgreSQL server: parent and
    child changed in one transaction, then the server stops; the commit
    fails (in RelStorage's part of the two-phase commit) and the parent's
    file does not hold the change."""
    pytest.importorskip("relstorage")
    pytest.importorskip("psycopg2")
    from pgserver import PostgresServer, find_bindir

    if find_bindir() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    server = PostgresServer()
    running = True
    try:
        dbname = server.createdb()
        adapter = f"  <postgresql>\n    dsn {server.dsn(dbname)}\n  </postgresql>\n"
        conf = _relstorage_conf(tmp_path, adapter, pack_gc=False)
        root_path = tmp_path / "root.fs"
        db = pclasses.open(root_path, tree=True)
        tree = pclasses.tree_of(db)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        src = conn.root()["src"] = Node("src")
        hp = tree.add(conn, "pg", str(conf))
        obj = hp.root()["obj"] = Node("on postgresql")
        tm.commit()
        src.name, obj.name = "changed in root", "changed on postgresql"
        server.stop()
        running = False
        with pytest.raises(Exception):  # noqa: B017 - RelStorage's own error
            tm.commit()
        with contextlib.suppress(Exception):  # RelStorage's rollback needs its server too
            tm.abort()
        conn.close()
        tree.close()
    finally:
        if running:
            server.stop()
    plain = ZODB.DB(FileStorage(str(root_path), read_only=True))
    try:
        assert plain.open().root()["src"].name == "src"
    finally:
        plain.close()
