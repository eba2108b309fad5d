"""Claims about the broken-object inventory: ``find_broken`` and ``pclasses broken``.

Every database here is a real FileStorage (or a real ZEO server) written
through ZODB with classes from helper modules that are made *missing*
afterwards: taken off ``sys.path``, out of ``sys.modules``, their files and
``__pycache__`` deleted.  The inventory must then name every class that does
not resolve, count its records and mentions, and show for a few example
objects where they sit (a path from the root in attribute and key names, or
the oids referring to them), without importing the missing code and without
running anything a record names.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import pickletools
import pty
import re
import select
import shutil
import subprocess
import sys
import textwrap
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import transaction
import ZODB
import ZODB.utils
from BTrees.IOBTree import IOBTree
from BTrees.OOBTree import OOBTree
from click.testing import CliRunner
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.utils import oid_repr, z64

import pclasses
from oracles import current_records, store_raw
from pclasses.cli import main
from pclasses.inventory import BrokenClass, BrokenExample, BrokenReport

OID_REPR = re.compile(r"^0x[0-9a-f]{2,16}$")
SCRIPT = Path(sys.executable).parent / "pclasses"


# ---------------------------------------------------------------------------
# helpers


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextmanager
def transient_modules(directory: Path, sources: dict[str, str]):
    """Write modules, make them importable, and afterwards make them *missing*.

    On exit the directory leaves ``sys.path``, the modules leave
    ``sys.modules``, and the files (with ``__pycache__``) are deleted.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    try:
        yield {name: importlib.import_module(name) for name in sources}
    finally:
        while str(directory) in sys.path:
            sys.path.remove(str(directory))
        for name in sources:
            sys.modules.pop(name, None)
        shutil.rmtree(directory)
        importlib.invalidate_caches()
        for name in sources:
            assert importlib.util.find_spec(name) is None, name






def record_globals(data: bytes) -> tuple[tuple[str, str] | None, set[tuple[str, str]]]:
    """``(class of the record, every global it names)`` via :mod:`pickletools`."""
    f = io.BytesIO(data)
    names: set[tuple[str, str]] = set()
    klass = None
    for part in (0, 1):
        first = None
        for op, arg, _pos in pickletools.genops(f):
            if op.name in ("GLOBAL", "INST"):
                module, name = arg.split(" ", 1)
                names.add((module, name))
                if first is None:
                    first = (module, name)
        if part == 0:
            klass = first
    return klass, names


def oracle_counts(storage, pair: tuple[str, str]) -> tuple[int, int]:
    """Brute force: (records of class ``pair``, other records naming it)."""
    records = mentions = 0
    for data in current_records(storage).values():
        try:
            klass, names = record_globals(data)
        except Exception:
            continue  # unreadable
        if klass == pair:
            records += 1
        elif pair in names:
            mentions += 1
    return records, mentions


def by_name(report: BrokenReport) -> dict[str, BrokenClass]:
    return {c.dotted: c for c in report.classes}


def example_of(cls: BrokenClass, oid: bytes) -> BrokenExample:
    for e in cls.examples:
        if e.oid == oid:
            return e
    raise AssertionError(f"{oid_repr(oid)} is not an example of {cls.dotted}: "
                         f"{[oid_repr(e.oid) for e in cls.examples]}")


def cli_env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    env["COLUMNS"] = "250"
    return env


def run_cli(*args: str, env: dict[str, str], stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "pclasses.cli"]
    return subprocess.run([*cmd, *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


class RunsOnLoad:
    """Pickled as ``os.mkdir(path)``: anything that runs the record makes ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# ---------------------------------------------------------------------------
# the world: one FileStorage with broken objects in every kind of place


MISSING_SOURCE = """
    from persistent import Persistent


    class InMap(Persistent):
        def __init__(self, v):
            self.v = v


    class InAttr(InMap):
        pass


    class InList(InMap):
        pass


    class InTree(InMap):
        pass


    class InIntTree(InMap):
        pass


    class Lost(InMap):
        pass


    class Many(InMap):
        pass


    class Plain:
        '''Not persistent: pickled inside its container's record.'''

        def __init__(self, v):
            self.v = v
"""

KEPT_SOURCE = """
    from persistent import Persistent


    class Holder(Persistent):
        '''A plain Persistent class that stays importable.'''
"""


@dataclass
class World:
    path: Path
    missing: str  # the missing module's name
    kept: str  # module that stays importable (only from kept_dir)
    kept_dir: Path
    marker: Path  # created if anything runs a stored pickle
    oids: dict[str, bytes] = field(default_factory=dict)
    bad: list[bytes] = field(default_factory=list)  # unreadable records

    def cls(self, name: str) -> str:
        return f"{self.missing}.{name}"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("inventory")
    missing = unique("pcl_inv_missing")
    kept = unique("pcl_inv_kept")
    kept_dir = base / "kept"
    kept_dir.mkdir()
    (kept_dir / f"{kept}.py").write_text(textwrap.dedent(KEPT_SOURCE))
    w = World(base / "world.fs", missing, kept, kept_dir, base / "marker")
    sys.path.insert(0, str(kept_dir))
    try:
        with transient_modules(base / "missing", {missing: MISSING_SOURCE}) as mods:
            m = mods[missing]
            k = importlib.import_module(kept)
            db = ZODB.DB(FileStorage(str(w.path)))
            try:
                conn = db.open()
                root = conn.root()
                root["a"] = PersistentMapping()
                root["a"]["b"] = m.InMap(1)
                root["holder"] = k.Holder()
                root["holder"].child = k.Holder()
                root["holder"].child.leaf = m.InAttr(2)
                root["list"] = PersistentList([0, "x", m.InList(3)])
                tree = OOBTree()
                for i in range(150):
                    tree[f"k{i:05d}"] = i
                tree["k00042"] = m.InTree(42)
                root["tree"] = tree
                ints = IOBTree()
                for i in range(150):
                    ints[i] = str(i)
                ints[77] = m.InIntTree(77)
                root["ints"] = ints
                root["box"] = PersistentMapping(plain=m.Plain(5))
                root["many"] = PersistentList([m.Many(i) for i in range(6)])
                root["hostile"] = PersistentMapping(run=RunsOnLoad(str(w.marker)))
                root["bad"] = PersistentMapping()
                orphan = PersistentMapping(lost=m.Lost(9))
                conn.add(orphan)  # stored, but nothing reachable from the root refers to it
                transaction.commit()
                # the tree really is a tree of several buckets, not one inline bucket
                assert tree._firstbucket is not None and tree._firstbucket._next is not None
                w.oids.update(
                    root=root._p_oid, a=root["a"]._p_oid, in_map=root["a"]["b"]._p_oid,
                    holder=root["holder"]._p_oid, in_attr=root["holder"].child.leaf._p_oid,
                    list=root["list"]._p_oid, in_list=root["list"][2]._p_oid,
                    tree=tree._p_oid, in_tree=tree["k00042"]._p_oid,
                    in_int_tree=ints[77]._p_oid, box=root["box"]._p_oid,
                    many=root["many"]._p_oid, bad=root["bad"]._p_oid,
                    orphan=orphan._p_oid, lost=orphan["lost"]._p_oid,
                    hostile=root["hostile"]._p_oid,
                )
                w.oids.update({f"many{i}": o._p_oid for i, o in enumerate(root["many"])})
                conn.close()
            finally:
                transaction.abort()
                db.close()
    finally:
        sys.path.remove(str(kept_dir))
        sys.modules.pop(kept, None)
    storage = FileStorage(str(w.path))
    try:
        # root['bad'] becomes unreadable; one more unreadable record nothing refers to
        serial = storage.load(w.oids["bad"])[1]
        store_raw(storage, b"garbage", w.oids["bad"], serial)
        w.bad = [w.oids["bad"], store_raw(storage, b"garbage")]
    finally:
        storage.close()
    assert not w.marker.exists()
    return w


@pytest.fixture
def kept_importable(world: World, monkeypatch):
    monkeypatch.syspath_prepend(str(world.kept_dir))
    return world


@pytest.fixture
def report(kept_importable: World) -> BrokenReport:
    db = pclasses.open(str(kept_importable.path), read_only=True, create=False)
    try:
        return pclasses.find_broken(db, examples=10)
    finally:
        db.close()


# ---------------------------------------------------------------------------
# the report


def test_report_is_complete_not_lazy(kept_importable: World):
    w = kept_importable
    db = pclasses.open(str(w.path), read_only=True, create=False)
    try:
        rep = pclasses.find_broken(db)
    finally:
        db.close()
    # everything is there after the database is closed
    assert isinstance(rep, BrokenReport)
    assert isinstance(rep.classes, list) and isinstance(rep.unreadable, list)
    assert all(isinstance(c.examples, list) for c in rep.classes)
    doc = rep.to_dict()
    json.dumps(doc)
    assert bool(rep) and len(rep) == len(rep.classes) == len(list(rep))
    storage = FileStorage(str(w.path), read_only=True)
    try:
        assert rep.records == len(current_records(storage))
    finally:
        storage.close()


def test_every_unresolved_class_is_listed_and_nothing_else(report: BrokenReport, world: World):
    expected = {world.cls(n) for n in
                ("InMap", "InAttr", "InList", "InTree", "InIntTree", "Lost", "Many", "Plain")}
    assert set(by_name(report)) == expected
    for c in report.classes:
        assert c.module == world.missing
        assert c.error and world.missing in c.error


def test_records_and_mentions_counts(report: BrokenReport, world: World):
    classes = by_name(report)
    storage = FileStorage(str(world.path), read_only=True)
    try:
        for c in report.classes:
            assert (c.records, c.mentions) == oracle_counts(storage, (c.module, c.name)), c.dotted
    finally:
        storage.close()
    # a plain object of the missing class inside a container: no record of its own
    plain = classes[world.cls("Plain")]
    assert (plain.records, plain.mentions) == (0, 1)
    assert [e.oid for e in plain.examples] == [world.oids["box"]]
    assert plain.examples[0].path == "root['box']"
    # persistent objects: a record each, named by the container's reference
    assert (classes[world.cls("Many")].records, classes[world.cls("Many")].mentions) == (6, 1)
    assert (classes[world.cls("InMap")].records, classes[world.cls("InMap")].mentions) == (1, 1)
    assert (classes[world.cls("Lost")].records, classes[world.cls("Lost")].mentions) == (1, 1)


@pytest.mark.parametrize("name, key, path", [
    ("InMap", "in_map", "root['a']['b']"),
    ("InAttr", "in_attr", "root['holder'].child.leaf"),
    ("InList", "in_list", "root['list'][2]"),
    ("InTree", "in_tree", "root['tree']['k00042']"),
    ("InIntTree", "in_int_tree", "root['ints'][77]"),
])
def test_path_from_the_root(report: BrokenReport, world: World, name, key, path):
    cls = by_name(report)[world.cls(name)]
    example = example_of(cls, world.oids[key])
    assert example.path == path
    assert example.referrers  # the object holding it


def test_btree_path_names_the_key_not_bucket_internals(report: BrokenReport, world: World):
    example = example_of(by_name(report)[world.cls("InTree")], world.oids["in_tree"])
    assert example.path == "root['tree']['k00042']"
    # the referrer is a bucket of the tree, which the path does not mention
    assert example.referrers and example.referrers[0] != world.oids["tree"]


def test_examples_are_the_objects_when_the_class_has_records(report: BrokenReport, world: World):
    """A class with records of its own has those records as examples, not their containers."""
    in_map = by_name(report)[world.cls("InMap")]
    assert [e.oid for e in in_map.examples] == [world.oids["in_map"]]
    in_list = by_name(report)[world.cls("InList")]
    assert [e.oid for e in in_list.examples] == [world.oids["in_list"]]


def test_object_only_reachable_from_an_orphan(report: BrokenReport, world: World):
    """An object reachable only from an orphan has no path; its referrer is listed."""
    lost = by_name(report)[world.cls("Lost")]
    example = example_of(lost, world.oids["lost"])
    assert example.path is None
    assert example.referrers == [world.oids["orphan"]]


def test_every_example_has_a_path_or_referrers(report: BrokenReport):
    for c in report.classes:
        assert c.examples, c.dotted
        for e in c.examples:
            assert isinstance(e.oid, bytes) and len(e.oid) == 8
            if e.path is not None:
                assert e.path.startswith("root")
            assert all(isinstance(r, bytes) and len(r) == 8 for r in e.referrers)


def test_examples_option_limits_the_examples(kept_importable: World):
    storage = FileStorage(str(kept_importable.path), read_only=True)
    try:
        for n in (0, 1, 2):
            rep = pclasses.find_broken(storage, examples=n)
            assert rep.classes
            assert all(len(c.examples) == min(n, c.records or c.mentions) for c in rep.classes)
    finally:
        storage.close()


def test_examples_are_objects_of_the_class(world: World):
    storage = FileStorage(str(world.path), read_only=True)
    try:
        rep_3 = pclasses.find_broken(storage, examples=3)
        many = by_name(rep_3)[world.cls("Many")]
        assert many.records == 6
        assert len(many.examples) == 3
        for e in many.examples:
            data = storage.load(e.oid)[0]
            assert ZODB.utils.get_pickle_metadata(data) == (world.missing, "Many"), oid_repr(e.oid)
    finally:
        storage.close()


def test_examples_above_three_are_honoured(world: World):
    storage = FileStorage(str(world.path), read_only=True)
    try:
        rep = pclasses.find_broken(storage, examples=5)
        many = by_name(rep)[world.cls("Many")]
        got = {e.oid for e in many.examples}
        wanted = {world.oids[f"many{i}"] for i in range(6)}
        assert len(got & wanted) == 5
    finally:
        storage.close()


def test_unreadable_records_are_listed_by_oid(report: BrokenReport, world: World):
    assert sorted(u.oid for u in report.unreadable) == sorted(world.bad)
    assert all(u.reason for u in report.unreadable)
    assert [d["oid"] for d in report.to_dict()["unreadable"]] == [
        oid_repr(o) for o in sorted(world.bad)]


def test_nothing_missing_is_imported_and_nothing_stored_is_run(kept_importable: World):
    w = kept_importable
    before = set(sys.modules)
    storage = FileStorage(str(w.path), read_only=True)
    try:
        rep = pclasses.find_broken(storage)
    finally:
        storage.close()
    assert rep.classes
    assert w.missing not in sys.modules
    assert not any(m.startswith(w.missing) for m in sys.modules)
    assert set(sys.modules) - before <= {w.kept}  # only what the registry resolves
    assert not w.marker.exists()


def test_progress_callback(kept_importable: World):
    calls: list[tuple[int, int | None]] = []
    storage = FileStorage(str(kept_importable.path), read_only=True)
    try:
        rep = pclasses.find_broken(storage,
                                   progress=lambda done, total: calls.append((done, total)))
    finally:
        storage.close()
    assert calls
    assert calls[-1][0] == rep.records


def test_accepts_a_storage_or_a_db_alike(kept_importable: World):
    storage = FileStorage(str(kept_importable.path), read_only=True)
    try:
        from_storage = pclasses.find_broken(storage).to_dict()
    finally:
        storage.close()
    db = pclasses.open(str(kept_importable.path), read_only=True, create=False)
    try:
        from_db = pclasses.find_broken(db).to_dict()
    finally:
        db.close()
    assert from_storage == from_db


# ---------------------------------------------------------------------------
# paths that must name every step


def _build(path: Path, directory: Path, source: str, build) -> tuple[str, dict[str, bytes]]:
    name = unique("pcl_inv_small")
    with transient_modules(directory, {name: source}) as mods:
        db = ZODB.DB(FileStorage(str(path)))
        try:
            oids = build(db, mods[name])
        finally:
            transaction.abort()
            db.close()
    return name, oids


SMALL_SOURCE = """
    from persistent import Persistent


    class Thing(Persistent):
        pass


    class Holder(Persistent):
        pass
"""


def test_path_found_when_an_unreachable_record_also_refers(tmp_path: Path):
    def build(db, m):
        conn = db.open()
        root = conn.root()
        thing = m.Thing()
        root["old"] = PersistentMapping(z=thing)
        transaction.commit()
        root["new"] = PersistentMapping(z=thing)
        del root["old"]
        transaction.commit()
        return {"thing": thing._p_oid, "new": root["new"]._p_oid}

    name, oids = _build(tmp_path / "moved.fs", tmp_path / "mods", SMALL_SOURCE, build)
    storage = FileStorage(str(tmp_path / "moved.fs"), read_only=True)
    try:
        rep = pclasses.find_broken(storage, examples=10)
    finally:
        storage.close()
    example = example_of(by_name(rep)[f"{name}.Thing"], oids["thing"])
    assert example.path == "root['new']['z']"


def test_attribute_named_data_is_a_step(tmp_path: Path):
    def build(db, m):
        conn = db.open()
        root = conn.root()
        root["h"] = m.Holder()
        root["h"].data = m.Thing()
        transaction.commit()
        return {"thing": root["h"].data._p_oid}

    name, oids = _build(tmp_path / "data.fs", tmp_path / "mods", SMALL_SOURCE, build)
    storage = FileStorage(str(tmp_path / "data.fs"), read_only=True)
    try:
        rep = pclasses.find_broken(storage, examples=10)
    finally:
        storage.close()
    example = example_of(by_name(rep)[f"{name}.Thing"], oids["thing"])
    assert example.path == "root['h'].data"


# ---------------------------------------------------------------------------
# paths through BTrees, and keys that are deep, long or odd


def _find(path: Path, examples: int = 20) -> BrokenReport:
    storage = FileStorage(str(path), read_only=True)
    try:
        return pclasses.find_broken(storage, examples=examples)
    finally:
        storage.close()


def test_paths_through_big_btrees_name_real_keys(tmp_path: Path):
    """Objects in the first, a middle and the last bucket of a BTree with
    interior nodes (and of an IOBTree), and inside a plain value, are named
    by their real keys: tree nodes, first-bucket and next-bucket links add no
    step."""
    def build(db, m):
        conn = db.open()
        root = conn.root()
        tree = root["tree"] = OOBTree()
        ints = root["ints"] = IOBTree()
        for i in range(3000):
            tree[f"k{i:05d}"] = PersistentMapping(i=i)
            ints[i] = PersistentMapping(i=i)
        oids = {}
        for i in (0, 1234, 2999):
            tree[f"k{i:05d}"] = t = m.Thing()
            ints[i] = u = m.Thing()
            transaction.savepoint(True)
            oids[f"k{i:05d}"], oids[i] = t._p_oid, u._p_oid
        tree["k01500"] = (1, [m.Thing()])
        transaction.commit()
        oids["nested"] = tree["k01500"][1][0]._p_oid
        assert len(tree.__getstate__()[0]) > 3  # interior node with several buckets
        return oids

    name, oids = _build(tmp_path / "big.fs", tmp_path / "mods", SMALL_SOURCE, build)
    rep = _find(tmp_path / "big.fs")
    cls = by_name(rep)[f"{name}.Thing"]
    paths = {e.oid: e.path for e in cls.examples}
    for i in (0, 1234, 2999):
        assert paths[oids[f"k{i:05d}"]] == f"root['tree']['k{i:05d}']"
        assert paths[oids[i]] == f"root['ints'][{i}]"
    assert paths[oids["nested"]] == "root['tree']['k01500'][1][0]"


ORDERED_SOURCE = SMALL_SOURCE + """

    class Member(Persistent):
        # ordered, so that it can be a member of a BTrees set

        def __init__(self, n):
            self.n = n

        def __lt__(self, other):
            return self.n < other.n

        def __eq__(self, other):
            return self.n == other.n

        def __hash__(self):
            return self.n
"""


def test_paths_through_sets_and_small_trees(tmp_path: Path):
    """A member of a TreeSet (big or small) or a Set is the step ``{...}``; a
    value of a one-bucket BTree (kept inline) is its key."""
    from BTrees.OOBTree import OOSet, OOTreeSet

    def build(db, m):
        conn = db.open()
        root = conn.root()
        root["small"] = OOBTree()
        root["small"]["only"] = small = m.Holder()
        root["ts"] = OOTreeSet()
        root["s"] = OOSet()
        root["bigts"] = OOTreeSet()
        members = [m.Member(i) for i in range(2000)]
        for obj in members:
            conn.add(obj)
            root["bigts"].add(obj)
        member, smember = m.Member(-1), m.Member(-2)
        conn.add(member)
        conn.add(smember)
        root["ts"].add(member)
        root["s"].add(smember)
        transaction.commit()
        assert len(root["bigts"].__getstate__()[0]) > 3
        return {"small": small._p_oid, "member": member._p_oid, "smember": smember._p_oid,
                "big0": members[0]._p_oid, "big1500": members[1500]._p_oid}

    name, oids = _build(tmp_path / "sets.fs", tmp_path / "mods", ORDERED_SOURCE, build)
    rep = _find(tmp_path / "sets.fs", examples=5000)
    paths = {e.oid: e.path for c in rep.classes for e in c.examples}
    assert paths[oids["small"]] == "root['small']['only']"
    assert paths[oids["member"]] == "root['ts']{...}"
    assert paths[oids["big0"]] == "root['bigts']{...}"
    assert paths[oids["big1500"]] == "root['bigts']{...}"
    assert paths[oids["smember"]] == "root['s']{...}"


def _bucket_with_key(key_opcodes: bytes, target: bytes, module: str) -> bytes:
    """An OOBucket record ``((key, <ref to target>),)`` with a hand-made key."""
    return (b"\x80\x03cBTrees.OOBTree\nOOBucket\nq\x00.\x80\x03" + key_opcodes
            + b"C\x08" + target + f"c{module}\nThing\n".encode() + b"\x86Q\x86\x85.")


def _with_crafted_bucket(tmp_path: Path, key_opcodes: bytes) -> tuple[Path, str, bytes]:
    """A database whose ``root['b']`` is a bucket keyed by ``key_opcodes`` that
    holds an object of a missing class."""
    path = tmp_path / "k.fs"

    def build(db, m):
        conn = db.open()
        root = conn.root()
        root["b"] = OOBucket()
        root["t"] = m.Thing()
        transaction.commit()
        oids = {"b": root["b"]._p_oid, "t": root["t"]._p_oid}
        del root["t"]  # from now on reachable through the bucket only
        transaction.commit()
        return oids

    from BTrees.OOBTree import OOBucket

    name, oids = _build(path, tmp_path / "mods", SMALL_SOURCE, build)
    s = FileStorage(str(path))
    try:
        store_raw(s, _bucket_with_key(key_opcodes, oids["t"], name), oids["b"],
                  s.load(oids["b"])[1])
    finally:
        s.close()
    return path, name, oids["t"]


@pytest.mark.parametrize("kind", ["deep", "very_deep", "long", "huge_int"])
def test_a_deep_or_long_key_on_the_path_is_shown_truncated(tmp_path: Path, kind):
    """A key 900 tuples deep, a 2 MB string key or an int of 80,000 bits on
    the path to a broken object is shown truncated, by the API and the CLI
    (exit 0, no traceback); a key 100,000 tuples deep is beyond the record
    engine's limits: that bucket is unreadable (reported by oid by
    ``pclasses classes``), so no path runs through it, and nothing crashes."""
    key = {"deep": b")" + b"\x85" * 900,
           "very_deep": b")" + b"\x85" * 100_000,
           "long": b"X" + (2_000_000).to_bytes(4, "little") + b"a" * 2_000_000,
           "huge_int": b"\x8b" + (10_000).to_bytes(4, "little") + b"\x7f" * 10_000}[kind]
    path, name, oid = _with_crafted_bucket(tmp_path, key)
    rep = _find(path)
    example = example_of(by_name(rep)[f"{name}.Thing"], oid)
    if kind == "very_deep":
        assert example.path is None
        census = CliRunner().invoke(main, ["classes", str(path), "--json"])
        assert census.exit_code == 0, census.output
        unreadable = json.loads(census.output)["databases"][0]["unreadable"]
        assert len(unreadable) == 1 and unreadable[0]["oid"] != oid_repr(oid)
    else:
        assert example.path is not None and example.path.startswith("root['b'][")
        assert len(example.path) < 300
    result = CliRunner().invoke(main, ["broken", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    [shown] = json.loads(result.output)["databases"][0]["broken_classes"][0]["examples"]
    assert shown["path"] == example.path


def test_a_deeply_nested_dict_key_on_the_path_is_not_a_crash(tmp_path: Path):
    """A PersistentMapping on the path whose dict has a key nested 200,000
    tuples deep (hashing it would overflow the C stack) does not crash
    ``pclasses broken`` (a process of its own exits normally): the holder is
    beyond the record engine's limits, reported unreadable by oid, and no
    path runs through it."""
    path = tmp_path / "deep.fs"
    ZODB.DB(FileStorage(str(path))).close()
    pm = b"\x80\x02cpersistent.mapping\nPersistentMapping\n."
    s = FileStorage(str(path))
    try:
        gone = store_raw(s, b"\x80\x02cpcl_inv_gone_deep.mod\nThing\n.\x80\x02}.")
        holder = store_raw(s, pm + b"\x80\x02}X\x04\x00\x00\x00data}(" + b")"
                           + b"\x85" * 200_000 + b"K\x01X\x01\x00\x00\x00kU\x08" + gone
                           + b"cpcl_inv_gone_deep.mod\nThing\n\x86Qus.")
        data, serial = s.load(z64)
        store_raw(s, pm + b"\x80\x02}X\x04\x00\x00\x00data}X\x01\x00\x00\x00hU\x08"
                  + holder + b"cpersistent.mapping\nPersistentMapping\n\x86Qss.", z64, serial)
    finally:
        s.close()
    here = Path(pclasses.__file__).resolve().parent.parent  # this pclasses, not another
    result = run_cli("broken", str(path), "--json", env=cli_env(here))
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    [cls] = json.loads(result.stdout)["databases"][0]["broken_classes"]
    [example] = cls["examples"]
    assert example["oid"] == oid_repr(gone)
    assert example["path"] is None
    census = run_cli("classes", str(path), "--json", env=cli_env(here))
    assert census.returncode == 0, census.stderr[-2000:]
    assert [u["oid"] for u in json.loads(census.stdout)["databases"][0]["unreadable"]] == [
        oid_repr(holder)]


def test_report_objects_keep_names_from_data_raw(tmp_path: Path):
    """A class name with control characters stays exactly as stored in the
    report objects (rendering escapes it, not the library); a key with them
    appears in the path only in its escaped ``repr`` form."""
    path = tmp_path / "raw.fs"
    ZODB.DB(FileStorage(str(path))).close()
    module = "evil\x1b[31m"
    s = FileStorage(str(path))
    try:
        thing = store_raw(s, b"\x80\x03c" + f"{module}\nGone\n".encode() + b"q\x00.\x80\x03}q\x01.")
        key = "k\x1b]0;x\x07"
        raw_key = key.encode()
        holder = store_raw(s, b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00."
                           b"\x80\x03}q\x01X\x04\x00\x00\x00dataq\x02}q\x03X"
                           + len(raw_key).to_bytes(4, "little") + raw_key
                           + b"C\x08" + thing + f"c{module}\nGone\n".encode()
                           + b"\x86Qss.")
        root_data, serial = s.load(z64)
        root = pclasses.read_record(root_data)
        assert root.state == {"data": {}}
        store_raw(s, b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00."
                  b"\x80\x03}q\x01X\x04\x00\x00\x00dataq\x02}q\x03X\x01\x00\x00\x00h"
                  b"C\x08" + holder + b"cpersistent.mapping\nPersistentMapping\n\x86Qss.",
                  z64, serial)
    finally:
        s.close()
    rep = _find(path)
    [cls] = rep.classes
    assert (cls.module, cls.name) == (module, "Gone")
    assert cls.to_dict()["module"] == module
    assert cls.records == 1 and rep.unreadable == []
    [example] = cls.examples
    assert example.oid == thing
    assert example.path == f"root['h'][{key!r}]"
    assert "\x1b" not in example.path and "\x07" not in example.path


# ---------------------------------------------------------------------------
# the command line


def test_cli_json_document(world: World):
    # a fresh process where the missing module cannot be found, the kept one can
    result = run_cli("broken", str(world.path), "--json", "--examples", "10",
                     env=cli_env(world.kept_dir))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)  # exactly one JSON document
    assert list(doc) == ["databases"]
    assert len(doc["databases"]) == 1
    d = doc["databases"][0]
    assert isinstance(d["name"], str)
    assert isinstance(d["records"], int) and d["records"] > 0
    classes = {(c["module"], c["name"]): c for c in d["broken_classes"]}
    assert set(classes) == {(world.missing, n) for n in
                            ("InMap", "InAttr", "InList", "InTree", "InIntTree", "Lost", "Many",
                             "Plain")}
    for c in d["broken_classes"]:
        assert isinstance(c["records"], int) and isinstance(c["mentions"], int)
        assert c["examples"]
        for e in c["examples"]:
            assert OID_REPR.match(e["oid"]), e
            assert e["path"] is None or e["path"].startswith("root")
            assert all(OID_REPR.match(r) for r in e["referrers"])
    paths = {e["oid"]: e for c in d["broken_classes"] for e in c["examples"]}
    assert paths[oid_repr(world.oids["in_tree"])]["path"] == "root['tree']['k00042']"
    assert paths[oid_repr(world.oids["in_attr"])]["path"] == "root['holder'].child.leaf"
    assert paths[oid_repr(world.oids["in_map"])]["path"] == "root['a']['b']"
    assert paths[oid_repr(world.oids["in_list"])]["path"] == "root['list'][2]"
    lost = paths[oid_repr(world.oids["lost"])]
    assert lost["path"] is None and lost["referrers"] == [oid_repr(world.oids["orphan"])]
    assert classes[(world.missing, "Plain")]["records"] == 0
    assert classes[(world.missing, "Plain")]["mentions"] == 1
    assert sorted(u["oid"] for u in d["unreadable"]) == sorted(oid_repr(o) for o in world.bad)
    assert not world.marker.exists()


def test_cli_text_output_and_exit_status(kept_importable: World):
    w = kept_importable
    result = CliRunner().invoke(main, ["broken", str(w.path), "--examples", "10"],
                                terminal_width=250)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{w.missing}.InTree: 1 records" in out
    assert f"{oid_repr(w.oids['in_tree'])}  root['tree']['k00042']" in out
    assert (f"{oid_repr(w.oids['lost'])}  no path from the root; referred to by "
            f"{oid_repr(w.oids['orphan'])}") in out
    for oid in w.bad:
        assert f"unreadable record {oid_repr(oid)}" in out


def test_cli_examples_option(kept_importable: World):
    result = CliRunner().invoke(main, ["broken", str(kept_importable.path), "--json",
                                       "--examples", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert all(len(c["examples"]) == 1 for c in doc["databases"][0]["broken_classes"])


def _pty_run(args: list[str], env: dict[str, str]) -> tuple[int, str, bytes]:
    """Run with stderr on a pseudo-terminal; returns (status, stdout, terminal bytes)."""
    master, slave = pty.openpty()
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "pclasses.cli"]
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env={**env, "TERM": "xterm"})
    os.close(slave)
    out = proc.stdout.read().decode()
    proc.wait(120)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 2)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.returncode, out, seen


def test_cli_progress_bar_only_on_a_terminal(world: World):
    env = cli_env(world.kept_dir)
    status, out, terminal = _pty_run(["broken", str(world.path)], env)
    assert status == 0
    assert b"scanning" in terminal
    assert "\x1b" not in out  # the report itself stays plain
    assert f"{world.missing}.InMap" in out
    status, _out, terminal = _pty_run(["broken", str(world.path), "--no-progress"], env)
    assert status == 0 and b"scanning" not in terminal
    piped = run_cli("broken", str(world.path), env=env)
    assert piped.returncode == 0
    assert "scanning" not in piped.stderr and "\x1b" not in piped.stderr


def test_cli_multi_database_zconfig(tmp_path: Path):
    first, second = unique("pcl_inv_first"), unique("pcl_inv_second")
    src = "from persistent import Persistent\nclass Gone(Persistent):\n    pass\n"
    with transient_modules(tmp_path / "mods", {first: src, second: src}) as mods:
        for db_name, mod in (("one", mods[first]), ("two", mods[second])):
            db = ZODB.DB(FileStorage(str(tmp_path / f"{db_name}.fs")))
            conn = db.open()
            conn.root()["gone"] = mod.Gone()
            transaction.commit()
            db.close()
    conf = tmp_path / "multi.conf"
    conf.write_text("".join(
        f"<zodb {n}>\n  <filestorage>\n    path {tmp_path / (n + '.fs')}\n"
        "  </filestorage>\n</zodb>\n"
        for n in ("one", "two")))
    result = run_cli("broken", str(conf), "--json", env=cli_env())
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    dbs = {d["name"]: d for d in doc["databases"]}
    assert set(dbs) == {"one", "two"}
    assert [(c["module"], c["name"], c["records"]) for c in dbs["one"]["broken_classes"]] == [
        (first, "Gone", 1)]
    assert [(c["module"], c["name"], c["records"]) for c in dbs["two"]["broken_classes"]] == [
        (second, "Gone", 1)]
    text = run_cli("broken", str(conf), env=cli_env())
    assert text.returncode == 0
    assert f"{first}.Gone" in text.stdout and f"{second}.Gone" in text.stdout


@pytest.mark.zeo
def test_zeo_target(zeo_server, tmp_path: Path):
    address, name = zeo_server.fresh()
    module = unique("pcl_inv_zeo")
    with transient_modules(tmp_path / "mods", {module: SMALL_SOURCE}) as mods:
        db = ZODB.DB(zeo_server.client(address, name))
        try:
            conn = db.open()
            root = conn.root()
            root["h"] = mods[module].Holder()
            root["h"].t = mods[module].Thing()
            transaction.commit()
            thing = root["h"].t._p_oid
        finally:
            db.close()
    client = zeo_server.client(address, name, read_only=True)
    try:
        rep = pclasses.find_broken(client)
    finally:
        client.close()
    classes = by_name(rep)
    assert set(classes) == {f"{module}.Thing", f"{module}.Holder"}
    assert example_of(classes[f"{module}.Thing"], thing).path == "root['h'].t"
    assert module not in sys.modules
    result = run_cli("broken", zeo_server.uri(address, name), "--json", env=cli_env())
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    [d] = doc["databases"]
    got = {(c["module"], c["name"]): c for c in d["broken_classes"]}
    assert set(got) == {(module, "Thing"), (module, "Holder")}
    ex = {e["oid"]: e["path"] for e in got[(module, "Thing")]["examples"]}
    assert ex[oid_repr(thing)] == "root['h'].t"
