"""Claims about pclasses.record.reader on records written by ZODB itself.

Every record here is either written by ZODB's real writer (committed through
a real ``ZODB.DB``) or built by hand with zodbpickle's pickler in exactly the
shape ``ZODB/serialize.py`` documents for the formats ZODB no longer writes.
"""

from __future__ import annotations

import datetime
import io

import pytest
import transaction
import ZODB
import ZODB.FileStorage
import zodbpickle.pickle as zpickle
from BTrees.OOBTree import OOBTree
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef
from ZODB.MappingStorage import MappingStorage
from ZODB.serialize import get_refs, referencesf
from ZODB.utils import get_pickle_metadata, p64, z64

from pclasses.errors import PClassesError, RecordDecodeError
from pclasses.record.reader import (
    ClassRef,
    PersistentRef,
    Reference,
    classify_reference,
    read_class,
    read_record,
    scan_record,
    split_record,
)

# ---------------------------------------------------------------------------
# Classes the records name (module level so that pickle can name them)
# ---------------------------------------------------------------------------


class Item(Persistent):
    """An ordinary persistent class: ZODB writes format 1 for it."""


class NewArgsItem(Persistent):
    """A persistent class with ``__getnewargs__``: ZODB writes format 2."""

    def __new__(cls, *args):
        return Persistent.__new__(cls)

    def __getnewargs__(self):
        return (1, "two")


class Plain:
    """A plain (non-persistent) class pickled inside a state."""

    def __init__(self, value=1):
        self.value = value


MODULE = Item.__module__
OID = p64(9)
CLASS_OID = p64(5)
# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def hand_record(meta, state, pids=()):
    """Two zodbpickle protocol-3 pickles; ``pids`` maps marker objects to ids."""
    table = {id(marker): pid for marker, pid in pids}

    def persistent_id(obj):
        return table.get(id(obj))

    f = io.BytesIO()
    p = zpickle.Pickler(f, 3)
    p.persistent_id = persistent_id
    p.dump(meta)
    p.dump(state)
    return f.getvalue()


class Marker:
    """Stands for a persistent object in a hand-made pickle."""


@pytest.fixture
def filedb(tmp_path):
    db = ZODB.DB(ZODB.FileStorage.FileStorage(str(tmp_path / "Data.fs")))
    conn = db.open()
    yield db, conn
    transaction.abort()
    conn.close()
    db.close()


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


def load(db, obj):
    return db.storage.load(obj._p_oid)[0]


def all_records(storage):
    for txn in storage.iterator():
        for rec in txn:
            if rec.data:
                yield rec.oid, rec.data


# ---------------------------------------------------------------------------
# Class metadata formats
# ---------------------------------------------------------------------------


def test_format1_named_from_real_writer(filedb):
    """A Persistent subclass committed by ZODB reads as format 1, named, no args."""
    db, conn = filedb
    conn.root()["x"] = obj = Item()
    transaction.commit()
    data = load(db, obj)
    for info in (scan_record(data), read_record(data)):
        assert info.klass == ClassRef(MODULE, "Item", None, 1)
        assert info.klass.kind == "named"
        assert info.klass.args is None
        assert info.klass.pair == (MODULE, "Item")
    assert read_class(data) == ClassRef(MODULE, "Item", None, 1)


def test_format2_from_real_writer(filedb):
    """A class with __getnewargs__ written by ZODB reads as format 2 with newargs."""
    db, conn = filedb
    conn.root()["x"] = obj = NewArgsItem()
    transaction.commit()
    data = load(db, obj)
    for info in (scan_record(data), read_record(data)):
        assert info.klass.format == 2
        assert info.klass.kind == "named"
        assert info.klass.pair == (MODULE, "NewArgsItem")
        assert info.klass.args == (1, "two")


def test_read_class_format2_from_real_writer(filedb):
    """read_class reports format 2 and newargs for a record ZODB wrote as format 2."""
    db, conn = filedb
    conn.root()["x"] = obj = NewArgsItem()
    transaction.commit()
    klass = read_class(load(db, obj))
    assert (klass.format, klass.args) == (2, (1, "two"))


def test_format3_hand_built():
    """((module, name), None) reads as format 3, named, without args."""
    data = hand_record(((MODULE, "Item"), None), {"a": 1})
    for klass in (scan_record(data).klass, read_record(data).klass, read_class(data)):
        assert klass == ClassRef(MODULE, "Item", None, 3)
        assert klass.kind == "named"
        assert klass.args is None


def test_format7_hand_built():
    """((module, name), (1, 2)) reads as format 7 with args (1, 2)."""
    data = hand_record(((MODULE, "Item"), (1, 2)), {})
    for klass in (scan_record(data).klass, read_record(data).klass, read_class(data)):
        assert klass == ClassRef(MODULE, "Item", None, 7)
        assert klass.args == (1, 2)


def test_format5_named_hand_built():
    """(klass, None) with a GLOBAL class reads as format 5, named."""
    data = hand_record((Item, None), {})
    for klass in (scan_record(data).klass, read_record(data).klass):
        assert klass == ClassRef(MODULE, "Item", None, 5)
        assert klass.kind == "named"


def test_read_class_format5_named_hand_built():
    """read_class reports format 5 for (klass, None) with a GLOBAL class."""
    data = hand_record((Item, None), {})
    assert read_class(data) == ClassRef(MODULE, "Item", None, 5)


@pytest.mark.parametrize(
    "shape, fmt, args",
    [("bare", 1, None), ("none", 5, None), ("newargs", 2, (1, 2))],
)
def test_persistent_class_reference_read_record(shape, fmt, args):
    """A class given as a persistent id reads as kind 'persistent' with that oid."""
    marker = Marker()
    meta = {"bare": marker, "none": (marker, None), "newargs": (marker, (1, 2))}[shape]
    data = hand_record(meta, {"a": 1}, [(marker, CLASS_OID)])
    for klass in (read_record(data).klass, read_class(data)):
        assert klass.kind == "persistent"
        assert klass.oid == CLASS_OID
        assert klass.format == fmt
        assert klass.args == args
        assert (klass.module, klass.name) == (None, None)


@pytest.mark.parametrize("shape", ["bare", "none"])
def test_persistent_class_reference_scan_record(shape):
    """scan_record reads a persistent class reference as kind 'persistent'."""
    marker = Marker()
    meta = marker if shape == "bare" else (marker, None)
    data = hand_record(meta, {}, [(marker, CLASS_OID)])
    klass = scan_record(data).klass
    assert (klass.kind, klass.oid) == ("persistent", CLASS_OID)


def test_nested_persistent_class_in_reference_scan_record():
    """scan_record classifies (oid, <persistent class ref>) like read_record does."""
    klass_marker, obj_marker = Marker(), Marker()
    data = hand_record(
        Item,
        {"a": obj_marker},
        [(klass_marker, CLASS_OID), (obj_marker, (OID, klass_marker))],
    )
    expected = read_record(data).references
    assert expected[-1].klass.oid == CLASS_OID  # read_record gets it right
    assert scan_record(data).references == expected


# ---------------------------------------------------------------------------
# Reference kinds
# ---------------------------------------------------------------------------


def test_reference_kinds_from_real_multi_database_writer(two_dbs):
    """Every reference kind ZODB's writer emits (two databases) classifies right."""
    db_a, db_b, conn = two_dbs
    conn_b = conn.get_connection("b")
    other_map = conn_b.root()["m"] = PersistentMapping()
    other_newargs = conn_b.root()["n"] = NewArgsItem()
    local_map = conn.root()["local"] = PersistentMapping()
    local_newargs = conn.root()["newargs"] = NewArgsItem()
    transaction.commit()
    root = conn.root()
    root["weak"] = WeakRef(local_map)
    root["xweak"] = WeakRef(other_map)
    root["xm"] = other_map
    root["xn"] = other_newargs
    transaction.commit()

    data = db_a.storage.load(z64)[0]
    pm = ClassRef("persistent.mapping", "PersistentMapping", None, 0)
    expected = [
        Reference("oid_class", local_map._p_oid, None, pm),
        Reference("oid", local_newargs._p_oid),
        Reference("weak", local_map._p_oid),
        Reference("weak", other_map._p_oid, "b"),
        Reference("multi", other_map._p_oid, "b", pm),
        Reference("multi_oid", other_newargs._p_oid, "b"),
    ]
    for info in (scan_record(data), read_record(data)):
        assert sorted(info.references, key=repr) == sorted(expected, key=repr)
        assert {r.kind for r in info.references} == {
            "oid_class",
            "oid",
            "weak",
            "multi",
            "multi_oid",
        }
    weak = [r for r in scan_record(data).references if r.kind == "weak"]
    assert all(r.is_weak for r in weak)
    assert [r.is_cross_database for r in weak].count(True) == 1


def _named(mod, name):
    return ClassRef(mod, name, None, 0)


HAND_PIDS = [
    ("oid", OID, Reference("oid", OID)),
    ("py2-str-oid", "abcdefgh", Reference("oid", b"abcdefgh")),
    (
        "oid_class-global",
        (OID, Item),
        Reference("oid_class", OID, None, _named(MODULE, "Item")),
    ),
    (
        "oid_class-pair",
        (OID, ("m.od", "K")),
        Reference("oid_class", OID, None, _named("m.od", "K")),
    ),
    ("weak", ["w", (OID,)], Reference("weak", OID)),
    ("weak-other-db", ["w", (OID, "other")], Reference("weak", OID, "other")),
    ("multi_oid", ["n", ("other", OID)], Reference("multi_oid", OID, "other")),
    (
        "multi",
        ["m", ("other", OID, Item)],
        Reference("multi", OID, "other", _named(MODULE, "Item")),
    ),
    ("legacy", [OID], Reference("legacy", OID)),
]


@pytest.mark.parametrize(
    "pid, expected", [c[1:] for c in HAND_PIDS], ids=[c[0] for c in HAND_PIDS]
)
def test_hand_made_reference_kinds(pid, expected):
    """Each hand-made persistent-id shape classifies to its documented kind."""
    marker = Marker()
    data = hand_record(Item, {"ref": marker}, [(marker, pid)])
    assert scan_record(data).references == [expected]
    info = read_record(data)
    assert info.references == [expected]
    ref = info.state["ref"]
    assert isinstance(ref, PersistentRef)
    assert ref.reference == expected
    assert expected.kind in ("oid", "oid_class", "weak", "multi_oid", "multi", "legacy")


@pytest.mark.parametrize(
    "pid, expected",
    [c[1:] for c in HAND_PIDS if "global" not in c[0] and c[0] != "multi"],
    ids=[c[0] for c in HAND_PIDS if "global" not in c[0] and c[0] != "multi"],
)
def test_classify_reference_on_raw_pids(pid, expected):
    """classify_reference on a raw persistent id gives the documented Reference."""
    assert classify_reference(pid) == expected


@pytest.mark.parametrize(
    "pid",
    [
        42,
        None,
        1.5,
        (OID,),
        (OID, Item, 3),
        (OID, 42),
        [],
        [1, 2, 3],
        [42],
        ["x", (OID,)],
        ["w", "not-a-tuple"],
        ["w", (OID, "db", "extra")],
        ["n", (OID,)],
        ["m", ("db", OID)],
        [7, (OID,)],
        ["w", (OID, 7)],
    ],
    ids=repr,
)
def test_classify_reference_rejects_malformed_pids(pid):
    """A persistent id ZODB could not load raises RecordDecodeError (a ValueError)."""
    with pytest.raises(RecordDecodeError) as exc:
        classify_reference(pid)
    assert isinstance(exc.value, PClassesError)
    assert isinstance(exc.value, ValueError)


# ---------------------------------------------------------------------------
# Agreement with ZODB's own readers on a real FileStorage
# ---------------------------------------------------------------------------


def _build_mixed_graph(tmp_path):
    dbs = {}
    db_a = ZODB.DB(
        ZODB.FileStorage.FileStorage(str(tmp_path / "a.fs")),
        databases=dbs,
        database_name="a",
    )
    db_b = ZODB.DB(MappingStorage(), databases=dbs, database_name="b")
    conn = db_a.open()
    conn_b = conn.get_connection("b")
    remote = conn_b.root()["remote"] = PersistentMapping({"k": Plain(3)})
    remote_na = conn_b.root()["na"] = NewArgsItem()
    transaction.commit()

    root = conn.root()
    tree = OOBTree()
    for i in range(400):
        tree[f"key{i:04d}"] = Plain(i) if i % 50 == 0 else i
    root["tree"] = tree
    root["list"] = PersistentList([Plain(), {"d": datetime.date(2020, 1, 2)}, "s"])
    root["item"] = item = Item()
    item.name = "thing"
    item.plain = Plain([1, 2])
    item.na = NewArgsItem()
    root["na"] = item.na
    transaction.commit()
    root["weak"] = WeakRef(item)
    root["xweak"] = WeakRef(remote)
    root["remote"] = remote
    root["remote_na"] = remote_na
    root["list"].append(item)
    item.back = root["list"]
    transaction.commit()
    return db_a, db_b, conn


def test_agreement_with_zodb_on_mixed_filestorage(tmp_path):
    """Each record: refs match referencesf/get_refs, class get_pickle_metadata."""
    db_a, db_b, conn = _build_mixed_graph(tmp_path)
    try:
        seen_kinds = set()
        seen_classes = set()
        n = 0
        for storage in (db_a.storage, db_b.storage):
            for oid, data in all_records(storage):
                n += 1
                for info in (scan_record(data, oid), read_record(data, oid)):
                    strong = [
                        r for r in info.references if r.kind in ("oid", "oid_class")
                    ]
                    assert [r.oid for r in strong] == referencesf(data)
                    zrefs = get_refs(data)
                    assert [r.oid for r in strong] == [o for o, _ in zrefs]
                    for ref, (_, zklass) in zip(strong, zrefs, strict=True):
                        if isinstance(zklass, tuple):
                            assert ref.klass.pair == zklass
                    seen_kinds.update(r.kind for r in info.references)
                    assert info.klass.kind == "named"
                    assert (info.klass.module, info.klass.name) == get_pickle_metadata(
                        data
                    )
                    seen_classes.add(info.klass.pair)
                    assert info.oid == oid
                assert read_class(data).pair == get_pickle_metadata(data)
        assert n > 10
        assert {"oid", "oid_class", "weak", "multi", "multi_oid"} <= seen_kinds
        assert ("BTrees.OOBTree", "OOBucket") in seen_classes  # buckets exist
        assert ("BTrees.OOBTree", "OOBTree") in seen_classes
        assert ("persistent.list", "PersistentList") in seen_classes
    finally:
        transaction.abort()
        conn.close()
        db_a.close()
        db_b.close()


def test_get_refs_class_pairs_agree():
    """Where get_refs gives a (module, name) class for a ref, the reader agrees."""
    m1, m2, m3 = Marker(), Marker(), Marker()
    data = hand_record(
        Item,
        {"a": m1, "b": m2, "c": [m3]},
        [(m1, (OID, ("pkg.mod", "Klass"))), (m2, p64(3)), (m3, (p64(4), ("x", "Y")))],
    )
    zrefs = get_refs(data)
    assert [k for _, k in zrefs] == [("pkg.mod", "Klass"), None, ("x", "Y")]
    refs = scan_record(data).references
    assert [(r.oid, r.klass.pair if r.klass else None) for r in refs] == zrefs


# ---------------------------------------------------------------------------
# Globals and state
# ---------------------------------------------------------------------------


def test_globals_list_state_classes_once_in_order(filedb):
    """datetime.date and a plain object in a state are listed once, after the class."""
    db, conn = filedb
    conn.root()["x"] = obj = Item()
    obj.when = datetime.date(2021, 5, 6)
    obj.thing = Plain("v")
    obj.again = datetime.date(1999, 1, 1)
    obj.other = Plain(2)
    transaction.commit()
    data = load(db, obj)
    for info in (scan_record(data), read_record(data)):
        assert info.globals[0] == (MODULE, "Item")
        assert ("datetime", "date") in info.globals
        assert (MODULE, "Plain") in info.globals
        assert len(info.globals) == len(set(info.globals))
        assert info.globals.index(("datetime", "date")) < info.globals.index(
            (MODULE, "Plain")
        )


def test_read_record_state_of_plain_persistent(filedb):
    """read_record's state of a Persistent with str/int attributes is a dict of them."""
    db, conn = filedb
    conn.root()["x"] = obj = Item()
    obj.name = "hello"
    obj.count = 42
    obj.neg = -7
    obj.big = 2**70
    obj.text = "h\xe9llo \u2603"
    transaction.commit()
    state = read_record(load(db, obj)).state
    assert type(state) is dict
    assert state == {
        "name": "hello",
        "count": 42,
        "neg": -7,
        "big": 2**70,
        "text": "h\xe9llo \u2603",
    }
    assert scan_record(load(db, obj)).state is None


def test_read_record_state_keeps_plain_objects_inert(filedb):
    """A plain object in the state reads as an Inert naming its class."""
    db, conn = filedb
    conn.root()["x"] = obj = Item()
    obj.thing = Plain("v")
    transaction.commit()
    thing = read_record(load(db, obj)).state["thing"]
    assert not isinstance(thing, Plain)
    assert thing.target == (MODULE, "Plain")
    assert thing.state == {"value": "v"}


def test_split_record_halves(filedb):
    """split_record returns the class and state pickles, which make the record."""
    db, conn = filedb
    conn.root()["x"] = obj = NewArgsItem()
    obj.a = 1
    transaction.commit()
    data = load(db, obj)
    head, tail = split_record(data)
    assert head + tail == data
    assert len(head) == scan_record(data).class_length
    assert head.endswith(b".") and tail.startswith(b"\x80\x03")
    assert zpickle.loads(tail) == {"a": 1}


def test_bytearray_and_memoryview_read_like_bytes(filedb):
    """bytearray and memoryview records read exactly like the same bytes."""
    db, conn = filedb
    conn.root()["x"] = obj = Item()
    obj.a = "b"
    transaction.commit()
    data = load(db, obj)
    for wrapped in (bytearray(data), memoryview(data)):
        assert scan_record(wrapped).klass == scan_record(data).klass
        assert read_record(wrapped).state == {"a": "b"}
        assert read_class(wrapped) == read_class(data)
