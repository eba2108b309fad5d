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


def _walk(stream: io.BytesIO, which: int, out: list[RemoteSite]) -> None:
    stack: list[Any] = []
    memo: dict[int, Any] = {}
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


def remote_sites(data: bytes) -> list[RemoteSite]:
    """Every remote reference in the record ``data``, innermost first."""
    out: list[RemoteSite] = []
    stream = io.BytesIO(data)
    for which in (0, 1):
        if stream.tell() >= len(data):
            break
        try:
            _walk(stream, which, out)
        except (ValueError, IndexError, EOFError):
            break
    return out
