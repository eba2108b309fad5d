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
A record is a candidate when a compiled pattern of every rule's source
matches; the safe reader then counts how many GLOBAL/INST opcodes name each
renamed global, and the substitution happens only when the bytes hold
exactly that many occurrences (so text that merely looks like an opcode is
never touched).  The rewritten record is read again and must name exactly
the renamed globals.  Records of format 3 (``((module, name), None)``, a
persistent class's instances) get a new class pickle.  A record that
cannot be rewritten this way (protocol 4 STACK_GLOBAL, say) is reported and
left alone.

Batches of records are committed as storage transactions; renaming is
idempotent, so an interrupted run is resumed by running it again.
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

from .census import Unreadable
from .errors import PClassesError, RecordDecodeError
from .record.reader import global_occurrences, read_class
from .record.patch import FramedRecordError, rename_globals, replace_class_pickle
from .record.analyze import analyze, skim
from .registry import ClassRegistry
from .scan import Progress, count_records, iter_current

__all__ = ["RepairError", "RepairReport", "rename_classes", "parse_rename"]


class RepairError(PClassesError, RuntimeError):
    """A repair could not start or could not go on."""


@dataclass
class Skipped:
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


def _rules(renames: Mapping[str, str] | None, registry: ClassRegistry | None) -> ClassRegistry:
    rules = ClassRegistry()
    if registry is not None:
        for old, new in registry.aliases.items():
            rules.alias(old, new)
        for old, new in registry.module_aliases.items():
            rules.alias_module(old, new)
    for old, new in (renames or {}).items():
        if old.endswith(".*") and new.endswith(".*"):
            rules.alias_module(old[:-2], new[:-2])
        else:
            rules.alias(old, new)
    return rules


def _candidate_pattern(rules: ClassRegistry) -> re.Pattern[bytes] | None:
    parts = []
    for old in rules.aliases:
        module, _, name = old.rpartition(".")
        parts.append(re.escape(f"{module}\n{name}\n".encode()))
    for old in rules.module_aliases:
        parts.append(re.escape(old.encode()) + rb"[.\n]")
    if not parts:
        return None
    return re.compile(rb"[ci](?:" + b"|".join(parts) + rb")")


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
                    raise RepairError(f"the storage{where} is read-only; nothing was changed")
        for name, storage in storages:
            if name:
                report.databases.append(name)
            _rename_storage(storage, pattern, targets, report, dry_run, batch_size,
                            progress, warn)
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
    batch: list[tuple[bytes, bytes, bytes]] = []
    done = 0
    if progress is not None:
        progress(0, total)
    for oid, tid, data in iter_current(storage):
        done += 1
        if progress is not None and not done % 4096:
            progress(done, total)
        if pattern.search(data) is None:
            try:  # still report records that cannot be read at all
                skim(data)
            except ValueError as exc:
                report.unreadable.append(Unreadable(oid, str(exc)))
                if warn is not None:
                    warn(f"record {oid_repr(oid)} skipped: {exc}")
            continue
        try:
            new = _rewrite(data, oid, targets, report)
        except RecordDecodeError as exc:
            report.unreadable.append(Unreadable(oid, exc.reason))
            if warn is not None:
                warn(f"record {oid_repr(oid)} skipped: {exc.reason}")
            continue
        if new is None or new == data:
            continue
        report.changed += 1
        if not dry_run:
            batch.append((oid, tid, new))
            if len(batch) >= batch_size:
                _commit(storage, batch)
                report.transactions += 1
                batch = []
    if batch:
        _commit(storage, batch)
        report.transactions += 1
    report.records += done
    if progress is not None:
        progress(done, total)


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

    def close() -> None:
        for _name, each in dbs:
            each.close()

    return [(n, d.storage) for n, d in dbs], close


class _Targets(dict):  # type: ignore[type-arg]
    """``(module, name) -> new (module, name) | None``, computed once per run."""

    def __init__(self, rules: ClassRegistry) -> None:
        super().__init__()
        self.rules = rules

    def __missing__(self, key: tuple[str, str]) -> tuple[str, str] | None:
        value = self[key] = self.rules.rename_target(*key)
        return value


def _rewrite(data: bytes, oid: bytes, rules: _Targets, report: RepairReport) -> bytes | None:
    """The record with renamed globals, or ``None`` when nothing changes.

    The record analyzer gives the exact byte range of every GLOBAL and INST
    opcode, so only opcodes are rewritten, never text that looks like one.
    """
    try:
        a = analyze(data)
    except ValueError as exc:
        raise RecordDecodeError(str(exc), oid=oid) from None
    for module, name, _offset, _end, opcode, _uses in a.globals:
        if opcode == "stack_global" and module is not None and name is not None \
                and rules[(module, name)] is not None:
            report.skipped.append(Skipped(oid, f"{module}.{name} is named by a protocol-4 "
                                               "STACK_GLOBAL, which is not rewritten"))
            return None
    try:
        new, renamed_here = rename_globals(data, a, lambda m, n: rules[(m, n)])
    except FramedRecordError as exc:
        report.skipped.append(Skipped(oid, str(exc)))
        return None
    if not any(g[5] & 8 for g in a.globals):
        klass = read_class(data, oid)
        if klass.format in (3, 7) and klass.pair is not None:
            target = rules[klass.pair]
            if target is not None:
                if klass.format == 7:
                    report.skipped.append(Skipped(oid, "format-7 class metadata is not "
                                                       "rewritten"))
                    return None
                new = replace_class_pickle(new, a.end1, target)
                if global_occurrences(new, oid)[0] != [
                        renamed_here.get(g, g) for g in global_occurrences(data, oid)[0]]:
                    report.skipped.append(Skipped(oid, "the rewritten record did not read "
                                                       "back as expected"))
                    return None
                renamed_here[klass.pair] = target
    if not renamed_here:
        return None
    for (module, name) in renamed_here:
        key = f"{module}.{name}"
        report.renamed[key] = report.renamed.get(key, 0) + 1
    return new


def _commit(storage: Any, batch: list[tuple[bytes, bytes, bytes]]) -> None:
    from ZODB.blob import is_blob_record
    from ZODB.Connection import TransactionMetaData

    t = TransactionMetaData(user="pclasses", description="pclasses repair: rename classes")
    tmpdir = None
    storage.tpc_begin(t)
    try:
        for oid, tid, data in batch:
            if is_blob_record(data) and hasattr(storage, "loadBlob"):
                tmpdir = tmpdir or tempfile.mkdtemp(prefix="pclasses-repair-")
                copy = os.path.join(tmpdir, oid.hex())
                shutil.copyfile(storage.loadBlob(oid, tid), copy)
                storage.storeBlob(oid, tid, data, copy, "", t)
            else:
                storage.store(oid, tid, data, "", t)
        storage.tpc_vote(t)
        storage.tpc_finish(t)
    except BaseException as exc:
        storage.tpc_abort(t)
        raise RepairError(f"a batch failed and was rolled back ({type(exc).__name__}: {exc}); "
                          "batches committed before it stay repaired, run again to "
                          "continue") from exc
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
