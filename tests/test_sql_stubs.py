"""Stubs (issue 15, seed 001 scenario 1): DB-2 keeps stubs for DB-1's
objects, so it holds no cross-database reference at all; loading forwards to
the real object; DB-2 packs alone; the tree's gc counts stubs as references."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transaction
from ZODB.utils import z64

import pclasses
from pclasses.record.analyze import EdgeKind
from pclasses.record.edges import targets

sys.path.insert(0, str(Path(__file__).parent))
from tree_models import Node  # noqa: E402


def cross_references(db) -> list:
    """Every m / n reference in ``db``'s current records (read, never run)."""
    found = []
    storage = db.storage
    for txn in storage.iterator():
        for rec in txn:
            if rec.data:
                found += [t for t in targets(rec.data, rec.oid)
                          if t[0] in (EdgeKind.MULTI, EdgeKind.MULTI_OID)]
    return found


def build(tmp_path: Path):
    db1 = pclasses.open(tmp_path / "one.fs", tree=True, database_name="one")
    tree = pclasses.tree_of(db1)
    conn1 = db1.open()
    conn1.root()["a"] = Node("a in one")
    conn1.root()["b"] = Node("b in one")
    handle = tree.add(conn1, "two", tmp_path / "two.fs")
    transaction.commit()
    db2 = handle.db()
    pclasses.enable_stubs(db2, for_databases=["one"])
    conn2 = handle.connection()
    h1 = conn2.root()["h1"] = Node()
    h2 = conn2.root()["h2"] = Node()
    h1.link = conn1.root()["a"]
    h2.link = conn1.root()["a"]  # the same target: one stub
    h2.other = conn1.root()["b"]
    transaction.commit()
    return db1, db2, conn1, conn2


def test_db2_holds_stubs_and_no_cross_database_reference(tmp_path):
    """DB-2's records refer to stubs only (one per target); loading a
    referring object forwards to the real DB-1 object."""
    db1, db2, conn1, conn2 = build(tmp_path)
    try:
        assert cross_references(db2) == []
        index = conn2.root()["pclasses.stubs"]
        assert sorted(k[0] for k in index.keys()) == ["one", "one"]
        stub = index[("one", conn1.root()["a"]._p_oid)]
        assert (stub.database, stub.klass) == ("one", "tree_models.Node")
        conn2.cacheMinimize()
        conn2.root()["h1"]._p_invalidate()
        h1 = conn2.root()["h1"]
        assert h1.link is conn1.root()["a"]
        assert h1.link.name == "a in one"
    finally:
        transaction.abort()
        conn2.close()
        conn1.close()
        pclasses.tree_of(db1).close()


def test_db2_packs_alone_and_the_target_stays_reachable(tmp_path):
    """Packing DB-2 alone keeps its stubs; after reopening the whole tree the
    referring object still reaches DB-1's object."""
    db1, db2, conn1, conn2 = build(tmp_path)
    transaction.abort()
    conn2.close()
    conn1.close()
    db2.pack()
    pclasses.tree_of(db1).close()

    db1 = pclasses.open(tmp_path / "one.fs", tree=True, database_name="one")
    try:
        conn1 = db1.open()
        handle = pclasses.tree_of(db1).handle("two", conn1)
        pclasses.enable_stubs(handle.db(), for_databases=["one"])
        h2 = handle.root()["h2"]
        assert (h2.link.name, h2.other.name) == ("a in one", "b in one")
        assert h2.link is conn1.root()["a"]
        transaction.abort()
        conn1.close()
    finally:
        pclasses.tree_of(db1).close()


def test_tree_gc_treats_stubs_as_references_into_db1(tmp_path):
    """An object of DB-1 only a DB-2 stub refers to is not garbage for the
    tree's gc, and refs-check finds nothing dangling."""
    db1, db2, conn1, conn2 = build(tmp_path)
    try:
        a_oid = conn1.root()["a"]._p_oid
        del conn1.root()["a"]  # only DB-2's stub refers to it now
        transaction.commit()
        report = pclasses.collect_garbage(db1, days=0)
        assert a_oid not in report.garbage.get("one", [])
        assert pclasses.check_refs(db1).ok
        del conn2.root()["h1"], conn2.root()["h2"], conn2.root()["pclasses.stubs"]
        transaction.commit()
        report = pclasses.collect_garbage(db1, days=0)
        assert a_oid in report.garbage.get("one", [])
    finally:
        transaction.abort()
        conn2.close()
        conn1.close()
        pclasses.tree_of(db1).close()


def test_enable_stubs_refuses_its_own_name(tmp_path):
    """A database cannot keep stubs for itself."""
    db = pclasses.open(tmp_path / "x.fs", database_name="x")
    try:
        with pytest.raises(ValueError):
            pclasses.enable_stubs(db, for_databases=["x"])
        assert z64  # the root exists
    finally:
        db.close()


def test_stubs_for_the_rows_of_an_sql_store(tmp_path):
    """With stubs on for an SQL store, a ZODB object may hold a row directly:
    the record holds a stub naming the row's mapping and key, and loading
    forwards to the row."""
    from sql_models import Item
    from sql_util import ITEMS, sqlite_file

    url = sqlite_file(tmp_path / "s.db", ITEMS,
                      "INSERT INTO items (id, title, qty) VALUES (7, 'fig', 2)")
    db = pclasses.open(tmp_path / "main.fs", tree=True)
    try:
        conn = db.open()
        store = pclasses.tree_of(db).add(conn, "sql", url)
        store.map("item", "items", "id", Item)
        transaction.commit()
        pclasses.enable_stubs(db, for_databases=["sql"])
        conn.root()["n"] = Node("holder")
        conn.root()["n"].row = store.get("item", 7)
        transaction.commit()
        stub = conn.root()["pclasses.stubs"][("sql", store.get("item", 7)._p_oid)]
        assert stub.keys == {"mapping": "item", "key": 7}
        conn.root()["n"]._p_invalidate()
        assert conn.root()["n"].row.title == "fig"
        assert conn.root()["n"].row is store.get("item", 7)
        transaction.abort()
        conn.close()
    finally:
        pclasses.tree_of(db).close()


def test_db2_exports_as_a_self_contained_database(tmp_path):
    """An export of a DB-2 subtree that refers to DB-1's objects carries the
    stubs and declares no external (cross-database) reference."""
    db1, db2, conn1, conn2 = build(tmp_path)
    try:
        report = pclasses.export_subtree(conn2, conn2.root()["h2"], tmp_path / "h2.export")
        data = report.to_dict()
        assert data["external_references"] == []
        assert "pclasses.stores.stubs" in {c["module"] for c in data["classes"]}
    finally:
        transaction.abort()
        conn2.close()
        conn1.close()
        pclasses.tree_of(db1).close()


def test_stores_stubs_and_split_objects_name_only_frozen_classes(tmp_path):
    """A tree using an SQL store, stubs and split objects writes no
    ``pclasses.*`` global outside the frozen list (design decision D14)."""
    from sql_models import Member
    from sql_util import sqlite_file
    from test_layout import FROZEN, _globals

    url = sqlite_file(tmp_path / "p.db", "CREATE TABLE people (uid TEXT PRIMARY KEY, "
                      "name TEXT, email TEXT)", "INSERT INTO people VALUES ('u', 'n', 'e')")
    db1, db2, conn1, conn2 = build(tmp_path)
    try:
        store = pclasses.tree_of(db1).add(conn1, "people", url)
        store.map("member", "people", "uid", Member, columns=["name", "email"])
        pclasses.adopt("member", "u", into=conn1).notes = "x"
        transaction.commit()
        names = set()
        for db in (db1, db2):
            for txn in db.storage.iterator():
                for rec in txn:
                    if rec.data:
                        names |= _globals(rec.data)
        ours = {n for n in names if n.startswith("pclasses.")}
        assert ours <= set(FROZEN)
        assert {"pclasses.stores.sqlstore.SQLStore", "pclasses.stores.stubs.Stub"} <= ours
    finally:
        transaction.abort()
        conn2.close()
        conn1.close()
        pclasses.tree_of(db1).close()
