"""Claims about RelStorage on a real PostgreSQL (the ``pg_server`` fixture).

Every TARGET form opens read-only without creating anything (no schema, no
root object), in the database's own history mode, with a role that may only
``SELECT``; an empty database is a one-line error; commands give the same
``--json`` keys and byte-identical exports as on a FileStorage; repair
finishes while an application writes, and stores in smaller batches what
PostgreSQL's lock table cannot hold at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import pclasses
from live_site import Writer, counters, modules, populate
from pclasses.cli import main
from pclasses.errors import StorageOpenError
from pclasses.scan import iter_current, iter_records
from pgserver import fill_lock_table

pytest.importorskip("psycopg2")
pytest.importorskip("relstorage")


@dataclass
class Site:
    server: Any
    dbname: str
    keep_history: bool
    blobs: Path

    def uri(self, user: str = "postgres", keep_history: bool | None = None) -> str:
        kh = self.keep_history if keep_history is None else keep_history
        return (f"postgres://{user}@{self.server.host}:{self.server.port}/{self.dbname}"
                f"?keep_history={str(kh).lower()}&blob_dir={self.blobs}&shared_blob_dir=true")

    def relstorage_section(self) -> str:
        return (f"<relstorage>\n  keep-history {str(self.keep_history).lower()}\n"
                f"  blob-dir {self.blobs}\n  shared-blob-dir true\n"
                f"  <postgresql>\n    dsn {self.server.dsn(self.dbname)}\n  </postgresql>\n"
                "</relstorage>\n")

    def tables(self) -> set[str]:
        out = self.server.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                               self.dbname)
        return {line.strip() for line in out.splitlines() if line.strip()}


def naming_old(s: Site, mods: Any) -> set[bytes]:
    """The oids of the records that still name the old class."""
    db = pclasses.open(s.uri(), read_only=True)
    try:
        return {oid for oid, data in iter_records(db.storage) if mods.old.encode() in data}
    finally:
        db.close()


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(params=[False, True], ids=["history-free", "history-preserving"])
def site(pg_server: Any, tmp_path: Path, request: Any) -> Any:
    """A populated RelStorage database (both history modes) with blobs."""
    s = Site(pg_server, pg_server.createdb(), request.param, tmp_path / "blobs")
    with modules() as mods:
        db = pclasses.open(s.uri())
        try:
            populate(db, mods, n=200)
        finally:
            db.close()
        yield s, mods


def test_empty_database_read_only_is_one_line_and_creates_nothing(pg_server: Any,
                                                                   tmp_path: Path):
    """Inspecting an empty PostgreSQL database fails in one line, exit 1,
    and leaves it empty: no RelStorage schema, no root object."""
    s = Site(pg_server, pg_server.createdb(), False, tmp_path / "blobs")
    for command in ("classes", "broken"):
        result = run(command, s.uri(), "--no-progress")
        assert result.exit_code == 1
        assert "empty" in result.output and result.output.count("\n") == 1
    with pytest.raises(StorageOpenError, match="empty"):
        pclasses.open(s.uri(), read_only=True)
    assert s.tables() == set()


def test_schema_without_root_read_only_is_one_line(pg_server: Any, tmp_path: Path):
    """A RelStorage schema without a root object is reported as empty when
    read, and reading commits no root object."""
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    s = Site(pg_server, pg_server.createdb(), False, tmp_path / "blobs")
    options = Options(keep_history=False)
    RelStorage(PostgreSQLAdapter(dsn=pg_server.dsn(s.dbname), options=options),
               options=options).close()  # the schema, nothing in it
    result = run("classes", s.uri(), "--no-progress")
    assert result.exit_code == 1 and "no root object" in result.output
    assert pg_server.psql("SELECT count(*) FROM object_state", s.dbname).strip() == "0"


def test_every_target_form_opens_read_only(site: Any, tmp_path: Path):
    """pclasses.open(target, read_only=True) returns a read-only ZODB.DB
    for a postgres:// URI, a <relstorage> ZConfig file, a <zodb> file, a
    file.conf#NAME section and a zconfig:// URI, and each reads the site."""
    s, _mods = site
    plain = tmp_path / "rs.conf"
    plain.write_text("%import relstorage\n" + s.relstorage_section())
    multi = tmp_path / "zodb.conf"
    multi.write_text("%import relstorage\n<zodb main>\n" + s.relstorage_section()
                     + "</zodb>\n<zodb other>\n  <mappingstorage/>\n</zodb>\n")
    for target in (s.uri(), str(plain), str(multi), f"{multi}#main", f"zconfig://{multi}#main"):
        db = pclasses.open(target, read_only=True)
        try:
            assert db.storage.isReadOnly(), target
            conn = db.open()
            assert len(conn.root()["site"]) == 200
            conn.close()
        finally:
            for each in set(getattr(db, "databases", {None: db}).values()):
                each.close()
    db = pclasses.open(f"{multi}#main", read_only=True)
    try:
        assert list(db.databases) == ["main"]
    finally:
        db.close()


def test_select_only_role_can_inspect_and_export(site: Any, tmp_path: Path):
    """A role with only SELECT on the tables runs classes, broken and
    export; the export equals the one the owner makes."""
    s, _mods = site
    role = f"reader_{s.dbname}"
    s.server.create_role(role)
    s.server.psql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"', s.dbname)
    for command in ("classes", "broken"):
        result = run(command, s.uri(role), "--no-progress", "--json")
        assert result.exit_code == 0, result.output
    mine, theirs = tmp_path / "owner.pclasses", tmp_path / "reader.pclasses"
    assert run("export", s.uri(), "site", "-o", str(mine), "--no-progress").exit_code == 0
    result = run("export", s.uri(role), "site", "-o", str(theirs), "--no-progress")
    assert result.exit_code == 0, result.output
    assert mine.read_bytes() == theirs.read_bytes()


def test_history_mode_is_the_databases(site: Any):
    """A read-only opening whose URI names the wrong history mode reads the
    database in its own mode; a writing one says what to fix, in one line."""
    s, mods = site
    wrong = s.uri(keep_history=not s.keep_history)
    db = pclasses.open(wrong, read_only=True)
    try:
        assert db.storage._options.keep_history == s.keep_history
        assert len(db.open().root()["site"]) == 200
    finally:
        db.close()
    result = run("repair", wrong, "--rename", f"{mods.old}.Thing={mods.new}.Thing",
                 "--no-progress")
    assert result.exit_code == 1
    assert "keep_history=" in result.output and result.output.count("\n") == 1


def test_scans_stream_current_records_with_tids(site: Any):
    """The RelStorage scan yields every current object once, with the tid
    and state a load gives."""
    s, _mods = site
    db = pclasses.open(s.uri(), read_only=True)
    try:
        storage = db.storage
        records = list(iter_current(storage))
        assert len(records) == len({oid for oid, _t, _d in records}) > 200
        for oid, tid, data in records[::17]:
            assert storage.load(oid) == (data, tid)
        assert [(o, d) for o, _t, d in records] == list(iter_records(storage))
    finally:
        db.close()


def _keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items() if not isinstance(v, (list, dict))
                or v} | {k: type(v).__name__ for k, v in value.items()
                         if isinstance(v, (list, dict)) and not v}
    if isinstance(value, list) and value:
        return [_keys(value[0])]
    return type(value).__name__ if value is not None else None


def test_same_json_keys_and_identical_exports_as_a_filestorage(site: Any, tmp_path: Path):
    """classes, broken, repair --dry-run, export and xrefs print the same
    --json keys on RelStorage as on a FileStorage holding the same site,
    and the export files are byte-identical."""
    s, mods = site
    (tmp_path / "fs").mkdir()
    fs = tmp_path / "fs" / "Data.fs"
    # the same site in a FileStorage (written the same way)
    import sys

    sys.modules[mods.old].Thing = mods.old_class
    try:
        db = pclasses.open(str(fs), blob_dir=str(tmp_path / "fs" / "Data.fs.blobs"))
        try:
            populate(db, mods, n=200)
        finally:
            db.close()
    finally:
        sys.modules[mods.old].Thing = mods.new_class
    rule = f"{mods.old}.Thing={mods.new}.Thing"
    for target_a, target_b in [(str(fs), s.uri())]:
        for args in (["classes"], ["broken"], ["repair", "--dry-run", "--rename", rule],
                     ["xrefs"]):
            extra = ["--json"] + (["--no-progress"] if args[0] != "xrefs" else [])
            a = json.loads(run(args[0], target_a, *args[1:], *extra).output)
            b = json.loads(run(args[0], target_b, *args[1:], *extra).output)
            assert _keys(a) == _keys(b), args
            if args[0] == "repair":
                assert a["changed"] == b["changed"] == 200
        out_a, out_b = tmp_path / "a.pclasses", tmp_path / "b.pclasses"
        for target, out in ((target_a, out_a), (target_b, out_b)):
            result = run("export", target, "/", "-o", str(out), "--json", "--no-progress")
            assert result.exit_code == 0, result.output
        assert out_a.read_bytes() == out_b.read_bytes()


def test_repair_finishes_while_the_application_writes(site: Any):
    """With an application committing changes to the records being
    repaired, repair re-reads and retries the batches that conflict and
    finishes; afterwards no record names the old class, and every change
    the application committed is there."""
    s, mods = site
    app = pclasses.open(s.uri())
    writer = Writer(app, 200)
    writer.start()
    try:
        report = pclasses.rename_classes(s.uri(), mods.rule, batch_size=7)
    finally:
        writer.stop()
    assert writer.error is None and writer.commits > 0
    assert not report.skipped
    assert not naming_old(s, mods)
    db = pclasses.open(s.uri(), read_only=True)
    try:
        got = counters(db)
        for k, n in writer.expected.items():
            assert got[k] == n
    finally:
        db.close()
        app.close()


def test_repair_of_an_open_database_leaves_its_cache_alone(site: Any):
    """Repair given an application's open database renames through it and
    leaves RelStorage's local cache as the application configured it (repair
    turns that cache off only on storages it opens itself)."""
    s, mods = site
    app = pclasses.open(s.uri())
    try:
        before = app.storage._cache.local_client.limit
        report = pclasses.rename_classes(app, mods.rule)
        assert report.changed == 200 and not report.skipped
        assert before > 0 and app.storage._cache.local_client.limit == before
    finally:
        app.close()
    assert not naming_old(s, mods)


def test_a_failed_batch_is_one_line_and_running_again_finishes(site: Any):
    """A batch PostgreSQL refuses (here a trigger that rejects one record)
    ends repair with one line (raised from the committer threads); that
    batch is rolled back, the batches before it stay repaired, and running
    repair again once the cause is gone renames what is left."""
    from ZODB.utils import u64

    s, mods = site
    holders = sorted(naming_old(s, mods))
    bad = u64(holders[len(holders) // 2])
    s.server.psql("CREATE FUNCTION pcl_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$", s.dbname)
    s.server.psql(f"CREATE TRIGGER pcl_refuse BEFORE INSERT ON object_state FOR EACH ROW "
                  f"WHEN (NEW.zoid = {bad}) EXECUTE FUNCTION pcl_refuse()", s.dbname)
    try:
        with pytest.raises(pclasses.RepairError) as info:
            pclasses.rename_classes(s.uri(), mods.rule, batch_size=7)
        message = str(info.value)
        assert "\n" not in message and "refused by the test" in message
        assert "rolled back" in message and "run again" in message
    finally:
        s.server.psql("DROP TRIGGER pcl_refuse ON object_state", s.dbname)
    left = naming_old(s, mods)
    assert holders[len(holders) // 2] in left  # its batch was rolled back
    assert len(left) < len(holders)  # the batches before it stay repaired
    report = pclasses.rename_classes(s.uri(), mods.rule, batch_size=7)
    assert report.changed == len(left) and not report.skipped
    assert not naming_old(s, mods)


def test_batches_shrink_to_fit_the_lock_table(site: Any):
    """When PostgreSQL's lock table cannot hold a batch's locks ("out of
    shared memory"), repair stores it in smaller batches and finishes."""
    s, mods = site

    # Hold almost every lock slot of the server in another session.
    hog = fill_lock_table(s.server.dsn("postgres"), leave=100)
    try:
        report = pclasses.rename_classes(s.uri(), mods.rule, batch_size=10_000)
    finally:
        hog.close()
    assert report.changed == 200 and report.transactions > 1 and not report.skipped


def test_repair_says_what_old_revisions_take_and_how_to_pack(site: Any):
    """After repair, a history-preserving RelStorage reports how many bytes
    the replaced revisions take and the pack that reclaims them (days 0); a
    history-free one reports nothing to reclaim."""
    s, mods = site
    report = pclasses.rename_classes(s.uri(), mods.rule)
    assert report.changed == 200
    if s.keep_history:
        assert report.old_revisions_bytes is not None and report.old_revisions_bytes > 4000
        assert report.pack_hint is not None and "zodbpack -d 0" in report.pack_hint
    else:
        assert report.old_revisions_bytes is None and report.pack_hint is None


@pytest.mark.parametrize("keep_history", [False, True], ids=["history-free",
                                                             "history-preserving"])
def test_unshared_blob_directory_repair_keeps_blobs(pg_server: Any, tmp_path: Path,
                                                     keep_history: bool):
    """With blobs stored in PostgreSQL (shared-blob-dir false), repair
    rewrites records with and without blobs, and every blob record keeps
    its blob's bytes."""
    dbname = pg_server.createdb()
    uri = (f"postgres://postgres@{pg_server.host}:{pg_server.port}/{dbname}"
           f"?keep_history={str(keep_history).lower()}&blob_dir={tmp_path / 'cache'}"
           "&shared_blob_dir=false")
    with modules() as mods:
        db = pclasses.open(uri)
        try:
            populate(db, mods, n=40, blobs=3)
            before = {oid: data for oid, data in iter_records(db.storage)
                      if data[2:].startswith(b"cZODB.blob\nBlob\n")}
            blobs = {}
            for oid in before:
                tid = db.storage.load(oid)[1]
                with db.storage.openCommittedBlobFile(oid, tid) as f:
                    blobs[oid] = f.read()
        finally:
            db.close()
        assert len(blobs) == 3
        report = pclasses.rename_classes(uri, {**mods.rule, "ZODB.blob.Blob": "h26blob.Blob"})
        assert report.changed >= 43 and not report.skipped
        db = pclasses.open(uri, read_only=True)
        try:
            for oid, content in blobs.items():
                data, tid = db.storage.load(oid)
                assert b"h26blob" in data
                with db.storage.openCommittedBlobFile(oid, tid) as f:
                    assert f.read() == content
        finally:
            db.close()


def test_role_without_select_is_one_line(site: Any):
    """A role that may not read the tables gets PostgreSQL's reason in one
    line, exit 1, not a traceback."""
    s, _mods = site
    role = f"nobody_{s.dbname}"
    s.server.create_role(role)
    result = run("classes", s.uri(role), "--no-progress")
    assert result.exit_code == 1
    assert "permission denied" in result.output and result.output.count("\n") == 1


def test_scan_reads_chunk_after_chunk_at_one_snapshot(site: Any, monkeypatch: Any):
    """The scan reads PostgreSQL a chunk at a time (binary COPY, the next
    chunk read ahead) and still yields every current object once, in oid
    order, with the state and tid a load gives; a commit made while it
    reads does not move it (it reads the snapshot it started at)."""
    from pclasses.storages import relstorage

    s, _mods = site
    db = pclasses.open(s.uri(), read_only=True)
    app = pclasses.open(s.uri())
    try:
        storage = db.storage
        whole = list(iter_current(storage))
        monkeypatch.setattr(relstorage, "FETCH_ROWS", 7)
        stream = iter_current(storage)
        first = [next(stream) for _ in range(10)]
        with app.transaction() as conn:  # changes a record the scan has not reached
            site_ = conn.root()["site"]
            site_[199]["n"] += 1
        chunked = first + list(stream)
        assert chunked == whole
        oids = [oid for oid, _t, _d in chunked]
        assert oids == sorted(set(oids))
        for oid, tid, data in chunked[::13]:
            assert storage.load(oid) == (data, tid) or oid == site_[199]._p_oid
    finally:
        app.close()
        db.close()


def test_export_loads_in_batches_at_the_connection_snapshot(site: Any, tmp_path: Path,
                                                            monkeypatch: Any):
    """An export that loads the objects it is about to need a few at a time
    (one query a batch) writes the same file as one that loads them many at
    a time."""
    from pclasses.storages import relstorage

    s, _mods = site
    outs = []
    for batch in (2000, 3):
        monkeypatch.setattr(relstorage, "LOAD_BATCH", batch)
        out = tmp_path / f"site-{batch}.pclasses"
        db = pclasses.open(s.uri(), read_only=True)
        try:
            conn = db.open()
            report = pclasses.export_subtree(conn, conn.root()["site"], str(out), name="s")
            conn.close()
        finally:
            db.close()
        assert report.record_count > 200
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def _repair_peak(pg_server: Any, records: int) -> tuple[Any, int]:
    """Repair a new RelStorage of ``records`` 2 KB records in batches of
    100; ``(report, peak traced memory during the repair)``."""
    import tracemalloc

    from persistent.mapping import PersistentMapping

    dbname = pg_server.createdb()
    uri = (f"postgres://postgres@{pg_server.host}:{pg_server.port}/{dbname}"
           "?keep_history=false&cache_local_mb=0")
    with modules() as mods:
        db = pclasses.open(uri)
        try:
            with db.transaction() as conn:
                site_ = conn.root()["site"] = PersistentMapping()
                for i in range(records):
                    thing = mods.old_class()
                    thing.pad = "x" * 2000  # type: ignore[attr-defined]
                    site_[i] = PersistentMapping(thing=thing)
        finally:
            db.close()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            report = pclasses.rename_classes(uri, mods.rule, batch_size=100)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert report.changed == records and not report.skipped
    return report, peak


def test_repair_holds_a_batch_not_the_database(pg_server: Any, monkeypatch: Any):
    """Repair on RelStorage streams the records and holds about a batch of
    them at a time, not the database: renaming 4,000 records of 2 KB
    instead of 1,000 (6 MB more) takes less than 1 MB more memory."""
    from pclasses.storages import relstorage

    monkeypatch.setattr(relstorage, "FETCH_ROWS", 200)
    _small, small = _repair_peak(pg_server, 1000)
    report, large = _repair_peak(pg_server, 4000)
    assert report.transactions >= 40
    assert large - small < 1_000_000, (small, large)


def test_batch_reads_ranges_and_lookups_alike(site: Any):
    """A batch of oids read as ranges (dense runs, the rows between dropped)
    and as single lookups (sparse oids, missing oids) gives exactly each
    object's current state and tid, the oids asked for and no others."""
    from pclasses.storages import relstorage

    s, _mods = site
    db = pclasses.open(s.uri(), read_only=True)
    try:
        storage = db.storage
        instance = storage.new_instance()
        try:
            instance.poll_invalidations()
            present = [oid for oid, _t, _d in relstorage.iter_current(storage)]
            assert len(present) > 200
            last = int.from_bytes(present[-1], "big")
            dense = present[10:150:2]  # a run read as one range, every other row dropped
            sparse = present[150::40]  # looked up one by one
            missing = [(last + 1000 + i).to_bytes(8, "big") for i in range(3)]
            wanted = dense + sparse + missing
            ranges, singles = relstorage._runs(sorted(int.from_bytes(o, "big")
                                                      for o in wanted))
            assert ranges and singles  # both ways are used
            cursor = instance._load_connection.cursor
            got = relstorage._load_batch(cursor, relstorage.history_kept(storage), wanted)
            assert set(got) == set(dense + sparse)
            for oid, (state, tid) in got.items():
                assert storage.load(oid) == (state, tid)
        finally:
            instance.release()
    finally:
        db.close()
