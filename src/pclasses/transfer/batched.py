"""Import beside a live site: check the whole file, store it in batches, link it last.

:func:`import_subtree` stores everything in the caller's transaction: right
for a library caller, but one transaction of millions of records holds
PostgreSQL's lock table (RelStorage takes a lock an object it stores) and
conflicts with any application commit touching the container.
:func:`import_in_batches` is what the command line runs:

1. **Check** the whole file exactly as :func:`import_subtree` does; nothing
   is written before every check has passed.
2. **Small imports** (no more records than ``batch_size``) stay one
   transaction, as before; a conflict with the application re-reads the
   container and runs the import again (at most
   :data:`~pclasses.batches.CONFLICT_RETRIES` times).
3. **Large imports** store their records under their new oids in storage
   transactions of ``batch_size`` records.  Nobody else can write those
   oids (the storage handed them to this import alone), so these batches
   never conflict with the application; until the last step nothing refers
   to them, so the site sees nothing.  A batch too large for the storage's
   lock table (PostgreSQL's ``out of shared memory``) is stored in halves,
   and later batches stay that small.
4. **Link**: one last, small transaction binds placeholder classes and puts
   the imported root into its container; when the application changed the
   container meanwhile, it is read again and the link made again (at most
   :data:`LINK_RETRIES` times, after a short random pause that grows, then a
   one-line error).

A large import that fails after its first batch leaves the site as it was
for every reader: the records stored so far are unreachable (no object
refers to them) and the next pack removes them; the error says how many.
An import whose records hold intrinsic references (:mod:`pclasses.refs`)
registers them in the same transaction as the records, so it is always
stored in one transaction.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

from ..errors import TransferError
from ..registry import ClassRegistry
from ..scan import Progress
from ..trust import Trust
from .format import Reader, opened
from .importer import CheckPass, import_subtree
from .paths import resolve_path
from .policy import ImportPolicy
from .records import no_gc
from .reports import ImportReport
from .store import Plan

__all__ = ["import_in_batches", "BATCH_SIZE", "LINK_RETRIES"]

#: records a storage transaction of a large import holds (and the most a
#: small import stores in one transaction)
BATCH_SIZE = 10_000
#: how often the link (one small transaction, cheap to make again) is
#: retried when the application changed the container meanwhile; after
#: hours of stored batches, giving up on a busy container is the worst
#: outcome, so this is more than a batch's
#: :data:`~pclasses.batches.CONFLICT_RETRIES`
LINK_RETRIES = 10


def import_in_batches(
    db: Any,
    file: str | os.PathLike[str],
    *,
    into: str = "/",
    name: str | None = None,
    batch_size: int = BATCH_SIZE,
    missing: str = "error",
    registry: ClassRegistry | None = None,
    progress: Progress | None = None,
    trust: Trust | Iterable[str] | None = None,
    default_name: str | None = None,
    allow_code: bool = False,
    strict: Iterable[str] | None = None,
    references: str = "error",
    note: str | None = None,
) -> ImportReport:
    """Import the export ``file`` into ``db`` under ``name`` in the container
    at path ``into`` (:func:`~pclasses.transfer.resolve_path`), committing
    in batches of ``batch_size`` records while an application may write
    (see the module's description); returns the
    :class:`~pclasses.transfer.reports.ImportReport`.  The other options
    are :func:`import_subtree`'s; ``note`` is the transactions' note."""
    import transaction as txn
    from transaction.interfaces import TransientError

    from ..batches import CONFLICT_RETRIES, lock_table_full, one_line

    if batch_size < 1:
        raise TransferError(f"batch_size must be at least 1, not {batch_size}")
    options: dict[str, Any] = dict(missing=missing, registry=registry, trust=trust,
                                   allow_code=allow_code, strict=strict)
    records = _count(file)
    tm = txn.TransactionManager()
    conn = db.open(tm)
    try:
        if records <= batch_size:
            for attempt in range(CONFLICT_RETRIES + 1):
                try:
                    return _one_transaction(conn, tm, file, into, name, progress,
                                            default_name, references, note, options)
                except TransientError as exc:
                    tm.abort()
                    if attempt < CONFLICT_RETRIES:
                        _pause(attempt)
                    else:
                        raise TransferError(
                            f"the import conflicted with other writers "
                            f"{CONFLICT_RETRIES + 1} times ({one_line(exc)}); nothing was "
                            "imported, run it again") from None
                except Exception as exc:
                    tm.abort()
                    if not (lock_table_full(exc) and records > 1):
                        raise
                    batch_size = max(1, records // 2)  # the lock table is smaller
                    break
        return _large(conn, tm, file, into, name, batch_size, progress, default_name,
                      references, note, options)
    finally:
        tm.abort()
        conn.close()


def _pause(attempt: int) -> None:
    """A short random wait before the next try, longer each time (as
    Zope's publisher retries), so the writer it conflicted with is done."""
    import random
    import time

    time.sleep(random.uniform(0, 0.05 * (attempt + 1)))


def _count(file: str | os.PathLike[str]) -> int:
    """How many records the file says it holds: its manifest's count, or a
    ``.zexp``'s frames counted.  It only chooses between one transaction
    and batches; the check pass holds the file to it before anything is
    written."""
    with opened(file) as f:
        reader = Reader(f)
        if reader.manifest is not None:
            return max(reader.manifest.record_count, 0)
        n = 0
        try:
            for _oid in reader.oids():
                n += 1
        except TransferError:
            pass  # the check pass reports it
        return n


def _large(conn: Any, tm: Any, file: str | os.PathLike[str], into: str, name: str | None,
           batch_size: int, progress: Progress | None, default_name: str | None,
           references: str, note: str | None, options: dict[str, Any]) -> ImportReport:
    from transaction.interfaces import TransientError

    from ..batches import one_line
    from ..refs.transfer import POLICIES

    registry = options["registry"]
    if registry is None:
        registry = getattr(conn.db().classFactory, "registry", None) or ClassRegistry()
    strict = options["strict"]
    policy = ImportPolicy(allow_code=bool(options["allow_code"]),
                          strict=None if strict is None
                          else (strict,) if isinstance(strict, str) else tuple(strict))
    if options["missing"] not in ("error", "broken"):
        raise TransferError(f"missing must be 'error' or 'broken', not {options['missing']!r}")
    tm.begin()
    with opened(file) as f:
        with no_gc():
            reader = Reader(f)
            reader.verify()
            plan = CheckPass(conn, registry, options["missing"], progress, reader,
                             trust=options["trust"], policy=policy).run()
        try:
            if plan.reference_holders or references not in POLICIES:
                # intrinsic references are registered with their records
                tm.abort()
                plan.temp.close()
                plan.temp = None
                return _one_transaction(conn, tm, file, into, name, progress, default_name,
                                        references, note, options)
            key = name or (reader.manifest.name if reader.manifest else None) or default_name
            _check_key(resolve_path(conn, into), key)
            tm.abort()  # (nothing was written: the checks only read)
            stored = _store_batches(conn, plan, batch_size, progress, note)
            report = plan.report
            assert report is not None and key is not None
            for attempt in range(LINK_RETRIES + 1):
                try:
                    tm.begin()  # sees the batches (and what the site committed)
                    container = resolve_path(conn, into)
                    _check_key(container, key)
                    if plan.placeholders:
                        from ..pclass import add_placeholder

                        for guid, (oid, cname) in sorted(plan.placeholders.items()):
                            add_placeholder(conn, guid, cname, oid)
                    obj = conn.get(plan.root)
                    container[key] = obj
                    if note:
                        tm.get().note(note)
                    tm.commit()
                    break
                except TransientError as exc:
                    tm.abort()
                    if attempt < LINK_RETRIES:
                        _pause(attempt)
                    else:
                        raise TransferError(
                            f"linking the import into {into!r} conflicted with other writers "
                            f"{LINK_RETRIES + 1} times ({one_line(exc)}); the "
                            f"{stored.records} records stored are unreachable (a pack removes "
                            "them), run the import again") from None
                except TransferError:
                    tm.abort()
                    raise
                except Exception as exc:
                    tm.abort()
                    raise TransferError(
                        f"linking the import into {into!r} failed ({one_line(exc)}); the "
                        f"{stored.records} records stored are unreachable (a pack removes "
                        "them)") from None
        finally:
            if plan.temp is not None:
                plan.temp.close()
    report.object = obj
    report.name = key
    report.file = os.fspath(file)
    report.transactions = stored.transactions + 1
    return report


def _one_transaction(conn: Any, tm: Any, file: Any, into: str, name: str | None,
                     progress: Progress | None, default_name: str | None, references: str,
                     note: str | None, options: dict[str, Any]) -> ImportReport:
    tm.begin()
    report = import_subtree(conn, file, into=resolve_path(conn, into), name=name,
                            progress=progress, default_name=default_name,
                            references=references, report=True, **options)
    if note:
        tm.get().note(note)
    tm.commit()
    report.transactions = 1
    return report


def _check_key(container: Any, key: str | None) -> None:
    if not key:
        raise TransferError("give a name to import into a container")
    if key in container:
        raise TransferError(f"{key!r} already exists in the target container")


class _Stored:
    """What the batches stored."""

    def __init__(self) -> None:
        self.records = 0
        self.transactions = 0


def _store_batches(conn: Any, plan: Plan, size: int, progress: Progress | None,
                   note: str | None) -> _Stored:
    """Store the prepared records under their new oids, ``size`` records a
    storage transaction; a batch too large for the lock table in halves."""
    from ..batches import CONFLICT_RETRIES, lock_table_full, one_line

    base = conn.db().storage
    storage = base
    if hasattr(base, "new_instance") and hasattr(base, "poll_invalidations"):
        storage = base.new_instance()  # (RelStorage: a view of its own)
    stored = _Stored()
    try:
        batch: list[tuple[bytes, bytes, tuple[int, int] | None]] = []

        def flush() -> None:
            nonlocal size
            pending = [(list(batch), 0)]
            batch.clear()
            while pending:
                part, tries = pending.pop()
                try:
                    _commit(storage, part, plan, note)
                except Exception as exc:
                    from transaction.interfaces import TransientError

                    if isinstance(exc, TransientError) and tries < CONFLICT_RETRIES:
                        pending.append((part, tries + 1))
                        continue
                    if lock_table_full(exc) and len(part) > 1:
                        half = len(part) // 2
                        size = min(size, half)
                        pending += [(part[half:], tries), (part[:half], tries)]
                        continue
                    where = (f"; the {stored.records} records stored before are unreachable "
                             "(a pack removes them)") if stored.records else ""
                    raise TransferError(f"storing a batch of the import failed "
                                        f"({one_line(exc)}){where}") from None
                stored.records += len(part)
                stored.transactions += 1
                if progress is not None:
                    progress(stored.records, plan.records)

        for oid, _pos, data, blob in plan.index.records():
            batch.append((oid, data, blob))
            if len(batch) >= size:
                flush()
        if batch:
            flush()
    finally:
        if storage is not base:
            storage.release()
    return stored


def _commit(storage: Any, part: list[tuple[bytes, bytes, tuple[int, int] | None]],
            plan: Plan, note: str | None) -> None:
    """One storage transaction of new records (and their blobs, copied from
    the export file), or none: rolled back on any error."""
    from ZODB.Connection import TransactionMetaData

    if hasattr(storage, "poll_invalidations"):
        storage.poll_invalidations()
    t = TransactionMetaData(user="pclasses", description=note or "pclasses import")
    directory = None
    if any(blob is not None for _o, _d, blob in part):
        temporary = getattr(storage, "temporaryDirectory", None)
        directory = tempfile.mkdtemp(prefix="pclasses-import-",
                                     dir=temporary() if temporary is not None else None)
    try:
        storage.tpc_begin(t)
        try:
            for oid, data, blob in part:
                if blob is None:
                    storage.store(oid, None, data, "", t)
                    continue
                assert directory is not None
                path = os.path.join(directory, oid.hex())
                plan.reader.blob_to(blob, path)
                storage.storeBlob(oid, None, data, path, "", t)  # (it takes the file)
            storage.tpc_vote(t)
            storage.tpc_finish(t)
        except BaseException:
            storage.tpc_abort(t)
            raise
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
