"""The store pass: prepared records into the target, inside its transaction.

Imports wait in the connection (``connection._import``, where ZODB's
``importFile`` leaves its own) as one :class:`PendingImports`; ZODB's
commit (or a savepoint) hands it to the package's Connection, which calls
:meth:`PendingImports.run`: each prepared record is stored once, straight
into the storage.  Until then the imported objects are read from the
prepared records: the connection's storage is wrapped by an
:class:`Overlay` that answers loads of the new oids from import's
temporary file and passes everything else through, and is taken away
again when the records are stored or the transaction aborts.  The imported
root is made as a ghost of its new oid from the class the check pass found
(:func:`root_ghost`); no byte of the file goes through an unpickler here.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from ZODB.POSException import POSKeyError
from ZODB.utils import oid_repr, z64
from zope.interface import directlyProvides, providedBy

from ..connection import CommitImport
from ..errors import ExportFormatError, TransferError
from ..oidset import OidRuns
from .format import Reader
from .records import no_gc
from .reports import ImportReport

__all__ = ["Plan", "RecordIndex", "PendingImports", "Overlay", "pending_import", "root_ghost"]


#: the header of a prepared record in import's temporary file: its new
#: oid, its length, and where its blob is in the export file (offset,
#: length; :data:`NO_BLOB` as length when it has none)
HEAD = struct.Struct(">8sIQQ")
NO_BLOB = (1 << 64) - 1


class RecordIndex:
    """Where each prepared record is in import's temporary file.

    Held as runs of new oids and one array of 8 bytes a record, never as
    objects per record: the new oids, sorted (``news``, an
    :class:`~pclasses.oidset.OidRuns`; a record's rank in the export file's
    oids is its position there), and the position of each record's header in
    the temporary file by the same rank (``heads``).  Looks like a mapping
    ``new oid -> (position of the record's bytes, length, blob)``, where
    ``blob`` is ``(offset, length)`` in the export file or ``None``;
    :meth:`records` reads them back in the order they were written.
    """

    __slots__ = ("temp", "news", "heads", "count")

    def __init__(self, temp: Any, news: OidRuns) -> None:
        self.temp = temp
        self.news = news
        self.heads = array("Q", [NO_BLOB]) * len(news)
        self.count = 0

    def add(self, rank: int, head: int) -> None:
        """The record of rank ``rank`` has its header at ``head``."""
        self.heads[rank] = head
        self.count += 1

    def _head(self, oid: bytes) -> int:
        if len(oid) != 8:
            return -1
        r = self.news.find(int.from_bytes(oid, "big"))
        if r < 0 or self.heads[r] == NO_BLOB:
            return -1
        return self.heads[r]

    def get(self, oid: bytes) -> tuple[int, int, tuple[int, int] | None] | None:
        head = self._head(oid)
        if head < 0:
            return None
        f = self.temp
        here = f.tell()
        f.seek(head)
        raw = f.read(HEAD.size)
        f.seek(here)
        if len(raw) != HEAD.size:
            raise ExportFormatError("import's temporary file is truncated")
        _oid, n, at, size = HEAD.unpack(raw)
        return head + HEAD.size, n, None if size == NO_BLOB else (at, size)

    def __getitem__(self, oid: bytes) -> tuple[int, int, tuple[int, int] | None]:
        got = self.get(oid)
        if got is None:
            raise KeyError(oid)
        return got

    def __contains__(self, oid: object) -> bool:
        return isinstance(oid, bytes) and self._head(oid) >= 0

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def records(self) -> Iterator[tuple[bytes, int, bytes, tuple[int, int] | None]]:
        """``(new oid, position, bytes, blob)`` of every prepared record, in
        the order they were written, read in large chunks."""
        from .format import CHUNK

        f = self.temp
        f.flush()
        f.seek(0, 2)
        end = f.tell()
        base = 0  # the temporary file's offset of buf[0]
        buf = b""
        at = 0
        hs = HEAD.size
        while base + at < end:
            if at + hs > len(buf):
                base += at
                f.seek(base)
                buf, at = f.read(max(CHUNK, hs)), 0
            oid, n, blob_at, size = HEAD.unpack_from(buf, at)
            if at + hs + n > len(buf):
                base += at
                f.seek(base)
                buf, at = f.read(max(CHUNK, hs + n)), 0
                if len(buf) < hs + n:
                    raise ExportFormatError("import's temporary file is truncated")
            start = at + hs
            yield (oid, base + start, buf[start:start + n],
                   None if size == NO_BLOB else (blob_at, size))
            at = start + n

    def items(self) -> Iterator[tuple[bytes, tuple[int, int, tuple[int, int] | None]]]:
        for oid, pos, data, blob in self.records():
            yield oid, (pos, len(data), blob)


@dataclass
class Plan:
    """The result of the check pass: rewritten records, ready to be stored."""

    reader: Reader
    temp: Any  # the rewritten records back to back (``index`` says where)
    root: bytes  # the new oid of the imported root object
    refused: set[tuple[str, str]]
    index: RecordIndex
    records: int = 0
    blobs: int = 0
    report: ImportReport | None = None
    #: placeholder classes to store (guid -> (oid, name)), missing="broken"
    placeholders: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    #: new oids of the prepared records that hold intrinsic references
    reference_holders: list[bytes] = field(default_factory=list)


def pending_import(connection: Any) -> PendingImports:
    """The connection's pending imports of this package (made if none)."""
    current = getattr(connection, "_import", None)
    if current:
        if isinstance(current[0], PendingImports):
            return current[0]
        raise TransferError("another import is pending in this transaction; commit it first")
    return PendingImports()


class PendingImports(CommitImport):
    """What ``Connection._importDuringCommit`` receives for our imports."""

    def __init__(self) -> None:
        self.plans: list[tuple[Plan, bool]] = []
        self.overlay: Overlay | None = None
        self.connection: Any = None

    def add(self, connection: Any, plan: Plan, *, own_reader: bool, savepoint: bool) -> None:
        """Let ``plan`` wait for the commit (or store it now: ``savepoint``)."""
        first = not self.plans
        self.plans.append((plan, own_reader))
        self.connection = connection
        if first:
            connection._import = (self, [])
            connection._register()
            connection.transaction_manager.get().addAfterAbortHook(self.forget)
        if not savepoint:
            if self.overlay is None:
                self.overlay = Overlay.install(connection)
            self.overlay.add(plan)

    def run(self, connection: Any, transaction: Any, returned: list[bytes]) -> None:
        """Store every waiting plan (at a savepoint ``transaction`` is None)."""
        plans, self.plans = self.plans, []
        overlay, self.overlay = self.overlay, None
        try:
            registered = {obj._p_oid for obj in connection._registered_objects}
            with no_gc():
                for plan, _own in plans:
                    _store(connection, plan, transaction, registered)
                    returned.append(plan.root)
        finally:
            for plan, own in plans:
                _close(plan, own)
            if overlay is not None:
                served = overlay.uninstall(connection)
                # Objects read before the commit load again from the storage
                # (after the commit, with its serial); changed ones are
                # stored by the commit itself, after these records.
                connection._cache.invalidate([o for o in served if o not in registered])

    def forget(self, *_args: Any) -> None:
        """After an abort: drop the waiting plans and the objects read from them."""
        connection = self.connection
        plans, self.plans = self.plans, []
        overlay, self.overlay = self.overlay, None
        for plan, own in plans:
            _close(plan, own)
        if connection is None:
            return
        gone: set[bytes] = set()
        if overlay is not None:
            gone = overlay.uninstall(connection)
        gone.update(plan.root for plan, _own in plans)
        cache = connection._cache
        for oid in gone:
            obj = cache.get(oid)
            if obj is not None:
                del cache[oid]
                if obj._p_jar is connection:
                    obj._p_jar = None
                    obj._p_oid = None
        if connection._import and connection._import[0] is self:
            connection._import = None


def _close(plan: Plan, own_reader: bool) -> None:
    plan.temp.close()
    if own_reader:
        plan.reader.f.close()


def _store(connection: Any, plan: Plan, transaction: Any, skip: set[bytes]) -> None:
    """Store every prepared record of ``plan``: read back from import's
    temporary file in large chunks, in the order they were written."""
    storage = connection._storage
    store = storage.store
    tmpdir = None
    try:
        for oid, _pos, data, blob in plan.index.records():
            if oid in skip:
                continue  # changed before the commit: the commit stores it
            if blob is not None:
                tmpdir = tmpdir or tempfile.mkdtemp(prefix="pclasses-import-")
                path = os.path.join(tmpdir, oid.hex())
                plan.reader.blob_to(blob, path)
                storage.storeBlob(oid, None, data, path, "", transaction)
            else:
                store(oid, None, data, "", transaction)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


class Overlay:
    """The connection's storage, plus the prepared records of waiting imports.

    Loads of their new oids are answered from import's temporary file (and
    blobs from the export file); everything else is the storage's.
    """

    def __init__(self, base: Any) -> None:
        self._base = base
        self._plans: list[Plan] = []
        self._served: set[bytes] = set()
        self._blobdir: str | None = None
        directlyProvides(self, providedBy(base))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    @classmethod
    def install(cls, connection: Any) -> Overlay:
        overlay = cls(connection._normal_storage)
        if connection._storage is connection._normal_storage:
            connection._storage = overlay
        sp = connection._savepoint_storage
        if sp is not None and sp._storage is connection._normal_storage:
            sp._storage = overlay
        connection._normal_storage = overlay
        return overlay

    def uninstall(self, connection: Any) -> set[bytes]:
        """Give the connection its storage back; the oids that were read."""
        base = self._base
        if connection._normal_storage is self:
            connection._normal_storage = base
        if connection._storage is self:
            connection._storage = base
        sp = connection._savepoint_storage
        if sp is not None and getattr(sp, "_storage", None) is self:
            sp._storage = base
        self._plans = []
        if self._blobdir is not None:
            shutil.rmtree(self._blobdir, ignore_errors=True)
            self._blobdir = None
        return self._served

    def add(self, plan: Plan) -> None:
        self._plans.append(plan)

    def _find(self, oid: bytes) -> tuple[Plan, tuple[int, int, tuple[int, int] | None]] | None:
        for plan in self._plans:
            hit = plan.index.get(oid)
            if hit is not None:
                return plan, hit
        return None

    def load(self, oid: bytes, version: str = "") -> tuple[bytes, bytes]:
        found = self._find(oid)
        if found is None:
            return self._base.load(oid)  # type: ignore[no-any-return]
        plan, (pos, n, _blob) = found
        f = plan.temp
        f.seek(pos)
        data = f.read(n)
        if len(data) != n:
            raise POSKeyError(oid)
        self._served.add(oid)
        return data, z64

    def loadBlob(self, oid: bytes, serial: bytes) -> str:  # noqa: N802 - ZODB's name
        found = self._find(oid)
        if found is None or found[1][2] is None:
            return self._base.loadBlob(oid, serial)  # type: ignore[no-any-return]
        plan, (_pos, _n, blob) = found
        if self._blobdir is None:
            self._blobdir = tempfile.mkdtemp(prefix="pclasses-import-blobs-")
        path = os.path.join(self._blobdir, oid.hex() + ".blob")
        if not os.path.exists(path):
            plan.reader.blob_to(cast("tuple[int, int]", blob), path)  # checked by _find
        self._served.add(oid)
        return path


def root_ghost(connection: Any, plan: Plan) -> Any:
    """A ghost of the imported root under its new oid, made from the class
    the root's (prepared, checked) record names: its class metadata is read
    by the inert reader and the class comes from the target (its class
    factory, or its class table for a database-resident class)."""
    from ..record import read_class

    cached = connection._cache.get(plan.root)
    if cached is not None:
        return cached
    pos, n, _blob = plan.index[plan.root]
    f = plan.temp
    here = f.tell()
    f.seek(pos)
    data = f.read(n)
    f.seek(here)
    try:
        ref = read_class(data, plan.root)
    except Exception as exc:
        raise ExportFormatError(f"the root record {oid_repr(plan.root)} has no readable "
                                f"class ({exc})") from None
    if ref.oid is not None:
        klass = connection.get(ref.oid)  # the target's class record
    else:
        klass = connection._db.classFactory(connection, ref.module, ref.name)
    from ZODB import broken

    if isinstance(klass, type) and issubclass(klass, broken.Broken) and not issubclass(
            klass, broken.PersistentBroken):
        klass = broken.persistentBroken(klass)  # as ZODB's getGhost does
    args = ref.args if isinstance(ref.args, tuple) else ()
    if args and not all(isinstance(x, (int, float, str, bytes, type(None))) for x in args):
        raise ExportFormatError(f"the root record {oid_repr(plan.root)} creates its object "
                                "with arguments that are not plain data")
    ghost = klass.__new__(klass, *args)
    connection._cache.new_ghost(plan.root, ghost)  # sets its oid and jar
    return ghost
