"""Claims about the batched ZEO scan (a real ``runzeo`` server, ``zeo_server``).

The scan over ZEO yields exactly what the server's own file holds, each
current record once and in oid order, across gaps in the oids, deleted
objects, an empty storage and commits made while it runs, with runs of any
size; it never asks past the last oid (each such request is a traceback in
the server's log and an error in the client's); the one-request-at-a-time
path (servers this module cannot pipeline with) yields the same.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def _msgpack_server(directory: Path) -> Iterator[tuple[tuple[str, int], Path]]:
    """A real ``runzeo`` process answering in msgpack (``msgpack true``)."""
    from netutil import accepts, free_port

    directory.mkdir(parents=True, exist_ok=True)
    address = ("127.0.0.1", free_port())
    conf = directory / "zeo.conf"
    conf.write_text(f"<zeo>\n  address {address[0]}:{address[1]}\n  msgpack true\n</zeo>\n"
                    f"<filestorage 1>\n  path {directory / 'zeo.fs'}\n</filestorage>\n")
    with (directory / "zeo.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ZEO.runzeo", "-C", str(conf)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not accepts(address):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the msgpack ZEO server did not start")
            time.sleep(0.05)
        yield address, directory / "zeo.fs"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_msgpack_server_reads_the_same(tmp_path: Path, monkeypatch: Any):
    """A server running with ``msgpack true`` (answers as lists, not
    tuples) gives the same scan, the same export and the same reference
    check as its own file."""
    pytest.importorskip("msgpack")
    from pclasses.tree import check_refs

    with _msgpack_server(tmp_path / "zeo") as (address, path):
        uri = f"zeo://{address[0]}:{address[1]}?wait_timeout=20"
        db = pclasses.open(uri)
        try:
            with db.transaction() as conn:
                root = conn.root()
                for i in range(200):
                    root[f"o{i}"] = PersistentMapping(n=i, next=root.get(f"o{i - 1}"))
            assert db.storage._server.client.protocol.protocol_version[:1] == b"M"
            _small_runs(monkeypatch)
            assert list(iter_current(db.storage)) == _file_records(path)
            fdb = pclasses.open(str(path), read_only=True)
            try:
                a, b = check_refs(db).to_dict(), check_refs(fdb).to_dict()
                a.pop("databases", None)
                b.pop("databases", None)
                assert a == b
            finally:
                fdb.close()
        finally:
            db.close()
        out_a, out_b = tmp_path / "zeo.pclasses", tmp_path / "file.pclasses"
        for target, out in ((uri, out_a), (str(path), out_b)):
            db = pclasses.open(target, read_only=True)
            try:
                conn = db.open()
                pclasses.export_subtree(conn, conn.root(), str(out), name="all")
                conn.close()
            finally:
                db.close()
        assert out_a.read_bytes() == out_b.read_bytes()


def test_a_scan_of_a_client_closed_meanwhile_ends(zeo_server: Any, monkeypatch: Any):
    """Closing the client while a scan reads from it ends the scan with
    ``ClientDisconnected`` (requests never sent or never answered are not
    waited for)."""
    from ZEO.Exceptions import ClientDisconnected

    address, name = zeo_server.fresh()
    db = pclasses.open(zeo_server.uri(address, name))
    try:
        with db.transaction() as conn:
            for i in range(400):
                conn.root()[f"o{i}"] = PersistentMapping(n=i)
    finally:
        db.close()
    _small_runs(monkeypatch)
    storage = zeo_server.client(address, name, read_only=True)
    scan = iter_current(storage)
    next(scan)
    storage.close()
    with pytest.raises(ClientDisconnected):
        for _record in scan:
            pass
