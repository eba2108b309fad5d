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
    one counter over both pickles, because ZODB (and :mod:`pclasses.records`)
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

:data:`HAVE_C` tells whether the C implementation (``pclasses._skim``,
built as an optional extension) is in use; otherwise :func:`skim` is
:func:`skim_py`, a pure-Python twin with the same semantics written for
clarity rather than speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["skim", "skim_py", "skim_c", "HAVE_C", "MAX_INDEX"]

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


_SkimFunc = Callable[[Any], "tuple[int, int, bool]"]

skim_c: _SkimFunc | None
try:
    from ._skim import skim as skim_c
except ImportError:  # the optional extension was not built
    skim_c = None

#: True when the C implementation (``pclasses._skim``) is importable.
HAVE_C: bool = skim_c is not None
#: ``skim(data) -> (end1, max_memo_index, has_ext)``: the C version when
#: built, else :func:`skim_py`.
skim: _SkimFunc = skim_c if skim_c is not None else skim_py
