"""Claims about whole-storage scans (pclasses.scan) that users rely on at scale.

A scan of a large FileStorage reads the file through a memory map; its
pages must not pile up in the process's resident memory (a 3 GB file would
otherwise make every read-only command peak at 3 GB).  A scan split over
processes reports a worker's failure instead of returning part of a result.
"""

from __future__ import annotations

import os

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage

import pclasses.scan
from pclasses.errors import ScanWorkerError
from pclasses.scan import iter_records, map_records


def _resident_file_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")
    return 0


@pytest.fixture
def fat_fs(tmp_path):
    """A FileStorage of 400 records of 64 KB each (about 26 MB)."""
    path = tmp_path / "Data.fs"
    db = ZODB.DB(FileStorage(str(path)))
    with db.transaction() as conn:
        root = conn.root()
        for i in range(400):
            root[i] = PersistentMapping(blob=os.urandom(64 << 10))
    transaction.abort()
    db.close()
    return path


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_a_scan_gives_back_the_pages_it_read(fat_fs, monkeypatch):
    """Reading every record of a FileStorage keeps at most a few megabytes of
    the file resident, however large the file (the map's pages are given
    back as the scan goes)."""
    monkeypatch.setattr(pclasses.scan, "DROP_BYTES", 1 << 20)
    storage = FileStorage(str(fat_fs), read_only=True)
    try:
        before = _resident_file_kb()
        peak = 0
        n = 0
        for _oid, data in iter_records(storage):
            n += 1
            assert data
            if n % 20 == 0:
                peak = max(peak, _resident_file_kb() - before)
        assert n == 401
        size_kb = os.path.getsize(fat_fs) >> 10
        assert peak < size_kb // 4
    finally:
        storage.close()


def test_a_failing_worker_is_reported_not_dropped(fat_fs, monkeypatch):
    """A worker that fails raises its error; one that dies without a result
    raises ScanWorkerError; neither returns a partial result."""
    monkeypatch.setattr(pclasses.scan, "PARALLEL_MIN_RECORDS", 10)
    home = os.getpid()

    def fails(records):
        items = sum(1 for _ in records)
        if os.getpid() != home:
            raise LookupError("worker trouble")
        return items

    def dies(records):
        items = sum(1 for _ in records)
        if os.getpid() != home:
            os._exit(0)
        return items

    storage = FileStorage(str(fat_fs), read_only=True)
    try:
        assert sum(map_records(storage, lambda r: sum(1 for _ in r), jobs=3)) == 401
        with pytest.raises(LookupError, match="worker trouble"):
            map_records(storage, fails, jobs=2)
        with pytest.raises(ScanWorkerError):
            map_records(storage, dies, jobs=2)
    finally:
        storage.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_a_walk_loader_gives_back_the_pages_it_read(fat_fs, monkeypatch):
    """The tree walks' loader (refs-check, gc) reads every record of a
    FileStorage with at most a few megabytes of the file resident."""
    from pclasses.tree import loader as loader_module

    monkeypatch.setattr(loader_module, "DROP_BYTES", 1 << 20)
    storage = FileStorage(str(fat_fs), read_only=True)
    loader = loader_module.loader_for(storage)
    try:
        before = _resident_file_kb()
        peak = 0
        for n, oid in enumerate(loader.oids(), 1):
            assert loader.load(oid)
            if n % 20 == 0:
                peak = max(peak, _resident_file_kb() - before)
        assert peak < (os.path.getsize(fat_fs) >> 10) // 4
    finally:
        loader.close()
        storage.close()
