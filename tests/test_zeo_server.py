"""Claims about the ``pclasses-zeo`` server (real server processes, no mocks).

A ``pclasses-zeo`` process (``python -m pclasses.storages.zeoserver -C
zeo.conf``, runzeo's own options) answers the batched requests, and every
read-only command gives through it what it gives on the file itself and
through a stock ``runzeo`` server: the same JSON, byte-identical exports,
blobs included; scans see deleted objects skipped, gaps crossed, a pack and
commits made meanwhile; a read-only server stays read-only; a stock server
keeps working and is never disconnected by the probe; hostile arguments to
the new requests are errors, never a crash or a hang.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import transaction
from click.testing import CliRunner
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.POSException import ReadOnlyError
from ZODB.serialize import referencesf
from ZODB.utils import p64, u64

import pclasses
from live_site import Writer, counters, modules, populate
from netutil import accepts, free_port
from pclasses.cli import main
from pclasses.scan import iter_current, iter_records
from pclasses.storages import zeo as zeo_paths
from pclasses.storages.zeo import BlockReader, batched_info

pytestmark = pytest.mark.zeo


@contextlib.contextmanager
def zeo_process(directory: Path, storages: dict[str, str], *, stock: bool = False,
                read_only: bool = False, blob_dir: Path | None = None,
                msgpack: bool = False) -> Iterator[tuple[tuple[str, int], Path]]:
    """A real server process: ``pclasses-zeo`` (``python -m
    pclasses.storages.zeoserver``), or ZEO's stock ``runzeo`` when
    ``stock``, serving FileStorages ``{name: path}`` from one zeo.conf;
    yields its address and its log file."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "zeo.log"
    module = "ZEO.runzeo" if stock else "pclasses.storages.zeoserver"
    for _attempt in range(3):
        address = ("127.0.0.1", free_port())
        sections = [f"<zeo>\n  address {address[0]}:{address[1]}\n"
                    f"  read-only {'true' if read_only else 'false'}\n"
                    f"  msgpack {'true' if msgpack else 'false'}\n</zeo>"]
        for name, path in storages.items():
            blobs = f"  blob-dir {blob_dir}\n" if blob_dir is not None else ""
            sections.append(f"<filestorage {name}>\n  path {path}\n{blobs}</filestorage>")
        conf = directory / "zeo.conf"
        conf.write_text("\n".join(sections) + "\n")
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", module, "-C", str(conf)],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not accepts(address):
            time.sleep(0.05)
        if proc.poll() is None and accepts(address):
            try:
                yield address, log
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    raise RuntimeError("the ZEO server did not start:\n" + log.read_text(errors="replace")[-2000:])


def uri(address: tuple[str, int], name: str = "1", **extra: str) -> str:
    tail = "".join(f"&{k}={v}" for k, v in extra.items())
    return f"zeo://{address[0]}:{address[1]}?storage={name}&wait_timeout=20{tail}"


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _file_records(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    fs = FileStorage(str(path), read_only=True)
    try:
        return list(iter_current(fs))
    finally:
        fs.close()


def _small_batches(monkeypatch: Any) -> None:
    monkeypatch.setattr(zeo_paths, "CURRENT_FIRST", 3)
    monkeypatch.setattr(zeo_paths, "CURRENT_RECORDS", 17)
    monkeypatch.setattr(zeo_paths, "BATCHED_BLOCK", 16)
    monkeypatch.setattr(zeo_paths, "LOAD_BATCH", 10)


def _fill(db: Any, mods: Any) -> list[bytes]:
    """The live site's data, gaps in the oids (oids handed out and never
    stored), an undone change (a backpointer) and deleted objects (one of
    them the last oid); returns the deleted oids."""
    populate(db, mods, n=300, blobs=0)
    storage = db.storage
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    root = conn.root()
    extra = root["extra"] = PersistentMapping()
    for i in range(60):
        for _ in range((i * 37) % 41 if i % 6 == 0 else 0):
            storage.new_oid()  # never stored: a gap
        extra[f"e{i}"] = PersistentMapping(n=i, prev=extra.get(f"e{i - 1}"))
    tm.commit()
    doomed = [extra[f"e{i}"]._p_oid for i in (7, 8, 33)]
    last = extra["last"] = PersistentMapping(n=-1)
    tm.commit()
    doomed.append(last._p_oid)
    for k in ("e7", "e8", "e33", "last"):
        del extra[k]
    extra["e9"]["prev"] = None
    extra["e34"]["prev"] = None
    tm.commit()
    # an undone change: the object's current record is a backpointer
    extra["e20"]["n"] = 999
    tm.commit()
    db.undo(db.undoLog(0, 1)[0]["id"], tm.get())
    tm.commit()
    conn.close()
    t = transaction.Transaction()
    storage.tpc_begin(t)
    for oid in doomed:
        _data, serial = storage.load(oid)
        storage.deleteObject(oid, serial, t)
    storage.tpc_vote(t)
    storage.tpc_finish(t)
    return doomed


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A ``pclasses-zeo`` server whose storage ``'1'`` holds the live site
    with gaps and deleted objects (written through it), and over copies of
    its file made afterwards a stock read-only ``runzeo`` and a read-only
    ``pclasses-zeo``."""
    base = tmp_path_factory.mktemp("pzeo")
    path = base / "site.fs"
    with contextlib.ExitStack() as stack:
        address, log = stack.enter_context(zeo_process(base / "rw", {"1": str(path)}))
        # written with the site's classes; read with the old one's module
        # gone (a broken class)
        with modules() as mods:
            db = pclasses.open(uri(address))
            try:
                doomed = _fill(db, mods)
            finally:
                db.close()
        copies = {}
        for kind in ("stock", "ro"):
            (base / kind).mkdir()
            copy = base / kind / "site.fs"
            shutil.copyfile(path, copy)
            copies[kind] = copy
        stock, stock_log = stack.enter_context(
            zeo_process(base / "stock", {"1": str(copies["stock"])}, stock=True, read_only=True))
        ro, ro_log = stack.enter_context(
            zeo_process(base / "ro", {"1": str(copies["ro"])}, read_only=True))
        yield {"path": path, "uri": uri(address), "log": log, "doomed": doomed,
               "stock": uri(stock), "stock_log": stock_log, "ro": uri(ro), "ro_log": ro_log,
               "address": address}


def _normalized(output: str, target: str) -> Any:
    # a target is shell-quoted in suggested commands when it needs it
    doc = json.loads(output.replace(json.dumps(target)[1:-1], "TARGET").replace("'TARGET'",
                                                                               "TARGET"))
    for each in doc.get("databases", []) if isinstance(doc, dict) else []:
        if isinstance(each, dict):
            each.pop("name", None)
    if isinstance(doc, dict) and isinstance(doc.get("databases"), list):
        doc["databases"] = [d for d in doc["databases"] if not isinstance(d, str)]
    return doc


def test_every_read_only_command_matches_the_file_and_a_stock_server(
        site: dict[str, Any], tmp_path: Path):
    """classes, broken, xrefs, refs-check, report and gc (a dry run) give the same JSON
    through pclasses-zeo (read-write and read-only servers) as on the file
    and through a stock runzeo; export files are byte-identical from all
    four; the pclasses-zeo servers were asked with the batched requests,
    the stock server never was (and never dropped the connection)."""
    targets = {"file": str(site["path"]), "pzeo": site["uri"], "stock": site["stock"],
               "pzeo-ro": site["ro"]}
    commands = [["classes", "--no-progress"], ["broken", "--no-progress"], ["xrefs"],
                ["refs-check"], ["report", "--jobs", "1", "--no-progress"],
                ["gc", "--days", "0", "--no-progress"]]
    for command in commands:
        outputs = {}
        for kind, target in targets.items():
            result = run(command[0], target, *command[1:], "--json")
            assert result.exit_code in (0, 3), (kind, command, result.output[-500:])
            outputs[kind] = _normalized(result.output, target)
        assert outputs["pzeo"] == outputs["file"], command
        assert outputs["stock"] == outputs["file"], command
        assert outputs["pzeo-ro"] == outputs["file"], command
    exports = {}
    for kind, target in targets.items():
        out = tmp_path / f"{kind}.pclasses"
        result = run("export", target, "/", "-o", str(out), "--no-progress")
        assert result.exit_code == 0, (kind, result.output)
        exports[kind] = out.read_bytes()
    assert len(set(exports.values())) == 1
    for kind in ("pzeo", "pzeo-ro", "stock"):
        db = pclasses.open(targets[kind], read_only=True)
        try:
            info = batched_info(db.storage)
            assert (info is None) == (kind == "stock"), kind
            assert db.storage._connection_generation == 1
            db.storage._server.call("ping")
        finally:
            db.close()
    assert "Invalid method" not in site["stock_log"].read_text(errors="replace")
    assert "pclasses_" not in site["stock_log"].read_text(errors="replace")


def test_scans_and_loads_match_the_file_across_small_batches(
        site: dict[str, Any], monkeypatch: Any):
    """With answers of a few records, the batched scan yields each current
    record of the file once, in oid order, deleted objects skipped; the
    block reader gives each oid's record (or nothing, for deleted and
    never-stored oids) as the file's loader does, walking forwards and
    backwards; the same one call at a time (no pipelining)."""
    from pclasses.tree.loader import loader_for

    _small_batches(monkeypatch)
    expected = _file_records(site["path"])
    assert not {oid for oid, _t, _d in expected} & set(site["doomed"])
    for target in (site["uri"], site["ro"]):
        db = pclasses.open(target, read_only=True)
        fdb = pclasses.open(str(site["path"]), read_only=True)
        try:
            assert batched_info(db.storage) is not None
            assert list(iter_current(db.storage)) == expected
            top = u64(expected[-1][0]) + 40
            reader, fl = BlockReader(db.storage), loader_for(fdb.storage)
            try:
                for k in list(range(top)) + list(range(top - 1, -1, -5)):
                    assert reader.load(k) == fl.load(k), k
                # a client whose protocol this module cannot pipeline with
                # asks the same requests one call at a time
                with monkeypatch.context() as m:
                    m.setattr(zeo_paths, "_can_pipeline", lambda storage: False)
                    assert list(iter_current(db.storage)) == expected
                    reader = BlockReader(db.storage)
                    for k in range(0, top, 3):
                        assert reader.load(k) == fl.load(k), k
            finally:
                fl.close()
        finally:
            fdb.close()
            db.close()


def test_a_scan_while_another_client_commits_and_after_a_pack(
        tmp_path: Path, monkeypatch: Any):
    """While another client adds and changes objects, the batched scan
    yields every object that existed before it started once, in strictly
    increasing oid order, each record a revision that object had; after a
    pack (the server's file replaced) it yields what the packed file
    holds."""
    path = tmp_path / "live.fs"
    with zeo_process(tmp_path / "srv", {"1": str(path)}) as (address, _log):
        db = pclasses.open(uri(address))
        app = pclasses.open(uri(address))
        try:
            with db.transaction() as conn:
                root = conn.root()
                for i in range(400):
                    root[f"o{i}"] = PersistentMapping(n=i)
            with db.transaction() as conn:
                before = {conn.root()[f"o{i}"]._p_oid for i in range(400)} | {p64(0)}
            _small_batches(monkeypatch)
            stop = threading.Event()
            errors: list[BaseException] = []

            def write() -> None:
                try:
                    k = 0
                    while not stop.is_set() and k < 150:
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
                    time.sleep(0.0005)
            finally:
                stop.set()
                writer.join(60)
            assert not errors
            oids = [u64(oid) for oid, _t, _d in got]
            assert oids == sorted(set(oids))
            assert before <= {oid for oid, _t, _d in got}
            for oid, tid, data in got[::20]:
                assert db.storage.loadSerial(oid, tid) == data
            with db.transaction() as conn:
                for i in range(0, 400, 3):
                    del conn.root()[f"o{i}"]
            time.sleep(0.01)
            db.storage.pack(time.time(), referencesf)
            assert list(iter_current(db.storage)) == _file_records(path)
        finally:
            app.close()
            db.close()


def test_blobs_export_like_the_file(tmp_path: Path):
    """Over a pclasses-zeo server with a blob directory, export (batched
    loads; blob files through ZEO's own path) writes the file the server's
    FileStorage and blob directory give, byte for byte."""
    blob_dir = tmp_path / "blobs"
    path = tmp_path / "zeo.fs"
    with zeo_process(tmp_path / "srv", {"1": str(path)}, blob_dir=blob_dir) as (address, _log), \
            modules() as mods:
        target = uri(address, blob_dir=str(tmp_path / "cache"))
        db = pclasses.open(target)
        try:
            populate(db, mods, n=50, blobs=3)
            assert batched_info(db.storage) is not None
        finally:
            db.close()
        out_a, out_b = tmp_path / "zeo.pclasses", tmp_path / "file.pclasses"
        result = run("export", target, "/", "-o", str(out_a), "--no-progress")
        assert result.exit_code == 0, result.output
        result = run("export", str(path), "/", "-o", str(out_b), "--blob-dir", str(blob_dir),
                     "--no-progress")
        assert result.exit_code == 0, result.output
        assert out_a.read_bytes() == out_b.read_bytes()


def test_a_read_only_server_stays_read_only(site: dict[str, Any]):
    """A read-only pclasses-zeo answers the batched requests, refuses a
    read-write client, and refuses to begin a transaction, as runzeo's
    read-only server does; its file does not change."""
    from ZEO.ClientStorage import ClientStorage
    from ZEO.Exceptions import ClientDisconnected

    ro_file = Path(site["ro_log"]).parent / "site.fs"
    size = ro_file.stat().st_size
    address = site["ro"].split("://", 1)[1].split("?", 1)[0].split(":")
    with pytest.raises(ClientDisconnected):
        ClientStorage((address[0], int(address[1])), wait_timeout=3)
    db = pclasses.open(site["ro"], read_only=True)
    try:
        assert batched_info(db.storage) is not None
        assert len(list(iter_current(db.storage))) == len(_file_records(site["path"]))
        with pytest.raises(ReadOnlyError):
            db.storage._server.call("tpc_begin", b"\0" * 8, "", "", {})
    finally:
        db.close()
    assert ro_file.stat().st_size == size


def test_hostile_arguments_are_errors_not_crashes(site: dict[str, Any]):
    """Bad oids, wrong types, negative or absurd counts and too many oids
    are each answered with an error; a huge maximum is capped; the server
    keeps answering the same connection, and everyone else's."""
    from ZEO.Exceptions import ServerException

    from pclasses.storages.zeoserver import MAX_OIDS, MAX_RECORDS

    db = pclasses.open(site["uri"], read_only=True)
    storage = db.storage
    try:
        call = storage._server.call
        bad = [
            ("pclasses_current", (b"short", 10, 10)),
            ("pclasses_current", ("not bytes", 10, 10)),
            ("pclasses_current", (None, -1, 10)),
            ("pclasses_current", (None, 10, 0)),
            ("pclasses_current", (None, "10", 10)),
            ("pclasses_current", (None, True, 10)),
            ("pclasses_current", (None, 10.5, 10)),
            ("pclasses_load_many", (b"\0" * 7,)),
            ("pclasses_load_many", ([b"\0" * 8, b"x"],)),
            ("pclasses_load_many", ({"a": 1},)),
            ("pclasses_load_many", (b"\0" * 8 * (MAX_OIDS + 1),)),
            ("pclasses_load_many", ([b"\0" * 8], b"bad tid")),
        ]
        for method, args in bad:
            with pytest.raises((ServerException, ValueError)):
                call(method, *args)
        packed, last = call("pclasses_current", None, 10**30, 10**30)
        records = list(zeo_paths.unpack_current(packed))
        assert len(records) <= MAX_RECORDS
        assert records == _file_records(site["path"]) and last is None
        packed, last = call("pclasses_current", b"\xff" * 8, 10, 10)
        assert list(zeo_paths.unpack_current(packed)) == [] and last is None
        for truncated in (b"", b"\0\0\0\5", packed + b"x"):
            with pytest.raises(ValueError):
                list(zeo_paths.unpack_current(truncated))
        loaded = zeo_paths.unpack_loaded(call("pclasses_load_many", [b"\xff" * 8, p64(0)]))
        assert [s for s, _t, _d in loaded] == [zeo_paths.MISSING, zeo_paths.LOADED]
        call("ping")
        assert storage._connection_generation == 1
    finally:
        db.close()
    db = pclasses.open(site["uri"], read_only=True)
    try:
        assert len(list(iter_current(db.storage))) == len(_file_records(site["path"]))
    finally:
        db.close()


def test_a_stock_server_is_probed_without_being_disconnected(site: dict[str, Any]):
    """Against a stock runzeo the probe finds no batched requests, the scan
    and the block reader read as before, and the connection stays the one
    opened (the server never saw a request it does not know)."""
    db = pclasses.open(site["stock"], read_only=True)
    try:
        assert batched_info(db.storage) is None
        assert list(iter_current(db.storage)) == _file_records(site["path"])
        reader = BlockReader(db.storage)
        assert reader._block == zeo_paths.BLOCK
        assert reader.load(0) is not None
        assert db.storage._connection_generation == 1
        db.storage._server.call("ping")
    finally:
        db.close()
    assert "Invalid method" not in site["stock_log"].read_text(errors="replace")


def test_a_msgpack_server_reads_the_same(tmp_path: Path, monkeypatch: Any):
    """A pclasses-zeo server running with ``msgpack true`` (answers as
    lists) offers the batched requests and gives the scan, the block reads
    and the export its own file gives."""
    pytest.importorskip("msgpack")
    path = tmp_path / "m.fs"
    with zeo_process(tmp_path / "srv", {"1": str(path)}, msgpack=True) as (address, _log):
        target = uri(address)
        db = pclasses.open(target)
        try:
            with db.transaction() as conn:
                root = conn.root()
                for i in range(150):
                    root[f"o{i}"] = PersistentMapping(n=i, next=root.get(f"o{i - 1}"))
            assert db.storage._server.client.protocol.protocol_version[:1] == b"M"
            assert batched_info(db.storage) is not None
            _small_batches(monkeypatch)
            assert list(iter_current(db.storage)) == _file_records(path)
            reader = BlockReader(db.storage)
            fs = FileStorage(str(path), read_only=True)
            try:
                for k in range(160):
                    try:
                        expected: bytes | None = fs.load(p64(k))[0]
                    except KeyError:
                        expected = None
                    assert reader.load(k) == expected, k
            finally:
                fs.close()
        finally:
            db.close()
        out_a, out_b = tmp_path / "zeo.pclasses", tmp_path / "file.pclasses"
        assert run("export", target, "/", "-o", str(out_a), "--no-progress").exit_code == 0
        assert run("export", str(path), "/", "-o", str(out_b), "--no-progress").exit_code == 0
        assert out_a.read_bytes() == out_b.read_bytes()


def test_the_generic_reader_reads_what_the_file_reader_reads(site: dict[str, Any]):
    """The readers a server uses for storages other than a FileStorage
    itself (their ``record_iternext`` and ``loadBefore``) answer what the
    file reader answers, in answers of every size, and at a snapshot."""
    from pclasses.storages.zeoserver import _FileReader, _Reader

    fs = FileStorage(str(site["path"]), read_only=True)
    try:
        generic, direct = _Reader(fs), _FileReader(fs)
        try:
            for size in (1, 7, 10_000):
                answers = []
                for reader in (generic, direct):
                    got: list[tuple[bytes, bytes, bytes]] = []
                    after = None
                    while True:
                        packed, after = reader.current(after, size, 1 << 20)
                        got.extend(zeo_paths.unpack_current(packed))
                        if after is None:
                            break
                    answers.append(got)
                assert answers[0] == answers[1] == _file_records(site["path"])
            oids = [p64(k) for k in range(700)]
            tids = sorted({t for _o, t, _d in _file_records(site["path"])})
            for before in (None, tids[len(tids) // 2], tids[0]):
                a = zeo_paths.unpack_loaded(generic.load_many(oids, before))
                b = zeo_paths.unpack_loaded(direct.load_many(oids, before))
                assert a == b, before
        finally:
            direct.close()
    finally:
        fs.close()


def test_a_server_over_another_storage_loads_in_batches(tmp_path: Path):
    """A pclasses-zeo server over a storage without ``record_iternext`` (a
    MappingStorage) says it cannot list records, refuses
    ``pclasses_current`` with an error, and still serves export's batched
    loads: the export is the one the same data gives from a file."""
    directory = tmp_path / "srv"
    directory.mkdir()
    conf = directory / "zeo.conf"
    address = ("127.0.0.1", free_port())
    conf.write_text(f"<zeo>\n  address {address[0]}:{address[1]}\n</zeo>\n"
                    "<mappingstorage 1>\n</mappingstorage>\n")
    log = directory / "zeo.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pclasses.storages.zeoserver", "-C",
                                 str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not accepts(address):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        path = tmp_path / "same.fs"
        outs = []
        for target in (uri(address), str(path)):
            db = pclasses.open(target)
            try:
                with db.transaction() as conn:
                    root = conn.root()
                    for i in range(120):
                        root[f"o{i}"] = PersistentMapping(n=i, next=root.get(f"o{i - 1}"))
                if target != str(path):
                    info = batched_info(db.storage)
                    assert info is not None and not info["current"] and info["load_many"]
                    from ZEO.Exceptions import ServerException

                    with pytest.raises((ServerException, ValueError)):
                        db.storage._server.call("pclasses_current", None, 10, 10)
                conn = db.open()
                out = tmp_path / f"{len(outs)}.pclasses"
                pclasses.export_subtree(conn, conn.root(), str(out), name="all")
                conn.close()
                outs.append(out.read_bytes())
            finally:
                db.close()
        assert outs[0] == outs[1]
    finally:
        proc.terminate()
        proc.wait(10)


def test_pclasses_zeo_is_the_console_script_and_takes_runzeo_s_options(tmp_path: Path):
    """``pclasses-zeo`` (pyproject's console script) is this server's
    ``main``, and it takes runzeo's command line: ``-a``/``-f`` without a
    zeo.conf serve a file as ``runzeo -a ADDRESS -f PATH`` does."""
    import tomllib

    from pclasses.storages import zeoserver

    scripts = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())[
        "project"]["scripts"]
    assert scripts["pclasses-zeo"] == "pclasses.storages.zeoserver:main"
    assert zeoserver.main.__module__ == "pclasses.storages.zeoserver"
    path = tmp_path / "cli.fs"
    address = ("127.0.0.1", free_port())
    log = tmp_path / "zeo.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pclasses.storages.zeoserver", "-a",
                                 f"{address[0]}:{address[1]}", "-f", str(path)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not accepts(address):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        db = pclasses.open(f"zeo://{address[0]}:{address[1]}?wait_timeout=20")
        try:
            with db.transaction() as conn:
                conn.root()["x"] = PersistentMapping(n=1)
            assert batched_info(db.storage) is not None
            assert list(iter_current(db.storage)) == _file_records(path)
        finally:
            db.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_repair_through_pclasses_zeo_finishes_while_the_application_writes(tmp_path: Path):
    """Repair's scan reads batched answers from pclasses-zeo while an
    application client keeps committing changes to the records being
    repaired: repair finishes, no record names the old class afterwards,
    and every change the application made is there."""
    path = tmp_path / "live.fs"
    with zeo_process(tmp_path / "srv", {"1": str(path)}) as (address, _log), \
            modules() as mods:
        target = uri(address)
        db = pclasses.open(target)
        try:
            populate(db, mods, n=300, blobs=0)
            assert batched_info(db.storage) is not None
        finally:
            db.close()
        app = pclasses.open(target)
        writer = Writer(app, 300)
        writer.start()
        try:
            report = pclasses.rename_classes(target, mods.rule, batch_size=9)
        finally:
            writer.stop()
        assert writer.error is None and writer.commits > 0
        assert not report.skipped
        db = pclasses.open(target, read_only=True)
        try:
            old = mods.old.encode()
            assert not [oid for oid, data in iter_records(db.storage) if old in data]
            got = counters(db)
            assert all(got[k] == n for k, n in writer.expected.items())
        finally:
            db.close()
            app.close()


def test_a_hostile_record_is_shipped_never_run(tmp_path: Path):
    """A record whose pickles would call ``os.mkdir`` if unpickled goes
    through pclasses-zeo's batched answers as the bytes stored, and
    neither the server nor the commands reading through it (classes,
    broken, xrefs) run it: the directory is never made."""
    from ZODB.Connection import TransactionMetaData

    victim = tmp_path / "made-by-the-record"
    hostile = (b"cos\nmkdir\n(S'" + str(victim).encode() + b"'\ntR."
               + b"cos\nmkdir\n(S'" + str(victim).encode() + b"'\ntR.")
    path = tmp_path / "h.fs"
    with zeo_process(tmp_path / "srv", {"1": str(path)}) as (address, _log):
        target = uri(address)
        db = pclasses.open(target)
        try:
            with db.transaction() as conn:
                conn.root()["x"] = PersistentMapping(n=1)
            storage = db.storage
            oid = storage.new_oid()
            t = TransactionMetaData()
            storage.tpc_begin(t)
            storage.store(oid, b"\0" * 8, hostile, "", t)
            storage.tpc_vote(t)
            storage.tpc_finish(t)
            packed, _last = storage._server.call("pclasses_current", None, 100, 1 << 20)
            assert (oid, hostile) in [(o, d) for o, _t, d in zeo_paths.unpack_current(packed)]
            loaded = zeo_paths.unpack_loaded(storage._server.call("pclasses_load_many", [oid]))
            assert loaded[0][0] == zeo_paths.LOADED and loaded[0][2] == hostile
        finally:
            db.close()
        for command in (["classes", "--no-progress"], ["broken", "--no-progress"], ["xrefs"]):
            result = run(command[0], target, *command[1:], "--json")
            assert result.exit_code in (0, 1, 3), (command, result.output[-300:])
    assert not victim.exists()
