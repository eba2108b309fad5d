"""Whole-database walks (``refs-check``, ``gc``, the report's reference
graph) read RelStorage on PostgreSQL by blocks of oids, one query a block
(issue 16: one query a record made ``refs-check`` 29x slower than on the
file).  The block reader must hand the walk exactly what ``load`` would:
every current record, nothing for an oid without one, the same answers
after a block was dropped, and one snapshot for the whole walk."""

from __future__ import annotations

from typing import Any

import pytest
import transaction
from persistent.mapping import PersistentMapping

import pclasses

pytestmark = pytest.mark.postgres


def _uri(pg_server: Any, keep: bool) -> str:
    name = pg_server.createdb()
    return (f"postgres://postgres@{pg_server.host}:{pg_server.port}/{name}"
            f"?keep_history={str(keep).lower()}")


def _fill(uri: str, n: int) -> None:
    db = pclasses.open(uri)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        root["items"] = items = PersistentMapping()
        for i in range(n):
            items[i] = PersistentMapping({"i": i})
        root["loose"] = PersistentMapping()
        tm.commit()
        del root["loose"]  # garbage: no longer reachable
        tm.commit()
        conn.close()
    finally:
        db.close()


@pytest.mark.parametrize("keep", [False, True], ids=["history-free", "history-preserving"])
def test_block_reader_answers_as_load_does(pg_server: Any, keep: bool, monkeypatch):
    """With blocks of 16 oids and only 40 records kept (so blocks are
    dropped and read again), the block reader gives every oid the bytes
    ``load`` gives, None for oids past the last one, and refs-check and
    the gc dry run agree with the plain loader."""
    pytest.importorskip("relstorage")
    pytest.importorskip("psycopg2")
    from pclasses.storages import relstorage
    from pclasses.tree import check
    from pclasses.tree.loader import Loader, loader_for

    uri = _uri(pg_server, keep)
    _fill(uri, 120)
    monkeypatch.setattr(relstorage, "BLOCK", 16)
    monkeypatch.setattr(relstorage, "KEPT", 40)
    db = pclasses.open(uri, read_only=True)
    try:
        storage = db.storage
        fast = loader_for(storage)
        assert type(fast).__name__ == "_BlockLoader"
        plain = Loader(storage)
        top = 200  # past the last of the 124 oids the data holds
        try:
            for oid in list(range(0, top)) + list(range(top - 1, -1, -3)):
                assert fast.load(oid) == plain.load(oid), oid
        finally:
            fast.close()
        checked = check.check_refs(db).to_dict()
        gc = pclasses.collect_garbage(db, days=0).to_dict()
        monkeypatch.setattr(relstorage, "can_read_blocks", lambda s: False)
        assert check.check_refs(db).to_dict() == checked
        assert pclasses.collect_garbage(db, days=0).to_dict()["databases"] == gc["databases"]
        assert checked["ok"]
    finally:
        db.close()


def test_block_reader_reads_one_snapshot(pg_server: Any):
    """A commit made while a walk reads is not seen by that walk: the
    reader's blocks all come from the snapshot of its first read."""
    pytest.importorskip("relstorage")
    pytest.importorskip("psycopg2")
    from pclasses.storages import relstorage

    uri = _uri(pg_server, False)
    _fill(uri, 10)
    db = pclasses.open(uri, read_only=True)
    writer = pclasses.open(uri)
    try:
        reader = relstorage.BlockReader(db.storage)
        try:
            before = reader.load(0)
            assert before is not None
            tm = transaction.TransactionManager()
            conn = writer.open(tm)
            conn.root()["new"] = PersistentMapping()
            tm.commit()
            new_oid = int.from_bytes(conn.root()["new"]._p_oid, "big")
            conn.close()
            assert reader.load(0) == before
            far = relstorage.BLOCK * (new_oid // relstorage.BLOCK + 1)
            reader._blocks.clear()  # read every block again: still the old snapshot
            assert reader.load(new_oid) is None
            assert reader.load(far) is None
            assert reader.load(0) == before
        finally:
            reader.close()
    finally:
        writer.close()
        db.close()
