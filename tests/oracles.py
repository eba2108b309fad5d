"""Brute-force oracles and raw writes for tests: ZODB's own storage API,
never pclasses', so a test checks pclasses against something it did not
compute itself.

A module of its own (as :mod:`netutil`), not ``conftest``: ``from conftest
import`` finds ``proptests/conftest.py`` when both suites are collected.
"""

from __future__ import annotations

from typing import Any

from ZODB.Connection import TransactionMetaData
from ZODB.utils import z64

__all__ = ["store_raw", "current_records"]


def store_raw(storage: Any, data: bytes, oid: bytes | None = None, serial: bytes = z64) -> bytes:
    """Store ``data`` as one record with the raw storage API (no serializer),
    in a transaction of its own; returns the oid (a new one by default)."""
    t = TransactionMetaData()
    storage.tpc_begin(t)
    if oid is None:
        oid = storage.new_oid()
    storage.store(oid, serial, data, "", t)
    storage.tpc_vote(t)
    storage.tpc_finish(t)
    return oid


def current_records(storage: Any) -> dict[bytes, bytes]:
    """The current data of every live object, by brute force over
    ``storage.iterator()`` (the last revision of each oid wins; deleted
    objects are left out)."""
    latest: dict[bytes, bytes | None] = {}
    it = storage.iterator()
    try:
        for txn in it:
            for rec in txn:
                latest[rec.oid] = rec.data
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return {oid: data for oid, data in latest.items() if data is not None}
