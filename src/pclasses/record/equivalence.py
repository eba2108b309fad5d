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
    the same guarantee without building either tree (about a microsecond
    instead of two inert reads and a walk, about 25 us): the new bytes must
    be the old ones with exactly the renamed GLOBAL/INST opcodes (as the
    analysis of the old bytes located them) replaced, each replacement being
    one well-formed opcode of the same kind naming the new global (printable
    names, so no newline ends a line early), and the C pre-scan walks the new
    bytes again and must find both pickles whole, the split point moved by
    exactly the renames before it and the same memo.  Why that is enough: a
    pickle means what its opcodes say and no opcode refers to a byte offset
    (FRAME lengths aside, which repair refuses); the opcode walk from any
    position depends only on the bytes from there on; identical bytes before
    a replacement parse identically up to it, a replacement parses as one
    GLOBAL ending exactly where it ends, and parsing resumes on the same bytes
    as in the old record.  The opcode streams differ only in the names of the
    renamed globals, so the inert trees differ only there too.  (The tree
    comparison of :func:`differences` over every rewritten record of the test
    databases checks the same claim from the other side.)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from typing import Any

from .analyze import Analysis, skim
from .reader import ClassRef, GlobalRef, Inert, PersistentRef, RecordInfo

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


def substitution_differences(old: bytes, old_analysis: Analysis, new: bytes,
                             renamed: Mapping[Pair, Pair]) -> str | None:
    """``None`` when ``new`` is ``old`` with the GLOBAL/INST opcodes of the
    ``renamed`` globals replaced and nothing else changed, else what differs.

    ``old_analysis`` is the :func:`pclasses.record.analyze` result of
    ``old``; ``new`` is walked again by the C pre-scan
    (:func:`pclasses.record.skim`).  See the module docstring for why this
    proves that both records mean the same up to the renamed globals.
    """
    a = old_analysis
    if a.has_frame:
        return "a framed (protocol 4) record cannot change length"
    ends: list[int] = []  # old end of each replaced opcode
    shifts: list[int] = []  # the shift of the bytes after it
    shift = 0
    old_pos = new_pos = 0
    for g in a.globals:
        module, name, opcode = g.module, g.name, g.opcode
        if opcode == "stack_global" or module is None or name is None:
            continue
        target = renamed.get((module, name))
        if target is None:
            continue
        start, end = g.start, g.end
        gap = start - old_pos
        if new[new_pos:new_pos + gap] != old[old_pos:start]:
            return f"bytes before byte {start} changed"
        new_module, new_name = target
        if not (new_module.isprintable() and new_name.isprintable()):
            return f"the new name {new_module}.{new_name} cannot be one opcode"
        text = f"{'c' if opcode == 'global' else 'i'}{new_module}\n{new_name}\n".encode()
        at = new_pos + gap
        if new[at:at + len(text)] != text:
            return f"the global {module}.{name} at byte {start} was not replaced by {target}"
        shift += len(text) - (end - start)
        old_pos, new_pos = end, at + len(text)
        ends.append(end)
        shifts.append(shift)
    if new[new_pos:] != old[old_pos:]:
        return f"bytes after byte {old_pos} changed"
    if not ends:
        return None if new == old else "bytes changed where nothing was renamed"
    try:
        end1, max_memo, has_ext = skim(new)
    except ValueError as exc:
        return f"it does not parse: {exc}"
    if end1 != a.end1 + _shift_at(a.end1, ends, shifts):
        return f"the split point moved from {a.end1} to {end1}"
    if (max_memo, has_ext) != (a.max_memo, a.has_ext):
        return "the memo or the extension codes changed"
    return None


def _shift_at(offset: int, ends: list[int], shifts: list[int]) -> int:
    i = bisect_right(ends, offset)
    return shifts[i - 1] if i else 0
