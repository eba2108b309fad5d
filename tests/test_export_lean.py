"""Export's lean walk: the C ``export_refs`` (one walk a record: its
globals and its plain references, nothing more) that export uses for
ordinary records, and the full analysis it uses for every other record,
say the same thing, and export writes the same bytes either way (issue
16: export within 3x of the census on RelStorage).

Checked on records of real databases (plain, weak, cross-database and
remote references, persistent classes and their instances, BTrees),
hand-written reference forms and globals, and thousands of truncated and
corrupted variants of them: the C function, its pure-Python twin
(``export_refs_py``, what ``PCLASSES_PURE_PYTHON=1`` tests) and a reading
from ``analyze`` + ``targets_of`` (export's full path) agree, including on
which records they refuse.
"""

from __future__ import annotations

import io
import pickle
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.utils import p64, z64

import pclasses
from pclasses.errors import PClassesError
from pclasses.record.analyze import EdgeKind, analyze
from pclasses.record.edges import export_refs_c, export_refs_py, targets_of
from pclasses.record.remote import MARKER
from pclasses.transfer import export as export_mod

sys.path.insert(0, str(Path(__file__).parent))
from test_transfer import PM_META, G, U, _classes_source, build_site  # noqa: E402
from test_tree_edges import build as build_tree  # noqa: E402

PLAIN = (EdgeKind.OID, EdgeKind.OID_CLASS)


def from_analysis(data: bytes) -> Any:
    """What export's full path (analyze, targets_of) reads from ``data``,
    in export_refs' terms: None where export_refs hands the record back."""
    if MARKER in data:
        return None
    a = analyze(data)
    if any(g.module is None or g.name is None for g in a.globals):
        return None
    metas = [i for i, g in enumerate(a.globals) if int(g.uses) & 8]
    if not metas:
        return None
    klass = (a.globals[metas[0]].module, a.globals[metas[0]].name)
    names = tuple((g.module, g.name) for i, g in enumerate(a.globals) if i != metas[0])
    oids = []
    for kind, child, database in targets_of(data, a):
        if child is None or database is not None:
            return None
        if kind in PLAIN:
            if len(child) == 8:
                oids.append(int.from_bytes(child, "big"))
        elif kind is not EdgeKind.WEAK:
            return None
    return (klass, names), tuple(oids)


def outcome(fn: Any, data: bytes) -> Any:
    try:
        return fn(data)
    except ValueError:
        return "refused"


class Pid:
    def __init__(self, pid: Any) -> None:
        self.pid = pid


class Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, Pid) else None


def state(value: Any, protocol: int = 3) -> bytes:
    buf = io.BytesIO()
    Pickler(buf, protocol).dump(value)
    return buf.getvalue()


def handmade() -> list[bytes]:
    """Records with every reference form and odd class metadata."""
    child = p64(2)
    forms = {
        "bare": Pid(child),
        "with_class": Pid((child, PersistentMapping)),
        "weak": Pid(["w", (child,)]),
        "legacy": Pid([child]),
        "multi": Pid(["m", ("other", child, PersistentMapping)]),
        "multi_n": Pid(["n", ("other", child)]),
        "short": Pid(b"\x00\x01"),
        "weak_other_db": Pid(["w", (child, "other")]),
    }
    out = [PM_META + state({"data": {k: v}}) for k, v in forms.items()]
    out.append(PM_META + state({"data": dict(forms)}))
    out.append(PM_META + state({"data": {"a": Pid(child), "b": Pid(p64(3))}}, 4))
    # class metadata as INST, as a (class, args) tuple, as strings (format 3)
    out.append(b"\x80\x03(ipersistent.mapping\nPersistentMapping\nq\x00." + state({}))
    out.append(b"\x80\x03" + G("persistent.mapping", "PersistentMapping") + b")\x86q\x00."
               + state({}))
    out.append(b"\x80\x03" + U("mod") + U("Cls") + b"\x86q\x00." + state({}))
    # a STACK_GLOBAL whose names are not literals
    out.append(b"\x80\x04" + U("persistent.mapping") + b"\x94" + U("PersistentMapping")
               + b"\x94h\x00h\x01\x93." + state({}, 4))
    out.append(PM_META + state({"data": {"text": U("RemoteReference").decode("latin-1")}}))
    return out


def real_records(tmp_path: Path) -> list[bytes]:
    out: list[bytes] = []
    db = pclasses.open(str(tmp_path / "site.fs"))
    try:
        conn = db.open()
        build_site(conn)
        _classes_source(conn)
        conn.close()
        out.extend(records_of(db.storage))
    finally:
        db.close()
    paths, _ids = build_tree(tmp_path / "tree")
    for path in paths:
        fs = FileStorage(str(path), read_only=True)
        try:
            out.extend(records_of(fs))
        finally:
            fs.close()
    return out


def records_of(storage: Any) -> list[bytes]:
    from pclasses.scan import iter_records

    return [data for _oid, data in iter_records(storage)]


def variants(data: bytes, rng: random.Random) -> list[bytes]:
    """Truncations and single-byte corruptions of ``data``."""
    out = [data[:i] for i in sorted(rng.sample(range(len(data)), min(len(data), 6)))]
    for _ in range(12):
        i = rng.randrange(len(data))
        out.append(data[:i] + bytes([rng.randrange(256)]) + data[i + 1:])
    return out


def test_lean_walk_agrees_with_the_full_analysis(tmp_path: Path):
    """On real, hand-written, truncated and corrupted records, export_refs
    (C and Python) gives what analyze + targets_of give, hands back every
    record export must read in full (remote references, cross-database and
    legacy references, class metadata that is not a global of literal
    names), and refuses (ValueError) exactly the records analyze refuses."""
    (tmp_path / "tree").mkdir()
    corpus = real_records(tmp_path) + handmade()
    rng = random.Random(16)
    corpus += [v for data in list(corpus) for v in variants(data, rng)]
    seen = {"lean": 0, "full": 0, "refused": 0}
    for data in corpus:
        want = outcome(from_analysis, data)
        assert outcome(export_refs_py, data) == want, data
        if export_refs_c is not None:
            assert outcome(lambda d: export_refs_c(d, MARKER), data) == want, data
        seen["refused" if want == "refused" else "full" if want is None else "lean"] += 1
    assert min(seen.values()) > 20, seen


def _store_raw(path: Path, raws: dict[bytes, bytes]) -> None:
    """Write records as they are (oid: data) in one transaction."""
    storage = FileStorage(str(path))
    try:
        t = TransactionMetaData()
        storage.tpc_begin(t)
        for oid, data in raws.items():
            try:
                serial = storage.load(oid)[1]
            except KeyError:
                serial = z64
            storage.store(oid, serial, data, "", t)
        storage.tpc_vote(t)
        storage.tpc_finish(t)
    finally:
        storage.close()


def _export_both(db: Any, start: Any, monkeypatch: Any) -> list[Any]:
    """Export ``start`` with the lean walk and without it: (bytes or the
    error) each time."""
    results = []
    for lean in (True, False):
        with monkeypatch.context() as m:
            if not lean:
                m.setattr(export_mod, "export_refs_c", None)
            conn = db.open()
            buf = io.BytesIO()
            try:
                export_mod.export_subtree(conn, start(conn), buf, name="x")
                results.append(buf.getvalue())
            except PClassesError as exc:
                results.append((type(exc), str(exc)))
            finally:
                conn.close()
    return results


@pytest.mark.skipif(export_refs_c is None,
                    reason="no lean walk without the C extension (or with PCLASSES_PURE_PYTHON)")
def test_export_writes_the_same_bytes_with_and_without_the_lean_walk(tmp_path: Path,
                                                                     monkeypatch: Any):
    """Export of a site with shared objects, cycles, a BTree, weak
    references, persistent classes and their instances, and of hand-written
    records with every reference form (cross-database, legacy, short oids,
    odd class metadata), writes byte-identical files whether ordinary records
    are read by the lean C walk or by the full analysis; a record neither
    can read fails the export with the same error both ways."""
    path = tmp_path / "site.fs"
    db = pclasses.open(str(path))
    conn = db.open()
    build_site(conn)
    _classes_source(conn)
    conn.close()
    for key in ("site", "docs"):
        a, b = _export_both(db, lambda c, k=key: c.root()[k], monkeypatch)
        assert isinstance(a, bytes) and a == b
    db.close()

    hand = tmp_path / "hand.fs"
    ZODB.DB(FileStorage(str(hand))).close()  # a root
    records = handmade()
    kids = {p64(10 + i): data for i, data in enumerate(records)}
    kids[p64(2)] = PM_META + state({"data": {"leaf": 1}})
    kids[p64(3)] = PM_META + state({"data": {"leaf": 2}})
    kids[p64(1)] = PM_META + state({"data": {f"r{i}": Pid(oid)
                                             for i, oid in enumerate(list(kids))}})
    _store_raw(hand, kids)
    db = ZODB.DB(FileStorage(str(hand), read_only=True))
    written = 0
    try:
        for oid in kids:  # each record as the start of an export, the whole set last
            a, b = _export_both(db, lambda c, o=oid: o, monkeypatch)
            assert a == b, oid
            written += isinstance(a, bytes)
    finally:
        db.close()
    assert written >= 10

    _store_raw(hand, {p64(3): PM_META + b"\x80\x03}\xfe."})  # an unknown opcode
    db = ZODB.DB(FileStorage(str(hand), read_only=True))
    try:
        a, b = _export_both(db, lambda c: p64(2), monkeypatch)
        assert isinstance(a, bytes) and a == b
        a, b = _export_both(db, lambda c: p64(3), monkeypatch)
        assert not isinstance(a, bytes) and a == b and "0x03" in a[1]
    finally:
        db.close()
    transaction.abort()


def test_queue_peek_gives_the_waiting_oids_in_order(monkeypatch: Any):
    """An export's RelStorage loader looks ahead in the walk's queue with
    OidQueue.peek: the waiting oids at any positions, across the queue's
    chunks, after oids were taken, and nothing past its end."""
    from pclasses.oidset import OidQueue

    monkeypatch.setattr(OidQueue, "CHUNK", 5)
    q = OidQueue()
    for i in range(23):
        q.append(i * 7)
    for _ in range(7):
        q.popleft()
    waiting = [int.from_bytes(o, "big") for o in q]
    assert waiting == [i * 7 for i in range(7, 23)]
    for start in range(20):
        for stop in range(start, 25):
            assert q.peek(start, stop) == waiting[start:stop]
    assert len(q) == 16
