"""Claims about commands over ZEO (a real ``runzeo`` server, ``zeo_server``).

Every form of a ZEO target opens read-only when asked; the batched scans
(many requests in flight) see exactly the records the server's file holds,
gaps in the oids included; commands print what they print on the file
itself, exports are byte-identical; repair finishes while an application
writes through another client.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import transaction
from click.testing import CliRunner
from ZODB.FileStorage import FileStorage
from ZODB.serialize import referencesf

import pclasses
from live_site import Writer, counters, modules, populate
from pclasses.cli import main
from pclasses.errors import StorageOpenError
from pclasses.scan import iter_current, iter_records
from pclasses.storages import zeo as zeo_paths

pytestmark = pytest.mark.zeo


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def site(zeo_server: Any) -> Any:
    """A ZEO storage holding the live-site data, and the path of its file."""
    address, name = zeo_server.fresh()
    uri = zeo_server.uri(address, name)
    with modules() as mods:
        db = pclasses.open(uri)
        try:
            populate(db, mods, n=300, blobs=0)
        finally:
            db.close()
        yield uri, zeo_server.path_of(address, name), mods


def test_zeo_targets_open_read_only(site: Any, zeo_server: Any, tmp_path: Path):
    """A zeo:// URI and a <clientstorage> ZConfig file open read-only."""
    uri, _path, _mods = site
    address = uri.split("://", 1)[1].split("?", 1)[0]
    name = uri.split("storage=", 1)[1].split("&", 1)[0]
    conf = tmp_path / "zeo.conf"
    conf.write_text(f"%import ZEO\n<zodb main>\n  <clientstorage>\n    server {address}\n"
                    f"    storage {name}\n  </clientstorage>\n</zodb>\n")
    for target in (uri, str(conf), f"{conf}#main"):
        db = pclasses.open(target, read_only=True)
        try:
            assert db.storage.isReadOnly(), target
            assert len(db.open().root()["site"]) == 300
        finally:
            db.close()


def test_empty_zeo_storage_is_one_line(zeo_server: Any):
    """Inspecting an empty ZEO storage fails in one line and writes no root."""
    uri = zeo_server.fresh_uri()
    result = run("classes", uri, "--no-progress")
    assert result.exit_code == 1 and "empty" in result.output
    assert result.output.count("\n") == 1
    with pytest.raises(StorageOpenError):
        pclasses.open(uri, read_only=True)


def _file_records(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    fs = FileStorage(str(path), read_only=True)
    try:
        return sorted(iter_current(fs))
    finally:
        fs.close()


def test_batched_scan_sees_what_the_file_holds_gaps_included(site: Any, monkeypatch: Any):
    """With objects removed by a pack (gaps in the oids) and runs small
    enough to cross them, the ZEO scan yields each current record of the
    server's file exactly once, with its tid."""
    uri, path, _mods = site
    db = pclasses.open(uri)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        site_ = conn.root()["site"]
        for k in list(site_.keys())[::3] + list(range(100, 180)):
            site_.pop(k, None)
        tm.commit()
        conn.close()
        time.sleep(0.01)
        db.storage.pack(time.time(), referencesf)
        monkeypatch.setattr(zeo_paths, "FIRST_RUN", 8)
        monkeypatch.setattr(zeo_paths, "MIN_RUN", 4)
        got = list(iter_current(db.storage))
        assert len({oid for oid, _t, _d in got}) == len(got)
        assert sorted(got) == _file_records(path)
        assert sorted(iter_records(db.storage)) == sorted((o, d) for o, _t, d in got)
    finally:
        db.close()


def test_commands_print_what_they_print_on_the_file(site: Any, tmp_path: Path):
    """classes, broken and repair --dry-run over ZEO give the JSON they give
    on the server's own file; exports are byte-identical."""
    uri, path, mods = site
    rule = f"{mods.old}.Thing={mods.new}.Thing"
    for args in (["classes"], ["broken"], ["repair", "--dry-run", "--rename", rule]):
        a = json.loads(run(args[0], uri, *args[1:], "--json", "--no-progress").output)
        b = json.loads(run(args[0], str(path), *args[1:], "--json", "--no-progress").output)
        if args[0] != "repair":
            for each in a["databases"] + b["databases"]:
                each.pop("name", None)
        assert a == b, args
    out_a, out_b = tmp_path / "zeo.pclasses", tmp_path / "file.pclasses"
    assert run("export", uri, "site", "-o", str(out_a), "--no-progress").exit_code == 0
    assert run("export", str(path), "site", "-o", str(out_b), "--no-progress").exit_code == 0
    assert out_a.read_bytes() == out_b.read_bytes()


def test_repair_over_zeo_finishes_while_the_application_writes(site: Any):
    """An application client keeps committing changes to the records being
    repaired; repair retries what conflicts and finishes, no record names
    the old class afterwards, and every change the application made is
    there."""
    uri, _path, mods = site
    app = pclasses.open(uri)
    writer = Writer(app, 300)
    writer.start()
    try:
        report = pclasses.rename_classes(uri, mods.rule, batch_size=9)
    finally:
        writer.stop()
    assert writer.error is None and writer.commits > 0
    assert not report.skipped
    db = pclasses.open(uri, read_only=True)
    try:
        old = mods.old.encode()
        assert not [oid for oid, data in iter_records(db.storage) if old in data]
        got = counters(db)
        assert all(got[k] == n for k, n in writer.expected.items())
    finally:
        db.close()
        app.close()


def test_repair_over_zeo_says_how_to_pack(site: Any):
    """Repair over ZEO (a FileStorage server keeps history) says how much
    the replaced revisions take and how to pack them away on the server."""
    uri, _path, mods = site
    result = run("repair", uri, "--rename", f"{mods.old}.Thing={mods.new}.Thing",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert "until the storage is packed" in result.output and "zeopack -d 0" in result.output


def test_zeo_blobs_export_like_the_file(tmp_path: Path):
    """Over a ZEO server with a blob directory, export (batched loads and
    the client's blob cache) writes the file the server's own FileStorage
    and blob directory give, byte for byte."""
    from test_repair_blobs import zeo_blob_server

    with zeo_blob_server(tmp_path / "zeo") as (address, blob_dir), modules() as mods:
        uri = (f"zeo://{address[0]}:{address[1]}?wait_timeout=20"
               f"&blob_dir={tmp_path / 'cache'}")
        db = pclasses.open(uri)
        try:
            populate(db, mods, n=50, blobs=3)
        finally:
            db.close()
        out_a, out_b = tmp_path / "zeo.pclasses", tmp_path / "file.pclasses"
        result = run("export", uri, "/", "-o", str(out_a), "--no-progress")
        assert result.exit_code == 0, result.output
        result = run("export", str(tmp_path / "zeo" / "zeo.fs"), "/", "-o", str(out_b),
                     "--blob-dir", str(blob_dir), "--no-progress")
        assert result.exit_code == 0, result.output
        assert out_a.read_bytes() == out_b.read_bytes()
