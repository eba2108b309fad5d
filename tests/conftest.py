"""Shared fixtures: real storages of every kind, a real ZEO server, a sample database.

* ``zeo_server`` (session): a real ``runzeo`` process on loopback serving a
  pool of named FileStorages; :meth:`ZEOServer.fresh` hands each test a
  storage nobody has written to yet (another server process is started
  when the pool runs out), so tests never see each other's data.
* ``storage_factory``: parametrized over ``mapping``, ``file`` and ``zeo``;
  returns a callable that makes a fresh storage of that kind, so one
  behavioural test runs once per storage kind (as ZODB composes its storage
  test suites).
* ``sample_fs``: a FileStorage with ~300 objects of a class from a helper
  module that is *not* importable afterwards (its directory is taken off
  ``sys.path``), a PersistentList, plain non-persistent sub-objects, and an
  object whose module was deleted (so it is broken).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netutil import accepts, free_port

ZEO_START_TIMEOUT = 30.0
#: Named storages served by one ZEO server process; more processes start on demand.
ZEO_POOL_SIZE = 48


# ---------------------------------------------------------------------------
# ZEO


class _ZEOProcess:
    """One ``python -m ZEO.runzeo -C zeo.conf`` process serving named FileStorages."""

    def __init__(self, directory: Path, names: list[str]) -> None:
        self.directory = directory
        self.names = names
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "zeo.fs"
        self.log = directory / "zeo.log"
        last_error = ""
        for _attempt in range(3):  # another process may grab the port first
            self.address = ("127.0.0.1", free_port())
            conf = directory / "zeo.conf"
            sections = [f"<zeo>\n  address {self.address[0]}:{self.address[1]}\n</zeo>",
                        f"<filestorage 1>\n  path {self.path}\n</filestorage>"]
            sections += [f"<filestorage {n}>\n  path {directory / (n + '.fs')}\n</filestorage>"
                         for n in names]
            conf.write_text("\n".join(sections) + "\n")
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "ZEO.runzeo", "-C", str(conf)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + ZEO_START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if accepts(self.address):
                    return
                time.sleep(0.05)
            last_error = self.log.read_text(errors="replace")[-2000:]
            self.stop()
        raise RuntimeError(f"the ZEO server did not start:\n{last_error}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class ZEOServer:
    """What the ``zeo_server`` fixture yields.

    ``address`` and ``path`` are those of the first server process and its
    default storage ``'1'``; :meth:`fresh` gives an unused named storage.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._processes: list[_ZEOProcess] = []
        self._free: list[tuple[tuple[str, int], str]] = []
        self._spawn()
        self.address: tuple[str, int] = self._processes[0].address
        self.path: Path = self._processes[0].path

    def _spawn(self) -> None:
        k = len(self._processes)
        names = [f"t{k}_{i}" for i in range(ZEO_POOL_SIZE)]
        proc = _ZEOProcess(self._directory / f"server{k}", names)
        self._processes.append(proc)
        self._free.extend((proc.address, n) for n in names)

    def path_of(self, address: tuple[str, int], name: str) -> Path:
        """The FileStorage file the server keeps storage ``name`` in."""
        for proc in self._processes:
            if proc.address == address:
                return proc.path if name == "1" else proc.directory / f"{name}.fs"
        raise KeyError(address)

    def fresh(self) -> tuple[tuple[str, int], str]:
        """``(address, storage name)`` of a storage no test has used."""
        if not self._free:
            self._spawn()
        return self._free.pop(0)

    def uri(self, address: tuple[str, int], name: str) -> str:
        return f"zeo://{address[0]}:{address[1]}?storage={name}&wait_timeout=20"

    def fresh_uri(self) -> str:
        return self.uri(*self.fresh())

    def client(self, address: tuple[str, int] | None = None, name: str = "1", **kw: Any) -> Any:
        from ZEO.ClientStorage import ClientStorage

        return ClientStorage(address or self.address, storage=name, wait_timeout=20, **kw)

    def stop(self) -> None:
        for proc in self._processes:
            proc.stop()


@pytest.fixture(scope="session")
def zeo_server(tmp_path_factory: pytest.TempPathFactory):
    server = ZEOServer(tmp_path_factory.mktemp("zeo"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def zeo_uri(zeo_server: ZEOServer) -> str:
    """A ``zeo://`` URI naming a storage no other test has used."""
    return zeo_server.fresh_uri()


# ---------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server on 127.0.0.1 (see ``tests/pgserver.py``).

    Started once per test session from the system's binaries, as the
    unprivileged ``postgres`` user when the tests run as root; skipped with a
    clear reason only where no PostgreSQL binaries are installed at all.
    """
    from pgserver import PostgresServer, find_bindir

    if find_bindir() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# storages of every kind


STORAGE_KINDS = [
    "mapping",
    "file",
    pytest.param("zeo", marks=pytest.mark.zeo),
]


@pytest.fixture(params=STORAGE_KINDS)
def storage_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def storage_factory(storage_kind: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A callable making a fresh, empty storage of ``storage_kind``; all are closed after."""
    made: list[Any] = []
    counter = itertools.count()
    server: ZEOServer | None = (
        request.getfixturevalue("zeo_server") if storage_kind == "zeo" else None)

    def make() -> Any:
        n = next(counter)
        if storage_kind == "mapping":
            from ZODB.MappingStorage import MappingStorage

            storage = MappingStorage(f"mapping{n}")
        elif storage_kind == "file":
            from ZODB.FileStorage import FileStorage

            storage = FileStorage(str(tmp_path / f"storage{n}.fs"))
        else:
            assert server is not None
            address, name = server.fresh()
            storage = server.client(address, name)
        made.append(storage)
        return storage

    make.kind = storage_kind  # type: ignore[attr-defined]
    yield make
    for storage in made:
        try:
            storage.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------
# helpers for tests


def write_module(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


# ---------------------------------------------------------------------------
# the sample FileStorage


HELPER_SOURCE = """
    from persistent import Persistent


    class Plain:
        '''Not persistent: pickled inside the state of the record holding it.'''

        def __init__(self, value):
            self.value = value


    class Item(Persistent):
        def __init__(self, number):
            self.number = number
            self.plain = Plain(number * 2)
"""

GONE_SOURCE = """
    from persistent import Persistent


    class Gone(Persistent):
        def __init__(self):
            self.note = "my module is deleted after the commit"
"""


@dataclass
class SampleFS:
    path: Path
    #: directory holding the helper module (not on ``sys.path`` once the fixture returns)
    module_dir: Path
    module: str
    item_class: str
    plain_class: str
    gone_module: str
    gone_class: str
    n_items: int
    #: oids of named objects: ``root``, ``tree``, ``list``, ``gone``
    oids: dict[str, bytes] = field(default_factory=dict)

    @property
    def item(self) -> tuple[str, str]:
        return (self.module, self.item_class)

    @property
    def plain(self) -> tuple[str, str]:
        return (self.module, self.plain_class)

    @property
    def gone(self) -> tuple[str, str]:
        return (self.gone_module, self.gone_class)

    def env(self, importable: bool = True) -> dict[str, str]:
        """Environment for a CLI subprocess; the helper module importable or not."""
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if importable:
            env["PYTHONPATH"] = str(self.module_dir)
        env["COLUMNS"] = "250"
        return env


def make_sample_fs(directory: Path, n_items: int = 300) -> SampleFS:
    import transaction
    import ZODB
    from BTrees.OOBTree import OOBTree
    from persistent.list import PersistentList
    from persistent.mapping import PersistentMapping
    from ZODB.FileStorage import FileStorage

    tag = uuid.uuid4().hex[:10]
    module = f"pcl_sample_{tag}"
    gone_module = f"pcl_gone_{tag}"
    module_dir = directory / "modules"
    gone_dir = directory / "gone"
    write_module(module_dir, module, HELPER_SOURCE)
    write_module(gone_dir, gone_module, GONE_SOURCE)
    sys.path[:0] = [str(module_dir), str(gone_dir)]
    path = directory / "sample.fs"
    try:
        helper = __import__(module)
        gone = __import__(gone_module)
        db = ZODB.DB(FileStorage(str(path)))
        try:
            conn = db.open()
            root = conn.root()
            assert isinstance(root, PersistentMapping)
            tree = OOBTree()
            for i in range(n_items):
                tree[i] = helper.Item(i)
            root["tree"] = tree
            root["list"] = PersistentList([1, "two", helper.Plain("in a list")])
            root["plain"] = helper.Plain("in the root")
            root["gone"] = gone.Gone()
            transaction.commit()
            oids = {"root": root._p_oid, "tree": tree._p_oid, "list": root["list"]._p_oid,
                    "gone": root["gone"]._p_oid}
            conn.close()
        finally:
            db.close()
    finally:
        transaction.abort()
        for d in (module_dir, gone_dir):
            while str(d) in sys.path:
                sys.path.remove(str(d))
        sys.modules.pop(module, None)
        sys.modules.pop(gone_module, None)
        shutil.rmtree(gone_dir)
    return SampleFS(path, module_dir, module, "Item", "Plain", gone_module, "Gone",
                    n_items, oids)


@pytest.fixture
def sample_fs(tmp_path: Path) -> SampleFS:
    """A closed FileStorage file; see :class:`SampleFS` for what it holds."""
    return make_sample_fs(tmp_path / "sample")


@pytest.fixture
def sample_importable(sample_fs: SampleFS):
    """Put the sample's helper module back on ``sys.path`` for this test only."""
    sys.path.insert(0, str(sample_fs.module_dir))
    try:
        yield sample_fs
    finally:
        while str(sample_fs.module_dir) in sys.path:
            sys.path.remove(str(sample_fs.module_dir))
        sys.modules.pop(sample_fs.module, None)

