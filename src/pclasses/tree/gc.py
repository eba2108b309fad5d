"""``collect_garbage``: objects unreachable from the roots of a whole tree.

Reachability follows plain, ``m``, ``n`` and remote references (weak
references do not keep alive) from the root of every database.  Objects
written in the last ``days`` days are kept, with what they reach.  With
``apply=True`` the garbage is deleted through the storage API
(``deleteObject``, ZODB's external garbage collection interface: FileStorage,
ZEO, RelStorage) in batches that interleave with writing applications
(:mod:`.sweep`: an object linked again while gc runs is kept); pins no
remote reference holds any more are dropped first.  A storage that would collect
garbage on pack by itself (FileStorage's and RelStorage's ``pack-gc``, and a
ZEO client, whose server decides) is refused unless ``force=True``: packing
it alone would lose objects only other databases refer to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import transaction
from persistent.timestamp import TimeStamp
from ZODB.POSException import POSKeyError

from ..batches import CONFLICT_RETRIES, one_line
from ..classtable import root_entry_oid
from ..errors import GarbageCollectionError, GarbageCollectionRefusedError
from ..oidset import OidSet
from .loader import Loader, loader_for
from .pins import PINS_KEY, pinned
from .sweep import Sweeper, last_tid
from .walk import Walk, open_all, walk

__all__ = ["BATCH_SIZE", "GcReport", "collect_garbage", "gc_on_pack", "pack_gc_reason"]


@dataclass
class GcReport:
    """Garbage per database (oids), what was kept for being recent, pins dropped."""

    garbage: dict[str, list[bytes]] = field(default_factory=dict)
    recent: dict[str, int] = field(default_factory=dict)
    stale_pins: dict[str, list[bytes]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    days: float = 1
    applied: bool = False
    #: ``apply``: objects found alive again while gc ran (an application
    #: linked them again, or wrote them): kept
    relinked: dict[str, list[bytes]] = field(default_factory=dict)
    #: ``apply``: objects kept because deleting them kept conflicting
    skipped: dict[str, list[bytes]] = field(default_factory=dict)
    #: ``apply``: transactions committed (batches)
    transactions: int = 0

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
            "transactions": self.transactions,
            "databases": {
                name: {"garbage": [oid_repr(o) for o in oids],
                       "count": len(oids),
                       "recent": self.recent.get(name, 0),
                       "stale_pins": [oid_repr(o) for o in self.stale_pins.get(name, [])],
                       "relinked": [oid_repr(o) for o in self.relinked.get(name, [])],
                       "skipped": [oid_repr(o) for o in self.skipped.get(name, [])]}
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
    """Drop ``stale`` pins in one transaction, retried when it conflicts with
    an application writing pins."""
    from transaction.interfaces import TransientError

    for attempt in range(CONFLICT_RETRIES):
        try:
            _drop_pins_once(databases, stale)
            return
        except TransientError as exc:
            if attempt + 1 == CONFLICT_RETRIES:
                raise GarbageCollectionError(
                    f"dropping stale pins kept conflicting ({one_line(exc)}); nothing was "
                    "deleted, run again") from exc


def _drop_pins_once(databases: dict[str, Any], stale: dict[str, list[bytes]]) -> None:
    tm = transaction.TransactionManager()
    conns = {}
    try:
        for name, oids in stale.items():
            if not oids:
                continue
            conn = conns[name] = databases[name].open(transaction_manager=tm)
            pins = conn.get(root_entry_oid(conn, PINS_KEY))  # not the root's other entries
            for oid in oids:
                if oid in pins:
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


#: Objects deleted per transaction by ``collect_garbage(apply=True)``.
BATCH_SIZE = 1000


def collect_garbage(db: Any, days: float = 1, apply: bool = False, *,
                    force: bool = False, batch_size: int = BATCH_SIZE,
                    progress: Callable[[int, int | None], None] | None = None) -> GcReport:
    """Find (and with ``apply=True`` delete) the garbage of ``db``'s tree.

    Dry run by default.  ``days=0`` means no grace period.  Raises
    :class:`~pclasses.errors.GarbageCollectionRefusedError` before changing
    anything when a database is unavailable or (unless ``force``) would
    collect garbage on pack by itself.

    With ``apply``, the garbage is deleted in transactions of ``batch_size``
    objects that interleave with applications writing: what they commit
    meanwhile is read again before and inside each batch's commit, and an
    object found alive again is kept (``report.relinked``); a batch that
    conflicts is retried, an object that keeps conflicting is kept
    (``report.skipped``); batches shrink to fit PostgreSQL's lock table.  A
    batch that fails otherwise is rolled back and raises
    :class:`~pclasses.errors.GarbageCollectionError` (batches committed
    before it stay deleted).  ``progress(done, total)`` is called after
    each batch.
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
    # What is committed after these tids is read again before deleting.
    since = {name: last_tid(each.storage) for name, each in databases.items()} if apply else {}
    loaders = {name: loader_for(each.storage) for name, each in databases.items()}
    try:
        candidates, found = _garbage(databases, unavailable, loaders, report, days, apply)
        report.garbage = {name: sorted(oids) for name, oids in sorted(candidates.items())}
        if apply:
            sweeper = Sweeper(databases, unavailable, loaders, found, since, batch_size,
                              progress)
            try:
                sweeper.run(report.garbage)
            finally:
                sweeper.close()
            report.garbage = {name: sorted(sweeper.deleted.get(name, []))
                              for name in report.garbage}
            report.relinked = {name: sorted(oids) for name, oids in sweeper.relinked.items()}
            report.skipped = {name: sorted(oids) for name, oids in sweeper.skipped.items()}
            report.transactions = sweeper.transactions
            report.applied = True
    finally:
        for loader in loaders.values():
            loader.close()
    return report


def _garbage(databases: dict[str, Any], unavailable: dict[str, str],
             loaders: dict[str, Loader], report: GcReport, days: float,
             apply: bool) -> tuple[dict[str, list[bytes]], Walk]:
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
    return candidates, w

