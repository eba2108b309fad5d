"""Remote references as the record engine, ZODB, zc.zodbdgc and the seat belt
see them (issue 14)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transaction
from ZODB.serialize import referencesf

import pclasses
from pclasses.record.analyze import EdgeKind
from pclasses.record.edges import edges
from pclasses.record.reader import read_record

sys.path.insert(0, str(Path(__file__).parent))
from tree_models import Node  # noqa: E402


def build(tmp_path: Path):
    """root['src'] holds a one-level and a two-level remote reference."""
    paths = [tmp_path / f"{n}.fs" for n in ("root", "a", "b")]
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"] = Node("src")
    conn.add(src)
    ha = tree.add(conn, "a", paths[1])
    obj = ha.root()["obj"] = Node("in a")
    hb = tree.add(ha.connection(), "b", paths[2])
    deep = hb.root()["deep"] = Node("in b")
    tm.commit()
    src.a = pclasses.get_reference(src, obj)
    src.b = pclasses.get_reference(src, deep)
    tm.commit()
    ids = {"src": src._p_oid, "ha": ha._p_oid, "hb": hb._p_oid, "obj": obj._p_oid,
           "deep": deep._p_oid}
    conn.close()
    tree.close()
    return paths, ids


def test_edges_report_remote_references(tmp_path):
    """edges() reports each remote reference as kind 'remote' with the target
    oid, class, database and the handle it goes through; ZODB's referencesf
    sees the plain reference to the handle."""
    paths, ids = build(tmp_path)
    from ZODB.FileStorage import FileStorage

    fs = FileStorage(str(paths[0]), read_only=True)
    try:
        data, _ = fs.load(ids["src"])
    finally:
        fs.close()
    got = edges(data)
    remote = [e for e in got if e.kind is EdgeKind.REMOTE]
    assert {(e.database, e.oid, e.klass, e.via) for e in remote} == {
        ("a", ids["obj"], ("tree_models", "Node"), ids["ha"]),
        ("a", ids["hb"], ("pclasses.tree.handle", "DatabaseHandle"), ids["ha"]),
        ("b", ids["deep"], ("tree_models", "Node"), ids["hb"]),
    }
    plain = [e.oid for e in got if e.kind is not EdgeKind.REMOTE]
    assert plain == referencesf(data)
    assert set(plain) == {ids["ha"]}
    kinds = {r.kind for r in read_record(data).references}
    assert EdgeKind.REMOTE in kinds


def test_zc_zodbdgc_reads_our_records(tmp_path, capsys):
    """zc.zodbdgc's multi-database check walks a tree holding remote
    references without any error."""
    zodbdgc = pytest.importorskip("zc.zodbdgc")
    paths, _ids = build(tmp_path)
    conf = tmp_path / "multi.conf"
    conf.write_text("".join(
        f"<zodb {name}>\n  <filestorage>\n    path {p}\n  </filestorage>\n</zodb>\n"
        for name, p in zip(("unnamed", "a", "b"), paths)))
    zodbdgc.check(str(conf))
    out = capsys.readouterr().out
    assert "!!!" not in out and "bad" not in out, out


def test_seat_belt_vetoes_a_remote_reference_without_opening_anything(tmp_path):
    """A policy denying root -> a vetoes a remote reference into 'a' at commit,
    matched by its recorded target class, without opening 'a'; nothing is
    stored anywhere."""
    paths, ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True, check_xrefs=True)
    tree = pclasses.tree_of(db)
    policy = pclasses.XrefPolicy().deny("*", "a", target_class="tree_models.*").install()
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        src = conn.root()["src"]
        copy = conn.root()["copy"] = Node("copy")
        copy.ref = src.a  # the reference value, the target never loaded
        with pytest.raises(pclasses.CrossDatabaseReferenceError) as info:
            tm.commit()
        assert info.value.target_database == "a"
        tm.abort()
        assert tree.opened == {db.database_name}
        assert "copy" not in conn.root()
        conn.close()
    finally:
        policy.uninstall()
        tree.close()
    db = pclasses.open(paths[0])
    conn = db.open()
    assert "copy" not in conn.root()
    conn.close()
    db.close()


def test_fast_remote_walker_agrees_with_genops(tmp_path):
    """The fast walker and the pickletools.genops walker find the same remote
    references in every record of a tree (memoized strings included)."""
    from ZODB.FileStorage import FileStorage

    from pclasses.record.remote import remote_sites

    paths, ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"]
    fresh = [pclasses.get_reference(src, src.a()), pclasses.get_reference(src, src.b())]
    src.many = [src.a, src.b, src.a, {"k": src.b}, fresh]  # shared objects, equal strings
    tm.commit()
    conn.close()
    tree.close()
    fs = FileStorage(str(paths[0]), read_only=True)
    try:
        data, _ = fs.load(ids["src"])
    finally:
        fs.close()
    fast = remote_sites(data)
    slow = remote_sites(data, fast=False)
    assert fast == slow and len(fast) == 6
    # edges() walks from the first remote global of the state pickle
    got = [(e.oid, e.klass, e.database, e.via) for e in edges(data) if e.kind is EdgeKind.REMOTE]
    assert got == [(s.oid, tuple(s.klass.rsplit(".", 1)), s.database, s.via) for s in slow]


def test_remote_walker_never_runs_hostile_records(tmp_path):
    """A hostile record naming os.system around the remote global is only
    read: no marker file appears."""
    import pickle

    from pclasses.record.remote import remote_sites

    marker = tmp_path / "pwned"
    payload = (b"\x80\x02cpclasses.tree.reference\nRemoteReference\nq\x00.\x80\x02cos\nsystem\n"
               + pickle.dumps(f"touch {marker}", 2)[2:-1] + b"\x85R.")
    remote_sites(payload)
    remote_sites(payload, fast=False)
    assert not marker.exists()
