"""Iterating the current records of a storage, as cheaply as the storage allows.

* FileStorage: the index in oid order, each current record read straight
  from the file at the position the index gives, through a memory map
  (about 0.5 us a record; backpointers and anything unusual go through
  ``load``).  Deleted objects and old revisions are never visited.
* RelStorage: current states with their tids streamed from one
  server-side cursor (:mod:`pclasses.storages.relstorage`).
* ZEO: ``record_iternext`` for runs of oids with every request of a run in
  flight at once (:mod:`pclasses.storages.zeo`).
* Other storages with ``record_iternext`` (MappingStorage): current
  records in oid order.
* Anything else with ``iterator()``: every transaction, the last revision
  of each oid wins.

Each yields ``(oid, data)``; ``progress(done, total)`` is called now and
then when given (``total`` may be ``None``).

:func:`map_records` runs a function over the records of a large
FileStorage in several processes at once: the index is cut into equal
runs of oids, each forked worker reads its own run, and the results come
back to be merged in oid order.  Reading is all it does, so a worker can
never leave anything half-written.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .errors import ScanWorkerError
from .mapped import DROP_BYTES, PAGE_SPAN, drop_pages
from .storages import storage_kind

__all__ = ["iter_records", "iter_current", "count_records", "map_records", "in_oid_order"]

T = TypeVar("T")

#: Below this many objects a scan stays in one process.
PARALLEL_MIN_RECORDS = 20_000

Progress = Callable[[int, int | None], None]

_STEP = 4096

def count_records(storage: Any) -> int | None:
    """The number of objects in ``storage``, when it can tell cheaply
    (RelStorage's is PostgreSQL's estimate, ``None`` before the first
    ``ANALYZE``)."""
    try:
        n = len(storage)
        if not n and storage_kind(storage) == "relstorage":
            return None
        return n
    except Exception:
        return None


def iter_records(storage: Any, progress: Progress | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(oid, data)`` for the current revision of every object."""
    total = count_records(storage)
    kind = storage_kind(storage)
    if kind == "filestorage":
        it = _filestorage(storage, storage._index)
    elif kind in ("relstorage", "zeo"):
        it = ((oid, data) for oid, _tid, data in iter_current(storage))
    elif hasattr(storage, "record_iternext"):
        it = _iternext(storage)
    else:
        it = _latest(storage)
    if progress is None:
        yield from it
        return
    done = 0
    progress(0, total)
    for item in it:
        yield item
        done += 1
        if not done % _STEP:
            progress(done, total)
    progress(done, total)


def in_oid_order(storage: Any) -> bool:
    """Whether :func:`iter_records` meets the records of ``storage`` in oid
    order (all but storages read through ``iterator()``)."""
    return (storage_kind(storage) in ("filestorage", "relstorage", "zeo")
            or hasattr(storage, "record_iternext"))


def _is_filestorage(storage: Any) -> bool:
    return getattr(storage, "_index", None) is not None and hasattr(storage, "_file_name")


def _filestorage(
    storage: Any, index: Any, start: int = 0, stop: int | None = None,
    with_tid: bool = False,
) -> Iterator[Any]:
    """The current records of a FileStorage, in oid order, read straight
    from the file at the positions its index gives (through a memory map).

    ``start`` / ``stop`` select the index entries ``[start, stop)`` in oid
    order (how :func:`map_records` cuts the work).  The oids are taken from
    the index one bucket at a time, so the caller may store new revisions
    meanwhile (each oid is visited once, at the position the index gives
    when its bucket is reached).  Anything unusual (a backpointer, a
    version record, data written after the map was made) is loaded through
    the storage; an object whose creation was undone has no data and is
    skipped.
    """
    from ZODB.POSException import POSKeyError

    with open(storage._file_name, "rb") as f:
        try:
            mm: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            mm = b""
    try:
        size = len(mm)
        unpack_from = _OID_VLEN_PLEN.unpack_from
        hsize = _DATA_HEADER.size
        load = storage.load
        seen = 0
        read = 0
        for prefix in list(index._data.keys()):
            bucket = index._data.get(prefix)
            if bucket is None:
                continue
            n = len(bucket)
            if seen + n <= start:
                seen += n
                continue
            if stop is not None and seen >= stop:
                break
            lo = max(start - seen, 0)
            hi = n if stop is None else min(stop - seen, n)
            seen += n
            # copies, taken together: the caller may store meanwhile
            suffixes = list(bucket.keys()[lo:hi])
            positions = list(bucket.values()[lo:hi])
            for suffix, p in zip(suffixes, positions):
                oid = prefix + suffix
                pos = int.from_bytes(p, "big")
                end = pos + hsize
                if end <= size:
                    hoid, vlen, plen = unpack_from(mm, pos)
                    if hoid == oid and not vlen and plen and end + plen <= size:
                        read += plen + PAGE_SPAN
                        if read > DROP_BYTES:
                            read = 0
                            drop_pages(mm)
                        if with_tid:
                            yield oid, mm[pos + 8:pos + 16], mm[end:end + plen]
                        else:
                            yield oid, mm[end:end + plen]
                        continue
                try:
                    data, tid = load(oid)
                except POSKeyError:  # its creation was undone
                    continue
                if data is None:
                    continue
                if with_tid:
                    yield oid, tid, data
                else:
                    yield oid, data
    finally:
        if not isinstance(mm, bytes):
            mm.close()


_DATA_HEADER = struct.Struct(">8s8sQQHQ")  # oid tid prev tloc vlen plen
_OID_VLEN_PLEN = struct.Struct(">8s24xHQ")  # the same header: oid vlen plen


def snapshot_loader(connection: Any) -> tuple[Callable[[bytes], tuple[bytes, bytes]],
                                             Callable[[], bool], Callable[[], None]]:
    """A fast ``load(oid) -> (data, tid)`` for the connection's view.

    For a FileStorage whose latest transaction is inside the connection's
    snapshot, records are read straight from the file at the positions the
    index gives (about a third of the cost of a load through ZODB's MVCC
    layer); anything unusual (a backpointer, an old version record) falls
    back to the storage.  Returns ``(load, still_valid, close)``:
    ``still_valid()`` is false when a transaction was committed meanwhile,
    and the caller must then redo its work with ``connection._storage.load``.
    RelStorage and ZEO get a loader that, once told the queue of oids a walk
    will ask for (``load.follow(queue)``), fetches the next ones in one
    batch (one query, or many requests in flight); ``still_valid`` is
    always true for them: they read at the connection's snapshot.  Other
    storages get ``connection._storage.load`` and ``still_valid`` is
    always true.
    """
    mvcc = connection._storage
    base: Any = getattr(connection.db(), "storage", None)
    kind = storage_kind(base)
    if kind == "relstorage" and storage_kind(mvcc) == "relstorage":
        from .storages.relstorage import BatchLoader

        loader = BatchLoader(mvcc)
        return loader, lambda: True, loader.close
    if kind == "zeo" and getattr(mvcc, "_start", None) is not None:
        from .storages.zeo import BatchLoader as ZEOBatchLoader
        from .storages.zeo import _can_pipeline

        if _can_pipeline(base):
            return ZEOBatchLoader(mvcc, base), lambda: True, lambda: None
    start = getattr(mvcc, "_start", None)
    if not _is_filestorage(base) or start is None or base.lastTransaction() >= start:
        return mvcc.load, lambda: True, lambda: None
    last = base.lastTransaction()
    # Read through a memory map of the file as it is now (a seek on a
    # buffered file refills its whole buffer for every record); records
    # committed later lie beyond the map and go through the storage.
    with open(base._file_name, "rb") as f:
        try:
            mm: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            return mvcc.load, lambda: True, lambda: None
    buckets = base._index._data.get
    unpack_from = _DATA_HEADER.unpack_from
    hsize = _DATA_HEADER.size
    limit = len(mm) - hsize

    read = [0]

    def load(oid: bytes) -> tuple[bytes, bytes]:
        bucket = buckets(oid[:6])
        p = bucket.get(oid[6:]) if bucket is not None else None
        if p is None:
            return mvcc.load(oid)  # type: ignore[no-any-return]  # raises POSKeyError
        pos = int.from_bytes(p, "big")
        if pos > limit:
            return mvcc.load(oid)  # type: ignore[no-any-return]
        hoid, tid, _prev, _tloc, vlen, plen = unpack_from(mm, pos)
        pos += hsize
        if hoid != oid or vlen or not plen or pos + plen > limit + hsize:
            return mvcc.load(oid)  # type: ignore[no-any-return]
        read[0] += plen + PAGE_SPAN
        if read[0] > DROP_BYTES:
            read[0] = 0
            drop_pages(mm)
        return mm[pos:pos + plen], tid

    def still_valid() -> bool:
        return bool(base.lastTransaction() == last)

    return load, still_valid, mm.close


def iter_current(storage: Any) -> Iterator[tuple[bytes, bytes, bytes]]:
    """Yield ``(oid, tid, data)`` for the current revision of every object.

    The caller may store new revisions of the objects meanwhile: each oid
    is visited once (on a FileStorage, the oids of the index as each run of
    them is reached; on RelStorage, a snapshot of its own; over ZEO, in oid
    order, so an oid stored meanwhile is behind the cursor).
    """
    kind = storage_kind(storage)
    if kind == "filestorage":
        yield from _filestorage(storage, storage._index, with_tid=True)
        return
    if kind == "relstorage":
        from .storages import relstorage

        yield from relstorage.iter_current(storage)
        return
    if kind == "zeo":
        from .storages import zeo

        yield from zeo.iter_current(storage)
        return
    if hasattr(storage, "record_iternext"):
        items = []
        next_ = None
        while True:  # collect first: stores would move the cursor's world
            oid, tid, data, next_ = storage.record_iternext(next_)
            if data is not None:
                items.append(oid)
            if next_ is None:
                break
        for oid in items:
            data, tid = storage.load(oid)
            yield oid, tid, data
        return
    latest: dict[bytes, tuple[bytes, bytes | None]] = {}
    for txn in storage.iterator():
        for rec in txn:
            latest[rec.oid] = (rec.tid, rec.data)
    for oid, (tid, data) in latest.items():
        if data is not None:
            yield oid, tid, data


def _split_points(storage: Any, parts: int) -> list[int]:
    """Index positions (in oid order) that cut the objects into equal parts."""
    total = sum(len(bucket) for bucket in storage._index._data.values())
    return sorted({total * k // parts for k in range(1, parts)} - {0, total})


def map_records(
    storage: Any,
    func: Callable[[Iterator[tuple[bytes, bytes]]], T],
    progress: Progress | None = None,
    jobs: int | None = None,
) -> list[T]:
    """Apply ``func`` to the records of ``storage``; one result per part.

    A FileStorage with at least :data:`PARALLEL_MIN_RECORDS` objects is cut
    into ``jobs`` parts (default: the number of CPUs, at most 4) scanned in
    forked processes; every other storage is one part scanned here.
    ``func`` receives an iterator of ``(oid, data)`` and returns a picklable
    result.
    """
    total = count_records(storage)
    if jobs is None:
        jobs = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1), 4)
    if (
        jobs < 2
        or not _is_filestorage(storage)
        or (total or 0) < PARALLEL_MIN_RECORDS
        or not hasattr(os, "fork")
    ):
        return [func(iter_records(storage, progress))]
    cuts = _split_points(storage, jobs)
    bounds = list(zip([0, *cuts], [*cuts, None]))
    children = []
    for start, stop in bounds[1:]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: scan its part, send the pickled result, exit
            code = 0
            try:
                os.close(r)
                try:
                    part = _filestorage(storage, storage._index, start, stop)
                    payload = pickle.dumps(("ok", func(part)))
                except BaseException as exc:  # reported by the parent
                    try:
                        payload = pickle.dumps(("error", exc))
                    except Exception:  # an error that does not pickle: its text does
                        payload = pickle.dumps(
                            ("error", ScanWorkerError(f"{type(exc).__name__}: {exc}")))
                with os.fdopen(w, "wb") as out:
                    out.write(payload)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        children.append((pid, r))
    start, stop = bounds[0]
    scale = len(bounds)

    def scaled(done: int, _total: int | None) -> None:
        assert progress is not None
        progress(min(done * scale, total or done * scale), total)

    it = _filestorage(storage, storage._index, start, stop)
    if progress is not None:
        it = _with_progress(it, scaled)
    results = [func(it)]
    for pid, r in children:
        with os.fdopen(r, "rb") as inp:
            try:  # read as it is unpickled: the pickled bytes are never held whole
                status, value = pickle.load(inp)
            except (EOFError, pickle.UnpicklingError):
                status = None
        os.waitpid(pid, 0)
        if status is None:
            raise ScanWorkerError("it exited without sending a result")
        if status == "error":
            raise value
        results.append(value)
    if progress is not None:
        progress(total or 0, total)
    return results


def _with_progress(it: Iterator[T], progress: Progress) -> Iterator[T]:
    done = 0
    progress(0, None)
    for item in it:
        yield item
        done += 1
        if not done % _STEP:
            progress(done, None)


def _iternext(storage: Any) -> Iterator[tuple[bytes, bytes]]:
    next_ = None
    while True:
        oid, tid, data, next_ = storage.record_iternext(next_)
        if data is not None:
            yield oid, data
        if next_ is None:
            return


def _latest(storage: Any) -> Iterator[tuple[bytes, bytes]]:
    latest: dict[bytes, bytes | None] = {}
    for txn in storage.iterator():
        for rec in txn:
            latest[rec.oid] = rec.data
    for oid, data in latest.items():
        if data is not None:
            yield oid, data
