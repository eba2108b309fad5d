"""gocept.reference 1.0's doctest scenarios (reference.txt, collection.txt,
integrity.txt, fixer.txt), ported to pclasses' API (issue 13).  Where
gocept refuses or needs its fixer, the expected behaviour is the issue's."""

from __future__ import annotations

import pytest
import transaction
from ZODB import DB
from ZODB.FileStorage import FileStorage

import pclasses
from pclasses import Folder, place
from pclasses.refs.verify import verify_refs
from test_refs import Address, City


@pytest.fixture
def site(tmp_path):
    """gocept's doctest set-up: a root folder with a few targets and a source."""
    db = DB(FileStorage(str(tmp_path / "g.fs")))
    conn = db.open()
    root = conn.root()
    place(root, "folder", Folder())
    root["folder"]["a"] = City("a")
    root["folder"]["b"] = City("b")
    place(root, "c", City("c"))
    place(root, "src", Address())
    transaction.commit()
    yield db, conn, root
    transaction.abort()
    conn.close()
    db.close()


def test_reference_txt(site):
    """reference.txt: unset references raise AttributeError; assigning and
    reading back; the stored value is the target's key, not the object; a
    moved target is still found (gocept refuses the move); objects without
    a location are refused; deleting the attribute."""
    db, conn, root = site
    src, a = root["src"], root["folder"]["a"]
    with pytest.raises(AttributeError):
        _ = src.city
    src.city = a
    assert src.city is a
    transaction.commit()
    assert [r.key for r in pclasses.references(src)] == ["/folder/a"]
    pclasses.move(a, root, "a")
    transaction.commit()
    assert src.city is a and pclasses.references(src)[0].key == "/a"
    with pytest.raises(pclasses.UnlocatedError):
        src.city = City("nowhere")
    src.city = root["c"]                           # at the key root's top level
    assert src.city is root["c"]
    del src.city
    with pytest.raises(AttributeError):
        _ = src.city
    transaction.commit()
    assert verify_refs(db).problems == []


def test_collection_txt(site):
    """collection.txt: a set of references: assign, add, discard, set
    operations, membership, copying to another source, integrity of each
    member."""
    db, conn, root = site
    src, folder = root["src"], root["folder"]
    a, b, c = folder["a"], folder["b"], root["c"]
    src.cities = {a}
    src.cities.add(b)
    assert set(src.cities) == {a, b} and len(src.cities) == 2
    assert a in src.cities and c not in src.cities
    assert src.cities | {c} == {a, b, c} and src.cities & {b, c} == {b}
    src.cities.discard(a)
    assert set(src.cities) == {b}
    place(root, "other", Address()).cities = src.cities
    src.cities.add(a)
    assert set(root["other"].cities) == {b}        # a copy, not shared
    transaction.commit()
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(folder, "b")
    assert {r.source for r in pclasses.referrers(b)} == {src, root["other"]}


def test_integrity_txt(site):
    """integrity.txt: with integrity on, removing a referenced target (or a
    folder containing one) is refused, the transaction staying usable
    (gocept dooms it); removing an unreferenced one works; with integrity
    off the removal goes through and the reference dangles."""
    db, conn, root = site
    src, folder = root["src"], root["folder"]
    src.city = folder["a"]
    transaction.commit()
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(folder, "a")
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(root, "folder")
    pclasses.remove(folder, "b")
    transaction.commit()                           # still usable
    pclasses.set_ref_mode(conn, Address.city, "none")
    pclasses.remove(folder, "a")
    transaction.commit()
    with pytest.raises(pclasses.DanglingReferenceError):
        _ = src.city
    pclasses.set_ref_mode(conn, Address.city, "always", fix="null")
    transaction.commit()
    assert src.city is None


def test_fixer_txt(site):
    """fixer.txt: gocept keeps a reference count that goes stale when its
    integrity flag changes, until a whole-tree fixer runs.  Here links are
    kept in every mode: switching off, changing references, switching on
    again needs no fixer; the referrers and verification are right at once."""
    db, conn, root = site
    src, folder = root["src"], root["folder"]
    place(root, "src2", Address())
    pclasses.set_ref_mode(conn, Address.city, "none")
    src.city = folder["a"]
    root["src2"].city = folder["a"]
    transaction.commit()
    root["src2"].city = folder["b"]
    transaction.commit()
    pclasses.set_ref_mode(conn, Address.city, "always")
    transaction.commit()
    assert [r.source for r in pclasses.referrers(folder["a"])] == [src]
    assert [r.source for r in pclasses.referrers(folder["b"])] == [root["src2"]]
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(folder, "b")
    pclasses.remove(root, "c")
    transaction.commit()
    assert verify_refs(db).problems == []
    pclasses.set_ref_mode(conn, Address.city, "always")  # the code's mode again
