"""The record engine's format specification (``pclasses.record``'s docstring)
lists exactly what the code reads, reports and writes."""

from __future__ import annotations

import re

import pclasses.record as record
from pclasses.record import (
    CLASS_FORMATS,
    FORMATS_READ_AS,
    FORMATS_WRITTEN,
    PID_KINDS,
    REFERENCE_KINDS,
)


def _table(title: str) -> list[list[str]]:
    """The rows of the reST simple table under ``title`` in the docstring."""
    doc = record.__doc__ or ""
    section = doc.split(title + "\n", 1)[1]
    lines = section.splitlines()
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"[= ]+", line or "x")]
    top, head_end, bottom = borders[:3]
    cols = [m.span() for m in re.finditer(r"=+", lines[top])]
    rows = []
    for line in lines[head_end + 1 : bottom]:
        rows.append([line[a:b].strip() if i < len(cols) - 1 else line[a:].strip()
                     for i, (a, b) in enumerate(cols)])
    return rows


def test_class_formats_in_docstring_match_the_code():
    """Formats 1-7 of ZODB/serialize.py are each documented with the number the
    reader reports and whether the package writes it, as the code says."""
    rows = _table("Class-metadata formats")
    documented = {int(r[0]): (int(r[2]), r[3] == "yes") for r in rows}
    assert sorted(documented) == [1, 2, 3, 4, 5, 6, 7]
    assert {n: ra for n, (ra, _w) in documented.items()} == FORMATS_READ_AS
    assert tuple(n for n, (_ra, w) in sorted(documented.items()) if w) == FORMATS_WRITTEN
    assert sorted(set(FORMATS_READ_AS.values())) == sorted(CLASS_FORMATS)


def test_reference_kinds_in_docstring_match_the_code():
    """Every reference kind the reader and the analyzer report is documented,
    and nothing else is."""
    rows = _table("Persistent reference kinds")
    kinds = list(dict.fromkeys(r[1].strip("`") for r in rows))
    assert kinds == list(PID_KINDS)
    assert tuple(k for k in kinds if k != "unknown") == REFERENCE_KINDS
