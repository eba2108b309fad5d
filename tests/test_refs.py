"""Intrinsic references (issue 13): descriptors, locations, containment,
modes, key changes, events and introspection, on FileStorage with real
transactions.  The first part ports gocept.reference's doctest scenarios
(reference, collection, integrity on/off, fixer) to this API."""

from __future__ import annotations

import pickle

import pytest
import transaction
import zope.event
from persistent import Persistent
from ZODB import DB
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError

import pclasses
from pclasses import (
    DanglingReferenceError,
    Folder,
    Ref,
    ReferentialIntegrityError,
    RefSet,
    UnlocatedError,
    is_referenced,
    move,
    place,
    references,
    referrers,
    rekey,
    remove,
    rename,
    replace_target,
    set_ref_mode,
)
from pclasses.refs.registry import registry_of


class City(Persistent):
    def __init__(self, title=""):
        self.title = title


class Address(Persistent):
    city = Ref()
    loose = Ref(mode="none")
    late = Ref(mode="commit")
    cities = RefSet()
    loose_cities = RefSet(mode="none")


class Plain(Persistent):
    city = None


@pytest.fixture
def db(tmp_path):
    database = DB(FileStorage(str(tmp_path / "refs.fs")))
    yield database
    transaction.abort()
    database.close()


@pytest.fixture
def conn(db):
    connection = db.open()
    yield connection
    transaction.abort()
    connection.close()


@pytest.fixture
def world(conn):
    """Master data at /cities (jena, gera) and an address book at /book."""
    root = conn.root()
    cities = place(root, "cities", Folder())
    cities["jena"] = City("Jena")
    cities["gera"] = City("Gera")
    book = place(root, "book", Folder())
    book["a1"] = Address()
    transaction.commit()
    return root, cities, book


# ---------------------------------------------------------------------------
# gocept.reference: reference.txt


def test_reference_reads_and_writes_like_an_attribute(world, db):
    """Assigning a located object stores a reference; reading gives the
    object back, also after commit and in a new connection."""
    root, cities, book = world
    book["a1"].city = cities["jena"]
    assert book["a1"].city is cities["jena"]
    transaction.commit()
    other = db.open()
    try:
        assert other.root()["book"]["a1"].city.title == "Jena"
        assert other.root()["book"]["a1"].city is other.root()["cities"]["jena"]
    finally:
        other.close()


def test_reference_stores_an_id_not_a_persistent_reference(world, conn):
    """The source's record holds a text id, no persistent reference to the
    target: nothing pins master data."""
    root, cities, book = world
    book["a1"].city = cities["jena"]
    transaction.commit()
    data, _ = conn._storage.load(book["a1"]._p_oid)
    info = pclasses.read_record(data, book["a1"]._p_oid)
    assert all(r.oid != cities["jena"]._p_oid for r in info.references)
    assert "jena" not in repr(info.state)


def test_unassigned_reference_is_an_attribute_error(world):
    """Reading a Ref never assigned raises AttributeError, as a plain attribute would."""
    _root, _cities, book = world
    with pytest.raises(AttributeError):
        _ = book["a1"].city
    assert getattr(book["a1"], "city", "default") == "default"


def test_none_and_del(world, conn):
    """None is a value; del removes the value and its link."""
    _root, cities, book = world
    a1 = book["a1"]
    a1.city = cities["jena"]
    a1.city = None
    assert a1.city is None
    assert referrers(cities["jena"]) == []
    a1.city = cities["gera"]
    del a1.city
    with pytest.raises(AttributeError):
        _ = a1.city
    assert not is_referenced(cities["gera"])
    with pytest.raises(AttributeError):
        del a1.city


def test_descriptor_on_the_class(world):
    """A Ref read on the class is the descriptor, with its id."""
    assert isinstance(Address.city, Ref)
    assert Address.city.id == f"{__name__}.Address.city"


def test_unlocated_targets_are_refused(world):
    """A target without a location (not placed, or not persistent) raises
    UnlocatedError, also a TypeError; nothing changes."""
    _root, _cities, book = world
    with pytest.raises(UnlocatedError) as info:
        book["a1"].city = City("nowhere")
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError):
        book["a1"].city = object()
    with pytest.raises(AttributeError):
        _ = book["a1"].city


def test_key_of_root_placed_object(world, conn):
    """Keys are '/'-joined names from the root mapping."""
    _root, cities, _book = world
    assert pclasses.refs.key_of(cities) == "/cities"
    assert pclasses.refs.key_of(cities["jena"]) == "/cities/jena"


def test_application_is_the_key_root(conn):
    """With an 'Application' object in the root, keys start under it."""
    root = conn.root()
    app = Folder()
    root["Application"] = app
    transaction.commit()
    place(app, "cities", Folder())["x"] = City()
    assert pclasses.refs.key_of(app["cities"]["x"]) == "/cities/x"
    doc = place(app, "doc", Address())
    doc.city = app["cities"]["x"]
    transaction.commit()
    assert doc.city is app["cities"]["x"]


def test_getphysicalpath_locates(world, conn):
    """Objects with getPhysicalPath (OFS) are located by it."""
    root, cities, book = world

    class Zopeish(City):
        def getPhysicalPath(self):
            return ("", "cities", "jena")

    z = Zopeish()
    conn.add(z)
    assert pclasses.refs.key_of(z) == "/cities/jena"


def test_registered_locator(world, conn):
    """A registered locator function gives the location of objects it knows."""
    root, cities, book = world
    hidden = City()
    conn.add(hidden)

    def locator(obj):
        return (cities, "jena") if obj is hidden else None

    pclasses.refs.register_locator(locator)
    try:
        assert pclasses.refs.key_of(hidden) == "/cities/jena"
    finally:
        pclasses.refs.unregister_locator(locator)


def test_always_refuses_removing_a_referenced_object(world):
    """Integrity on: removing a referenced target (or its container) raises
    ReferentialIntegrityError before anything changes; the transaction
    stays usable."""
    root, cities, book = world
    book["a1"].city = cities["jena"]
    transaction.commit()
    with pytest.raises(ReferentialIntegrityError) as info:
        del cities["jena"]
    assert isinstance(info.value, ValueError)
    (breach,) = info.value.breaches
    assert (breach.source, breach.name, breach.key) == (book["a1"], "city", "/cities/jena")
    assert "/cities/jena" in str(info.value) and "city" in str(info.value)
    with pytest.raises(ReferentialIntegrityError):
        remove(root, "cities")
    assert "jena" in cities and "cities" in root
    cities["x"] = City()
    transaction.commit()  # still usable
    assert book["a1"].city is cities["jena"]


def test_always_allows_removing_a_subtree_that_refers_to_itself(world):
    """Links from sources inside the removed subtree do not count."""
    root, cities, book = world
    inner = place(cities, "club", Address())
    inner.city = cities["jena"]
    transaction.commit()
    remove(root, "cities")
    transaction.commit()
    assert "cities" not in root


def test_unreferenced_removal_and_cleanup(world, conn):
    """Removing unreferenced objects just removes them; reference ids of
    targets nobody refers to any more are forgotten."""
    root, cities, book = world
    book["a1"].city = cities["gera"]
    book["a1"].city = None
    del cities["gera"]
    transaction.commit()
    registry = registry_of(conn)
    assert "/cities/gera" not in registry.keys


def test_none_mode_reads_dangling(world):
    """Integrity off: nothing is refused; reading a dangling reference
    raises DanglingReferenceError, a LookupError and ZODB's POSKeyError."""
    root, cities, book = world
    book["a1"].loose = cities["jena"]
    transaction.commit()
    del cities["jena"]
    transaction.commit()
    with pytest.raises(DanglingReferenceError) as info:
        _ = book["a1"].loose
    assert isinstance(info.value, LookupError) and isinstance(info.value, POSKeyError)
    assert info.value.key == "/cities/jena"
    # placing something again at the key makes it resolve
    cities["jena"] = City("New Jena")
    transaction.commit()
    assert book["a1"].loose.title == "New Jena"


def test_references_follow_moves_and_renames(world):
    """Moving or renaming a referenced object (or its container) keeps the
    references, in every mode; no source is rewritten."""
    root, cities, book = world
    a1 = book["a1"]
    a1.city = cities["jena"]
    a1.loose = cities["gera"]
    transaction.commit()
    serial = a1._p_serial
    rename(cities, "jena", "Jena")
    transaction.commit()
    assert a1.city is cities["Jena"]
    archive = place(root, "archive", Folder())
    move(cities, archive)
    transaction.commit()
    assert pclasses.refs.key_of(a1.city) == "/archive/cities/Jena"
    assert a1.loose.title == "Gera"
    assert a1._p_serial == serial


def test_move_refuses_bad_targets(world):
    """Moving into itself or onto a taken name is refused, nothing changes."""
    root, cities, book = world
    with pytest.raises(ValueError):
        move(cities, cities["jena"], "x")
    with pytest.raises(KeyError):
        move(cities["jena"], cities, "gera")
    assert set(cities) == {"gera", "jena"}


# ---------------------------------------------------------------------------
# gocept.reference: collection.txt


def test_refset_set_operations(world, db):
    """A RefSet holds targets with the usual set operations."""
    _root, cities, book = world
    a1 = book["a1"]
    a1.cities = {cities["jena"]}
    assert cities["jena"] in a1.cities and cities["gera"] not in a1.cities
    a1.cities.add(cities["gera"])
    assert len(a1.cities) == 2
    assert set(a1.cities) == {cities["jena"], cities["gera"]}
    a1.cities.discard(cities["jena"])
    assert set(a1.cities) == {cities["gera"]}
    assert a1.cities | {1} == {cities["gera"], 1}
    transaction.commit()
    other = db.open()
    try:
        assert [c.title for c in other.root()["book"]["a1"].cities] == ["Gera"]
    finally:
        other.close()
    a1.cities.clear()
    assert len(a1.cities) == 0 and not is_referenced(cities["gera"])


def test_refset_assignment_copies(world):
    """Assigning one source's set to another copies it."""
    _root, cities, book = world
    book["a2"] = Address()
    book["a1"].cities = [cities["jena"], cities["gera"]]
    book["a2"].cities = book["a1"].cities
    book["a1"].cities.discard(cities["jena"])
    assert set(book["a2"].cities) == {cities["jena"], cities["gera"]}
    assert len(referrers(cities["jena"])) == 1


def test_refset_integrity(world):
    """Members of an always-mode RefSet are protected like Ref targets."""
    _root, cities, book = world
    book["a1"].cities = [cities["jena"]]
    with pytest.raises(ReferentialIntegrityError):
        del cities["jena"]
    book["a1"].loose_cities = [cities["gera"]]
    del cities["gera"]
    with pytest.raises(DanglingReferenceError):
        list(book["a1"].loose_cities)


def test_unassigned_refset_is_an_attribute_error(world):
    _root, _cities, book = world
    with pytest.raises(AttributeError):
        _ = book["a1"].cities


# ---------------------------------------------------------------------------
# gocept.reference: integrity switched on and off (here: modes), the fixer


def test_loosening_takes_effect_at_once(world, conn):
    """Switching a reference to none lets removals through at once."""
    _root, cities, book = world
    book["a1"].city = cities["jena"]
    change = set_ref_mode(conn, Address.city, "none")
    assert (change.old, change.new) == ("always", "none")
    del cities["jena"]
    transaction.commit()
    with pytest.raises(DanglingReferenceError):
        _ = book["a1"].city
    set_ref_mode(conn, Address.city.id, "always", fix="null")
    transaction.commit()


def test_tightening_checks_existing_links(world, conn):
    """Tightening refuses when a link dangles, unless told to fix; no walk:
    the registry knows every link in every mode."""
    _root, cities, book = world
    book["a2"] = Address()
    book["a1"].loose = cities["jena"]
    book["a2"].loose = cities["gera"]
    del cities["jena"]
    transaction.commit()
    ref_id = Address.loose.id
    with pytest.raises(ReferentialIntegrityError) as info:
        set_ref_mode(conn, ref_id, "always")
    assert [(b.source, b.name, b.key) for b in info.value.breaches] == [
        (book["a1"], "loose", "/cities/jena")]
    dry = set_ref_mode(conn, ref_id, "always", fix="null", dry_run=True)
    assert not dry.applied and len(dry.dangling) == 1
    assert pclasses.refs.integrity.effective_mode(registry_of(conn), ref_id) == "none"
    done = set_ref_mode(conn, ref_id, "always", fix="null")
    assert done.fixed == 1
    transaction.commit()
    assert book["a1"].loose is None
    with pytest.raises(ReferentialIntegrityError):
        del cities["gera"]
    set_ref_mode(conn, ref_id, "none")
    transaction.commit()


def test_fix_remove_drops_the_reference(world, conn):
    _root, cities, book = world
    book["a1"].loose = cities["jena"]
    del cities["jena"]
    set_ref_mode(conn, Address.loose, "commit", fix="remove")
    with pytest.raises(AttributeError):
        _ = book["a1"].loose
    transaction.commit()
    set_ref_mode(conn, Address.loose, "none")
    transaction.commit()


def test_mode_survives_reopen(tmp_path):
    """The mode set at run time is stored in the database."""
    path = str(tmp_path / "m.fs")
    db = DB(FileStorage(path))
    conn = db.open()
    set_ref_mode(conn, Address.city, "none")
    transaction.commit()
    conn.close()
    db.close()
    db = DB(FileStorage(path))
    conn = db.open()
    try:
        from pclasses.refs.integrity import effective_mode

        assert effective_mode(registry_of(conn), Address.city.id) == "none"
    finally:
        transaction.abort()
        conn.close()
        db.close()


# ---------------------------------------------------------------------------
# commit mode


def test_commit_mode_checks_at_commit(world):
    """Inside the transaction anything goes; a commit leaving a link dangling fails."""
    root, cities, book = world
    book["a1"].late = cities["jena"]
    transaction.commit()
    del cities["jena"]  # allowed now
    with pytest.raises(ReferentialIntegrityError) as info:
        transaction.commit()
    assert info.value.breaches[0].key == "/cities/jena"
    transaction.abort()
    assert book["a1"].late is cities["jena"]


def test_commit_mode_remove_then_replace(world):
    """Removing and placing again at the same key before commit is fine."""
    root, cities, book = world
    book["a1"].late = cities["jena"]
    transaction.commit()
    del cities["jena"]
    cities["jena"] = City("Jena II")
    transaction.commit()
    assert book["a1"].late.title == "Jena II"


def test_commit_mode_with_own_transaction_manager(db, tmp_path):
    """The check runs in the transaction of the connection the objects belong to."""
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    try:
        root = conn.root()
        cities = place(root, "cities", Folder())
        cities["jena"] = City()
        a = place(root, "a", Address())
        a.late = cities["jena"]
        tm.commit()
        del cities["jena"]
        with pytest.raises(ReferentialIntegrityError):
            tm.commit()
        tm.abort()
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# the seed's two key changes


def test_rekey_moves_and_references_follow(world, conn):
    """Right object, wrong key: rekey gives the id (and ids under it) the new path."""
    root, cities, book = world
    book["a1"].city = cities["jena"]
    transaction.commit()
    registry = registry_of(conn)
    rid = registry.keys["/cities/jena"]
    obj = rekey(conn, "/cities/jena", "/cities/jena-thuringia")
    assert obj is cities["jena-thuringia"] and "jena" not in cities
    assert registry.ids[rid] == "/cities/jena-thuringia"
    transaction.commit()
    assert book["a1"].city is obj
    rekey(conn, "/cities", "/places")
    assert pclasses.refs.key_of(book["a1"].city) == "/places/jena-thuringia"
    transaction.commit()


def test_replace_target(world, conn):
    """Wrong object, right key: replace_target puts the new object at the key
    in always mode; references resolve to it; the old one is returned."""
    root, cities, book = world
    book["a1"].city = cities["jena"]
    transaction.commit()
    old_jena = cities["jena"]
    new_jena = City("Jena (correct)")
    assert replace_target(conn, "/cities/jena", new_jena) is old_jena
    assert book["a1"].city is new_jena
    transaction.commit()
    assert book["a1"].city.title == "Jena (correct)"


# ---------------------------------------------------------------------------
# events and introspection


@pytest.fixture
def events():
    seen = []
    zope.event.subscribers.append(seen.append)
    yield seen
    zope.event.subscribers.remove(seen.append)


def test_events(world, conn, events):
    """Added, removed, key changed, replaced, mode changed are notified with their data."""
    root, cities, book = world
    a1 = book["a1"]
    a1.city = cities["jena"]
    added = [e for e in events if isinstance(e, pclasses.ReferenceAdded)]
    assert [(e.source, e.name, e.key) for e in added] == [(a1, "city", "/cities/jena")]
    rename(cities, "jena", "Jena")
    changed = [e for e in events if isinstance(e, pclasses.KeyChanged)]
    assert [(e.old_key, e.new_key) for e in changed] == [("/cities/jena", "/cities/Jena")]
    a1.city = None
    removed = [e for e in events if isinstance(e, pclasses.ReferenceRemoved)]
    assert [(e.source, e.name, e.key) for e in removed] == [(a1, "city", "/cities/Jena")]
    new = City()
    old = replace_target(conn, "/cities/gera", new)
    (rep,) = [e for e in events if isinstance(e, pclasses.TargetReplaced)]
    assert (rep.key, rep.old, rep.new) == ("/cities/gera", old, new)
    set_ref_mode(conn, Address.city, "commit")
    (mode,) = [e for e in events if isinstance(e, pclasses.RefModeChanged)]
    assert (mode.ref_id, mode.old, mode.new) == (Address.city.id, "always", "commit")
    transaction.abort()


def test_vetoes(world):
    """Raising in a subscriber vetoes adding a reference or changing a key;
    nothing changes."""
    root, cities, book = world

    def veto(event):
        if isinstance(event, (pclasses.ReferenceAdded, pclasses.KeyChanged)):
            raise RuntimeError("no")

    zope.event.subscribers.append(veto)
    try:
        with pytest.raises(RuntimeError):
            book["a1"].city = cities["jena"]
        with pytest.raises(RuntimeError):
            rename(cities, "jena", "x")
    finally:
        zope.event.subscribers.remove(veto)
    with pytest.raises(AttributeError):
        _ = book["a1"].city
    assert "jena" in cities and not is_referenced(cities["jena"])


def test_events_through_zope_component(world):
    """Handlers registered with zope.component (its dispatcher being
    zope.event's only subscriber) see every assignment, also the fast
    repeated ones, and veto them; without a handler nothing is sent."""
    import zope.component

    root, cities, book = world
    a1 = book["a1"]
    a1.city = cities["jena"]
    a1.city = cities["gera"]                   # both targets' locations now cached
    transaction.commit()
    seen = []

    def handler(event):
        seen.append(event)

    def veto(event):
        raise RuntimeError("no")

    gsm = zope.component.getGlobalSiteManager()
    gsm.registerHandler(handler, (pclasses.ReferenceAdded,))
    gsm.registerHandler(handler, (pclasses.ReferenceRemoved,))
    try:
        a1.city = cities["jena"]
        assert [(type(e).__name__, e.key) for e in seen] == [
            ("ReferenceAdded", "/cities/jena"), ("ReferenceRemoved", "/cities/gera")]
        gsm.registerHandler(veto, (pclasses.ReferenceAdded,))
        try:
            with pytest.raises(RuntimeError):
                a1.city = cities["gera"]
        finally:
            gsm.unregisterHandler(veto, (pclasses.ReferenceAdded,))
        assert a1.city is cities["jena"]
    finally:
        gsm.unregisterHandler(handler, (pclasses.ReferenceAdded,))
        gsm.unregisterHandler(handler, (pclasses.ReferenceRemoved,))
    del seen[:]
    a1.city = cities["gera"]
    assert seen == []
    transaction.commit()
    assert [r.source for r in pclasses.referrers(cities["gera"])] == [a1]
    assert pclasses.referrers(cities["jena"]) == []


def test_introspection(world):
    """referrers lists who refers (source, name, key); is_referenced looks
    under the object by default; references lists what a source holds."""
    root, cities, book = world
    book["a2"] = Address()
    book["a1"].city = cities["jena"]
    book["a2"].cities = [cities["jena"], cities["gera"]]
    found = {(r.source, r.name, r.key) for r in referrers(cities["jena"])}
    assert found == {(book["a1"], "city", "/cities/jena"),
                     (book["a2"], "cities", "/cities/jena")}
    assert referrers(cities) == []
    assert len(referrers(cities, recursive=True)) == 3
    assert is_referenced(cities) and not is_referenced(cities, recursive=False)
    assert {(r.name, r.key) for r in references(book["a2"])} == {
        ("cities", "/cities/jena"), ("cities", "/cities/gera")}


def test_breaches_pickle(world):
    """ReferentialIntegrityError pickles with its breaches (source dropped)."""
    root, cities, book = world
    book["a1"].city = cities["jena"]
    with pytest.raises(ReferentialIntegrityError) as info:
        del cities["jena"]
    back = pickle.loads(pickle.dumps(info.value))
    assert back.breaches == info.value.breaches and str(back) == str(info.value)


def test_plain_mapping_containers(conn):
    """place/remove work on any mapping (here the root and a PersistentMapping)."""
    from persistent.mapping import PersistentMapping

    root = conn.root()
    pm = place(root, "pm", PersistentMapping())
    target = place(pm, "t", City())
    a = place(root, "a", Address())
    a.city = target
    transaction.commit()
    with pytest.raises(ReferentialIntegrityError):
        remove(pm, "t")
    a.city = None
    remove(pm, "t")
    transaction.commit()
    assert "t" not in pm


def test_failed_commit_leaves_database_as_it_was(world, db):
    """A commit refused by the commit-mode check writes nothing."""
    root, cities, book = world
    book["a1"].late = cities["jena"]
    transaction.commit()
    del cities["jena"]
    with pytest.raises(ReferentialIntegrityError):
        transaction.commit()
    transaction.abort()
    other = db.open()
    try:
        assert "jena" in other.root()["cities"]
    finally:
        other.close()


def _links_and_stored(conn, sources):
    from pclasses.refs.registry import STATE_KEY, registry_of

    links = set(registry_of(conn).links)
    stored = set()
    for s in sources:
        s._p_activate()
        for ref_key, value in (s.__dict__.get(STATE_KEY) or {}).items():
            for rid in (value if isinstance(value, tuple) else (value,)):
                if rid is not None:
                    stored.add((rid, ref_key, "unnamed", s._p_oid))
    return links, stored


def test_links_follow_savepoints_and_aborts(world, conn):
    """Assignments write their links lazily (when the registry is read, and
    at commit): after savepoint rollbacks, aborts and commits the registry's
    links are exactly the references the sources hold, and a removal sees
    a reference assigned just before it."""
    root, cities, book = world
    book["a2"] = Address()
    a1, a2 = book["a1"], book["a2"]
    a1.city = cities["jena"]
    transaction.commit()
    a1.city = cities["gera"]
    sp = transaction.savepoint()
    a2.city = cities["gera"]
    assert {r.source for r in pclasses.referrers(cities["gera"])} == {a1, a2}  # flushed here
    sp.rollback()
    links, stored = _links_and_stored(conn, [a1, a2])
    transaction.commit()
    links, stored = _links_and_stored(conn, [a1, a2])
    assert links == stored and len(stored) == 1
    assert [r.source for r in pclasses.referrers(cities["gera"])] == [a1]
    a2.city = cities["jena"]
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(cities, "jena")             # sees the link assigned just now
    transaction.abort()
    links, stored = _links_and_stored(conn, [a1, a2])
    assert links == stored
    assert pclasses.referrers(cities["jena"]) == []
    pclasses.remove(cities, "jena")
    transaction.commit()
