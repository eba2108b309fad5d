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

__all__ = ["FramedRecordError", "rename_globals", "replace_class_pickle"]


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
