"""The ``pclasses`` command line and the census behind ``pclasses classes``.

The command runs as a real subprocess (the installed console script, and
``python -m pclasses.cli``) against real storages, and in-process through
click's ``CliRunner`` where that is simpler.  Census results are checked
against brute-force oracles built from ZODB's own tools
(``storage.iterator()``, ``ZODB.utils.get_pickle_metadata``) and
:mod:`pickletools`, never against pclasses itself.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import pickletools
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from click.testing import CliRunner
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.utils import get_pickle_metadata, oid_repr

import pclasses
import pclasses.scan
from oracles import current_records, store_raw
from pclasses.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main

BIN = Path(sys.executable).parent
SCRIPT = BIN / "pclasses"
STATUSES = {"ok", "aliased", "database-resident", "broken", "not-imported"}
OID_REPR = re.compile(r"^0x[0-9a-f]{2,16}$")
CLASS_KEYS = {"module", "name", "records", "mentions", "status", "examples"}


def run(*args: str, env: dict[str, str] | None = None, module: bool = False,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a fresh process."""
    cmd = [sys.executable, "-m", "pclasses.cli"] if module or not SCRIPT.exists() else [str(SCRIPT)]
    if env is None:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
    env.setdefault("COLUMNS", "250")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=cwd, stdin=subprocess.DEVNULL)


def run_json(*args: str, **kw) -> dict:
    result = run("classes", "--json", *args, **kw)
    assert result.returncode == EXIT_OK, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)  # one JSON document, nothing else on stdout


def by_name(db_doc: dict) -> dict[tuple[str, str], dict]:
    return {(c["module"], c["name"]): c for c in db_doc["classes"]}


def check_document_shape(doc: dict) -> None:
    assert set(doc) == {"databases"}
    for db_doc in doc["databases"]:
        assert isinstance(db_doc["name"], str)
        assert isinstance(db_doc["records"], int)
        assert isinstance(db_doc["unreadable"], list)
        for c in db_doc["classes"]:
            assert CLASS_KEYS <= set(c)
            assert c["status"] in STATUSES, c
            assert c["records"] >= 0 and c["mentions"] >= 0
            assert c["records"] + c["mentions"] > 0
            assert len(c["examples"]) <= min(3, c["records"])
            assert all(OID_REPR.match(e) for e in c["examples"]), c["examples"]
            if c["status"] == "broken":
                assert c["error"]
        assert [(c["module"], c["name"]) for c in db_doc["classes"]] == sorted(
            (c["module"], c["name"]) for c in db_doc["classes"])
        for u in db_doc["unreadable"]:
            assert OID_REPR.match(u["oid"]) and u["reason"]


# ---------------------------------------------------------------------------
# brute-force oracles (ZODB's and the standard library's tools, not pclasses')




def brute_force_classes(storage) -> tuple[int, collections.Counter]:
    """``(number of live objects, Counter of (module, class) of their records)``,
    using ZODB's own ``get_pickle_metadata``."""
    records = current_records(storage)
    return len(records), collections.Counter(get_pickle_metadata(d) for d in records.values())


def record_globals(data: bytes) -> tuple[tuple[str, str] | None, set[tuple[str, str]]]:
    """``(class of the record, every global named in it)``, walking both pickles
    with :mod:`pickletools`."""
    f = io.BytesIO(data)
    names: set[tuple[str, str]] = set()
    klass = None
    for part in (0, 1):
        first_global = None
        for op, arg, _pos in pickletools.genops(f):
            assert op.name != "STACK_GLOBAL", "ZODB writes protocol 3: GLOBAL only"
            if op.name in ("GLOBAL", "INST"):
                module, name = arg.split(" ", 1)
                names.add((module, name))
                if first_global is None:
                    first_global = (module, name)
        if part == 0:
            klass = first_global
    return klass, names


def oracle(storage) -> tuple[int, collections.Counter, collections.Counter, dict]:
    """Brute force: (records, records per class, mentions per class, oids per class)."""
    n, per_class = brute_force_classes(storage)
    mentions: collections.Counter = collections.Counter()
    oids: dict[tuple[str, str], set[bytes]] = collections.defaultdict(set)
    for oid, data in current_records(storage).items():
        klass, names = record_globals(data)
        oids[klass].add(oid)
        for g in names - {klass}:
            mentions[g] += 1
    assert sum(per_class.values()) == n
    return n, per_class, mentions, oids


def assert_census_matches(census: pclasses.Census, storage) -> None:
    n, per_class, mentions, oids = oracle(storage)
    assert census.records == n
    assert census.unreadable == []
    got_records = {(c.module, c.name): c.records for c in census.classes if c.records}
    got_mentions = {(c.module, c.name): c.mentions for c in census.classes if c.mentions}
    assert got_records == dict(per_class)
    assert got_mentions == dict(mentions)
    for c in census.classes:
        assert set(c.examples) <= oids[(c.module, c.name)]
        assert len(c.examples) == min(3, c.records)


def assert_same_census(a: pclasses.Census, b: pclasses.Census) -> None:
    da, db_ = a.to_dict(), b.to_dict()
    assert da["records"] == db_["records"]
    assert da["unreadable"] == db_["unreadable"]

    def counts(d):
        return {(c["module"], c["name"]): (c["records"], c["mentions"], c["status"])
                for c in d["classes"]}

    assert counts(da) == counts(db_)


# ---------------------------------------------------------------------------
# version and help


def test_version_subprocess():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pclasses, version {pclasses.__version__}"
    assert result.stderr == ""


def test_module_entry_point_runs():
    result = run("--version", module=True)
    assert result.returncode == 0
    assert pclasses.__version__ in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["-h"]])
def test_main_help_explains_targets(args):
    result = CliRunner().invoke(main, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "TARGET" in text
    for form in ("FileStorage path", "ZConfig file", "zodburi URI"):
        assert form in text, form
    assert "classes" in text


def test_help_subprocess():
    result = run("classes", "--help")
    assert result.returncode == 0
    assert "Usage: pclasses classes [OPTIONS] TARGET" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["classes", "--help"]])
def test_help_lists_target_forms(args):
    result = CliRunner().invoke(main, args, terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for form in ("FileStorage path", "ZConfig", "zodburi", "file://", "memory://", "zeo://"):
        assert form in text, form


def test_classes_help_describes_columns_and_options():
    result = CliRunner().invoke(main, ["classes", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    for word in ("--json", "RECORDS", "MENTIONS", "broken", "unreadable", "--entry-points"):
        assert word in text, word


# ---------------------------------------------------------------------------
# pclasses classes on the sample database


def test_classes_table(sample_fs):
    # the helper module is importable and trusted (not an installed distribution)
    result = run("classes", "--trust", sample_fs.module, str(sample_fs.path),
                 env=sample_fs.env(importable=True))
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == ""
    out = result.stdout
    rows = {}
    for line in out.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[1].isdigit():
            rows[cells[0]] = cells[1:]
    assert "database 'unnamed': 323 records, 7 classes" in out
    assert len(rows) == 7
    item = f"{sample_fs.module}.Item"
    plain = f"{sample_fs.module}.Plain"
    gone = f"{sample_fs.gone_module}.Gone"
    assert rows[item][:3] == [str(sample_fs.n_items), rows[item][1], "ok"]
    assert rows[plain][0] == "0" and rows[plain][1] == str(sample_fs.n_items + 2)
    assert rows[plain][2] == "ok"
    assert rows[gone][0] == "1" and rows[gone][2] == "broken"
    assert "No module named" in rows[gone][3]
    assert rows["persistent.list.PersistentList"][0] == "1"
    assert rows["persistent.mapping.PersistentMapping"][0] == "1"
    assert "Traceback" not in out


def test_classes_json(sample_fs):
    doc = run_json("--trust", sample_fs.module, str(sample_fs.path),
                   env=sample_fs.env(importable=True))
    check_document_shape(doc)
    assert len(doc["databases"]) == 1
    db_doc = doc["databases"][0]
    storage = FileStorage(str(sample_fs.path), read_only=True)
    try:
        n, per_class, mentions, oids = oracle(storage)
        assert db_doc["records"] == n == len(storage)
    finally:
        storage.close()
    classes = by_name(db_doc)
    assert {k: v["records"] for k, v in classes.items() if v["records"]} == dict(per_class)
    assert {k: v["mentions"] for k, v in classes.items() if v["mentions"]} == dict(mentions)
    for key, c in classes.items():
        assert {bytes.fromhex(e[2:].rjust(16, "0")) for e in c["examples"]} <= oids[key]

    item = classes[sample_fs.item]
    assert item["records"] == sample_fs.n_items
    assert item["status"] == "ok" and item["how"] == "imported"
    assert len(item["examples"]) == 3
    plain = classes[sample_fs.plain]
    assert (plain["records"], plain["mentions"]) == (0, sample_fs.n_items + 2)
    assert plain["examples"] == []
    gone = classes[sample_fs.gone]
    assert gone["records"] == 1 and gone["status"] == "broken"
    assert gone["examples"] == [oid_repr(sample_fs.oids["gone"])]
    assert sample_fs.gone_module in gone["error"] and "No module named" in gone["error"]
    assert classes[("persistent.mapping", "PersistentMapping")]["examples"] == ["0x00"]
    assert classes[("persistent.list", "PersistentList")]["examples"] == [
        oid_repr(sample_fs.oids["list"])]
    assert db_doc["unreadable"] == []


def test_missing_modules_are_findings_not_errors(sample_fs):
    """Without the helper module on the path its classes are broken, exit status 0."""
    doc = run_json(str(sample_fs.path), "--no-entry-points", env=sample_fs.env(importable=False))
    check_document_shape(doc)
    classes = by_name(doc["databases"][0])
    for key in (sample_fs.item, sample_fs.plain, sample_fs.gone):
        assert classes[key]["status"] == "broken"
        assert "No module named" in classes[key]["error"]
    assert classes[sample_fs.item]["records"] == sample_fs.n_items
    assert classes[("persistent.list", "PersistentList")]["status"] == "ok"


def test_census_never_imports_missing_modules_in_process(sample_fs):
    """In-process run: the missing modules do not appear in sys.modules afterwards."""
    before = set(sys.modules)
    result = CliRunner().invoke(main, ["classes", "--json", "--no-progress", str(sample_fs.path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert by_name(doc["databases"][0])[sample_fs.gone]["status"] == "broken"
    for mod in (sample_fs.module, sample_fs.gone_module):
        assert mod not in sys.modules
    assert not {m for m in set(sys.modules) - before if m.startswith("pcl_")}


def test_census_in_process_with_module_importable(sample_importable):
    """An importable module the operator trusts resolves ok; untrusted, it is
    found but not imported (so not broken) and its code never runs."""
    sample = sample_importable
    storage = FileStorage(str(sample.path), read_only=True)
    try:
        registry = pclasses.ClassRegistry()
        census = pclasses.take_census(storage, registry, jobs=1)
        status = {(c.module, c.name): c.status for c in census.classes}
        assert status[sample.item] == "not-imported" and status[sample.gone] == "broken"
        assert sample.module not in sys.modules
        census = pclasses.take_census(storage, registry, jobs=1, trust=[sample.module])
        assert_census_matches(census, storage)
        status = {(c.module, c.name): c.status for c in census.classes}
        assert status[sample.item] == "ok" and status[sample.gone] == "broken"
        assert [c.dotted for c in census.broken] == [f"{sample.gone_module}.Gone"]
        assert sample.gone_module not in sys.modules
    finally:
        storage.close()


def test_classes_reads_a_locked_filestorage(sample_fs):
    """A running application holds the lock; the read-only census still works."""
    app = ZODB.DB(FileStorage(str(sample_fs.path)))
    try:
        result = CliRunner().invoke(main, ["classes", "--json", str(sample_fs.path)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["databases"][0]["records"] == 323
    finally:
        app.close()


def test_census_does_not_run_pickles(tmp_path):
    """A record whose state would call os.system if unpickled is only read."""
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.fs"
    db = pclasses.open(path)
    with db.transaction() as conn:
        conn.root()["x"] = 1
    storage = db.storage
    oid = storage.new_oid()
    data = pickle.dumps(PersistentMapping, 3) + pickle.dumps({"data": {"evil": Evil()}}, 3)
    store_raw(storage, oid=oid, data=data)
    db.close()
    doc = run_json(str(path))
    assert not marker.exists()
    classes = by_name(doc["databases"][0])
    system = classes[(os.system.__module__, "system")]
    assert system["mentions"] == 1 and system["records"] == 0
    assert classes[("persistent.mapping", "PersistentMapping")]["records"] == 2
    assert not marker.exists()


# ---------------------------------------------------------------------------
# the census against brute force, on every storage kind


def _populate(db, n: int = 60, revisions: int = 3) -> None:
    """Objects of several classes, modified over several transactions."""
    with db.transaction() as conn:
        root = conn.root()
        root["tree"] = OOBTree()
        root["list"] = PersistentList()
    for k in range(n // 20):
        with db.transaction() as conn:
            root = conn.root()
            for i in range(20):
                root["tree"][k * 20 + i] = PersistentMapping({"v": 0, "when": _Stamp(0)})
            root["list"].append(PersistentList([k]))
    for r in range(1, revisions):
        with db.transaction() as conn:
            tree = conn.root()["tree"]
            for i in range(0, n, 2):
                # the old revision mentions _Stamp; the new one mentions _Other
                tree[i]["when"] = _Other(r)
                tree[i]["v"] = r


class _Stamp:
    def __init__(self, v):
        self.v = v


class _Other:
    def __init__(self, v):
        self.v = v


def test_census_agrees_with_brute_force_on_each_storage_kind(storage_factory):
    storage = storage_factory()
    db = ZODB.DB(storage)
    try:
        _populate(db)
        census = pclasses.take_census(db.storage, jobs=1)
        assert_census_matches(census, db.storage)
        counts = {(c.module, c.name): (c.records, c.mentions) for c in census.classes}
        assert counts[("persistent.mapping", "PersistentMapping")][0] == 61
        assert counts[(__name__, "_Other")] == (0, 30)
        assert counts[(__name__, "_Stamp")] == (0, 30)  # only current revisions count
        assert census.records == len(current_records(db.storage))
    finally:
        db.close()


def test_census_on_each_storage_kind_is_the_same(storage_factory):
    results = []
    for _ in range(2):
        db = ZODB.DB(storage_factory())
        try:
            _populate(db, n=40)
            results.append(pclasses.take_census(db.storage))
        finally:
            db.close()
    assert_same_census(*results)


# ---------------------------------------------------------------------------
# parallel census


@pytest.fixture(scope="module")
def big_fs(tmp_path_factory) -> Path:
    """A FileStorage above the real PARALLEL_MIN_RECORDS threshold, with history."""
    path = tmp_path_factory.mktemp("big") / "big.fs"
    db = ZODB.DB(FileStorage(str(path)))
    try:
        with db.transaction() as conn:
            conn.root()["tree"] = OOBTree()
        per_txn = 1000
        n = pclasses.scan.PARALLEL_MIN_RECORDS + per_txn
        for k in range(n // per_txn):
            with db.transaction() as conn:
                tree = conn.root()["tree"]
                for i in range(per_txn):
                    tree[k * per_txn + i] = PersistentMapping({"i": i, "s": _Stamp(i)})
        with db.transaction() as conn:  # later revisions of a few thousand objects
            tree = conn.root()["tree"]
            for i in range(0, n, 7):
                tree[i]["s"] = _Other(i)
    finally:
        db.close()
    return path


def _count_forks(monkeypatch) -> list[int]:
    forks: list[int] = []
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(pclasses.scan.os, "fork", fork)
    return forks


def test_parallel_census_equals_single_process_above_threshold(big_fs, monkeypatch):
    storage = FileStorage(str(big_fs), read_only=True)
    try:
        assert len(storage) >= pclasses.scan.PARALLEL_MIN_RECORDS
        single = pclasses.take_census(storage, jobs=1)
        forks = _count_forks(monkeypatch)
        double = pclasses.take_census(storage, jobs=2)
        assert len(forks) == 1  # really ran in two processes
        quad = pclasses.take_census(storage, jobs=4)
        assert len(forks) >= 3
        assert_same_census(single, double)
        assert_same_census(single, quad)
        assert single.to_dict() == double.to_dict() == quad.to_dict()
        counts = {(c.module, c.name): (c.records, c.mentions) for c in single.classes}
        n = len(storage)
        assert single.records == n
        assert sum(c.records for c in single.classes) == n
        mappings = counts[("persistent.mapping", "PersistentMapping")][0] - 1  # minus the root
        assert counts[(__name__, "_Other")] == (0, len(range(0, mappings, 7)))
        assert counts[(__name__, "_Stamp")] == (0, mappings - len(range(0, mappings, 7)))
    finally:
        storage.close()


def test_parallel_census_equals_brute_force_above_threshold(big_fs):
    storage = FileStorage(str(big_fs), read_only=True)
    try:
        assert_census_matches(pclasses.take_census(storage, jobs=3), storage)
    finally:
        storage.close()


@pytest.fixture
def history_fs(tmp_path) -> Path:
    """Several revisions per object, and objects whose creation was undone."""
    path = tmp_path / "history.fs"
    db = ZODB.DB(FileStorage(str(path)))
    try:
        _populate(db, n=600, revisions=5)
        with db.transaction() as conn:
            conn.root()["doomed"] = PersistentMapping(
                {i: PersistentList([_Stamp(i)]) for i in range(50)})
        undo_id = db.undoLog(0, 1)[0]["id"]
        db.undo(undo_id)
        transaction.commit()
        with db.transaction() as conn:
            assert "doomed" not in conn.root()
    finally:
        transaction.abort()
        db.close()
    return path


def test_parallel_census_with_history(history_fs, monkeypatch):
    monkeypatch.setattr(pclasses.scan, "PARALLEL_MIN_RECORDS", 100)
    storage = FileStorage(str(history_fs), read_only=True)
    try:
        single = pclasses.take_census(storage, jobs=1)
        assert_census_matches(single, storage)
        forks = _count_forks(monkeypatch)
        for jobs in (2, 3, 4):
            parallel = pclasses.take_census(storage, jobs=jobs)
            assert_same_census(single, parallel)
            assert parallel.to_dict() == single.to_dict()
        assert len(forks) == 1 + 2 + 3
        counts = {(c.module, c.name): (c.records, c.mentions) for c in single.classes}
        # 600 mappings + root + the undone "doomed" mapping is gone again
        assert counts[("persistent.mapping", "PersistentMapping")][0] == 601
        assert counts[(__name__, "_Other")] == (0, 300)
        assert counts[(__name__, "_Stamp")] == (0, 300)
        # records whose creation was undone have no current data and do not count
        assert counts[("persistent.list", "PersistentList")][0] == 1 + 30
    finally:
        storage.close()


def _counts_only(doc: dict) -> list[tuple]:
    return [(c["module"], c["name"], c["records"], c["mentions"], c["examples"])
            for c in doc["databases"][0]["classes"]]


def test_cli_parallel_census_matches_single_process(big_fs):
    """``--jobs 2`` (forked workers) and ``--jobs 1`` print the same census."""
    single = run_json(str(big_fs), "--no-progress", "--jobs", "1")
    parallel = run_json(str(big_fs), "--no-progress", "--jobs", "2")
    assert single == parallel
    storage = FileStorage(str(big_fs), read_only=True)
    try:
        library = pclasses.take_census(storage, jobs=1).to_dict()
    finally:
        storage.close()
    assert single["databases"][0]["records"] == library["records"]
    assert _counts_only(single) == _counts_only({"databases": [library]})


@pytest.mark.parametrize("jobs", [1, 2])
def test_census_progress_reports(history_fs, monkeypatch, jobs):
    monkeypatch.setattr(pclasses.scan, "PARALLEL_MIN_RECORDS", 100)
    calls: list[tuple[int, int | None]] = []
    storage = FileStorage(str(history_fs), read_only=True)
    try:
        census = pclasses.take_census(storage, jobs=jobs,
                                      progress=lambda done, total: calls.append((done, total)))
        assert census.to_dict() == pclasses.take_census(storage, jobs=1).to_dict()
        total = len(storage)
    finally:
        storage.close()
    assert calls
    dones = [d for d, _ in calls]
    assert dones == sorted(dones)
    for done, t in calls:
        assert t in (None, total)
        assert 0 <= done <= total
    assert calls[-1][1] == total


# ---------------------------------------------------------------------------
# other target forms


def test_classes_multi_database_zconfig(sample_fs, tmp_path):
    other = tmp_path / "other.fs"
    db = ZODB.DB(FileStorage(str(other)))
    with db.transaction() as conn:
        conn.root()["l"] = PersistentList([PersistentList(), PersistentList()])
    db.close()
    conf = tmp_path / "multi.conf"
    conf.write_text(f"""\
<zodb main>
  <filestorage>
    path {sample_fs.path}
  </filestorage>
</zodb>
<zodb catalog>
  <filestorage>
    path {other}
  </filestorage>
</zodb>
""")
    doc = run_json(str(conf), env=sample_fs.env(importable=True))
    check_document_shape(doc)
    names = [d["name"] for d in doc["databases"]]
    assert sorted(names) == ["catalog", "main"]
    dbs = {d["name"]: d for d in doc["databases"]}
    assert dbs["main"]["records"] == 323
    assert by_name(dbs["main"])[sample_fs.item]["records"] == sample_fs.n_items
    assert dbs["catalog"]["records"] == 4
    assert by_name(dbs["catalog"])[("persistent.list", "PersistentList")]["records"] == 3
    # the human form reports both too
    result = run("classes", str(conf), env=sample_fs.env(importable=True))
    assert result.returncode == 0, result.stderr
    assert "database 'main': 323 records" in result.stdout
    assert "database 'catalog': 4 records" in result.stdout


@pytest.mark.zeo
def test_classes_over_zeo(zeo_uri):
    db = pclasses.open(zeo_uri)
    try:
        with db.transaction() as conn:
            root = conn.root()
            root["tree"] = OOBTree({i: PersistentList([i]) for i in range(100)})
    finally:
        db.close()
    doc = run_json(zeo_uri)
    check_document_shape(doc)
    db_doc = doc["databases"][0]
    classes = by_name(db_doc)
    assert classes[("persistent.list", "PersistentList")]["records"] == 100
    assert classes[("BTrees.OOBTree", "OOBTree")]["records"] == 1
    assert all(c["status"] == "ok" for c in db_doc["classes"])
    assert db_doc["records"] == sum(c["records"] for c in db_doc["classes"])


@pytest.mark.zeo
def test_census_over_zeo_equals_census_of_served_file(zeo_server):
    address, name = zeo_server.fresh()
    client = zeo_server.client(address, name)
    db = ZODB.DB(client)
    try:
        _populate(db, n=100, revisions=3)
        over_wire = pclasses.take_census(db.storage)
        assert_census_matches(over_wire, db.storage)
        # the server's own file, read directly (read-only takes no lock)
        served = FileStorage(str(zeo_server.path_of(address, name)), read_only=True)
        try:
            # same counts and statuses (examples may differ: ZEO yields in oid order)
            assert_same_census(over_wire, pclasses.take_census(served, jobs=1))
        finally:
            served.close()
    finally:
        db.close()


def test_classes_memory_uri():
    result = CliRunner().invoke(main, ["classes", "--json", "memory://"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["databases"][0]["records"] == 1


# ---------------------------------------------------------------------------
# errors


def _assert_clean_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == EXIT_ERROR, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pclasses: error: ")
    assert result.stdout == ""
    return lines[0]


def test_error_missing_file(tmp_path):
    missing = tmp_path / "missing.fs"
    line = _assert_clean_error(run("classes", str(missing)))
    assert str(missing) in line and "no such file" in line
    assert list(tmp_path.iterdir()) == []


def test_error_garbage_file(tmp_path):
    garbage = tmp_path / "garbage.fs"
    garbage.write_bytes(os.urandom(1000).replace(b"FS", b"xx"))
    before = garbage.read_bytes()
    line = _assert_clean_error(run("classes", "--json", str(garbage)))
    assert "not a FileStorage" in line
    assert garbage.read_bytes() == before


def test_error_directory(tmp_path):
    line = _assert_clean_error(run("classes", str(tmp_path)))
    assert "directory" in line


def test_error_unknown_uri_scheme():
    line = _assert_clean_error(run("classes", "nosuchscheme://x/y"))
    assert "unknown URI scheme" in line


@pytest.mark.zeo
def test_error_zeo_server_not_running():
    uri = f"zeo://127.0.0.1:{_closed_port()}?wait_timeout=1"
    line = _assert_clean_error(run("classes", uri))
    assert uri in line


def _closed_port() -> int:
    with socket.socket() as s:  # nothing listens on it once the probe socket is closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["missing", "syntax"])
def test_error_zconfig(tmp_path, case):
    conf = tmp_path / "zodb.conf"
    if case == "syntax":
        conf.write_text("<zodb>\n  <filestorage\n")
    result = CliRunner().invoke(main, ["classes", str(conf)])
    assert result.exit_code == EXIT_ERROR
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("pclasses: error: cannot open ")


def test_error_empty_file_in_process(tmp_path):
    empty = tmp_path / "empty.fs"
    empty.write_bytes(b"")
    result = CliRunner().invoke(main, ["classes", str(empty)])
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("pclasses: error: ")
    assert empty.read_bytes() == b""


@pytest.mark.parametrize("args", [["classes"], ["classes", "--no-such-option", "x.fs"],
                                  ["no-such-command"], ["classes", "a.fs", "b.fs"]])
def test_bad_usage_exits_2(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == EXIT_USAGE
    assert "Usage:" in result.stderr
    assert "Traceback" not in result.output


def test_bad_usage_subprocess():
    result = run("classes")
    assert result.returncode == EXIT_USAGE
    assert "Missing argument 'TARGET'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# ---------------------------------------------------------------------------
# unreadable records




def test_unreadable_records_are_listed_by_oid(sample_fs):
    storage = FileStorage(str(sample_fs.path))
    try:
        not_a_class = storage.new_oid()
        store_raw(storage, oid=not_a_class, data=pickle.dumps(42, 3) + pickle.dumps({}, 3))
        garbage = storage.new_oid()
        store_raw(storage, oid=garbage, data=b"\x80\x03\xff\xfe garbage, not a pickle")
    finally:
        storage.close()
    result = run("classes", "--json", str(sample_fs.path), env=sample_fs.env())
    assert result.returncode == EXIT_OK, result.stderr
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    check_document_shape(doc)
    db_doc = doc["databases"][0]
    assert db_doc["records"] == 325  # the unreadable ones are records too
    unreadable = {u["oid"]: u["reason"] for u in db_doc["unreadable"]}
    assert set(unreadable) == {oid_repr(not_a_class), oid_repr(garbage)}
    assert [u["oid"] for u in db_doc["unreadable"]] == sorted(
        unreadable, key=lambda r: int(r, 16))
    # everything else is still listed, with the same counts as before
    classes = by_name(db_doc)
    assert classes[sample_fs.item]["records"] == sample_fs.n_items
    assert classes[sample_fs.gone]["status"] == "broken"
    assert sum(c["records"] for c in db_doc["classes"]) == 323
    # the table form names them by oid as well
    result = run("classes", str(sample_fs.path), env=sample_fs.env())
    assert result.returncode == EXIT_OK
    assert f"unreadable record {oid_repr(not_a_class)}: " in result.stdout
    assert f"unreadable record {oid_repr(garbage)}: " in result.stdout
    assert f"{sample_fs.module}.Item" in result.stdout


def test_unreadable_record_in_process_census(tmp_path):
    db = pclasses.open(tmp_path / "u.fs")
    with db.transaction() as conn:
        conn.root()["l"] = PersistentList([1])
    oid = db.storage.new_oid()
    store_raw(db.storage, oid=oid, data=pickle.dumps(42, 3) + pickle.dumps({}, 3))
    try:
        census = pclasses.take_census(db.storage)
    finally:
        db.close()
    assert [u.oid for u in census.unreadable] == [oid]
    assert census.unreadable[0].reason
    assert census.to_dict()["unreadable"][0]["oid"] == oid_repr(oid) == "0x02"
    assert {c.dotted for c in census.classes} == {
        "persistent.mapping.PersistentMapping", "persistent.list.PersistentList"}


# ---------------------------------------------------------------------------
# src bugs


def test_classes_file_uri_missing_is_an_error_and_creates_nothing(tmp_path):
    missing = tmp_path / "missing.fs"
    result = CliRunner().invoke(main, ["classes", missing.as_uri()])
    try:
        assert result.exit_code == EXIT_ERROR
    finally:
        assert not missing.exists()


def test_classes_zconfig_reads_a_locked_filestorage(sample_fs, tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text(f"<filestorage>\n  path {sample_fs.path}\n</filestorage>\n")
    app = ZODB.DB(FileStorage(str(sample_fs.path)))
    try:
        result = CliRunner().invoke(main, ["classes", "--json", str(conf)])
        assert result.exit_code == 0, result.stderr
    finally:
        app.close()


# ---------------------------------------------------------------------------
# any input: exit 0 or 1, never a traceback, names escaped

#: Names a hostile record can carry: escape sequences (CSI, OSC title change,
#: bell), rich markup (``[/]`` makes rich raise when it is parsed), a C1
#: control (0x9b is CSI on some terminals), a bidirectional override.
NASTY_MODULE = "evil\x1b[31m[bold]mod[/]\x07"
NASTY_NAME = "Cls\u202e\x9b2J"
NASTY_KEY = "\x1b]0;pwned\x07[bold red]key[/bold red]\n2nd line"


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("FORCE_COLOR", None)
    env.pop("PCLASSES_DEBUG", None)
    env["NO_COLOR"] = "1"
    return env


def _strings(doc: object) -> set[str]:
    """Every string in a JSON document (keys and values)."""
    if isinstance(doc, dict):
        return set(doc) | {s for v in doc.values() for s in _strings(v)}
    if isinstance(doc, list):
        return {s for v in doc for s in _strings(v)}
    return {doc} if isinstance(doc, str) else set()


def _terminal_safe(text: str) -> None:
    """Nothing in ``text`` is interpreted by a terminal: every character is
    printable (or the newline that ends a line)."""
    bad = sorted({hex(ord(ch)) for ch in text if ch != "\n" and not ch.isprintable()})
    assert bad == [], f"unescaped characters {bad} in {text!r}"


def _nasty_fs(path: Path) -> bytes:
    """A FileStorage whose root holds, under a hostile key, an object of a
    hostile (missing) class; returns that object's oid."""
    db = ZODB.DB(FileStorage(str(path)))
    try:
        conn = db.open()
        conn.root()[NASTY_KEY] = PersistentMapping()
        transaction.commit()
        oid = conn.root()[NASTY_KEY]._p_oid
        conn.close()
    finally:
        db.close()
    storage = FileStorage(str(path))
    try:
        from ZODB.utils import p64, u64

        t = TransactionMetaData()
        storage.tpc_begin(t)
        old = storage.load(oid)[1]
        klass = (b"c" + NASTY_MODULE.encode() + b"\n" + NASTY_NAME.encode() + b"\n.")
        storage.store(oid, old, klass + pickle.dumps({"x": 1}, 3), "", t)
        storage.tpc_vote(t)
        storage.tpc_finish(t)
        assert u64(oid) == 1 and p64(1) == oid
    finally:
        storage.close()
    return oid


@pytest.fixture
def nasty_fs(tmp_path) -> Path:
    path = tmp_path / "nasty.fs"
    _nasty_fs(path)
    return path


@pytest.mark.parametrize("args", [["classes"], ["classes", "--json"], ["broken"],
                                  ["broken", "--json"], ["xrefs"]])
def test_names_from_data_reach_the_terminal_escaped(nasty_fs, args):
    """Class names, module names and keys read from records are printed with
    their control characters escaped and their rich markup as plain text:
    the terminal interprets nothing, and one finding stays one line."""
    result = subprocess.run([str(SCRIPT), *args, str(nasty_fs)], capture_output=True,
                            text=True, env=_quiet_env(), timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == EXIT_OK, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    _terminal_safe(result.stdout)
    _terminal_safe(result.stderr)
    if args[0] == "xrefs":
        return
    if "--json" in args:  # JSON escapes by itself, and keeps the exact names
        assert NASTY_MODULE in _strings(json.loads(result.stdout))
        return
    assert "\\x1b[31m[bold]mod[/]\\x07" in result.stdout  # markup printed as is
    assert "Cls\\u202e\\x9b2J" in result.stdout
    if args == ["broken"]:
        example = [line for line in result.stdout.splitlines() if "pwned" in line]
        assert len(example) == 1, result.stdout
        assert "\\x1b]0;pwned\\x07[bold red]key[/bold red]\\n2nd line" in example[0]


def test_error_lines_escape_names_from_data(nasty_fs, tmp_path):
    """An expected error whose message carries names from a file is one
    escaped line on stderr: importing an export that needs the hostile class
    into a database that lacks it."""
    exported = tmp_path / "nasty.pclasses"
    result = subprocess.run([str(SCRIPT), "export", str(nasty_fs), "0x01", "-o", str(exported)],
                            capture_output=True, text=True, env=_quiet_env(), timeout=120,
                            stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stdout + result.stderr
    _terminal_safe(result.stdout + result.stderr)
    if result.returncode != EXIT_OK:  # exporting a broken object may be refused: one line
        assert len(result.stderr.splitlines()) == 1, result.stderr
        return
    target = _empty_fs(tmp_path / "target.fs")
    result = subprocess.run([str(SCRIPT), "import", str(target), str(exported)],
                            capture_output=True, text=True, env=_quiet_env(), timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == EXIT_ERROR  # the class is missing in the target
    assert "Traceback" not in result.stdout + result.stderr
    _terminal_safe(result.stdout + result.stderr)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("pclasses: error: ")
    assert "Cls\\u202e\\x9b2J" in result.stderr


def _empty_fs(path: Path) -> Path:
    """A FileStorage with nothing but its root."""
    ZODB.DB(FileStorage(str(path))).close()
    return path


def _hostile_input(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.fs"
    if kind == "garbage":
        path.write_bytes(b"\x80\x03" + bytes(range(256)) * 4)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _nasty_fs(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        for suffix in (".index", ".lock", ".tmp"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    elif kind == "nasty":
        _nasty_fs(path)
    elif kind == "export-garbage":
        path = tmp_path / "garbage.pclasses"
        path.write_bytes(b"PCLASSES" + os.urandom(64))
    return path


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "nasty", "export-garbage"])
@pytest.mark.parametrize("command", ["classes", "broken", "xrefs", "repair", "import"])
def test_every_command_exits_0_or_1_on_any_input(command, kind, tmp_path):
    """``classes``, ``broken``, ``xrefs``, ``repair`` and ``import`` end with
    exit status 0 or 1 on hostile input, never by a signal, never with a
    traceback; a failure is one line on stderr."""
    bad = _hostile_input(kind, tmp_path)
    if command == "import":
        args = ["import", str(_empty_fs(tmp_path / "target.fs")), str(bad)]
    elif command == "repair":
        args = ["repair", "--dry-run", "--rename", "a.B=c.D", str(bad)]
    else:
        args = [command, str(bad)]
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                            env=_quiet_env(), timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode in (EXIT_OK, EXIT_ERROR), (result.returncode, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    _terminal_safe(result.stdout + result.stderr)
    if result.returncode == EXIT_ERROR:
        lines = result.stderr.splitlines()
        assert lines and lines[-1].startswith("pclasses: error: "), result.stderr
        assert len([ln for ln in lines if not ln.startswith("pclasses: warning: ")]) == 1


def _boom(exc: BaseException):
    def take_census(*args, **kw):
        raise exc
    return take_census


INTERNAL = "pclasses: internal error: "


@pytest.mark.parametrize("exc, expected", [
    (ZeroDivisionError("boom \x1b[2J"), INTERNAL + "ZeroDivisionError: boom \\x1b[2J"),
    (RecursionError("maximum recursion depth exceeded"), INTERNAL + "RecursionError"),
    (SystemExit(3), INTERNAL + "SystemExit: 3"),
    (KeyboardInterrupt(), "pclasses: error: interrupted"),
])
def test_unexpected_exceptions_become_one_line(sample_fs, monkeypatch, exc, expected):
    """An exception nobody expected (a bug, a foreign SystemExit, an
    interruption) ends the command with exit 1 and one escaped line on
    stderr, without a traceback."""
    import pclasses.census

    monkeypatch.delenv("PCLASSES_DEBUG", raising=False)
    monkeypatch.setattr(pclasses.census, "take_census", _boom(exc))
    result = CliRunner().invoke(main, ["classes", "--no-progress", str(sample_fs.path)])
    assert result.exit_code == EXIT_ERROR
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    _terminal_safe(result.stderr)


def test_debug_variable_shows_the_traceback(sample_fs, monkeypatch):
    """With PCLASSES_DEBUG=1 an internal error also prints its traceback (for
    a bug report); the last line is still the one-line message."""
    import pclasses.census

    monkeypatch.setenv("PCLASSES_DEBUG", "1")
    monkeypatch.setattr(pclasses.census, "take_census", _boom(ZeroDivisionError("boom")))
    result = CliRunner().invoke(main, ["classes", "--no-progress", str(sample_fs.path)])
    assert result.exit_code == EXIT_ERROR
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1] == "pclasses: internal error: ZeroDivisionError: boom"


@pytest.mark.parametrize("value, shown", [
    ("plain.Name", "plain.Name"),
    ("a\x1b[31mb", "a\\x1b[31mb"),
    ("line\nbreak\ttab\r", "line\\nbreak\\ttab\\r"),
    ("rtl\u202eoverride\u2028sep", "rtl\\u202eoverride\\u2028sep"),
    ("c1\x9bcsi\x7fdel", "c1\\x9bcsi\\x7fdel"),
    ("surrogate\udcff", "surrogate\\udcff"),
    ("[bold]markup[/]", "[bold]markup[/]"),
    ("café ✓", "café ✓"),
])
def test_printable_escapes_what_a_terminal_would_interpret(value, shown):
    """The one rendering helper of the CLI escapes control, format and
    separator characters and keeps everything printable as it is."""
    from pclasses.cli import printable

    assert printable(value) == shown
    _terminal_safe(printable(value))


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_import_of_a_file_that_cannot_be_read_exits_1(tmp_path, what):
    """``pclasses import`` of a missing file or a directory is an error of the
    input (exit 1, one line), not of the command line, and changes nothing."""
    target = _empty_fs(tmp_path / "target.fs")
    before = target.read_bytes()
    bad = tmp_path / "missing.pclasses" if what == "missing" else tmp_path
    result = CliRunner().invoke(main, ["import", str(target), str(bad)])
    assert result.exit_code == EXIT_ERROR, result.output
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("pclasses: error: ")
    assert target.read_bytes() == before
