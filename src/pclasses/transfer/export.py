"""Export: write a subtree of one database to a file.

:func:`export_subtree` walks every record strongly reachable from a start
object within its database (breadth first, one load per record) and writes
them, with their blobs, to a file of this package's format
(:mod:`pclasses.transfer.format`) or ZODB's ``.zexp``.  It never writes a
persistent class or the class table: a reference to a class stored in the
database is kept symbolically (guid and name) and rebound to the target
database's class table on import.  Cross-database references are never
followed; they are listed in the manifest.  Weak references travel, and
point into the subtree on import when their target was exported too.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from ZODB.utils import oid_repr, p64, repr_to_oid, u64

from ..classtable import GUID_PREFIX, is_guid_module
from ..errors import TransferError
from ..oidset import OidQueue, OidSet
from ..record.analyze import Use
from ..record.analyze import analyze as _analyze
from ..record.edges import EdgeKind, export_refs_c, targets_of
from ..record.remote import MARKER as REMOTE_MARK
from ..refs.transfer import MARK as REFS_MARK
from ..refs.transfer import container_oid, export_references
from ..registry import ClassRegistry
from ..scan import Progress
from ..trust import Trust
from .format import (
    CHUNK,
    VERSION,
    ZEXP_BLOB,
    ZEXP_END,
    ZEXP_MAGIC,
    ClassNeed,
    blob_frame,
    write_file,
)
from .records import (
    BLOB_CLASS,
    CLASS_METACLASSES,
    CLASS_TABLE,
    HANDLE_CLASS,
    HANDLE_REFERENCE,
    analyze,
    class_record_info,
    handle_name,
    no_gc,
    record_class,
)
from .reports import ExportReport

__all__ = ["export_subtree"]


def _resolve_start(connection: Any, obj_or_oid: Any) -> bytes:
    if isinstance(obj_or_oid, bytes):
        if len(obj_or_oid) != 8:
            raise TransferError(f"an oid is 8 bytes, not {len(obj_or_oid)}")
        return obj_or_oid
    if isinstance(obj_or_oid, str):
        oid_of_text: bytes = repr_to_oid(obj_or_oid)
        return oid_of_text
    oid = getattr(obj_or_oid, "_p_oid", None)
    from persistent import Persistent

    if oid is None and not isinstance(obj_or_oid, (Persistent, type)):
        raise TransferError(f"a {type(obj_or_oid).__name__} is not a persistent object: a "
                            "subtree starts at one (export the persistent object that holds "
                            "it)")
    if oid is None or getattr(obj_or_oid, "_p_jar", None) is not connection:
        raise TransferError("the object to export must be stored in this connection's "
                            "database (commit it first)")
    return oid  # type: ignore[no-any-return]


def export_subtree(
    connection: Any,
    obj_or_oid: Any,
    file: str | os.PathLike[str] | BinaryIO,
    *,
    format: str = "pclasses",  # noqa: A002 - the user-facing option name
    registry: ClassRegistry | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    trust: Trust | Iterable[str] | None = None,
) -> ExportReport:
    """Write the subtree of ``obj_or_oid`` (an object of ``connection`` or an oid).

    ``file`` is a path or a binary file opened for writing; a path is
    written under a temporary name beside it and renamed when the export
    is complete, so a failed export leaves no partial file.  ``format`` is
    ``"pclasses"`` (this package's format, with manifest and digest) or
    ``"zexp"`` (ZODB's ``.zexp``).  Returns an
    :class:`~pclasses.transfer.reports.ExportReport`, which is the file's
    :class:`Manifest` with what the export did (size, seconds).  The
    manifest's class listing resolves names without running modules that
    are not trusted (:mod:`pclasses.trust`; ``trust`` names more packages).
    """
    if format not in ("pclasses", "zexp"):
        raise TransferError(f"unknown export format {format!r} (pclasses or zexp)")
    if registry is None:
        registry = getattr(connection.db().classFactory, "registry", None) or ClassRegistry()
    start = _resolve_start(connection, obj_or_oid)
    if not isinstance(file, (str, os.PathLike)):
        return _export_once(connection, start, file, format, registry, name, progress, trust)
    target = os.fspath(file)
    try:
        fd, partial = tempfile.mkstemp(prefix=".pclasses-export-",
                                       dir=os.path.dirname(os.path.abspath(target)))
    except OSError as exc:
        raise TransferError(f"cannot write {target}: {exc.strerror}") from None
    os.close(fd)
    try:
        report = _export_once(connection, start, partial, format, registry, name, progress,
                              trust)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # (mkstemp made it private)
        os.replace(partial, target)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    report.file = target
    return report


def _export_once(connection: Any, start: bytes, file: Any, format: str,  # noqa: A002
                 registry: ClassRegistry, name: str | None, progress: Progress | None,
                 trust: Trust | Iterable[str] | None) -> ExportReport:
    from ..scan import snapshot_loader

    load, still_valid, close_loader = snapshot_loader(connection)
    try:
        with no_gc():
            manifest = _export(connection, start, file, format, registry, name, progress, load,
                                   trust)
        if still_valid():
            return manifest
    finally:
        close_loader()
    # A transaction was committed while we read straight from the file: do
    # it again through the connection's snapshot.
    if not isinstance(file, (str, os.PathLike)):
        file.seek(0)
        file.truncate()
    return _export(connection, start, file, format, registry, name, progress,
                   connection._storage.load, trust)


def _export(connection: Any, start: bytes, file: Any, format: str,  # noqa: A002
            registry: ClassRegistry, name: str | None, progress: Progress | None,
            load: Callable[[bytes], tuple[bytes, bytes]],
            trust: Trust | Iterable[str] | None = None) -> ExportReport:
    storage = connection._storage
    db_name = connection.db().database_name
    from ZODB.interfaces import IBlobStorage

    blob_storage = IBlobStorage.providedBy(storage)

    t0 = time.perf_counter()
    manifest = ExportReport(VERSION, db_name, start, 0, name=name, format=format,
                            file=os.fspath(file) if isinstance(file, (str, os.PathLike)) else None)
    needs: dict[tuple[str, str], int] = {}
    externals: dict[tuple[str, bytes], None] = {}
    ref_holders: list[tuple[bytes, bytes]] = []  # records holding intrinsic references
    # The walk holds one byte an oid it has met (an OidSet) and eight an
    # oid waiting in the queue: never the records.
    queue = OidQueue()
    queue.append(u64(start))
    follow = getattr(load, "follow", None)
    if follow is not None:  # RelStorage, ZEO: the next oids of the queue load in one batch
        follow(queue)
    seen = OidSet()
    seen.add_new(u64(start))
    parent = container_oid(load, start)
    if parent is not None and len(parent) == 8:  # a placed object's __parent__ is not
        seen.add_new(u64(parent))                # part of its subtree
    own = isinstance(file, (str, os.PathLike))
    out: Any = open(file, "wb") if own else file  # noqa: SIM115
    body = tempfile.TemporaryFile(prefix="pclasses-export-") if format == "pclasses" else out
    try:
        first = None
        if format == "zexp":
            try:
                first = out.tell()
            except (OSError, AttributeError):
                first = None
            out.write(ZEXP_MAGIC)
        n = 0
        zexp = format == "zexp"
        # what a record's globals say, judged once per shape (the tuple of
        # its global sites): its class pair from the class-metadata GLOBAL
        # (None: formats 3/7 and class references, read per record), and
        # whether it needs a closer look (class records, the class table,
        # database handles, blobs)
        shapes: dict[tuple[Any, ...], tuple[Any, bool, Any]] = {}
        # the same for records read by the lean C walk (export_refs_c), by
        # their (klass, names)
        lean_shapes: dict[tuple[Any, ...], tuple[Any, bool, Any]] = {}
        fast = export_refs_c
        bits = seen.bits
        parts: list[bytes] = []  # frames not yet written to ``body``
        held = 0
        head = _FRAME_HEAD.pack
        weak = EdgeKind.WEAK
        popleft = queue.popleft
        while queue.size:  # (not len(): a Python call a record)
            oid = popleft().to_bytes(8, "big")
            try:
                data, tid = load(oid)
            except KeyError:
                continue  # a dangling reference in the source: it stays dangling
            lean = None
            if fast is not None:
                try:
                    lean = fast(data, REMOTE_MARK)
                except ValueError:
                    lean = None  # (analyze below says what is wrong, naming the record)
            if lean is not None:
                # an ordinary record: its globals and plain references from C
                kids = lean[1]
                table = lean_shapes
                shape = table.get(sig := lean[0])
                if shape is None:
                    shape = table[sig] = _lean_shape(sig)
                pair, special, uses = shape
            else:
                kids = None
                try:
                    a = _analyze(data)
                except ValueError:
                    a = analyze(data, oid)  # raises the package's error, naming the record
                table = shapes
                shape = table.get(sig := tuple(a.globals))
                if shape is None:
                    shape = table[sig] = _shape(a)
                pair, special, uses = shape
                if pair is None:
                    pair = record_class(data, oid, a)
                    special = pair is not None and pair in _SPECIAL
            if special:
                if pair in CLASS_METACLASSES:
                    if oid == start:
                        raise TransferError(f"{oid_repr(oid)} is a persistent class; export "
                                            "its instances, not the class")
                    info = class_record_info(data, oid)
                    if info is None:
                        raise TransferError(f"class record {oid_repr(oid)} has no guid "
                                            "module")
                    manifest.class_references[oid] = info
                    continue
                if pair == CLASS_TABLE:
                    continue
                if pair == HANDLE_CLASS and oid != start:
                    # A database handle stays where it is: references to it are
                    # rebound by name to the target tree's handle (remote references).
                    manifest.class_references[oid] = (HANDLE_REFERENCE,
                                                      handle_name(data, oid))
                    continue
            if uses is not None:  # the first record of its shape that is exported
                for key, use in uses:
                    needs[key] = needs.get(key, 0) | use
                table[sig] = (shape[0], shape[1], None)
            if pair is not None and needs.get(pair, 0) & 8 == 0:
                needs[pair] = needs.get(pair, 0) | 8
            if data.find(REFS_MARK) >= 0:  # (faster than "in" for bytes)
                ref_holders.append((oid, data))
            if kids is not None:
                for c in kids:
                    if c < len(bits):  # (OidSet.add_new, inline)
                        if bits[c]:
                            continue
                        bits[c] = 1
                        seen.count += 1
                    elif not seen.add_new(c):
                        continue
                    queue.append(c)
            elif a.pids:
                for kind, child, database in targets_of(data, a):
                    if child is None:
                        raise TransferError(f"record {oid_repr(oid)} holds a reference this "
                                            "tool cannot follow")
                    if database is not None:
                        externals[(database, child)] = None
                        continue
                    if kind is weak:
                        continue  # weak targets travel only when strongly reachable
                    if len(child) != 8:
                        continue  # no storage holds such an oid: it dangles
                    c = int.from_bytes(child, "big")
                    if seen.add_new(c):
                        queue.append(c)
            if zexp:
                out.write(oid + p64(len(data)) + data)
            else:
                parts.append(head(b"R", oid, len(data)))
                parts.append(data)
                held += len(data)
                if held >= CHUNK:
                    body.write(b"".join(parts))
                    parts = []
                    held = 0
            n += 1
            if pair == BLOB_CLASS:
                if not blob_storage:
                    raise TransferError(
                        f"record {oid_repr(oid)} holds a blob, and the database was opened "
                        "without its blob directory (give its blob directory, --blob-dir on "
                        "the command line)")
                if parts:
                    body.write(b"".join(parts))
                    parts = []
                    held = 0
                path = _blob_file(storage, oid, tid)
                size = os.path.getsize(path)
                body.write(ZEXP_BLOB + p64(size) if zexp else blob_frame(size))
                with open(path, "rb") as blob:
                    shutil.copyfileobj(blob, body, CHUNK)
                manifest.blobs += 1
            if progress is not None and not n % 4096:
                progress(n, None)
        if parts:
            body.write(b"".join(parts))
        manifest.record_count = n
        if ref_holders:
            manifest.references_root, manifest.references = export_references(
                connection, start, ref_holders, load)
        manifest.external_references = sorted(externals)
        manifest.classes = _needs(needs, registry, connection, trust)
        listed = {(c.module, c.name) for c in manifest.classes}
        for guid, cname in sorted(set(manifest.class_references.values())):
            if guid == HANDLE_REFERENCE:
                continue
            if (GUID_PREFIX + guid, cname) not in listed:  # plain instances' classes
                manifest.classes.append(ClassNeed(GUID_PREFIX + guid, cname,
                                                  "database-resident", guid))
        if format == "zexp":
            out.write(ZEXP_END)
            manifest.bytes = out.tell() - first if first is not None else 0
        else:
            write_file(out, body, manifest)
        manifest.seconds = time.perf_counter() - t0
        if progress is not None:
            progress(n, n)
        return manifest
    finally:
        if body is not out:
            body.close()
        if own:
            out.close()


#: the header of a record frame: b"R", oid, length (:func:`.format.record_frame`)
_FRAME_HEAD = struct.Struct(">c8sI")
#: classes whose records export looks at more closely
_SPECIAL = frozenset(CLASS_METACLASSES | {CLASS_TABLE, HANDLE_CLASS, BLOB_CLASS})
_META = int(Use.CLASS_META)


def _shape(a: Any) -> tuple[Any, bool, list[tuple[Any, int]]]:
    """A record shape's class pair (from its class-metadata GLOBAL, else
    None), whether it is special, and how it uses its globals."""
    pair = None
    uses = []
    for g in a.globals:
        key: Any = (g.module, g.name)
        use = int(g.uses)
        uses.append((key, use))
        if pair is None and use & _META:
            pair = key
    return pair, pair is not None and pair in _SPECIAL, uses


def _lean_shape(sig: tuple[Any, ...]) -> tuple[Any, bool, list[tuple[Any, int]]]:
    """:func:`_shape` for a record read by the lean C walk: ``sig`` is its
    ``(klass, names)`` (the class-metadata global, then the others)."""
    klass, names = sig
    uses = [(klass, _META)]
    uses.extend((name, 0) for name in names)
    return klass, klass in _SPECIAL, uses


def _blob_file(storage: Any, oid: bytes, tid: bytes) -> str:
    from ZODB.POSException import POSKeyError, Unsupported

    try:
        return storage.loadBlob(oid, tid)  # type: ignore[no-any-return]
    except Unsupported:
        raise TransferError(f"record {oid_repr(oid)} holds a blob, and the database was "
                            "opened without its blob directory (give its blob directory, "
                            "--blob-dir on the command line)") from None
    except (POSKeyError, OSError) as exc:
        raise TransferError(f"the blob of record {oid_repr(oid)} cannot be read "
                            f"({type(exc).__name__})") from None


def _needs(needs: dict[tuple[str, str], int], registry: ClassRegistry,
           connection: Any, trust: Trust | Iterable[str] | None = None) -> list[ClassNeed]:
    result = []
    for (module, name), _uses in sorted(needs.items()):
        if is_guid_module(module):
            result.append(ClassNeed(module, name, "database-resident",
                                    module[len(GUID_PREFIX):]))
            continue
        res = registry.inspect(module, name, connection, trust=trust)
        if res.how in ("broken", "not-imported"):
            kind = res.how
        elif isinstance(res.target, type):
            kind = "importable"
        else:
            kind = "callable"
        result.append(ClassNeed(module, name, kind))
    return result
