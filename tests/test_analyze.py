"""The abstract pickle machine (:func:`pclasses.record.analyze`): where things sit.

Every result check runs against both implementations (the C one is skipped
when the optional extension was not built).  The references are the
project's safe reader (:func:`pclasses.record.scan_record` for persistent
references, :func:`pclasses.record.global_occurrences` for globals) and,
for protocols 0-5, a real :class:`pickle.Unpickler` whose ``persistent_load``
collects what it is given.
"""

from __future__ import annotations

import datetime
import importlib
import io
import pickle
import pickletools
import random
import subprocess
import sys

import pytest
import transaction
import ZODB
import zodbpickle.pickle as zpickle
import zodbpickle.pickle_3 as zpickle_py
from BTrees.OOBTree import OOBTree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef
from ZODB.MappingStorage import MappingStorage

from pclasses.record.analyze import (
    HAVE_C_ANALYZE,
    PID_KINDS,
    USE_CLASS_META,
    USE_INSTANTIATE,
    USE_NEWOBJ,
    USE_OTHER,
    USE_PID_CLASS,
    USE_REDUCE,
    Analysis,
    EdgeKind,
    GlobalSite,
    PidSite,
    Use,
    analyze_py,
    skim_py,
)
from pclasses.record.reader import global_occurrences, scan_record

skim_mod = importlib.import_module("pclasses.record.analyze")

IMPLS = [
    pytest.param(analyze_py, id="py"),
    pytest.param(
        skim_mod.analyze_c,
        id="c",
        marks=pytest.mark.skipif(not HAVE_C_ANALYZE, reason="pclasses.record._skim not built"),
    ),
]


class Thing(Persistent):
    """A persistent object with arbitrary attributes (only written, never loaded)."""


class NewArgs(Persistent):
    """Its __getnewargs__ makes ZODB write references without the class."""

    def __getnewargs__(self):
        return ()


class Plain:
    """A plain (non-persistent) sub-object: pickled with NEWOBJ at protocol 2+."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def outcome(fn, data):
    """The result, or ``("ValueError", message)``; anything else propagates."""
    try:
        return fn(data)
    except ValueError as e:
        return ("ValueError", str(e))


def by_global(a: Analysis, module: str, name: str) -> int:
    """The OR of ``uses`` over every entry naming ``module.name``."""
    uses = 0
    for m, n, _off, _end, _op, u in a.globals:
        if (m, n) == (module, name):
            uses |= u
    return uses


# ---------------------------------------------------------------------------
# Data: records ZODB wrote


@pytest.fixture(scope="module")
def zodb_records() -> list[bytes]:
    """Every data record ZODB wrote in a two-database setup (protocol 3)."""
    dbs: dict = {}
    db_a = ZODB.DB(MappingStorage(), databases=dbs, database_name="a")
    db_b = ZODB.DB(MappingStorage(), databases=dbs, database_name="b")
    try:
        conn = db_a.open()
        root = conn.root()
        root_b = conn.get_connection("b").root()
        # Objects of database b are committed before a refers to them.
        root_b["far"] = far = Thing()
        root_b["na"] = far_newargs = NewArgs()
        transaction.commit()
        root["pm"] = pm = PersistentMapping({f"key{i}": i * 1.5 for i in range(50)})
        tree = root["tree"] = OOBTree()
        for i in range(350):
            tree[f"item{i:05d}"] = [f"a{i}", (i, f"c{i}"), b"raw"]
        t = root["thing"] = Thing()
        t.plain = Plain(x=1, y=[Plain(z="deep")])
        t.when = datetime.date(2024, 2, 29)
        t.child = Thing()
        t.child.sibling = t
        t.same_twice = [pm, pm, (pm,)]  # one oid literal, several references
        t.weak = WeakRef(pm)
        t.newargs = NewArgs()
        t.far = far  # cross-database: ['m', ('b', oid, klass)]
        t.far_weak = WeakRef(far)  # ['w', (oid, 'b')]
        t.far_newargs = far_newargs  # ['n', ('b', oid)]
        root["plist"] = PersistentList([t, t.child, "s", 7])
        transaction.commit()
        conn.close()
        records = [
            rec.data
            for db in (db_a, db_b)
            for txn in db.storage.iterator()
            for rec in txn
            if rec.data is not None
        ]
    finally:
        db_a.close()
        db_b.close()
    assert len(records) >= 20
    return records


def test_zodb_records_cover_every_written_kind(zodb_records):
    """ZODB records hold references of kinds oid, oid_class, weak, multi_oid, multi."""
    kinds = {r.kind for d in zodb_records for r in scan_record(d).references}
    assert kinds >= {"oid", "oid_class", "weak", "multi_oid", "multi"}
    assert any(r.database for d in zodb_records for r in scan_record(d).references)


@pytest.mark.parametrize("impl", IMPLS)
def test_zodb_pids_match_scan_record(impl, zodb_records):
    """On ZODB records, pids match scan_record: order, kind, oid bytes, database."""
    for data in zodb_records:
        got = impl(data)
        refs = scan_record(data).references
        assert [p.kind for p in got.pids] == [r.kind for r in refs]
        pairs = zip(got.pids, refs, strict=True)
        for (_kind, off, length, database, _shared, which), ref in pairs:
            assert data[off : off + length] == ref.oid
            assert database == ref.database
            assert which == 1 and off >= got.end1


@pytest.mark.parametrize("impl", IMPLS)
def test_zodb_globals_match_global_occurrences(impl, zodb_records):
    """On ZODB records, GLOBAL entries match global_occurrences, repeats included."""
    for data in zodb_records:
        got = impl(data)
        assert [(m, n) for m, n, *_ in got.globals] == global_occurrences(data)[0]
        for m, _n, off, end, op, _u in got.globals:
            assert op == "global"
            assert data[off : off + 1] == b"c" and data[end - 1 : end] == b"\n"
            assert data[off + 1 :].startswith(m.encode() + b"\n")


@pytest.mark.parametrize("impl", IMPLS)
def test_zodb_record_summary_fields(impl, zodb_records):
    """ZODB records: end1 is the class pickle length, protocol 3, skim's values."""
    for data in zodb_records:
        got = impl(data)
        assert isinstance(got, Analysis)
        assert got.end1 == scan_record(data).class_length
        assert (got.end1, got.max_memo, got.has_ext) == skim_py(data)
        assert got.protocol == 3
        assert not (got.has_frame or got.has_stack_global or got.has_ext)


@pytest.mark.parametrize("impl", IMPLS)
def test_uses_class_metadata_and_reference_classes(impl, zodb_records):
    """Bit 8 marks the record's class global; bit 16 exactly the references' classes."""
    for data in zodb_records:
        got = impl(data)
        info = scan_record(data)
        first = got.globals[0]
        assert (first.module, first.name) == info.klass.pair and first.start < got.end1
        assert first.uses & USE_CLASS_META
        assert [g for g in got.globals if g.uses & USE_CLASS_META] == [first]
        with_class = {
            r.klass.pair
            for r in info.references
            if r.klass is not None and r.klass.pair
        }
        assert {
            (m, n) for m, n, *_rest, u in got.globals if u & USE_PID_CLASS
        } == with_class


@pytest.mark.parametrize("impl", IMPLS)
def test_uses_newobj_and_reduce(impl, zodb_records):
    """A plain sub-object's class has bit 2 (NEWOBJ); datetime.date bit 1 (REDUCE)."""
    data = next(d for d in zodb_records if b"Plain" in d)
    got = impl(data)
    assert by_global(got, __name__, "Plain") & USE_NEWOBJ
    assert by_global(got, "copyreg", "__newobj__") == 0  # not in protocol 3
    assert by_global(got, "datetime", "date") & USE_REDUCE
    assert not by_global(got, "datetime", "date") & USE_NEWOBJ


@pytest.mark.parametrize("impl", IMPLS)
def test_zodb_records_ok_to_patch(impl, zodb_records):
    """Every protocol-3 record ZODB wrote is ok_to_patch, with no shared oid literal."""
    for data in zodb_records:
        got = impl(data)
        assert got.ok_to_patch, got
        assert not any(p.shared for p in got.pids)


def _new_oid(old: bytes) -> bytes:
    return bytes((b + 0x5A) % 256 for b in reversed(old))


def patch_oids(data: bytes, a: Analysis) -> bytes:
    """Replace every pid's oid bytes by _new_oid of them (same length)."""
    out = bytearray(data)
    for _kind, off, length, *_ in a.pids:
        out[off : off + length] = _new_oid(data[off : off + length])
    return bytes(out)


@pytest.mark.parametrize("impl", IMPLS)
def test_patching_oids_rewrites_references_only(impl, zodb_records):
    """Patching oid bytes at every pid offset changes the references' oids only."""
    twice = 0
    for data in zodb_records:
        got = impl(data)
        offsets = [p.oid_start for p in got.pids]
        twice += len(offsets) != len(set(offsets))
        patched = patch_oids(data, got)
        old, new = scan_record(data), scan_record(patched)
        assert [r.oid for r in new.references] == [
            _new_oid(r.oid) for r in old.references
        ]
        assert [r.kind for r in new.references] == [r.kind for r in old.references]
        assert [r.database for r in new.references] == [
            r.database for r in old.references
        ]
        assert global_occurrences(patched) == global_occurrences(data)
        assert new.klass == old.klass
        again = impl(patched)
        assert again.globals == got.globals
        assert [(p.kind, p.oid_start, p.oid_length) for p in again.pids] == [
            (p.kind, p.oid_start, p.oid_length) for p in got.pids
        ]
    # One oid literal serving several references (BINGET) reports one offset.
    assert twice


# ---------------------------------------------------------------------------
# Hand-made records


def record(meta, state, protocol=3, persistent_id=None, pickler=zpickle.Pickler):
    """Two pickles written by one pickler (one memo), as ZODB writes a record."""
    f = io.BytesIO()
    p = pickler(f, protocol)
    if persistent_id is not None:
        p.persistent_id = persistent_id
    p.dump(meta)
    p.dump(state)
    return f.getvalue()


class Ref:
    """Stands for a persistent object: the test pickler writes ``pid`` for it."""

    def __init__(self, pid):
        self.pid = pid


def ref_pid(obj):
    return obj.pid if isinstance(obj, Ref) else None


class Py2Pickler(zpickle_py._Pickler):
    """zodbpickle's Python pickler writing bytes as Python 2 ``str`` (ZODB on Py 2)."""

    dispatch = dict(zpickle_py._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        if not self.bin:
            self.write(b"S" + repr(obj)[1:].encode("latin-1") + b"\n")
        elif n < 256:
            self.write(b"U" + bytes([n]) + obj)
        else:
            self.write(b"T" + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def persistent_id(self, obj):
        return ref_pid(obj)


@pytest.mark.parametrize("impl", IMPLS)
def test_oid_used_as_data_is_shared(impl):
    """An oid used by a pid and again as data (BINGET) is shared: not ok_to_patch."""
    oid = b"\x00" * 7 + b"\x07"
    data = record(Thing, {"ref": Ref((oid, Thing)), "raw": oid}, persistent_id=ref_pid)
    assert data.count(oid) == 1  # written once, fetched again with BINGET
    got = impl(data)
    assert got.pids == [("oid_class", data.index(oid), 8, None, True, 1)]
    assert got.ok_to_patch is False
    # The same record with an equal but distinct bytes object is not shared.
    data2 = record(
        Thing,
        {"ref": Ref((oid, Thing)), "raw": bytes(oid[:4]) + oid[4:]},
        persistent_id=ref_pid,
    )
    assert data2.count(oid) == 2
    got2 = impl(data2)
    assert got2.pids == [("oid_class", data2.index(oid), 8, None, False, 1)]
    assert got2.ok_to_patch is True


@pytest.mark.parametrize("impl", IMPLS)
def test_shared_through_containers_on_the_path(impl):
    """A pid's tuple or inner tuple also used as data makes its oid shared."""
    oid = b"12345678"
    inner = (oid,)
    for state in (
        {"r": Ref(["w", inner]), "d": inner},  # the inner tuple is data too
        {"r": Ref((oid, Thing)), "d": [oid]},  # the oid literal is data too
    ):
        got = impl(record(Thing, state, persistent_id=ref_pid))
        assert [p.shared for p in got.pids] == [True], state
        assert not got.ok_to_patch
    pid = (oid, Thing)
    got = impl(record(Thing, {"r": Ref(pid), "d": pid}, persistent_id=ref_pid))
    assert [p.shared for p in got.pids] == [True]
    # The same pid object written twice (BINGET of the tuple) is not sharing.
    got = impl(record(Thing, [Ref(pid), Ref(pid)], persistent_id=ref_pid))
    assert [p.shared for p in got.pids] == [False, False]
    assert got.pids[0].oid_start == got.pids[1].oid_start and got.ok_to_patch


@pytest.mark.parametrize("impl", IMPLS)
def test_every_reference_shape(impl):
    """Each pid shape is recognised with its kind, oid offset and database name."""
    oid = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    shapes = [
        (oid, "oid", None),
        ((oid, Thing), "oid_class", None),
        (["w", (oid,)], "weak", None),
        (["w", (oid, "other")], "weak", "other"),
        (["n", ("other", oid)], "multi_oid", "other"),
        (["m", ("caf\u00e9", oid, Thing)], "multi", "caf\u00e9"),
        ([oid], "legacy", None),
    ]
    for pid, kind, database in shapes:
        for protocol in (1, 2, 3):
            pickler = Py2Pickler if protocol < 3 else zpickle.Pickler
            data = record(Thing, {"x": Ref(pid)}, protocol, ref_pid, pickler)
            got = impl(data)
            (p,) = got.pids
            assert p == (kind, data.index(oid), 8, database, False, 1), (pid, protocol)
            assert got.ok_to_patch
            (ref,) = scan_record(data).references
            assert (ref.kind, ref.oid, ref.database) == (kind, oid, database)
            classes = {(m, n) for m, n, *_rest, u in got.globals if u & USE_PID_CLASS}
            assert classes == (
                {(__name__, "Thing")} if kind in ("oid_class", "multi") else set()
            )


@pytest.mark.parametrize("impl", IMPLS)
def test_unrecognised_pids_are_unknown(impl):
    """Other pid shapes, or non-literal oids, are 'unknown' and not ok_to_patch."""
    oid = b"abcdefgh"
    for pid in (
        (oid, Thing, 1),  # tuple of 3
        ["x", (oid,)],  # unknown tag
        ["w", (oid, 1, 2)],
        ["w", [oid]],  # arguments not a tuple
        [],
        42,
        ["n", (None, oid)],  # database not a string
    ):
        got = impl(record(Thing, {"x": Ref(pid)}, persistent_id=ref_pid))
        assert got.pids == [("unknown", -1, 0, None, False, 1)], pid
        assert not got.ok_to_patch
    # An oid built by REDUCE: below protocol 3 zodbpickle writes bytes as
    # _codecs.encode(...).
    data = record(Thing, {"x": Ref((oid, Thing))}, 2, ref_pid)
    got = impl(data)
    assert got.pids == [("unknown", -1, 0, None, False, 1)]
    assert by_global(got, "_codecs", "encode") == USE_REDUCE


@pytest.mark.parametrize("impl", IMPLS)
def test_protocol_1_reduce_and_reconstructor(impl):
    """Protocol 1 (Python 2 ZODB): _reconstructor and date are REDUCE callables."""
    oid = b"\x00" * 7 + b"\x09"
    state = {
        "plain": Plain(a=1),
        "when": datetime.date(2020, 1, 2),
        "ref": Ref((oid, Thing)),
    }
    data = record(Thing, state, 1, ref_pid, Py2Pickler)
    got = impl(data)
    assert got.protocol == 1
    # Below protocol 3 the pickler writes Python 2 module names (fix_imports).
    assert by_global(got, "copy_reg", "_reconstructor") == USE_REDUCE
    assert by_global(got, __name__, "Plain") == USE_OTHER  # an argument
    assert by_global(got, "datetime", "date") == USE_REDUCE
    assert by_global(got, __name__, "Thing") == USE_CLASS_META | USE_PID_CLASS
    assert got.pids == [("oid_class", data.index(oid), 8, None, False, 1)]
    assert got.ok_to_patch
    assert [(m, n) for m, n, *_ in got.globals] == global_occurrences(data)[0]


@pytest.mark.parametrize("impl", IMPLS)
def test_class_metadata_formats(impl):
    """Bit 8 goes to the class of formats 1, 2 and 5; formats 3 and 7 name no global."""
    for meta, bit in (
        (Thing, USE_CLASS_META),
        ((Thing, None), USE_CLASS_META),
        ((Thing, (1, 2)), USE_CLASS_META),
        ((("mod", "Cls"), None), 0),
    ):
        for protocol in (1, 2, 3):
            got = impl(record(meta, {"a": 1}, protocol))
            assert by_global(got, __name__, "Thing") == bit, (meta, protocol)


@pytest.mark.parametrize("impl", IMPLS)
def test_inst_and_obj(impl):
    """INST sets bit 4 on its own entry, OBJ on its class; entries locate opcodes."""
    data = b"cmod\nK\n.(K\x01imod\nC\n(cmod\nD\nK\x02o\x86."
    got = impl(data)
    assert got.globals == [
        ("mod", "K", 0, 7, "global", USE_CLASS_META),
        ("mod", "C", 11, 18, "inst", USE_INSTANTIATE),
        ("mod", "D", 19, 26, "global", USE_INSTANTIATE),
    ]
    assert got.protocol == 1 and got.pids == []
    assert global_occurrences(data)[0] == [("mod", "K"), ("mod", "C"), ("mod", "D")]


@pytest.mark.parametrize("impl", IMPLS)
def test_uses_accumulate_through_the_memo(impl):
    """A memoized global collects every use made through BINGET; a bare GET is none."""
    # GLOBAL memoized, used as class metadata, then REDUCE callable via BINGET,
    # then fetched and popped (no use).
    data = b"\x80\x02cmod\nK\nq\x01.\x80\x02h\x01)Rh\x010N."
    got = impl(data)
    assert got.globals == [("mod", "K", 2, 9, "global", USE_CLASS_META | USE_REDUCE)]
    # Used as a BUILD target (BUILD_TARGET, also OTHER) and as a dict value.
    data = b"cmod\nK\nq\x01.h\x01}b}K\x01h\x01s."
    assert impl(data).globals[0].uses == USE_CLASS_META | USE_OTHER | Use.BUILD_TARGET


@pytest.mark.parametrize("impl", IMPLS)
def test_persid_text_oid(impl):
    """PERSID (protocol 0) is an 'oid' pid located by its text (not patchable)."""
    data = b"cmod\nK\n.(dS'a'\nPpid42\nsS'b'\nPpid43\ns."
    got = impl(data)
    assert got.pids == [
        ("oid", data.index(b"pid42"), 5, None, False, 1),
        ("oid", data.index(b"pid43"), 5, None, False, 1),
    ]
    assert got.protocol == 0 and not got.ok_to_patch
    assert [r.oid for r in scan_record(data).references] == [b"pid42", b"pid43"]


# ---------------------------------------------------------------------------
# Protocols 0-5 against a real Unpickler


class _Collect(pickle.Unpickler):
    def __init__(self, f, seen):
        super().__init__(f)
        self.seen = seen

    def persistent_load(self, pid):
        self.seen.append(pid)
        return pid


def real_pids(data: bytes) -> list:
    seen: list = []
    f = io.BytesIO(data)
    u = _Collect(f, seen)
    u.load()
    u.load()
    return seen


def _values():
    shared = ["shared"]
    return [
        None,
        True,
        0,
        -1,
        2**70,
        1.5,
        "",
        "text",
        "\u2603" * 300,
        b"",
        b"\x00\n",
        b"B" * 300,
        bytearray(b"ba"),
        (),
        (1,),
        (1, 2),
        (1, 2, 3),
        (1, 2, 3, 4),
        [],
        [1, [2, [3]]],
        {},
        {"a": 1, 2: "b", (3,): [4]},
        set(),
        {1, 2, 3},
        frozenset({"x"}),
        [shared, shared, (shared,)],
        list(range(300)),
        datetime.date(2020, 2, 29),
        Plain(p=1),
        range(3),
        slice(1, 2),
        complex(1, 2),
        Exception("e"),
    ]


class _StdRefPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ref_pid(obj)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("protocol", range(6))
def test_standard_pickles_all_protocols(impl, protocol):
    """Varied values with references, protocols 0-5: pids match a real Unpickler."""
    # Below protocol 3 pickle writes bytes as _codecs.encode(...): str oids.
    oid = b"\x00\x01\x02\x03\x04\x05\x06\x07" if protocol >= 3 else "pid-0001"
    raw = oid if isinstance(oid, bytes) else oid.encode()
    soid = "pid0001"
    for i, value in enumerate(_values()):
        if protocol == 0:  # PERSID: ASCII string pids only
            refs = [Ref(soid), Ref(soid + "x")]
        else:
            refs = [
                Ref((oid, Plain)),
                Ref(["w", (oid, "db")]),
                Ref(["m", ("d", oid, Plain)]),
            ]
        state = {"v": value, "refs": refs, "again": [value, refs[i % len(refs)]]}
        f = io.BytesIO()
        p = _StdRefPickler(f, protocol)
        p.dump(Plain)
        p.dump(state)
        data = f.getvalue()
        got = impl(data)
        want = real_pids(data)
        assert len(got.pids) == len(want), value
        pairs = zip(got.pids, want, strict=True)
        for (kind, off, length, database, _shared, which), pid in pairs:
            assert which == 1
            if isinstance(pid, str):
                assert (kind, data[off : off + length]) == ("oid", pid.encode())
                continue
            exp_kind = {tuple: "oid_class"}.get(type(pid)) or {
                "w": "weak",
                "m": "multi",
            }[pid[0]]
            assert kind == exp_kind
            assert data[off : off + length] == raw
            assert database == (
                None if kind == "oid_class" else pid[1][1 if kind == "weak" else 0]
            )
        assert got.protocol == protocol
        frames = data[2] == 0x95 or data[got.end1 + 2] == 0x95
        assert got.has_frame == (protocol >= 4 and frames)
        assert got.has_stack_global == (protocol >= 4)
        assert (got.end1, got.max_memo, got.has_ext) == skim_py(data)
        if protocol >= 4:
            assert not got.ok_to_patch
            sg = [g for g in got.globals if g.opcode == "stack_global"]
            assert sg and all(data[g.start] == 0x93 and g.end == g.start + 1 for g in sg)
            assert (__name__, "Plain") in {(g.module, g.name) for g in sg}


# Arguments by pickletools argument type; memo indices are 7 (stored first).
_ARG = {
    "uint1": b"\x07",
    "uint2": b"\x07\x01",
    "uint4": b"\x07\x00\x00\x00",
    "int4": b"\xff\xff\xff\xff",
    "uint8": b"\x00" * 8,  # FRAME length 0
    "long1": b"\x02\x01\x80",
    "long4": b"\x02\x00\x00\x00\x01\x80",
    "decimalnl_short": b"7\n",
    "decimalnl_long": b"12L\n",
    "floatnl": b"1.5\n",
    "float8": b"?\xf8\x00\x00\x00\x00\x00\x00",
    "stringnl": b"'a\\nb'\n",
    "stringnl_noescape": b"pid\n",
    "stringnl_noescape_pair": b"module\nname\n",
    "string1": b"\x02ab",
    "string4": b"\x02\x00\x00\x00ab",
    "bytes1": b"\x02ab",
    "bytes4": b"\x02\x00\x00\x00ab",
    "bytes8": b"\x02" + b"\x00" * 7 + b"ab",
    "bytearray8": b"\x02" + b"\x00" * 7 + b"ab",
    "unicodestringnl": b"a\\u2603\n",
    "unicodestring1": b"\x02ab",
    "unicodestring4": b"\x02\x00\x00\x00ab",
    "unicodestring8": b"\x02" + b"\x00" * 7 + b"ab",
}
_INPUT = {"mark": b"(", "stackslice": b"NN"}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "op", [o for o in pickletools.opcodes if o.name != "STOP"], ids=lambda o: o.name
)
def test_every_opcode_stack_effect(impl, op):
    """Each opcode leaves as many stack entries as pickletools documents."""
    inputs = b"".join(_INPUT.get(x.name, b"N") for x in op.stack_before)
    body = op.code.encode("latin-1") + (_ARG[op.arg.name] if op.arg else b"")
    # The memo holds index 7; one base item sits under the opcode's inputs.
    head = b"N.\x80\x05Nq\x070N" + inputs + body
    after = len(op.stack_after) + 1
    got = impl(head + b"0" * after + b"N.")
    assert got.end1 == 2
    with pytest.raises(ValueError, match="stack underflow: opcode 0x30"):
        impl(head + b"0" * (after + 1) + b"N.")


@pytest.mark.parametrize("impl", IMPLS)
def test_frame_reported(impl):
    """A protocol-4 pickle with a FRAME sets has_frame; pids are located as usual."""
    oid = b"ABCDEFGH"
    f = io.BytesIO()
    p = _StdRefPickler(f, 4)
    p.dump(Plain)
    p.dump({"r": Ref((oid, Plain)), "pad": "x" * 100})
    data = f.getvalue()
    got = impl(data)
    assert got.has_frame and got.has_stack_global and got.protocol == 4
    assert got.pids == [("oid_class", data.index(oid), 8, None, False, 1)]


# ---------------------------------------------------------------------------
# Hypothesis: random ZODB-like records

_ASCII8 = st.binary(min_size=8, max_size=8).map(lambda b: bytes(c & 0x7F for c in b))
_DBNAME = st.text(alphabet="abcdefgh\u00e9\u2603", min_size=1, max_size=6)
_SHAPES = ("oid", "oid_class", "weak", "weak_db", "multi_oid", "multi", "legacy")
_KLASSES = (PersistentMapping, OOBTree, Thing)


@st.composite
def zodb_like_records(draw):
    protocol = draw(st.integers(min_value=1, max_value=3))
    py2 = protocol < 3 and draw(st.booleans())
    # Oids: bytes at protocol 3 (or Python 2 strings); zodbpickle's C pickler
    # writes bytes below protocol 3 as _codecs.encode(...), so str oids there.
    raw = draw(st.lists(_ASCII8, min_size=1, max_size=4, unique=True))
    oids = [r if protocol == 3 or py2 else r.decode("ascii") for r in raw]
    refs = []
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        oid = draw(st.sampled_from(oids))
        shape = draw(st.sampled_from(_SHAPES))
        klass = draw(st.sampled_from(_KLASSES))
        if shape in ("oid_class", "multi") and draw(st.integers(0, 4)) == 0:
            klass = Ref(draw(st.sampled_from(oids)))  # a persistent class
        db = draw(_DBNAME)
        pid = _make_pid(shape, oid, klass, db)
        refs.append(Ref(pid))
    as_data = draw(st.lists(st.sampled_from(oids), max_size=2))
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=5)
        | st.binary(max_size=5)
        | st.sampled_from(refs)
    )
    if as_data:
        leaves = leaves | st.sampled_from(as_data)
    value = draw(
        st.recursive(
            leaves,
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.lists(inner, max_size=4).map(tuple)
                | st.dictionaries(st.text(max_size=3), inner, max_size=4)
            ),
            max_leaves=20,
        )
    )
    state = {"v": value, "refs": refs}  # every reference at least once
    meta = draw(
        st.sampled_from(
            [Thing, (Thing, None), (Thing, (1,)), ((__name__, "Thing"), None)]
        )
    )
    pickler = Py2Pickler if py2 else zpickle.Pickler
    data = record(meta, state, protocol, ref_pid, pickler)
    used_as_data = {id(o) for o in _leaves_of(value) if any(o is x for x in oids)}
    return data, used_as_data, oids


def _make_pid(shape, oid, klass, db):
    if shape == "oid":
        return oid
    if shape == "oid_class":
        return (oid, klass)
    if shape == "weak":
        return ["w", (oid,)]
    if shape == "weak_db":
        return ["w", (oid, db)]
    if shape == "multi_oid":
        return ["n", (db, oid)]
    if shape == "multi":
        return ["m", (db, oid, klass)]
    return [oid]  # legacy


def _leaves_of(value):
    stack, out = [value], []
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        else:
            out.append(v)
    return out


def _plain_state(data: bytes):
    """Both pickles loaded with references replaced by a marker (for comparison)."""
    f = io.BytesIO(data)
    u = zpickle.Unpickler(f, encoding="ASCII", errors="bytes")
    u.persistent_load = lambda pid: "<ref>"
    return u.load(), u.load()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=zodb_like_records())
def test_hypothesis_zodb_like_records(case):
    """Random ZODB-like records (protocols 1-3): C == Python; pids match scan_record."""
    data, used_as_data, oids = case
    got = analyze_py(data)
    if HAVE_C_ANALYZE:
        assert skim_mod.analyze_c(data) == got
    refs = scan_record(data).references
    assert [p.kind for p in got.pids] == [r.kind for r in refs]
    by_offset = {}
    for (_kind, off, length, database, shared, which), ref in zip(
        got.pids, refs, strict=True
    ):
        assert data[off : off + length] == ref.oid
        assert database == ref.database and which == 1
        by_offset.setdefault(off, set()).add(shared)
    # One literal per offset: shared or not, whichever pid reports it.
    assert all(len(s) == 1 for s in by_offset.values())
    assert [(m, n) for m, n, *_ in got.globals] == global_occurrences(data)[0]
    # An oid object also used as data is shared; otherwise not.
    for (_kind, _off, _length, _db, shared, _w), ref in zip(
        got.pids, refs, strict=True
    ):
        objs = [
            o for o in oids if (o if isinstance(o, bytes) else o.encode()) == ref.oid
        ]
        assert shared == any(id(o) in used_as_data for o in objs)
    if got.ok_to_patch:
        patched = patch_oids(data, got)
        assert [r.oid for r in scan_record(patched).references] == [
            _new_oid(r.oid) for r in refs
        ]
        assert _plain_state(patched) == _plain_state(data)
        assert global_occurrences(patched) == global_occurrences(data)


# ---------------------------------------------------------------------------
# Malformed input


@pytest.mark.parametrize("impl", IMPLS)
def test_every_truncated_prefix_raises(impl, zodb_records):
    """Every proper prefix of a real record raises ValueError naming an offset."""
    samples = sorted(zodb_records, key=len)
    for data in (samples[0], samples[len(samples) // 2], samples[-1]):
        for k in range(len(data)):
            with pytest.raises(ValueError, match=r"offset \d+"):
                impl(data[:k])


def test_truncated_prefixes_same_message(zodb_records):
    """C and Python raise the same message for each truncated prefix."""
    if not HAVE_C_ANALYZE:
        pytest.skip("pclasses.record._skim not built")
    data = max(zodb_records, key=len)
    for k in range(0, len(data), 7):
        assert outcome(skim_mod.analyze_c, data[:k]) == outcome(analyze_py, data[:k])


@pytest.mark.parametrize("impl", IMPLS)
def test_machine_errors(impl):
    """Underflow, no MARK, unset memo index, memo bomb: ValueErrors with offsets."""
    cases = [
        (b"0.N.", "stack underflow: opcode 0x30 at offset 0 (first pickle)"),
        (b".N.", "stack underflow: opcode 0x2e at offset 0 (first pickle)"),
        (b"N.N\x86.", "stack underflow: opcode 0x86 at offset 3 (second pickle)"),
        (b"N.N(R.", "stack underflow: opcode 0x52 at offset 4 (second pickle)"),
        (b"Nt.N.", "no MARK: opcode 0x74 at offset 1 (first pickle)"),
        (b"N.h\x05.", "memo index 5 is not set at offset 2 (second pickle)"),
        (b"N.g7\n.", "memo index 7 is not set at offset 2 (second pickle)"),
        (b"N.gx\n.", "malformed GET argument at offset 2 (second pickle)"),
        (b"Nq\x01.h\x01.", None),  # the memo is shared by both pickles
        (b"p0\n.N.", "stack underflow: opcode 0x70 at offset 0 (first pickle)"),
        (b"}(K\x01u.N.", "odd number of items: opcode 0x75 at offset 4 (first pickle)"),
        (b"N(a.N.", "stack underflow: opcode 0x61 at offset 2 (first pickle)"),
        (
            b"Nr\x00\x00\x00\x40.N.",
            "memo index 1073741824 at offset 1 (first pickle) is more",
        ),
        (
            b"Np99\n.N.",
            "memo index 99 at offset 1 (first pickle) is more than a 8-byte",
        ),
        (b"(t.\x99.", "unknown opcode 0x99 at offset 3 (second pickle)"),
        (b"N.N", "missing STOP: second pickle runs to the end of data at offset 3"),
        (
            b"N.\x8c\x05ab",
            "truncated argument of opcode 0x8c at offset 2 (second pickle)",
        ),
    ]
    for data, message in cases:
        if message is None:
            assert impl(data).end1 == 4
            continue
        with pytest.raises(ValueError) as info:
            impl(data)
        assert message in str(info.value), (data, str(info.value))


@pytest.mark.parametrize("impl", IMPLS)
def test_lenient_where_the_unpickler_is(impl):
    """No stricter than zodbpickle: leftovers, open marks, odd DICT, POP of a mark."""
    assert impl(b"NNN.(N.").end1 == 4  # items left under the value, an open MARK
    assert impl(b"(K\x01d.N.").end1 == 5  # DICT of an odd number of items
    assert impl(b"N(0.N.").end1 == 4  # POP removes the MARK on top
    assert impl(b"K\x01(K\x02\x86(1.N.").end1 == 9  # counted pops ignore marks


def _std_pairs() -> list[bytes]:
    values = _values()
    out = []
    for protocol in range(6):
        for i, a in enumerate(values[::3]):
            b = values[(i * 5 + protocol) % len(values)]
            out.append(pickle.dumps(a, protocol) + pickle.dumps(b, (protocol + i) % 6))
    return out


def test_random_byte_flips_agree(zodb_records):
    """Random byte flips return or raise ValueError, identically in C and Python."""
    rng = random.Random(20240301)
    sources = zodb_records + _std_pairs()
    outcomes = {"ok": 0, "error": 0}
    for _ in range(4000):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[i] = rng.randrange(256)
            else:
                data[i] ^= 1 << rng.randrange(8)
        data = bytes(data)
        got = outcome(analyze_py, data)
        outcomes["error" if got[0] == "ValueError" else "ok"] += 1
        if HAVE_C_ANALYZE:
            assert outcome(skim_mod.analyze_c, data) == got, data
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(40))
        got = outcome(analyze_py, data)
        if HAVE_C_ANALYZE:
            assert outcome(skim_mod.analyze_c, data) == got, data
    assert outcomes["ok"] > 100 and outcomes["error"] > 100


def test_random_opcode_soup_agrees():
    """Random valid opcodes (stack misuse included): same outcome in C and Python."""
    rng = random.Random(7)
    pushes = [
        b"(",
        b"N",
        b")",
        b"]",
        b"}",
        b"\x8f",
        b"\x97",
        b"K\x01",
        b"h\x01",
        b"h\x02",
        b"C\x01w",
        b"C\x01n",
        b"C\x01m",
        b"C\x08abcdefgh",
        b"U\x02db",
        b"\x8c\x01w",
        b"X\x03\x00\x00\x00xyz",
        b"cmod\nK\n",
        b"Ppid\n",
        b"S'w'\n",
        b"Vdb\n",
        b"\x82\x01",
    ]
    others = [
        b"0",
        b"1",
        b"2",
        b"Q",
        b"R",
        b"a",
        b"b",
        b"d",
        b"e",
        b"l",
        b"o",
        b"s",
        b"t",
        b"u",
        b"\x81",
        b"\x85",
        b"\x86",
        b"\x87",
        b"\x90",
        b"\x91",
        b"\x92",
        b"\x93",
        b"\x94",
        b"\x98",
        b"q\x01",
        b"q\x02",
        b"imod\nI\n",
        b"\x80\x03",
        b"\x95" + bytes(8),
    ]

    def soup(n):
        return b"".join(
            rng.choice(pushes if rng.random() < 0.6 else others) for _ in range(n)
        )

    ok = 0
    for _ in range(6000):
        data = soup(rng.randrange(1, 14)) + b"." + soup(rng.randrange(1, 10)) + b"."
        got = outcome(analyze_py, data)
        ok += got[0] != "ValueError"
        if HAVE_C_ANALYZE:
            assert outcome(skim_mod.analyze_c, data) == got, data
    assert ok > 150, ok


@pytest.mark.parametrize("impl", IMPLS)
def test_deep_nesting_and_long_records(impl):
    """Deep nesting needs no recursion (with limits that allow it; the default
    limits refuse it); a 16 MB text record and 200k opcodes are walked whole
    (no timing asserted: bench/bench_analyze.py measures)."""
    roomy = (10**6, 5_000_000, 1 << 24, 64)
    deep = b"N" + b"\x85" * 200_000 + b".N."
    assert impl(deep, roomy).end1 == 200_002
    lists = b"]" * 100_000 + b"a" * 99_999 + b".N."
    assert impl(lists, roomy).end1 == 200_000
    for data in (deep, lists):
        with pytest.raises(ValueError, match="nesting deeper than 1000"):
            impl(data)
    text = pickle.dumps("lorem ipsum " * (16 * 2**20 // 12), 3) + pickle.dumps(None, 3)
    many = pickle.dumps(Plain, 3) + pickle.dumps([str(i) for i in range(100_000)], 3)
    for data in (text, many):
        got = impl(data)
        assert (got.end1, got.max_memo, got.has_ext) == skim_py(data)


@pytest.mark.parametrize("impl", IMPLS)
def test_memo_bomb_refused_at_once(impl):
    """LONG_BINPUT 0x40000000 is refused before any memo is allocated."""
    data = (
        b"\x80\x03N" + b"r" + (0x40000000).to_bytes(4, "little") + b"." + b"\x80\x03N."
    )
    with pytest.raises(ValueError, match="memo index 1073741824 at offset 3"):
        impl(data)
    # An index up to len(data) is fine.
    ok = b"Nr" + (9).to_bytes(4, "little") + b".h\x09."
    assert impl(ok).max_memo == 9


@pytest.mark.parametrize("impl", IMPLS)
def test_bytes_like_inputs(impl):
    """Any contiguous bytes-like object is accepted; str is not."""
    data = record(Thing, {"r": Ref((b"12345678", Thing))}, persistent_id=ref_pid)
    want = impl(data)
    assert impl(bytearray(data)) == want
    assert impl(memoryview(data)) == want
    assert impl(memoryview(b"xx" + data)[2:]) == want
    with pytest.raises(TypeError):
        impl(data.decode("latin-1"))


def test_c_returns_analysis():
    """The C analyze returns Analysis named tuples equal to the Python twin's."""
    if not HAVE_C_ANALYZE:
        pytest.skip("pclasses.record._skim not built")
    from pclasses.record import _skim

    assert skim_mod.analyze is _skim.analyze
    data = record(Thing, {"r": Ref(["w", (b"12345678", "db")])}, persistent_id=ref_pid)
    got = _skim.analyze(data)
    assert type(got) is Analysis and got == analyze_py(data)
    assert got._fields == (
        "end1",
        "max_memo",
        "has_ext",
        "has_stack_global",
        "protocol",
        "globals",
        "pids",
        "ok_to_patch",
        "has_frame",
        "pid_classes",
        "class_pid",
        "calls_non_global",
        "calls_pid",
    )
    assert [type(g) for g in got.globals] == [GlobalSite] * len(got.globals)
    assert [type(p) for p in got.pids] == [PidSite]
    assert type(got.pids[0].kind) is EdgeKind and got.pids[0].kind is EdgeKind.WEAK
    assert all(type(g.uses) is Use for g in got.globals)
    with pytest.raises(TypeError):
        _skim._set_types(dict, GlobalSite, PidSite, Use, PID_KINDS)
    with pytest.raises(ValueError):
        _skim._set_types(Analysis, GlobalSite, PidSite, Use, PID_KINDS[::-1])


def test_results_are_typed():
    """Both twins return GlobalSite / PidSite named tuples with a Use flag and
    an EdgeKind, readable by field name."""
    data = record(Thing, {"r": Ref((b"12345678", Thing))}, persistent_id=ref_pid)
    for impl in [analyze_py] + ([skim_mod.analyze_c] if HAVE_C_ANALYZE else []):
        got = impl(data)
        g = got.globals[0]
        assert isinstance(g, GlobalSite) and isinstance(g.uses, Use)
        assert (g.module, g.name, g.opcode) == (__name__, "Thing", "global")
        assert Use.CLASS_META in g.uses and Use.PID_CLASS in g.uses
        (p,) = got.pids
        assert isinstance(p, PidSite) and p.kind is EdgeKind.OID_CLASS
        assert data[p.oid_start : p.oid_start + p.oid_length] == b"12345678"
        assert p.pickle == 1 and p.database is None and not p.shared
        assert str(p.kind) == f"{p.kind}" == "oid_class"


def test_fallback_without_extension():
    """Without pclasses.record._skim, analyze is the pure-Python twin."""
    code = (
        "import sys; sys.modules['pclasses.record._skim'] = None\n"
        "import pclasses.record.analyze; s = sys.modules['pclasses.record.analyze']\n"
        "assert s.HAVE_C_ANALYZE is False and s.analyze_c is None\n"
        "assert s.analyze is s.analyze_py and s.census is s.census_py and s.census_c is None\n"
        "a = s.analyze(b'N.\\x80\\x03C\\x01xQ.')\n"
        "print(tuple(a[:7]) == (2, -1, False, False, 1, [], [('oid', 6, 1, None, False, 1)]),"
        " a.pids[0].kind is s.EdgeKind.OID)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert (
        out.strip()
        == "True True"
    )



# ---------------------------------------------------------------------------
# census(data): the census's fast path


def _census_from(a: Analysis):
    """What census(data) must return, derived from the typed analysis."""
    klass, names = None, []
    for m, n, _off, _end, _op, uses in a.globals:
        if m is None or n is None:
            continue
        if klass is None and uses & Use.CLASS_META:
            klass = (m, n)
        else:
            names.append((m, n))
    return klass, tuple(names)


def test_census_names_the_class_and_every_other_global(zodb_records):
    """census(data) gives the record's class and every other named global
    (what analyze reports), in C and Python alike, as plain tuples."""
    impls = [skim_mod.census_py] + ([skim_mod.census_c] if HAVE_C_ANALYZE else [])
    for data in zodb_records + _std_pairs():
        want = outcome(lambda d: _census_from(analyze_py(d)), data)
        for impl in impls:
            got = outcome(impl, data)
            assert got == want, data
            if got[0] != "ValueError":
                klass, names = got
                assert type(names) is tuple
                assert all(type(p) is tuple and len(p) == 2 for p in names)
    records = {_census_from(analyze_py(d))[0] for d in zodb_records}
    assert ("persistent.mapping", "PersistentMapping") in records


def test_census_agrees_on_hostile_bytes(zodb_records):
    """Byte flips, random bytes and limits: census raises or returns the same
    in C and Python, and what analyze says whenever analyze returns."""
    if not HAVE_C_ANALYZE:
        pytest.skip("pclasses.record._skim not built")
    rng = random.Random(20261207)
    sources = zodb_records + _std_pairs()
    seen = {"ok": 0, "error": 0}
    for _ in range(3000):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
        got = outcome(skim_mod.census_py, data)
        assert outcome(skim_mod.census_c, data) == got, data
        assert got == outcome(lambda d: _census_from(analyze_py(d)), data)
        seen["error" if got[0] == "ValueError" else "ok"] += 1
    assert seen["ok"] > 100 and seen["error"] > 100
    # the analyzer's limits hold for census too
    deep = b"(" * 50 + b"N" + b"t" * 50 + b"." + b"N."
    previous = skim_mod.set_limits(skim_mod.Limits(max_depth=10))
    try:
        for impl in (skim_mod.census_py, skim_mod.census_c):
            with pytest.raises(ValueError, match="nesting deeper than 10"):
                impl(deep)
    finally:
        skim_mod.set_limits(previous)
    assert skim_mod.census_c(deep) == skim_mod.census_py(deep) == (None, ())
