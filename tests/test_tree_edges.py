"""Remote references as the record engine, ZODB, zc.zodbdgc and the seat belt
see them (issue 14)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transaction
from ZODB.serialize import referencesf

import pclasses
from pclasses.record.analyze import EdgeKind
from pclasses.record.edges import edges
from pclasses.record.reader import read_record

sys.path.insert(0, str(Path(__file__).parent))
from tree_models import Keyed, Node  # noqa: E402


def build(tmp_path: Path):
    """root['src'] holds a one-level and a two-level remote reference."""
    paths = [tmp_path / f"{n}.fs" for n in ("root", "a", "b")]
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"] = Node("src")
    conn.add(src)
    ha = tree.add(conn, "a", paths[1])
    obj = ha.root()["obj"] = Node("in a")
    hb = tree.add(ha.connection(), "b", paths[2])
    deep = hb.root()["deep"] = Node("in b")
    tm.commit()
    src.a = pclasses.get_reference(src, obj)
    src.b = pclasses.get_reference(src, deep)
    tm.commit()
    ids = {"src": src._p_oid, "ha": ha._p_oid, "hb": hb._p_oid, "obj": obj._p_oid,
           "deep": deep._p_oid}
    conn.close()
    tree.close()
    return paths, ids


def test_edges_report_remote_references(tmp_path):
    """edges() reports each remote reference as kind 'remote' with the target
    oid, class, database and the handle it goes through; ZODB's referencesf
    sees the plain reference to the handle."""
    paths, ids = build(tmp_path)
    from ZODB.FileStorage import FileStorage

    fs = FileStorage(str(paths[0]), read_only=True)
    try:
        data, _ = fs.load(ids["src"])
    finally:
        fs.close()
    got = edges(data)
    remote = [e for e in got if e.kind is EdgeKind.REMOTE]
    assert {(e.database, e.oid, e.klass, e.via) for e in remote} == {
        ("a", ids["obj"], ("tree_models", "Node"), ids["ha"]),
        ("a", ids["hb"], ("pclasses.tree.handle", "DatabaseHandle"), ids["ha"]),
        ("b", ids["deep"], ("tree_models", "Node"), ids["hb"]),
    }
    plain = [e.oid for e in got if e.kind is not EdgeKind.REMOTE]
    assert plain == referencesf(data)
    assert set(plain) == {ids["ha"]}
    kinds = {r.kind for r in read_record(data).references}
    assert EdgeKind.REMOTE in kinds


def test_zc_zodbdgc_reads_our_records(tmp_path, capsys):
    """zc.zodbdgc's multi-database check walks a tree holding remote
    references without any error."""
    zodbdgc = pytest.importorskip("zc.zodbdgc")
    paths, _ids = build(tmp_path)
    conf = tmp_path / "multi.conf"
    conf.write_text("".join(
        f"<zodb {name}>\n  <filestorage>\n    path {p}\n  </filestorage>\n</zodb>\n"
        for name, p in zip(("unnamed", "a", "b"), paths)))
    zodbdgc.check(str(conf))
    out = capsys.readouterr().out
    assert "!!!" not in out and "bad" not in out, out


def test_seat_belt_vetoes_a_remote_reference_without_opening_anything(tmp_path):
    """A policy denying root -> a vetoes a remote reference into 'a' at commit,
    matched by its recorded target class, without opening 'a'; nothing is
    stored anywhere."""
    paths, ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True, check_xrefs=True)
    tree = pclasses.tree_of(db)
    policy = pclasses.XrefPolicy().deny("*", "a", target_class="tree_models.*").install()
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        src = conn.root()["src"]
        copy = conn.root()["copy"] = Node("copy")
        copy.ref = src.a  # the reference value, the target never loaded
        with pytest.raises(pclasses.CrossDatabaseReferenceError) as info:
            tm.commit()
        assert info.value.target_database == "a"
        tm.abort()
        assert tree.opened == {db.database_name}
        assert "copy" not in conn.root()
        conn.close()
    finally:
        policy.uninstall()
        tree.close()
    db = pclasses.open(paths[0])
    conn = db.open()
    assert "copy" not in conn.root()
    conn.close()
    db.close()


def test_fast_remote_walker_agrees_with_genops(tmp_path):
    """The fast walker and the pickletools.genops walker find the same remote
    references in every record of a tree (memoized strings included)."""
    from ZODB.FileStorage import FileStorage

    from pclasses.record.remote import remote_sites

    paths, ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"]
    fresh = [pclasses.get_reference(src, src.a()), pclasses.get_reference(src, src.b())]
    src.many = [src.a, src.b, src.a, {"k": src.b}, fresh]  # shared objects, equal strings
    tm.commit()
    conn.close()
    tree.close()
    fs = FileStorage(str(paths[0]), read_only=True)
    try:
        data, _ = fs.load(ids["src"])
    finally:
        fs.close()
    fast = remote_sites(data)
    slow = remote_sites(data, fast=False)
    assert fast == slow and len(fast) == 6
    # edges() walks from the first remote global of the state pickle
    got = [(e.oid, e.klass, e.database, e.via) for e in edges(data) if e.kind is EdgeKind.REMOTE]
    assert got == [(s.oid, tuple(s.klass.rsplit(".", 1)), s.database, s.via) for s in slow]


def test_remote_walker_never_runs_hostile_records(tmp_path):
    """A hostile record naming os.system around the remote global is only
    read: no marker file appears."""
    import pickle

    from pclasses.record.remote import remote_sites

    marker = tmp_path / "pwned"
    payload = (b"\x80\x02cpclasses.tree.reference\nRemoteReference\nq\x00.\x80\x02cos\nsystem\n"
               + pickle.dumps(f"touch {marker}", 2)[2:-1] + b"\x85R.")
    remote_sites(payload)
    remote_sites(payload, fast=False)
    assert not marker.exists()


def _records(path):
    from ZODB.FileStorage import FileStorage

    from pclasses.scan import iter_records

    fs = FileStorage(str(path), read_only=True)
    try:
        return list(iter_records(fs))
    finally:
        fs.close()


def test_split_targets_agree_with_targets_c_and_python(tmp_path):
    """The lean reader of the tree walks (split_targets: plain oids as one
    bytes, everything else listed) finds exactly the references targets()
    finds, in C and in pure Python, for records holding plain, weak, ZODB
    cross-database and remote references."""
    import persistent.wref

    from pclasses.record.edges import split_targets, split_targets_py, targets

    paths, _ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"]
    other = src.a()
    src.weak = persistent.wref.WeakRef(src)
    # plain, bare oid, m, remote (memoized)
    src.mixed = [Node("x"), Keyed("k"), other, src.a, src.b, src.a]
    tm.commit()
    conn.close()
    tree.close()
    seen_kinds = set()
    for path in paths:
        for oid, data in _records(path):
            want = sorted((str(k), t, d) for k, t, d in targets(data, oid))
            for split in (split_targets, split_targets_py):
                plain, rest = split(data, oid)
                got = sorted([("oid", plain[i:i + 8], None) for i in range(0, len(plain), 8)]
                             + [(str(k), t, d) for k, t, d in rest])
                norm = sorted(("oid" if k == "oid_class" else k, t, d) for k, t, d in want)
                assert got == norm, (path, oid)
            seen_kinds.update(k for k, _t, _d in want)
    assert {"oid", "oid_class", "weak", "multi", "remote"} <= seen_kinds


def test_split_targets_refuses_what_edges_refuses():
    """A record the analyzer cannot walk is a RecordDecodeError naming its oid
    in both twins."""
    from pclasses.errors import RecordDecodeError
    from pclasses.record.edges import split_targets, split_targets_py

    for split in (split_targets, split_targets_py):
        with pytest.raises(RecordDecodeError):
            split(b"\x80\x03cfoo\nBar\n", b"\x00" * 7 + b"\x05")


def test_oid_set_and_file_loader(tmp_path):
    """The walks' oid set holds dense and huge oids; the FileStorage loader
    reads every current record by int oid exactly as the storage does, skips
    oids that were never stored, and reads a deleted object as absent."""
    from ZODB.FileStorage import FileStorage

    from pclasses.oidset import DENSE_LIMIT, OidSet
    from pclasses.tree.loader import loader_for

    s = OidSet(4)
    for oid in (0, 3, 70000, DENSE_LIMIT + 5, 2**63):
        assert s.add_new(oid)
        assert not s.add_new(oid)
    assert len(s) == 5 and (70000).to_bytes(8, "big") in s and 4 not in s
    s.discard(3)
    assert list(s.ints()) == [0, 70000, DENSE_LIMIT + 5, 2**63]

    path = tmp_path / "sparse.fs"
    db = pclasses.open(path)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    kept = [Node(str(i)) for i in range(5)]
    conn.root()["kept"] = kept
    for i in range(300):  # oids handed out and never stored leave holes
        conn.new_oid()
        if i % 100 == 0:
            kept.append(Node(f"after hole {i}"))
            conn.root()["kept"] = list(kept)
    tm.commit()
    victim = kept[0]._p_oid
    conn.close()
    db.close()
    fs = FileStorage(str(path))
    from ZODB.Connection import TransactionMetaData

    txn = TransactionMetaData()
    fs.tpc_begin(txn)
    fs.deleteObject(victim, fs.load(victim)[1], txn)
    fs.tpc_vote(txn)
    fs.tpc_finish(txn)
    loader = loader_for(fs)
    try:
        assert type(loader).__name__ == "_FileLoader"
        expected = {}
        for oid in fs._index.keys():
            try:
                expected[int.from_bytes(oid, "big")] = fs.load(oid)[0]
            except Exception:
                expected[int.from_bytes(oid, "big")] = None
        assert expected[int.from_bytes(victim, "big")] is None
        for i in range(loader.size + 3):
            assert loader.load(i) == expected.get(i), i
        reached = OidSet(loader.size)
        reached.add_new(0)
        assert set(loader.unreached(reached)) == {
            o for o, d in expected.items() if d is not None and o != 0}
    finally:
        loader.close()
        fs.close()


_CANONICAL = (
    b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.\x80\x03}q\x01X\x04\x00\x00\x00"
    b"dataq\x02}q\x03(X\x01\x00\x00\x00nq\x04K\x00X\x03\x00\x00\x00refq\x05"
    b"cpclasses.tree.reference\nRemoteReference\nq\x06(C\x08\x00\x00\x00\x00\x00\x00\x00\x01"
    b"q\x07cpclasses.tree.handle\nDatabaseHandle\nq\x08\x86q\tQC\x08\x00\x00\x00\x00\x00\x00"
    b"\x14\xc8q\nX$\x00\x00\x00persistent.mapping.PersistentMappingq\x0bX\x01\x00\x00\x00aq\x0c"
    b"tq\rRq\x0eus.")


def test_single_remote_site_shortcut_agrees_with_the_full_walker():
    """The shortcut for a record holding one remote reference as ZODB writes
    it (C in split_targets, Python twin single_remote_site) gives the same
    site as the full walker, and, over every one-byte change of such a record
    the analyzer still accepts, either declines or agrees with the full
    walker (the walk edges() runs), C and Python alike."""
    import importlib
    import random

    from pclasses.record.remote import RemoteSite, remote_sites, single_remote_site

    start = _CANONICAL.index(b"cpclasses.tree.reference")
    site = single_remote_site(_CANONICAL, start)
    assert site == RemoteSite(b"\x00" * 6 + b"\x14\xc8", "persistent.mapping.PersistentMapping",
                              "a", b"\x00" * 7 + b"\x01", False, 1)
    assert remote_sites(_CANONICAL, fast=False) == [site]
    # a second use of the memoized global (BINGET 6) sends it to the full walker
    assert single_remote_site(_CANONICAL[:-2] + b"h\x06.", start) is None
    edges_mod = importlib.import_module("pclasses.record.edges")
    c_refs = edges_mod._c_refs
    rng = random.Random(14)
    checked = agreed = 0
    for i in range(len(_CANONICAL)):
        for value in {rng.randrange(256) for _ in range(6)} | {0x68, 0x71, 0x4E, 0x28}:
            data = _CANONICAL[:i] + bytes((value,)) + _CANONICAL[i + 1:]
            try:
                analysis = edges_mod.analyze_record(data)
            except Exception:  # noqa: BLE001 - records the analyzer refuses are not read
                continue
            begin = edges_mod._remote_start(analysis)
            py = single_remote_site(data, begin) if begin > 0 else None
            if c_refs is not None:
                _plain, _other, remote, c_site = c_refs(data)
                assert remote == begin
                assert (None if c_site is None else tuple(c_site)) == (
                    None if py is None else (py.oid, py.klass, py.database, py.via)), (i, value)
            checked += 1
            if py is not None:
                agreed += 1
                assert remote_sites(data, start=begin) == [py], (i, value)
    assert checked > 500 and agreed > 100
