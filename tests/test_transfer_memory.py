"""Claims about the memory export and import hold (issue 16: bounded at 10
million records): what grows with the records is compact oid sets and
arrays (a few bytes a record), never an object per record.

Measured with ``tracemalloc`` (Python's allocations, the storages'
included) on two subtrees of a real FileStorage, 20,000 and 50,000
records (both past what fills the one-megabyte write buffers): the peak
grows by less than a bound per extra record, below what a set or dict
entry per record takes.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import transaction
from persistent.mapping import PersistentMapping

import pclasses
from pclasses.record.analyze import HAVE_C_ANALYZE
from pclasses.transfer.batched import import_in_batches

# The claims are about the walk's and the plan's structures; the pure-Python
# analyzer under tracemalloc takes minutes for the records they need.
pytestmark = pytest.mark.skipif(not HAVE_C_ANALYZE,
                                reason="the C analyzer (tracemalloc makes the pure one too slow)")


def _source(path: Path, n: int) -> Path:
    db = pclasses.open(str(path))
    try:
        conn = db.open()
        tree = conn.root()["tree"] = PersistentMapping()
        for g in range(n // 1000):
            group = tree[f"g{g}"] = PersistentMapping()
            for i in range(1000):
                group[f"i{i}"] = PersistentMapping(n=i)
            transaction.commit()
            conn.cacheMinimize()
        conn.close()
    finally:
        db.close()
    return path


def _peak(work: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_and_import_memory_grows_by_a_few_bytes_a_record(tmp_path: Path):
    """Export's peak grows by less than 16 bytes an extra record (one byte
    an oid met, eight an oid queued), and the command line's import (checked
    whole, stored in batches) by less than 40 (one byte an old oid, sixteen
    a record for its new oid and where its prepared bytes are)."""
    peaks: dict[int, tuple[int, int]] = {}
    for n in (20_000, 50_000):
        src = _source(tmp_path / f"src{n}.fs", n)
        out = tmp_path / f"tree{n}.pclasses"
        db = pclasses.open(str(src), read_only=True)
        try:
            conn = db.open()
            tree = conn.root()["tree"]
            export = _peak(lambda: pclasses.export_subtree(conn, tree, str(out)))  # noqa: B023
            conn.close()
        finally:
            db.close()
        dst = pclasses.open(str(tmp_path / f"dst{n}.fs"))
        try:
            imported = _peak(
                lambda: import_in_batches(dst, out, name="t", batch_size=2000))  # noqa: B023
        finally:
            dst.close()
        peaks[n] = (export, imported)
    extra = 50_000 - 20_000
    export_per_record = (peaks[50_000][0] - peaks[20_000][0]) / extra
    import_per_record = (peaks[50_000][1] - peaks[20_000][1]) / extra
    assert export_per_record < 16, export_per_record
    assert import_per_record < 40, import_per_record
