"""Claims about the compact referrer map behind ``find_broken``'s paths.

The inventory keeps each object's first four referrers (in scan order) in
arrays indexed by oid instead of a dict of bytes, and a scan split over
processes replays its workers' logs in order.  Users rely on the result
being the same as before: the same paths and referrers whatever the number
of processes, however many objects refer to one object, and on memory that
stays a few bytes an object.
"""

from __future__ import annotations

import importlib
import random
import sys
import textwrap
from collections import deque
from pathlib import Path

import pytest
import transaction
import ZODB
from persistent.list import PersistentList
from ZODB.FileStorage import FileStorage

import pclasses.scan
from pclasses.inventory import edge_label, find_broken
from pclasses.oidset import DENSE_LIMIT, NO_OID
from pclasses.record.analyze import EdgeKind
from pclasses.record.edges import edges
from pclasses.record.reader import read_record
from pclasses.referrers import REFERRERS, ReferrerLog, Referrers
from pclasses.scan import iter_records


def test_referrers_keep_the_first_four_distinct_in_order():
    """Each oid keeps its first four distinct referrers, in the order added."""
    r = Referrers()
    for parent in (9, 9, 3, 7, 3, 5, 11, 2):
        r.add(100, parent)
    r.add(4, 1)
    assert r.get(100) == [9, 3, 7, 5]
    assert r.get(4) == [1]
    assert r.get(5) == [] and r.get(10**6) == []


def test_referrers_cost_eight_bytes_an_object_with_one_referrer():
    """An object referred to once costs 8 bytes, whatever the database's size."""
    r = Referrers()
    n = 100_000
    for child in range(1, n):
        r.add(child, child - 1)
    assert r.nbytes <= 8 * 2 * n  # the arrays grow by doubling
    assert len(r.more) == 0
    assert r.get(n - 1) == [n - 2]


def test_referrers_take_large_oids():
    """Oids beyond 4 bytes and beyond the dense range are kept exactly."""
    r = Referrers()
    r.add(3, 1)
    r.add(3, 1 << 40)
    r.add(5, 1 << 33)
    r.add(DENSE_LIMIT + 7, 2)
    r.add(DENSE_LIMIT + 7, 1 << 50)
    r.add(6, NO_OID)  # no oid: ignored
    assert r.get(3) == [1, 1 << 40]
    assert r.get(5) == [1 << 33]
    assert r.get(DENSE_LIMIT + 7) == [2, 1 << 50]
    assert r.get(6) == []


def test_a_replayed_log_gives_the_same_map():
    """A worker's log (pickled across processes) replays to the same map."""
    import pickle

    rng = random.Random(5)
    # each parent (a record) names a child once, as the census adds them
    pairs = [(c, p) for p in range(2000) for c in rng.sample(range(200), 2)]
    direct, log = Referrers(), ReferrerLog()
    for child, parent in pairs:
        direct.add(child, parent)
        log.add(child, parent)
    log.add(1 << 40, 3)  # beyond the dense range
    direct.add(1 << 40, 3)
    replayed = Referrers()
    replayed.replay(pickle.loads(pickle.dumps(log)))
    for child in [*range(200), 1 << 40]:
        assert replayed.get(child) == direct.get(child)
    assert all(len(direct.get(c)) <= REFERRERS for c in range(200))


# ---------------------------------------------------------------------------
# find_broken over a real FileStorage whose objects have many referrers


def _build(tmp_path: Path) -> tuple[Path, str]:
    """A graph of objects of a class whose module is gone afterwards.

    Objects under the root link to random others (up to ten referrers each,
    cycles included); a cluster hangs only from itself (no path), with an
    object referring to itself and one with seven referrers."""
    module = f"h29_gone_{tmp_path.name[-12:].replace('-', '_')}"
    directory = tmp_path / "mods"
    directory.mkdir()
    (directory / f"{module}.py").write_text(textwrap.dedent("""
        from persistent import Persistent

        class Node(Persistent):
            def __init__(self, n):
                self.n = n
                self.links = []
    """))
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    try:
        mod = importlib.import_module(module)
        path = tmp_path / "Data.fs"
        db = ZODB.DB(FileStorage(str(path)))
        rng = random.Random(16)
        with db.transaction() as conn:
            nodes = [mod.Node(i) for i in range(300)]
            conn.root()["hub"] = PersistentList(nodes[:40])
            for node in nodes:
                node.links = rng.sample(nodes, rng.randrange(0, 6))
                conn.add(node)
            lost = [mod.Node(1000 + i) for i in range(12)]
            for node in lost:
                node.links = rng.sample(lost, 3)
                conn.add(node)
            lost[0].links.append(lost[0])  # itself
            for node in lost[1:8]:
                node.links.append(lost[1])  # seven referrers
        transaction.abort()
        db.close()
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop(module, None)
    return path, module


def _expected(storage) -> dict[bytes, tuple[str | None, list[bytes]]]:
    """The inventory's rule, computed plainly: first four referrers in oid
    order, a breadth-first chain through them to the root, each step named."""
    referrers: dict[bytes, list[bytes]] = {}
    every: dict[bytes, list[bytes]] = {}  # up to ten, itself included
    for oid, data in iter_records(storage):
        for e in edges(data, oid):
            if e.database is None and e.kind in (EdgeKind.OID, EdgeKind.OID_CLASS):
                all_ = every.setdefault(e.oid, [])
                if oid not in all_ and len(all_) < 10:
                    all_.append(oid)
                if e.oid == oid:
                    continue
                known = referrers.setdefault(e.oid, [])
                if oid not in known and len(known) < REFERRERS:
                    known.append(oid)
    result = {}
    for oid, _data in iter_records(storage):
        back: dict[bytes, bytes | None] = {oid: None}
        queue = deque([oid])
        chain = None
        while queue:
            current = queue.popleft()
            if current == b"\0" * 8:
                chain = [current]
                while back[chain[-1]] is not None:
                    chain.append(back[chain[-1]])
                break
            for parent in referrers.get(current, []):
                if parent not in back:
                    back[parent] = current
                    queue.append(parent)
        path = None
        if chain is not None:
            chain.reverse()
            labels = []
            for child, parent in zip(chain, chain[1:]):
                info = read_record(storage.load(parent)[0], parent)
                labels.append(edge_label((info.klass.pair or ("", ""), info.state), child))
            path = "root" + "".join(reversed(labels))
        result[oid] = (path, referrers.get(oid, []) if path else every.get(oid, []))
    return result


@pytest.mark.parametrize("jobs", [1, 2])
def test_paths_and_referrers_follow_the_first_four_referrers(tmp_path, monkeypatch, jobs):
    """Every example's path is the breadth-first chain through each object's
    first four referrers (in oid order) and its referrers are those four,
    whether the scan runs in one process or is split over two."""
    path, module = _build(tmp_path)
    monkeypatch.setattr(pclasses.scan, "PARALLEL_MIN_RECORDS", 10)
    storage = FileStorage(str(path), read_only=True)
    try:
        expected = _expected(storage)
        report = find_broken(storage, examples=1000, jobs=jobs)
    finally:
        storage.close()
    (node,) = [c for c in report.classes if c.module == module]
    assert len(node.examples) == 312
    with_path = [e for e in node.examples if e.path is not None]
    assert 0 < len(with_path) < 312
    for e in node.examples:
        path_, referrers = expected[e.oid]
        assert e.path == path_
        # with a path: the first four others; without: all, itself included
        assert e.referrers == referrers
    lost = [e for e in node.examples if e.path is None]
    assert any(e.oid in e.referrers for e in lost)  # some refer to themselves
    assert any(len(e.referrers) > REFERRERS for e in lost)


def test_a_split_scan_finds_what_one_process_finds(tmp_path, monkeypatch):
    """The whole report is the same with one process and with three."""
    path, _module = _build(tmp_path)
    monkeypatch.setattr(pclasses.scan, "PARALLEL_MIN_RECORDS", 10)
    storage = FileStorage(str(path), read_only=True)
    try:
        one = find_broken(storage, examples=50, jobs=1).to_dict()
        three = find_broken(storage, examples=50, jobs=3).to_dict()
    finally:
        storage.close()
    assert one == three


def test_the_search_forgets_what_it_saw(tmp_path):
    """Two examples that share ancestors both find their path (the search's
    seen set is emptied between examples)."""
    path, module = _build(tmp_path)
    storage = FileStorage(str(path), read_only=True)
    try:
        report = find_broken(storage, examples=1000, jobs=1)
    finally:
        storage.close()
    (node,) = [c for c in report.classes if c.module == module]
    hub = [e for e in node.examples if e.path and e.path.startswith("root['hub']")]
    assert len(hub) >= 40


@pytest.mark.parametrize("examples", [0, 1, 5])
def test_one_scan_gives_the_census_and_the_inventory(tmp_path, examples):
    """The report's single scan (broken_and_census) gives exactly the census
    take_census gives and the inventory find_broken gives."""
    from pclasses.census import take_census
    from pclasses.inventory import broken_and_census

    path, _module = _build(tmp_path)
    storage = FileStorage(str(path), read_only=True)
    try:
        broken, census = broken_and_census(storage, examples=examples, jobs=1)
        assert census.to_dict() == take_census(storage, jobs=1).to_dict()
        assert broken.to_dict() == find_broken(storage, examples=examples, jobs=1).to_dict()
    finally:
        storage.close()
