"""``collect_garbage``: objects unreachable from the roots of a whole tree.

Reachability follows plain, ``m``, ``n`` and remote references (weak
references do not keep alive) from the root of every database.  Objects
written in the last ``days`` days are kept, with what they reach.  With
``apply=True`` the garbage is deleted through the storage API
(``deleteObject``, ZODB's external garbage collection interface: FileStorage,
ZEO, RelStorage) in one two-phase commit across the databases; pins no remote
reference holds any more are dropped first.  A storage that would collect
garbage on pack by itself (FileStorage's and RelStorage's ``pack-gc``, and a
ZEO client, whose server decides) is refused unless ``force=True``: packing
it alone would lose objects only other databases refer to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import transaction
from persistent.timestamp import TimeStamp
from ZODB.POSException import POSKeyError

from ..classtable import root_entry_oid
from ..errors import GarbageCollectionRefusedError
from ..oidset import OidSet
from .loader import Loader, loader_for
from .pins import PINS_KEY, pinned
from .walk import open_all, walk

__all__ = ["GcReport", "collect_garbage", "gc_on_pack", "pack_gc_reason"]


@dataclass
class GcReport:
    """Garbage per database (oids), what was kept for being recent, pins dropped."""

    garbage: dict[str, list[bytes]] = field(default_factory=dict)
    recent: dict[str, int] = field(default_factory=dict)
    stale_pins: dict[str, list[bytes]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    days: float = 1
    applied: bool = False

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.garbage.values())

    def to_dict(self) -> dict[str, Any]:
        from ZODB.utils import oid_repr

        return {
            "applied": self.applied,
            "days": self.days,
            "count": self.count,
            "unavailable": dict(self.unavailable),
            "databases": {
                name: {"garbage": [oid_repr(o) for o in oids],
                       "count": len(oids),
                       "recent": self.recent.get(name, 0),
                       "stale_pins": [oid_repr(o) for o in self.stale_pins.get(name, [])]}
                for name, oids in sorted(self.garbage.items())
            },
        }


def gc_on_pack(storage: Any) -> bool:
    """Whether packing ``storage`` collects garbage by itself (as far as we can tell)."""
    return pack_gc_reason(storage) is not None


def pack_gc_reason(storage: Any) -> str | None:
    """Why packing ``storage`` alone may lose objects other databases refer
    to, or ``None``: FileStorage's and RelStorage's ``pack-gc`` setting, and
    a ZEO client, whose server's storage decides (the client cannot see it)."""
    if getattr(storage, "_pack_gc", False):  # FileStorage
        return "its storage collects garbage on pack by itself (pack-gc)"
    options = getattr(storage, "_options", None)
    if getattr(options, "pack_gc", False):  # RelStorage
        return "its storage collects garbage on pack by itself (pack-gc)"
    if callable(getattr(storage, "is_connected", None)) and hasattr(storage, "_server"):
        return ("it is a ZEO client: its server's storage may collect garbage on pack by "
                "itself (pack-gc is the server's setting)")
    return None


def _candidates(loader: Loader, reached: OidSet) -> list[bytes]:
    """Oids of the objects that exist and were not reached (FileStorage:
    from its index, reading only the unreached records)."""
    return [oid.to_bytes(8, "big") for oid in loader.unreached(reached)]


def _pins(db: Any) -> dict[bytes, Any]:
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    try:
        return dict.fromkeys(pinned(conn))
    finally:
        tm.abort()
        conn.close()


def _drop_pins(databases: dict[str, Any], stale: dict[str, list[bytes]]) -> None:
    tm = transaction.TransactionManager()
    conns = {}
    try:
        for name, oids in stale.items():
            if not oids:
                continue
            conn = conns[name] = databases[name].open(transaction_manager=tm)
            pins = conn.get(root_entry_oid(conn, PINS_KEY))  # not the root's other entries
            for oid in oids:
                del pins[oid]
        tm.get().note("pclasses gc: drop pins no reference holds")
        tm.commit()
    except BaseException:
        tm.abort()
        raise
    finally:
        for conn in conns.values():
            conn.close()


def _recent(storage: Any, oids: list[bytes], cutoff: float) -> list[bytes]:
    out = []
    for oid in oids:
        try:
            _data, tid = storage.load(oid)
        except POSKeyError:
            continue
        if TimeStamp(tid).timeTime() > cutoff:
            out.append(oid)
    return out


def collect_garbage(db: Any, days: float = 1, apply: bool = False, *,
                    force: bool = False) -> GcReport:
    """Find (and with ``apply=True`` delete) the garbage of ``db``'s tree.

    Dry run by default.  ``days=0`` means no grace period.  Raises
    :class:`~pclasses.errors.GarbageCollectionRefusedError` before changing
    anything when a database is unavailable or (unless ``force``) would
    collect garbage on pack by itself.
    """
    databases, unavailable = open_all(db, read_only=not apply)
    report = GcReport(days=days, unavailable=unavailable)
    if apply:
        if unavailable:
            name = sorted(unavailable)[0]
            raise GarbageCollectionRefusedError(
                name, f"it cannot be opened ({unavailable[name]}); references from it "
                      "are unknown")
        if not force:
            for name, each in sorted(databases.items()):
                why = pack_gc_reason(each.storage)
                if why is not None:
                    raise GarbageCollectionRefusedError(
                        name, f"{why}; packing it alone loses objects other databases "
                              "refer to (use force to go on)")
    loaders = {name: loader_for(each.storage) for name, each in databases.items()}
    try:
        candidates = _garbage(databases, unavailable, loaders, report, days, apply)
    finally:
        for loader in loaders.values():
            loader.close()
    report.garbage = {name: sorted(oids) for name, oids in sorted(candidates.items())}
    if apply and report.count:
        _delete(databases, report.garbage)
        report.applied = True
    elif apply:
        report.applied = True
    return report


def _garbage(databases: dict[str, Any], unavailable: dict[str, str],
             loaders: dict[str, Loader], report: GcReport, days: float,
             apply: bool) -> dict[str, list[bytes]]:
    w = walk(databases, unavailable, follow_weak=False, loaders=loaders)
    # Pins no remote reference holds any more.
    for name, each in sorted(databases.items()):
        pinned = _pins(each)
        held = w.remote_targets.get(name, OidSet())
        stale = sorted(oid for oid in pinned if oid not in held)
        if stale:
            report.stale_pins[name] = stale
    if report.stale_pins and apply:
        _drop_pins(databases, report.stale_pins)
        for name, each in databases.items():  # the files changed: read them again
            loaders[name].close()
            loaders[name] = loader_for(each.storage)
        w = walk(databases, unavailable, follow_weak=False, loaders=loaders)
    candidates = {name: _candidates(loaders[name], w.reached[name]) for name in databases}
    if days > 0:
        # Recent objects are kept, with everything they reach.
        cutoff = time.time() - days * 86400.0
        roots: list[tuple[str, bytes]] = []
        for name, oids in candidates.items():
            recent = _recent(databases[name].storage, oids, cutoff)
            report.recent[name] = len(recent)
            roots.extend((name, oid) for oid in recent)
        if roots:
            w = walk(databases, unavailable, follow_weak=False, roots=roots, loaders=loaders,
                     after=w)
            candidates = {name: [oid for oid in oids if oid not in w.reached[name]]
                          for name, oids in candidates.items()}
    return candidates


def _delete(databases: dict[str, Any], garbage: dict[str, list[bytes]]) -> None:
    """Delete ``garbage`` through the storages, one two-phase commit across them."""
    from ZODB.Connection import TransactionMetaData

    txn = TransactionMetaData(description="pclasses gc")
    begun = []
    try:
        for name, oids in sorted(garbage.items()):
            if not oids:
                continue
            storage = databases[name].storage
            storage.tpc_begin(txn)
            begun.append(storage)
            for oid in oids:
                try:
                    _data, tid = storage.load(oid)
                except POSKeyError:
                    continue
                storage.deleteObject(oid, tid, txn)
        for storage in begun:
            storage.tpc_vote(txn)
    except BaseException:
        for storage in begun:
            storage.tpc_abort(txn)
        raise
    for storage in begun:
        storage.tpc_finish(txn)
    for name in garbage:
        databases[name].cacheMinimize()
