"""Bounded work per record: records built to crash or stall a reader are
refused by the pre-scan, in time linear in their size, before any unpickler
sees them; what ZODB writes for real applications still reads.

The two hostile shapes come from the adversarial review of issue 11: a
record of about 1 MB whose class pickle holds a very deeply nested tuple used
as a dict key (hashing it recursed in C: a segmentation fault), and a record
of about 0.8 MB whose state is a dict of 60,000 int keys of one hash
(insertion is quadratic: about a minute).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from BTrees.IOBTree import IOBTree
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.utils import p64

import pclasses
from pclasses.errors import PClassesError, RecordDecodeError
from pclasses.record import reader
from pclasses.record.analyze import HAVE_C_ANALYZE, analyze_c, analyze_py
from pclasses.record.edges import edges
from pclasses.record.limits import DEFAULT_LIMITS, Limits

P = 2**61 - 1  # ints k * P all hash to 0
IMPLS = [analyze_py] + ([analyze_c] if HAVE_C_ANALYZE else [])


def deep_key_record(depth: int = 300_000) -> bytes:
    """Class pickle ``(object, {((((1,),),)...): 1})``: a deep tuple as a key."""
    meta = (b"\x80\x03cbuiltins\nobject\nq\x00}q\x01K\x01" + b"\x85" * depth
            + b"K\x01s\x86q\x02.")
    return meta + b"\x80\x03}q\x03."


def _int(v: int) -> bytes:
    """The opcodes pickle writes for one int (no PROTO, no STOP)."""
    return pickle.dumps(v, 3)[2:-1]


def _mapping(items: bytes, proto: int = 3) -> bytes:
    """A PersistentMapping record whose ``data`` holds ``items`` (opcodes
    that leave a dict or set on the stack), written by hand: building the
    hostile dict in this process would itself take minutes."""
    head = bytes([0x80, proto])
    return (pickle.dumps(PersistentMapping, 3) + head + b"}(X\x04\x00\x00\x00data"
            + items + b"u.")


def _setitems(pairs: list[bytes]) -> bytes:
    out = [b"}"]
    for i in range(0, len(pairs), 1000):
        out.append(b"(" + b"".join(pairs[i:i + 1000]) + b"u")
    return b"".join(out)


def flood_record(n: int = 60_000) -> bytes:
    """State ``{k * P: None}`` for n keys (about 0.8 MB): every key hashes to 0."""
    return _mapping(_setitems([_int(k * P) + b"N" for k in range(1, n + 1)]))


def tuple_flood_record(n: int = 20_000) -> bytes:
    """Keys ``(k * P, 7)``: tuples of colliding numbers collide too."""
    return _mapping(_setitems([_int(k * P) + b"K\x07\x86N" for k in range(1, n + 1)]))


def frozenset_flood_record(n: int = 20_000) -> bytes:
    """Set elements ``frozenset({k * P})``: frozensets of colliding numbers."""
    elements = b"".join(b"(" + _int(k * P) + b"\x91" for k in range(1, n + 1))
    return _mapping(b"\x8f(" + elements + b"\x90", proto=4)


def float_flood_record() -> bytes:
    """Binary floats m * 2**(61 j) share one hash (2**61 == 1 mod P), together
    with ints of that hash."""
    keys = {float(5 * 2 ** (61 * j)): None for j in range(16)}
    keys.update({5 + k * P: None for k in range(1, 200)})
    return pickle.dumps(PersistentMapping, 3) + pickle.dumps({"data": keys}, 3)


HOSTILE = {
    "deep-key": deep_key_record,
    "int-flood": flood_record,
    "tuple-flood": tuple_flood_record,
    "frozenset-flood": frozenset_flood_record,
    "float-flood": float_flood_record,
}


def test_limits_are_one_frozen_value():
    """Limits is one frozen value with the documented defaults; nonsense is
    refused when the value is made."""
    assert DEFAULT_LIMITS == Limits(max_depth=1000, max_items=5_000_000,
                                    max_memo=1 << 24, max_collisions=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_depth = 5  # type: ignore[misc]
    for bad in (0, -1, 2**63, True, 1.5):
        with pytest.raises(ValueError):
            Limits(max_depth=bad)  # type: ignore[arg-type]
    assert Limits(max_depth=7).as_tuple() == (7, 5_000_000, 1 << 24, 64)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_records_are_refused_by_every_reader(name):
    """Each hostile record is a RecordDecodeError (a PClassesError) for the
    reader, edges() and both analyzer twins, with the same message; nothing
    hashes, recurses or loops over it."""
    data = HOSTILE[name]()
    messages = set()
    for impl in IMPLS:
        with pytest.raises(ValueError) as info:
            impl(data)
        messages.add(str(info.value))
    assert len(messages) == 1
    (message,) = messages
    assert "nesting deeper than" in message or "keys of one hash" in message
    oid = p64(42)
    for read in (reader.scan_record, reader.read_record, reader.global_occurrences,
                 reader.split_record, edges):
        with pytest.raises(RecordDecodeError) as err:
            read(data, oid)
        assert isinstance(err.value, PClassesError) and err.value.oid == oid
    if name == "deep-key":  # in the class pickle, which read_class reads
        with pytest.raises(RecordDecodeError):
            reader.read_class(data, oid)
    else:  # read_class never looks at the state pickle
        assert reader.read_class(data, oid).pair == (
            "persistent.mapping", "PersistentMapping")


def test_reports_name_the_offending_opcode():
    """The refusal names the limit, the opcode and its byte offset."""
    data = flood_record(1000)
    with pytest.raises(ValueError) as info:
        analyze_py(data)
    msg = str(info.value)
    assert msg.startswith("more than 64 keys of one hash in one container: opcode 0x")
    offset = int(msg.split("at offset ")[1].split()[0])
    assert data[offset] in b"su"  # the SETITEM(S) that inserted the key


def test_limits_can_be_raised_or_lowered():
    """A caller may pass other limits: the same record is refused under a
    lower bound and read under a higher one."""
    small = pickle.dumps(PersistentMapping, 3) + pickle.dumps({"data": list(range(50))}, 3)
    for impl in IMPLS:
        assert impl(small).end1 > 0
        with pytest.raises(ValueError, match="more than 10 items in one container"):
            impl(small, Limits(max_items=10).as_tuple())
        with pytest.raises(ValueError, match="nesting deeper than 1"):
            impl(small, Limits(max_depth=1).as_tuple())
        with pytest.raises(ValueError, match="above the limit 1"):
            impl(small, Limits(max_memo=1).as_tuple())
        deep = deep_key_record(2000)
        roomy = Limits(max_depth=5000).as_tuple()
        assert impl(deep, roomy).end1 > 0
        with pytest.raises(TypeError):
            impl(small, (1, 2, 3))


@pytest.fixture
def real_fs(tmp_path):
    db = ZODB.DB(ZODB.FileStorage.FileStorage(str(tmp_path / "Data.fs")))
    conn = db.open()
    root = conn.root()
    root["big"] = PersistentMapping({f"key{i}": i for i in range(100_000)})
    root["ints"] = PersistentMapping({i * 7919: str(i) for i in range(100_000)})
    tree = root["tree"] = OOBTree()
    itree = root["itree"] = IOBTree()
    for i in range(5000):
        tree[f"k{i:05d}"] = i
        itree[i * 101] = (i, -i, float(i))
    transaction.commit()
    yield db
    transaction.abort()
    conn.close()
    db.close()


def test_real_records_pass(real_fs):
    """What ZODB writes for applications reads under the default limits:
    mappings of 100,000 str or int keys, BTrees and their buckets."""
    n = 0
    for txn in real_fs.storage.iterator():
        for rec in txn:
            info = reader.scan_record(rec.data, rec.oid)
            assert info.klass is not None
            for impl in IMPLS if len(rec.data) < 100_000 else IMPLS[-1:]:
                impl(rec.data)
            n += 1
    assert n > 20


def _store_raw(storage, records):
    """Store raw record bytes under fresh oids in one real transaction."""
    from ZODB.Connection import TransactionMetaData

    t = TransactionMetaData()
    storage.tpc_begin(t)
    oids = []
    for data in records:
        oid = storage.new_oid()
        storage.store(oid, b"\0" * 8, data, "", t)
        oids.append(oid)
    storage.tpc_vote(t)
    storage.tpc_finish(t)
    return oids


@pytest.mark.parametrize("command", ["classes", "broken"])
def test_cli_on_a_filestorage_holding_them(tmp_path, command):
    """`pclasses classes|broken` on a FileStorage holding every hostile record
    exits 0 or 1 with no traceback and no signal, and `classes` lists each
    hostile record as unreadable by its oid."""
    path = tmp_path / "hostile.fs"
    db = ZODB.DB(ZODB.FileStorage.FileStorage(str(path)))
    oids = _store_raw(db.storage, [make() for make in HOSTILE.values()])
    db.close()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(pclasses.__file__).resolve().parents[1])
    args = [command, str(path)] + (["--json"] if command == "classes" else [])
    result = subprocess.run([sys.executable, "-m", "pclasses.cli", *args],
                            capture_output=True, text=True, env=env, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    if command == "classes":
        doc = json.loads(result.stdout)
        unreadable = {u["oid"] for d in doc["databases"] for u in d["unreadable"]}
        from ZODB.utils import oid_repr

        assert {oid_repr(o) for o in oids} <= unreadable


def test_hash_model_matches_python_for_numbers():
    """The analyzer's hash model of numeric keys is Python's own hash: ints
    of every opcode width, negative numbers, big LONG1 values and binary
    floats that collide in Python collide in the model (and are refused
    together), while distinct hashes never add up."""
    # 65 distinct keys whose Python hashes are all equal, of mixed forms.
    h = 12345
    keys: list = [h + k * P for k in range(1, 60)]
    keys += [float(h * 2 ** (61 * j)) for j in range(1, 7)]
    assert len({hash(k) for k in keys}) == 1 and len(set(keys)) == 65
    data = pickle.dumps(PersistentMapping, 2) + pickle.dumps({k: 1 for k in keys}, 2)
    for impl in IMPLS:
        with pytest.raises(ValueError, match="keys of one hash"):
            impl(data)
    # The same number of keys with distinct hashes is fine.
    fine = pickle.dumps(PersistentMapping, 2) + pickle.dumps(
        {k * 3 + 0.5 if k % 2 else -k * 2**40: 1 for k in range(5000)}, 2)
    for impl in IMPLS:
        impl(fine)


def test_twins_agree_on_number_models():
    """C and Python twins reach the same verdict on keys built from every
    number opcode (BININT1/2/4, LONG1/4, INT/LONG text, BINFLOAT incl. inf and
    nan, bools, None)."""
    values = [0, 1, 255, 256, 65535, 65536, -1, -2, 2**31 - 1, -(2**31), 2**63,
              -(2**64) - 5, P, P - 1, 2 * P + 3, 10**40, -(10**40), 0.0, -0.0, 1.5,
              -2.25, float("inf"), float("-inf"), 1e308, 5e-324, True, False, None]
    for proto in (0, 1, 2, 3):
        for v in values:
            data = pickle.dumps(PersistentMapping, proto) + pickle.dumps(
                {"k": {v: 1, (v, v): 2}, "s": [v] * 3}, proto)
            outs = [impl(data) for impl in IMPLS]
            assert all(o == outs[0] for o in outs)
        nan = struct.pack(">d", float("nan"))
        assert nan  # a NaN key is hashed by identity: never modelled


def test_set_limits_changes_the_bounds_of_every_reader():
    """set_limits() makes new bounds the process default for the C analyzer,
    its Python twin and the reader alike, and returns the previous ones so a
    caller can put them back."""
    from pclasses.record import analyze as default_analyze
    from pclasses.record import scan_record, set_limits

    nested = pickle.dumps(PersistentMapping, 3) + pickle.dumps([[[[[1]]]]], 3)
    scan_record(nested)  # fine under the defaults
    previous = set_limits(Limits(max_depth=3))
    try:
        assert previous == DEFAULT_LIMITS
        for impl in (default_analyze, analyze_py):
            with pytest.raises(ValueError):
                impl(nested)
        with pytest.raises(RecordDecodeError):
            scan_record(nested)
    finally:
        assert set_limits(previous) == Limits(max_depth=3)
    scan_record(nested)
    with pytest.raises(TypeError):
        set_limits((1, 2, 3, 4))  # type: ignore[arg-type]
