"""The opcode pre-scan (:mod:`pclasses.record.analyze`): C and Python agree with pickletools.

Every result check runs against both implementations (the C one is skipped
when the optional extension was not built).  The reference for ``end1`` and
``max_memo_index`` is :func:`pickletools.genops`, walked over both pickles
with one memo-store counter (MEMOIZE's index is the number of stores so far,
as one Unpickler loading both pickles would assign it).
"""

from __future__ import annotations

import copyreg
import datetime
import decimal
import importlib
import io
import pickle
import pickletools
import random
import subprocess
import sys
import types

import pytest
import ZODB
from BTrees.OOBTree import OOBTree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.MappingStorage import MappingStorage

from pclasses.record.analyze import HAVE_C, MAX_INDEX, skim_py
from pclasses.record.reader import scan_record

skim_mod = importlib.import_module("pclasses.record.analyze")

IMPLS = [
    pytest.param(skim_py, id="py"),
    pytest.param(
        skim_mod.skim_c,
        id="c",
        marks=pytest.mark.skipif(not HAVE_C, reason="pclasses.record._skim not built"),
    ),
]


class Thing(Persistent):
    """A persistent object with arbitrary attributes (only written, never loaded)."""


# ---------------------------------------------------------------------------
# Reference: pickletools.genops over both pickles


def expected(data: bytes) -> tuple[int, int, bool]:
    """``(end1, max_memo_index, has_ext)`` computed with pickletools.genops."""
    f = io.BytesIO(data)
    max_memo, stores, has_ext, end1 = -1, 0, False, -1
    for which in (1, 2):
        for op, arg, _pos in pickletools.genops(f):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                max_memo = max(max_memo, arg)
                stores += 1
            elif op.name == "MEMOIZE":
                max_memo = max(max_memo, stores)
                stores += 1
            elif op.name in ("EXT1", "EXT2", "EXT4"):
                has_ext = True
        if which == 1:
            end1 = f.tell()
    return end1, max_memo, has_ext


def opnames(data: bytes) -> set[str]:
    f = io.BytesIO(data)
    names = {op.name for op, _, _ in pickletools.genops(f)}
    return names | {op.name for op, _, _ in pickletools.genops(f)}


def outcome(fn, data):
    """The result, or ``("ValueError", message)``; anything else propagates."""
    try:
        return fn(data)
    except ValueError as e:
        return ("ValueError", str(e))


# ---------------------------------------------------------------------------
# Data: records written by ZODB, and pickle.dumps pairs


@pytest.fixture(scope="module")
def zodb_records() -> list[bytes]:
    """Every data record ZODB wrote for committed objects of several kinds."""
    storage = MappingStorage()
    db = ZODB.DB(storage)
    try:
        with db.transaction() as conn:
            root = conn.root()
            root["pm"] = PersistentMapping({f"key{i}": i * 1.5 for i in range(50)})
            root["big_pm"] = PersistentMapping(
                {f"k{i:04d}": f"v{i}" for i in range(400)}
            )
            tree = root["tree"] = OOBTree()
            for i in range(350):
                # List values make a 30-item bucket memoize > 256 objects.
                tree[f"item{i:05d}"] = [f"a{i}", f"b{i}", (i, f"c{i}"), b"raw"]
            t = root["thing"] = Thing()
            t.text = "caf\u00e9 \u2603 " * 40
            t.data = b"\x00\x01\xff" * 100
            t.short = b"ab"
            t.floats = [0.1, -2.5e300, float("inf")]
            t.big = 2**200 + 12345
            t.neg = -(2**70)
            t.nested = ((1, (2, (3, (4, ("deep",))))), ("x",) * 5, ())
            t.child = Thing()
            t.child.sibling = t
            t.when = datetime.datetime(2024, 1, 2, 3, 4, 5)
            t.dec = decimal.Decimal("1.25")
            t.flags = {True, False, None}
            root["plist"] = PersistentList([t, t.child, "s", 7])
        records = [
            rec.data
            for txn in storage.iterator()
            for rec in txn
            if rec.data is not None
        ]
    finally:
        db.close()
    assert len(records) >= 20
    return records


def _values() -> list[object]:
    shared = ["shared"]
    return [
        None,
        True,
        0,
        -1,
        255,
        65536,
        2**31,
        -(2**31) - 1,
        2**64,
        -(10**50),
        2**3000,
        1.5,
        float("-inf"),
        "",
        "text",
        "\u2603" * 300,
        "line\nbreak\\",
        b"",
        b"\x00\n\xff",
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
        [str(i) for i in range(300)],
        datetime.date(2020, 2, 29),
        decimal.Decimal("-0.5"),
        Exception("e"),
        range(3),
        slice(1, 2),
        complex(1, 2),
    ]


def _pickle_pairs() -> list[bytes]:
    values = _values()
    pairs = []
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        for i, a in enumerate(values):
            b = values[(i * 7 + proto) % len(values)]
            pairs.append(pickle.dumps(a, proto) + pickle.dumps(b, (proto + i) % 6))
    return pairs


PICKLE_PAIRS = _pickle_pairs()


# ---------------------------------------------------------------------------
# Agreement with pickletools


@pytest.mark.parametrize("impl", IMPLS)
def test_zodb_records_match_genops(impl, zodb_records):
    """On every record ZODB wrote, skim equals pickletools.genops (end1, memo, ext)."""
    for data in zodb_records:
        assert impl(data) == expected(data)


def test_zodb_records_cover_long_binput(zodb_records):
    """The ZODB records exercise LONG_BINPUT (memo > 255) and the binary opcodes."""
    seen = set().union(*(opnames(d) for d in zodb_records))
    assert {
        "LONG_BINPUT",
        "BINPUT",
        "BINUNICODE",
        "BINBYTES",
        "SHORT_BINBYTES",
        "LONG1",
        "BINFLOAT",
        "GLOBAL",
        "BINPERSID",
    } <= seen
    assert max(expected(d)[1] for d in zodb_records) > 255


@pytest.mark.parametrize("impl", IMPLS)
def test_zodb_records_end1_is_class_pickle_length(impl, zodb_records):
    """end1 is where the project's safe reader says the class-metadata pickle ends."""
    for data in zodb_records:
        assert impl(data)[0] == scan_record(data).class_length


@pytest.mark.parametrize("impl", IMPLS)
def test_pickle_pairs_match_genops(impl):
    """On pickle.dumps pairs of protocols 0-5 of varied objects, skim equals genops."""
    for data in PICKLE_PAIRS:
        assert impl(data) == expected(data), data


def test_pickle_pairs_cover_protocols():
    """The pickle pairs include protocol 0 text opcodes and protocol 4/5 opcodes."""
    seen = set().union(*(opnames(d) for d in PICKLE_PAIRS))
    assert {
        "PUT",
        "GET",
        "INT",
        "LONG",
        "FLOAT",
        "UNICODE",
        "GLOBAL",
        "MEMOIZE",
        "FRAME",
        "STACK_GLOBAL",
        "SHORT_BINUNICODE",
        "BYTEARRAY8",
        "EMPTY_SET",
        "ADDITEMS",
        "FROZENSET",
        "LONG4",
    } <= seen


@pytest.mark.parametrize("impl", IMPLS)
def test_end1_is_first_pickle_length(impl):
    """end1 equals len(first pickle); bytes after the second STOP are not examined."""
    for proto in range(6):
        a = pickle.dumps({"k": [1, 2.0, "three"]}, proto)
        b = pickle.dumps(("x", b"y"), proto)
        assert impl(a + b)[0] == len(a)
        assert impl(a + b + b"\xff trailing junk") == impl(a + b)


@pytest.mark.parametrize("impl", IMPLS)
def test_out_of_band_buffers(impl):
    """Protocol 5 NEXT_BUFFER and READONLY_BUFFER are zero-argument opcodes."""
    bufs: list[pickle.PickleBuffer] = []
    a = pickle.dumps(
        [pickle.PickleBuffer(b"ro"), pickle.PickleBuffer(bytearray(b"rw"))],
        protocol=5,
        buffer_callback=bufs.append,
    )
    data = a + pickle.dumps(None, 5)
    assert {"NEXT_BUFFER", "READONLY_BUFFER"} <= opnames(data)
    assert impl(data) == expected(data)


# -- every opcode pickletools knows, with a valid argument ----------------------

_ARG = {
    "uint1": b"\x07",
    "uint2": b"\x07\x01",
    "uint4": b"\x07\x01\x00\x00",
    "int4": b"\xff\xff\xff\xff",
    "uint8": b"\x00" * 8,  # FRAME length 0 (and nothing else uses uint8 alone)
    "long1": b"\x02\x01\x80",
    "long4": b"\x02\x00\x00\x00\x01\x80",
    "decimalnl_short": b"12\n",
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


def _instance(op: pickletools.OpcodeInfo) -> bytes:
    return op.code.encode("latin-1") + (_ARG[op.arg.name] if op.arg else b"")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", pickletools.opcodes, ids=lambda op: op.name)
def test_every_opcode_layout(impl, op):
    """Each pickletools opcode (protocols 0-5) is skipped with its exact layout."""
    if op.name == "STOP":
        data = b"N.N."
    else:
        body = _instance(op)
        data = b"\x80\x05" + body + b"N." + body + b"."
    assert impl(data) == expected(data)


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_opcodes_raise(impl):
    """Every byte that is not a protocol 0-5 opcode is refused with its offset."""
    known = {op.code.encode("latin-1")[0] for op in pickletools.opcodes}
    assert len(known) == 68
    for byte in range(256):
        if byte in known:
            continue
        with pytest.raises(
            ValueError, match=f"unknown opcode 0x{byte:02x} at offset 3"
        ):
            impl(b"N.N" + bytes([byte]) + b".")


# ---------------------------------------------------------------------------
# Hypothesis: random values at random protocols

_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.binary().map(bytearray)
    | st.complex_numbers(allow_nan=False)
)
_hashable = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=5)
    | st.binary(max_size=5)
)
_values_st = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.tuples(inner)
        | st.tuples(inner, inner)
        | st.tuples(inner, inner, inner)
        | st.lists(inner, max_size=6).map(tuple)
        | st.dictionaries(_hashable, inner, max_size=6)
        | st.sets(_hashable, max_size=6)
        | st.frozensets(_hashable, max_size=6)
        | st.lists(inner, min_size=1, max_size=3).map(lambda xs: [xs, xs])
    ),  # shared refs
    max_leaves=40,
)
_protocols = st.integers(min_value=0, max_value=pickle.HIGHEST_PROTOCOL)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    a=_values_st, b=_values_st, pa=_protocols, pb=_protocols, tail=st.binary(max_size=8)
)
def test_hypothesis_pickles_match_genops(a, b, pa, pb, tail):
    """For random values pickled at random protocols 0-5, C, Python and genops agree."""
    first = pickle.dumps(a, pa)
    data = first + pickle.dumps(b, pb)
    want = expected(data)
    assert want[0] == len(first)
    assert skim_py(data + tail) == want
    if HAVE_C:
        assert skim_mod.skim_c(data + tail) == want


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
    for data in PICKLE_PAIRS[::7]:
        for k in range(len(data)):
            with pytest.raises(ValueError, match=r"offset \d+"):
                impl(data[:k])


def test_truncated_prefixes_same_message(zodb_records):
    """C and Python raise the same message for each truncated prefix."""
    if not HAVE_C:
        pytest.skip("pclasses.record._skim not built")
    data = max(zodb_records, key=len)
    for k in range(len(data)):
        assert outcome(skim_mod.skim_c, data[:k]) == outcome(skim_py, data[:k])


@pytest.mark.parametrize("impl", IMPLS)
def test_error_kinds_and_offsets(impl):
    """Unknown opcode, truncation and missing STOP each name the right byte offset."""
    cases = [
        (b"", "missing STOP: first pickle runs to the end of data at offset 0"),
        (b"N.", "missing STOP: second pickle runs to the end of data at offset 2"),
        (b"N.N", "missing STOP: second pickle runs to the end of data at offset 3"),
        (b"NN\x99.", "unknown opcode 0x99 at offset 2 (first pickle)"),
        (
            b"N.J\x01\x02",
            "truncated argument of opcode 0x4a at offset 2 (second pickle)",
        ),
        (b"X\x05\x00\x00\x00abc.", "truncated argument of opcode 0x58 at offset 0"),
        (b"cmod\nname", "truncated argument of opcode 0x63 at offset 0"),
        (b"N.\x8e" + b"\xff" * 8 + b".", "needs 18446744073709551615 bytes, 1 left"),
        (b"\x95\x10" + b"\x00" * 7 + b"N.N.", "truncated argument of opcode 0x95"),
        (b"p-1\nN.N.", "malformed PUT argument at offset 0"),
        (b"p\nN.N.", "malformed PUT argument at offset 0"),
        (b"p 1\nN.N.", "malformed PUT argument at offset 0"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError) as info:
            impl(data)
        assert message in str(info.value), (data, str(info.value))


def test_random_byte_flips_never_crash(zodb_records):
    """Random byte flips return or raise ValueError, identically in C and Python."""
    rng = random.Random(20240229)
    sources = zodb_records + PICKLE_PAIRS[::5]
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
        got = outcome(skim_py, data)
        outcomes["error" if got[0] == "ValueError" else "ok"] += 1
        if HAVE_C:
            assert outcome(skim_mod.skim_c, data) == got, data
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(40))
        got = outcome(skim_py, data)
        if HAVE_C:
            assert outcome(skim_mod.skim_c, data) == got, data
    assert outcomes["ok"] and outcomes["error"]


# ---------------------------------------------------------------------------
# The two hazards


@pytest.mark.parametrize("impl", IMPLS)
def test_huge_long_binput_is_reported_not_allocated(impl):
    """LONG_BINPUT 0x40000000 (a 16 GB memo when unpickled) is reported at once."""
    for index in (0x40000000, 0xFFFFFFFF):
        data = b"\x80\x03N" + b"r" + index.to_bytes(4, "little") + b"." + b"\x80\x03N."
        assert impl(data) == (len(data) - 4, index, False)


@pytest.mark.parametrize("impl", IMPLS)
def test_huge_put_is_reported_and_saturates(impl):
    """PUT indices are read exactly; beyond 2**63-1 they are reported as 2**63-1."""
    assert impl(b"N.Np12345678901\n.") == (2, 12345678901, False)
    assert impl(b"Np007\nq\x05.N.") == (9, 7, False)
    assert impl(b"N.Np" + b"9" * 40 + b"\n.") == (2, MAX_INDEX, False)
    assert impl(b"N.Np9223372036854775807\n.")[1] == MAX_INDEX
    assert impl(b"N.Np9223372036854775806\n.")[1] == MAX_INDEX - 1


@pytest.mark.parametrize("impl", IMPLS)
def test_memoize_counts_across_both_pickles(impl):
    """MEMOIZE's index is the number of memo stores so far, over both pickles."""
    assert impl(b"N\x94N\x94.N\x94.") == (5, 2, False)
    assert impl(b"Nq\x09.N\x94.") == (4, 9, False)  # 1 store so far -> index 1
    assert impl(b"N.N.") == (2, -1, False)


@pytest.mark.parametrize("impl", IMPLS)
def test_ext_opcodes_detected(impl):
    """EXT1, EXT2 and EXT4 set has_ext in either pickle; their sizes are exact."""
    assert impl(b"\x80\x02\x82\x01.N.") == (5, -1, True)
    assert impl(b"N.\x80\x02\x83\x01\x02.") == (2, -1, True)
    assert impl(b"\x80\x02\x84\x01\x02\x03\x04.N.") == (8, -1, True)
    # The first 0x2e is EXT1's argument, not STOP.
    assert impl(b"\x80\x02\x82..N.") == (5, -1, True)
    with pytest.raises(ValueError, match="truncated argument of opcode 0x84"):
        impl(b"\x80\x02\x84\x01\x02.")
    # A real extension code, written by pickle (registered only while pickling).
    module = types.ModuleType("pclasses_skim_test")
    module.Ext = type("Ext", (), {"__module__": module.__name__})
    sys.modules[module.__name__] = module
    copyreg.add_extension(module.__name__, "Ext", 0x1234)
    try:
        data = pickle.dumps(module.Ext, 2) + pickle.dumps(None, 2)
    finally:
        copyreg.remove_extension(module.__name__, "Ext", 0x1234)
        del sys.modules[module.__name__]
    assert "EXT2" in opnames(data)
    assert impl(data) == expected(data)
    assert impl(data)[2] is True


def test_fallback_without_extension():
    """Without pclasses.record._skim, skim is the pure-Python twin and HAVE_C is False."""
    code = (
        "import sys; sys.modules['pclasses.record._skim'] = None\n"
        "import pclasses.record.analyze; s = sys.modules['pclasses.record.analyze']\n"
        "assert s.HAVE_C is False and s.skim_c is None and s.skim is s.skim_py\n"
        "print(s.skim(b'N.Nq\\x07.'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "(2, 7, False)"


def test_have_c_matches_extension():
    """HAVE_C is True exactly when pclasses.record._skim imports; skim is then the C one."""
    try:
        from pclasses.record import _skim
    except ImportError:
        assert not HAVE_C
    else:
        if skim_mod.PURE_PYTHON:  # PCLASSES_PURE_PYTHON=1 forces the twin
            assert not HAVE_C and skim_mod.skim is skim_py
        else:
            assert HAVE_C and skim_mod.skim is _skim.skim


@pytest.mark.parametrize("impl", IMPLS)
def test_bytes_like_inputs(impl):
    """Any contiguous bytes-like object is accepted; str is not."""
    data = pickle.dumps([1, "a"], 3) + pickle.dumps(None, 3)
    want = impl(data)
    assert impl(bytearray(data)) == want
    assert impl(memoryview(data)) == want
    assert impl(memoryview(b"xx" + data)[2:]) == want
    with pytest.raises(TypeError):
        impl(data.decode("latin-1"))


# ---------------------------------------------------------------------------
# Speed


@pytest.fixture(scope="module")
def text_record() -> bytes:
    """A 16 MB ZODB record of text."""
    storage = MappingStorage()
    db = ZODB.DB(storage, large_record_size=1 << 30)
    try:
        with db.transaction() as conn:
            conn.root()["doc"] = doc = Thing()
            doc.body = "lorem ipsum \u00e9 " * (16 * 2**20 // 15)
            doc.lines = ["short line"] * 1000
        records = [r.data for t in storage.iterator() for r in t if r.data]
    finally:
        db.close()
    data = max(records, key=len)
    assert len(data) > 16 * 2**20
    return data


@pytest.mark.parametrize("impl", IMPLS)
def test_16mb_text_record_is_quick(impl, text_record):
    """A 16 MB text record (and a protocol 0 twin) is skimmed whole (its cost
    is measured by bench/bench_skim.py, not asserted here)."""
    proto0 = pickle.dumps("x" * (16 * 2**20), 0) + pickle.dumps(None, 0)
    for data in (text_record, proto0):
        assert impl(data) == expected(data)

