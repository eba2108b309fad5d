"""Deleting garbage in batches while applications write (``gc --apply``).

The garbage was found by a walk that began at tid ``since`` of each storage.
Before each batch is deleted, and again inside its commit once the storages
hold their commit locks (so that nothing else commits until it finishes),
every record committed after ``since`` is read again: those records are
roots (they and what they reach are alive), and a batch holding an object
found alive that way is rolled back, re-read and tried again.  An object an
application linked again before its batch commits is therefore kept
(design/decisions.md, D40).

A batch that conflicts is retried a bounded number of times, then in halves
(an object alone that keeps conflicting is kept and reported); a batch too
large for PostgreSQL's lock table is cut in halves, later batches as small.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ZODB.Connection import TransactionMetaData
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from ..batches import CONFLICT_RETRIES, lock_table_full, one_line
from ..errors import GarbageCollectionError, PClassesError
from ..record.analyze import EdgeKind
from ..record.edges import split_targets
from .loader import Loader
from .walk import Walk, record_extras, walk

__all__ = ["Changes", "Sweeper", "last_tid"]

_WEAK = (EdgeKind.WEAK, EdgeKind.LEGACY)


def _mvcc(storage: Any) -> bool:
    """RelStorage (an ``IMVCCStorage``): each instance has its own view."""
    return hasattr(storage, "new_instance") and hasattr(storage, "poll_invalidations")


def last_tid(storage: Any) -> bytes:
    """The last tid committed to ``storage`` that its reads have seen (the
    earlier one when a storage's own instance lags behind: more is re-read
    later, never less)."""
    tid: bytes = storage.lastTransaction()
    if _mvcc(storage):
        fresh = storage.new_instance()
        try:
            fresh.poll_invalidations()
            tid = min(tid, fresh.lastTransaction())
        finally:
            fresh.release()
    return tid


class Changes:
    """The records committed to one storage after a tid, read fresh (an MVCC
    storage through an instance of its own, brought up to date first)."""

    def __init__(self, storage: Any, since: bytes) -> None:
        self.storage = storage.new_instance() if _mvcc(storage) else storage
        self.own = self.storage is not storage
        self.since = since
        #: tids of gc's own transactions: not read again
        self.ours: set[bytes] = set()

    def read(self) -> dict[bytes, bytes | None]:
        """``oid -> data`` (the newest record; ``None``: deleted) of what was
        committed after the last call (after ``since`` the first time)."""
        if self.own:
            self.storage.poll_invalidations()
        if not hasattr(self.storage, "iterator"):
            if self.storage.lastTransaction() != self.since:
                raise GarbageCollectionError(
                    "the database changed while gc ran and its storage cannot list what "
                    "changed (no iterator); nothing more was deleted, run again")
            return {}
        out: dict[bytes, bytes | None] = {}
        last = self.since
        it = _iterator(self.storage, p64(u64(self.since) + 1))
        try:
            for txn in it:
                last = max(last, txn.tid)
                if txn.tid in self.ours:
                    continue
                for record in txn:
                    out[record.oid] = record.data
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        self.since = last
        return out

    def close(self) -> None:
        if self.own:
            self.storage.release()


#: How long :func:`_iterator` waits for a commit in progress to end.
ITERATOR_TRIES = 100


def _iterator(storage: Any, start: bytes) -> Any:
    """``storage.iterator(start)``, waiting out a commit in progress.

    A FileStorage's iterator opened while another transaction is being
    written finds no complete last transaction at the end of the file and
    fails (ZODB 6: an ``AttributeError`` from its ``_skip_to_start``, or a
    ``CorruptedError`` on a larger file); the commit ends within
    milliseconds, so the iterator is opened again after a short pause."""
    from ZODB.FileStorage.format import CorruptedError

    for attempt in range(ITERATOR_TRIES):
        try:
            return storage.iterator(start)
        except (AttributeError, CorruptedError):
            if attempt + 1 == ITERATOR_TRIES:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


def _targets(name: str, data: bytes) -> Iterable[tuple[str, bytes]]:
    """What a record keeps alive: ``(database, oid)`` of its strong references."""
    try:
        plain, other = split_targets(data)
    except PClassesError:
        return  # unreadable: its targets are unknown (the walk reported it)
    for i in range(0, len(plain), 8):
        yield name, plain[i:i + 8]
    for kind, toid, database in other:
        if kind not in _WEAK and toid is not None and len(toid) == 8:
            yield database or name, toid
    for extra in record_extras:
        for database, toid in extra(data):
            yield database, toid


class _Relinked(Exception):
    """An object of the batch was found alive inside the commit."""


class Sweeper:
    """Deletes ``garbage`` (database name -> oids) in batches of ``size``."""

    def __init__(self, databases: dict[str, Any], unavailable: Iterable[str],
                 loaders: dict[str, Loader], found: Walk, since: dict[str, bytes],
                 size: int, progress: Callable[[int, int | None], None] | None = None
                 ) -> None:
        self.progress = progress
        self.databases = databases
        self.unavailable = set(unavailable)
        self.loaders = loaders
        self.found = found
        self.size = max(1, size)
        self.changes = {name: Changes(db.storage, since[name]) for name, db in databases.items()}
        self.writers = {name: (db.storage.new_instance() if _mvcc(db.storage) else db.storage)
                        for name, db in databases.items()}
        #: name -> oids deleted; oids kept because found alive; kept after conflicts
        self.deleted: dict[str, list[bytes]] = {}
        self.relinked: dict[str, list[bytes]] = {}
        self.skipped: dict[str, list[bytes]] = {}
        self.transactions = 0

    def close(self) -> None:
        for changes in self.changes.values():
            changes.close()
        for name, writer in self.writers.items():
            if writer is not self.databases[name].storage:
                writer.release()

    def run(self, garbage: dict[str, list[bytes]]) -> None:
        from transaction.interfaces import TransientError

        items = [(name, oid) for name in sorted(garbage) for oid in garbage[name]]
        total, done = len(items), 0
        pending = [(items[i:i + self.size], 0)
                   for i in reversed(range(0, len(items), self.size))]
        while pending:
            part, tries = pending.pop()
            if not part:
                continue
            if len(part) > self.size:  # the lock table asked for smaller batches
                pending += [(part[i:i + self.size], tries)
                            for i in reversed(range(0, len(part), self.size))]
                continue
            try:
                self._catch_up()
                part = self._alive_out(part)
                if part:
                    self._delete(part)
            except (TransientError, _Relinked):
                if tries + 1 < CONFLICT_RETRIES:
                    pending.append((part, tries + 1))
                elif len(part) > 1:
                    half = len(part) // 2
                    pending += [(part[half:], 0), (part[:half], 0)]
                else:
                    name, oid = part[0]
                    if not self._alive(name, oid):
                        self.skipped.setdefault(name, []).append(oid)
                        continue
                    pending.append((part, 0))  # filtered out as alive next round
                continue
            except GarbageCollectionError:
                raise
            except Exception as exc:
                if lock_table_full(exc) and len(part) > 1:
                    half = len(part) // 2
                    self.size = min(self.size, half)
                    pending += [(part[half:], tries), (part[:half], tries)]
                    continue
                raise GarbageCollectionError(
                    f"a batch failed and was rolled back ({one_line(exc)}); batches "
                    "committed before it stay deleted, run again to continue") from exc
            done += len(part)
            if self.progress is not None:
                self.progress(done, total)

    def _alive(self, name: str, oid: bytes) -> bool:
        return bool(self.found.reached[name].has(int.from_bytes(oid, "big")))

    def _alive_out(self, part: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """``part`` without the objects found alive since (recorded as relinked)."""
        out = []
        for name, oid in part:
            if self._alive(name, oid):
                self.relinked.setdefault(name, []).append(oid)
            else:
                out.append((name, oid))
        return out

    def _catch_up(self) -> None:
        """Read what was committed since the last look: those records, and
        everything they reach, are alive."""
        roots: list[tuple[str, bytes]] = []
        fresh: list[tuple[str, bytes]] = []
        for name, changes in sorted(self.changes.items()):
            for oid, data in changes.read().items():
                if data is not None:  # None: deleted
                    fresh.append((name, oid))
                    roots.extend(_targets(name, data))
        if not fresh:
            return
        for name, oid in fresh:  # written since: alive, whatever the walk read
            seen = self.found.reached[name]
            if not seen.has(int.from_bytes(oid, "big")):
                seen.add_new(int.from_bytes(oid, "big"))
        walk(self.databases, self.unavailable, follow_weak=False, roots=roots,
             loaders=self.loaders, after=self.found)

    def _delete(self, part: list[tuple[str, bytes]]) -> None:
        """One two-phase commit deleting ``part``: after the vote (the
        storages locked), what was committed since is read once more, and
        the batch is rolled back if any of it was found alive."""
        names = sorted({name for name, _oid in part},
                       key=lambda n: (self.writers[n].sortKey(), n))
        txn = TransactionMetaData(description="pclasses gc")
        begun = []
        done: dict[str, list[bytes]] = {}
        try:
            for name in names:
                storage = self.writers[name]
                if storage is not self.databases[name].storage:
                    storage.poll_invalidations()
                storage.tpc_begin(txn)
                begun.append(storage)
            for name, oid in part:
                storage = self.writers[name]
                try:
                    _data, tid = storage.load(oid)
                except POSKeyError:
                    continue  # gone already
                storage.deleteObject(oid, tid, txn)
                done.setdefault(name, []).append(oid)
            for storage in begun:
                storage.tpc_vote(txn)
            self._catch_up()  # nothing else commits now
            if any(self._alive(name, oid) for name, oid in part):
                raise _Relinked()
        except BaseException:
            for storage in begun:
                storage.tpc_abort(txn)
            raise
        for name in names:
            tid = self.writers[name].tpc_finish(txn)
            if tid:
                self.changes[name].ours.add(tid)
        self.transactions += 1
        for name, oids in done.items():
            self.deleted.setdefault(name, []).extend(oids)
            self.databases[name].cacheMinimize()
