"""Claims about the batched ZEO scan (a real ``runzeo`` server, ``zeo_server``).

The scan over ZEO yields exactly what the server's own file holds, each
current record once and in oid order, across gaps in the oids, deleted
objects, an empty storage and commits made while it runs, with runs of any
size; it never asks past the last oid (each such request is a traceback in
the server's log and an error in the client's); the one-request-at-a-time
path (servers this module cannot pipeline with) yields the same.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import transaction
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.utils import p64, u64

import pclasses
from pclasses.scan import iter_current
from pclasses.storages import zeo as zeo_paths

pytestmark = pytest.mark.zeo


def _file_records(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    fs = FileStorage(str(path), read_only=True)
    try:
        return list(iter_current(fs))
    finally:
        fs.close()


def _server_log(zeo_server: Any, address: tuple[str, int]) -> Path:
    """The log file of the server process listening at ``address``."""
    return next(p.log for p in zeo_server._processes if p.address == address)


def _past_the_end(log: Path) -> int:
    """How many requests past the last oid the server has logged."""
    return log.read_text(errors="replace").count("`'record_iternext'` raised exception")


def _small_runs(monkeypatch: Any) -> None:
    monkeypatch.setattr(zeo_paths, "FIRST_RUN", 8)
    monkeypatch.setattr(zeo_paths, "MIN_RUN", 2)
    monkeypatch.setattr(zeo_paths, "MAX_RUN", 32)


@pytest.fixture
def gappy(zeo_server: Any) -> Any:
    """A ZEO storage whose oids have gaps (oids handed out and never
    stored, in runs of 1 to 90) and deleted objects (one of them the last
    oid), and the path of the server's file."""
    address, name = zeo_server.fresh()
    db = pclasses.open(zeo_server.uri(address, name))
    storage = db.storage
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        for i in range(120):
            for _ in range((i * 37) % 91 if i % 5 == 0 else 0):
                storage.new_oid()  # never stored: a gap
            root[f"o{i}"] = PersistentMapping(n=i)
            if i % 20 == 19:
                tm.commit()
        tm.commit()
        doomed = [root[f"o{i}"]._p_oid for i in (3, 4, 50, 119)]
        conn.close()
        t = transaction.Transaction()
        storage.tpc_begin(t)
        for oid in doomed:
            _data, serial = storage.load(oid)
            storage.deleteObject(oid, serial, t)
        storage.tpc_vote(t)
        storage.tpc_finish(t)
        yield db, zeo_server.path_of(address, name), doomed, _server_log(zeo_server, address)
    finally:
        db.close()


def test_scan_across_gaps_asks_nothing_past_the_end(zeo_server: Any, monkeypatch: Any):
    """Across gaps of every size in the oids, with runs from 2 to 32
    requests and with the default runs, the scan yields each current record
    of the server's file exactly once, in oid order, and asks for nothing
    past the last oid (the server logs a traceback for each such request)."""
    address, name = zeo_server.fresh()
    log = _server_log(zeo_server, address)
    db = pclasses.open(zeo_server.uri(address, name))
    try:
        with db.transaction() as conn:
            root = conn.root()
            for i in range(300):
                for _ in range((i * 37) % 91 if i % 7 == 0 else 0):
                    db.storage.new_oid()  # never stored: a gap
                root[f"o{i}"] = PersistentMapping(n=i)
                if i % 7 == 6:
                    conn.transaction_manager.commit()
        expected = _file_records(zeo_server.path_of(address, name))
        assert len(expected) == 301
        for small in (True, False):
            if small:
                _small_runs(monkeypatch)
            else:
                monkeypatch.undo()
            errors = _past_the_end(log)
            got = list(iter_current(db.storage))
            db.storage._server.call("ping")  # answered after every request before it
            assert got == expected
            assert _past_the_end(log) == errors
    finally:
        db.close()


def test_scan_skips_deleted_objects(gappy: Any, monkeypatch: Any):
    """Deleted objects (two adjacent, one after a gap, the last oid) are
    skipped as on the file, every other record is yielded once in oid
    order, with small runs and default ones; requests past the last oid
    stay fewer than the deleted objects (a deleted object cannot always be
    told from the ones after it, and an object counted twice would end the
    scan early)."""
    db, path, doomed, log = gappy
    expected = _file_records(path)
    assert not {oid for oid, _t, _d in expected} & set(doomed)
    for small in (True, False):
        if small:
            _small_runs(monkeypatch)
        else:
            monkeypatch.undo()
        errors = _past_the_end(log)
        got = list(iter_current(db.storage))
        db.storage._server.call("ping")
        assert got == expected
        assert _past_the_end(log) - errors < len(doomed)


def test_one_request_at_a_time_yields_the_same(gappy: Any, monkeypatch: Any):
    """A client this module cannot pipeline with reads one record a
    request and yields the same records, deleted objects skipped."""
    db, path, _doomed, _log = gappy
    monkeypatch.setattr(zeo_paths, "_can_pipeline", lambda storage: False)
    assert list(iter_current(db.storage)) == _file_records(path)


def test_empty_storage_scans_to_nothing(zeo_server: Any):
    """A storage nothing was ever written to scans to no records."""
    address, name = zeo_server.fresh()
    storage = zeo_server.client(address, name, read_only=True)
    try:
        assert list(iter_current(storage)) == []
    finally:
        storage.close()


def test_a_scan_while_another_client_commits(zeo_server: Any, monkeypatch: Any):
    """While another client adds objects and changes existing ones, the
    scan still yields every object that existed before it started exactly
    once, in strictly increasing oid order, and each record it yields is a
    revision that object had."""
    address, name = zeo_server.fresh()
    uri = zeo_server.uri(address, name)
    db = pclasses.open(uri)
    app = pclasses.open(uri)
    try:
        with db.transaction() as conn:
            root = conn.root()
            for i in range(400):
                root[f"o{i}"] = PersistentMapping(n=i)
        with db.transaction() as conn:
            before = {conn.root()[f"o{i}"]._p_oid for i in range(400)} | {p64(0)}
        _small_runs(monkeypatch)
        stop = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                k = 0
                while not stop.is_set() and k < 200:
                    with app.transaction() as conn:
                        root = conn.root()
                        root[f"o{k}"]["n"] = -k
                        root[f"new{k}"] = PersistentMapping(n=k)
                    k += 1
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        writer = threading.Thread(target=write)
        got = []
        scan = iter_current(db.storage)
        got.append(next(scan))
        writer.start()
        try:
            for record in scan:
                got.append(record)
        finally:
            stop.set()
            writer.join(60)
        assert not errors
        oids = [u64(oid) for oid, _t, _d in got]
        assert oids == sorted(set(oids))
        assert before <= {oid for oid, _t, _d in got}
        for oid, tid, data in got[::25]:
            assert db.storage.loadSerial(oid, tid) == data
    finally:
        app.close()
        db.close()


def test_walk_commands_give_the_file_s_answers(gappy: Any):
    """refs-check and the report's reference check over ZEO (walks through
    the read-ahead loader) find what they find on the server's file."""
    from pclasses.tree import check_refs
    from pclasses.tree.loader import loader_for

    db, path, _doomed, _log = gappy
    fdb = pclasses.open(str(path), read_only=True)
    try:
        a, b = check_refs(db).to_dict(), check_refs(fdb).to_dict()
        a.pop("databases", None)
        b.pop("databases", None)
        assert a == b
        zl, fl = loader_for(db.storage), loader_for(fdb.storage)
        try:
            for k in range(0, 700):
                assert zl.load(k) == fl.load(k), k
            for k in range(699, -1, -7):
                assert zl.load(k) == fl.load(k), k
        finally:
            zl.close()
            fl.close()
    finally:
        fdb.close()
