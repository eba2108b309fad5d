"""edges(): every persistent reference of a record, classified in one place.

Records come from ZODB's real writer (one and two databases) or are built in
the exact shapes ``ZODB/serialize.py`` documents.
"""

from __future__ import annotations

import io

import pytest
import transaction
import ZODB
import ZODB.FileStorage
import zodbpickle.pickle as zpickle
from persistent import Persistent
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef
from ZODB.MappingStorage import MappingStorage
from ZODB.serialize import referencesf
from ZODB.utils import p64, z64

from pclasses.errors import PClassesError, RecordDecodeError
from pclasses.record import reader
from pclasses.record.edges import Edge, EdgeKind, edges
from pclasses.record.reader import read_record, scan_record


class Item(Persistent):
    pass


class Marker:
    pass


MODULE = __name__
OID = p64(9)
CLASS_OID = p64(5)


def hand_record(meta, state, pids=()):
    table = {id(marker): pid for marker, pid in pids}
    f = io.BytesIO()
    for value in (meta, state):
        p = zpickle.Pickler(f, 3)
        p.persistent_id = lambda obj: table.get(id(obj))
        p.dump(value)
    return f.getvalue()


@pytest.fixture
def two_dbs():
    dbs = {}
    db_a = ZODB.DB(MappingStorage(), databases=dbs, database_name="a")
    db_b = ZODB.DB(MappingStorage(), databases=dbs, database_name="b")
    conn = db_a.open()
    yield db_a, db_b, conn
    transaction.abort()
    conn.close()
    db_a.close()
    db_b.close()


def test_every_kind_from_real_multi_database_writer(two_dbs):
    """Each reference ZODB writes between two databases comes out with its
    kind, target oid, database, class and the byte range of its oid."""
    db_a, db_b, conn = two_dbs
    conn_b = conn.get_connection("b")
    other = conn_b.root()["m"] = PersistentMapping()
    local = conn.root()["local"] = PersistentMapping()
    transaction.commit()
    root = conn.root()
    root["weak"] = WeakRef(local)
    root["xweak"] = WeakRef(other)
    root["xm"] = other
    transaction.commit()
    data = db_a.storage.load(z64)[0]
    got = edges(data)
    assert all(isinstance(e, Edge) for e in got)
    for e in got:
        assert data[e.start:e.end] == e.oid
    pm = ("persistent.mapping", "PersistentMapping")
    summary = sorted(((e.kind.value, e.oid, e.database, e.klass) for e in got), key=repr)
    assert summary == sorted([
        ("oid_class", local._p_oid, None, pm),
        ("weak", local._p_oid, None, None),
        ("weak", other._p_oid, "b", None),
        ("multi", other._p_oid, "b", pm),
    ], key=repr)
    weak = [e for e in got if e.kind is EdgeKind.WEAK]
    assert all(e.is_weak for e in weak) and [e.is_cross_database for e in weak].count(True) == 1


HAND = [
    ("oid", OID, EdgeKind.OID, None, None, None),
    ("oid_class-pair", (OID, ("m.od", "K")), EdgeKind.OID_CLASS, None, ("m.od", "K"), None),
    ("oid_class-global", (OID, Item), EdgeKind.OID_CLASS, None, (MODULE, "Item"), None),
    ("weak", ["w", (OID,)], EdgeKind.WEAK, None, None, None),
    ("weak-db", ["w", (OID, "other")], EdgeKind.WEAK, "other", None, None),
    ("multi_oid", ["n", ("other", OID)], EdgeKind.MULTI_OID, "other", None, None),
    ("multi", ["m", ("other", OID, Item)], EdgeKind.MULTI, "other", (MODULE, "Item"), None),
    ("legacy", [OID], EdgeKind.LEGACY, None, None, None),
]


@pytest.mark.parametrize("pid, kind, db, klass, _x", [c[1:] for c in HAND],
                         ids=[c[0] for c in HAND])
def test_hand_made_shapes(pid, kind, db, klass, _x):
    """Every documented persistent-id shape is one EdgeKind, and the reader's
    references say the same (they are built from the edges)."""
    marker = Marker()
    data = hand_record(Item, {"ref": marker}, [(marker, pid)])
    (e,) = edges(data)
    assert (e.kind, e.oid, e.database, e.klass, e.klass_oid) == (kind, OID, db, klass, None)
    assert data[e.start:e.end] == OID and e.pickle == 1
    (ref,) = scan_record(data).references
    assert (ref.kind, ref.oid, ref.database) == (kind, OID, db)
    assert read_record(data).state["ref"].edge == e


def test_unknown_shape_is_reported_not_followed():
    """A persistent id of no known shape is an UNKNOWN edge without an oid;
    the reader refuses to turn it into a reference."""
    marker = Marker()
    data = hand_record(Item, {"ref": marker}, [(marker, ["x", (OID,)])])
    (e,) = edges(data)
    assert e.kind is EdgeKind.UNKNOWN and e.oid is None and e.start == -1
    with pytest.raises(RecordDecodeError):
        _ = scan_record(data).references


def test_nested_class_reference_comes_first():
    """(oid, <reference to a class record>): the inner edge comes first and the
    outer edge names the class by its oid, like referencesf."""
    klass_marker, obj_marker = Marker(), Marker()
    data = hand_record(Item, {"a": obj_marker},
                       [(klass_marker, CLASS_OID), (obj_marker, (OID, klass_marker))])
    inner, outer = edges(data)
    assert (inner.kind, inner.oid) == (EdgeKind.OID, CLASS_OID)
    assert (outer.kind, outer.oid, outer.klass_oid) == (EdgeKind.OID_CLASS, OID, CLASS_OID)
    assert [e.oid for e in edges(data)] == referencesf(data)


def test_garbage_is_the_packages_error():
    """Bytes that are not a record raise RecordDecodeError (a PClassesError)
    naming the oid."""
    with pytest.raises(PClassesError) as info:
        edges(b"\x80\x03cmod\nK\n", oid=p64(7))
    assert isinstance(info.value, RecordDecodeError) and info.value.oid == p64(7)


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = reader._run

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(reader, "_run", counting)
    return calls


@pytest.mark.parametrize("shape", ["class-ref", "class-ref-args", "nested-ref", "newobj-on-ref"])
def test_resident_class_instances_decode_once(shape, count_decodes):
    """Records of database-resident classes (class metadata a reference, a
    reference with a resident class, a plain instance made by NEWOBJ on a
    reference) are decoded by the unpickler once, by scan_record and by
    read_record alike, and their references are complete."""
    klass, obj = Marker(), Marker()
    if shape == "class-ref":
        data = hand_record(klass, {"x": 1}, [(klass, CLASS_OID)])
    elif shape == "class-ref-args":
        data = hand_record((klass, None), {"x": 1}, [(klass, CLASS_OID)])
    elif shape == "nested-ref":
        data = hand_record(Item, {"a": obj}, [(klass, CLASS_OID), (obj, (OID, klass))])
    else:
        # NEWOBJ whose class is a persistent reference: a plain instance of
        # a resident class, as ZODB pickles it.
        data = _newobj_on_ref()
    for read in (scan_record, read_record):
        count_decodes.clear()
        info = read(data)
        refs = info.references
        assert len(count_decodes) == 1, (read.__name__, shape)
        assert CLASS_OID in [r.oid for r in refs]


def _newobj_on_ref() -> bytes:
    """Class pickle GLOBAL; state {'p': NEWOBJ(<ref CLASS_OID>, ())}."""
    meta = zpickle.dumps(Item, 3)
    state = (b"\x80\x03}q\x00X\x01\x00\x00\x00pq\x01C\x08" + CLASS_OID
             + b"Q)\x81q\x02s.")
    return meta + state
