"""``bench/bench_scale.py``'s builder: the 10-million-record benchmark's FileStorage, tiny."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench_scale():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_scale

        yield bench_scale
    finally:
        sys.path.remove(str(BENCH))
        for name in ("bench_scale", "_common", "pbmodel"):
            sys.modules.pop(name, None)


def test_built_file_opens_with_the_counts_it_reports(bench_scale, tmp_path):
    """A storage written straight through the storage API opens as a normal
    FileStorage: as many current records as reported, every class counted as
    the builder says (1% of the items broken, 1% of a renamed class), the
    containers reachable from root['tree'], and the oid counter past the last
    record; a second call reuses the file."""
    import ZODB
    from ZODB.FileStorage import FileStorage

    import pclasses

    path, counts = bench_scale.build_scale(2000, tmp_path)
    assert counts["records"] == 3 + 2 * 1101
    assert (counts["items"], counts["ghosts"], counts["legacy"], counts["metas"]) == \
        (2000, 20, 20, 200)

    storage = FileStorage(str(path), read_only=True)
    try:
        assert len(storage) == counts["records"]
        census = pclasses.take_census(storage, jobs=1)
        by_name = {c.dotted: c.records for c in census.classes}
        assert census.records == counts["records"]
        assert not census.unreadable
        assert by_name["pbmodel_gone.Ghost"] == counts["ghosts"]
        assert by_name["pbmodel_legacy.Item"] == counts["legacy"]
        assert by_name["pbmodel.Item"] == counts["items"] - counts["ghosts"] - counts["legacy"]
        assert by_name["persistent.mapping.PersistentMapping"] == 3 + 2 + counts["metas"]
    finally:
        storage.close()

    db = ZODB.DB(FileStorage(str(path)))
    try:
        conn = db.open()
        items = conn.root()["tree"]["items"]
        assert sorted(items) == ["c00000", "c00001"]
        item = items["c00001"]["k0030"]
        assert (type(item).__module__, item.name, item.n) == ("pbmodel", "item 0030", 30)
        assert item.meta["sibling"] is items["c00001"]["k0029"]
        assert int.from_bytes(db.storage.new_oid(), "big") == counts["records"]
        conn.close()
    finally:
        db.close()

    mtime = path.stat().st_mtime_ns
    again, counts_again = bench_scale.build_scale(2000, tmp_path)
    assert (again, again.stat().st_mtime_ns) == (path, mtime)
    assert {k: counts_again[k] for k in counts} == counts


def test_scans_read_the_same_when_mapped_pages_are_released(bench_scale, tmp_path, monkeypatch):
    """Readers of a FileStorage through a memory map drop its pages from the
    process every DROP_BYTES (so a scan of a large file does not show the
    file in its resident memory); released after every record, the census,
    the record iterator and the reference walk still read every record
    exactly as before."""
    import ZODB
    from ZODB.FileStorage import FileStorage

    import pclasses
    from pclasses import scan
    from pclasses.tree import check, loader

    path, counts = bench_scale.build_scale(2000, tmp_path)

    def read_all():
        db = ZODB.DB(FileStorage(str(path), read_only=True))
        try:
            records = list(scan.iter_records(db.storage))
            census = pclasses.take_census(db.storage, jobs=1).to_dict()
            refs = check.check_refs(db).to_dict()
        finally:
            db.close()
        return records, census, refs

    before = read_all()
    monkeypatch.setattr(scan, "DROP_BYTES", 1)
    monkeypatch.setattr(loader, "DROP_BYTES", 1)
    after = read_all()
    assert after == before
    assert len(after[0]) == counts["records"]
    assert after[2]["ok"] and after[2]["objects"] == {"unnamed": counts["records"]}
