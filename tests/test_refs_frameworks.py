"""Intrinsic references in applications on zope.container (issue 13):
its containers' remove and move events are honoured."""

from __future__ import annotations

import pytest
import transaction
from persistent import Persistent
from ZODB import DB
from ZODB.FileStorage import FileStorage

import pclasses
from pclasses import Ref, place
from pclasses.refs.verify import verify_refs

btree = pytest.importorskip("zope.container.btree")
contained = pytest.importorskip("zope.container.contained")


class ZCity(contained.Contained, Persistent):
    pass


class ZAddress(contained.Contained, Persistent):
    city = Ref()
    loose = Ref(mode="none")


@pytest.fixture
def zapp(tmp_path):
    """/app (a BTreeContainer placed in the root) with /app/cities/{jena,gera}
    and /app/book/a1, all zope.container objects, in a FileStorage."""
    db = DB(FileStorage(str(tmp_path / "z.fs")))
    conn = db.open()
    app = place(conn.root(), "app", btree.BTreeContainer())
    app["cities"] = btree.BTreeContainer()
    app["cities"]["jena"] = ZCity()
    app["cities"]["gera"] = ZCity()
    app["book"] = btree.BTreeContainer()
    app["book"]["a1"] = ZAddress()
    transaction.commit()
    yield db, conn, app
    transaction.abort()
    conn.close()
    db.close()


def test_zope_container_removal_refused_before_anything_changes(zapp):
    """Deleting a referenced item (or its container) from a BTreeContainer
    raises ReferentialIntegrityError; the container keeps the item, its
    length and its location; the transaction stays usable."""
    db, conn, app = zapp
    cities, a1 = app["cities"], app["book"]["a1"]
    a1.city = cities["jena"]
    transaction.commit()
    jena = cities["jena"]
    with pytest.raises(pclasses.ReferentialIntegrityError) as info:
        del cities["jena"]
    assert [(b.key, b.name) for b in info.value.breaches] == [("/app/cities/jena", "city")]
    assert cities["jena"] is jena and len(cities) == 2
    assert jena.__parent__ is cities and jena.__name__ == "jena"
    with pytest.raises(pclasses.ReferentialIntegrityError):
        del app["cities"]
    assert app["cities"] is cities and len(app) == 2
    del cities["gera"]                              # unreferenced: allowed
    transaction.commit()
    assert sorted(cities.keys()) == ["jena"] and a1.city is jena
    assert verify_refs(db).problems == []


def test_zope_container_move_and_rename_keep_references(zapp):
    """Moving an item the way zope.copypastemove does (add to the target,
    delete from the old container) and renaming it: references follow in
    every mode, the old key is free, the registry verifies clean."""
    db, conn, app = zapp
    cities, book = app["cities"], app["book"]
    a1 = book["a1"]
    a1.city = cities["jena"]
    a1.loose = cities["gera"]
    transaction.commit()
    jena, gera = cities["jena"], cities["gera"]
    app["archive"] = btree.BTreeContainer()
    app["archive"]["jena"] = jena                   # a move: ObjectMovedEvent
    del cities["jena"]                              # no longer its parent: no removal
    cities["Gera"] = gera                           # a rename
    del cities["gera"]
    transaction.commit()
    assert pclasses.refs.key_of(a1.city) == "/app/archive/jena" and a1.city is jena
    assert a1.loose is gera and pclasses.refs.key_of(gera) == "/app/cities/Gera"
    assert [r.source for r in pclasses.referrers(jena)] == [a1]
    with pytest.raises(pclasses.ReferentialIntegrityError):
        del app["archive"]
    assert verify_refs(db).problems == []


def test_zope_container_mode_none_and_pclasses_operations(zapp):
    """A removal that only none-mode references block is allowed (reading
    then raises DanglingReferenceError); pclasses' own operations on
    zope.container objects are checked once, not twice."""
    db, conn, app = zapp
    cities, a1 = app["cities"], app["book"]["a1"]
    a1.loose = cities["gera"]
    a1.city = cities["jena"]
    transaction.commit()
    del cities["gera"]
    with pytest.raises(pclasses.DanglingReferenceError):
        _ = a1.loose
    pclasses.rename(cities, "jena", "Jena")
    assert a1.city is cities["Jena"]
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(cities, "Jena")
    new = ZCity()
    old = pclasses.replace_target(conn, "/app/cities/Jena", new)
    assert a1.city is new and old.__parent__ is None
    transaction.commit()
    assert a1.city is new


class PSource(Persistent):
    """A plain persistent source (an OFS item's acquisition wrapper would
    unwrap the target it is given; see docs/references.md)."""

    city = Ref()


try:
    from OFS.Folder import Folder as _OFSFolder
except ImportError:  # Zope not installed: the OFS test skips
    _OFSFolder = object


class OFolder(_OFSFolder):  # type: ignore[misc,valid-type]
    """An OFS folder whose meta type OFS's copy support accepts without a
    product registration."""

    meta_type = "pclasses test folder"
    all_meta_types = ({"name": "pclasses test folder", "permission": "View"},)


def test_ofs_delete_objects_refused_before_anything_changes(tmp_path):
    """In a Zope database (key root: the root's "Application"), OFS targets
    are located through their acquisition wrappers; manage_delObjects of a
    referenced object raises ReferentialIntegrityError on OFS's will-be
    event, before anything changes; an unreferenced one is deleted;
    manage_renameObject rekeys (references follow)."""
    application = pytest.importorskip("OFS.Application")
    from AccessControl.SecurityManagement import newSecurityManager, noSecurityManager
    from AccessControl.SpecialUsers import system
    from persistent.mapping import PersistentMapping

    OFSFolder = OFolder  # noqa: N806

    db = DB(FileStorage(str(tmp_path / "ofs.fs")))
    conn = db.open()
    try:
        root = conn.root()
        root["Application"] = application.Application()
        root["sources"] = PersistentMapping()
        transaction.commit()
        app = root["Application"]
        app._setObject("cities", OFSFolder("cities"))
        app.cities._setObject("jena", OFSFolder("jena"))
        app.cities._setObject("gera", OFSFolder("gera"))
        src = root["sources"]["s"] = PSource()
        transaction.commit()
        assert pclasses.refs.key_of(app.cities.jena) == "/cities/jena"
        src.city = app.cities.jena
        transaction.commit()
        assert src.city.aq_base is app.cities.jena.aq_base
        with pytest.raises(pclasses.ReferentialIntegrityError) as info:
            app.cities.manage_delObjects(["jena"])
        assert [b.key for b in info.value.breaches] == ["/cities/jena"]
        assert "jena" in app.cities.objectIds()
        app.cities.manage_delObjects(["gera"])
        transaction.commit()
        assert app.cities.objectIds() == ["jena"]
        assert src.city.aq_base is app.cities.jena.aq_base
        newSecurityManager(None, system)             # OFS's copy support checks permissions
        try:
            app.cities.manage_renameObject("jena", "Jena")
        finally:
            noSecurityManager()
        transaction.commit()
        assert src.city.aq_base is app.cities.Jena.aq_base
        assert pclasses.refs.key_of(app.cities.Jena) == "/cities/Jena"
        assert verify_refs(db).problems == []
    finally:
        transaction.abort()
        conn.close()
        db.close()
