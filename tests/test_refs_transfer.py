"""Intrinsic references through export and import (issue 13)."""

from __future__ import annotations

import logging

import pytest
import transaction
from ZODB import DB
from ZODB.FileStorage import FileStorage

import pclasses
from pclasses import Folder, place
from pclasses.refs.verify import verify_refs
from test_refs import Address, City


@pytest.fixture(autouse=True)
def _quiet():
    # ZODB logs the imported root's old __parent__ (outside the export) when
    # place() looks at it; that is expected.
    logging.getLogger("ZODB.Connection").setLevel(logging.CRITICAL)
    yield
    logging.getLogger("ZODB.Connection").setLevel(logging.NOTSET)


@pytest.fixture
def source(tmp_path):
    """/cities (50 master objects) and /book/sub with a1 -> /cities/c1 (always)
    and a2 -> a1 (internal, mode none), exported."""
    db = DB(FileStorage(str(tmp_path / "a.fs")))
    conn = db.open()
    root = conn.root()
    cities = place(root, "cities", Folder())
    for i in range(50):
        cities[f"c{i}"] = City()
    sub = place(place(root, "book", Folder()), "sub", Folder())
    sub["a1"], sub["a2"] = Address(), Address()
    sub["a1"].city = cities["c1"]
    sub["a2"].loose = sub["a1"]
    transaction.commit()
    path = tmp_path / "sub.export"
    manifest = pclasses.export_subtree(conn, sub, str(path))
    yield manifest, path
    transaction.abort()
    conn.close()
    db.close()


@pytest.fixture
def target(tmp_path):
    db = DB(FileStorage(str(tmp_path / "b.fs")))
    conn = db.open()
    yield db, conn
    transaction.abort()
    conn.close()
    db.close()


def test_export_lists_references_and_drags_no_master_data(source):
    """The export holds the subtree only (not the master data it refers to,
    nor the container its __parent__ names); the manifest lists internal
    references and external keys."""
    manifest, _path = source
    assert manifest.record_count < 10
    assert manifest.references_root == "/book/sub"
    refs = {(r["key"], r["internal"], r["mode"]) for r in manifest.references}
    assert refs == {("/cities/c1", False, "always"), ("/book/sub/a1", True, "none")}
    back = pclasses.read_manifest(str(_path))
    assert back.references == manifest.references


def test_import_requires_external_keys(source, target):
    """Missing external keys of always-mode references: a clear error listing
    them, nothing written."""
    _manifest, path = source
    db, conn = target
    into = place(conn.root(), "in", Folder())
    transaction.commit()
    with pytest.raises(pclasses.MissingReferencesError) as info:
        pclasses.import_subtree(conn, str(path), into=into, name="sub")
    assert info.value.keys == ["/cities/c1"]
    assert isinstance(info.value, pclasses.TransferError)
    assert "sub" not in into
    transaction.commit()
    assert "sub" not in conn.root()["in"]


def test_import_reroots_internal_references(source, target):
    """Internal references follow the subtree to its new place; external
    ones resolve in the target; the registry verifies clean."""
    _manifest, path = source
    db, conn = target
    root = conn.root()
    place(root, "cities", Folder())["c1"] = City()
    into = place(root, "in", Folder())
    obj = pclasses.import_subtree(conn, str(path), into=into, name="sub")
    transaction.commit()
    assert obj["a1"].city is root["cities"]["c1"]
    assert obj["a2"].loose is obj["a1"]
    assert pclasses.refs.key_of(obj["a2"].loose) == "/in/sub/a1"
    assert {r.source for r in pclasses.referrers(root["cities"]["c1"])} == {obj["a1"]}
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(root["cities"], "c1")
    assert verify_refs(db).problems == []


def test_import_dangling_when_told(source, target):
    """references='dangling' imports anyway; the reference dangles until the key exists."""
    _manifest, path = source
    db, conn = target
    into = place(conn.root(), "in", Folder())
    obj = pclasses.import_subtree(conn, str(path), into=into, name="sub",
                                  references="dangling")
    transaction.commit()
    assert obj["a2"].loose is obj["a1"]
    from pclasses.refs.integrity import resolve_id  # noqa: F401

    place(conn.root(), "cities", Folder())["c1"] = City()
    transaction.commit()
    assert obj["a1"].city is conn.root()["cities"]["c1"]


def test_import_null_when_told(source, target, tmp_path):
    """references='null' imports the references whose keys do not resolve in
    the target as None (a RefSet drops them); the rest, internal ones
    included, work; nothing dangles, the registry verifies clean."""
    _manifest, path = source
    db, conn = target
    into = place(conn.root(), "in", Folder())
    obj = pclasses.import_subtree(conn, str(path), into=into, name="sub", references="null")
    assert obj["a1"].city is None                   # readable before the commit too
    transaction.commit()
    assert obj["a1"].city is None
    assert obj["a2"].loose is obj["a1"]             # internal: re-rooted, kept
    assert pclasses.references(obj["a1"]) == []
    assert verify_refs(db).problems == []
    obj["a1"].city = None                           # assignable as usual
    place(conn.root(), "cities", Folder())["c1"] = City()
    obj["a1"].city = conn.root()["cities"]["c1"]
    transaction.commit()
    assert [r.source for r in pclasses.referrers(conn.root()["cities"]["c1"])] == [obj["a1"]]


def test_import_null_in_sets_and_resolving_keys_kept(tmp_path, target):
    """With references='null' a RefSet loses only its members whose keys are
    missing; references whose keys resolve in the target are kept."""
    db = DB(FileStorage(str(tmp_path / "c.fs")))
    conn = db.open()
    root = conn.root()
    cities = place(root, "cities", Folder())
    for i in range(3):
        cities[f"c{i}"] = City()
    sub = place(root, "sub", Folder())
    sub["a"] = Address()
    sub["a"].cities = [cities["c0"], cities["c1"], cities["c2"]]
    sub["a"].city = cities["c2"]
    sub["a"].loose = cities["c1"]
    transaction.commit()
    path = tmp_path / "s.export"
    pclasses.export_subtree(conn, sub, str(path))
    transaction.abort()
    conn.close()
    db.close()
    tdb, tconn = target
    tcities = place(tconn.root(), "cities", Folder())
    tcities["c2"] = City()
    transaction.commit()
    obj = pclasses.import_subtree(tconn, str(path), into=tconn.root(), name="sub",
                                  references="null")
    transaction.commit()
    a = obj["a"]
    assert set(a.cities) == {tcities["c2"]} and len(a.cities) == 1
    assert a.city is tcities["c2"]
    assert a.loose is None
    assert verify_refs(tdb).problems == []
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(tcities, "c2")


def _record(state):
    import io
    import pickle

    f = io.BytesIO()
    p = pickle.Pickler(f, 3)
    p.dump((Address, None))
    p.dump(state)
    return f.getvalue()


def test_null_reference_ids_patches_in_place_or_refuses():
    """null_reference_ids keeps the record's length, unpickles to the same
    state with the ids set to None (in a set: left as None, which a RefSet
    skips), is read by the safe reader, and refuses (None) when the id's
    text is shared with another part of the state."""
    import pickle

    from pclasses.record.reader import read_record
    from pclasses.refs.transfer import null_reference_ids

    rid, other = "ab12cd3", "ab12cd4"
    state = {"title": "x", "__pclasses_refs__": {"m.A.city": rid, "m.A.cities": (other, rid),
                                                  "m.A.loose": other}}
    data = _record(state)
    patched = null_reference_ids(data, {"m.A.city": {rid}, "m.A.cities": {rid}})
    assert patched is not None and len(patched) == len(data)
    import io

    u = pickle.Unpickler(io.BytesIO(patched))
    u.load()
    back = u.load()
    assert back == {"title": "x", "__pclasses_refs__": {
        "m.A.city": None, "m.A.cities": (other, None), "m.A.loose": other}}
    assert read_record(patched).state["__pclasses_refs__"]["m.A.city"] is None
    shared = {"note": rid, "__pclasses_refs__": {"m.A.city": rid}}
    assert null_reference_ids(_record(shared), {"m.A.city": {rid}}) is None
