"""``gc --apply`` on a live site (issue 16): on FileStorage, over ZEO and on
RelStorage/PostgreSQL (history-free and history-preserving), garbage is
deleted in batches while an application keeps committing; the
application's writes all survive, the garbage goes, an object the
application links again while gc runs is kept, batches shrink to fit
PostgreSQL's lock table, and every error is one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import transaction
from click.testing import CliRunner
from persistent.mapping import PersistentMapping
from ZODB.POSException import POSKeyError
from ZODB.utils import oid_repr

import pclasses
from live_site import Writer, counters, modules, populate
from pclasses.cli import main
from pgserver import fill_lock_table

KINDS = ["file", "zeo", "pg-history-free", "pg-history-preserving"]
N_ITEMS = 120
N_TRASH = 40


@dataclass
class Target:
    kind: str
    #: what gc and the application open (a path or a URI)
    target: str

    def open(self) -> Any:
        return pclasses.open(self.target)


@contextmanager
def make_target(kind: str, tmp_path: Path, request: Any) -> Iterator[Target]:
    if kind == "file":
        yield Target(kind, str(tmp_path / "site.fs"))
    elif kind == "zeo":
        server = request.getfixturevalue("zeo_server")
        yield Target(kind, server.fresh_uri())
    else:
        pytest.importorskip("psycopg2")
        pytest.importorskip("relstorage")
        pg = request.getfixturevalue("pg_server")
        kh = "true" if kind == "pg-history-preserving" else "false"
        yield Target(kind, f"postgres://postgres@{pg.host}:{pg.port}/{pg.createdb()}"
                           f"?keep_history={kh}")


@dataclass
class Garbage:
    trash: list[bytes]
    mover: bytes
    child: bytes


def build(db: Any, mods: Any) -> tuple[Garbage, Any, Any]:
    """The site (``live_site``), then garbage: ``root['trash']`` (a mapping
    of N_TRASH mappings) and ``root['mover']`` (a mapping and its child)
    are unlinked.  Returns the garbage and the application's connection and
    transaction manager, which still hold ``mover`` in memory."""
    populate(db, mods, n=N_ITEMS, blobs=0)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    root = conn.root()
    trash = root["trash"] = PersistentMapping()
    for i in range(N_TRASH):
        trash[i] = PersistentMapping(v=i)
    tm.commit()
    mover = root["mover"] = PersistentMapping(name="mover")  # oids after the trash's:
    mover["child"] = PersistentMapping(leaf=1)  # deleted in a later batch
    tm.commit()
    oids = [trash._p_oid] + [trash[i]._p_oid for i in range(N_TRASH)]
    garbage = Garbage(oids, mover._p_oid, mover["child"]._p_oid)
    del root["trash"]
    del root["mover"]
    tm.commit()
    return garbage, conn, tm


def loadable(db: Any, oid: bytes) -> bool:
    try:
        db.storage.load(oid)
    except POSKeyError:
        return False
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_gc_apply_finishes_while_the_application_writes(kind: str, tmp_path: Path,
                                                        request: Any):
    """With an application committing all along, ``collect_garbage(apply=True)``
    in small batches deletes the garbage and finishes; every change the
    application committed is there; an object the application linked again
    after gc had found it unreachable (and its child) is kept and reported
    as relinked, and loads; nothing reachable dangles afterwards."""
    with make_target(kind, tmp_path, request) as t, modules() as mods:
        app = t.open()
        gcdb = None
        try:
            garbage, conn, tm = build(app, mods)
            gcdb = app if kind == "file" else t.open()  # a file opens once per process
            relinked: list[int] = []

            def progress(done: int, total: int | None) -> None:
                if not relinked:  # after the first batch: the application links mover again
                    conn.root()["back"] = conn.get(garbage.mover)
                    tm.commit()
                    relinked.append(done)

            writer = Writer(app, N_ITEMS)
            writer.start()
            try:
                report = pclasses.collect_garbage(gcdb, days=0, apply=True, force=True,
                                                  batch_size=4, progress=progress)
            finally:
                writer.stop()
            assert writer.error is None and writer.commits > 0
            assert relinked and report.applied
            name = next(iter(report.garbage))
            assert set(garbage.trash) <= set(report.garbage[name])
            assert {garbage.mover, garbage.child}.isdisjoint(report.garbage[name])
            assert set(report.relinked[name]) == {garbage.mover, garbage.child}
            assert report.transactions >= len(garbage.trash) // 4
            fresh = t.open() if kind != "file" else app
            try:
                fresh.cacheMinimize()
                assert not any(loadable(fresh, oid) for oid in garbage.trash)
                assert loadable(fresh, garbage.mover) and loadable(fresh, garbage.child)
                tm2 = transaction.TransactionManager()
                c2 = fresh.open(tm2)
                assert c2.root()["back"]["child"]["leaf"] == 1
                tm2.abort()
                c2.close()
                got = counters(fresh)
                assert all(got[k] == n for k, n in writer.expected.items())
                refs = pclasses.check_refs(fresh)
                assert refs.ok, refs.to_dict()
            finally:
                if fresh is not app:
                    fresh.close()
            tm.abort()
            conn.close()
        finally:
            if gcdb is not None and gcdb is not app:
                gcdb.close()
            app.close()


def test_gc_apply_cli_live_on_file(tmp_path: Path):
    """``pclasses gc --apply --force --json`` deletes the garbage of a file
    in batches (``--batch-size``) and reports the transactions it made and
    what it kept; a second run finds nothing left."""
    path = tmp_path / "site.fs"
    with modules() as mods:
        db = pclasses.open(str(path))
        garbage, conn, tm = build(db, mods)
        tm.abort()
        conn.close()
        db.close()
        result = CliRunner().invoke(main, ["gc", str(path), "--days", "0", "--apply",
                                           "--force", "--batch-size", "7", "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        name = next(iter(doc["databases"]))
        each = doc["databases"][name]
        assert doc["applied"] is True and doc["transactions"] == 7  # 43 objects
        assert set(each["garbage"]) == {oid_repr(o) for o in
                                        garbage.trash + [garbage.mover, garbage.child]}
        assert each["relinked"] == [] and each["skipped"] == []
        again = CliRunner().invoke(main, ["gc", str(path), "--days", "0", "--json"])
        assert json.loads(again.output)["count"] == 0


@pytest.mark.postgres
@pytest.mark.parametrize("keep_history", [False, True], ids=["history-free",
                                                              "history-preserving"])
def test_gc_batches_shrink_to_fit_the_lock_table(pg_server: Any, keep_history: bool):
    """When PostgreSQL's lock table cannot hold a batch's locks ("out of
    shared memory"), gc --apply deletes in smaller batches and finishes."""
    pytest.importorskip("psycopg2")
    pytest.importorskip("relstorage")
    uri = (f"postgres://postgres@{pg_server.host}:{pg_server.port}/{pg_server.createdb()}"
           f"?keep_history={str(keep_history).lower()}")
    with modules() as mods:
        db = pclasses.open(uri)
        try:
            populate(db, mods, n=10, blobs=0)
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            trash = conn.root()["trash"] = PersistentMapping()
            for i in range(1500):
                trash[i] = PersistentMapping(v=i)
            tm.commit()
            del conn.root()["trash"]
            tm.commit()
            conn.close()
        finally:
            db.close()
    hog = fill_lock_table(pg_server.dsn("postgres"), leave=100)
    try:
        db = pclasses.open(uri)
        try:
            report = pclasses.collect_garbage(db, days=0, apply=True, force=True,
                                              batch_size=10_000)
        finally:
            db.close()
    finally:
        hog.close()
    assert report.count == 1501
    if keep_history:  # its deletes take a lock each (history-free ones: row locks only)
        assert report.transactions > 1  # cut in smaller batches
    db = pclasses.open(uri, read_only=True)
    try:
        assert pclasses.collect_garbage(db, days=0).count == 0
    finally:
        db.close()


@pytest.mark.postgres
def test_gc_apply_failure_is_one_line_and_rolls_back(pg_server: Any):
    """A batch PostgreSQL refuses (a role that may not DELETE) ends gc
    --apply with exit 1 and one line, no traceback; the batch was rolled
    back: the garbage is all still there."""
    pytest.importorskip("psycopg2")
    pytest.importorskip("relstorage")
    dbname = pg_server.createdb()
    base = f"postgres://{{}}@{pg_server.host}:{pg_server.port}/{dbname}?keep_history=false"
    with modules() as mods:
        db = pclasses.open(base.format("postgres"))
        try:
            garbage, conn, tm = build(db, mods)
            tm.abort()
            conn.close()
        finally:
            db.close()
    role = pg_server.create_role("gc_no_delete")
    pg_server.psql(f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO "{role}"',
                   dbname)
    pg_server.psql(f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
                   dbname)
    pg_server.psql(f'GRANT CREATE ON SCHEMA public TO "{role}"', dbname)
    result = CliRunner().invoke(main, ["gc", base.format(role), "--days", "0", "--apply",
                                       "--force", "--batch-size", "10"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert "rolled back" in result.output and "permission denied" in result.output
    db = pclasses.open(base.format("postgres"), read_only=True)
    try:
        assert all(loadable(db, oid) for oid in garbage.trash)
    finally:
        db.close()


@pytest.mark.parametrize("kind", ["file", "zeo", "pg-history-free"])
def test_the_check_inside_the_commit_keeps_a_relinked_object(kind: str, tmp_path: Path,
                                                             request: Any):
    """The last look happens inside the batch's commit, the storage locked:
    an object the application linked again after gc's previous look (here,
    after the walk, with no look before the batch) is found alive there,
    the batch is rolled back, and the object stays; the rest is deleted."""
    from pclasses.tree.gc import GcReport, _garbage
    from pclasses.tree.loader import loader_for
    from pclasses.tree.sweep import Sweeper, _Relinked, last_tid
    from pclasses.tree.walk import open_all

    with make_target(kind, tmp_path, request) as t, modules() as mods:
        app = t.open()
        gcdb = app if kind == "file" else t.open()
        try:
            garbage, conn, tm = build(app, mods)
            databases, unavailable = open_all(gcdb, read_only=False)
            since = {n: last_tid(d.storage) for n, d in databases.items()}
            loaders = {n: loader_for(d.storage) for n, d in databases.items()}
            try:
                found_garbage, found = _garbage(databases, unavailable, loaders,
                                                GcReport(), 0, True)
                name = next(iter(databases))
                assert garbage.mover in found_garbage[name]
                conn.root()["back"] = conn.get(garbage.mover)  # after the walk
                tm.commit()
                sweeper = Sweeper(databases, unavailable, loaders, found, since, 100)
                try:
                    with pytest.raises(_Relinked):
                        sweeper._delete([(name, garbage.mover), (name, garbage.trash[0])])
                    assert loadable(gcdb, garbage.mover) and loadable(gcdb, garbage.trash[0])
                    sweeper.run({name: sorted(found_garbage[name])})
                finally:
                    sweeper.close()
            finally:
                for loader in loaders.values():
                    loader.close()
            assert set(sweeper.relinked[name]) == {garbage.mover, garbage.child}
            assert set(garbage.trash) <= set(sweeper.deleted[name])
            fresh = t.open() if kind != "file" else app  # a view after the deletions
            try:
                assert loadable(fresh, garbage.mover) and loadable(fresh, garbage.child)
                assert not any(loadable(fresh, oid) for oid in garbage.trash)
            finally:
                if fresh is not app:
                    fresh.close()
            tm.abort()
            conn.close()
        finally:
            if gcdb is not app:
                gcdb.close()
            app.close()
