"""Claims about import beside a live site (issue 16), on a real FileStorage
and a real RelStorage on PostgreSQL.

A large import stores its records in batches of their own transactions and
links the imported object into its container last, re-reading the
container when the application changed it; it finishes while the
application writes, and the application loses nothing.  A small import
stays one transaction.  New objects take no slot of PostgreSQL's lock
table under RelStorage, so an import fits a nearly full one.  A link that
cannot be made is a one-line error, and the site is as it was for every
reader.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import transaction
from click.testing import CliRunner
from persistent.mapping import PersistentMapping
from ZODB.blob import Blob
from ZODB.POSException import ConflictError

import pclasses
from live_site import Writer, counters, modules, populate
from pclasses.cli import main
from pclasses.errors import TransferError
from pclasses.transfer.batched import import_in_batches
from pgserver import fill_lock_table

N = 300


def _source(path: Path) -> Path:
    """An export file of ``root['tree']``: N small mappings and a blob."""
    db = pclasses.open(str(path / "src.fs"), blob_dir=str(path / "src.blobs"))
    try:
        with db.transaction() as conn:
            tree = conn.root()["tree"] = PersistentMapping()
            for i in range(N):
                tree[f"i{i}"] = PersistentMapping(n=i, label=f"item {i}")
            b = Blob()
            with b.open("w") as f:
                f.write(b"blob bytes " * 100)
            tree["file"] = b
        out = path / "tree.pclasses"
        with db.transaction() as conn:
            pclasses.export_subtree(conn, conn.root()["tree"], str(out), name="tree")
        return out
    finally:
        db.close()


def _check_tree(db: Any, where: str = "inbox") -> None:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        tree = conn.root()[where]["tree"]
        assert sorted(tree[f"i{i}"]["n"] for i in range(N)) == list(range(N))
        with tree["file"].open() as f:
            assert f.read() == b"blob bytes " * 100
    finally:
        tm.abort()
        conn.close()


@dataclass
class InboxWriter:
    """An application thread adding keys to ``root['inbox']`` (the import's
    container), one commit a request, retrying on ConflictError as Zope
    does."""

    db: Any
    added: list[str] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def _run(self) -> None:
        tm = transaction.TransactionManager()
        conn = self.db.open(tm)
        try:
            i = 0
            while not self._stop.is_set():
                key = f"app{i}"
                for _attempt in range(50):
                    try:
                        tm.begin()
                        conn.root()["inbox"][key] = PersistentMapping(i=i)
                        tm.commit()
                        self.added.append(key)
                        break
                    except ConflictError:
                        tm.abort()
                i += 1
                self._stop.wait(0.05)  # (requests come and go)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            tm.abort()
            conn.close()


def _with_inbox(db: Any) -> None:
    with db.transaction() as conn:
        conn.root()["inbox"] = PersistentMapping()


def test_large_import_finishes_while_the_site_writes_its_container(tmp_path: Path):
    """An import larger than its batch size, into a container the
    application keeps changing, is stored in several transactions and
    finishes; every key the application added is there, and so is the
    whole imported tree with its blob."""
    src = _source(tmp_path)
    db = pclasses.open(str(tmp_path / "dst.fs"), blob_dir=str(tmp_path / "dst.blobs"))
    try:
        _with_inbox(db)
        app = InboxWriter(db)
        app.start()
        try:
            report = import_in_batches(db, src, into="inbox", batch_size=40)
        finally:
            app.stop()
        assert app.error is None
        assert report.records == N + 2 and report.transactions is not None
        assert report.transactions >= (N + 2) // 40 + 1
        _check_tree(db)
        with db.transaction() as conn:
            inbox = conn.root()["inbox"]
            assert all(key in inbox for key in app.added)
    finally:
        db.close()


def test_small_import_stays_one_transaction(tmp_path: Path):
    """An import no larger than the batch size is one transaction, as
    before: the imported object and its records appear together."""
    src = _source(tmp_path)
    db = pclasses.open(str(tmp_path / "dst.fs"), blob_dir=str(tmp_path / "dst.blobs"))
    try:
        _with_inbox(db)
        before = len(db.storage.undoLog(0, 1000)) if db.storage.supportsUndo() else None
        report = import_in_batches(db, src, into="inbox", batch_size=10_000)
        assert report.transactions == 1
        if before is not None:
            assert len(db.storage.undoLog(0, 1000)) == before + 1
        _check_tree(db)
    finally:
        db.close()


def test_a_link_that_cannot_be_made_leaves_the_site_as_it_was(tmp_path: Path):
    """When the application takes the import's name in the container while
    the batches are stored, the import stops with a one-line error saying
    the stored records are unreachable; the application's object is
    untouched and no object refers to the imported records."""
    src = _source(tmp_path)
    db = pclasses.open(str(tmp_path / "dst.fs"), blob_dir=str(tmp_path / "dst.blobs"))
    try:
        _with_inbox(db)
        taken = []

        def progress(done: int, total: int | None) -> None:
            if total is not None and not taken:  # a batch is stored: the site writes
                with db.transaction() as conn:
                    conn.root()["inbox"]["tree"] = PersistentMapping(mine=True)
                taken.append(True)

        with pytest.raises(TransferError) as info:
            import_in_batches(db, src, into="inbox", batch_size=40, progress=progress)
        message = str(info.value)
        assert "\n" not in message and "already exists" in message
        with db.transaction() as conn:
            assert dict(conn.root()["inbox"]["tree"]) == {"mine": True}
            assert list(conn.root()["inbox"]) == ["tree"]
    finally:
        db.close()


def test_cli_import_in_batches_reports_its_transactions(tmp_path: Path):
    """``pclasses import --batch-size`` stores a large file in several
    transactions and says so in its JSON; the tree is whole."""
    src = _source(tmp_path)
    dst = tmp_path / "dst.fs"
    db = pclasses.open(str(dst), blob_dir=str(tmp_path / "dst.blobs"))
    _with_inbox(db)
    db.close()
    result = CliRunner().invoke(main, ["import", str(dst), str(src), "--into", "inbox",
                                       "--batch-size", "50", "--json", "--no-progress",
                                       "--blob-dir", str(tmp_path / "dst.blobs")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["records"] == N + 2 and doc["transactions"] > 1
    db = pclasses.open(str(dst), blob_dir=str(tmp_path / "dst.blobs"))
    try:
        _check_tree(db)
    finally:
        db.close()


def test_zeo_import_finishes_while_the_site_writes(tmp_path: Path):
    """Over ZEO (a real server with a blob directory), a batched import into
    a container another client keeps changing finishes; that client's keys
    and the whole tree with its blob are there."""
    from test_repair_blobs import zeo_blob_server

    src = _source(tmp_path)
    with zeo_blob_server(tmp_path / "zeo") as (address, _blob_dir):
        uri = (f"zeo://{address[0]}:{address[1]}?wait_timeout=20"
               f"&blob_dir={tmp_path / 'cache'}")
        db = pclasses.open(uri)
        _with_inbox(db)
        app_db = pclasses.open(uri.replace("cache", "app-cache"))  # (another client)
        try:
            app = InboxWriter(app_db)
            app.start()
            try:
                report = import_in_batches(db, src, into="inbox", batch_size=40)
            finally:
                app.stop()
            assert app.error is None
            assert report.transactions is not None and report.transactions > 1
            _check_tree(db)
            with db.transaction() as conn:
                inbox = conn.root()["inbox"]
                assert all(key in inbox for key in app.added)
        finally:
            db.close()
            app_db.close()


# ---------------------------------------------------------------------------
# RelStorage on PostgreSQL
# ---------------------------------------------------------------------------


def _relstorage_uri(pg_server: Any, blobs: Path, keep_history: bool) -> str:
    name = pg_server.createdb()
    return (f"postgres://postgres@{pg_server.host}:{pg_server.port}/{name}"
            f"?keep_history={str(keep_history).lower()}&blob_dir={blobs}"
            "&shared_blob_dir=true")


@pytest.mark.postgres
@pytest.mark.parametrize("keep_history", [False, True], ids=["history-free",
                                                             "history-preserving"])
def test_relstorage_import_finishes_while_the_site_writes(pg_server: Any, tmp_path: Path,
                                                          keep_history: bool):
    """On RelStorage, a batched import into a container the application
    keeps changing, while the application also changes other objects,
    finishes; the application's changes are all there, and so is the tree."""
    pytest.importorskip("relstorage")
    src = _source(tmp_path)
    uri = _relstorage_uri(pg_server, tmp_path / "blobs", keep_history)
    with modules() as mods:
        db = pclasses.open(uri)
        try:
            populate(db, mods, n=100)
            _with_inbox(db)
            app = InboxWriter(db)
            items = Writer(db, 100)
            app.start()
            items.start()
            try:
                report = import_in_batches(db, src, into="inbox", batch_size=40)
            finally:
                app.stop()
                items.stop()
            assert app.error is None and items.error is None
            assert report.transactions is not None and report.transactions > 1
            _check_tree(db)
            with db.transaction() as conn:
                inbox = conn.root()["inbox"]
                assert all(key in inbox for key in app.added)
            got = counters(db)
            assert all(got[k] == n for k, n in items.expected.items())
        finally:
            db.close()


@pytest.mark.postgres
def test_relstorage_import_fits_a_nearly_full_lock_table(pg_server: Any, tmp_path: Path):
    """With PostgreSQL's lock table nearly full (about 100 slots left, where
    a repair batch of 200 changed objects overflows it), an import of 300
    records still goes through in one transaction and in batches:
    RelStorage locks the objects a transaction changes, not the new ones,
    and the link changes one container."""
    pytest.importorskip("relstorage")
    pytest.importorskip("psycopg2")

    src = _source(tmp_path)
    uri = _relstorage_uri(pg_server, tmp_path / "blobs", False)
    db = pclasses.open(uri)
    try:
        with db.transaction() as conn:
            conn.root()["inbox"] = PersistentMapping()
            conn.root()["other"] = PersistentMapping()
    finally:
        db.close()
    hog = fill_lock_table(pg_server.dsn("postgres"), leave=100)
    try:
        db = pclasses.open(uri)
        try:
            whole = import_in_batches(db, src, into="inbox", batch_size=10_000)
            batched = import_in_batches(db, src, into="other", batch_size=40)
        finally:
            db.close()
    finally:
        hog.close()
    assert whole.transactions == 1 and batched.transactions is not None
    assert batched.transactions > 2
    db = pclasses.open(uri)
    try:
        _check_tree(db, "inbox")
        _check_tree(db, "other")
    finally:
        db.close()
