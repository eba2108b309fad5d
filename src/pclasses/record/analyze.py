"""A cheap pre-scan of a ZODB record's opcode stream.

A ZODB data record is two pickles written back to back (class metadata, then
state).  Two hazards of the C unpickler cannot be guarded from inside it:

* a PUT / BINPUT / LONG_BINPUT with a huge memo index makes it allocate (and
  zero) a memo array of twice that many pointers before storing anything
  (``LONG_BINPUT 0x40000000`` asks for 16 GB);
* EXT1 / EXT2 / EXT4 read ``copyreg``'s process-wide extension cache.

:func:`skim` walks the opcodes of both pickles without building anything and
reports what a caller needs to refuse such a record before unpickling it::

    end1, max_memo_index, has_ext = skim(data)

``end1``
    the offset just after the first pickle's STOP (the split point);
``max_memo_index``
    the largest memo index a PUT (``p``, decimal + newline), BINPUT (``q``,
    1 byte) or LONG_BINPUT (``r``, 4 bytes little-endian, unsigned) stores in
    either pickle, or -1 when nothing is memoized.  A MEMOIZE (``\\x94``,
    protocol 4+) stores at index "number of memo stores so far", counted with
    one counter over both pickles, because ZODB (and :mod:`pclasses.record.reader`)
    load both pickles with one Unpickler whose memo persists between them.
    A store op that overwrites an index still counts, so for odd pickles
    mixing PUT and MEMOIZE the figure is an upper bound; for anything
    :mod:`pickle` writes it is exact.  PUT indices too large for a signed
    64-bit integer are reported as ``2**63 - 1``;
``has_ext``
    whether any EXT1 / EXT2 / EXT4 occurs.

:class:`ValueError`, with a message naming the byte offset, is raised for an
unknown opcode byte, an argument that runs past the end of the data (every
length is read unsigned and checked against what is left, nothing is
allocated), a missing STOP for either pickle, and a PUT argument that is not
plain ASCII decimal digits (the C unpickler would take ``p +1_0 \\n`` as
index 10; refusing what :mod:`pickle` never writes keeps the reported index
trustworthy).  The second pickle need not end at ``len(data)``: bytes after
its STOP are not examined, the caller compares ``len(data)`` itself.

FRAME (protocol 4+) only has its 8-byte length skipped (and checked against
what is left); the frame's contents are walked as ordinary opcodes.

:data:`HAVE_C` tells whether the C implementation (``pclasses.record._skim``,
built as an optional extension) is in use; otherwise :func:`skim` is
:func:`skim_py`, a pure-Python twin with the same semantics written for
clarity rather than speed.

analyze: where globals and references sit
-----------------------------------------

:func:`analyze` runs an *abstract* pickle machine over both pickles (one
memo shared by both, as ZODB's unpickler has it), never importing or calling
anything, and reports where things are in the bytes so that a caller can
rewrite a record by byte patching::

    a = analyze(data)   # an Analysis named tuple

``end1``, ``max_memo``, ``has_ext``
    exactly :func:`skim`'s three values;
``has_stack_global``, ``has_frame``
    whether a STACK_GLOBAL / FRAME (protocol 4+) occurs in either pickle;
``protocol``
    the argument of the first pickle's first PROTO; without one, 1 when any
    opcode of protocol 1 or later occurs in the record, else 0;
``globals``
    a :class:`GlobalSite` ``(module, name, start, end, opcode, uses)`` for each GLOBAL
    (``"global"``), INST (``"inst"``) and STACK_GLOBAL (``"stack_global"``)
    opcode, in byte order.  ``start`` is the opcode's byte, ``end`` the
    position after its second newline (``start + 1`` for STACK_GLOBAL).
    Names are decoded as UTF-8, falling back to latin-1; a STACK_GLOBAL takes
    them from the two string literals below it (a Python 2 string is read as
    latin-1), or ``None`` when the item is not a literal string.  ``uses`` is
    a bit set over every use of the global's item, memo fetches included:
    :data:`USE_REDUCE` (1, the callable of a REDUCE), :data:`USE_NEWOBJ` (2,
    the class of NEWOBJ / NEWOBJ_EX), :data:`USE_INSTANTIATE` (4, always set
    for INST; the class of an OBJ), :data:`USE_CLASS_META` (8, the first
    pickle's value, or the first item of the 2-tuple that is), :data:`USE_PID_CLASS`
    (16, the class part of a recognised ``(oid, klass)`` or ``['m', (db, oid,
    klass)]`` reference) and :data:`USE_OTHER` (32, anything else: an
    argument, a container item, BUILD state or target, the state pickle's
    value, the target of SETITEM(S) or ADDITEMS, or of APPEND(S) on
    anything but a list);
``pids``
    a :class:`PidSite` ``(kind, oid_start, oid_length, database, shared, pickle)`` for
    each BINPERSID / PERSID, in byte order (so a reference nested in another's
    class part comes first, as :func:`pclasses.record.reader.scan_record` lists
    them).  ``kind`` is one of :data:`PID_KINDS`: the shapes of
    :mod:`pclasses.record.reader`, or ``"unknown"`` (``oid_start`` -1,
    ``oid_length`` 0, ``database`` None) for any other shape, a database name
    or oid that is not a literal (e.g. bytes that zodbpickle wrote below
    protocol 3 as ``_codecs.encode(...)``), a non-ASCII unicode oid, or a
    list changed by SETITEM(S) / BUILD / ADDITEMS before use.  ``data[oid_start:
    oid_start + oid_length]`` is the oid: the payload of the SHORT_BINBYTES,
    BINBYTES, BINBYTES8, SHORT_BINSTRING or BINSTRING opcode that pushed it
    (after the length), of an ASCII BINUNICODE-family literal, of a STRING /
    UNICODE literal without escapes, or PERSID's text.  ``database`` is
    decoded like :mod:`pclasses.record.reader` does (UTF-8 for unicode literals,
    latin-1 otherwise).  ``shared`` is True when patching that oid literal
    would change more than references: the literal, the pid holding it, or an
    inner tuple on the way, has a use outside persistent ids (fetched from
    the memo and used as data, ...).  Several references to the same object
    usually share one literal (the pickler memoizes the oid): they report the
    same offset and are not shared, so patch each distinct offset once, with
    a new oid that is a function of the old;
``pid_classes``, ``class_pid``
    per pid, its class part (``(module, name)`` or the index of the inner
    reference), and the index of the pid that is the record's class (-1);
``calls_non_global``, ``calls_pid``
    byte offsets of every REDUCE / NEWOBJ / NEWOBJ_EX / OBJ whose callable is
    not a GLOBAL item (a call's result, a memo-fetched non-global, a
    literal, a container, a persistent reference), and the subset whose
    callable is a persistent reference.  With :data:`Use.BUILD_TARGET` and
    :data:`Use.ITEMS_TARGET` on globals these are the call-site facts the
    import checker's policy needs;
``ok_to_patch``
    True when same-length oid patches at the reported offsets are safe: no
    STACK_GLOBAL or EXT opcode, and every pid is recognised, not shared, and
    located in a binary bytes / string payload (an oid inside a unicode,
    STRING, UNICODE or PERSID literal is located but an arbitrary 8-byte
    value cannot be put there).  FRAME does not matter to it (equal lengths
    keep frames valid); renaming globals changes lengths, which breaks FRAME
    lengths, hence ``has_frame``.

Limits: ``analyze(data, limits)`` takes
:meth:`Limits.as_tuple() <pclasses.record.limits.Limits.as_tuple>`
(default :data:`~pclasses.record.limits.DEFAULT_LIMITS`) and raises
:class:`ValueError` for nesting deeper than ``max_depth``, a container given
more than ``max_items`` items, a memo index above ``max_memo`` and more than
``max_collisions`` dict keys / set elements of one modelled hash in one
container (see ``design/decisions.md``, D27); the last is checked after the
walk and names the first key past the limit.

The machine gives every opcode of protocols 0-5 its stack effect on
abstract items (literals with their payload position, GLOBALs, tuples and
lists with their first children, one anonymous item for everything else).
Like zodbpickle's C unpickler, marks are stack positions: a counted pop
(TUPLE2, REDUCE, APPEND, ...) may take items below the top mark, and each
pickle starts with an empty stack and no marks.  Beyond what :func:`skim`
refuses it raises :class:`ValueError`, naming the byte offset, for a stack
underflow (including a mark left above the stack top), a missing MARK, an
odd number of SETITEMS items, a GET of a memo index never stored, a GET
argument that is not plain decimal digits, and a memo index larger than
``len(data)`` (checked before anything is stored, so memory stays
proportional to the record).  Items left on the stack, open marks and an
odd DICT are accepted, as the unpickler accepts them.  A *use* is being
popped as an opcode's argument or stored into a container (a memo fetch or
DUP is not a use, nor is POP); an oid literal's uses as part of recognised
persistent ids are set apart to decide ``shared``.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "skim",
    "skim_py",
    "skim_c",
    "HAVE_C",
    "MAX_INDEX",
    "Analysis",
    "analyze",
    "analyze_py",
    "analyze_c",
    "HAVE_C_ANALYZE",
    "census",
    "census_py",
    "census_c",
    "PID_KINDS",
    "USE_REDUCE",
    "USE_NEWOBJ",
    "USE_INSTANTIATE",
    "USE_CLASS_META",
    "USE_PID_CLASS",
    "USE_OTHER",
    "USE_BUILD_TARGET",
    "USE_ITEMS_TARGET",
    "Use",
    "EdgeKind",
    "GlobalSite",
    "PidSite",
]

#: What a PUT index that does not fit a signed 64-bit integer is reported as.
MAX_INDEX = 2**63 - 1

# Argument layouts, by opcode byte.
_NOARG = 0  # no argument
_LINE = 1  # one newline-terminated argument
_LINE2 = 2  # two newline-terminated arguments (GLOBAL, INST)
_FIXED = 3  # a fixed number of bytes
_COUNTED = 4  # an unsigned little-endian length of n bytes, then that many bytes
_STOP = 5
_PUT = 6  # decimal digits, newline
_BINPUT = 7  # fixed bytes, unsigned little-endian memo index
_MEMOIZE = 8
_EXT = 9  # fixed bytes, extension code
_FRAME = 10  # 8-byte length, contents are opcodes

_LAYOUT: dict[int, tuple[int, int]] = {}


def _define(kind: int, n: int, opcodes: bytes) -> None:
    for op in opcodes:
        assert op not in _LAYOUT, hex(op)
        _LAYOUT[op] = (kind, n)


_define(_STOP, 0, b".")
_define(
    _NOARG,
    0,
    b"(012NQRabdelostu)]}"  # MARK POP POP_MARK DUP NONE BINPERSID REDUCE APPEND
    # BUILD DICT APPENDS LIST OBJ SETITEM TUPLE SETITEMS EMPTY_TUPLE EMPTY_LIST
    # EMPTY_DICT
    b"\x81\x85\x86\x87\x88\x89"  # NEWOBJ TUPLE1 TUPLE2 TUPLE3 NEWTRUE NEWFALSE
    b"\x8f\x90\x91\x92\x93"  # EMPTY_SET ADDITEMS FROZENSET NEWOBJ_EX STACK_GLOBAL
    b"\x97\x98",  # NEXT_BUFFER READONLY_BUFFER
)
_define(_MEMOIZE, 0, b"\x94")
_define(_LINE, 0, b"ILFSVPg")  # INT LONG FLOAT STRING UNICODE PERSID GET
_define(_LINE2, 0, b"ci")  # GLOBAL INST
_define(_PUT, 0, b"p")
_define(_FIXED, 1, b"\x80Kh")  # PROTO BININT1 BINGET
_define(_FIXED, 2, b"M")  # BININT2
_define(_FIXED, 4, b"Jj")  # BININT LONG_BINGET
_define(_FIXED, 8, b"G")  # BINFLOAT
_define(_FRAME, 8, b"\x95")
_define(_BINPUT, 1, b"q")
_define(_BINPUT, 4, b"r")  # LONG_BINPUT
_define(_EXT, 1, b"\x82")
_define(_EXT, 2, b"\x83")
_define(_EXT, 4, b"\x84")
_define(_COUNTED, 1, b"UC\x8c\x8a")  # SHORT_BINSTRING SHORT_BINBYTES
# SHORT_BINUNICODE LONG1
_define(_COUNTED, 4, b"TBX\x8b")  # BINSTRING BINBYTES BINUNICODE LONG4
_define(_COUNTED, 8, b"\x8d\x8e\x96")  # BINUNICODE8 BINBYTES8 BYTEARRAY8

_DIGITS = frozenset(b"0123456789")
_WHICH = ("first", "second")


def _truncated(op: int, at: int, which: str, need: int, have: int) -> ValueError:
    return ValueError(
        f"truncated argument of opcode 0x{op:02x} at offset {at} "
        f"({which} pickle): needs {need} bytes, {have} left"
    )


def skim_py(data: Any) -> tuple[int, int, bool]:
    """Pure-Python :func:`skim`; same results and errors as the C version."""
    if not isinstance(data, bytes):
        with memoryview(data) as view, view.cast("B") as flat:
            data = flat.tobytes()
    return _skim_bytes(data)


def _skim_bytes(buf: bytes) -> tuple[int, int, bool]:
    length = len(buf)
    pos = 0
    max_memo = -1
    stores = 0  # memo stores so far, over both pickles (MEMOIZE's index)
    has_ext = False
    end1 = -1
    for which in _WHICH:
        while True:
            if pos >= length:
                raise ValueError(
                    f"missing STOP: {which} pickle runs to the end of data "
                    f"at offset {length}"
                )
            at = pos
            op = buf[pos]
            pos += 1
            layout = _LAYOUT.get(op)
            if layout is None:
                raise ValueError(
                    f"unknown opcode 0x{op:02x} at offset {at} ({which} pickle)"
                )
            kind, n = layout
            if kind == _STOP:
                break
            if kind == _NOARG:
                continue
            if kind == _MEMOIZE:
                max_memo = max(max_memo, stores)
                stores += 1
                continue
            if kind in (_LINE, _LINE2, _PUT):
                start = pos
                for _ in range(2 if kind == _LINE2 else 1):
                    start = pos
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        raise ValueError(
                            f"truncated argument of opcode 0x{op:02x} at offset "
                            f"{at} ({which} pickle): no newline in the "
                            f"{length - start} bytes left"
                        )
                    pos = nl + 1  # past the newline
                if kind == _PUT:
                    arg = buf[start : pos - 1]
                    if not arg or any(c not in _DIGITS for c in arg):
                        raise ValueError(
                            f"malformed PUT argument at offset {at} "
                            f"({which} pickle): not decimal digits"
                        )
                    max_memo = max(max_memo, min(int(arg), MAX_INDEX))
                    stores += 1
                continue
            # Every other layout starts with n fixed bytes.
            if length - pos < n:
                raise _truncated(op, at, which, n, length - pos)
            value = int.from_bytes(buf[pos : pos + n], "little", signed=False)
            pos += n
            if kind == _FIXED:
                continue
            if kind == _BINPUT:
                max_memo = max(max_memo, value)
                stores += 1
                continue
            if kind == _EXT:
                has_ext = True
                continue
            # _COUNTED and _FRAME: value is a length, checked against what is left.
            if value > length - pos:
                raise _truncated(op, at, which, value, length - pos)
            if kind == _COUNTED:
                pos += value
            # _FRAME: the frame's contents are walked as ordinary opcodes.
        if which == "first":
            end1 = pos
    return end1, max_memo, has_ext


# ---------------------------------------------------------------------------
# analyze: an abstract pickle machine over both pickles
# ---------------------------------------------------------------------------

class Use(enum.IntFlag):
    """How a global's item is used (the ``uses`` of a :class:`GlobalSite`).

    A bit set over every use of the item, memo fetches included.
    """

    #: the callable of a REDUCE
    REDUCE = 1
    #: the class of a NEWOBJ / NEWOBJ_EX
    NEWOBJ = 2
    #: the class of an INST (always set on its own entry) or of an OBJ
    INSTANTIATE = 4
    #: the record's class metadata (the first pickle's value, or the first
    #: item of the 2-tuple that is)
    CLASS_META = 8
    #: the class part of a recognised ``(oid, klass)`` or
    #: ``['m', (db, oid, klass)]`` persistent reference
    PID_CLASS = 16
    #: anything else: an argument, a container item, BUILD state or target,
    #: the state pickle's value, the target of SETITEM(S) / ADDITEMS, or of
    #: APPEND(S) on anything but a list
    OTHER = 32
    #: the object BUILD sets state on (also counted as OTHER)
    BUILD_TARGET = 64
    #: the object APPEND(S) / SETITEM(S) / ADDITEMS add to (also OTHER)
    ITEMS_TARGET = 128


# Module-level names of the bits (kept for existing callers).
USE_REDUCE = Use.REDUCE
USE_NEWOBJ = Use.NEWOBJ
USE_INSTANTIATE = Use.INSTANTIATE
USE_CLASS_META = Use.CLASS_META
USE_PID_CLASS = Use.PID_CLASS
USE_OTHER = Use.OTHER
USE_BUILD_TARGET = Use.BUILD_TARGET
USE_ITEMS_TARGET = Use.ITEMS_TARGET

_USES: dict[int, Use] = {}


def _use(bits: int) -> Use:
    u = _USES.get(bits)
    if u is None:
        u = _USES[bits] = Use(bits)
    return u


class EdgeKind(str, enum.Enum):
    """The kind of a persistent reference (see :mod:`pclasses.record`).

    Members are strings (``EdgeKind.OID == "oid"``) and print as their value.
    """

    OID = "oid"
    OID_CLASS = "oid_class"
    WEAK = "weak"
    MULTI_OID = "multi_oid"
    MULTI = "multi"
    LEGACY = "legacy"
    UNKNOWN = "unknown"
    #: a remote reference of a tree of databases (:mod:`pclasses.record.remote`):
    #: not a persistent id, so never a ``PidSite``; only :func:`edges` reports it
    REMOTE = "remote"

    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]


#: The ``kind`` of a pid entry: :data:`pclasses.record.reader.REFERENCE_KINDS`
#: plus ``"unknown"``, in that order.
PID_KINDS: tuple[EdgeKind, ...] = tuple(k for k in EdgeKind if k is not EdgeKind.REMOTE)
_EDGE_KIND = {k.value: k for k in EdgeKind}


class GlobalSite(NamedTuple):
    """One GLOBAL / INST / STACK_GLOBAL opcode of a record."""

    #: the module name (``None``: a STACK_GLOBAL whose item is not a literal)
    module: str | None
    #: the global's name (``None`` as for ``module``)
    name: str | None
    #: the opcode's byte offset
    start: int
    #: the offset after its second newline (``start + 1`` for STACK_GLOBAL)
    end: int
    #: ``"global"``, ``"inst"`` or ``"stack_global"``
    opcode: str
    #: every use of the global's item
    uses: Use


class PidSite(NamedTuple):
    """One PERSID / BINPERSID opcode of a record: where its oid sits."""

    kind: EdgeKind
    #: ``data[oid_start:oid_start + oid_length]`` is the oid (-1 if unknown)
    oid_start: int
    oid_length: int
    #: the database name of a cross-database / external weak reference
    database: str | None
    #: patching the oid literal would change more than references
    shared: bool
    #: 0 for the class pickle, 1 for the state pickle
    pickle: int


class Analysis(NamedTuple):
    """What :func:`analyze` reports about a record (see the module docstring)."""

    end1: int
    max_memo: int
    has_ext: bool
    has_stack_global: bool
    protocol: int
    #: one entry per GLOBAL / INST / STACK_GLOBAL opcode, in byte order
    globals: list[GlobalSite]
    #: one entry per PERSID / BINPERSID opcode, in byte order
    pids: list[PidSite]
    ok_to_patch: bool
    has_frame: bool
    #: per entry of ``pids``: the class part of an ``oid_class`` / ``multi``
    #: reference as ``(module, name)`` (a GLOBAL or a pair of string
    #: literals), the index in ``pids`` of a persistent reference standing
    #: for the class (a database-resident class), or ``None``
    pid_classes: list[tuple[str | None, str | None] | int | None]
    #: index in ``pids`` of the reference that is the record's class (class
    #: metadata ``ref`` or ``(ref, args)``), else -1
    class_pid: int
    #: byte offsets of every REDUCE / NEWOBJ / NEWOBJ_EX / OBJ whose callable
    #: is not a GLOBAL item (a call's result, a persistent reference, a
    #: literal, a container, ...): empty for what ZODB writes for ordinary
    #: classes
    calls_non_global: list[int]
    #: the subset of ``calls_non_global`` whose callable is a persistent
    #: reference (instances of database-resident classes)
    calls_pid: list[int]


# Opcodes of protocol 0 (every other opcode is "binary", protocol 1+).
_PROTO0 = frozenset(b"(.02FILNPRSVabcdgilpst")

# Item kinds.  Item 0 is the one anonymous item that stands for every value
# whose identity does not matter (constants, dicts, sets, results of calls).
_ANON = 0
_BYTES = 1  # SHORT_BINBYTES, BINBYTES, BINBYTES8
_STR = 2  # SHORT_BINSTRING, BINSTRING (a Python 2 str)
_UNI = 3  # SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
_TSTR = 4  # STRING whose quoted text has no backslash
_TUNI = 5  # UNICODE whose text has no backslash
_GLOBAL = 6
_TUPLE = 7
_LIST = 8
_PREF = 9  # the result of a PERSID / BINPERSID (x0: its pid's index)
_NUM = 10  # a number or None / True / False (fp: its hash model)
_DICT = 11  # EMPTY_DICT, DICT
_SET = 12  # EMPTY_SET
_FSET = 13  # FROZENSET
_CALL = 14  # the result of REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST

# Hash model (see design/decisions.md, "hash floods").  64-bit values.
_M64 = (1 << 64) - 1
_FP_UNKNOWN = 0x9E3779B97F4A7C15  # lane of a value whose hash is not modelled
_FP_NONE = 0x6A09E667F3BCC908  # None (its hash is a per-process constant)
_FP_TEXTNUM = 0x3C6EF372FE94F82B  # FLOAT text, INT/LONG text not plain decimal
_FNV_BASIS = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_XXP1 = 11400714785074694791
_XXP2 = 14029467366897019727
_XXP5 = 2870177450012600261


def _fnv(data: bytes, tag: int) -> int:
    h = _FNV_BASIS ^ tag
    for c in data:
        h = ((h ^ c) * _FNV_PRIME) & _M64
    return h


def _tuple_fp(lanes: list[int]) -> int:
    # CPython's tuple hash (xxHash-based, 3.8+) over the lanes.
    acc = _XXP5
    for lane in lanes:
        acc = (acc + lane * _XXP2) & _M64
        acc = ((acc << 31) | (acc >> 33)) & _M64
        acc = (acc * _XXP1) & _M64
    acc = (acc + (len(lanes) ^ (_XXP5 ^ 3527539))) & _M64
    return 1546275796 if acc == _M64 else acc


def _fset_fp(lanes: list[int]) -> int:
    h = 0
    for lane in lanes:
        h ^= (((lane ^ 89869747) ^ (lane << 16)) * 3644798167) & _M64
    h ^= ((len(lanes) + 1) * 1927868237) & _M64
    h ^= (h >> 11) ^ (h >> 25)
    return (h * 69069 + 907133923) & _M64


def _text_int_fp(arg: bytes, long: bool) -> int:
    # INT / LONG text: plain decimal (what pickle writes) hashes exactly;
    # anything the unpickler reads otherwise (octal, hex, spaces,
    # underscores) shares one conservative value.
    if long and arg.endswith(b"L"):
        arg = arg[:-1]
    elif not long and arg in (b"00", b"01"):
        return arg[1] - 0x30  # False / True
    digits = arg[1:] if arg[:1] == b"-" else arg
    if not digits or any(c not in _DIGITS for c in digits) or (
            len(digits) > 1 and digits[0] == 0x30):
        return _FP_TEXTNUM
    return hash(int(arg)) & _M64
# Item flags.
_F_ATTR = 1  # the placements of this container's path children were re-attributed
_F_NONPID = 2  # used in a role with a bit (1, 2, 4, 8, 16)
_F_TAINT = 4  # a list changed by something other than APPEND(S)
_PIDPATH = 256  # role: the pid itself / the containers and oid inside it

_DEC_UTF8 = 0  # UTF-8, falling back to latin-1
_DEC_LATIN1 = 1

_OPNAME = {0x63: "global", 0x69: "inst", 0x93: "stack_global"}


def _decode(raw: bytes, mode: int) -> str:
    if mode == _DEC_UTF8:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1")


def _machine_error(what: str, op: int, at: int, which: str) -> ValueError:
    return ValueError(f"{what}: opcode 0x{op:02x} at offset {at} ({which} pickle)")


def analyze_py(data: Any, limits: tuple[int, int, int, int] | None = None) -> Analysis:
    """Pure-Python :func:`analyze`; same results and errors as the C version.

    ``data`` is any bytes-like object; ``limits`` is
    :meth:`Limits.as_tuple() <pclasses.record.limits.Limits.as_tuple>`
    (default :data:`~pclasses.record.limits.DEFAULT_LIMITS`).  See the module
    docstring for the fields of the :class:`Analysis` and the errors raised.
    """
    if not isinstance(data, bytes):
        with memoryview(data) as view, view.cast("B") as flat:
            data = flat.tobytes()
    if limits is None:
        limits = _DEFAULT_LIMITS
    elif not (isinstance(limits, tuple) and len(limits) == 4
              and all(type(v) is int and 1 <= v <= 2**62 for v in limits)):
        raise TypeError("limits: expected a tuple of four ints from 1 to 2**62")
    return Analysis._make(_analyze_bytes(data, limits))


_DEFAULT_LIMITS = DEFAULT_LIMITS.as_tuple()


def _analyze_bytes(  # noqa: C901 - one opcode switch
    buf: bytes, limits: tuple[int, int, int, int]
) -> tuple[Any, ...]:
    length = len(buf)
    # The item arena, as parallel lists.  x0/x1/x2 hold a literal's payload
    # offset and length, a GLOBAL's entry index, or a container's first three
    # children; cnt a container's child count (saturating at 4).
    kind = [_ANON]
    flags = [0]
    bits = [0]
    cnt = [0]
    pend = [0]  # USE_OTHER uses not re-attributed to another role
    x0 = [0]
    x1 = [0]
    x2 = [0]
    slots = (x0, x1, x2)
    depth = [0]  # containers and calls nested inside (0 for scalars)
    fp: list[int | None] = [None]  # hash model of a key (None: not modelled, skipped)
    count = [0]  # items a container received
    max_depth, max_items, max_memo_limit, max_coll = limits
    keys: list[tuple[int, int, int]] = []  # (container, fp, offset) per key

    def new(k: int, a: int = 0, b: int = 0) -> int:
        depth.append(0)
        fp.append(None)
        count.append(0)
        kind.append(k)
        flags.append(0)
        bits.append(0)
        cnt.append(0)
        pend.append(0)
        x0.append(a)
        x1.append(b)
        x2.append(0)
        return len(kind) - 1

    def use(i: int, role: int) -> None:
        if i:
            if role == USE_OTHER:
                pend[i] += 1
            elif role != _PIDPATH:
                bits[i] |= role
                flags[i] |= _F_NONPID

    def reattr(i: int, role: int) -> None:
        # A placement into a container (counted as USE_OTHER) turns out to
        # have another role.
        if i:
            pend[i] -= 1
            if role != _PIDPATH:
                bits[i] |= role
                flags[i] |= _F_NONPID

    def add_child(c: int, i: int) -> None:
        use(i, USE_OTHER)
        n = cnt[c]
        if n < 3:
            slots[n][c] = i
        if n < 4:
            cnt[c] = n + 1

    def lane(i: int) -> int:
        f = fp[i]
        if f is not None:
            return f
        k = kind[i]
        if _BYTES <= k <= _TUNI:
            return _fnv(lit(i), 2 if k == _BYTES else 1)
        return _FP_UNKNOWN

    def limit_error(what: str) -> ValueError:
        return _machine_error(what, op, at, wname)

    def nest(i: int, children: list[int]) -> None:
        # i holds children: its depth is one more than theirs.
        if i:
            d = 1 + max((depth[c] for c in children), default=0)
            if d > depth[i]:
                if d > max_depth:
                    raise limit_error(f"nesting deeper than {max_depth}")
                depth[i] = d

    def add_items(i: int, n: int) -> None:
        c = count[i] + n if i else n
        if c > max_items:
            raise limit_error(f"more than {max_items} items in one container")
        if i:
            count[i] = c

    def add_key(c: int, k: int) -> None:
        f = fp[k]
        if f is not None:
            keys.append((c, f, at))

    def container(k: int, children: list[int]) -> int:
        t = new(k)
        add_items(t, len(children) // 2 if k == _DICT else len(children))
        nest(t, children)
        if k == _TUPLE:
            fp[t] = _tuple_fp([lane(i) for i in children])
        elif k == _FSET:
            for i in children:
                add_key(t, i)
            fp[t] = _fset_fp([lane(i) for i in children])
        elif k == _DICT:
            for i in children[: len(children) - len(children) % 2 : 2]:
                add_key(t, i)
        return t

    def num(f: int | None) -> int:
        t = new(_NUM)
        fp[t] = f
        return t

    op = at = 0
    wname = _WHICH[0]
    stack: list[int] = []
    marks: list[int] = []
    memo: list[int] = []  # item per index, -1 when empty
    memo_len = 0  # occupied memo slots (MEMOIZE's index)
    stores = 0
    max_memo = -1
    # globals: [op, offset, end, item, mod_raw, mod_mode, name_raw, name_mode]
    globs: list[list[Any]] = []
    # pids: [kind, which, P, A, L, D, oid_offset, oid_length, persid, K]
    pids: list[list[Any]] = []
    has_ext = has_sg = has_frame = saw_binary = False
    class_pid = -1
    calls_ng: list[int] = []  # offsets of calls whose callable is not a GLOBAL
    calls_pid: list[int] = []  # ... whose callable is a persistent reference
    proto = -1
    end1 = -1
    pos = 0

    def is_lit(i: int) -> bool:
        return _BYTES <= kind[i] <= _TUNI

    def lit(i: int) -> bytes:
        return buf[x0[i] : x0[i] + x1[i]]

    def oid_ok(i: int) -> bool:
        k = kind[i]
        if k == _UNI:
            return lit(i).isascii()
        return _BYTES <= k <= _TUNI

    def classify(p: int, which: int) -> None:
        a = lo = d = klass = -1
        pk = "unknown"
        k = kind[p]
        if _BYTES <= k <= _TUNI:
            lo, pk = p, "oid"
        elif k == _TUPLE:
            if cnt[p] == 2:
                lo, klass, pk = x0[p], x1[p], "oid_class"
        elif k == _LIST and not flags[p] & _F_TAINT:
            if cnt[p] == 1:
                lo, pk = x0[p], "legacy"
            elif cnt[p] == 2:
                tag, t = x0[p], x1[p]
                if is_lit(tag) and x1[tag] == 1 and kind[t] == _TUPLE:
                    ch, n = buf[x0[tag]], cnt[t]
                    if ch == 0x77 and n == 1:  # 'w'
                        a, lo, pk = t, x0[t], "weak"
                    elif ch == 0x77 and n == 2:
                        a, lo, d, pk = t, x0[t], x1[t], "weak"
                    elif ch == 0x6E and n == 2:  # 'n'
                        a, d, lo, pk = t, x0[t], x1[t], "multi_oid"
                    elif ch == 0x6D and n == 3:  # 'm'
                        a, d, lo, klass, pk = t, x0[t], x1[t], x2[t], "multi"
        if pk != "unknown" and (not oid_ok(lo) or (d >= 0 and not is_lit(d))):
            pk = "unknown"
        if pk == "unknown":
            use(p, USE_OTHER)
            pids.append(["unknown", which, p, -1, -1, -1, -1, 0, False, -1])
            return
        # The pid itself is used in the pid role (nothing to count); the
        # placements on the path from it to the oid are re-attributed once
        # per container, as is a GLOBAL class part's placement.
        if p != lo and not flags[p] & _F_ATTR:
            flags[p] |= _F_ATTR
            reattr(a if a >= 0 else lo, _PIDPATH)
            if pk == "oid_class" and kind[klass] == _GLOBAL:
                reattr(klass, USE_PID_CLASS)
        if a >= 0 and not flags[a] & _F_ATTR:
            flags[a] |= _F_ATTR
            reattr(lo, _PIDPATH)
            if pk == "multi" and kind[klass] == _GLOBAL:
                reattr(klass, USE_PID_CLASS)
        pids.append([pk, which, p, a, lo, d, x0[lo], x1[lo], False, klass])

    for which in (0, 1):
        wname = _WHICH[which]
        stack.clear()
        marks.clear()
        while True:
            if pos >= length:
                raise ValueError(
                    f"missing STOP: {wname} pickle runs to the end of data "
                    f"at offset {length}"
                )
            at = pos
            op = buf[pos]
            pos += 1
            layout = _LAYOUT.get(op)
            if layout is None:
                raise ValueError(
                    f"unknown opcode 0x{op:02x} at offset {at} ({wname} pickle)"
                )
            if op not in _PROTO0:
                saw_binary = True
            lk, n = layout

            # -- the argument (checked as skim checks it) -------------------
            start = arg_end = value = 0
            start2 = arg_end2 = 0
            if lk in (_LINE, _LINE2, _PUT):
                start = pos
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    raise ValueError(
                        f"truncated argument of opcode 0x{op:02x} at offset "
                        f"{at} ({wname} pickle): no newline in the "
                        f"{length - start} bytes left"
                    )
                arg_end = nl
                pos = nl + 1
                if lk == _LINE2:
                    start2 = pos
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        raise ValueError(
                            f"truncated argument of opcode 0x{op:02x} at offset "
                            f"{at} ({wname} pickle): no newline in the "
                            f"{length - start2} bytes left"
                        )
                    arg_end2 = nl
                    pos = nl + 1
                elif lk == _PUT or op == 0x67:  # PUT, GET: decimal digits
                    arg = buf[start:arg_end]
                    if not arg or any(c not in _DIGITS for c in arg):
                        opname = "PUT" if lk == _PUT else "GET"
                        raise ValueError(
                            f"malformed {opname} argument at offset {at} "
                            f"({wname} pickle): not decimal digits"
                        )
                    value = min(int(arg), MAX_INDEX)
            elif lk not in (_NOARG, _STOP, _MEMOIZE):
                if length - pos < n:
                    raise _truncated(op, at, wname, n, length - pos)
                value = int.from_bytes(buf[pos : pos + n], "little", signed=False)
                pos += n
                if lk in (_COUNTED, _FRAME):
                    if value > length - pos:
                        raise _truncated(op, at, wname, value, length - pos)
                    start = pos
                    if lk == _COUNTED:
                        pos += value

            # -- the stack effect -------------------------------------------
            if lk == _STOP:
                if not stack:
                    raise _machine_error("stack underflow", op, at, wname)
                v = stack.pop()
                if which == 0:
                    if kind[v] == _PREF:
                        class_pid = x0[v]
                    elif kind[v] == _TUPLE and cnt[v] == 2 and kind[x0[v]] == _PREF:
                        class_pid = x0[x0[v]]
                    if kind[v] == _GLOBAL:
                        use(v, USE_CLASS_META)
                    else:
                        use(v, USE_OTHER)
                        if kind[v] == _TUPLE and cnt[v] == 2 and not flags[v] & _F_ATTR:
                            if kind[x0[v]] == _GLOBAL:
                                flags[v] |= _F_ATTR
                                reattr(x0[v], USE_CLASS_META)
                    end1 = pos
                else:
                    use(v, USE_OTHER)
                break
            if op == 0x28:  # MARK
                marks.append(len(stack))
            elif lk == _PUT or lk == _BINPUT or lk == _MEMOIZE:
                if lk == _MEMOIZE:
                    value = memo_len
                    max_memo = max(max_memo, stores)
                else:
                    max_memo = max(max_memo, value)
                stores += 1
                if value > length:
                    raise ValueError(
                        f"memo index {value} at offset {at} ({wname} pickle) "
                        f"is more than a {length}-byte record can fill"
                    )
                if value > max_memo_limit:
                    raise ValueError(
                        f"memo index {value} at offset {at} ({wname} pickle) "
                        f"is above the limit {max_memo_limit}"
                    )
                if not stack:
                    raise _machine_error("stack underflow", op, at, wname)
                if value >= len(memo):
                    memo.extend([-1] * (value + 1 - len(memo)))
                if memo[value] < 0:
                    memo_len += 1
                memo[value] = stack[-1]
            elif op in (0x67, 0x68, 0x6A):  # GET BINGET LONG_BINGET
                if value >= len(memo) or memo[value] < 0:
                    raise ValueError(
                        f"memo index {value} is not set at offset {at} ({wname} pickle)"
                    )
                stack.append(memo[value])
            elif lk == _COUNTED:
                if op in (0x43, 0x42, 0x8E):  # SHORT_BINBYTES BINBYTES BINBYTES8
                    stack.append(new(_BYTES, start, value))
                elif op in (0x55, 0x54):  # SHORT_BINSTRING BINSTRING
                    stack.append(new(_STR, start, value))
                elif op in (0x8C, 0x58, 0x8D):  # SHORT_BINUNICODE BINUNICODE(8)
                    stack.append(new(_UNI, start, value))
                elif op in (0x8A, 0x8B):  # LONG1 LONG4
                    v = int.from_bytes(buf[start : start + value], "little", signed=True)
                    stack.append(num(hash(v) & _M64))
                else:  # BYTEARRAY8
                    stack.append(0)
            elif op == 0x53:  # STRING: 'quoted', trailing blanks stripped
                e = arg_end
                while e > start and buf[e - 1] <= 0x20:
                    e -= 1
                q = buf[start] if e - start > 1 else 0
                if (
                    q in (0x22, 0x27)
                    and buf[e - 1] == q
                    and buf.find(b"\\", start + 1, e - 1) < 0
                ):
                    stack.append(new(_TSTR, start + 1, e - start - 2))
                else:
                    stack.append(0)
            elif op == 0x56:  # UNICODE (raw-unicode-escape)
                if buf.find(b"\\", start, arg_end) < 0:
                    stack.append(new(_TUNI, start, arg_end - start))
                else:
                    stack.append(0)
            elif op in (0x4B, 0x4D):  # BININT1 BININT2 (unsigned)
                stack.append(num(value))
            elif op == 0x4A:  # BININT (signed)
                v = value - (1 << 32) if value >= 1 << 31 else value
                stack.append(num(hash(v) & _M64))
            elif op == 0x47:  # BINFLOAT (big-endian double)
                f = struct.unpack(">d", buf[pos - 8 : pos])[0]
                stack.append(num(None if f != f else hash(f) & _M64))  # NaN: by identity
            elif op == 0x49:  # INT
                stack.append(num(_text_int_fp(buf[start:arg_end], False)))
            elif op == 0x4C:  # LONG
                stack.append(num(_text_int_fp(buf[start:arg_end], True)))
            elif op == 0x46:  # FLOAT text: not modelled, one conservative value
                stack.append(num(_FP_TEXTNUM))
            elif op == 0x4E:  # NONE
                stack.append(num(_FP_NONE))
            elif op in (0x88, 0x89):  # NEWTRUE NEWFALSE
                stack.append(num(1 if op == 0x88 else 0))
            elif op == 0x7D:  # EMPTY_DICT
                stack.append(container(_DICT, []))
            elif op == 0x8F:  # EMPTY_SET
                stack.append(container(_SET, []))
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(container(_TUPLE, []))
            elif op == 0x5D:  # EMPTY_LIST
                stack.append(container(_LIST, []))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1 TUPLE2 TUPLE3
                k = op - 0x84
                if len(stack) < k:
                    raise _machine_error("stack underflow", op, at, wname)
                t = container(_TUPLE, stack[-k:])
                for i in stack[-k:]:
                    add_child(t, i)
                del stack[-k:]
                stack.append(t)
            elif op in (0x74, 0x6C, 0x91, 0x64):  # TUPLE LIST FROZENSET DICT
                if not marks:
                    raise _machine_error("no MARK", op, at, wname)
                m = marks.pop()
                if m > len(stack):
                    if op != 0x64:  # DICT with the mark above the top: {}
                        raise _machine_error("stack underflow", op, at, wname)
                    stack.append(container(_DICT, []))
                    continue
                if op == 0x74 or op == 0x6C:
                    t = container(_TUPLE if op == 0x74 else _LIST, stack[m:])
                    for i in stack[m:]:
                        add_child(t, i)
                else:
                    t = container(_DICT if op == 0x64 else _FSET, stack[m:])
                    for i in stack[m:]:
                        use(i, USE_OTHER)
                del stack[m:]
                stack.append(t)
            elif op == 0x30:  # POP
                if marks and marks[-1] == len(stack):
                    marks.pop()
                elif stack:
                    stack.pop()
                else:
                    raise _machine_error("stack underflow", op, at, wname)
            elif op == 0x31:  # POP_MARK
                if not marks:
                    raise _machine_error("no MARK", op, at, wname)
                del stack[marks.pop() :]
            elif op == 0x32:  # DUP
                if not stack:
                    raise _machine_error("stack underflow", op, at, wname)
                stack.append(stack[-1])
            elif op in (0x61, 0x65, 0x73, 0x75, 0x90):
                # APPEND APPENDS SETITEM SETITEMS ADDITEMS: items into the
                # object below them (below the mark for the mark forms).
                if op == 0x61:
                    x = len(stack) - 1
                elif op == 0x73:
                    x = len(stack) - 2
                else:
                    if not marks:
                        raise _machine_error("no MARK", op, at, wname)
                    x = marks.pop()
                if x > len(stack) or x <= 0:
                    raise _machine_error("stack underflow", op, at, wname)
                if x == len(stack):
                    continue
                if op == 0x75 and (len(stack) - x) % 2:
                    raise _machine_error("odd number of items", op, at, wname)
                target = stack[x - 1]
                added = stack[x:]
                pairs = op in (0x73, 0x75)  # SETITEM SETITEMS
                add_items(target, len(added) // 2 if pairs else len(added))
                nest(target, added)
                if pairs and kind[target] == _DICT:
                    for i in added[::2]:
                        add_key(target, i)
                elif op == 0x90 and kind[target] == _SET:
                    for i in added:
                        add_key(target, i)
                if kind[target] == _LIST and op in (0x61, 0x65):
                    for i in stack[x:]:
                        add_child(target, i)
                else:
                    use(target, USE_OTHER)
                    if kind[target] == _GLOBAL:
                        use(target, USE_ITEMS_TARGET)
                    if kind[target] == _LIST:
                        flags[target] |= _F_TAINT
                    for i in stack[x:]:
                        use(i, USE_OTHER)
                del stack[x:]
            elif op == 0x62:  # BUILD
                if len(stack) < 2:
                    raise _machine_error("stack underflow", op, at, wname)
                state = stack.pop()
                use(state, USE_OTHER)
                target = stack[-1]
                nest(target, [state])
                use(target, USE_OTHER)
                if kind[target] == _GLOBAL:
                    use(target, USE_BUILD_TARGET)
                if kind[target] == _LIST:
                    flags[target] |= _F_TAINT
            elif op in (0x52, 0x81, 0x92):  # REDUCE NEWOBJ NEWOBJ_EX
                k = 3 if op == 0x92 else 2
                if len(stack) < k:
                    raise _machine_error("stack underflow", op, at, wname)
                for i in stack[1 - k :]:
                    use(i, USE_OTHER)
                c = stack[-k]
                if kind[c] != _GLOBAL:
                    calls_ng.append(at)
                    if kind[c] == _PREF:
                        calls_pid.append(at)
                use(c, USE_REDUCE if op == 0x52 else USE_NEWOBJ)
                t = new(_CALL)
                nest(t, stack[-k:])
                del stack[-k:]
                stack.append(t)
            elif op == 0x6F:  # OBJ: MARK cls args... -> obj
                if not marks:
                    raise _machine_error("no MARK", op, at, wname)
                m = marks.pop()
                if m >= len(stack):
                    raise _machine_error("stack underflow", op, at, wname)
                c = stack[m]
                if kind[c] != _GLOBAL:
                    calls_ng.append(at)
                    if kind[c] == _PREF:
                        calls_pid.append(at)
                use(c, USE_INSTANTIATE)
                for i in stack[m + 1 :]:
                    use(i, USE_OTHER)
                t = new(_CALL)
                nest(t, stack[m:])
                del stack[m:]
                stack.append(t)
            elif op == 0x69:  # INST: MARK args... INST module name -> obj
                if not marks:
                    raise _machine_error("no MARK", op, at, wname)
                m = marks.pop()
                if m > len(stack):
                    raise _machine_error("stack underflow", op, at, wname)
                globs.append(
                    [
                        op,
                        at,
                        pos,
                        -1,
                        buf[start:arg_end],
                        _DEC_UTF8,
                        buf[start2:arg_end2],
                        _DEC_UTF8,
                    ]
                )
                for i in stack[m:]:
                    use(i, USE_OTHER)
                t = new(_CALL)
                nest(t, stack[m:])
                del stack[m:]
                stack.append(t)
            elif op == 0x63:  # GLOBAL
                g = new(_GLOBAL, len(globs))
                globs.append(
                    [
                        op,
                        at,
                        pos,
                        g,
                        buf[start:arg_end],
                        _DEC_UTF8,
                        buf[start2:arg_end2],
                        _DEC_UTF8,
                    ]
                )
                stack.append(g)
            elif op == 0x93:  # STACK_GLOBAL: module name -> global
                if len(stack) < 2:
                    raise _machine_error("stack underflow", op, at, wname)
                has_sg = True
                names: list[Any] = []
                for i in stack[-2:]:
                    use(i, USE_OTHER)
                    if kind[i] in (_STR, _UNI, _TSTR, _TUNI):
                        names += [lit(i), _DEC_UTF8 if kind[i] == _UNI else _DEC_LATIN1]
                    else:
                        names += [None, _DEC_UTF8]
                del stack[-2:]
                g = new(_GLOBAL, len(globs))
                globs.append([op, at, at + 1, g, *names])
                stack.append(g)
            elif op == 0x51:  # BINPERSID
                if not stack:
                    raise _machine_error("stack underflow", op, at, wname)
                p = stack.pop()
                classify(p, which)
                t = new(_PREF, len(pids) - 1)
                nest(t, [p])
                stack.append(t)
            elif op == 0x50:  # PERSID: the text is the oid
                pids.append(
                    ["oid", which, -1, -1, -1, -1, start, arg_end - start, True, -1]
                )
                t = new(_PREF, len(pids) - 1)
                nest(t, [])
                stack.append(t)
            elif op == 0x98:  # READONLY_BUFFER
                if not stack:
                    raise _machine_error("stack underflow", op, at, wname)
                use(stack.pop(), USE_OTHER)
                stack.append(0)
            elif lk == _EXT:
                has_ext = True
                stack.append(0)
            elif op == 0x97:  # NEXT_BUFFER
                stack.append(0)
            elif op == 0x80:  # PROTO
                if which == 0 and proto < 0:
                    proto = value
            elif op == 0x95:  # FRAME
                has_frame = True
            else:  # pragma: no cover - every opcode is handled above
                raise AssertionError(hex(op))

    # Hash floods: checked after the walk, in one sort (see the C twin).
    # The error names the first key, in byte order, past the limit.
    big = sorted(key for key in keys if count[key[0]] > max_coll)
    worst = -1
    i = 0
    while i < len(big):
        j = i + 1
        while j < len(big) and big[j][:2] == big[i][:2]:
            j += 1
        if j - i > max_coll:
            a = big[i + max_coll][2]
            if worst < 0 or a < worst:
                worst = a
        i = j
    if worst >= 0:
        raise _machine_error(
            f"more than {max_coll} keys of one hash in one container",
            buf[worst],
            worst,
            _WHICH[0] if worst < end1 else _WHICH[1],
        )

    def nonpid(i: int) -> bool:
        return i >= 0 and (pend[i] > 0 or bool(flags[i] & _F_NONPID))

    out_globals = []
    for op, off, end, item, mraw, mmode, nraw, nmode in globs:
        if item < 0:
            u = USE_INSTANTIATE
        else:
            u = bits[item] | (USE_OTHER if pend[item] > 0 else 0)
        out_globals.append(
            GlobalSite(
                None if mraw is None else _decode(mraw, mmode),
                None if nraw is None else _decode(nraw, nmode),
                off,
                end,
                _OPNAME[op],
                _use(u),
            )
        )
    # An oid literal is shared when anything on the path from any pid to it
    # (the literal, an inner tuple, the pid) has a use outside a pid: then
    # patching the literal changes more than references.
    dirty = {
        lo
        for pk, _w, p, a, lo, _d, _o, _n, persid, _k in pids
        if pk != "unknown" and not persid and (nonpid(p) or nonpid(a) or nonpid(lo))
    }
    ok = not has_sg and not has_ext
    def class_part(k: int) -> tuple[str | None, str | None] | int | None:
        if k < 0:
            return None
        if kind[k] == _GLOBAL:
            g = out_globals[x0[k]]
            return (g.module, g.name)
        if kind[k] == _PREF:
            return x0[k]
        if kind[k] == _TUPLE and cnt[k] == 2:
            mi, ni = x0[k], x1[k]
            if _STR <= kind[mi] <= _TUNI and _STR <= kind[ni] <= _TUNI:
                return (
                    _decode(lit(mi), _DEC_UTF8 if kind[mi] == _UNI else _DEC_LATIN1),
                    _decode(lit(ni), _DEC_UTF8 if kind[ni] == _UNI else _DEC_LATIN1),
                )
        return None

    out_pids = []
    pid_classes = []
    for pk, which, _p, _a, lo, d, off, olen, persid, kl in pids:
        pid_classes.append(class_part(kl))
        if pk == "unknown":
            out_pids.append(PidSite(EdgeKind.UNKNOWN, -1, 0, None, False, which))
            ok = False
            continue
        shared = lo in dirty
        if persid or shared or kind[lo] not in (_BYTES, _STR):
            ok = False
        db = None
        if d >= 0:
            db = _decode(lit(d), _DEC_UTF8 if kind[d] == _UNI else _DEC_LATIN1)
        out_pids.append(PidSite(_EDGE_KIND[pk], off, olen, db, shared, which))
    protocol = proto if proto >= 0 else (1 if saw_binary else 0)
    return (
        end1,
        max_memo,
        has_ext,
        has_sg,
        protocol,
        out_globals,
        out_pids,
        ok,
        has_frame,
        pid_classes,
        class_pid,
        calls_ng,
        calls_pid,
    )


_SkimFunc = Callable[[Any], "tuple[int, int, bool]"]

#: ``PCLASSES_PURE_PYTHON=1`` (any value but empty or ``0``) forces the
#: pure-Python twins even when the extension is built.
PURE_PYTHON: bool = os.environ.get("PCLASSES_PURE_PYTHON", "") not in ("", "0")

skim_c: _SkimFunc | None
try:
    if PURE_PYTHON:
        raise ImportError("PCLASSES_PURE_PYTHON is set")
    from ._skim import skim as _c_skim

    skim_c = _c_skim
except ImportError:  # the optional extension was not built
    skim_c = None

#: True when the C implementation (``pclasses.record._skim``) is importable.
HAVE_C: bool = skim_c is not None
#: ``skim(data) -> (end1, max_memo_index, has_ext)``: the C version when
#: built, else :func:`skim_py`.
skim: _SkimFunc = skim_c if skim_c is not None else skim_py


_AnalyzeFunc = Callable[[Any], Analysis]

analyze_c: _AnalyzeFunc | None
try:
    if PURE_PYTHON:
        raise ImportError("PCLASSES_PURE_PYTHON is set")
    from ._skim import _set_default_limits, _set_types
    from ._skim import analyze as _c_analyze

    analyze_c = _c_analyze
except ImportError:  # not built (or built before analyze)
    analyze_c = None
else:
    # The C function returns the typed results once it knows the types.
    _set_types(Analysis, GlobalSite, PidSite, Use, PID_KINDS)
    _set_default_limits(_DEFAULT_LIMITS)

_current_limits: Limits = DEFAULT_LIMITS


def set_limits(limits: Limits) -> Limits:
    """Make ``limits`` the bounds every reader of this process applies (C
    and Python twin alike); returns the limits in force before.

    For a database whose real records exceed the defaults (a container of
    more than five million items, say), raise the one bound that is too
    low; for untrusted input, lower them.  See ``docs/security.md``.
    """
    global _DEFAULT_LIMITS, _current_limits
    if not isinstance(limits, Limits):
        raise TypeError(f"set_limits() takes a pclasses.record.Limits, not {limits!r}")
    previous = _current_limits
    _current_limits = limits
    _DEFAULT_LIMITS = limits.as_tuple()
    if analyze_c is not None:
        _set_default_limits(_DEFAULT_LIMITS)
    return previous


#: True when the C :func:`analyze` is importable.
HAVE_C_ANALYZE: bool = analyze_c is not None
#: ``analyze(data) -> Analysis``: the C version when built, else
#: :func:`analyze_py`.
analyze: _AnalyzeFunc = analyze_c if analyze_c is not None else analyze_py


_Pair = tuple[str, str]
_CensusFunc = Callable[[Any], tuple[_Pair | None, tuple[_Pair, ...]]]


def census_py(data: Any) -> tuple[_Pair | None, tuple[_Pair, ...]]:
    """What a class census needs from a record, as plain tuples.

    ``(klass, names)``: ``klass`` is ``(module, name)`` of the first global
    whose uses include :data:`Use.CLASS_META` (the record's class), or
    ``None`` (class metadata named by strings, or a persistent class);
    ``names`` is ``(module, name)`` of every other global of
    :attr:`Analysis.globals` whose names are known, in byte order, repeats
    kept.  The same walk, limits and errors as :func:`analyze`; the C
    version builds nothing else (no typed results per record).
    """
    klass: _Pair | None = None
    names: list[_Pair] = []
    for module, name, _start, _end, _op, uses in analyze_py(data).globals:
        if module is None or name is None:
            continue
        if klass is None and uses & 8:  # Use.CLASS_META, as a plain int
            klass = (module, name)
        else:
            names.append((module, name))
    return klass, tuple(names)


census_c: _CensusFunc | None
if analyze_c is None:
    census_c = None
else:
    from ._skim import census as _c_census

    census_c = _c_census

#: ``census(data) -> (klass, names)``: the C version when built, else
#: :func:`census_py`.
census: _CensusFunc = census_c if census_c is not None else census_py
