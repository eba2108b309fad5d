"""Remote references (:mod:`pclasses.tree.reference`) as the record engine sees them.

A remote reference is pickled inline as a REDUCE of the global
``pclasses.tree.reference.RemoteReference`` on the tuple ``(via, oid,
klass, database_name)``: ``via`` is a persistent reference to a database
handle (or another remote reference, one per further level), ``oid`` the
target's oid (bytes), ``klass`` its dotted class name (text or ``None``) and
``database_name`` the target database's name.

:func:`remote_sites` finds them with an abstract stack machine over
:func:`pickletools.genops` (nothing is unpickled, imported or called); it is
only run for records whose analysis names the global, so other records pay
one substring search.
"""

from __future__ import annotations

import io
import pickletools
from typing import Any, NamedTuple

__all__ = ["REMOTE_MODULE", "REMOTE_NAME", "MARKER", "RemoteSite", "remote_sites",
           "single_remote_site"]

#: The frozen global of a remote reference (design decision D14).
REMOTE_MODULE = "pclasses.tree.reference"
REMOTE_NAME = "RemoteReference"
#: Bytes every record holding a remote reference contains.
MARKER = REMOTE_NAME.encode("ascii")


class RemoteSite(NamedTuple):
    """One remote reference of a record."""

    #: the target's oid, class (dotted or None) and database name
    oid: bytes
    klass: str | None
    database: str
    #: the oid of the handle the reference goes through: a handle of this
    #: record's database when ``nested`` is False, else the target of the
    #: enclosing remote reference (a handle in an intermediate database)
    via: bytes | None
    nested: bool
    #: 0: in the class-metadata pickle, 1: in the state pickle
    pickle: int


class _Pid(NamedTuple):
    pid: Any


class _Global(NamedTuple):
    module: str
    name: str


_OPAQUE = object()
_MARK = object()
#: a memo entry set before a partial walk started (see :func:`remote_sites`)
_UNKNOWN = object()


def _pid_oid(pid: Any) -> bytes | None:
    if isinstance(pid, tuple) and pid and isinstance(pid[0], bytes):
        return pid[0]
    if isinstance(pid, bytes):
        return pid
    return None


def _walk(stream: io.BytesIO, which: int, out: list[RemoteSite],
          memo: dict[int, Any]) -> None:
    stack: list[Any] = []
    for op, raw_arg, _pos in pickletools.genops(stream):
        name = op.name
        arg: Any = raw_arg
        if name == "STOP":
            return
        if name == "MARK":
            stack.append(_MARK)
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1] if stack else _OPAQUE
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _OPAQUE
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg), _OPAQUE))
            continue
        if name in ("GLOBAL", "INST"):
            module, _, gname = str(arg).partition(" ")
            if name == "GLOBAL":
                stack.append(_Global(module, gname))
                continue
        if name == "STACK_GLOBAL":
            sname = stack.pop() if stack else None
            smodule = stack.pop() if stack else None
            stack.append(_Global(smodule, sname) if isinstance(smodule, str)
                         and isinstance(sname, str) else _OPAQUE)
            continue
        if name == "BINPERSID":
            stack.append(_Pid(stack.pop() if stack else None))
            continue
        if name == "PERSID":
            stack.append(_Pid(arg))
            continue
        if name == "REDUCE":
            args = stack.pop() if stack else None
            func = stack.pop() if stack else None
            stack.append(_reduce(func, args, which, out))
            continue
        if name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
            continue
        if name == "EMPTY_TUPLE":
            stack.append(())
            continue
        if name == "TUPLE":
            items = _pop_mark(stack)
            stack.append(tuple(items))
            continue
        if name == "NONE":
            stack.append(None)
            continue
        # Literals: keep text and bytes, anything else is opaque.
        if not op.stack_before and len(op.stack_after) == 1 and op.arg is not None:
            stack.append(arg if isinstance(arg, (str, bytes)) else _OPAQUE)
            continue
        # Generic stack effect.
        before = op.stack_before
        if pickletools.markobject in before:
            _pop_mark(stack)
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        for _ in range(below):
            if stack:
                stack.pop()
        for _ in op.stack_after:
            stack.append(_OPAQUE)


def _pop_mark(stack: list[Any]) -> list[Any]:
    try:
        i = len(stack) - 1 - stack[::-1].index(_MARK)
    except ValueError:
        items = stack[:]
        stack.clear()
        return items
    items = stack[i + 1:]
    del stack[i:]
    return items


def _reduce(func: Any, args: Any, which: int, out: list[RemoteSite]) -> Any:
    if func is _UNKNOWN:
        raise _Unsupported(-1)  # possibly our global, defined before the walk started
    if (type(func) is _Global and func.module == REMOTE_MODULE and func.name == REMOTE_NAME
            and type(args) is tuple and len(args) == 4):
        if any(x is _UNKNOWN for x in args):
            raise _Unsupported(-1)  # an argument memoized before the walk started
        via, oid, klass, database = args
        if (isinstance(oid, bytes) and isinstance(database, str)
                and (klass is None or isinstance(klass, str))):
            if type(via) is _Pid:
                site = RemoteSite(oid, klass, database, _pid_oid(via.pid), False, which)
            elif type(via) is RemoteSite:
                site = RemoteSite(oid, klass, database, via.oid, True, which)
            else:
                return _OPAQUE
            out.append(site)
            return site
    return _OPAQUE


class _Unsupported(Exception):
    """An opcode the fast walker does not know: the record goes to :func:`_walk`."""


_U32 = int.from_bytes


# Opcode -> (category, argument size) for the fast walker; categories are
# tested in order of frequency in ZODB records.
_PUT1, _STR1, _MARK_, _GET1, _SKIP, _GLOBAL, _PERSID, _REDUCE, _TUPLEN, _TUPLE, \
    _CONST, _POPMARK, _POPMARK_PUSH, _POP2, _POP1, _NEWOBJ, _STR4, _PUT4, _GET4, \
    _STOP, _DUP, _LONG1, _NONE, _EMPTY_TUPLE = range(24)
_OPS: dict[int, tuple[int, int]] = {
    0x71: (_PUT1, 1), 0x8C: (_STR1, 0), 0x43: (_STR1, 0), 0x55: (_STR1, 0),
    0x28: (_MARK_, 0), 0x68: (_GET1, 1), 0x4B: (_SKIP, 1), 0x4D: (_SKIP, 2),
    0x4A: (_SKIP, 4), 0x47: (_SKIP, 8), 0x80: (_SKIP, 1), 0x63: (_GLOBAL, 0),
    0x51: (_PERSID, 0), 0x52: (_REDUCE, 0), 0x85: (_TUPLEN, 1), 0x86: (_TUPLEN, 2),
    0x87: (_TUPLEN, 3), 0x74: (_TUPLE, 0), 0x7D: (_CONST, 0), 0x5D: (_CONST, 0),
    0x88: (_CONST, 0), 0x89: (_CONST, 0), 0x75: (_POPMARK, 0), 0x65: (_POPMARK, 0),
    0x64: (_POPMARK_PUSH, 0), 0x6C: (_POPMARK_PUSH, 0), 0x73: (_POP2, 0),
    0x61: (_POP1, 0), 0x62: (_POP1, 0), 0x30: (_POP1, 0), 0x81: (_NEWOBJ, 0),
    0x58: (_STR4, 0), 0x42: (_STR4, 0), 0x54: (_STR4, 0), 0x72: (_PUT4, 4),
    0x6A: (_GET4, 4), 0x2E: (_STOP, 0), 0x32: (_DUP, 0), 0x8A: (_LONG1, 0),
    0x4E: (_NONE, 0), 0x29: (_EMPTY_TUPLE, 0),
}
_TEXT_OPS = frozenset({0x8C, 0x58})


def _fast(data: bytes, out: list[RemoteSite], start: int = 0) -> None:
    """:func:`_walk` for the opcodes ZODB's pickler writes (protocols 1-3),
    both pickles, or the state pickle from ``start`` on (memo entries set
    before it are unknown); raises :class:`_Unsupported` for anything else."""
    n = len(data)
    i = start
    which = 1 if start else 0
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    push = stack.append
    pop = stack.pop
    ops = _OPS.get
    opaque = _OPAQUE
    missing = _UNKNOWN if start else _OPAQUE
    while i < n:
        op = data[i]
        i += 1
        entry = ops(op)
        if entry is None:
            raise _Unsupported(op)
        cat, size = entry
        if cat == _PUT1:
            memo[data[i]] = stack[-1] if stack else opaque
            i += 1
        elif cat == _STR1 or cat == _STR4:
            if cat == _STR1:
                ln = data[i]
                i += 1
            else:
                ln = _U32(data[i:i + 4], "little")
                i += 4
            raw = data[i:i + ln]
            i += ln
            if op in _TEXT_OPS:
                try:
                    push(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    push(opaque)
            else:
                push(raw)
        elif cat == _MARK_:
            push(_MARK)
        elif cat == _GET1:
            push(memo.get(data[i], missing))
            i += 1
        elif cat == _SKIP:
            if op != 0x80:
                push(opaque)
            i += size
        elif cat == _GLOBAL:
            j = data.index(b"\n", i)
            k = data.index(b"\n", j + 1)
            try:
                push(_Global(data[i:j].decode("utf-8"), data[j + 1:k].decode("utf-8")))
            except UnicodeDecodeError:
                push(opaque)
            i = k + 1
        elif cat == _PERSID:
            push(_Pid(pop() if stack else None))
        elif cat == _REDUCE:
            args = pop() if stack else None
            func = pop() if stack else None
            push(_reduce(func, args, which, out))
        elif cat == _TUPLEN:
            items = tuple(stack[-size:])
            del stack[-size:]
            push(items)
        elif cat == _TUPLE:
            push(tuple(_pop_mark(stack)))
        elif cat == _CONST:
            push(opaque)
        elif cat == _POPMARK:
            _pop_mark(stack)
        elif cat == _POPMARK_PUSH:
            _pop_mark(stack)
            push(opaque)
        elif cat == _POP2:
            del stack[-2:]
        elif cat == _POP1:
            if stack:
                pop()
        elif cat == _NEWOBJ:
            del stack[-2:]
            push(opaque)
        elif cat == _PUT4:
            memo[_U32(data[i:i + 4], "little")] = stack[-1] if stack else opaque
            i += 4
        elif cat == _GET4:
            push(memo.get(_U32(data[i:i + 4], "little"), missing))
            i += 4
        elif cat == _STOP:
            if which == 1:
                return
            which = 1
            stack.clear()  # the memo is shared by both pickles (one unpickler)
        elif cat == _DUP:
            push(stack[-1] if stack else opaque)
        elif cat == _LONG1:
            push(opaque)
            i += 1 + data[i]
        elif cat == _NONE:
            push(None)
        else:  # _EMPTY_TUPLE
            push(())


def remote_sites(data: bytes, *, fast: bool = True, start: int = 0) -> list[RemoteSite]:
    """Every remote reference in the record ``data``, innermost first.

    A fast walker handles the opcodes ZODB writes; any other record (or
    ``fast=False``) goes through :func:`pickletools.genops`.  ``start``, the
    offset of the first GLOBAL of ``RemoteReference`` in the state pickle,
    lets the fast walker begin there (a record whose references need memo
    entries set earlier is walked again from the beginning)."""
    out: list[RemoteSite] = []
    data = bytes(data)
    if fast:
        if start:
            try:
                _fast(data, out, start)
                return out
            except (_Unsupported, IndexError, ValueError):
                out = []
        try:
            _fast(data, out)
            return out
        except (_Unsupported, IndexError, ValueError):
            out = []
    stream = io.BytesIO(data)
    memo: dict[int, Any] = {}
    for which in (0, 1):
        if stream.tell() >= len(data):
            break
        try:
            _walk(stream, which, out, memo)
        except (ValueError, IndexError, EOFError):
            break
    return out


def _skip_put(data: bytes, i: int) -> int:
    c = data[i]
    if c == 0x71:  # BINPUT
        return i + 2
    if c == 0x72:  # LONG_BINPUT
        return i + 5
    return i


def _text_at(data: bytes, i: int) -> tuple[str, int]:
    c = data[i]
    if c == 0x58:  # BINUNICODE
        n = int.from_bytes(data[i + 1:i + 5], "little")
        i += 5
    elif c == 0x8C:  # SHORT_BINUNICODE
        n = data[i + 1]
        i += 2
    else:
        raise ValueError("not a text literal")
    if i + n > len(data):
        raise ValueError("truncated")
    return data[i:i + n].decode("utf-8"), i + n


def single_remote_site(data: bytes, start: int) -> RemoteSite | None:
    """The remote reference of a record holding exactly one, in the form
    ZODB's pickler writes it, without walking the record; ``None`` for any
    other record (then use :func:`remote_sites`).  (Added for the tree walks,
    issue 14.)

    ``start`` is the offset of the GLOBAL of ``RemoteReference`` in the state
    pickle (:func:`pclasses.record.edges.split_targets` gets it from the
    analyzer).  The record qualifies when the marker occurs once, the global
    is memoized under an index no GET opcode in the record fetches (so the
    global has exactly one use) and is followed by ``MARK``, a persistent
    reference to the handle (``(oid, class)`` or a bare oid), the target's oid
    as SHORT_BINBYTES, its class (text or ``None``), the database name
    (text), ``TUPLE`` and ``REDUCE`` (each optionally memoized).  The GET
    check is on raw bytes, so a payload that happens to hold such bytes only
    sends the record to the full walker.
    """
    try:
        if start <= 0 or data[start] != 0x63 or data.count(MARKER) != 1:
            return None
        i = data.index(b"\n", data.index(b"\n", start + 1) + 1) + 1
        c = data[i]
        if c == 0x71 or c == 0x72:
            k = data[i + 1] if c == 0x71 else int.from_bytes(data[i + 1:i + 5], "little")
            getters = [b"j" + k.to_bytes(4, "little"), b"g%d\n" % k]
            if k < 256:
                getters.append(b"h" + bytes((k,)))
            if any(g in data for g in getters):
                return None
            i += 2 if c == 0x71 else 5
        if data[i] != 0x28:  # MARK
            return None
        i += 1
        if data[i] != 0x43 or data[i + 1] != 8:  # SHORT_BINBYTES of 8 bytes
            return None
        via = data[i + 2:i + 10]
        i = _skip_put(data, i + 10)
        c = data[i]
        if c != 0x51:  # not a bare oid: an (oid, class) tuple
            if c == 0x63:  # GLOBAL
                i = data.index(b"\n", data.index(b"\n", i + 1) + 1) + 1
            elif c == 0x68:  # BINGET
                i += 2
            elif c == 0x6A:  # LONG_BINGET
                i += 5
            else:
                return None
            i = _skip_put(data, i)
            if data[i] != 0x86:  # TUPLE2
                return None
            i = _skip_put(data, i + 1)
            if data[i] != 0x51:  # BINPERSID
                return None
        i += 1
        if data[i] != 0x43 or data[i + 1] != 8:
            return None
        oid = data[i + 2:i + 10]
        i = _skip_put(data, i + 10)
        klass: str | None
        if data[i] == 0x4E:  # NONE
            klass = None
            i += 1
        else:
            klass, i = _text_at(data, i)
        i = _skip_put(data, i)
        database, i = _text_at(data, i)
        i = _skip_put(data, i)
        if data[i] != 0x74:  # TUPLE
            return None
        i = _skip_put(data, i + 1)
        if data[i] != 0x52:  # REDUCE
            return None
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    return RemoteSite(oid, klass, database, via, False, 1)
