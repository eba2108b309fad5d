"""Offline repair: rename the classes (and other globals) records name.

:func:`rename_classes` rewrites stored records so that the class metadata,
every global named in the state (plain objects, reduce functions) and the
class part of persistent references use new names.  Nothing in a record is
imported or executed, and neither the old nor the new code needs to be
importable; there is no need to plant fake modules in ``sys.modules``.

How a record is rewritten
-------------------------

In the pickle protocols ZODB writes (1-3), a global is the GLOBAL opcode
``c<module>\\n<name>\\n`` (INST, ``i...``, for old-style instances) and no
other opcode refers to byte offsets, so renaming is a byte substitution.
A record is a candidate when it holds the module name (or module prefix)
of a rule's source, as GLOBAL opcodes and format-3 class metadata do; the
record analyzer (:func:`pclasses.record.analyze`) then gives the
exact byte range of every GLOBAL/INST opcode, and only those ranges are
replaced (text that merely looks like an opcode is never touched).
Records of format 3 (``((module, name), None)``, a persistent class's
instances) get a new class pickle, cut at the split point of the rewritten
bytes.  A record that cannot be rewritten this way (protocol 4
STACK_GLOBAL, a framed record, format-7 metadata) is reported and left
alone.

Checked against meaning
-----------------------

Every rewritten record is checked to mean what the old one meant, except
for the renamed globals: its inert tree (class and state, as the safe
reader makes them) must equal the old one's.  A record whose class pickle
was replaced is read again by the safe reader and the two trees are
compared (:func:`pclasses.equivalence.differences`; a record that might
nest too deeply to unpickle safely is not compared, so not rewritten); a
record whose GLOBAL/INST opcodes were replaced in place is proven to mean
the same in about a microsecond
(:func:`pclasses.equivalence.substitution_differences`: identical bytes
elsewhere, each replacement exactly one well-formed opcode of the new name,
and the C pre-scan walks the new bytes with the split point where it
belongs).  With the C extension, the common case (class metadata a
GLOBAL, no STACK_GLOBAL, no frame) is renamed and proven the same way in
one C call (:data:`pclasses.record.patch.rename_c`), about 2 us a record;
every other record takes the full path.  A record that fails is reported
as skipped, with the reason, and nothing is written for it.

Batches of records are committed as storage transactions; renaming is
idempotent, so an interrupted run is resumed by running it again.  A
repair runs beside a writing application: a batch that conflicts with the
application's commits is re-read and rewritten from the records as they are
now, then stored again (a bounded number of times, then in halves; a record
that keeps changing is reported as not rewritten), and a batch too large
for the storage's lock table (PostgreSQL's ``max_locks_per_transaction``
under RelStorage) is stored in halves, later batches as small.

Blobs
-----

A record that holds a blob keeps it.  On a storage that keeps blobs
(``IBlobStorage``: FileStorage with a blob directory, ZEO, RelStorage), each
rewritten record is asked for its committed blob file
(``openCommittedBlobFile``: the storage, not the record's bytes, says
whether there is one); a copy goes into the storage's temporary directory
and is stored with the new record by ``storeBlob``, which takes ownership of
the copy.  A storage that says it keeps blobs but has no blob directory here
(a ZEO client without a blob cache) is refused before anything is written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ZODB.utils import oid_repr

from .batches import CONFLICT_RETRIES, lock_table_full, one_line
from .census import Unreadable
from .errors import RecordDecodeError, RepairError
from .record import (
    FramedRecordError,
    analyze,
    read_class,
    read_record,
    rename_globals,
    replace_class_pickle,
    skim,
)
from .record.analyze import Use
from .record.equivalence import differences, substitution_differences
from .record.patch import rename_c
from .registry import ClassRegistry
from .scan import Progress, count_records, iter_current
from .storages import keeps_history, pack_hint, storage_kind

__all__ = ["RepairError", "RepairReport", "rename_classes", "parse_rename"]

_CLASS_META = int(Use.CLASS_META)


@dataclass
class Skipped:
    """A candidate record that was left as it was, and why (``reason`` may
    quote names from the record as they are stored: render it escaped)."""

    oid: bytes
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"oid": oid_repr(self.oid), "reason": self.reason}


@dataclass
class RepairReport:
    """What :func:`rename_classes` did (or, with ``dry_run``, would do)."""

    dry_run: bool
    records: int = 0
    changed: int = 0
    transactions: int = 0
    renamed: dict[str, int] = field(default_factory=dict)
    unreadable: list[Unreadable] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    #: the databases repaired (for a multi-database target)
    databases: list[str] = field(default_factory=list)
    #: bytes the replaced revisions of rewritten records keep taking until
    #: the storage is packed (``None``: the storage keeps no history, or
    #: cannot tell, or nothing was written); blobs of rewritten blob
    #: records are kept twice as well.  (Not in :meth:`to_dict`, whose keys
    #: stay as they were; the command line prints it on stderr.)
    old_revisions_bytes: int | None = None
    #: how to reclaim them (``None`` where nothing is to be reclaimed)
    pack_hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "records": self.records,
            "changed": self.changed,
            "transactions": self.transactions,
            "renamed": dict(self.renamed),
            "unreadable": [u.to_dict() for u in self.unreadable],
            "skipped": [s.to_dict() for s in self.skipped],
            "databases": list(self.databases),
        }


def parse_rename(text: str) -> tuple[str, str]:
    """``OLD=NEW`` from the command line (``old.pkg.*=new.pkg.*`` for modules)."""
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise RepairError(f"--rename expects OLD=NEW, got {text!r}")
    return old.strip(), new.strip()


def _check_name(text: Any) -> None:
    """A rename rule's names are printable text (a newline would end a GLOBAL)."""
    if not isinstance(text, str) or not text.isprintable():
        raise RepairError(f"a rename rule needs printable dotted names, got {text!r}")


def _rules(renames: Mapping[str, str] | None, registry: ClassRegistry | None) -> ClassRegistry:
    rules = ClassRegistry()
    if registry is not None:
        for old, new in registry.aliases.items():
            _check_name(new)
            rules.alias(old, new)
        for old, new in registry.module_aliases.items():
            _check_name(new)
            rules.alias_module(old, new)
    for old, new in (renames or {}).items():
        _check_name(old)
        _check_name(new)
        if old.endswith(".*") and new.endswith(".*"):
            rules.alias_module(old[:-2], new[:-2])
        else:
            rules.alias(old, new)
    return rules


def _candidate_pattern(rules: ClassRegistry) -> re.Pattern[bytes] | None:
    """Bytes every record that may name a renamed global contains.

    A GLOBAL/INST opcode holds ``<module>\\n<name>\\n``; class metadata of
    format 3 (instances of persistent classes) holds the module as a string
    literal; so the module name (or module prefix) is what a candidate holds.
    """
    parts = set()
    for old in rules.aliases:
        parts.add(old.rpartition(".")[0])
    parts.update(rules.module_aliases)
    if not parts:
        return None
    return re.compile(b"|".join(re.escape(p.encode()) for p in sorted(parts)))


def rename_classes(
    storage_or_target: Any,
    renames: Mapping[str, str] | None = None,
    *,
    registry: ClassRegistry | None = None,
    dry_run: bool = False,
    batch_size: int = 10_000,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> RepairReport:
    """Rewrite records so every renamed global uses its new name.

    ``renames`` maps old dotted names to new ones (``'old.mod.Cls':
    'new.mod.Cls'``, zodbupdate's ``'old.mod Cls'`` form too, and
    ``'old.pkg.*': 'new.pkg.*'`` for whole modules); ``registry`` adds its
    class and module aliases (for example those loaded from entry points).
    ``storage_or_target`` is a storage or anything :func:`pclasses.open`
    takes.  Returns a :class:`RepairReport`; unreadable records are reported
    (and passed to ``warn``) and skipped, never fatal.
    """
    rules = _rules(renames, registry)
    pattern = _candidate_pattern(rules)
    targets = _Targets(rules)
    report = RepairReport(dry_run)
    storages, close = _storages(storage_or_target, dry_run)
    try:
        if not dry_run:
            for name, storage in storages:
                if storage.isReadOnly():
                    where = f" (database {name!r})" if name else ""
                    raise RepairError(f"the storage{where} is read-only; nothing was changed",
                                      database=name)
                _check_blob_support(storage, name)
        for name, storage in storages:
            if name:
                report.databases.append(name)
            _rename_storage(storage, pattern, targets, report, dry_run, batch_size,
                            progress, warn)
        report.renamed = {f"{m}.{n}": count for (m, n), count in targets.counts.items()}
        for s in report.skipped:
            if warn is not None:
                warn(f"record {oid_repr(s.oid)} not rewritten: {s.reason}")
        return report
    finally:
        close()


def _rename_storage(storage: Any, pattern: re.Pattern[bytes] | None, targets: _Targets,
                    report: RepairReport, dry_run: bool, batch_size: int,
                    progress: Progress | None, warn: Callable[[str], None] | None) -> None:
    if pattern is None:
        return
    total = count_records(storage)
    if progress is not None:
        progress(0, total)
    committers = [_Committer(storage, pattern, targets, batch_size)]
    # RelStorage: the scan streams through a connection (and snapshot) of its
    # own, so batches are committed in threads while the scan reads on
    sink: _Committer | _InBackground = committers[0]
    if not dry_run and storage_kind(storage) == "relstorage":
        committers += [_Committer(storage, pattern, targets, batch_size)
                       for _ in range(RELSTORAGE_COMMITTERS - 1)]
        sink = _InBackground(committers)
    try:
        try:
            _scan_and_commit(storage, pattern, targets, report, dry_run, sink, progress,
                             warn, total)
        except BaseException:
            sink.close(abandon=True)
            raise
        sink.close()
    finally:
        for committer in committers:
            committer.release()
            committer.merge_into(report)
    old_bytes = sum(committer.old_bytes for committer in committers)
    if old_bytes and keeps_history(storage):
        report.old_revisions_bytes = (report.old_revisions_bytes or 0) + old_bytes
        report.pack_hint = pack_hint(storage)


def _scan_and_commit(storage: Any, pattern: re.Pattern[bytes], targets: _Targets,
                     report: RepairReport, dry_run: bool, sink: _Committer | _InBackground,
                     progress: Progress | None, warn: Callable[[str], None] | None,
                     total: int | None) -> None:
    """Scan every current record; hand each batch of rewritten records
    (with the sizes of the revisions they replace) to ``sink``.  Only the
    batch being filled is held here."""
    batch: list[tuple[bytes, bytes, bytes]] = []
    sizes: dict[bytes, int] = {}
    done = 0
    size = sink.size
    for oid, tid, data in iter_current(storage):
        done += 1
        if progress is not None and not done % 4096:
            progress(done, total)
        new = _candidate(oid, data, pattern, targets, report, warn)
        if new is None:
            continue
        report.changed += 1
        if not dry_run:
            batch.append((oid, tid, new))
            sizes[oid] = len(data)
            if len(batch) >= size:
                sink.commit(batch, sizes)
                batch, sizes = [], {}
                size = sink.size
    if batch:
        sink.commit(batch, sizes)
    report.records += done
    if progress is not None:
        progress(done, total)


def _candidate(oid: bytes, data: bytes, pattern: re.Pattern[bytes], targets: _Targets,
               report: RepairReport, warn: Callable[[str], None] | None) -> bytes | None:
    """The rewritten record, or ``None`` when ``data`` stays as it is."""
    if pattern.search(data) is None:
        try:  # still report records that cannot be read at all
            skim(data)
        except ValueError as exc:
            report.unreadable.append(Unreadable(oid, str(exc)))
            if warn is not None:
                warn(f"record {oid_repr(oid)} skipped: {exc}")
        return None
    try:
        new = _rewrite(data, oid, targets, report)
    except RecordDecodeError as exc:
        report.unreadable.append(Unreadable(oid, exc.reason))
        if warn is not None:
            warn(f"record {oid_repr(oid)} skipped: {exc.reason}")
        return None
    if new is None or new == data:
        return None
    return new


#: Committers side by side on RelStorage: one uploads its batch and locks
#: its rows while the other's batch moves; a third would only wait for the
#: move (PostgreSQL moves one transaction at a time, under RelStorage's
#: commit lock) and hold a third batch in memory.
RELSTORAGE_COMMITTERS = 2


class _Committer:
    """Commits batches of rewritten records, so that a repair finishes while
    an application writes: a batch that conflicts is re-read and rewritten
    from the records as they are now, and stored again (at most
    :data:`CONFLICT_RETRIES` times, then in halves); a batch too large for
    the storage's lock table is stored in halves, and later batches stay
    that small.  What cannot be stored is rolled back and the error is one
    line.

    A storage that serves each connection its own view (RelStorage, an
    ``IMVCCStorage``) is written through an instance of its own, brought up
    to date when a batch conflicts, to read its records again.  It is not
    polled before each batch: the storage finds conflicts against the
    records as they are when the batch commits, whatever its instance last
    saw, and each poll would fetch (and the instance process) every change
    committed since, the other committer's batch included (a fifth of a
    history-preserving repair's time).

    What it learns (records dropped or skipped on a re-read, transactions,
    the size of the revisions replaced) it keeps to itself until
    :meth:`merge_into`, so that it may run in a thread of its own."""

    def __init__(self, storage: Any, pattern: re.Pattern[bytes], targets: _Targets,
                 size: int) -> None:
        self.root = storage
        self.storage = storage
        #: sizes of the old revisions of the records committed
        self.old_bytes = 0
        self.transactions = 0
        #: records counted as changed that were not written after all
        self.dropped = 0
        self.skipped: list[Skipped] = []
        self.unreadable: list[Unreadable] = []
        if hasattr(storage, "new_instance") and hasattr(storage, "poll_invalidations"):
            self.storage = storage.new_instance()
        self.pattern = pattern
        #: the rules, with a lookup cache and counts of its own (re-read
        #: records were counted the first time)
        self.targets = _Targets(targets.rules)
        self.size = size

    def commit(self, batch: list[tuple[bytes, bytes, bytes]], sizes: dict[bytes, int]) -> None:
        """Store ``batch``; ``sizes`` maps each oid to the size of the
        revision it replaces."""
        # ConflictError, and RelStorage's CacheConsistencyError when a record
        # changed after the scan read it: both say "read again and retry"
        from transaction.interfaces import TransientError

        pending = [(batch, 0)]
        while pending:
            part, tries = pending.pop()
            if not part:
                continue
            try:
                _commit(self.storage, part)
            except TransientError:
                part = self._reread(part)
                if tries + 1 < CONFLICT_RETRIES:
                    pending.append((part, tries + 1))
                elif len(part) > 1:
                    half = len(part) // 2
                    pending += [(part[half:], 0), (part[:half], 0)]
                elif part:
                    oid = part[0][0]
                    self.dropped += 1
                    self.skipped.append(Skipped(
                        oid, f"it changed while repair ran ({CONFLICT_RETRIES + 1} "
                             "conflicts in a row); run repair again"))
                continue
            except Exception as exc:
                if lock_table_full(exc) and len(part) > 1:
                    half = len(part) // 2
                    self.size = min(self.size, half)
                    pending += [(part[half:], tries), (part[:half], tries)]
                    continue
                raise RepairError(f"a batch failed and was rolled back ({one_line(exc)}); "
                                  "batches committed before it stay repaired, run again to "
                                  "continue") from exc
            self.transactions += 1
            self.old_bytes += sum(sizes.get(oid, 0) for oid, _tid, _new in part)

    def _sync(self) -> None:
        """See what others committed (an MVCC instance polls)."""
        if self.storage is not self.root:
            self.storage.poll_invalidations()

    def close(self, abandon: bool = False) -> None:
        """(Batches are committed as they come: nothing waits.)"""

    def release(self) -> None:
        if self.storage is not self.root:
            self.storage.release()
            self.storage = self.root

    def merge_into(self, report: RepairReport) -> None:
        """Add what the commits learnt to ``report`` (once)."""
        report.changed -= self.dropped
        report.transactions += self.transactions
        report.skipped += self.skipped
        report.unreadable += self.unreadable
        self.dropped = self.transactions = 0
        self.skipped, self.unreadable = [], []

    def _reread(self, part: list[tuple[bytes, bytes, bytes]]
                ) -> list[tuple[bytes, bytes, bytes]]:
        """The records of ``part`` as they are now, rewritten again (those
        that no longer need a change, or went away, drop out)."""
        from ZODB.POSException import POSKeyError

        self._sync()
        if self.storage is not self.root:  # one query for the batch (RelStorage)
            self.storage.prefetch([oid for oid, _tid, _new in part])
        out = []
        for oid, _tid, _new in part:
            try:
                data, tid = self.storage.load(oid)
            except POSKeyError:
                self.dropped += 1
                continue
            scratch = RepairReport(dry_run=False)
            new = _candidate(oid, data, self.pattern, self.targets, scratch, None)
            if new is None:
                self.dropped += 1
                self.unreadable += scratch.unreadable
                self.skipped += scratch.skipped
                continue
            out.append((oid, tid, new))
        return out


class _InBackground:
    """Hands batches to :class:`_Committer` objects, each running in a
    thread of its own, so that the scan reads and rewrites the next batch
    while PostgreSQL stores earlier ones (psycopg2 lets other threads run
    while it waits).  Batches hold disjoint records, so the committers never
    conflict with one another.  At most one batch waits; the first error
    stops the commits and is raised to the scan at its next batch, or by
    :meth:`close`."""

    def __init__(self, committers: list[_Committer]) -> None:
        import queue
        import threading

        self.committers = committers
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        #: set by the first error (and kept after it is raised), or by an
        #: abandoning close: no committer starts another batch
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, args=(each,), daemon=True,
                                          name=f"pclasses-repair-commit-{n}")
                         for n, each in enumerate(committers)]
        for thread in self._threads:
            thread.start()

    @property
    def size(self) -> int:
        """The batch size every committer can store (each learns its own
        from the lock table)."""
        return min(each.size for each in self.committers)

    def _run(self, committer: _Committer) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if not self._stopped:
                try:
                    committer.commit(*item)
                except BaseException as exc:  # raised again in the scan's thread
                    with self._lock:
                        if not self._stopped:
                            self._error = exc
                        self._stopped = True

    def _raise(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def commit(self, batch: list[tuple[bytes, bytes, bytes]], sizes: dict[bytes, int]) -> None:
        self._raise()
        self._queue.put((batch, sizes))

    def close(self, abandon: bool = False) -> None:
        """Wait for the batches handed over and raise the first error; or,
        with ``abandon`` (the scan failed), let the batches being stored
        finish, drop those waiting and raise nothing."""
        if abandon:
            self._stopped = True
        for thread in self._threads:
            if thread.is_alive():
                self._queue.put(None)
        for thread in self._threads:
            thread.join()
        if not abandon:
            self._raise()


def _storages(target: Any, dry_run: bool) -> tuple[list[tuple[str | None, Any]],
                                                   Callable[[], None]]:
    """Every storage of the target (each database of a multi-database)."""
    if hasattr(target, "load") and hasattr(target, "store"):
        return [(None, target)], lambda: None
    if hasattr(target, "storage"):  # a ZODB.DB
        dbs = getattr(target, "databases", None) or {None: target}
        return [(n, d.storage) for n, d in sorted(dbs.items())], lambda: None
    from .database import open as open_db

    db = open_db(target, read_only=dry_run, create=False)
    dbs = sorted(db.databases.items())
    for _name, each in dbs:
        if storage_kind(each.storage) == "relstorage":
            from .storages.relstorage import skip_local_cache

            skip_local_cache(each.storage)

    def close() -> None:
        for _name, each in dbs:
            each.close()

    return [(n, d.storage) for n, d in dbs], close


class _Targets(dict):  # type: ignore[type-arg]
    """``(module, name) -> new (module, name) | None``, computed once per run."""

    def __init__(self, rules: ClassRegistry) -> None:
        super().__init__()
        self.rules = rules
        #: how many records had each global renamed (dotted names at the end)
        self.counts: dict[tuple[str, str], int] = {}

    def lookup(self, module: str, name: str) -> tuple[str, str] | None:
        return self[(module, name)]  # type: ignore[no-any-return]

    def __missing__(self, key: tuple[str, str]) -> tuple[str, str] | None:
        value = self[key] = self.rules.rename_target(*key)
        return value


def _rewrite(data: bytes, oid: bytes, rules: _Targets, report: RepairReport) -> bytes | None:
    """The record with renamed globals, or ``None`` when nothing changes.

    The record analyzer gives the exact byte range of every GLOBAL and INST
    opcode, so only opcodes are rewritten, never text that looks like one.
    A class named by strings (format 3) gets a new class pickle, cut from
    the rewritten bytes at the split point found in those bytes.  The result
    must then mean what the old record meant except for the renamed globals
    (see "Checked against meaning" above); otherwise the record is reported
    as skipped and nothing is written.
    """
    if rename_c is not None and data.__class__ is bytes:
        # One C walk renames and proves the common case (about 2 us);
        # ``None`` sends the record down the full path below.
        try:
            fast = rename_c(data, rules)
        except ValueError as exc:
            raise RecordDecodeError(str(exc), oid=oid) from None
        if fast is not None:
            new, expected = fast
            if not expected:
                return None
            counts = rules.counts
            for pair in expected:
                counts[pair] = counts.get(pair, 0) + 1
            return new
    try:
        a = analyze(data)
    except ValueError as exc:
        raise RecordDecodeError(str(exc), oid=oid) from None
    if a.has_stack_global:
        for g in a.globals:
            if g.opcode == "stack_global" and g.module is not None and g.name is not None \
                    and rules[(g.module, g.name)] is not None:
                report.skipped.append(Skipped(oid, f"{g.module}.{g.name} is named by a "
                                                   "protocol-4 STACK_GLOBAL, which is not "
                                                   "rewritten"))
                return None
    try:
        new, expected = rename_globals(data, a, rules.lookup)
    except FramedRecordError as exc:
        report.skipped.append(Skipped(oid, str(exc)))
        return None
    replaced_class = False
    for g in a.globals:
        if int(g.uses) & _CLASS_META:  # (plain ints: enum arithmetic costs microseconds)
            break
    else:
        klass = read_class(data, oid)
        if klass.format in (3, 7) and klass.pair is not None:
            target = rules[klass.pair]
            if target is not None:
                if klass.format == 7:
                    report.skipped.append(Skipped(oid, "format-7 class metadata is not "
                                                       "rewritten"))
                    return None
                try:
                    split = skim(new)[0]
                except ValueError as exc:
                    report.skipped.append(Skipped(oid, f"the rewritten record does not "
                                                       f"parse: {exc}"))
                    return None
                new = replace_class_pickle(new, split, target)
                expected[klass.pair] = target
                replaced_class = True
    if not expected:
        return None
    if replaced_class:
        reason = _meaning_changed(data, new, oid, expected)
    else:
        reason = substitution_differences(data, a, new, expected)
    if reason is not None:
        report.skipped.append(Skipped(oid, f"the rewritten record would not provably mean "
                                           f"what the old one did ({reason}); not written"))
        return None
    counts = rules.counts
    for pair in expected:
        counts[pair] = counts.get(pair, 0) + 1
    return new


def _meaning_changed(old: bytes, new: bytes, oid: bytes,
                     renamed: dict[tuple[str, str], tuple[str, str]]) -> str | None:
    """What differs between the old record (with ``renamed`` applied) and the
    new one, read by the safe reader; ``None`` when they mean the same."""
    try:
        before = read_record(old, oid)
    except RecordDecodeError as exc:
        return f"the old record does not read: {exc.reason}"
    try:
        after = read_record(new, oid)
    except RecordDecodeError as exc:
        return f"it does not read: {exc.reason}"
    try:
        return differences(before, after, renamed)
    except (RecursionError, MemoryError):
        return "too large or deep to compare"


def _holds_blobs(storage: Any) -> bool:
    """Whether records of ``storage`` may hold blobs (and must keep them)."""
    from ZODB.interfaces import IBlobStorage

    return bool(IBlobStorage.providedBy(storage))


def _check_blob_support(storage: Any, name: str | None) -> None:
    """Refuse up front a blob storage opened without a usable blob directory.

    A ZEO client of a server with blobs, opened without a blob cache, says
    it stores blobs but can neither read nor write one: a rewritten blob
    record would lose its blob.
    """
    if not _holds_blobs(storage):
        return
    try:
        directory = storage.temporaryDirectory()
    except Exception:
        directory = None
    if not directory or not os.path.isdir(directory):
        where = f" (database {name!r})" if name else ""
        raise RepairError(f"the storage{where} holds blobs but was opened without a blob "
                          "directory (give it one, e.g. blob_dir); nothing was changed",
                          database=name)


def _copy_blob(storage: Any, oid: bytes, tid: bytes, directory: str) -> str | None:
    """A private copy of the blob ``(oid, tid)`` holds, in ``directory``, or
    ``None`` when the record holds no blob.

    ``storeBlob`` takes ownership of the file it is given (it moves it), so
    the committed file itself is never handed over.
    """
    from ZODB.POSException import POSKeyError

    try:
        committed = storage.openCommittedBlobFile(oid, tid)
    except POSKeyError:
        return None
    with committed:
        fd, path = tempfile.mkstemp(prefix="pclasses-repair-", suffix=".blob", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(committed, out, 1 << 20)
        except BaseException:
            os.unlink(path)
            raise
    return path


def _commit(storage: Any, batch: list[tuple[bytes, bytes, bytes]]) -> None:
    """Store ``batch`` (``(oid, serial, new data)``) in one storage transaction,
    or roll it back and raise what the storage raised.

    A record that holds a blob keeps it: a copy of its committed blob file
    is stored with the new record (``storeBlob``), on every storage.  The
    copies are made before the transaction starts.
    """
    from ZODB.Connection import TransactionMetaData

    t = TransactionMetaData(user="pclasses", description="pclasses repair: rename classes")
    copies: dict[bytes, str] = {}
    kind = storage_kind(storage)
    try:
        if _holds_blobs(storage):
            directory = storage.temporaryDirectory()
            with_blobs = None
            if kind == "relstorage":
                from .storages.relstorage import blob_oids

                with_blobs = blob_oids(storage, [oid for oid, _tid, _data in batch])
            for oid, tid, _data in batch:
                if with_blobs is not None and oid not in with_blobs:
                    continue
                path = _copy_blob(storage, oid, tid, directory)
                if path is not None:
                    copies[oid] = path
        storage.tpc_begin(t)
        try:
            if kind == "relstorage":
                from .storages.relstorage import prefer_index_lookups

                prefer_index_lookups(storage)
            for oid, tid, data in batch:
                path = copies.pop(oid, None)
                if path is None:
                    storage.store(oid, tid, data, "", t)
                else:  # the storage owns the file from here on
                    storage.storeBlob(oid, tid, data, path, "", t)
            storage.tpc_vote(t)
            storage.tpc_finish(t)
        except BaseException:
            storage.tpc_abort(t)
            raise
    finally:
        for path in copies.values():  # copies never handed to the storage
            try:
                os.unlink(path)
            except OSError:
                pass
