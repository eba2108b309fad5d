"""Rewriting records in place, byte by byte, from what the analyzer located.

Offline repair (renames) and import (making refused globals inert) change
the globals a record names without unpickling it: the record analyzer
(:func:`pclasses.record.analyze.analyze`) gives the exact byte range of every GLOBAL
and INST opcode, and no other opcode stores an offset, so a record stays
valid when those ranges are replaced.  Protocol-4 frames do store lengths,
so a framed record is refused rather than rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import FramedRecordError

__all__ = ["FramedRecordError", "rename_globals", "replace_class_pickle", "rename_c"]

_RenameFunc = Callable[[bytes, Any], tuple[bytes, dict[tuple[str, str], tuple[str, str]]] | None]

#: ``rename_c(data, table) -> (new, renamed) | None``: offline repair's fast
#: path in C (``pclasses.record._skim.rename``), or ``None`` without the
#: extension (or with ``PCLASSES_PURE_PYTHON``).  One walk analyses the
#: record, renames every GLOBAL / INST whose ``table[(module, name)]`` is
#: not ``None`` and proves the result as
#: :func:`pclasses.record.equivalence.substitution_differences` does; it
#: returns ``None`` for every record that needs the full path (a
#: STACK_GLOBAL, a frame, class metadata that is not a global, a target that
#: cannot be one opcode, a proof that fails), which then decides and reports.
rename_c: _RenameFunc | None


def rename_globals(
    data: bytes, analysis: Any, new_name: Callable[[str, str], tuple[str, str] | None]
) -> tuple[bytes, dict[tuple[str, str], tuple[str, str]]]:
    """``data`` with every GLOBAL/INST whose ``new_name(module, name)`` is not
    ``None`` renamed; returns the new bytes and what was renamed.

    STACK_GLOBAL (protocol 4) entries are left to the caller (their names
    are separate string opcodes); a framed record raises
    :class:`FramedRecordError` when something would change.
    """
    edits = []
    renamed: dict[tuple[str, str], tuple[str, str]] = {}
    for module, name, offset, end, opcode, _uses in analysis.globals:
        if module is None or name is None or opcode == "stack_global":
            continue
        target = new_name(module, name)
        if target is None:
            continue
        op = "c" if opcode == "global" else "i"
        edits.append((offset, end, f"{op}{target[0]}\n{target[1]}\n".encode()))
        renamed[(module, name)] = target
    if not edits:
        return data, renamed
    if analysis.has_frame:
        raise FramedRecordError()
    parts = []
    pos = 0
    for start, stop, text in sorted(edits):
        parts.append(data[pos:start])
        parts.append(text)
        pos = stop
    parts.append(data[pos:])
    return b"".join(parts), renamed


def replace_class_pickle(data: bytes, end1: int, pair: tuple[str, str]) -> bytes:
    """``data`` with its class metadata replaced by format 3 ``(pair, None)``.

    For records whose class is named by strings (instances of persistent
    classes), written in the record's own pickle protocol.
    """
    from zodbpickle.pickle import dumps

    proto = data[1] if data[0] == 0x80 else 1
    return dumps((pair, None), protocol=proto) + data[end1:]  # type: ignore[no-any-return]


def _load_rename_c() -> _RenameFunc | None:
    from .analyze import analyze_c

    if analyze_c is None:
        return None
    from ._skim import rename

    return rename  # type: ignore[no-any-return]


rename_c = _load_rename_c()
