"""``pclasses.open``: every target form ZODB users already write, and its errors.

Every storage here is real: FileStorage files in ``tmp_path``, ZConfig files
parsed by ZConfig, zodburi URIs resolved through the installed resolvers,
and a real ZEO server on loopback (the ``zeo_server`` fixture).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import transaction
import ZODB
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import ReadOnlyError

import pclasses
from pclasses.database import open_storage, target_kind


def _factory(db):
    return db.classFactory


def _single_line(exc: BaseException) -> str:
    text = str(exc)
    assert text.strip(), "empty error message"
    assert "\n" not in text, f"message is not one line: {text!r}"
    assert "Traceback" not in text
    return text


def _expect_open_error(target, **kw) -> pclasses.StorageOpenError:
    with pytest.raises(pclasses.StorageOpenError) as info:
        db = pclasses.open(target, **kw)
        db.close()  # pragma: no cover - only reached when the test fails
    exc = info.value
    assert isinstance(exc, pclasses.PClassesError)
    assert isinstance(exc, OSError)
    assert exc.target == os.fspath(target)
    text = _single_line(exc)
    assert text.startswith(f"cannot open {os.fspath(target)}: ")
    return exc


def _write_conf(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _filestorage_conf(tmp_path: Path, fs: Path, name: str = "single.conf") -> Path:
    return _write_conf(tmp_path / name, f"<filestorage>\n  path {fs}\n</filestorage>\n")


def _multi_conf(tmp_path: Path) -> Path:
    return _write_conf(tmp_path / "multi.conf", f"""\
<zodb first>
  <filestorage>
    path {tmp_path / 'first.fs'}
  </filestorage>
</zodb>
<zodb second>
  <filestorage>
    path {tmp_path / 'second.fs'}
  </filestorage>
</zodb>
""")


# ---------------------------------------------------------------------------
# target kinds


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("Data.fs", "filestorage"),
        ("/var/db/Data.fs", "filestorage"),
        ("relative/dir/data", "filestorage"),
        ("zodb.conf", "zconfig"),
        ("/etc/zope/zodb.cfg", "zconfig"),
        ("file:///tmp/Data.fs", "uri"),
        ("memory://", "uri"),
        ("zeo://127.0.0.1:9100", "uri"),
        ("zconfig:///etc/zodb.conf#main", "uri"),
        ("zodb.conf#main", "zconfig"),
        ("/etc/zope/zodb.cfg#catalog", "zconfig"),
        ("postgres://user@127.0.0.1/zodb?keep_history=false", "uri"),
        ("no-such-scheme+x://whatever", "uri"),
    ],
)
def test_target_kind(target, kind):
    assert target_kind(target) == kind
    if kind != "uri":
        assert target_kind(Path(target)) == kind


def test_filestorage_named_with_a_hash_is_still_a_path():
    """Only a ZConfig file name before the '#' makes a section target."""
    assert target_kind("Data#1.fs") == "filestorage"
    assert target_kind("dir/Data.fs#main") == "filestorage"


# ---------------------------------------------------------------------------
# FileStorage paths


def test_open_filestorage_path_creates_and_installs_registry(tmp_path):
    path = tmp_path / "Data.fs"
    registry = pclasses.ClassRegistry()
    db = pclasses.open(str(path), registry)
    try:
        assert isinstance(db, ZODB.DB)
        assert isinstance(db.storage, FileStorage)
        assert db.classFactory is registry.class_factory
        assert db in registry.databases
        with db.transaction() as conn:
            assert isinstance(conn.root(), PersistentMapping)
    finally:
        db.close()
    assert path.exists()


def test_open_accepts_pathlike_and_makes_a_registry_by_default(tmp_path):
    db = pclasses.open(tmp_path / "Data.fs")
    try:
        factory = _factory(db)
        assert isinstance(factory.registry, pclasses.ClassRegistry)
        assert factory.registry.class_factory is factory
    finally:
        db.close()


def test_db_kwargs_reach_zodb_db(tmp_path):
    db = pclasses.open(tmp_path / "Data.fs", cache_size=123, pool_size=3)
    try:
        assert db.getCacheSize() == 123
        assert db.getPoolSize() == 3
    finally:
        db.close()


def test_read_only_filestorage_refuses_writes(tmp_path):
    path = tmp_path / "Data.fs"
    db = pclasses.open(path)
    with db.transaction() as conn:
        conn.root()["x"] = 1
    db.close()
    db = pclasses.open(path, read_only=True)
    try:
        assert db.storage.isReadOnly()
        conn = db.open()
        assert conn.root()["x"] == 1
        conn.root()["x"] = 2
        with pytest.raises(ReadOnlyError):
            transaction.commit()
        transaction.abort()
        conn.close()
    finally:
        db.close()


def test_read_only_filestorage_can_be_read_while_locked(tmp_path):
    """The documented promise: a read-only FileStorage takes no lock."""
    path = tmp_path / "Data.fs"
    app = ZODB.DB(FileStorage(str(path)))
    try:
        with app.transaction() as conn:
            conn.root()["live"] = "yes"
        db = pclasses.open(path, read_only=True)
        try:
            with db.transaction() as conn:
                assert conn.root()["live"] == "yes"
        finally:
            db.close()
    finally:
        app.close()


# ---------------------------------------------------------------------------
# ZConfig files


def test_open_zconfig_single_filestorage_section(tmp_path):
    fs = tmp_path / "conf.fs"
    conf = _filestorage_conf(tmp_path, fs)
    registry = pclasses.ClassRegistry()
    db = pclasses.open(conf, registry)
    try:
        assert isinstance(db.storage, FileStorage)
        assert Path(db.storage.getName()) == fs
        assert db.classFactory is registry.class_factory
    finally:
        db.close()
    assert fs.exists()


def test_open_zconfig_zodb_section(tmp_path):
    conf = _write_conf(tmp_path / "one.conf", f"""\
<zodb main>
  cache-size 77
  <filestorage>
    path {tmp_path / 'one.fs'}
  </filestorage>
</zodb>
""")
    registry = pclasses.ClassRegistry()
    db = pclasses.open(conf, registry)
    try:
        assert db.database_name == "main"
        assert db.getCacheSize() == 77
        assert db.classFactory is registry.class_factory
    finally:
        db.close()


def test_open_zconfig_multi_database(tmp_path):
    conf = _multi_conf(tmp_path)
    registry = pclasses.ClassRegistry()
    db = pclasses.open(conf, registry)
    try:
        assert set(db.databases) == {"first", "second"}
        assert db.database_name == "first"  # the first section is returned
        assert db.databases["first"] is db
        for each in db.databases.values():
            assert each.classFactory is registry.class_factory
        assert set(registry.databases) >= set(db.databases.values())
        # the two databases are really distinct and both writable
        conn = db.open()
        conn.root()["here"] = "first"
        other = conn.get_connection("second")
        other.root()["here"] = "second"
        transaction.commit()
        conn.close()
    finally:
        transaction.abort()
        for each in set(db.databases.values()):
            each.close()
    assert (tmp_path / "first.fs").exists() and (tmp_path / "second.fs").exists()
    for name in ("first", "second"):
        check = ZODB.DB(FileStorage(str(tmp_path / f"{name}.fs"), read_only=True))
        with check.transaction() as c:
            assert c.root()["here"] == name
        check.close()


def test_zconfig_section_opens_only_that_database_read_only(tmp_path):
    """``file.conf#NAME`` and ``zconfig://file.conf#NAME`` open only the
    <zodb NAME> database of a multi-database file; read_only=True opens it
    read-only."""
    conf = _multi_conf(tmp_path)
    db = pclasses.open(conf)  # create both, with a root each
    for each in set(db.databases.values()):
        each.close()
    for target in (f"{conf}#second", f"zconfig://{conf}#second"):
        db = pclasses.open(target, read_only=True)
        try:
            assert list(db.databases) == ["second"] and db.database_name == "second"
            assert db.storage.isReadOnly()
            assert db.storage.getName().endswith("second.fs")
        finally:
            db.close()
    with pytest.raises(pclasses.StorageOpenError, match="no <zodb third> section"):
        pclasses.open(f"{conf}#third", read_only=True)


def test_zconfig_storage_section_by_name(tmp_path):
    """A file of bare storage sections: ``file.conf#NAME`` opens the one
    named NAME, read-only when asked."""
    for name in ("a", "b"):
        db = pclasses.open(str(tmp_path / f"{name}.fs"))
        db.close()
    conf = tmp_path / "storages.conf"
    conf.write_text("".join(f"<filestorage {n}>\n  path {tmp_path / (n + '.fs')}\n"
                            "</filestorage>\n" for n in ("a", "b")))
    db = pclasses.open(f"{conf}#b", read_only=True)
    try:
        assert db.storage.isReadOnly() and db.storage.getName().endswith("b.fs")
    finally:
        db.close()
    with pytest.raises(pclasses.StorageOpenError, match="no storage section named 'c'"):
        pclasses.open(f"{conf}#c", read_only=True)


# ---------------------------------------------------------------------------
# URIs


def test_open_file_uri(tmp_path):
    path = tmp_path / "uri.fs"
    registry = pclasses.ClassRegistry()
    db = pclasses.open(path.as_uri(), registry)
    try:
        assert isinstance(db.storage, FileStorage)
        assert Path(db.storage.getName()) == path
        assert db.classFactory is registry.class_factory
    finally:
        db.close()


def test_open_memory_uri():
    registry = pclasses.ClassRegistry()
    db = pclasses.open("memory://", registry)
    try:
        assert isinstance(db.storage, MappingStorage)
        assert db.classFactory is registry.class_factory
        with db.transaction() as conn:
            conn.root()["m"] = PersistentList([1, 2])
        with db.transaction() as conn:
            assert list(conn.root()["m"]) == [1, 2]
    finally:
        db.close()


def test_uri_database_keywords_and_db_kwargs():
    db = pclasses.open("memory://?database_name=mem&connection_cache_size=321", pool_size=2)
    try:
        assert db.database_name == "mem"
        assert db.getCacheSize() == 321
        assert db.getPoolSize() == 2
    finally:
        db.close()


@pytest.mark.zeo
def test_open_zeo_uri(zeo_server, zeo_uri):
    from ZEO.ClientStorage import ClientStorage

    registry = pclasses.ClassRegistry()
    assert zeo_uri.startswith("zeo://127.0.0.1:")
    db = pclasses.open(zeo_uri, registry)
    try:
        assert isinstance(db.storage, ClientStorage)
        assert db.storage.is_connected()
        assert db.classFactory is registry.class_factory
        with db.transaction() as conn:
            conn.root()["over"] = "the wire"
    finally:
        db.close()
    # a second client sees it: the data lives in the server, not in the client
    db = pclasses.open(zeo_uri)
    try:
        with db.transaction() as conn:
            assert conn.root()["over"] == "the wire"
    finally:
        db.close()


@pytest.mark.zeo
def test_open_zeo_uri_default_storage(zeo_server):
    host, port = zeo_server.address
    db = pclasses.open(f"zeo://{host}:{port}?wait_timeout=20")
    try:
        assert db.storage.getName()  # connected to storage '1'
        with db.transaction() as conn:
            assert isinstance(conn.root(), PersistentMapping)
    finally:
        db.close()


# ---------------------------------------------------------------------------
# data survives a reopen, whatever the target form


def _target(kind: str, tmp_path: Path, request) -> str:
    fs = tmp_path / "round.fs"
    if kind == "path":
        return str(fs)
    if kind == "zconfig":
        return str(_filestorage_conf(tmp_path, fs))
    if kind == "zconfig-zodb":
        return str(_write_conf(tmp_path / "zodb.conf",
                               f"<zodb>\n <filestorage>\n  path {fs}\n </filestorage>\n</zodb>\n"))
    if kind == "file-uri":
        return fs.as_uri()
    if kind == "zeo":
        return request.getfixturevalue("zeo_uri")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["path", "zconfig", "zconfig-zodb", "file-uri", pytest.param("zeo", marks=pytest.mark.zeo)],
)
def test_written_data_is_read_back_after_reopening(kind, tmp_path, request):
    target = _target(kind, tmp_path, request)
    db = pclasses.open(target)
    try:
        with db.transaction() as conn:
            root = conn.root()
            root["numbers"] = PersistentList(range(10))
            root["nested"] = PersistentMapping({"a": PersistentMapping({"b": "deep"})})
    finally:
        db.close()
    registry = pclasses.ClassRegistry()
    db = pclasses.open(target, registry)
    try:
        with db.transaction() as conn:
            root = conn.root()
            assert list(root["numbers"]) == list(range(10))
            assert root["nested"]["a"]["b"] == "deep"
    finally:
        db.close()
    # every class was resolved through the registry, none of them broken
    assert registry.broken() == []


# ---------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("kw", [{"create": False}, {"read_only": True},
                                {"create": False, "read_only": True}])
def test_missing_filestorage_is_not_created(tmp_path, kw):
    path = tmp_path / "missing.fs"
    exc = _expect_open_error(str(path), **kw)
    assert "no such file" in exc.reason
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_garbage_file_is_not_a_filestorage(tmp_path):
    path = tmp_path / "garbage.fs"
    data = b"this is not a FileStorage, just some bytes\x00\x01\x02" * 20
    path.write_bytes(data)
    for kw in ({}, {"read_only": True}):
        exc = _expect_open_error(str(path), **kw)
        assert "not a FileStorage" in exc.reason
    assert path.read_bytes() == data  # untouched


def test_tiny_garbage_file(tmp_path):
    path = tmp_path / "tiny.fs"
    path.write_bytes(b"ab")
    _expect_open_error(str(path), read_only=True)
    assert path.read_bytes() == b"ab"


def test_directory_is_not_a_filestorage(tmp_path):
    exc = _expect_open_error(str(tmp_path))
    assert "directory" in exc.reason


def test_locked_filestorage(tmp_path):
    path = tmp_path / "locked.fs"
    app = ZODB.DB(FileStorage(str(path)))
    try:
        exc = _expect_open_error(str(path))
        assert "locked" in exc.reason
        exc = _expect_open_error(str(path), create=False)
        assert "locked" in exc.reason
    finally:
        app.close()
    # once the application is gone it opens fine
    pclasses.open(path).close()


def test_unknown_uri_scheme():
    exc = _expect_open_error("nosuchscheme://somewhere/db")
    assert "unknown URI scheme" in exc.reason
    assert "nosuchscheme" in exc.reason


def test_zconfig_syntax_error(tmp_path):
    conf = _write_conf(tmp_path / "broken.conf", "<filestorage\n  path x.fs\n")
    exc = _expect_open_error(str(conf))
    assert "ConfigurationSyntaxError" in exc.reason or "syntax" in exc.reason.lower()
    assert not (tmp_path / "x.fs").exists()


def test_zconfig_unclosed_section(tmp_path):
    conf = _write_conf(tmp_path / "unclosed.conf",
                       f"<zodb>\n <filestorage>\n  path {tmp_path / 'u.fs'}\n </filestorage>\n")
    _expect_open_error(str(conf))
    assert not (tmp_path / "u.fs").exists()


def test_zconfig_unknown_key(tmp_path):
    conf = _write_conf(tmp_path / "key.conf",
                       f"<filestorage>\n  path {tmp_path / 'k.fs'}\n  no-such-key 1\n"
                       "</filestorage>\n")
    _expect_open_error(str(conf))


def test_zconfig_file_missing(tmp_path):
    exc = _expect_open_error(str(tmp_path / "nowhere.conf"))
    assert "no such file" in exc.reason


def test_zconfig_pointing_at_garbage(tmp_path):
    fs = tmp_path / "garbage.fs"
    fs.write_bytes(b"\xde\xad\xbe\xef" * 64)
    conf = _filestorage_conf(tmp_path, fs)
    _expect_open_error(str(conf))
    assert fs.read_bytes() == b"\xde\xad\xbe\xef" * 64


def test_locked_filestorage_named_by_zconfig(tmp_path):
    fs = tmp_path / "locked.fs"
    conf = _filestorage_conf(tmp_path, fs)
    app = ZODB.DB(FileStorage(str(fs)))
    try:
        exc = _expect_open_error(str(conf))
        assert "locked" in exc.reason
    finally:
        app.close()


def test_errors_are_storage_open_errors_not_raw_exceptions(tmp_path):
    """Nothing but StorageOpenError escapes for the bad targets above."""
    bad = tmp_path / "bad.fs"
    bad.write_bytes(b"\x00" * 100)
    for target in (str(bad), "bogus://x", str(tmp_path / "none.conf"), str(tmp_path)):
        with pytest.raises(pclasses.StorageOpenError):
            pclasses.open(target, read_only=True, create=False)


def test_open_storage_for_scans(tmp_path):
    path = tmp_path / "scan.fs"
    pclasses.open(path).close()
    storage = open_storage(path)
    try:
        assert isinstance(storage, FileStorage)
        assert storage.isReadOnly()
        assert len(storage) == 1
    finally:
        storage.close()
    with pytest.raises(pclasses.StorageOpenError):
        open_storage(tmp_path / "absent.fs")
    assert not (tmp_path / "absent.fs").exists()


# ---------------------------------------------------------------------------
# src bugs (see the reasons)

@pytest.mark.parametrize("kw", [{"create": False}, {"read_only": True}])
def test_file_uri_missing_is_not_created(tmp_path, kw):
    path = tmp_path / "missing.fs"
    try:
        _expect_open_error(path.as_uri(), **kw)
    finally:
        assert not path.exists()


def test_file_uri_read_only_can_be_read_while_locked(tmp_path):
    path = tmp_path / "Data.fs"
    app = ZODB.DB(FileStorage(str(path)))
    try:
        db = pclasses.open(path.as_uri(), read_only=True)
        try:
            assert db.storage.isReadOnly()
        finally:
            db.close()
    finally:
        app.close()


@pytest.mark.zeo
def test_zeo_uri_read_only_is_read_only(zeo_uri):
    """A zeo:// target opened read-only gives a read-only client storage."""
    pclasses.open(zeo_uri).close()  # creates the root object
    db = pclasses.open(zeo_uri, read_only=True)
    try:
        assert db.storage.isReadOnly()
    finally:
        db.close()


def test_zconfig_read_only_can_be_read_while_locked(tmp_path):
    fs = tmp_path / "Data.fs"
    conf = _filestorage_conf(tmp_path, fs)
    app = ZODB.DB(FileStorage(str(fs)))
    try:
        db = pclasses.open(conf, read_only=True)
        try:
            assert db.storage.isReadOnly()
        finally:
            db.close()
    finally:
        app.close()


def test_zconfig_missing_filestorage_is_not_created(tmp_path):
    fs = tmp_path / "missing.fs"
    conf = _filestorage_conf(tmp_path, fs)
    try:
        _expect_open_error(str(conf), create=False, read_only=True)
    finally:
        assert not fs.exists()


@pytest.mark.parametrize("multi", [False, True])
def test_zconfig_db_kwargs_reach_zodb_db(tmp_path, multi):
    conf = (_multi_conf(tmp_path) if multi else
            _write_conf(tmp_path / "z.conf",
                        f"<zodb>\n <filestorage>\n  path {tmp_path / 'z.fs'}\n"
                        " </filestorage>\n</zodb>\n"))
    db = pclasses.open(conf, cache_size=123, pool_size=3)
    try:
        for each in db.databases.values():
            assert each.getCacheSize() == 123
            assert each.getPoolSize() == 3
    finally:
        for each in set(db.databases.values()):
            each.close()


def test_unknown_uri_parameter_is_not_called_an_unknown_scheme(tmp_path):
    exc = _expect_open_error((tmp_path / "x.fs").as_uri() + "?no_such_option=1")
    assert "scheme" not in exc.reason
    assert "no_such_option" in exc.reason


def test_empty_file_read_only_has_a_clear_reason(tmp_path):
    path = tmp_path / "empty.fs"
    path.write_bytes(b"")
    exc = _expect_open_error(str(path), read_only=True)
    assert exc.reason != "ReadOnlyError"


def test_empty_zeo_storage_read_only_has_a_clear_reason(zeo_uri):
    """An empty database opened read-only says why it cannot be opened."""
    with pytest.raises(pclasses.StorageOpenError, match="no root object"):
        pclasses.open(zeo_uri, read_only=True)
