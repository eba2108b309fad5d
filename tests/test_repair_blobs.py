"""Claims about offline repair and blobs: a rewritten record keeps its blob.

Renaming the class of a record that holds a blob rewrites the record; the
blob must come with it, on every storage that keeps blobs: FileStorage with
a blob directory, ZEO (client blob cache and shared blob directory) and
RelStorage over SQLite (history-free and history-preserving, shared and
unshared blob directories).  After the repair the storage is opened afresh
(a new, empty blob cache where the storage has one), so the blob bytes are
read from where the storage really keeps them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.utils import get_pickle_metadata

import pclasses
from netutil import free_port

BLOB_SOURCE = """
    from persistent import Persistent
    from ZODB.blob import Blob


    class File(Blob):
        '''A Blob subclass (Blob.__init__ refuses subclasses, so set up by hand).'''

        def __init__(self, data):
            self.__setstate__()
            with self.open("w") as f:
                f.write(data)


    class Holder(Persistent):
        def __init__(self, blob):
            self.blob = blob
"""

N_BLOBS = 12


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextmanager
def transient_module(directory: Path, name: str, source: str) -> Iterator[Any]:
    """Import ``name`` from ``source``; afterwards it is missing (not importable)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop(name, None)
        shutil.rmtree(directory)
        importlib.invalidate_caches()
        assert importlib.util.find_spec(name) is None


def payload(i: int) -> bytes:
    return f"blob {i} ".encode() * (i * 500 + 1) + bytes(range(256))


def populate(db: Any, mod: Any) -> dict[int, bytes]:
    """Blob-subclass objects (some held by plain persistent objects) and plain
    ZODB Blobs; returns ``{i: oid}`` of the subclass blobs."""
    from ZODB.blob import Blob

    conn = db.open()
    root = conn.root()
    files = {}
    for i in range(N_BLOBS):
        f = mod.File(payload(i))
        files[i] = f
        if i % 3 == 0:
            root[f"h{i}"] = mod.Holder(f)
        else:
            root[f"f{i}"] = f
    plain = Blob(b"plain blob")
    root["plain"] = PersistentMapping(blob=plain)
    transaction.commit()
    oids = {i: f._p_oid for i, f in files.items()}
    oids[-1] = plain._p_oid
    conn.close()
    return oids


def check_blobs(storage: Any, oids: dict[int, bytes], new: str) -> None:
    for i, oid in oids.items():
        data, tid = storage.load(oid)
        with storage.openCommittedBlobFile(oid, tid) as f:
            got = f.read()
        if i == -1:
            assert got == b"plain blob"
            assert get_pickle_metadata(data) == ("ZODB.blob", "Blob")
        else:
            assert got == payload(i), i
            assert get_pickle_metadata(data) == (new, "File")


def rename_and_check(tmp_path: Path, make: Callable[[bool], Any]) -> None:
    """Write blobs through ZODB with a class that is then missing, rename the
    class offline, reopen the storage afresh: every blob loads unchanged."""
    old, new = unique("pcl_blob_old"), unique("pcl_blob_new")
    with transient_module(tmp_path / "mods", old, BLOB_SOURCE) as mod:
        db = ZODB.DB(make(True))
        try:
            oids = populate(db, mod)
        finally:
            transaction.abort()
            db.close()
    storage = make(False)
    try:
        report = pclasses.rename_classes(storage, {f"{old}.*": f"{new}.*"}, batch_size=5)
    finally:
        storage.close()
    assert report.skipped == [] and report.unreadable == []
    assert report.renamed[f"{old}.File"] >= N_BLOBS
    storage = make(False)
    try:
        check_blobs(storage, oids, new)
    finally:
        storage.close()


# ---------------------------------------------------------------------------
# FileStorage


def test_filestorage_blobs_survive_a_rename(tmp_path: Path):
    """A FileStorage with a blob directory keeps every blob of renamed records."""
    def make(_first: bool) -> Any:
        return FileStorage(str(tmp_path / "Data.fs"), blob_dir=str(tmp_path / "blobs"))

    rename_and_check(tmp_path, make)


def test_filestorage_blobs_survive_a_rename_through_a_zconfig(tmp_path: Path):
    """Opened by ``pclasses.open``'s rules (a ZConfig file with blob-dir), the
    rewritten records keep their blobs too, and a dry run changes nothing."""
    conf = tmp_path / "db.conf"
    conf.write_text(f"<zodb>\n  <filestorage>\n    path {tmp_path / 'Data.fs'}\n"
                    f"    blob-dir {tmp_path / 'blobs'}\n  </filestorage>\n</zodb>\n")
    old, new = unique("pcl_blob_old"), unique("pcl_blob_new")
    with transient_module(tmp_path / "mods", old, BLOB_SOURCE) as mod:
        db = ZODB.DB(FileStorage(str(tmp_path / "Data.fs"), blob_dir=str(tmp_path / "blobs")))
        try:
            oids = populate(db, mod)
        finally:
            transaction.abort()
            db.close()
    rules = {f"{old}.File": f"{new}.File"}
    size = os.path.getsize(tmp_path / "Data.fs")
    assert pclasses.rename_classes(str(conf), rules, dry_run=True).changed > 0
    assert os.path.getsize(tmp_path / "Data.fs") == size
    pclasses.rename_classes(str(conf), rules)
    storage = FileStorage(str(tmp_path / "Data.fs"), blob_dir=str(tmp_path / "blobs"),
                          read_only=True)
    try:
        check_blobs(storage, oids, new)
    finally:
        storage.close()


def test_blob_copies_do_not_linger(tmp_path: Path):
    """The copies repair makes of blob files are handed to the storage, none
    is left behind in the storage's temporary directory."""
    def make(_first: bool) -> Any:
        return FileStorage(str(tmp_path / "Data.fs"), blob_dir=str(tmp_path / "blobs"))

    rename_and_check(tmp_path, make)
    leftovers = [p for p in (tmp_path / "blobs" / "tmp").iterdir()
                 if p.name.startswith("pclasses-repair-")]
    assert leftovers == []


# ---------------------------------------------------------------------------
# ZEO



@contextmanager
def zeo_blob_server(directory: Path) -> Iterator[tuple[tuple[str, int], Path]]:
    """A real ``runzeo`` process serving a FileStorage with a blob directory."""
    directory.mkdir(parents=True, exist_ok=True)
    blob_dir = directory / "blobs"
    log = directory / "zeo.log"
    for _attempt in range(3):
        address = ("127.0.0.1", free_port())
        conf = directory / "zeo.conf"
        conf.write_text(f"<zeo>\n  address {address[0]}:{address[1]}\n</zeo>\n"
                        f"<filestorage 1>\n  path {directory / 'zeo.fs'}\n"
                        f"  blob-dir {blob_dir}\n</filestorage>\n")
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "ZEO.runzeo", "-C", str(conf)],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(address, timeout=0.2):
                    up = True
                    break
            except OSError:
                time.sleep(0.05)
        if up:
            try:
                yield address, blob_dir
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
    raise RuntimeError("the ZEO server did not start:\n" + log.read_text(errors="replace"))


@pytest.mark.zeo
def test_zeo_blobs_survive_a_rename(tmp_path: Path):
    """Through ZEO with a client blob cache, renamed blob records keep their
    blobs (read back through a new client with an empty cache)."""
    caches = iter(range(100))
    with zeo_blob_server(tmp_path / "zeo") as (address, _blob_dir):
        from ZEO.ClientStorage import ClientStorage

        def make(_first: bool) -> Any:
            return ClientStorage(address, wait_timeout=20,
                                 blob_dir=str(tmp_path / f"cache{next(caches)}"))

        rename_and_check(tmp_path, make)


@pytest.mark.zeo
def test_zeo_shared_blob_dir_blobs_survive_a_rename(tmp_path: Path):
    """Through ZEO with the server's blob directory shared, too."""
    with zeo_blob_server(tmp_path / "zeo") as (address, blob_dir):
        from ZEO.ClientStorage import ClientStorage

        def make(_first: bool) -> Any:
            return ClientStorage(address, wait_timeout=20, blob_dir=str(blob_dir),
                                 shared_blob_dir=True)

        rename_and_check(tmp_path, make)


@pytest.mark.zeo
def test_zeo_client_without_a_blob_cache_is_refused(tmp_path: Path):
    """A ZEO client without a blob cache cannot carry blobs over: the repair
    is refused before anything is written."""
    old, new = unique("pcl_blob_old"), unique("pcl_blob_new")
    with zeo_blob_server(tmp_path / "zeo") as (address, blob_dir):
        from ZEO.ClientStorage import ClientStorage

        with transient_module(tmp_path / "mods", old, BLOB_SOURCE) as mod:
            db = ZODB.DB(ClientStorage(address, wait_timeout=20, blob_dir=str(tmp_path / "c")))
            try:
                oids = populate(db, mod)
            finally:
                transaction.abort()
                db.close()
        client = ClientStorage(address, wait_timeout=20)
        try:
            last = client.lastTransaction()
            with pytest.raises(pclasses.PClassesError, match="blob"):
                pclasses.rename_classes(client, {f"{old}.File": f"{new}.File"})
            assert client.lastTransaction() == last
        finally:
            client.close()
        client = ClientStorage(address, wait_timeout=20, blob_dir=str(tmp_path / "c2"))
        try:
            data, _tid = client.load(oids[0])
            assert get_pickle_metadata(data) == (old, "File")
        finally:
            client.close()


# ---------------------------------------------------------------------------
# RelStorage over SQLite

relstorage = pytest.importorskip("relstorage")


def relstorage_maker(tmp_path: Path, keep_history: bool, shared: bool) -> Callable[[bool], Any]:
    """RelStorage on SQLite; with an unshared blob directory each opening
    gets a new, empty blob cache (so blobs come from the database rows)."""
    from relstorage.adapters.sqlite.adapter import Sqlite3Adapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    caches = iter(range(100))

    def make(_first: bool) -> Any:
        blob_dir = tmp_path / ("blobs" if shared else f"cache{next(caches)}")
        options = Options(keep_history=keep_history, shared_blob_dir=shared,
                          blob_dir=str(blob_dir))
        adapter = Sqlite3Adapter(str(tmp_path / "sqlite"), pragmas={}, options=options)
        return RelStorage(adapter, options=options)

    return make


@pytest.mark.parametrize("keep_history", [False, True], ids=["history_free", "history"])
@pytest.mark.parametrize("shared", [False, True], ids=["unshared", "shared"])
def test_relstorage_blobs_survive_a_rename(tmp_path: Path, keep_history: bool, shared: bool):
    """RelStorage (SQLite adapter), history-free and history-preserving, with a
    shared or an unshared blob directory: every blob loads unchanged after the
    rename (for unshared directories, from the database rows)."""
    rename_and_check(tmp_path, relstorage_maker(tmp_path, keep_history, shared))


def test_relstorage_history_free_unshared_keeps_blob_rows(tmp_path: Path):
    """On a history-free RelStorage with an unshared blob directory the blob
    rows are still there after the rename (one per blob)."""
    import sqlite3

    make = relstorage_maker(tmp_path, keep_history=False, shared=False)
    rename_and_check(tmp_path, make)
    db_files = [p for p in (tmp_path / "sqlite").iterdir() if p.suffix == ".sqlite3"]
    counts = []
    for p in db_files:
        with sqlite3.connect(str(p)) as con:
            tables = {r[0] for r in con.execute("select name from sqlite_master")}
            if "blob_chunk" in tables:
                counts.append(con.execute(
                    "select count(distinct zoid) from blob_chunk").fetchone()[0])
    assert counts == [N_BLOBS + 1]
