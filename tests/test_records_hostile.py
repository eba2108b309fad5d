"""Hostile and malformed records: the reader never runs what a record names.

Every record here is built by hand, from raw opcode bytes or with a pickler,
so that a *real* unpickler would import a module, call ``os.system``,
``exec``, ``open``, ``subprocess.call`` or ``os.remove``.  Each test checks
that reading it either succeeds inertly (and lists the named global) or
raises :class:`RecordDecodeError`, and that no marker file appeared and no
module named by the record was imported.
"""

from __future__ import annotations

import builtins
import copyreg
import io
import os
import pickle
import subprocess
import sys
import textwrap
import uuid

import pytest
import transaction
import ZODB
import ZODB.FileStorage
import zodbpickle.pickle as zpickle
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef
from ZODB.MappingStorage import MappingStorage

from pclasses.errors import RecordDecodeError
from pclasses.record.reader import Inert, read_class, read_record, scan_record

PROBE = "pclasses_hostile_probe_xyz"
READERS = (scan_record, read_record, read_class)

# ---------------------------------------------------------------------------
# Opcode helpers (protocol 2/3 opcodes; see pickletools)
# ---------------------------------------------------------------------------

P2 = b"\x80\x02"
P3 = b"\x80\x03"


def glob(module: str, name: str) -> bytes:
    """GLOBAL opcode."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def ustr(text: str) -> bytes:
    """BINUNICODE opcode."""
    raw = text.encode("utf-8")
    return b"X" + len(raw).to_bytes(4, "little") + raw


def binbytes(raw: bytes) -> bytes:
    """SHORT_BINBYTES opcode."""
    return b"C" + bytes([len(raw)]) + raw


TUPLE1, TUPLE2, REDUCE, STOP, MARK = b"\x85", b"\x86", b"R", b".", b"("
NEWOBJ, BUILD, EMPTY_DICT, EMPTY_TUPLE, SETITEM = b"\x81", b"b", b"}", b")", b"s"
CLASS = P3 + glob("persistent.mapping", "PersistentMapping") + STOP
EMPTY_STATE = P3 + EMPTY_DICT + STOP


def state(body: bytes) -> bytes:
    """A record whose class is PersistentMapping and whose state pickle is ``body``."""
    return CLASS + P2 + body + STOP


# ---------------------------------------------------------------------------
# The safety check
# ---------------------------------------------------------------------------


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield str(path)
    assert not path.exists(), "a hostile record ran code"


def check_safe(data, marker, modules=(), expect_globals=()):
    """Read ``data`` with every reader; assert nothing ran and only RDE escapes.

    Returns the RecordInfo objects that read successfully.  For those,
    every pair of ``expect_globals`` must be listed in ``info.globals``
    (any one of a set of alternatives when a set is given).
    """
    modules = set(modules) | {PROBE}
    before = set(sys.modules)
    infos = []
    for reader in READERS:
        try:
            result = reader(data)
        except RecordDecodeError:
            continue
        if reader is read_class:
            continue
        try:
            result.references  # noqa: B018  (lazy; may raise RDE only)
        except RecordDecodeError:
            pass
        infos.append(result)
        for want in expect_globals:
            options = want if isinstance(want, set) else {want}
            assert options & set(result.globals), (want, result.globals)
    assert not os.path.exists(marker), "a hostile record ran code"
    gained = set(sys.modules) - before
    assert not (gained & modules), f"reading imported {gained & modules}"
    assert PROBE not in sys.modules
    return infos


def touch(marker):
    return f"touch {marker}"


# ---------------------------------------------------------------------------
# Payload objects whose __reduce__ names a dangerous callable
# ---------------------------------------------------------------------------


class Payload:
    """Pickles as ``func(*args)`` (what a malicious writer would store)."""

    def __init__(self, func, args):
        self.func = func
        self.args = args

    def __reduce__(self):
        return (self.func, self.args)


def zdumps(obj, protocol=3):
    f = io.BytesIO()
    zpickle.Pickler(f, protocol).dump(obj)
    return f.getvalue()


def _payloads(marker, victim):
    return {
        "os.system": (Payload(os.system, (touch(marker),)), os.system),
        "subprocess.call": (
            Payload(subprocess.call, (["touch", marker],)),
            subprocess.call,
        ),
        "builtins.exec": (
            Payload(builtins.exec, (f"open({marker!r}, 'w').close()",)),
            builtins.exec,
        ),
        "builtins.open": (Payload(builtins.open, (marker, "w")), builtins.open),
        "os.remove": (Payload(os.remove, (victim,)), os.remove),
        "os.mkdir": (Payload(os.mkdir, (marker,)), os.mkdir),
    }


# ---------------------------------------------------------------------------
# Hostile cases
# ---------------------------------------------------------------------------


def test_reduce_of_os_system_in_class_pickle(marker):
    """REDUCE of os.system in the class pickle runs nothing (listed, or RDE)."""
    data = (
        P2
        + glob("os", "system")
        + ustr(touch(marker))
        + TUPLE1
        + REDUCE
        + STOP
        + EMPTY_STATE
    )
    check_safe(data, marker, expect_globals=[("os", "system")])
    with pytest.raises(RecordDecodeError, match="class"):
        scan_record(data)


def test_reduce_of_probe_module_in_class_pickle(marker):
    """REDUCE of an unknown module's global in the class pickle never imports it."""
    data = P2 + glob(PROBE, "boom") + EMPTY_TUPLE + REDUCE + STOP + EMPTY_STATE
    check_safe(data, marker, expect_globals=[(PROBE, "boom")])


def test_reduce_in_state(marker):
    """REDUCE of os.system in the state is an inert call listing ('os', 'system')."""
    data = state(glob("os", "system") + ustr(touch(marker)) + TUPLE1 + REDUCE)
    infos = check_safe(data, marker, expect_globals=[("os", "system")])
    assert len(infos) == 2  # scan_record and read_record both succeed
    value = read_record(data).state
    assert isinstance(value, Inert)
    assert value.target == ("os", "system")
    assert value.args == (touch(marker),)
    assert value.how == "reduce"


def test_reduce_of_probe_in_state(marker):
    """REDUCE of a global in an unknown module in the state never imports it."""
    data = state(glob(PROBE, "boom") + ustr("x") + TUPLE1 + REDUCE)
    check_safe(data, marker, expect_globals=[(PROBE, "boom")])


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "subprocess.call",
        "builtins.exec",
        "builtins.open",
        "os.remove",
        "os.mkdir",
    ],
)
def test_reduce_payload_object_in_state(marker, tmp_path, name):
    """A __reduce__ payload pickled (protocol 3) inside the state runs nothing."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    obj, func = _payloads(marker, str(victim))[name]
    body = zdumps({"payload": obj, "list": [obj]})
    data = CLASS + body
    module = func.__module__ or "builtins"
    check_safe(data, marker, expect_globals=[(module, func.__name__)])
    assert victim.exists()
    assert read_record(data).state["payload"].target == (module, func.__name__)


def test_reduce_payload_in_class_pickle(marker):
    """A __reduce__ payload pickled as the class metadata runs nothing and is an RDE."""
    data = zdumps(Payload(os.system, (touch(marker),))) + EMPTY_STATE
    check_safe(data, marker, expect_globals=[{("posix", "system"), ("os", "system")}])
    for reader in (scan_record, read_record):
        with pytest.raises(RecordDecodeError, match="class"):
            reader(data)


def test_inst_opcode(marker):
    """INST on os.system (and on a probe class) is inert and lists the global."""
    data = state(MARK + ustr(touch(marker)) + b"ios\nsystem\n")
    check_safe(data, marker, expect_globals=[("os", "system")])
    assert read_record(data).state.target == ("os", "system")
    data = state(MARK + b"i" + PROBE.encode() + b"\nBoom\n")
    check_safe(data, marker, expect_globals=[(PROBE, "Boom")])


def test_obj_opcode(marker):
    """OBJ on os.system (and on a probe class) is inert and lists the global."""
    data = state(MARK + glob("os", "system") + ustr(touch(marker)) + b"o")
    check_safe(data, marker, expect_globals=[("os", "system")])
    data = state(MARK + glob(PROBE, "Boom") + b"o")
    check_safe(data, marker, expect_globals=[(PROBE, "Boom")])


def test_inst_and_obj_in_class_pickle(marker):
    """INST and OBJ as the class metadata run nothing and raise RDE for scan/read."""
    for cls_pickle in (
        P2 + MARK + ustr(touch(marker)) + b"ios\nsystem\n" + STOP,
        P2 + MARK + glob("os", "system") + ustr(touch(marker)) + b"o" + STOP,
    ):
        data = cls_pickle + EMPTY_STATE
        check_safe(data, marker, expect_globals=[("os", "system")])
        for reader in (scan_record, read_record):
            with pytest.raises(RecordDecodeError, match="class"):
                reader(data)


def test_newobj_on_global(marker):
    """NEWOBJ on a global (subprocess.Popen, a probe class) builds an inert value."""
    data = state(
        glob("subprocess", "Popen")
        + MARK
        + ustr("touch")
        + ustr(marker)
        + b"l"
        + TUPLE1
        + NEWOBJ
    )
    check_safe(
        data, marker, modules={"subprocess"}, expect_globals=[("subprocess", "Popen")]
    )
    value = read_record(data).state
    assert (value.how, value.target) == ("newobj", ("subprocess", "Popen"))
    data = state(glob(PROBE, "Boom") + EMPTY_TUPLE + NEWOBJ)
    check_safe(data, marker, expect_globals=[(PROBE, "Boom")])


def test_build_with_global_setstate(marker):
    """BUILD on an object of a named class never calls that class's __setstate__."""
    cmd = ustr("cmd") + ustr(touch(marker))
    # A probe class instance, then BUILD with a dict state and with a REDUCE result.
    data = state(
        glob(PROBE, "Boom") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + cmd + SETITEM + BUILD
    )
    check_safe(data, marker, expect_globals=[(PROBE, "Boom")])
    assert read_record(data).state.state == {"cmd": touch(marker)}
    data = state(
        glob("collections", "OrderedDict")
        + EMPTY_TUPLE
        + NEWOBJ
        + glob("os", "system")
        + ustr(touch(marker))
        + TUPLE1
        + REDUCE
        + BUILD
    )
    check_safe(
        data, marker, expect_globals=[("collections", "OrderedDict"), ("os", "system")]
    )
    # BUILD applied to an inert REDUCE result.
    data = state(
        glob("os", "system")
        + ustr("x")
        + TUPLE1
        + REDUCE
        + EMPTY_DICT
        + cmd
        + SETITEM
        + BUILD
    )
    check_safe(data, marker, expect_globals=[("os", "system")])


def test_nested_reduce_on_reduce_result(marker):
    """getattr(__import__('os'), 'system')(cmd) and f()(cmd) stay inert."""
    data = state(
        glob("builtins", "getattr")
        + glob("builtins", "__import__")
        + ustr("os")
        + TUPLE1
        + REDUCE
        + ustr("system")
        + TUPLE2
        + REDUCE
        + ustr(touch(marker))
        + TUPLE1
        + REDUCE
    )
    check_safe(
        data,
        marker,
        expect_globals=[("builtins", "getattr"), ("builtins", "__import__")],
    )
    outer = read_record(data).state
    assert isinstance(outer, Inert)
    assert outer.args == (touch(marker),)
    data = state(
        glob(PROBE, "factory") + EMPTY_TUPLE + REDUCE + ustr("x") + TUPLE1 + REDUCE
    )
    check_safe(data, marker, expect_globals=[(PROBE, "factory")])
    # Same through the old text opcodes, with the import of a probe module.
    data = state(b"cbuiltins\n__import__\n(V" + PROBE.encode() + b"\ntR")
    check_safe(data, marker, expect_globals=[("builtins", "__import__")])


def _free_ext_code(pair):
    for code in range(0xF0, 0x100):
        if (
            code not in copyreg._inverted_registry
            and pair not in copyreg._extension_registry
        ):
            return code
    pytest.skip("no free extension code")


@pytest.fixture
def ext_code():
    pair = ("os", "system")
    code = _free_ext_code(pair)
    copyreg.add_extension(*pair, code)
    try:
        yield code
    finally:
        copyreg.remove_extension(*pair, code)


def test_ext1_extension_code(marker, ext_code):
    """EXT1 naming os.system (copyreg-registered) is refused, never called."""
    body = b"\x82" + bytes([ext_code]) + ustr(touch(marker)) + TUPLE1 + REDUCE
    data = state(body)
    for reader in (scan_record, read_record):
        with pytest.raises(RecordDecodeError, match="extension code"):
            reader(data)
    check_safe(data, marker)
    # Also as the class metadata.
    data = P2 + b"\x82" + bytes([ext_code]) + STOP + EMPTY_STATE
    for reader in READERS:
        with pytest.raises(RecordDecodeError, match="extension code"):
            reader(data)
    assert not os.path.exists(marker)


def test_ext1_refused_on_every_read(ext_code):
    """Every read of a record using EXT1 is refused the same way, not just the first."""
    data = state(b"\x82" + bytes([ext_code]) + EMPTY_TUPLE + REDUCE)
    for _ in range(3):
        with pytest.raises(RecordDecodeError, match="extension code"):
            scan_record(data)


def test_ext_code_not_registered(marker):
    """EXT1/EXT2/EXT4 with an unregistered code raise RDE."""
    code = _free_ext_code(("nope", "nope"))
    for body in (
        b"\x82" + bytes([code]),
        b"\x83" + code.to_bytes(2, "little"),
        b"\x84" + (0x7FFFFFF0).to_bytes(4, "little"),
    ):
        data = state(body + EMPTY_TUPLE + REDUCE)
        for reader in (scan_record, read_record):
            with pytest.raises(RecordDecodeError):
                reader(data)
        check_safe(data, marker)


def test_ext1_with_warm_extension_cache_runs_nothing(tmp_path):
    """EXT1 whose code was already loaded by a normal unpickler still runs nothing."""
    pair = ("os", "mkdir")
    code = _free_ext_code(pair)
    copyreg.add_extension(*pair, code)
    marker = tmp_path / "MARKER_DIR"
    try:
        assert (
            pickle.loads(P2 + b"\x82" + bytes([code]) + STOP) is os.mkdir
        )  # warms the cache
        data = state(b"\x82" + bytes([code]) + ustr(str(marker)) + TUPLE1 + REDUCE)
        try:
            scan_record(data)
        except RecordDecodeError:
            pass
        assert not marker.exists(), "scan_record called the real os.mkdir"
    finally:
        copyreg.remove_extension(*pair, code)


def test_reader_leaves_extension_cache_alone():
    """After reading an EXT1 record, ordinary pickle still gets the real object."""
    pair = ("os", "getcwd")
    code = _free_ext_code(pair)
    copyreg.add_extension(*pair, code)
    try:
        with pytest.raises(RecordDecodeError):
            scan_record(state(b"\x82" + bytes([code])))
        assert pickle.loads(P2 + b"\x82" + bytes([code]) + STOP) is os.getcwd
    finally:
        copyreg.remove_extension(*pair, code)


def test_protocol4_stack_global(marker):
    """A protocol 4 record using STACK_GLOBAL runs nothing: inert or RDE."""
    body = pickle.dumps(Payload(os.system, (touch(marker),)), protocol=4)
    assert b"\x93" in body
    check_safe(
        CLASS + body, marker, expect_globals=[{("posix", "system"), ("os", "system")}]
    )
    # STACK_GLOBAL by hand, without a FRAME, under a protocol 2 header and a 4 header.
    sg = ustr("os") + ustr("system") + b"\x93" + ustr(touch(marker)) + TUPLE1 + REDUCE
    check_safe(CLASS + P2 + sg + STOP, marker, expect_globals=[("os", "system")])
    check_safe(
        CLASS + b"\x80\x04" + sg + STOP, marker, expect_globals=[("os", "system")]
    )
    check_safe(
        CLASS
        + b"\x80\x04"
        + ustr(PROBE)
        + ustr("x")
        + b"\x93"
        + EMPTY_TUPLE
        + REDUCE
        + STOP,
        marker,
        expect_globals=[(PROBE, "x")],
    )
    # A whole protocol 4 record (class pickle too) from the stdlib pickler.
    data = pickle.dumps(PersistentMapping, protocol=4) + body
    check_safe(data, marker, expect_globals=[{("posix", "system"), ("os", "system")}])


def test_persistent_id_that_is_a_reduce_result(marker):
    """A persistent id built by REDUCE is inert; classifying it raises RDE only."""
    data = state(glob("os", "system") + ustr(touch(marker)) + TUPLE1 + REDUCE + b"Q")
    check_safe(data, marker, expect_globals=[("os", "system")])
    info = scan_record(data)
    with pytest.raises(RecordDecodeError):
        info.references  # noqa: B018


def test_persistent_reference_used_as_callable_and_class(marker):
    """REDUCE and NEWOBJ on a persistent reference stay inert and keep the reference."""
    oid = binbytes(b"\x00" * 7 + b"\x05")
    for body in (
        oid + b"Q" + ustr(touch(marker)) + TUPLE1 + REDUCE,
        oid + b"Q" + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + BUILD,
        MARK + oid + b"Q" + ustr(touch(marker)) + b"o",
    ):
        data = state(body)
        infos = check_safe(data, marker)
        assert infos, "a persistent reference as a callable is a readable record"
        for info in infos:
            assert [r.oid for r in info.references] == [b"\x00" * 7 + b"\x05"]


# ---------------------------------------------------------------------------
# Reader state: one hostile record must not change how later records read
# ---------------------------------------------------------------------------

def test_hostile_build_does_not_poison_later_reads():
    """A BUILD on a global placeholder does not change later records' classes."""
    module = f"{PROBE}_{uuid.uuid4().hex}"
    good = P3 + glob(module, "Klass") + STOP + EMPTY_STATE
    hostile = state(
        glob(module, "Klass")
        + b"N"
        + EMPTY_DICT
        + ustr("dotted_pair")
        + ustr("evil")
        + ustr("Bar")
        + TUPLE2
        + SETITEM
        + TUPLE2
        + BUILD
    )
    try:
        read_record(hostile)
    except RecordDecodeError:
        pass
    assert scan_record(good).klass.pair == (module, "Klass")
    assert read_record(good).klass.pair == (module, "Klass")


@pytest.mark.timeout(60)
def test_memo_index_beyond_the_machine_is_refused():
    """A LONG_BINPUT to memo index 2**32-1 (a 64 GB memo) fails at once as RecordDecodeError."""
    script = textwrap.dedent(
        """
        from pclasses.record.reader import scan_record
        from pclasses.errors import RecordDecodeError
        rec = (b"\\x80\\x03cpkg\\nK\\n." + b"\\x80\\x03}r"
               + (2**32 - 1).to_bytes(4, "little") + b".")
        try:
            scan_record(rec)
            print("read")
        except RecordDecodeError as exc:
            print("refused", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
    ).stdout
    assert out.startswith("refused"), out


# ---------------------------------------------------------------------------
# Malformed records
# ---------------------------------------------------------------------------


def assert_rde(data, readers=READERS, match=None):
    for reader in readers:
        with pytest.raises(RecordDecodeError, match=match):
            reader(data)


def test_empty_bytes():
    """b'' raises RecordDecodeError from every reader."""
    assert_rde(b"")


def test_lone_proto_byte():
    """b'\\x80' raises RecordDecodeError from every reader."""
    assert_rde(b"\x80")
    assert_rde(b"\x80\x03")


def test_stack_underflow():
    """b'\\x80\\x02.' (STOP on an empty stack) raises RecordDecodeError."""
    assert_rde(b"\x80\x02.")
    assert_rde(b"\x80\x02." + EMPTY_STATE)
    assert_rde(CLASS + b"\x80\x02.", readers=(scan_record, read_record))
    assert_rde(CLASS + P2 + b"0.", readers=(scan_record, read_record))  # POP on empty


def test_unterminated_mark():
    """A MARK never closed before STOP or the end of data raises RecordDecodeError."""
    assert_rde(b"\x80\x02(." + EMPTY_STATE)
    assert_rde(CLASS + b"\x80\x02(.", readers=(scan_record, read_record))
    assert_rde(CLASS + b"\x80\x02(K\x01K\x02", readers=(scan_record, read_record))
    assert_rde(b"\x80\x02(K\x01K\x02")


def test_bad_opcode_byte():
    """An opcode byte pickle does not know raises RecordDecodeError."""
    for bad in (b"\xff", b"\xfe", b"\x00", b"\xa0"):
        assert_rde(CLASS + P2 + bad + STOP, readers=(scan_record, read_record))
        assert_rde(P2 + bad + STOP + EMPTY_STATE)


def test_garbage_after_state_pickle():
    """Bytes after the state pickle raise RecordDecodeError (scan/read_record)."""
    for tail in (b"x", b".", b"\x00\x00", EMPTY_STATE):
        assert_rde(
            CLASS + EMPTY_STATE + tail,
            readers=(scan_record, read_record),
            match="after",
        )


def test_class_pickle_only():
    """A record with only the class pickle (no state) raises RecordDecodeError."""
    assert_rde(CLASS, readers=(scan_record, read_record))


@pytest.mark.parametrize(
    "value", [None, "a string", 123, 1.5, [b"x"], object()], ids=lambda v: type(v).__name__
)
def test_non_bytes_argument(value):
    """A non-bytes argument raises RecordDecodeError (not TypeError)."""
    assert_rde(value)


@pytest.mark.parametrize(
    "cls_pickle",
    [
        b"K\x05.",
        P2 + b"K\x05.",
        P3 + ustr("pkg.Klass") + STOP,
        b"Vpkg.Klass\n.",
        P2 + b"N.",
        P2 + b"].",
    ],
    ids=["int-p0", "int-p2", "str-p3", "str-p0", "none", "list"],
)
def test_class_metadata_not_a_class(cls_pickle):
    """Class metadata that is an int, str, None or list raises RDE naming 'class'."""
    assert_rde(cls_pickle + EMPTY_STATE, match="class")


def test_class_metadata_tuple_of_wrong_shape():
    """Class metadata tuples of 3 items or with non-string names raise RDE."""
    for meta in (
        P2 + ustr("m") + ustr("n") + b"N\x87.",  # (m, n, None) is not (klass, args)
        P2 + b"K\x01K\x02\x86N\x86.",  # ((1, 2), None)
    ):
        assert_rde(
            meta + EMPTY_STATE, readers=(scan_record, read_record), match="class|string"
        )


def test_error_carries_oid():
    """A RecordDecodeError for a record read with an oid carries that oid."""
    oid = b"\x00" * 7 + b"\x2a"
    with pytest.raises(RecordDecodeError) as exc:
        scan_record(b"\x80\x02.", oid)
    assert exc.value.oid == oid
    assert "0x2a" in str(exc.value)


# ---------------------------------------------------------------------------
# Truncation and byte flips of real records
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_records(tmp_path_factory):
    """Real records written by ZODB: a root with many reference kinds, a tree, a map."""
    path = tmp_path_factory.mktemp("hostile") / "Data.fs"
    dbs = {}
    db = ZODB.DB(
        ZODB.FileStorage.FileStorage(str(path)), databases=dbs, database_name="a"
    )
    other = ZODB.DB(MappingStorage(), databases=dbs, database_name="b")
    conn = db.open()
    remote = conn.get_connection("b").root()["m"] = PersistentMapping()
    transaction.commit()
    root = conn.root()
    tree = root["tree"] = OOBTree()
    for i in range(120):
        tree[i] = f"v{i}"
    root["map"] = PersistentMapping({"a": 1, "s": "txt", "f": 1.5, "n": None})
    transaction.commit()
    root["weak"] = WeakRef(root["map"])
    root["remote"] = remote
    root["xweak"] = WeakRef(remote)
    transaction.commit()
    records = {
        "root": db.storage.load(root._p_oid)[0],
        "tree": db.storage.load(tree._p_oid)[0],
        "map": db.storage.load(root["map"]._p_oid)[0],
    }
    transaction.abort()
    conn.close()
    db.close()
    other.close()
    return records


def test_every_prefix_of_a_real_record_raises(real_records):
    """Every proper prefix of real ZODB records raises RDE from scan/read_record."""
    for data in real_records.values():
        assert scan_record(data) is not None  # the whole record reads
        for n in range(len(data)):
            for reader in (scan_record, read_record):
                with pytest.raises(RecordDecodeError):
                    reader(data[:n])


def test_prefix_inside_class_global_raises_for_read_class(real_records):
    """read_class raises RDE for every prefix cutting the class's leading GLOBAL."""
    for data in real_records.values():
        end = (
            data.index(b"\n", data.index(b"\n") + 1) + 1
        )  # end of the GLOBAL's name line
        for n in range(end):
            with pytest.raises(RecordDecodeError):
                read_class(data[:n])


def test_prefix_inside_class_pickle_raises_for_read_class(real_records):
    """read_class raises RDE for every prefix shorter than the class pickle."""
    data = real_records["map"]
    clen = scan_record(data).class_length
    accepted = []
    for n in range(clen):
        try:
            read_class(data[:n])
            accepted.append(n)
        except RecordDecodeError:
            pass
    assert accepted == []


@pytest.mark.timeout(60)
def test_flipping_each_byte_never_escapes(real_records):
    """XOR 0xFF of any one byte of a real record: every reader returns or raises RDE."""
    outcomes = {"ok": 0, "rde": 0}
    for data in real_records.values():
        for i in range(len(data)):
            bad = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
            for reader in READERS:
                try:
                    result = reader(bad)
                    if reader is not read_class:
                        result.references  # noqa: B018
                        result.globals  # noqa: B018
                    outcomes["ok"] += 1
                except RecordDecodeError:
                    outcomes["rde"] += 1
    assert outcomes["rde"] > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index", [2**24, 2**27, 2**30])
def test_memo_index_the_machine_could_allocate_is_refused_without_allocating(index):
    """A LONG_BINPUT to a memo index the machine could allocate is refused before any allocation."""
    script = textwrap.dedent(
        f"""
        import resource
        from pclasses.record.reader import scan_record, read_record, read_class
        from pclasses.errors import RecordDecodeError
        rec = (b"\\x80\\x03cpkg\\nK\\n." + b"\\x80\\x03}}r"
               + ({index}).to_bytes(4, "little") + b".")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcomes = []
        for reader in (scan_record, read_record):
            try:
                reader(rec)
                outcomes.append("read")
            except RecordDecodeError as exc:
                outcomes.append("refused" if "memo index" in str(exc) else str(exc))
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(" ".join(outcomes), grown // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        timeout=50,
    ).stdout.split()
    assert out[:2] == ["refused", "refused"], out
    assert int(out[2]) < 16, f"grew by {out[2]} MB"
