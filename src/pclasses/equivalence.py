"""Do two records mean the same, up to renamed globals?

A record rewritten byte by byte (offline renames) must mean what it meant
before, except for the names it was asked to change.  Two checks, one for
each way repair rewrites a record:

:func:`differences` (any rewrite)
    compares what the safe reader (:func:`pclasses.record.read_record`)
    makes of the old and the new bytes: the class metadata and the inert
    state tree, walked in step.  Globals of the old tree are first mapped
    through the renames; everything else must be equal, value for value and
    type for type (``1``, ``1.0`` and ``True`` differ), with the same sharing
    (an object the old tree holds twice, the new one holds twice too) and
    the same references.  The walk is iterative (inert trees can nest
    deeply) and visits each shared container once, so it costs time linear
    in the size of the trees.

:func:`substitution_differences` (GLOBAL/INST opcodes replaced in place)
    the same guarantee from one more run of the C analyzer (about 1 us
    instead of two inert reads, about 25 us): the bytes outside the
    replaced opcodes must be identical, and the analysis of the new bytes
    must find, at the shifted offsets, exactly the old record's globals
    (renamed ones under their new names, each opcode spanning exactly its
    replacement), its persistent references, its split point, protocol and
    memo.  A pickle's meaning depends on its opcodes alone, none of which
    refers to a byte offset (FRAME lengths aside, which the caller refuses):
    identical bytes parse identically, and a replaced opcode that parses as
    one GLOBAL of exactly its own length hands the parse back at the same
    place, so the two opcode streams differ only in the names of the renamed
    globals, and so do the inert trees.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from typing import Any

from .record import ClassRef, GlobalRef, Inert, PersistentRef, RecordInfo

__all__ = ["differences", "substitution_differences"]

Pair = tuple[str, str]

_ATOMS = (str, bytes, int, bool, type(None), complex, bytearray)
_CONTAINERS = (list, tuple, dict, set, frozenset, Inert, PersistentRef)


def differences(old: RecordInfo, new: RecordInfo, renamed: Mapping[Pair, Pair]) -> str | None:
    """``None`` when ``new`` means ``old`` with the ``renamed`` globals, else
    what differs (a short description, for a report).

    ``old`` and ``new`` come from :func:`~pclasses.record.read_record`.
    ``renamed`` maps old ``(module, name)`` pairs to new ones; it applies to
    globals anywhere in the record and to the class named by strings in
    class metadata of formats 3 and 7.
    """
    reason = _class_differences(old.klass, new.klass, renamed)
    if reason is not None:
        return reason
    if len(old.pids) != len(new.pids):
        return f"{len(old.pids)} persistent references became {len(new.pids)}"
    return _tree_differences(old.state, new.state, renamed, "state") or \
        _tree_differences(old.klass.args, new.klass.args, renamed, "class arguments")


def _class_differences(old: ClassRef, new: ClassRef, renamed: Mapping[Pair, Pair]) -> str | None:
    pair = old.pair
    if pair is not None:
        pair = renamed.get(pair, pair)
    if (pair, old.oid, old.format) != (new.pair, new.oid, new.format):
        return (f"class metadata {old.dotted} (format {old.format}) became "
                f"{new.dotted} (format {new.format})")
    return None


def _global_pair(value: Any) -> Pair | None:
    if isinstance(value, type) and issubclass(value, GlobalRef) \
            and "persistent_pid" not in value.__dict__:
        return value.dotted_pair
    return None


def _same_atom(a: Any, b: Any) -> bool:
    if a.__class__ is not b.__class__:
        return False
    if a.__class__ is float:  # -0.0, nan
        return bool(a.hex() == b.hex())
    return bool(a == b)


def _tree_differences(old: Any, new: Any, renamed: Mapping[Pair, Pair], where: str) -> str | None:
    stack: list[tuple[Any, Any]] = [(old, new)]
    paired: dict[int, int] = {}  # id(old container) -> id(new container)
    back: dict[int, int] = {}  # and the other way: sharing must match both ways
    while stack:
        a, b = stack.pop()
        pair = _global_pair(a)
        if pair is not None:
            want = renamed.get(pair, pair)
            got = _global_pair(b)
            if got != want:
                return f"{where}: global {pair[0]}.{pair[1]} became {b!r}"
            continue
        if isinstance(a, _CONTAINERS):
            if a.__class__ is not b.__class__:
                return f"{where}: {type(a).__name__} became {type(b).__name__}"
            seen, seen_back = paired.get(id(a)), back.get(id(b))
            if seen is not None or seen_back is not None:
                if seen != id(b) or seen_back != id(a):
                    return f"{where}: the sharing of a {type(a).__name__} changed"
                continue
            paired[id(a)] = id(b)
            back[id(b)] = id(a)
            reason = _push_children(a, b, stack)
            if reason is not None:
                return f"{where}: {reason}"
            continue
        if isinstance(a, type) and isinstance(b, type) and "persistent_pid" in a.__dict__ \
                and "persistent_pid" in b.__dict__:
            stack.append((a.__dict__["persistent_pid"], b.__dict__["persistent_pid"]))
            continue
        if not _same_atom(a, b):
            return f"{where}: {_short(a)} became {_short(b)}"
    return None


def _push_children(a: Any, b: Any, stack: list[tuple[Any, Any]]) -> str | None:
    cls = a.__class__
    if cls is list or cls is tuple:
        if len(a) != len(b):
            return f"a {cls.__name__} of {len(a)} items has {len(b)}"
        stack.extend(zip(a, b))
    elif cls is dict:
        if len(a) != len(b):
            return f"a dict of {len(a)} items has {len(b)}"
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            stack.append((ka, kb))
            stack.append((va, vb))
    elif cls is set or cls is frozenset:
        if len(a) != len(b):
            return f"a {cls.__name__} of {len(a)} items has {len(b)}"
        if all(isinstance(x, _ATOMS) or x.__class__ is float for x in a):
            if {_atom_key(x) for x in a} != {_atom_key(x) for x in b}:
                return f"the items of a {cls.__name__} changed"
        else:  # built in the same order from equal items: iterate in step
            stack.extend(zip(a, b))
    elif cls is Inert:
        if a.how != b.how:
            return f"a {a.how} became a {b.how}"
        for x, y in ((a.listitems, b.listitems), (a.dictitems, b.dictitems)):
            if (x is None) != (y is None):
                return "appended or set items appeared or vanished"
        stack.append((a.callable, b.callable))
        stack.append((a.args, b.args))
        stack.append((a.state, b.state))
        if a.listitems is not None:
            stack.append((a.listitems, b.listitems))
        if a.dictitems is not None:
            stack.append((a.dictitems, b.dictitems))
    else:  # PersistentRef
        stack.append((a.pid, b.pid))
    return None


def _atom_key(x: Any) -> tuple[type, Any]:
    return (x.__class__, x.hex() if x.__class__ is float else x)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def substitution_differences(old: bytes, old_analysis: Any, new: bytes, new_analysis: Any,
                             renamed: Mapping[Pair, Pair]) -> str | None:
    """``None`` when ``new`` is ``old`` with the GLOBAL/INST opcodes of the
    ``renamed`` globals replaced and nothing else changed, else what differs.

    ``old_analysis`` and ``new_analysis`` are :func:`pclasses.record.analyze`
    results of the two byte strings (see the module docstring for why this
    proves that both mean the same up to the renamed globals).
    """
    a, b = old_analysis, new_analysis
    if (a.protocol, a.max_memo, a.has_ext, a.has_stack_global, a.has_frame, a.ok_to_patch) \
            != (b.protocol, b.max_memo, b.has_ext, b.has_stack_global, b.has_frame,
                b.ok_to_patch):
        return "the analysis of the new bytes differs (protocol, memo or opcodes)"
    if len(a.globals) != len(b.globals):
        return f"{len(a.globals)} globals became {len(b.globals)}"
    ends: list[int] = []  # old end of each replaced opcode
    shifts: list[int] = []  # the shift of the bytes after it
    shift = 0
    old_pos = new_pos = 0
    for (m, n, start, end, op, uses), (m2, n2, start2, end2, op2, uses2) in zip(a.globals,
                                                                               b.globals):
        if start2 != start + shift or op2 != op or uses2 != uses:
            return f"the global {m}.{n} at byte {start} moved or changed its role"
        if m2 == m and n2 == n:
            if end2 - start2 != end - start:
                return f"the global {m}.{n} at byte {start} changed length"
            if op != "stack_global" and renamed.get((m, n), (m, n)) != (m, n):
                return f"the global {m}.{n} at byte {start} was not renamed"
            continue
        if op == "stack_global" or m is None or n is None or renamed.get((m, n)) != (m2, n2):
            return f"the global {m}.{n} at byte {start} reads as {m2}.{n2}"
        if old[old_pos:start] != new[new_pos:start2]:
            return f"bytes before byte {start} changed"
        shift += (end2 - start2) - (end - start)
        old_pos, new_pos = end, end2
        ends.append(end)
        shifts.append(shift)
    if old[old_pos:] != new[new_pos:]:
        return f"bytes after byte {old_pos} changed"
    if len(new) - len(old) != shift:
        return "the length changed by more than the renames"
    if not ends:
        return None if new == old else "bytes changed"

    if b.end1 != a.end1 + _shift_at(a.end1, ends, shifts):
        return f"the split point moved from {a.end1} to {b.end1}"
    pids = a.pids
    if len(pids) != len(b.pids):
        return f"{len(pids)} persistent references became {len(b.pids)}"
    if pids:
        if ends[-1] <= pids[0][1]:  # the usual case: every reference after every rename
            expected = [(k, at + shift if at >= 0 else at, ln, db, sh, w)
                        for k, at, ln, db, sh, w in pids]
        else:
            expected = [(k, at + _shift_at(at, ends, shifts) if at >= 0 else at, ln, db, sh, w)
                        for k, at, ln, db, sh, w in pids]
        if expected != list(b.pids):
            return "a persistent reference moved or changed"
    return None


def _shift_at(offset: int, ends: list[int], shifts: list[int]) -> int:
    i = bisect_right(ends, offset)
    return shifts[i - 1] if i else 0
