"""Call-site facts of a record: the shapes no renaming can make inert.

Import's policy (:mod:`pclasses.transfer.policy`) refuses a record that calls
something that is not a global item (a call's result, an attribute fetched
at run time), that sets state on a global item, or that calls a persistent
object which is not a class reference the importer rebinds.  The record
analyzer reports most of this (``calls_non_global``, ``calls_pid``, the
``BUILD_TARGET`` / ``ITEMS_TARGET`` uses of globals); :func:`call_facts`
walks the two pickles of a record on an abstract stack (``pickletools``
opcodes, nothing built, nothing imported) for what it does not: the oids of
persistent references that are called.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass
from typing import Any

from ..record.analyze import Use

__all__ = ["CallFacts", "call_facts", "record_facts"]


def record_facts(data: bytes, analysis: Any = None) -> CallFacts:
    """The call-site facts of a record, from the record analyzer's result
    (:class:`pclasses.record.Analysis`: ``calls_non_global``, ``calls_pid``
    and the ``BUILD_TARGET`` / ``ITEMS_TARGET`` uses of globals).  The oids
    of called persistent references are not in it: for a record with such a
    call (a plain instance of a database-resident class) and for an
    analysis without these fields, :func:`call_facts` walks the record."""
    calls = getattr(analysis, "calls_non_global", None)
    calls_pid = getattr(analysis, "calls_pid", None)
    if calls is None or calls_pid is None or calls_pid:
        return call_facts(data)
    mutated = tuple(dict.fromkeys(
        (g.module, g.name) for g in analysis.globals
        if g.uses & (_BUILD_TARGET | _ITEMS_TARGET)))
    return CallFacts(tuple(calls), mutated, ())


#: Uses of a global item that change it (the analyzer's Use.BUILD_TARGET,
#: Use.ITEMS_TARGET).
_BUILD_TARGET = Use.BUILD_TARGET
_ITEMS_TARGET = Use.ITEMS_TARGET


@dataclass(frozen=True)
class CallFacts:
    """Shapes of a record that no renaming can make inert.

    ``non_global_calls``: byte offsets of REDUCE / NEWOBJ / NEWOBJ_EX / OBJ
    opcodes whose callable is neither a global item nor a persistent
    reference.  ``pid_calls``: the oids of persistent references called that
    way (``None`` when the oid is not a literal): a plain instance of a
    database-resident class is a NEWOBJ of a reference to its class record,
    which is allowed only when that oid is a class reference the importer
    rebinds to the target's class table.  ``mutated_globals``: the
    ``(module, name)`` of global items that BUILD, SETITEM(S), APPEND(S) or
    ADDITEMS change.
    """

    non_global_calls: tuple[int, ...] = ()
    mutated_globals: tuple[tuple[Any, Any], ...] = ()
    pid_calls: tuple[bytes | None, ...] = ()

    @property
    def problems(self) -> list[str]:
        out = []
        if self.non_global_calls:
            out.append(f"a call of a computed callable (byte {self.non_global_calls[0]})")
        for m, n in self.mutated_globals:
            out.append(f"state set on the global {m}.{n}")
        return out


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module: Any, name: Any) -> None:
        self.module = module
        self.name = name


class _Str:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Tuple:
    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items


class _Pid:
    __slots__ = ("oid",)

    def __init__(self, pid: Any) -> None:
        if isinstance(pid, _Tuple) and len(pid.items) == 2:
            pid = pid.items[0]
        self.oid = _oid_of(pid)


def _oid_of(item: Any) -> bytes | None:
    value = item.value if isinstance(item, (_Str, _Bytes)) else None
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return value if isinstance(value, bytes) else None


class _Bytes(_Str):
    __slots__ = ()


_STRINGS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                      "SHORT_BINUNICODE", "BINUNICODE8"})
_BYTES = frozenset({"SHORT_BINBYTES", "BINBYTES", "BINBYTES8"})
_TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_MUTATORS_ONE = {"SETITEM": 2, "APPEND": 1}
_MUTATORS_MARK = frozenset({"SETITEMS", "APPENDS", "ADDITEMS"})


def call_facts(data: bytes) -> CallFacts:
    """Walk both pickles of a record on an abstract stack; run nothing.

    Raises :class:`ValueError` for bytes that are not two pickles (callers
    run the record analyzer, which refuses those with its own limits,
    first).
    """
    calls: list[int] = []
    pid_calls: list[bytes | None] = []
    mutated: list[tuple[Any, Any]] = []
    memo: dict[Any, Any] = {}
    f = io.BytesIO(data)
    _walk(f, memo, calls, pid_calls, mutated)  # class metadata
    _walk(f, memo, calls, pid_calls, mutated)  # state (one memo, as ZODB's unpickler)
    return CallFacts(tuple(calls), tuple(dict.fromkeys(mutated)),
                     tuple(dict.fromkeys(pid_calls)))


def _walk(f: io.BytesIO, memo: dict[Any, Any], calls: list[int],  # noqa: C901
          pid_calls: list[bytes | None], mutated: list[tuple[Any, Any]]) -> None:
    stack: list[Any] = []
    marks: list[int] = []

    def pop() -> Any:
        if not stack:
            raise ValueError("stack underflow")
        return stack.pop()

    def pop_mark() -> list[Any]:
        if not marks:
            raise ValueError("no mark")
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    def top() -> Any:
        if not stack:
            raise ValueError("stack underflow")
        return stack[-1]

    def called(item: Any, at: Any) -> None:  # at: genops' int position
        if isinstance(item, _Pid):
            pid_calls.append(item.oid)
        elif not isinstance(item, _Global):
            calls.append(at)

    def mutate(target: Any) -> None:
        if isinstance(target, _Global):
            mutated.append((target.module, target.name))

    for op, arg, at in pickletools.genops(f):
        name = op.name
        if name in _STRINGS:
            stack.append(_Str(arg))
        elif name in _BYTES:
            stack.append(_Bytes(arg))
        elif name in _TUPLES:
            n = _TUPLES[name]
            items = [pop() for _ in range(n)][::-1]
            stack.append(_Tuple(items))
        elif name == "TUPLE":
            stack.append(_Tuple(pop_mark()))
        elif name == "EMPTY_TUPLE":
            stack.append(_Tuple([]))
        elif name == "BINPERSID":
            stack.append(_Pid(pop()))
        elif name == "PERSID":
            stack.append(_Pid(_Str(arg)))
        elif name == "GLOBAL":
            module, _, gname = str(arg).partition(" ")
            stack.append(_Global(module, gname))
        elif name == "STACK_GLOBAL":
            gname, module = pop(), pop()
            stack.append(_Global(module.value if isinstance(module, _Str) else None,
                                 gname.value if isinstance(gname, _Str) else None))
        elif name in ("EXT1", "EXT2", "EXT4"):
            stack.append(_Global(None, None))
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "INST":
            pop_mark()
            stack.append(None)
        elif name == "OBJ":
            items = pop_mark()
            called(items[0] if items else None, at)
            stack.append(None)
        elif name in ("REDUCE", "NEWOBJ"):
            pop()
            called(pop(), at)
            stack.append(None)
        elif name == "NEWOBJ_EX":
            pop()
            pop()
            called(pop(), at)
            stack.append(None)
        elif name == "BUILD":
            pop()
            mutate(top())
        elif name in _MUTATORS_ONE:
            for _ in range(_MUTATORS_ONE[name]):
                pop()
            mutate(top())
        elif name in _MUTATORS_MARK:
            pop_mark()
            mutate(top())
        elif name == "DUP":
            stack.append(top())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = top()
        elif name == "MEMOIZE":
            memo[len(memo)] = top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif name == "POP":
            if stack and len(stack) > (marks[-1] if marks else 0):
                stack.pop()
            elif marks:
                marks.pop()
            else:
                raise ValueError("stack underflow")
        elif name == "POP_MARK":
            pop_mark()
        elif name == "STOP":
            pop()
            return
        elif name in ("PROTO", "FRAME"):
            pass
        else:
            before = op.stack_before
            if before and before[0] is pickletools.markobject:
                pop_mark()
                before = before[2:]
            for _ in before:
                pop()
            stack.extend(None for _ in op.stack_after)
    raise ValueError("no STOP")
