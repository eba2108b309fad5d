"""Claims about database-resident persistent classes (pclasses.pclass and friends).

Covers ``define_class`` / ``PersistentClass`` (ported from ZODB's own
``persistentclass.rst`` and ``tests/testpersistentclass.py``), the class
table, the hybrid reference strategy as the safe record reader sees it,
broken classes when a class leaves the table, in-place reloading (rename,
base change), conflicts, methods kept as source text, and property tests
with hypothesis.

Every database is real: a FileStorage in ``tmp_path`` opened with
``pclasses.open``, or a real ZEO server started in a subprocess.  Every
connection has its own ``transaction.TransactionManager``.  Nothing in
pclasses or ZODB is patched.
"""

from __future__ import annotations

import copy
import io
import keyword
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import persistent
import pytest
import transaction
import ZODB.POSException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from persistent import Persistent
from persistent.mapping import PersistentMapping
from ZODB.utils import z64

import pclasses
from netutil import free_port
from pclasses.classtable import TABLE_KEY
from pclasses.errors import PClassesError, RegistrationError
from pclasses.methods import SourceMethod
from pclasses.pclass import DuplicateGuidError
from pclasses.record.reader import GlobalRef, Inert, PersistentRef

# ---------------------------------------------------------------------------
# Importable helpers (records name them by module and name)


class Mixin:
    """A plain, importable mixin used as an added base."""

    def mix(self) -> str:
        return "mixed " + type(self).__name__


class PlainBase:
    """Plain base of non-persistent persistent classes (so bases can change).

    CPython refuses ``__bases__`` assignment from ``(object,)`` to anything
    else ("deallocator differs"), a limit of Python itself, not of pclasses.
    """


def init(self: Any, name: str) -> None:
    self.name = name


def foo(self: Any) -> tuple[Any, Any]:
    return self.name, self.kind


def bar(self: Any) -> str:
    return "bar " + self.name


def baz(self: Any) -> str:
    return "baz " + self.name


GREET = "def greet(self):\n    return 'hi ' + self.name\n"


# ---------------------------------------------------------------------------
# Databases and connections


class Store:
    """Opens (and reopens) one storage target with one registry.

    ``connect`` gives a connection with its own transaction manager.
    ``reopen`` closes every database opened so far and opens a new one on
    the same target, so nothing is served from a previous cache.
    """

    def __init__(
        self, target: str, registry: pclasses.ClassRegistry | None = None
    ) -> None:
        self.target = target
        self.registry = registry or pclasses.ClassRegistry()
        self.dbs: list[Any] = []
        self.conns: list[tuple[Any, transaction.TransactionManager]] = []
        self.db = self.open_db()

    def open_db(self) -> Any:
        db = pclasses.open(self.target, self.registry)
        self.dbs.append(db)
        return db

    def connect(self, db: Any = None) -> tuple[Any, transaction.TransactionManager]:
        tm = transaction.TransactionManager()
        conn = (db or self.db).open(tm)
        self.conns.append((conn, tm))
        return conn, tm

    def reopen(self) -> Any:
        self.close()
        self.db = self.open_db()
        return self.db

    def close(self) -> None:
        for conn, tm in self.conns:
            try:
                tm.abort()
                conn.close()
            except Exception:
                pass
        self.conns.clear()
        for db in self.dbs:
            db.close()
        self.dbs.clear()


@pytest.fixture
def store(tmp_path: Path):
    s = Store(str(tmp_path / "Data.fs"))
    yield s
    s.close()


def table_class(conn: Any, guid: str) -> Any:
    return pclasses.class_table(conn, create=False)[guid]


def load_record(conn: Any, oid: bytes) -> bytes:
    data, _serial = conn.db().storage.load(oid)
    return data


def user_attrs(cls: type, names: Any) -> dict[str, Any]:
    return {k: cls.__dict__[k] for k in names if k in cls.__dict__}


def sample_class(conn: Any, **kw: Any) -> Any:
    """The class of persistentclass.rst: plain instances, global functions."""
    ns = dict(__init__=init, foo=foo, kind="sample")
    ns.update(kw)
    return pclasses.define_class(conn, "C", (object,), ns)


# ---------------------------------------------------------------------------
# 1. persistentclass.rst and testpersistentclass.py, ported


def test_new_class_has_no_persistent_identity_until_committed(store):
    """A new class has no oid, jar or serial and is unchanged until saved."""
    conn, tm = store.connect()
    C = sample_class(conn)
    assert (C._p_oid, C._p_jar, C._p_serial, C._p_changed) == (None, None, None, False)
    c = C("first")
    assert c.foo() == ("first", "sample")
    C.bar = bar
    assert c.bar() == "bar first"
    assert (C._p_oid, C._p_jar, C._p_serial, C._p_changed) == (None, None, None, False)


def test_committed_class_gets_oid_jar_and_serial(store):
    """After commit a class has an oid, its connection as jar, a serial; unchanged."""
    conn, tm = store.connect()
    C = sample_class(conn)
    tm.commit()
    assert isinstance(C._p_oid, bytes) and len(C._p_oid) == 8
    assert C._p_jar is conn
    assert C._p_serial is not None
    assert C._p_changed is False


def test_p_changed_tracks_attribute_set_and_delete(store):
    """Setting or deleting an attribute of a committed class sets _p_changed."""
    conn, tm = store.connect()
    C = sample_class(conn)
    tm.commit()
    C.baz = baz
    assert C._p_changed is True
    assert C("first").baz() == "baz first"
    tm.commit()
    assert C._p_changed is False
    del C.kind
    assert C._p_changed is True
    tm.commit()
    C._v_scratch = 1
    C._p_note = 2
    assert C._p_changed is False


def test_abort_restores_the_committed_class(store):
    """Aborting undoes added, replaced and deleted class attributes."""
    conn, tm = store.connect()
    C = sample_class(conn, bar=bar)
    tm.commit()
    c = C("first")
    C.baz = baz
    C.bar = baz
    del C.kind
    tm.abort()
    with pytest.raises(AttributeError):
        c.baz()
    assert c.bar() == "bar first"
    assert C.kind == "sample"
    assert C._p_changed is False


def test_separate_connections_have_separate_class_objects(store):
    """Each connection has its own class object for the same stored class."""
    conn, tm = store.connect()
    C = sample_class(conn, bar=bar)
    tm.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    assert C2 is not C
    assert C2._p_oid == C._p_oid
    assert C2("other").bar() == "bar other"


def test_uncommitted_edits_are_invisible_to_other_connections(store):
    """Edits to a class are not seen elsewhere until committed and synced."""
    conn, tm = store.connect()
    C = sample_class(conn, bar=bar)
    tm.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    c, c2 = C("first"), C2("other")
    C.bar = baz
    assert c.bar() == "baz first"
    conn2.sync()
    assert c2.bar() == "bar other"
    tm.commit()
    conn2.sync()
    assert c2.bar() == "baz other"


def test_edits_in_second_connection_seen_after_sync(store):
    """A committed edit from another connection appears only after this one syncs."""
    conn, tm = store.connect()
    C = sample_class(conn)
    tm.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    C2.color = "red"
    tm2.commit()
    c = C("first")
    assert not hasattr(c, "color")
    conn.sync()
    assert c.color == "red"


def test_new_transaction_brings_committed_edits(store):
    """tm.begin() in a connection brings in edits committed elsewhere."""
    conn, tm = store.connect()
    C = sample_class(conn)
    tm.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    C.kind = "edited"
    tm.commit()
    assert C2.kind == "sample"
    tm2.begin()
    assert C2.kind == "edited"


def test_class_is_never_a_ghost(store):
    """An invalidated class reloads at once: _p_changed is False, never None."""
    conn, tm = store.connect()
    C = sample_class(conn)
    tm.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    C.kind = "edited"
    tm.commit()
    tm2.begin()
    assert C2._p_changed is False
    assert C2.__dict__["kind"] == "edited"
    C2._p_deactivate()
    assert C2._p_changed is False
    assert C2.__dict__["kind"] == "edited"
    C2._p_invalidate()
    assert C2._p_changed is False
    assert C2.__dict__["kind"] == "edited"


def test_stored_non_persistent_instance_seen_in_other_connection(store):
    """A plain instance of a persistent class stored in a mapping loads elsewhere."""
    conn, tm = store.connect()
    C = sample_class(conn)
    tm.commit()
    conn2, tm2 = store.connect()
    c = C("first")
    c.color = "blue"
    conn.root()["c"] = c
    tm.commit()
    conn2.sync()
    c2 = conn2.root()["c"]
    assert c2.color == "blue"
    assert type(c2) is table_class(conn2, pclasses.guid_of(C))


def test_persistent_subclass_of_persistent_class(store):
    """Instances of a class with bases (Persistent, C) load in other connections/DBs."""
    conn, tm = store.connect()
    C = sample_class(conn)
    P = pclasses.define_class(conn, "P", (Persistent, C), {"color": "green"})
    conn.root()["obs"] = PersistentMapping()
    conn.root()["obs"]["p"] = P("p")
    tm.commit()
    conn2, tm2 = store.connect()
    p2 = conn2.root()["obs"]["p"]
    assert p2.color == "green"
    assert p2.foo() == ("p", "sample")
    p2.color = "blue"
    tm2.commit()
    conn.sync()
    assert conn.root()["obs"]["p"].color == "blue"

    store.reopen()
    conn3, tm3 = store.connect()
    p3 = conn3.root()["obs"]["p"]
    assert not pclasses.is_broken(p3)
    assert (p3.color, p3.foo()) == ("blue", ("p", "sample"))
    assert type(p3).__bases__[1] is table_class(conn3, pclasses.guid_of(C))


def test_export_import_copy_shares_the_class(store):
    """Copying a persistent instance by export/import keeps the same class object."""
    conn, tm = store.connect()
    P = pclasses.define_class(conn, "P", (), {"color": "green"})
    conn.root()["obs"] = PersistentMapping()
    conn.root()["obs"]["p"] = P()
    conn.root()["obs"]["p"].color = "blue"
    tm.commit()
    p = conn.root()["obs"]["p"]
    f = conn.exportFile(p._p_oid, io.BytesIO())
    f.seek(0)
    cp = conn.importFile(f)
    assert cp is not p
    assert cp.color == "blue"
    assert cp.__class__ is p.__class__ is P
    tm.abort()


def test_class_can_refer_to_itself(store):
    """A class attribute that is the class itself survives storage."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C", (object,), {})
    C.me = C
    tm.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    assert C2.me is C2
    assert C2().__class__.__name__ == "C"
    store.reopen()
    conn3, _ = store.connect()
    C3 = table_class(conn3, pclasses.guid_of(C))
    assert C3.me is C3


def test_new_ghost_with_persistent_class():
    """PickleCache.new_ghost accepts a PersistentClass and leaves it non-ghost."""
    module = "*" + uuid.uuid4().hex
    PC = pclasses.PersistentClass("PC", (object,), {"__module__": module})
    assert (PC._p_oid, PC._p_jar, PC._p_serial) == (None, None, None)
    assert PC._p_changed is False
    jar = object()
    cache = persistent.PickleCache(jar, 10, 100)
    cache.new_ghost(b"1", PC)
    assert PC._p_oid == b"1"
    assert PC._p_jar is jar
    assert PC._p_serial is None
    assert PC._p_changed is False


# ---------------------------------------------------------------------------
# 2. Defining classes and the class table


def test_module_is_star_guid(store):
    """A defined class's __module__ is '*' followed by its guid, word for word."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "Item", ())
    guid = pclasses.guid_of(C)
    assert C.__module__ == "*" + guid
    uuid.UUID(guid)  # the default guid is a uuid
    D = pclasses.define_class(conn, "Item", (), guid="Shop-Item_2024")
    assert D.__module__ == "*Shop-Item_2024"
    assert pclasses.guid_of(D) == "Shop-Item_2024"
    assert pclasses.guid_of(D.__module__) == "Shop-Item_2024"
    assert (C.__name__, C.__qualname__) == ("Item", "Item")


def test_default_bases_are_persistent(store):
    """Empty bases give persistent instances; (object,) gives plain ones."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C")
    D = pclasses.define_class(conn, "D", (object,))
    assert C.__bases__ == (Persistent,)
    assert isinstance(C(), Persistent)
    assert D.__bases__ == (object,)
    assert not isinstance(D(), Persistent)
    assert isinstance(C, pclasses.PersistentClass)
    assert isinstance(D, pclasses.PersistentClass)


def test_namespace_becomes_class_attributes(store):
    """The namespace given to define_class becomes the class's attributes."""
    conn, tm = store.connect()
    ns = {"kind": "k", "greet": pclasses.method(GREET)}
    C = pclasses.define_class(conn, "C", (), ns)
    c = C()
    c.name = "x"
    assert (C.kind, c.greet()) == ("k", "hi x")


def test_class_table_keyed_by_guid_strings(store):
    """The class table maps guid strings to classes; it is root[TABLE_KEY]."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C")
    D = pclasses.define_class(conn, "D", guid="dee")
    table = pclasses.class_table(conn)
    assert isinstance(table, pclasses.ClassTable)
    assert sorted(table.keys()) == sorted([pclasses.guid_of(C), "dee"])
    assert all(isinstance(k, str) for k in table.keys())
    assert table[pclasses.guid_of(C)] is C and table["dee"] is D
    assert conn.root()[TABLE_KEY] is table
    tm.commit()
    conn2, tm2 = store.connect()
    t2 = pclasses.class_table(conn2)
    assert sorted(t2.keys()) == sorted(table.keys())
    assert t2["dee"].__name__ == "D"


def test_class_table_returns_the_same_table(store):
    """class_table(conn) returns the same table each time, before and after commit."""
    conn, tm = store.connect()
    assert pclasses.class_table(conn, create=False) is None
    t = pclasses.class_table(conn)
    assert pclasses.class_table(conn) is t
    assert pclasses.class_table(conn, create=False) is t
    tm.commit()
    assert pclasses.class_table(conn) is t
    conn2, _ = store.connect()
    t2 = pclasses.class_table(conn2)
    assert t2 is pclasses.class_table(conn2)
    assert t2 is pclasses.class_table(conn2, create=False)
    assert t2._p_oid == t._p_oid


def test_class_table_found_without_loading_root(store):
    """In a fresh database the class table is found while the root stays a ghost."""
    conn, tm = store.connect()
    pclasses.define_class(conn, "C", guid="g1")
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    table = pclasses.class_table(conn2, create=False)
    assert table is not None and "g1" in table
    assert conn2.get(z64)._p_changed is None  # root still a ghost
    assert pclasses.class_table(conn2) is table


def test_class_table_not_created_when_not_asked(store):
    """class_table(conn, create=False) on an empty database creates nothing."""
    conn, tm = store.connect()
    assert pclasses.class_table(conn, create=False) is None
    tm.commit()
    assert TABLE_KEY not in conn.root()


def test_duplicate_guid_refused(store):
    """Defining a class with a guid already in the table raises, changes nothing."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C", guid="same")
    with pytest.raises(DuplicateGuidError) as info:
        pclasses.define_class(conn, "Other", guid="same")
    assert isinstance(info.value, PClassesError) and isinstance(info.value, ValueError)
    assert "same" in str(info.value)
    assert pclasses.class_table(conn)["same"] is C
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    with pytest.raises(DuplicateGuidError):
        pclasses.define_class(conn2, "Other", guid="same")


@pytest.mark.parametrize(
    "bad",
    ["has space", "dot.ted", "*star", "-lead", "_lead", "ü", "a/b", "\na", 123, b"abc"],
)
def test_invalid_guid_refused(store, bad):
    """A guid other than letters, digits, '-', '_' (alnum first) is refused."""
    conn, tm = store.connect()
    with pytest.raises(RegistrationError):
        pclasses.define_class(conn, "C", guid=bad)
    table = pclasses.class_table(conn, create=False)
    assert table is None or len(table) == 0


def test_guid_with_trailing_newline_refused(store):
    """A guid ending in a newline is refused like other non-alphanumerics."""
    conn, tm = store.connect()
    with pytest.raises(RegistrationError):
        pclasses.define_class(conn, "C", guid="abc\n")


def test_empty_guid_refused(store):
    """An explicitly given empty guid is refused, not replaced by a random one."""
    conn, tm = store.connect()
    with pytest.raises(RegistrationError):
        pclasses.define_class(conn, "C", guid="")


@pytest.mark.parametrize("bad", ["", "1abc", "has space", "a.b", None, 3])
def test_invalid_class_name_refused(store, bad):
    """A class name that is not an identifier is refused."""
    conn, tm = store.connect()
    with pytest.raises(PClassesError):
        pclasses.define_class(conn, bad)


def test_explicit_guid_is_used(store):
    """A guid given to define_class is the class's guid and its table key."""
    conn, tm = store.connect()
    guid = str(uuid.uuid4())
    C = pclasses.define_class(conn, "C", guid=guid)
    assert pclasses.guid_of(C) == guid
    assert pclasses.class_table(conn)[guid] is C
    assert guid in C.__module__


def test_guid_of_a_normal_class_raises():
    """guid_of refuses a class that does not live in a database."""
    with pytest.raises(PClassesError):
        pclasses.guid_of(Mixin)
    with pytest.raises(PClassesError):
        pclasses.guid_of("*")


# ---------------------------------------------------------------------------
# 3. The hybrid strategy, as the safe record reader sees it


def test_persistent_instance_record_names_class_by_guid_module(store):
    """A persistent instance's record names ((guid module, name), None): format 3."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C", (), {"kind": "k"})
    conn.root()["obs"] = PersistentMapping({"p": C()})
    tm.commit()
    p = conn.root()["obs"]["p"]
    for reader in (pclasses.scan_record, pclasses.read_record):
        info = reader(load_record(conn, p._p_oid), p._p_oid)
        assert info.klass.format == 3
        assert info.klass.kind == "named"
        assert info.klass.module == C.__module__
        assert info.klass.name == "C"
        assert info.klass.oid is None
        assert C._p_oid not in [r.oid for r in info.references]
        assert (C.__module__, "C") not in info.globals
    # the container refers to the instance by a plain oid (no class part)
    holder = pclasses.scan_record(load_record(conn, conn.root()["obs"]._p_oid))
    (ref,) = holder.references
    assert (ref.kind, ref.oid, ref.klass) == ("oid", p._p_oid, None)


def test_non_persistent_instance_refers_to_class_record(store):
    """A plain instance in a container: an Inert called on the class record's ref."""
    conn, tm = store.connect()
    D = pclasses.define_class(conn, "D", (object,), {"kind": "plain"})
    d = D()
    d.v = 3
    conn.root()["holder"] = PersistentMapping({"d": d})
    tm.commit()
    holder = conn.root()["holder"]
    info = pclasses.read_record(load_record(conn, holder._p_oid), holder._p_oid)
    inert = info.state["data"]["d"]
    assert isinstance(inert, Inert)
    assert isinstance(inert.callable, PersistentRef)
    assert inert.callable.reference.oid == D._p_oid
    assert inert.target is inert.callable
    assert inert.state == {"v": 3}
    assert D._p_oid in [r.oid for r in info.references]
    assert (D.__module__, "D") not in info.globals


def test_other_references_stay_persistent_refs_next_to_plain_instance(store):
    """Next to a plain instance, other references still read as PersistentRef."""
    conn, tm = store.connect()
    D = pclasses.define_class(conn, "D", (object,), {})
    other = PersistentMapping()
    conn.root()["holder"] = PersistentMapping({"other": other, "d": D()})
    tm.commit()
    holder = conn.root()["holder"]
    info = pclasses.read_record(load_record(conn, holder._p_oid), holder._p_oid)
    ref = info.state["data"]["other"]
    assert isinstance(ref, PersistentRef)
    assert ref.reference.oid == other._p_oid


def test_class_record_keeps_name_bases_and_source(store):
    """The class record holds the name, the bases and method source as inert data."""
    conn, tm = store.connect()
    ns = {"kind": "k", "greet": pclasses.method(GREET)}
    C = pclasses.define_class(conn, "C", (), ns)
    tm.commit()
    info = pclasses.read_record(load_record(conn, C._p_oid), C._p_oid)
    assert info.klass.pair == ("pclasses.pclass", "PersistentClass")
    bases, cdict = info.state
    assert [b.dotted_pair for b in bases] == [("persistent", "Persistent")]
    assert cdict["kind"] == "k"
    assert cdict["__module__"] == C.__module__
    greet = cdict["greet"]
    assert isinstance(greet, Inert)
    assert issubclass(greet.callable, GlobalRef)
    assert greet.target == ("pclasses.methods", "SourceMethod")
    assert greet.state["source"] == GREET


# ---------------------------------------------------------------------------
# 4. Consequences: broken when gone from the table, back when put back


def _store_instances(store: Store) -> tuple[str, bytes]:
    conn, tm = store.connect()
    ns = {"kind": "k", "greet": pclasses.method(GREET)}
    C = pclasses.define_class(conn, "C", (), ns)
    p = C()
    p.name = "n"
    p.num = 3
    conn.root()["obs"] = PersistentMapping({"p": p})
    tm.commit()
    return pclasses.guid_of(C), p._p_oid


def test_deleted_class_makes_instances_broken(store):
    """A class removed from the table leaves its instances broken, state kept."""
    guid, oid = _store_instances(store)
    conn, tm = store.connect()
    del pclasses.class_table(conn)[guid]
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    p = conn2.root()["obs"]["p"]
    assert pclasses.is_broken(p)
    assert p._p_oid == oid
    assert pclasses.broken_state(p) == {"name": "n", "num": 3}
    assert type(p).__module__ == "*" + guid
    names = [(r.module, r.name) for r in store.registry.broken()]
    assert ("*" + guid, "C") in names


def test_deleted_class_broken_in_fresh_connection_of_same_db(store):
    """A connection opened after the deletion commits sees the instances broken."""
    guid, oid = _store_instances(store)
    conn, tm = store.connect()
    del pclasses.class_table(conn)[guid]
    tm.commit()
    conn2, _ = store.connect()  # conn is still open: not the pooled one
    p = conn2.get(oid)
    assert pclasses.is_broken(p)
    assert pclasses.broken_state(p) == {"name": "n", "num": 3}


def test_plain_instances_survive_class_leaving_the_table(store):
    """Plain instances load after their class leaves the table (they hold its oid)."""
    conn, tm = store.connect()
    D = pclasses.define_class(conn, "D", (object,), {"kind": "plain"})
    d = D()
    d.v = 1
    conn.root()["holder"] = PersistentMapping({"d": d})
    tm.commit()
    del pclasses.class_table(conn)[pclasses.guid_of(D)]
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    d2 = conn2.root()["holder"]["d"]
    assert not pclasses.is_broken(d2)
    assert (d2.v, d2.kind, type(d2).__name__) == (1, "plain", "D")
    assert type(d2)._p_oid == D._p_oid


def test_putting_class_back_restores_instances(store):
    """Putting the class back under its guid makes instances load again."""
    guid, oid = _store_instances(store)
    conn, tm = store.connect()
    table = pclasses.class_table(conn)
    C = table[guid]
    del table[guid]
    tm.commit()
    store.reopen()
    conn2, tm2 = store.connect()
    assert pclasses.is_broken(conn2.root()["obs"]["p"])
    # the class record is still there: load it by oid and put it back
    C2 = conn2.get(C._p_oid)
    pclasses.class_table(conn2)[guid] = C2
    tm2.commit()
    store.reopen()
    conn3, _ = store.connect()
    p = conn3.root()["obs"]["p"]
    assert not pclasses.is_broken(p)
    assert (p.greet(), p.num, type(p).kind) == ("hi n", 3, "k")


def test_new_class_with_same_guid_adopts_instances(store):
    """A new class defined with a deleted class's guid adopts its old instances."""
    guid, oid = _store_instances(store)
    conn, tm = store.connect()
    del pclasses.class_table(conn)[guid]
    tm.commit()
    store.reopen()
    conn2, tm2 = store.connect()
    New = pclasses.define_class(
        conn2, "Renamed", (), {"kind": "new", "shout": pclasses.method(
            "def shout(self):\n    return self.name.upper()\n")}, guid=guid)
    tm2.commit()
    store.reopen()
    conn3, _ = store.connect()
    p = conn3.root()["obs"]["p"]
    assert not pclasses.is_broken(p)
    assert type(p).__name__ == "Renamed"
    assert type(p)._p_oid == New._p_oid
    assert (p.shout(), p.num, p.kind) == ("N", 3, "new")


def test_deepcopy_of_plain_instance_shares_the_class(store):
    """copy.deepcopy of a plain instance copies the instance, not the class."""
    conn, tm = store.connect()
    D = pclasses.define_class(conn, "D", (object,), {"kind": "plain"})
    d = D()
    d.items = [1, 2]
    conn.root()["d"] = d
    tm.commit()
    conn2, _ = store.connect()
    d2 = conn2.root()["d"]
    D2 = table_class(conn2, pclasses.guid_of(D))
    for inst, cls in ((d, D), (d2, D2)):
        dup = copy.deepcopy(inst)
        assert dup is not inst
        assert dup.__class__ is cls
        assert dup.items == [1, 2] and dup.items is not inst.items
    assert len(pclasses.class_table(conn)) == 1


# ---------------------------------------------------------------------------
# 5. An instance directly in the root mapping


def test_instance_in_root_loads_in_new_database(store):
    """A persistent instance stored directly in the root loads in a new DB."""
    conn, tm = store.connect()
    ns = {"kind": "k", "greet": pclasses.method(GREET)}
    C = pclasses.define_class(conn, "C", (), ns)
    p = C()
    p.name = "root"
    conn.root()["p"] = p
    conn.root()["other"] = PersistentMapping()
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    p2 = conn2.root()["p"]
    assert not pclasses.is_broken(p2)
    assert type(p2) is table_class(conn2, pclasses.guid_of(C))
    assert (p2.greet(), p2.kind) == ("hi root", "k")
    assert store.registry.broken() == []


def test_plain_instance_in_root_loads_in_new_database(store):
    """A plain instance stored directly in the root loads in a new DB."""
    conn, tm = store.connect()
    D = pclasses.define_class(conn, "D", (object,), {"kind": "plain"})
    conn.root()["d"] = D()
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    d2 = conn2.root()["d"]
    assert type(d2) is table_class(conn2, pclasses.guid_of(D))
    assert d2.kind == "plain"


def test_instance_in_root_next_to_plain_instance_loads_in_new_database(store):
    """A persistent instance in the root loads next to a plain instance there."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C", (), {"kind": "k"})
    D = pclasses.define_class(conn, "D", (object,), {"kind": "plain"})
    conn.root()["p"] = C()
    conn.root()["d"] = D()
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    p2 = conn2.root()["p"]
    assert not pclasses.is_broken(p2)
    assert p2.kind == "k"


def test_instance_loads_while_root_is_ghost(store):
    """A persistent instance loads while the root is a ghost (table found anyway)."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C", (), {"kind": "k"})
    conn.root()["obs"] = PersistentMapping()
    tm.commit()
    guid = pclasses.guid_of(C)
    store.reopen()
    conn1, tm1 = store.connect()
    conn2, tm2 = store.connect()
    obs2 = conn2.root()["obs"]
    obs1 = conn1.root()["obs"]
    obs1["p"] = table_class(conn1, guid)()
    conn1.root()["touched"] = 1  # invalidates the root in conn2
    tm1.commit()
    tm2.begin()
    assert conn2.get(z64)._p_changed is None  # the root is a ghost again
    p = obs2["p"]
    assert not pclasses.is_broken(p)
    assert p.kind == "k"
    assert conn2.get(z64)._p_changed is None  # and still is


def test_instance_loads_while_root_is_ghost_next_to_plain_instance(store):
    """With a plain instance in the root, instances load while the root is a ghost."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C", (), {"kind": "k"})
    D = pclasses.define_class(conn, "D", (object,), {})
    conn.root()["d"] = D()
    conn.root()["obs"] = PersistentMapping()
    tm.commit()
    guid = pclasses.guid_of(C)
    store.reopen()
    conn1, tm1 = store.connect()
    conn2, tm2 = store.connect()
    obs2 = conn2.root()["obs"]
    obs1 = conn1.root()["obs"]
    obs1["p"] = table_class(conn1, guid)()
    conn1.root()["touched"] = 1  # invalidates the root in conn2
    tm1.commit()
    tm2.begin()
    assert conn2.get(z64)._p_changed is None  # the root is a ghost again
    p = obs2["p"]
    assert not pclasses.is_broken(p)
    assert p.kind == "k"


# ---------------------------------------------------------------------------
# 6. Invalidation reloads the class in place


def test_invalidation_updates_class_in_place(store):
    """A synced connection's instance sees a new method and a removed attribute."""
    conn1, tm1 = store.connect()
    C = pclasses.define_class(conn1, "C", (), {"kind": "k", "old": 1})
    conn1.root()["obs"] = PersistentMapping({"p": C()})
    tm1.commit()
    conn2, tm2 = store.connect()
    p2 = conn2.root()["obs"]["p"]
    C2 = type(p2)
    p2.name = "two"
    tm2.commit()
    assert not hasattr(p2, "greet")
    C.greet = pclasses.method(GREET)
    del C.old
    tm1.commit()
    assert p2.old == 1  # not yet synced
    tm2.begin()
    assert type(p2) is C2
    assert p2.greet() == "hi two"
    assert not hasattr(p2, "old")
    assert "old" not in C2.__dict__
    C.kind = "again"
    tm1.commit()
    conn2.sync()
    assert p2.kind == "again"


def _rename_and_rebase_setup(store: Store):
    conn1, tm1 = store.connect()
    C = pclasses.define_class(conn1, "C", (), {"kind": "p"})
    D = pclasses.define_class(conn1, "D", (PlainBase,), {"kind": "plain"})
    conn1.root()["obs"] = PersistentMapping({"p": C(), "d": D()})
    tm1.commit()
    return conn1, tm1, C, D


def test_rename_is_transactional(store):
    """Renaming a class is undone by abort and kept by commit."""
    conn1, tm1, C, D = _rename_and_rebase_setup(store)
    C.__name__ = "New"
    assert C._p_changed is True
    assert C.__name__ == "New"
    tm1.abort()
    assert (C.__name__, C.__qualname__) == ("C", "C")
    assert C._p_changed is False
    C.__name__ = "New"
    tm1.commit()
    store.reopen()
    conn, _ = store.connect()
    assert type(conn.root()["obs"]["p"]).__name__ == "New"


def test_base_change_is_transactional(store):
    """Changing a class's bases is undone by abort and kept by commit."""
    conn1, tm1, C, D = _rename_and_rebase_setup(store)
    p = conn1.root()["obs"]["p"]
    C.__bases__ = (Persistent, Mixin)
    assert C._p_changed is True
    assert p.mix() == "mixed C"
    tm1.abort()
    assert C.__bases__ == (Persistent,)
    assert not hasattr(p, "mix")
    C.__bases__ = (Persistent, Mixin)
    tm1.commit()
    store.reopen()
    conn, _ = store.connect()
    p2 = conn.root()["obs"]["p"]
    assert type(p2).__bases__ == (Persistent, Mixin)
    assert p2.mix() == "mixed C"


def test_rename_and_base_change_seen_by_existing_instances_elsewhere(store):
    """Existing instances elsewhere see the rename and new bases after sync."""
    conn1, tm1, C, D = _rename_and_rebase_setup(store)
    conn2, tm2 = store.connect()
    p2, d2 = conn2.root()["obs"]["p"], conn2.root()["obs"]["d"]
    C2, D2 = type(p2), type(d2)
    C.__name__ = "NewC"
    C.__bases__ = (Persistent, Mixin)
    D.__name__ = "NewD"
    D.__bases__ = (PlainBase, Mixin)
    tm1.commit()
    assert (C2.__name__, D2.__name__) == ("C", "D")
    assert not hasattr(p2, "mix")
    tm2.begin()
    assert type(p2) is C2 and type(d2) is D2
    assert (C2.__name__, C2.__qualname__) == ("NewC", "NewC")
    assert (D2.__name__, D2.__qualname__) == ("NewD", "NewD")
    assert C2.__bases__ == (Persistent, Mixin)
    assert D2.__bases__ == (PlainBase, Mixin)
    assert p2.mix() == "mixed NewC"
    assert d2.mix() == "mixed NewD"
    assert C2._p_changed is False and D2._p_changed is False


def test_abort_of_rename_and_rebase_leaves_other_connection_alone(store):
    """An aborted rename and base change never reach another connection."""
    conn1, tm1, C, D = _rename_and_rebase_setup(store)
    conn2, tm2 = store.connect()
    p2 = conn2.root()["obs"]["p"]
    C.__name__ = "Nope"
    C.__bases__ = (Persistent, Mixin)
    tm1.abort()
    tm2.begin()
    assert type(p2).__name__ == "C"
    assert type(p2).__bases__ == (Persistent,)


# ---------------------------------------------------------------------------
# 7. Conflicts


def test_conflicting_class_edits_raise_conflict_error(store):
    """Two connections edit one class: the second commit raises ConflictError."""
    conn1, tm1 = store.connect()
    C = pclasses.define_class(conn1, "C", (), {"a": 0})
    tm1.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    C.a = 1
    C2.b = 2
    tm1.commit()
    with pytest.raises(ZODB.POSException.ConflictError):
        tm2.commit()
    tm2.abort()
    assert (C2.a, hasattr(C2, "b")) == (1, False)


def test_conflicting_rename_raises_conflict_error(store):
    """Concurrent renames of one class conflict; the first one wins."""
    conn1, tm1 = store.connect()
    C = pclasses.define_class(conn1, "C")
    tm1.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    C.__name__ = "First"
    C2.__name__ = "Second"
    tm1.commit()
    with pytest.raises(ZODB.POSException.ConflictError):
        tm2.commit()
    tm2.abort()
    assert C2.__name__ == "First"


def test_storing_an_instance_does_not_edit_the_class(store):
    """Storing an instance while another connection edits the class: no conflict."""
    conn1, tm1 = store.connect()
    C = pclasses.define_class(conn1, "C", (), {"kind": 1})
    tm1.commit()
    conn2, tm2 = store.connect()
    C2 = table_class(conn2, pclasses.guid_of(C))
    conn2.root()["p"] = C2()
    C.kind = 2
    tm1.commit()
    tm2.commit()  # no ConflictError: the class was not written again
    _data, serial = store.db.storage.load(C._p_oid)
    assert serial == C._p_serial
    assert type(conn2.root()["p"]) is C2
    assert C2.kind == 2


# ---------------------------------------------------------------------------
# 8. Code in the database


def test_source_method_works_and_survives_reload(store):
    """A method given as source text runs, and runs again in a new database."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C", (), {"greet": pclasses.method(GREET)})
    p = C()
    p.name = "ann"
    assert p.greet() == "hi ann"
    assert isinstance(C.__dict__["greet"], SourceMethod)
    conn.root()["obs"] = PersistentMapping({"p": p})
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    p2 = conn2.root()["obs"]["p"]
    assert p2.greet() == "hi ann"
    assert type(p2).__dict__["greet"].source == GREET
    assert type(p2).__dict__["greet"].broken is None


def test_source_method_added_later_reaches_other_connection(store):
    """A source method added to a committed class runs elsewhere after sync."""
    conn, tm = store.connect()
    D = pclasses.define_class(conn, "D", (object,), {})
    d = D()
    d.name = "bo"
    conn.root()["d"] = d
    tm.commit()
    conn2, tm2 = store.connect()
    d2 = conn2.root()["d"]
    D.greet = pclasses.method(GREET)
    tm.commit()
    tm2.begin()
    assert d2.greet() == "hi bo"


@pytest.mark.parametrize(
    "source",
    [
        "def f(self):\n    return 1 +\n",
        "def f(self:\n    return 1\n",
        "def f(self):\nreturn 1\n",
        "def f(self):\n    x = )\n",
        "def f(self):\n    return 1\n  oops\n",
    ],
)
def test_syntax_error_at_definition(source):
    """A syntax error raises MethodSourceError (a SyntaxError) with line/column."""
    try:
        compile(source, "<x>", "exec")
    except SyntaxError as exc:
        expected = (exc.lineno, exc.offset)
    else:  # pragma: no cover
        pytest.fail("source should not compile")
    with pytest.raises(pclasses.MethodSourceError) as info:
        pclasses.method(source)
    err = info.value
    assert isinstance(err, SyntaxError) and isinstance(err, PClassesError)
    assert (err.lineno, err.offset) == expected
    assert f"line {expected[0]}" in str(err)


@pytest.mark.parametrize(
    "source",
    [
        "def a(self):\n    return 1\ndef b(self):\n    return 2\n",
        "x = 1\n",
        "",
        "class K:\n    pass\n",
        "import os\ndef f(self):\n    return 1\n",
        "lambda self: 1\n",
        "def f(self):\n    return 1\nprint('side effect')\n",
    ],
)
def test_source_must_be_exactly_one_function(source):
    """Source that is not exactly one def (two defs, statements, classes) is refused."""
    with pytest.raises(pclasses.MethodSourceError) as info:
        pclasses.method(source)
    assert isinstance(info.value, SyntaxError)


@pytest.mark.parametrize("bad", [None, b"def f(self): pass", 3])
def test_non_string_source_refused(bad):
    """Method source that is not a string is refused with MethodSourceError."""
    with pytest.raises(pclasses.MethodSourceError):
        pclasses.method(bad)


def test_def_failing_at_definition_refused():
    """A def whose default fails to evaluate is refused when the method is defined."""
    with pytest.raises(pclasses.MethodSourceError) as info:
        pclasses.method("def f(self, x=undefined_name):\n    return x\n")
    assert "undefined_name" in str(info.value)


def _class_with_broken_method(store: Store, broken_source: str) -> Any:
    """Commit a class whose method 'bad' has source that fails at load; reopen."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "Widget", (), {
        "ok": pclasses.method("def ok(self):\n    return 'fine'\n"),
        "bad": pclasses.method("def bad(self, x=1):\n    return x\n"),
    })
    # The stored state is the source text; make it text that fails on load.
    C.__dict__["bad"].source = broken_source
    conn.root()["w"] = C()
    tm.commit()
    store.reopen()
    conn2, _ = store.connect()
    return conn2.root()["w"]


def test_broken_method_raises_when_called_others_still_work(store):
    """A method failing at load raises BrokenMethodError naming class and method."""
    source = "def bad(self, x=undefined_name):\n    return x\n"
    w = _class_with_broken_method(store, source)
    cls = type(w)
    assert not pclasses.is_broken(w)
    assert w.ok() == "fine"
    assert cls.__dict__["bad"].broken is not None
    with pytest.raises(pclasses.BrokenMethodError) as info:
        w.bad()
    msg = str(info.value)
    assert "Widget" in msg and "bad" in msg
    assert isinstance(info.value, PClassesError)
    with pytest.raises(pclasses.BrokenMethodError):
        cls.bad(w)


def test_broken_method_with_syntax_error_names_the_method(store):
    """A stored method whose source no longer parses still names the method."""
    w = _class_with_broken_method(store, "def bad(self:\n")
    assert w.ok() == "fine"
    with pytest.raises(pclasses.BrokenMethodError) as info:
        w.bad()
    assert "Widget" in str(info.value)
    assert "bad()" in str(info.value)


# ---------------------------------------------------------------------------
# 9. Properties (hypothesis)


def _attr_name_ok(name: str) -> bool:
    return (
        name.isidentifier()
        and not keyword.iskeyword(name)
        # '_p_' and '_v_' are ZODB's; '__' names are Python's.
        and not name.startswith(("_p_", "_v_", "__"))
        and name not in ("mro",)
    )


attr_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,12}\Z").filter(_attr_name_ok)

plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=8,
)


class TempStore:
    """A Store in its own temporary directory (hypothesis examples need their own)."""

    def __enter__(self) -> Store:
        self._dir = tempfile.TemporaryDirectory()
        self.store = Store(str(Path(self._dir.name) / "Data.fs"))
        return self.store

    def __exit__(self, *exc: Any) -> None:
        self.store.close()
        self._dir.cleanup()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attrs=st.dictionaries(attr_names, plain_values, min_size=1, max_size=6))
def test_committed_attributes_seen_in_other_connection(attrs):
    """Picklable class attributes committed in one connection are seen elsewhere."""
    with TempStore() as store:
        conn1, tm1 = store.connect()
        C = pclasses.define_class(conn1, "C", ())
        tm1.commit()
        conn2, tm2 = store.connect()
        C2 = table_class(conn2, pclasses.guid_of(C))
        for k, v in attrs.items():
            setattr(C, k, v)
        tm1.commit()
        assert user_attrs(C2, attrs) == {}
        tm2.begin()
        assert user_attrs(C2, attrs) == attrs
        store.reopen()
        conn3, _ = store.connect()
        assert user_attrs(table_class(conn3, pclasses.guid_of(C)), attrs) == attrs


_NAMES = ["a", "b", "kind"]
_DELETED = object()

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.integers(0, 1),
            st.sampled_from(_NAMES),
            st.integers(0, 9),
        ),
        st.tuples(st.just("del"), st.integers(0, 1), st.sampled_from(_NAMES)),
        st.tuples(st.just("commit"), st.integers(0, 1)),
        st.tuples(st.just("abort"), st.integers(0, 1)),
        st.tuples(st.just("begin"), st.integers(0, 1)),
    ),
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops)
def test_random_edits_across_two_connections_match_model(steps):
    """Random edits/commits/aborts in two connections agree with a model."""
    with TempStore() as store:
        conn0, tm0 = store.connect()
        C0 = pclasses.define_class(conn0, "C", (), {"kind": 0})
        tm0.commit()
        guid = pclasses.guid_of(C0)
        conn1, tm1 = store.connect()
        sides = [(C0, tm0), (table_class(conn1, guid), tm1)]
        committed: dict[str, Any] = {"kind": 0}
        version = 0
        base = [dict(committed), dict(committed)]  # each connection's snapshot
        seen = [version, version]
        pending: list[dict[str, Any]] = [{}, {}]

        def view(i: int) -> dict[str, Any]:
            v = dict(base[i])
            for k, val in pending[i].items():
                if val is _DELETED:
                    v.pop(k, None)
                else:
                    v[k] = val
            return v

        def restart(i: int) -> None:
            pending[i] = {}
            base[i] = dict(committed)
            seen[i] = version

        for step in steps:
            op, i = step[0], step[1]
            cls, tm = sides[i]
            if op == "set":
                setattr(cls, step[2], step[3])
                pending[i][step[2]] = step[3]
            elif op == "del":
                if step[2] not in view(i):
                    continue
                delattr(cls, step[2])
                pending[i][step[2]] = _DELETED
            elif op == "commit":
                if pending[i] and seen[i] != version:
                    with pytest.raises(ZODB.POSException.ConflictError):
                        tm.commit()
                    tm.abort()
                else:
                    tm.commit()
                    if pending[i]:
                        committed = view(i)
                        version += 1
                restart(i)
            else:  # abort, begin: both end the transaction and sync
                tm.abort() if op == "abort" else tm.begin()
                restart(i)
            for j in (0, 1):
                assert user_attrs(sides[j][0], _NAMES) == view(j), (step, j)
        for j in (0, 1):
            sides[j][1].abort()
            assert user_attrs(sides[j][0], _NAMES) == committed
        store.reopen()
        conn, _ = store.connect()
        assert user_attrs(table_class(conn, guid), _NAMES) == committed


def test_attribute_starting_with_v_is_saved(store):
    """A class attribute named like '_value' marks the class changed; it is saved."""
    conn, tm = store.connect()
    C = pclasses.define_class(conn, "C")
    tm.commit()
    C._value = 1
    tm.commit()
    conn2, _ = store.connect()
    assert table_class(conn2, pclasses.guid_of(C)).__dict__.get("_value") == 1


# ---------------------------------------------------------------------------
# ZEO: the same claims against a real server



@pytest.fixture(scope="module")
def zeo_port(tmp_path_factory):
    directory = tmp_path_factory.mktemp("zeo")
    port = free_port()
    log = (directory / "zeo.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}",
         "-f", str(directory / "Data.fs")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log.flush()
                tail = (directory / "zeo.log").read_text()[-2000:]
                pytest.fail("runzeo exited: " + tail)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("runzeo did not start listening within 30 s")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def zeo(zeo_port):
    """Two ZEO client databases (separate client storages) on the same server."""
    registry = pclasses.ClassRegistry()
    a = Store(f"zeo://127.0.0.1:{zeo_port}", registry)
    b = Store(f"zeo://127.0.0.1:{zeo_port}", registry)
    yield a, b
    a.close()
    b.close()


def _until(
    tm: transaction.TransactionManager, check: Callable[[], bool], timeout: float = 10
) -> None:
    """Begin transactions until ``check()`` holds (ZEO invalidations are async)."""
    deadline = time.monotonic() + timeout
    while True:
        tm.begin()
        if check():
            return
        if time.monotonic() > deadline:
            pytest.fail("the other client never saw the committed change")
        time.sleep(0.02)


def _zeo_key() -> str:
    return "t-" + uuid.uuid4().hex


@pytest.mark.zeo
def test_zeo_invalidation_updates_class_in_place(zeo):
    """Over ZEO, another client's instance sees a new method, an attribute gone."""
    a, b = zeo
    key = _zeo_key()
    conn1, tm1 = a.connect()
    C = pclasses.define_class(conn1, "C", (), {"kind": "k", "old": 1})
    p = C()
    p.name = "zed"
    conn1.root()[key] = PersistentMapping({"p": p})
    tm1.commit()
    conn2, tm2 = b.connect()
    _until(tm2, lambda: key in conn2.root())
    p2 = conn2.root()[key]["p"]
    C2 = type(p2)
    assert C2 is not C and p2.old == 1
    C.greet = pclasses.method(GREET)
    del C.old
    tm1.commit()
    _until(tm2, lambda: "greet" in C2.__dict__)
    assert type(p2) is C2
    assert p2.greet() == "hi zed"
    assert not hasattr(p2, "old")
    assert C2._p_changed is False


@pytest.mark.zeo
def test_zeo_rename_and_base_change_seen_by_other_client(zeo):
    """Over ZEO, rename and base change reach another client's instances."""
    a, b = zeo
    key = _zeo_key()
    conn1, tm1 = a.connect()
    C = pclasses.define_class(conn1, "C", (), {"kind": "p"})
    D = pclasses.define_class(conn1, "D", (PlainBase,), {"kind": "plain"})
    conn1.root()[key] = PersistentMapping({"p": C(), "d": D()})
    tm1.commit()
    conn2, tm2 = b.connect()
    _until(tm2, lambda: key in conn2.root())
    p2, d2 = conn2.root()[key]["p"], conn2.root()[key]["d"]
    C.__name__ = "Gone"
    tm1.abort()
    assert C.__name__ == "C"
    C.__name__ = "NewC"
    C.__bases__ = (Persistent, Mixin)
    D.__name__ = "NewD"
    D.__bases__ = (PlainBase, Mixin)
    tm1.commit()
    _until(tm2, lambda: type(p2).__name__ == "NewC")
    assert type(d2).__name__ == "NewD"
    assert type(p2).__bases__ == (Persistent, Mixin)
    assert type(d2).__bases__ == (PlainBase, Mixin)
    assert (p2.mix(), d2.mix()) == ("mixed NewC", "mixed NewD")


@pytest.mark.zeo
def test_zeo_instance_in_root_loads_in_fresh_client(zeo, zeo_port):
    """Over ZEO, an instance stored directly in the root loads in a fresh client."""
    a, _ = zeo
    key = _zeo_key()
    conn1, tm1 = a.connect()
    C = pclasses.define_class(conn1, "C", (), {"greet": pclasses.method(GREET)})
    p = C()
    p.name = "rooted"
    conn1.root()[key] = p
    tm1.commit()
    fresh = Store(f"zeo://127.0.0.1:{zeo_port}")
    try:
        conn, _ = fresh.connect()
        p2 = conn.root()[key]
        assert not pclasses.is_broken(p2)
        assert p2.greet() == "hi rooted"
    finally:
        fresh.close()


@pytest.mark.zeo
def test_zeo_conflicting_class_edits(zeo):
    """Over ZEO, concurrent edits of one class from two clients conflict."""
    a, b = zeo
    conn1, tm1 = a.connect()
    C = pclasses.define_class(conn1, "C", (), {"a": 0})
    tm1.commit()
    guid = pclasses.guid_of(C)
    conn2, tm2 = b.connect()
    _until(tm2, lambda: guid in pclasses.class_table(conn2, create=False))
    C2 = table_class(conn2, guid)
    C.a = 1
    C2.a = 2
    tm1.commit()
    with pytest.raises(ZODB.POSException.ConflictError):
        tm2.commit()
    tm2.abort()
