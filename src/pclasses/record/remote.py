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

__all__ = ["REMOTE_MODULE", "REMOTE_NAME", "MARKER", "RemoteSite", "remote_sites"]

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


def _pid_oid(pid: Any) -> bytes | None:
    if isinstance(pid, tuple) and pid and isinstance(pid[0], bytes):
        return pid[0]
    if isinstance(pid, bytes):
        return pid
    return None


def _walk(stream: io.BytesIO, which: int, out: list[RemoteSite],
          memo: dict[int, Any]) -> None:
    stack: list[Any] = []
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
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
            gname = stack.pop() if stack else None
            module = stack.pop() if stack else None
            stack.append(_Global(module, gname) if isinstance(module, str)
                         and isinstance(gname, str) else _OPAQUE)
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
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1:]
            del stack[i:]
            return items
    items = stack[:]
    stack.clear()
    return items


def _reduce(func: Any, args: Any, which: int, out: list[RemoteSite]) -> Any:
    if (type(func) is _Global and func.module == REMOTE_MODULE and func.name == REMOTE_NAME
            and type(args) is tuple and len(args) == 4):
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


def _fast(data: bytes, out: list[RemoteSite]) -> None:
    """:func:`_walk` for the opcodes ZODB's pickler writes (protocols 1-3),
    both pickles; raises :class:`_Unsupported` for anything else."""
    n = len(data)
    i = 0
    which = 0
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    push = stack.append
    pop = stack.pop
    while i < n:
        op = data[i]
        i += 1
        if op == 0x71:  # BINPUT
            memo[data[i]] = stack[-1] if stack else _OPAQUE
            i += 1
        elif op == 0x68:  # BINGET
            push(memo.get(data[i], _OPAQUE))
            i += 1
        elif op == 0x28:  # MARK
            push(_MARK)
        elif op == 0x8C or op == 0x43 or op == 0x55:  # SHORT_BINUNICODE/BYTES/STRING
            ln = data[i]
            raw = data[i + 1:i + 1 + ln]
            i += 1 + ln
            if op == 0x8C:
                try:
                    push(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    push(_OPAQUE)
            else:
                push(bytes(raw))
        elif op == 0x58 or op == 0x42 or op == 0x54:  # BINUNICODE/BINBYTES/BINSTRING
            ln = _U32(data[i:i + 4], "little")
            raw = data[i + 4:i + 4 + ln]
            i += 4 + ln
            if op == 0x58:
                try:
                    push(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    push(_OPAQUE)
            else:
                push(bytes(raw))
        elif op == 0x4B:  # BININT1
            push(_OPAQUE)
            i += 1
        elif op == 0x4D:  # BININT2
            push(_OPAQUE)
            i += 2
        elif op == 0x4A:  # BININT
            push(_OPAQUE)
            i += 4
        elif op == 0x47:  # BINFLOAT
            push(_OPAQUE)
            i += 8
        elif op == 0x8A:  # LONG1
            push(_OPAQUE)
            i += 1 + data[i]
        elif op == 0x63:  # GLOBAL
            j = data.index(b"\n", i)
            k = data.index(b"\n", j + 1)
            try:
                push(_Global(data[i:j].decode("utf-8"), data[j + 1:k].decode("utf-8")))
            except UnicodeDecodeError:
                push(_OPAQUE)
            i = k + 1
        elif op == 0x51:  # BINPERSID
            push(_Pid(pop() if stack else None))
        elif op == 0x52:  # REDUCE
            args = pop() if stack else None
            func = pop() if stack else None
            push(_reduce(func, args, which, out))
        elif op == 0x85 or op == 0x86 or op == 0x87:  # TUPLE1-3
            k = op - 0x84
            items = tuple(stack[-k:])
            del stack[-k:]
            push(items)
        elif op == 0x74:  # TUPLE
            push(tuple(_pop_mark(stack)))
        elif op == 0x29:  # EMPTY_TUPLE
            push(())
        elif op == 0x4E:  # NONE
            push(None)
        elif op == 0x7D or op == 0x5D or op == 0x88 or op == 0x89:  # {} [] True False
            push(_OPAQUE)
        elif op == 0x75 or op == 0x65:  # SETITEMS, APPENDS
            _pop_mark(stack)
        elif op == 0x73:  # SETITEM
            del stack[-2:]
        elif op == 0x61:  # APPEND
            if stack:
                pop()
        elif op == 0x62:  # BUILD
            if stack:
                pop()
        elif op == 0x81:  # NEWOBJ
            del stack[-2:]
            push(_OPAQUE)
        elif op == 0x64 or op == 0x6C:  # DICT, LIST
            _pop_mark(stack)
            push(_OPAQUE)
        elif op == 0x72:  # LONG_BINPUT
            memo[_U32(data[i:i + 4], "little")] = stack[-1] if stack else _OPAQUE
            i += 4
        elif op == 0x6A:  # LONG_BINGET
            push(memo.get(_U32(data[i:i + 4], "little"), _OPAQUE))
            i += 4
        elif op == 0x80:  # PROTO
            i += 1
        elif op == 0x2E:  # STOP
            if which == 1:
                return
            which = 1
            stack.clear()
            # the memo is shared by both pickles (one unpickler in ZODB)
        elif op == 0x30:  # POP
            if stack:
                pop()
        elif op == 0x32:  # DUP
            push(stack[-1] if stack else _OPAQUE)
        else:
            raise _Unsupported(op)


def remote_sites(data: bytes, *, fast: bool = True) -> list[RemoteSite]:
    """Every remote reference in the record ``data``, innermost first.

    A fast walker handles the opcodes ZODB writes; any other record (or
    ``fast=False``) goes through :func:`pickletools.genops`."""
    out: list[RemoteSite] = []
    if fast:
        try:
            _fast(bytes(data), out)
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
