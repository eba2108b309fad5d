"""Import: check a whole file, then store its records under new oids.

:func:`import_subtree` runs two passes.  The **check pass**
(:class:`_CheckPass`) reads the whole file: it checks the digest, the
structure, and, with the C record analyzer, every global and persistent
reference each record names (the manifest is never trusted); it gives every
record and reference a new oid and writes the records with their
references' oid bytes replaced to a temporary file; before anything is
written to the target it checks every class against the target's registry
and class table and refuses globals that are neither classes nor allowed
(:mod:`pclasses.transfer.policy`).  The **store pass** (:class:`_Importer`)
copies the prepared records into the storage inside the caller's
transaction (at once through a savepoint, as ZODB's ``importFile`` does, or
when the transaction commits).  Nothing read is unpickled, so nothing in
the file can run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ZODB.utils import oid_repr

from ..classtable import GUID_PREFIX, class_table
from ..connection import CommitImport
from ..errors import (
    ExportFormatError,
    MissingClassesError,
    RefusedGlobalsError,
    TransferError,
)
from ..registry import ClassRegistry
from ..scan import Progress
from ..trust import Trust
from ..skim import analyze as _ANALYZE
from .format import END, Frame, Reader, blob_ref_frame, iter_frames, opened, record_frame
from .policy import (
    CALLED_BY_RECONSTRUCTOR,
    RECONSTRUCTORS,
    REFUSED_PREFIX,
    USE_ARGUMENT,
    USE_CALLED,
    USE_PID_CLASS,
    USE_ROOT_CLASS,
    ImportPolicy,
    check_globals,
)
from .callsites import record_facts
from .records import CLASS_METACLASSES, CLASS_TABLE, analyze, class_record_info, no_gc, \
    record_class

__all__ = ["import_subtree", "NOWHERE"]

#: Where dangling references point after an import: an oid no storage hands
#: out (the last of the 2**64), so a dangling reference never lands on an
#: unrelated object.
NOWHERE = b"\xff" * 8


@dataclass
class _Plan:
    """The result of the check pass: rewritten records, ready to be stored."""

    reader: Reader
    temp: Any  # frames of (new oid, rewritten record), see _CheckPass
    root: bytes  # the new oid of the imported root object
    refused: set[tuple[str, str]]
    records: int = 0


# ---------------------------------------------------------------------------
# The check pass
# ---------------------------------------------------------------------------


@dataclass
class _CheckPass:
    """Check everything and prepare every record, before anything is stored.

    One pass over the file: each record is analysed (never unpickled),
    checked, given a new oid, and written with its references' oid bytes
    replaced to a temporary file that the store pass copies into the
    storage.  New oids are taken from the storage as records and
    references are met: a reference to an oid that is not in the file (a
    weak reference out of the subtree, a dangling one) gets a fresh oid
    nothing will be stored under.
    """

    connection: Any
    registry: ClassRegistry
    missing: str
    progress: Progress | None
    reader: Reader
    trust: Trust | Iterable[str] | None = None
    #: old oid -> new oid (records, references, rebound class records)
    mapping: dict[bytes, bytes] = field(default_factory=dict)
    missing_names: list[str] = field(default_factory=list)
    class_refs_missing: list[str] = field(default_factory=list)
    #: records of the file that are not imported (ZODB's class records)
    skip: set[bytes] = field(default_factory=set)
    seen: set[bytes] = field(default_factory=set)
    #: referenced oids with no record (yet): dangling when the pass ends
    pending: set[bytes] = field(default_factory=set)
    #: every global the records name -> how they use it
    needs: dict[tuple[str, str], int] = field(default_factory=dict)
    externals: set[str] = field(default_factory=set)
    policy: ImportPolicy | None = None
    #: call shapes no renaming makes inert (refused even with "broken")
    shapes: list[str] = field(default_factory=list)
    #: class names of ``(oid, class)`` references (strings cannot be renamed)
    pid_classes: set[tuple[str, str]] = field(default_factory=set)

    def run(self) -> _Plan:
        self.bind_class_references()
        if self.reader.kind == "zexp":
            self.bind_zexp_class_records()
        temp = tempfile.TemporaryFile(prefix="pclasses-import-")
        try:
            root, n = self.prepare_records(temp)
            if self.pending:
                # References to oids not in the file (a weak reference out of
                # the subtree, a reference that dangled in the source) were
                # given fresh oids; after a reopen the storage could hand
                # those out again, so they are pointed at an oid it never
                # allocates.
                temp = _redirect_dangling(temp, {self.mapping[o] for o in self.pending})
            manifest = self.reader.manifest
            if manifest is not None and manifest.record_count != n:
                raise ExportFormatError(f"the manifest says {manifest.record_count} records, "
                                        f"the file holds {n}")
            refused = self.decide()
            temp.write(END)
            temp.flush()
        except BaseException:
            temp.close()
            raise
        return _Plan(self.reader, temp, root, refused, n)

    def bind_class_references(self) -> None:
        """Rebind the manifest's references to classes stored in the source
        database to the target's class table, by guid."""
        manifest = self.reader.manifest
        declared = manifest.class_references if manifest is not None else {}
        if not declared:
            return
        table = class_table(self.connection, create=False)
        for oid, (guid, name) in sorted(declared.items()):
            cls = table.get(guid) if table is not None else None
            if cls is None or cls._p_oid is None:
                self.class_refs_missing.append(f"{GUID_PREFIX}{guid}.{name} "
                                               f"(database-resident class, guid {guid})")
            else:
                self.mapping[oid] = cls._p_oid
        self.missing_names.extend(self.class_refs_missing)

    def bind_zexp_class_records(self) -> None:
        """ZODB's exportFile copies class records along; they are not
        imported but rebound by guid, as our own format does."""
        missing: list[str] = []
        for frame in self.reader.frames():
            a = analyze(frame.data, frame.oid)
            pair = record_class(frame.data, frame.oid, a)
            if pair == CLASS_TABLE:
                self.skip.add(frame.oid)
            elif pair in CLASS_METACLASSES:
                self.skip.add(frame.oid)
                info = class_record_info(frame.data, frame.oid)
                if info is None:
                    raise ExportFormatError(f"class record {oid_repr(frame.oid)} has no guid")
                table = class_table(self.connection, create=False)
                cls = table.get(info[0]) if table is not None else None
                if cls is None or cls._p_oid is None:
                    missing.append(f"{GUID_PREFIX}{info[0]}.{info[1]} "
                                   f"(database-resident class, guid {info[0]})")
                else:
                    self.mapping[frame.oid] = cls._p_oid
        self.class_refs_missing.extend(missing)
        # (the manifest's references were listed already)
        self.missing_names.extend(self.class_refs_missing)

    def prepare_records(self, temp: Any) -> tuple[bytes, int]:
        """Check, remap and write every record; ``(new root oid, records)``."""
        manifest = self.reader.manifest
        declared = manifest.class_references if manifest is not None else {}
        seen = self.seen
        skip = self.skip
        write = temp.write
        root = None
        n = 0
        for frame in self.reader.frames():
            oid, data = frame.oid, frame.data
            if len(oid) != 8:
                raise ExportFormatError("malformed record header")
            if oid in seen:
                raise ExportFormatError(f"record {oid_repr(oid)} appears twice")
            if oid in declared:
                raise ExportFormatError(f"record {oid_repr(oid)} is declared a class reference")
            seen.add(oid)
            if oid in skip:
                continue
            a = analyze(data, oid)
            _check_structure(data, oid, a)
            self.collect_needs(data, oid, a)
            self.check_shapes(data, oid, a, declared)
            if root is None:  # the root object is made during the import
                pair = record_class(data, oid, a)
                if pair is not None:
                    self.needs[pair] = self.needs.get(pair, 0) | USE_ROOT_CLASS
            record = self.remap(data, oid, a)
            new = self.mapping.get(oid)
            if new is None:
                new = self.mapping[oid] = self.connection._storage.new_oid()
            self.pending.discard(oid)
            if root is None:
                root = new
            write(record_frame(new, record))
            write(record)
            if frame.blob is not None:
                write(blob_ref_frame(*frame.blob))
            n += 1
            if self.progress is not None and not n % 4096:
                self.progress(n, None)
        if root is None:
            raise ExportFormatError("the file holds no records")
        return root, n

    def collect_needs(self, data: bytes, oid: bytes, a: Any) -> None:
        """Note every global the record names, with how it uses it."""
        needs = self.needs
        has_class_global = False
        reconstructs = False
        for g in a.globals:
            if (g[0], g[1]) in RECONSTRUCTORS and g[5] & USE_CALLED:
                reconstructs = True
        for g in a.globals:
            key = (g[0], g[1])
            uses = g[5]
            if uses & 8:
                has_class_global = True
            if reconstructs and uses & USE_ARGUMENT:
                uses |= CALLED_BY_RECONSTRUCTOR
            old = needs.get(key)
            if old is None or old | uses != old:
                needs[key] = (old or 0) | uses
        if not has_class_global:
            pair = record_class(data, oid, a)
            if pair is not None:
                needs[pair] = needs.get(pair, 0) | 8

    def check_shapes(self, data: bytes, oid: bytes, a: Any, declared: Any) -> None:
        """Note calls of computed callables, state set on globals, calls of
        persistent objects that are not class references, and the class
        names of ``(oid, class)`` references (:mod:`pclasses.transfer.policy`)."""
        try:
            facts = record_facts(data, a)
        except ValueError as exc:
            raise ExportFormatError(f"record {oid_repr(oid)} is not a readable ZODB record "
                                    f"({exc})") from None
        where = f"record {oid_repr(oid)}"
        self.shapes.extend(f"{where}: {p}" for p in facts.problems)
        for target in facts.pid_calls:
            # A plain instance of a database-resident class: its class must
            # be a class reference rebound to the target's class table.
            if target is None or not (target in declared or target in self.skip):
                self.shapes.append(f"{where}: a call of a persistent object that is not a "
                                   "class reference")
        for part in a.pid_classes:
            if isinstance(part, tuple) and part[0] is not None and part[1] is not None:
                pair = (part[0], part[1])
                self.pid_classes.add(pair)
                self.needs[pair] = self.needs.get(pair, 0) | USE_PID_CLASS

    def remap(self, data: bytes, oid: bytes, a: Any) -> bytes:
        """The record with every reference's oid bytes replaced by its new oid."""
        mapping = self.mapping
        out = None
        for kind, off, length, database, shared, _pi in a.pids:
            if kind == "unknown" or off < 0 or shared:
                raise ExportFormatError(f"record {oid_repr(oid)} has a reference that "
                                        "cannot be rebound without unpickling")
            if length != 8:
                raise ExportFormatError(f"record {oid_repr(oid)} has a malformed oid")
            if database is not None:
                self.externals.add(database)
                continue  # the other database's oid stays
            end = off + 8
            target = data[off:end]
            new = mapping.get(target)
            if new is None:
                new = mapping[target] = self.connection._storage.new_oid()
                self.pending.add(target)
            if out is None:
                out = bytearray(data)
            out[off:end] = new  # (several references may share one literal)
        return data if out is None else bytes(out)

    def decide(self) -> set[tuple[str, str]]:
        """Refuse (raise) or accept what the records need; the refused
        globals to make inert with ``missing="broken"``."""
        connection = self.connection
        verdict = check_globals(self.needs, self.registry, connection, self.missing,
                                self.trust, self.policy)
        more_missing, refused = verdict.missing, set(verdict.refused)
        if self.shapes or refused & self.pid_classes:
            # Neither a computed callable nor a class named by strings in a
            # reference can be renamed away: refused even with "broken".
            raise RefusedGlobalsError(verdict.refused_names + self.shapes, verdict.reasons)
        missing_names = self.missing_names + more_missing
        dbs = getattr(connection.db(), "databases", {}) or {}
        for database in sorted(self.externals):
            if database not in dbs:
                missing_names.append(f"database {database!r} (cross-database references)")
        if refused and self.missing == "error":
            raise RefusedGlobalsError(verdict.refused_names, verdict.reasons)
        missing_names = list(dict.fromkeys(missing_names))
        class_refs_missing = list(dict.fromkeys(self.class_refs_missing))
        if missing_names and self.missing == "error":
            raise MissingClassesError(missing_names)
        if class_refs_missing:
            # A plain instance of (or a reference to) a class stored in the
            # source database needs that class record; without it there is
            # nothing to import it as, not even a broken object.
            raise MissingClassesError(class_refs_missing)
        return refused


def _check_structure(data: bytes, oid: bytes, a: Any) -> None:
    """Refuse records import cannot rebind safely."""
    if a.has_ext:
        raise ExportFormatError(f"record {oid_repr(oid)} uses pickle extension codes")
    if a.protocol > 5 or not data.endswith(b"."):
        raise ExportFormatError(f"record {oid_repr(oid)} is not a readable ZODB record")
    if a.has_stack_global:
        raise ExportFormatError(f"record {oid_repr(oid)} uses protocol-4 globals, "
                                "which import cannot rebind safely")


def _redirect_dangling(temp: Any, fresh: set[bytes]) -> Any:
    """Rewrite the prepared records: every fresh-but-unused oid -> NOWHERE."""
    out = tempfile.TemporaryFile(prefix="pclasses-import-")
    temp.write(END)
    temp.flush()
    size = temp.tell()
    temp.seek(0)
    for frame in iter_frames(temp, size, blob_refs=True):
        data = frame.data
        a = _ANALYZE(data)
        buf = None
        for _k, off, length, database, _s, _p in a.pids:
            if database is None and data[off:off + length] in fresh:
                if buf is None:
                    buf = bytearray(data)
                buf[off:off + length] = NOWHERE
        record = data if buf is None else bytes(buf)
        out.write(record_frame(frame.oid, record))
        out.write(record)
        if frame.blob is not None:
            out.write(blob_ref_frame(*frame.blob))
    temp.close()
    return out


def _prepared_frames(plan: _Plan) -> Iterator[Frame]:
    """The prepared frames (new oid, record, blob) from the temporary file."""
    f = plan.temp
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    return iter_frames(f, size, blob_refs=True)


# ---------------------------------------------------------------------------
# import_subtree and the store pass
# ---------------------------------------------------------------------------


def import_subtree(
    connection: Any,
    file: str | os.PathLike[str] | BinaryIO,
    *,
    missing: str = "error",
    into: Any = None,
    name: str | None = None,
    registry: ClassRegistry | None = None,
    progress: Progress | None = None,
    savepoint: bool = True,
    trust: Trust | Iterable[str] | None = None,
    allow_code: bool = False,
    strict: Iterable[str] | None = None,
) -> Any:
    """Import an export file (this package's format or ZODB's ``.zexp``).

    Every check happens before anything is written: the file's digest and
    structure, then every class and global the records name against the
    target's registry and class table.  ``missing="error"`` raises
    :class:`MissingClassesError` (or :class:`RefusedGlobalsError`) listing
    them all; ``missing="broken"`` imports objects of missing classes as
    broken objects (they reattach when their classes arrive) and turns
    refused globals into inert broken data.  The records are then stored in
    the caller's transaction under new oids; abort leaves the target as it
    was.  ``into`` (a mapping) receives the imported object under ``name``
    (default: the manifest's name).  Returns the imported root object.

    With ``savepoint=True`` (the default, as ZODB's ``importFile``) the
    records are written to a savepoint at once, so the returned object can
    be used before the commit.  ``savepoint=False`` writes them straight
    into the storage when the transaction commits, which saves copying
    every record twice; the returned object is then a ghost that can be
    stored in containers but not read until the commit.

    The checks resolve names without running modules that are not trusted
    (:mod:`pclasses.trust`; ``trust`` names more packages): a class whose
    module exists but is not trusted counts as missing until trusted.

    What the records may name is decided by :mod:`pclasses.transfer.policy`
    (see ``docs/security.md``): ``allow_code=True`` also admits classes that
    turn state into code (source methods, persistent classes); ``strict``
    (package names) admits only classes of those packages besides plain
    data types.
    """
    policy = ImportPolicy(allow_code=bool(allow_code),
                          strict=strict if strict is None or isinstance(strict, str)
                          else tuple(strict))
    if missing not in ("error", "broken"):
        raise TransferError(f"missing must be 'error' or 'broken', not {missing!r}")
    if registry is None:
        registry = getattr(connection.db().classFactory, "registry", None) or ClassRegistry()
    _writer_connection(connection)
    if getattr(connection, "_import", None):
        raise TransferError("another import is pending in this transaction; commit it first")
    with opened(file) as f:
        with no_gc():
            reader = Reader(f)
            reader.verify()
            plan = _CheckPass(connection, registry, missing, progress, reader, trust=trust,
                              policy=policy).run()
        key = name or (plan.reader.manifest.name if plan.reader.manifest else None)
        if into is not None:
            if not key:
                raise TransferError("give a name to import into a container")
            if key in into:
                raise TransferError(f"{key!r} already exists in the target container")
        if savepoint:
            returned: list[bytes] = []
            connection._import = (_Importer(plan, progress), returned)
            connection._register()
            connection.transaction_manager.get().savepoint(optimistic=True)
            obj = connection.get(returned[0])
        else:
            obj = _root_ghost(connection, plan)
            if plan.reader.has_blobs and isinstance(file, (str, os.PathLike)):
                # Blobs are copied from the export file at commit time.
                plan.reader = Reader(open(plan.reader.f.name, "rb"))  # noqa: SIM115
                close = True
            else:
                close = False
            connection._import = (_Importer(plan, progress, close=close), [])
            connection._register()
    if into is not None:
        into[key] = obj
    return obj


def _root_ghost(connection: Any, plan: _Plan) -> Any:
    """A ghost of the imported root, for a commit-time import."""
    for frame in _prepared_frames(plan):
        ghost = connection._reader.getGhost(frame.data)
        connection._cache.new_ghost(frame.oid, ghost)  # sets its oid and jar
        return ghost
    raise ExportFormatError("the file holds no records")


class _Importer(CommitImport):
    """What ``Connection._importDuringCommit`` receives for our imports."""

    def __init__(self, plan: _Plan, progress: Progress | None, close: bool = False) -> None:
        self.plan = plan
        self.progress = progress
        self.close = close

    def run(self, connection: Any, transaction: Any, returned: list[bytes]) -> None:
        try:
            with no_gc():
                self._run(connection, transaction, returned)
        finally:
            self.plan.temp.close()
            if self.close:
                self.plan.reader.f.close()

    def _run(self, connection: Any, transaction: Any, returned: list[bytes]) -> None:
        plan = self.plan
        storage = connection._storage
        store = storage.store
        returned.append(plan.root)
        refused = plan.refused
        tmpdir = None
        n = 0
        try:
            for frame in _prepared_frames(plan):
                oid, data = frame.oid, frame.data
                if refused:
                    data = _make_inert(data, oid, refused)
                if frame.blob is not None:
                    tmpdir = tmpdir or tempfile.mkdtemp(prefix="pclasses-import-")
                    path = os.path.join(tmpdir, oid.hex())
                    plan.reader.blob_to(frame.blob, path)
                    storage.storeBlob(oid, None, data, path, "", transaction)
                else:
                    store(oid, None, data, "", transaction)
                n += 1
                if self.progress is not None and not n % 4096:
                    self.progress(n, plan.records)
        finally:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)


def _make_inert(data: bytes, oid: bytes, refused: set[tuple[str, str]]) -> bytes:
    """Rename refused globals to names that never import (missing="broken")."""
    from ..rewrite import FramedRecordError, rename_globals, replace_class_pickle

    a = analyze(data, oid)
    if not any(g[5] & 8 for g in a.globals):
        pair = record_class(data, oid, a)
        if pair in refused:  # format 3/7 class metadata naming a refused global
            from ..records import read_class

            if read_class(data, oid).format != 3:
                raise ExportFormatError(f"record {oid_repr(oid)}: its class metadata names "
                                        f"{pair[0]}.{pair[1]} with arguments")
            data = replace_class_pickle(data, a.end1, (REFUSED_PREFIX + pair[0], pair[1]))
            a = analyze(data, oid)
    try:
        new, _renamed = rename_globals(
            data, a, lambda m, n: (REFUSED_PREFIX + m, n) if (m, n) in refused else None)
    except FramedRecordError:
        raise ExportFormatError(f"record {oid_repr(oid)}: a framed record cannot be made "
                                "inert") from None
    return new


def _writer_connection(connection: Any) -> None:
    """Make sure ``connection`` handles our imports during its commit."""
    from ..connection import install, is_installed

    install(connection.db())
    if not is_installed(connection):
        raise TransferError("import needs a ZODB connection (or one made by a database "
                            "opened with pclasses)")
