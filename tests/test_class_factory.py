"""Claims about ``pclasses.class_factory``, the registry named from ZConfig.

A Zope or Plone operator writes ``class-factory pclasses.class_factory`` in a
``<zodb>`` section of zope.conf.  These tests open databases from such
ZConfig text with ``ZODB.config`` over real FileStorages, with a real
distribution on ``sys.path`` (a package plus a ``.dist-info`` directory, as
an installed wheel looks to ``importlib.metadata``) that ships rename rules
in the ``zodbupdate`` and ``pclasses.aliases`` entry-point groups.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import transaction
import ZODB
import ZODB.config
import zope.event
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage

import pclasses
from pclasses import factory
from pclasses.broken import broken_state, is_broken
from pclasses.connection import Connection as PackageConnection


@dataclass
class Site:
    root: Path  # on sys.path
    pkg: str

    def module(self, name: str):
        return importlib.import_module(f"{self.pkg}.{name}")


OLD = """
from persistent import Persistent

class Thing(Persistent):
    def __init__(self, value):
        self.value = value

class Other(Persistent):
    def __init__(self, value):
        self.value = value

class Gone(Persistent):
    def __init__(self, value):
        self.value = value

class Plain:
    def __init__(self, value):
        self.value = value
"""

NEW = """
from persistent import Persistent

class Thing(Persistent):
    def __init__(self, value):
        self.value = value

class Renamed(Persistent):
    def __init__(self, value):
        self.value = value
"""

RULES = """
ZODBUPDATE = {{"{pkg}.old Thing": "{pkg}.new Thing"}}
ALIASES = {{"{pkg}.old.Other": "{pkg}.new.Renamed"}}
"""

ENTRY_POINTS = """
[zodbupdate]
renames = {pkg}.rules:ZODBUPDATE

[pclasses.aliases]
renames = {pkg}.rules:ALIASES
"""


def _forget(pkg: str) -> None:
    for name in list(sys.modules):
        if name == pkg or name.startswith(pkg + "."):
            del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A package ``<pkg>.old`` on sys.path (no distribution yet), and a clean
    process registry before and after."""
    pkg = f"pcl_cf_{uuid.uuid4().hex[:10]}"
    root = tmp_path / "site"
    (root / pkg).mkdir(parents=True)
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "old.py").write_text(textwrap.dedent(OLD))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    factory._reset()
    yield Site(root, pkg)
    factory._reset()
    _forget(pkg)


def upgrade(site: Site) -> None:
    """The add-on's new release: ``old`` is gone, ``new`` holds the moved
    classes, and the distribution ships the rename rules as entry points."""
    (site.root / site.pkg / "old.py").unlink()
    (site.root / site.pkg / "new.py").write_text(textwrap.dedent(NEW))
    (site.root / site.pkg / "rules.py").write_text(RULES.format(pkg=site.pkg))
    info = site.root / f"{site.pkg}-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {site.pkg}\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS.format(pkg=site.pkg))
    _forget(site.pkg)


def zconfig(path: Path) -> str:
    return textwrap.dedent(f"""
        <zodb>
          class-factory pclasses.class_factory
          <filestorage>
            path {path}
          </filestorage>
        </zodb>
        """)


def write_objects(site: Site, path: Path) -> None:
    """Store one object of each old class with ZODB alone (no pclasses)."""
    old = site.module("old")
    db = ZODB.DB(FileStorage(str(path)))
    try:
        with db.transaction() as conn:
            root = conn.root()
            root["thing"] = old.Thing(1)
            root["other"] = old.Other(2)
            root["gone"] = old.Gone(3)
            root["plain"] = [old.Plain(4)]
    finally:
        db.close()


def test_zconfig_names_the_factory_and_renamed_and_removed_classes_load(site, tmp_path):
    """A database opened from ``class-factory pclasses.class_factory`` loads
    classes renamed by installed distributions' ``zodbupdate`` and
    ``pclasses.aliases`` rules as the new classes, and removed classes as
    broken objects that keep their state."""
    path = tmp_path / "Data.fs"
    write_objects(site, path)
    upgrade(site)
    db = ZODB.config.databaseFromString(zconfig(path))
    try:
        assert db.classFactory is pclasses.class_factory
        new = site.module("new")
        conn = db.open()
        root = conn.root()
        assert type(root["thing"]) is new.Thing
        assert root["thing"].value == 1
        assert type(root["other"]) is new.Renamed
        assert root["other"].value == 2
        gone = root["gone"]
        assert is_broken(gone)
        assert broken_state(gone) == {"value": 3}
        [plain] = root["plain"]
        assert is_broken(plain)
        assert broken_state(plain) == {"value": 4}
        registry = pclasses.process_registry()
        assert {(r.module, r.name) for r in registry.broken()} >= {
            (f"{site.pkg}.old", "Gone"), (f"{site.pkg}.old", "Plain")}
        conn.close()
    finally:
        db.close()


def test_one_process_registry_read_once_on_first_use(site, tmp_path):
    """The process registry is made on the first lookup, reads the entry
    points then, and serves every database named that way afterwards."""
    upgrade(site)
    assert factory._registry is None  # nothing read at import time
    db1 = ZODB.config.databaseFromString(zconfig(tmp_path / "one.fs"))
    db2 = ZODB.config.databaseFromString(zconfig(tmp_path / "two.fs"))
    try:
        for db in (db1, db2):
            with db.transaction() as conn:
                conn.root()["x"] = site.module("new").Thing(5)
            conn = db.open()
            conn.cacheMinimize()
            assert conn.root()["x"].value == 5
            conn.close()
        registry = pclasses.process_registry()
        assert registry is pclasses.process_registry()
        assert registry.rename_target(f"{site.pkg}.old", "Thing") == (f"{site.pkg}.new", "Thing")
        assert set(registry.databases) >= {db1, db2}
        assert factory.entry_point_failures() == [
            f for f in factory.entry_point_failures() if site.pkg not in f.value]
    finally:
        db1.close()
        db2.close()


def test_reattach_reaches_databases_named_from_zconfig(site, tmp_path):
    """A removed class that comes back (registered on the process registry)
    turns the broken objects of a ZConfig-opened database into real ones."""
    path = tmp_path / "Data.fs"
    write_objects(site, path)
    old = site.module("old")
    _forget(site.pkg)
    (site.root / site.pkg / "old.py").rename(site.root / "old.py.away")
    db = ZODB.config.databaseFromString(zconfig(path))
    try:
        conn = db.open()
        gone = conn.root()["gone"]
        gone._p_activate()
        assert is_broken(gone)
        # Registering reattaches the registry's databases' broken objects.
        pclasses.process_registry().register(old.Gone, f"{site.pkg}.old.Gone")
        assert type(conn.root()["gone"]) is old.Gone
        assert conn.root()["gone"].value == 3
        conn.close()
    finally:
        db.close()


def _box_record(path: Path) -> bytes:
    """The current record of ``root['box']``, read with ZODB alone."""
    db = ZODB.DB(FileStorage(str(path), read_only=True))
    try:
        conn = db.open()
        oid = conn.root()["box"]._p_oid
        conn.close()
        data, _serial = db.storage.load(oid)
        return data
    finally:
        db.close()


def test_writing_broken_objects_back_needs_one_install_call(site, tmp_path):
    """Under a bare class factory ZODB's own connection rewrites a record
    holding broken objects lossily (a persistent one's reference loses its
    class, a plain one becomes a ``ZODB.broken.rebuild`` call); after
    ``pclasses.process_registry().install(db)`` the record is written back as
    it was read, naming the original classes, and loads whole once the
    module returns."""
    old = site.module("old")
    paths = {"bare": tmp_path / "bare.fs", "installed": tmp_path / "installed.fs"}
    for path in paths.values():
        db = ZODB.DB(FileStorage(str(path)))
        with db.transaction() as conn:
            conn.root()["box"] = box = PersistentMapping()
            box["gone"] = old.Gone(3)
            box["plain"] = old.Plain(4)
        db.close()
    original = _box_record(paths["installed"])
    gone_global = f"{site.pkg}.old\nGone\n".encode()
    plain_global = f"{site.pkg}.old\nPlain\n".encode()
    assert gone_global in original and plain_global in original
    _forget(site.pkg)
    (site.root / site.pkg / "old.py").rename(site.root / "old.py.away")

    for how, path in paths.items():
        db = ZODB.config.databaseFromString(zconfig(path))
        try:
            if how == "installed":
                pclasses.process_registry().install(db)
            conn = db.open()
            assert isinstance(conn, PackageConnection) is (how == "installed")
            box = conn.root()["box"]
            assert is_broken(box["gone"]) and is_broken(box["plain"])
            box["note"] = "edited"
            transaction.commit()
            conn.close()
        finally:
            db.close()

    bare = _box_record(paths["bare"])
    assert gone_global not in bare and b"ZODB.broken\nrebuild" in bare
    installed = _box_record(paths["installed"])
    assert gone_global in installed and plain_global in installed
    assert b"rebuild" not in installed

    (site.root / "old.py.away").rename(site.root / site.pkg / "old.py")
    _forget(site.pkg)
    db = ZODB.DB(FileStorage(str(paths["installed"]), read_only=True))
    try:
        conn = db.open()
        box = conn.root()["box"]
        assert box["note"] == "edited"
        assert type(box["gone"]) is site.module("old").Gone
        assert box["gone"].value == 3
        assert type(box["plain"]) is site.module("old").Plain
        assert box["plain"].value == 4
        conn.close()
    finally:
        db.close()


MULTI = """
<zodb main>
  class-factory pclasses.class_factory
  allow-implicit-cross-references true
  <filestorage>
    path {main}
  </filestorage>
</zodb>
<zodb other>
  class-factory pclasses.class_factory
  allow-implicit-cross-references true
  <filestorage>
    path {other}
  </filestorage>
</zodb>
"""


def test_seat_belt_needs_one_call(site, tmp_path):
    """Under a bare class factory no cross-database reference is reported;
    after ``pclasses.check_xrefs(db)`` on a ZConfig-opened multi-database,
    committing one publishes a ``CrossDatabaseReference`` event."""
    db = ZODB.config.databaseFromString(
        MULTI.format(main=tmp_path / "main.fs", other=tmp_path / "other.fs"))
    seen: list = []
    zope.event.subscribers.append(seen.append)
    try:
        def link(name: str) -> bytes:
            with db.transaction() as conn:
                target = PersistentMapping()
                conn.get_connection("other").add(target)
                conn.root()[name] = target
            return target._p_oid  # type: ignore[no-any-return]

        link("first")
        assert not [e for e in seen if isinstance(e, pclasses.CrossDatabaseReference)]
        pclasses.check_xrefs(db)
        second = link("second")
        events = [e for e in seen if isinstance(e, pclasses.CrossDatabaseReference)]
        assert second in {e.target._p_oid for e in events}
        assert {e.target_database for e in events} == {"other"}
    finally:
        zope.event.subscribers.remove(seen.append)
        for each in set(db.databases.values()):
            each.close()
