"""Subtree export and import that exclude classes, check them, and run nothing.

Export
------

:func:`export_subtree` walks every record strongly reachable from a start
object within its database (breadth first, one load per record) and writes
them, with their blobs, to a file of this package's format.  It never
writes a persistent class or the class table: a reference to a class stored
in the database is kept symbolically (guid and name) and rebound to the
target database's class table on import.  Cross-database references are
never followed; they are listed in the manifest.  Weak references travel,
and point into the subtree on import when their target was exported too.

File format (version 1)::

    magic   b"PCLASSES-EXPORT\\0" (16 bytes)
    version u16 (big endian)
    manifest u32 length + UTF-8 JSON
    frames  b"R" oid(8) u32 length data      one per record
            b"B" u64 length bytes            the blob of the record before
    end     b"E"
    trailer u64 length of everything above + SHA-256 of everything above

The manifest lists the format version, source database name, root oid,
record count, every class name the records need with its kind
(``importable``, ``database-resident`` with its guid, ``broken``, or
``callable`` for functions used in reduces), the class references, and the
external references.  The trailer's digest covers the whole file before
it, so truncation or any flipped byte is detected before anything is
imported.  ``format="zexp"`` writes ZODB's own ``.zexp`` instead (class
records left out; see the documentation for what that loses).

Import
------

:func:`import_subtree` first reads the whole file: it checks the digest,
the structure, and, with the C record analyzer (:func:`pclasses.skim.analyze`),
every global and persistent reference each record names; the manifest is
never trusted.  Before anything is written it checks every class against
the target's registry and class table, and refuses globals that are
neither classes nor on a short allow-list of pickle helpers and builtin
types.  Then, inside the caller's transaction (a savepoint, as ZODB's
``importFile`` does), it stores each record under a new oid, rewriting the
oid bytes of its references in place; nothing it reads is unpickled, so
nothing in the file can run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ZODB.utils import oid_repr, p64, repr_to_oid, u64

from .classtable import GUID_PREFIX, class_table, is_guid_module
from .errors import PClassesError
from .registry import ClassRegistry
from .scan import Progress

__all__ = [
    "Manifest",
    "ClassNeed",
    "TransferError",
    "ExportFormatError",
    "MissingClassesError",
    "RefusedGlobalsError",
    "export_subtree",
    "import_subtree",
    "read_manifest",
    "ALLOWED_GLOBALS",
    "resolve_path",
]

from .skim import analyze as _ANALYZE  # noqa: E402

MAGIC = b"PCLASSES-EXPORT\x00"
VERSION = 1
ZEXP_MAGIC = b"ZEXP"
_ZEXP_END = b"\xff" * 16
_ZEXP_BLOB = b"\x00BLOBSTART"
_TRAILER = struct.Struct(">Q32s")
_RECORD_HEAD = struct.Struct(">8sI")
_CHUNK = 1 << 20

#: Class-metadata globals of class records (never exported).
_CLASS_METACLASSES = {("pclasses.pclass", "PersistentClass"),
                      ("ZODB.persistentclass", "PersistentMetaClass")}
_CLASS_TABLE = ("pclasses.classtable", "ClassTable")

#: Globals a record may name besides classes: pickle helpers and builtin
#: types whose construction runs no application or system code.
ALLOWED_GLOBALS = frozenset({
    ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"),
    ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__"),
    ("builtins", "object"), ("__builtin__", "object"),
    ("builtins", "set"), ("__builtin__", "set"),
    ("builtins", "frozenset"), ("__builtin__", "frozenset"),
    ("builtins", "complex"), ("__builtin__", "complex"),
    ("builtins", "bytearray"), ("__builtin__", "bytearray"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"),
    ("builtins", "bytes"), ("builtins", "bool"), ("__builtin__", "list"),
    ("__builtin__", "dict"), ("__builtin__", "tuple"),
    ("_codecs", "encode"),
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("datetime", "tzinfo"),
    ("decimal", "Decimal"),
    ("collections", "OrderedDict"), ("collections", "deque"),
    # zope.interface declarations (``__provides__``) pickle as a call of this
    # reconstructor, which only builds a declaration from interfaces.
    ("zope.interface.declarations", "Provides"),
})

_USE_CALLED = 1 | 4  # REDUCE callable, INST/OBJ class
_USE_ARGUMENT = 32  # passed as a value (e.g. to copyreg._reconstructor)
_RECONSTRUCTORS = {("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")}

#: Top-level packages whose classes an imported record may not *call*
#: (REDUCE, INST, OBJ, or as a ``copyreg._reconstructor`` argument, whose
#: ``base.__init__`` runs): the standard library and the database and
#: framework infrastructure, whose constructors open files, sockets and
#: storages.  Application classes may be called, as their own
#: ``__reduce__`` asks.
_INFRASTRUCTURE = frozenset({
    "ZODB", "ZEO", "persistent", "BTrees", "transaction", "zc", "zope", "ZConfig",
    "zodbpickle", "zodburi", "relstorage", "pclasses", "pip", "setuptools",
    "pkg_resources", "_pytest", "pytest", "hypothesis", "click", "rich",
})
_INTERNAL = ("oid", "oid_class", "legacy")
#: The module refused globals are renamed under with ``missing="broken"``:
#: not importable (the colon), so they load as inert broken objects.
REFUSED_PREFIX = "pclasses-refused:"


class TransferError(PClassesError):
    """Export or import could not be done."""


class ExportFormatError(TransferError, ValueError):
    """A damaged, truncated or foreign export file (nothing was imported)."""


class MissingClassesError(TransferError, LookupError):
    """Classes (or databases) the file needs are missing in the target."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__("missing in the target: " + ", ".join(missing))


class RefusedGlobalsError(TransferError, ValueError):
    """The file's records name callables that import refuses to let run."""

    def __init__(self, refused: list[str]) -> None:
        self.refused = refused
        super().__init__("the file names globals that could run code when loaded: "
                         + ", ".join(refused))


@dataclass
class ClassNeed:
    """A global the records name: ``kind`` is ``importable``,
    ``database-resident`` (with ``guid``), ``broken`` or ``callable``."""

    module: str
    name: str
    kind: str
    guid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "name": self.name, "kind": self.kind, "guid": self.guid}


@dataclass
class Manifest:
    """The header of an export file."""

    format_version: int
    source_database: str
    root_oid: bytes
    record_count: int
    classes: list[ClassNeed] = field(default_factory=list)
    external_references: list[tuple[str, bytes]] = field(default_factory=list)
    class_references: dict[bytes, tuple[str, str]] = field(default_factory=dict)
    blobs: int = 0
    name: str | None = None
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "source_database": self.source_database,
            "root_oid": oid_repr(self.root_oid),
            "record_count": self.record_count,
            "classes": [c.to_dict() for c in self.classes],
            "external_references": [{"database": d, "oid": oid_repr(o)}
                                    for d, o in self.external_references],
            "class_references": {oid_repr(o): {"guid": g, "name": n}
                                 for o, (g, n) in self.class_references.items()},
            "blobs": self.blobs,
            "name": self.name,
            "bytes": self.bytes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        try:
            return cls(
                format_version=int(d["format_version"]),
                source_database=str(d["source_database"]),
                root_oid=repr_to_oid(d["root_oid"]),
                record_count=int(d["record_count"]),
                classes=[ClassNeed(c["module"], c["name"], c["kind"], c.get("guid"))
                         for c in d["classes"]],
                external_references=[(e["database"], repr_to_oid(e["oid"]))
                                     for e in d["external_references"]],
                class_references={repr_to_oid(o): (v["guid"], v["name"])
                                  for o, v in d["class_references"].items()},
                blobs=int(d.get("blobs", 0)),
                name=d.get("name"),
                bytes=int(d.get("bytes", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                RecursionError) as exc:
            raise ExportFormatError(f"malformed manifest ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


class _no_gc:
    """Pause the cyclic garbage collector during a bulk pass.

    The passes allocate millions of small tuples whose generations keep
    the collector busy; its full collections walk the whole (growing) oid
    index, which made time grow faster than the subtree.  Nothing these
    passes create forms a cycle.
    """

    def __enter__(self) -> None:
        import gc

        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: Any) -> None:
        import gc

        if self.was:
            gc.enable()


def _analyze(data: bytes, oid: bytes) -> Any:
    try:
        return _ANALYZE(data)
    except ValueError as exc:
        raise ExportFormatError(f"record {oid_repr(oid)} is not a readable ZODB record "
                                f"({exc})") from None


def _resolve_start(connection: Any, obj_or_oid: Any) -> bytes:
    if isinstance(obj_or_oid, bytes):
        return obj_or_oid
    if isinstance(obj_or_oid, str):
        return repr_to_oid(obj_or_oid)
    oid = getattr(obj_or_oid, "_p_oid", None)
    if oid is None or getattr(obj_or_oid, "_p_jar", None) is not connection:
        raise TransferError("the object to export must be stored in this connection's "
                            "database (commit it first)")
    return oid  # type: ignore[no-any-return]


def _record_class(data: bytes, oid: bytes, a: Any) -> tuple[str, str] | None:
    """The record's class by name: its class-metadata GLOBAL, or the
    ``(module, name)`` strings of formats 3 and 7 (instances of
    database-resident classes); ``None`` for a persistent class reference."""
    for g in a.globals:
        if g[5] & 8:
            return (g[0], g[1])
    from .records import read_class

    try:
        return read_class(data, oid).pair
    except PClassesError as exc:
        raise ExportFormatError(str(exc)) from None


def _class_record_info(data: bytes, oid: bytes) -> tuple[str, str] | None:
    """``(guid, name)`` of a persistent-class record (read inertly)."""
    from .records import read_record

    info = read_record(data, oid)
    args = info.klass.args or ()
    name = args[0] if args and isinstance(args[0], str) else "?"
    state = info.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        name = state[1].get("__pclasses_name__", name)
        module = state[1].get("__module__")
        if is_guid_module(module):
            return module[len(GUID_PREFIX):], name
    return None


def export_subtree(
    connection: Any,
    obj_or_oid: Any,
    file: str | os.PathLike[str] | BinaryIO,
    *,
    format: str = "pclasses",  # noqa: A002 - the user-facing option name
    registry: ClassRegistry | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Write the subtree of ``obj_or_oid`` (an object of ``connection`` or an oid).

    ``file`` is a path or a binary file opened for writing.  ``format`` is
    ``"pclasses"`` (this package's format, with manifest and digest) or
    ``"zexp"`` (ZODB's ``.zexp``).  Returns the :class:`Manifest`.
    """
    if format not in ("pclasses", "zexp"):
        raise TransferError(f"unknown export format {format!r} (pclasses or zexp)")
    if registry is None:
        registry = getattr(connection.db().classFactory, "registry", None) or ClassRegistry()
    start = _resolve_start(connection, obj_or_oid)
    from .scan import snapshot_loader

    load, still_valid, close_loader = snapshot_loader(connection)
    try:
        with _no_gc():
            manifest = _export(connection, start, file, format, registry, name, progress, load)
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
                   connection._storage.load)


def _export(connection: Any, start: bytes, file: Any, format: str,  # noqa: A002
            registry: ClassRegistry, name: str | None, progress: Progress | None,
            load: Callable[[bytes], tuple[bytes, bytes]]) -> Manifest:
    storage = connection._storage
    db_name = connection.db().database_name
    blob_storage = hasattr(storage, "loadBlob")
    from ZODB.blob import is_blob_record

    manifest = Manifest(VERSION, db_name, start, 0, name=name)
    needs: dict[tuple[str, str], int] = {}
    externals: dict[tuple[str, bytes], None] = {}
    queue: deque[bytes] = deque([start])
    seen = {start}
    own = isinstance(file, (str, os.PathLike))
    out: Any = open(file, "wb") if own else file  # noqa: SIM115
    body = tempfile.TemporaryFile(prefix="pclasses-export-") if format == "pclasses" else out
    try:
        if format == "zexp":
            out.write(ZEXP_MAGIC)
        n = 0
        while queue:
            oid = queue.popleft()
            try:
                data, tid = load(oid)
            except KeyError:
                continue  # a dangling reference in the source: it stays dangling
            a = _analyze(data, oid)
            pair = _record_class(data, oid, a)
            if pair in _CLASS_METACLASSES:
                if oid == start:
                    raise TransferError(f"{oid_repr(oid)} is a persistent class; export "
                                        "its instances, not the class")
                info = _class_record_info(data, oid)
                if info is None:
                    raise TransferError(f"class record {oid_repr(oid)} has no guid module")
                manifest.class_references[oid] = info
                continue
            if pair == _CLASS_TABLE:
                continue
            if pair is not None:
                needs[pair] = needs.get(pair, 0) | 8
            for g in a.globals:
                key = (g[0], g[1])
                needs[key] = needs.get(key, 0) | g[5]
            for kind, off, length, database, _shared, _pi in a.pids:
                if kind == "unknown" or off < 0:
                    raise TransferError(f"record {oid_repr(oid)} holds a reference this "
                                        "tool cannot follow")
                child = data[off:off + length]
                if database is not None:
                    externals[(database, child)] = None
                    continue
                if kind == "weak":
                    continue  # weak targets travel only when strongly reachable
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
            if format == "zexp":
                out.write(oid + p64(len(data)) + data)
            else:
                body.write(b"R" + oid + struct.pack(">I", len(data)) + data)
            n += 1
            if blob_storage and is_blob_record(data):
                path = storage.loadBlob(oid, tid)
                size = os.path.getsize(path)
                body.write(_ZEXP_BLOB + p64(size) if format == "zexp"
                           else b"B" + struct.pack(">Q", size))
                with open(path, "rb") as blob:
                    shutil.copyfileobj(blob, body, _CHUNK)
                manifest.blobs += 1
            if progress is not None and not n % 4096:
                progress(n, None)
        manifest.record_count = n
        manifest.external_references = sorted(externals)
        manifest.classes = _needs(needs, registry, connection)
        listed = {(c.module, c.name) for c in manifest.classes}
        for guid, cname in sorted(set(manifest.class_references.values())):
            if (GUID_PREFIX + guid, cname) not in listed:  # plain instances' classes
                manifest.classes.append(ClassNeed(GUID_PREFIX + guid, cname,
                                                  "database-resident", guid))
        if format == "zexp":
            out.write(_ZEXP_END)
        else:
            _finish(out, body, manifest)
        if progress is not None:
            progress(n, n)
        return manifest
    finally:
        if body is not out:
            body.close()
        if own:
            out.close()


def _needs(needs: dict[tuple[str, str], int], registry: ClassRegistry,
           connection: Any) -> list[ClassNeed]:
    result = []
    for (module, name), _uses in sorted(needs.items()):
        if is_guid_module(module):
            result.append(ClassNeed(module, name, "database-resident",
                                    module[len(GUID_PREFIX):]))
            continue
        res = registry.explain(module, name, connection)
        if res.how == "broken":
            kind = "broken"
        elif isinstance(res.target, type):
            kind = "importable"
        else:
            kind = "callable"
        result.append(ClassNeed(module, name, kind))
    return result


def _finish(out: Any, body: Any, manifest: Manifest) -> None:
    digest = hashlib.sha256()
    length = 0

    def write(chunk: bytes) -> None:
        nonlocal length
        out.write(chunk)
        digest.update(chunk)
        length += len(chunk)

    body.write(b"E")
    body.flush()
    manifest.bytes = 0
    head = json.dumps(manifest.to_dict(), sort_keys=True).encode()
    write(MAGIC + struct.pack(">H", VERSION) + struct.pack(">I", len(head)) + head)
    body.seek(0)
    while True:
        chunk = body.read(_CHUNK)
        if not chunk:
            break
        write(chunk)
    manifest.bytes = length + _TRAILER.size
    out.write(_TRAILER.pack(length, digest.digest()))


# ---------------------------------------------------------------------------
# Reading files (never unpickling)
# ---------------------------------------------------------------------------


@dataclass
class _Frame:
    oid: bytes
    data: bytes
    blob: tuple[int, int] | None = None  # (offset in file, length)


class _Reader:
    """Frames of a pclasses or ZEXP file, from a seekable binary file."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.has_blobs = False
        f.seek(0, 2)
        self.size = f.tell()
        f.seek(0)
        magic = f.read(len(MAGIC))
        if magic == MAGIC:
            self.kind = "pclasses"
            version = f.read(2)
            if len(version) != 2:
                raise ExportFormatError("truncated header")
            (v,) = struct.unpack(">H", version)
            if v != VERSION:
                raise ExportFormatError(f"export format version {v} is not supported "
                                        f"(this pclasses reads version {VERSION})")
            (mlen,) = struct.unpack(">I", self._read(4, "manifest length"))
            try:
                raw = json.loads(self._read(mlen, "manifest").decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise ExportFormatError(f"malformed manifest ({type(exc).__name__})") from None
            if not isinstance(raw, dict):
                raise ExportFormatError("malformed manifest (not an object)")
            self.manifest: Manifest | None = Manifest.from_dict(raw)
            self.start = f.tell()
        elif magic[:4] == ZEXP_MAGIC:
            self.kind = "zexp"
            self.manifest = None
            self.start = 4
        else:
            raise ExportFormatError("not an export file (neither pclasses nor ZODB .zexp)")

    def _read(self, n: int, what: str) -> bytes:
        if n > self.size - self.f.tell():
            raise ExportFormatError(f"truncated file: {what} incomplete")
        data = self.f.read(n)
        if len(data) != n:
            raise ExportFormatError(f"truncated file: {what} incomplete")
        return data

    def verify(self) -> None:
        """Check the trailer's length and digest (pclasses format only)."""
        if self.kind != "pclasses":
            return
        f = self.f
        f.seek(0, 2)
        size = f.tell()
        if size < _TRAILER.size + len(MAGIC):
            raise ExportFormatError("truncated file")
        f.seek(size - _TRAILER.size)
        length, expected = _TRAILER.unpack(f.read(_TRAILER.size))
        if length != size - _TRAILER.size:
            raise ExportFormatError("truncated or extended file (length check failed)")
        digest = hashlib.sha256()
        f.seek(0)
        left = length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise ExportFormatError("truncated file")
            digest.update(chunk)
            left -= len(chunk)
        if digest.digest() != expected:
            raise ExportFormatError("the file is corrupt (digest mismatch)")
        self.end = length

    def frames(self) -> Iterator[_Frame]:
        f = self.f
        f.seek(self.start)
        if self.kind == "zexp":
            yield from self._zexp_frames()
            return
        last: _Frame | None = None
        read = f.read
        unpack = _RECORD_HEAD.unpack
        while True:
            tag = read(1)
            if tag == b"R":
                if last is not None:
                    yield last
                head = read(12)
                if len(head) != 12:
                    raise ExportFormatError("truncated file: record header incomplete")
                oid, n = unpack(head)
                data = read(n)
                if len(data) != n:
                    raise ExportFormatError("truncated file: record incomplete")
                last = _Frame(oid, data)
            elif tag == b"E":
                if last is not None:
                    yield last
                if f.tell() != getattr(self, "end", f.tell()):
                    raise ExportFormatError("data after the end marker")
                return
            elif not tag:
                raise ExportFormatError("truncated file: no end marker")
            elif tag == b"B":
                if last is None or last.blob is not None:
                    raise ExportFormatError("blob without its record")
                (n,) = struct.unpack(">Q", self._read(8, "blob header"))
                if n > self.size - f.tell():
                    raise ExportFormatError("truncated file: blob incomplete")
                last.blob = (f.tell(), n)
                self.has_blobs = True
                f.seek(n, 1)
            else:
                raise ExportFormatError(f"unknown frame {tag!r} at byte {f.tell() - 1}")

    def _zexp_frames(self) -> Iterator[_Frame]:
        from ZODB.blob import is_blob_record

        f = self.f
        while True:
            head = f.read(16)
            if head == _ZEXP_END:
                return
            if len(head) != 16:
                raise ExportFormatError("truncated .zexp file (no end marker)")
            n = u64(head[8:])
            data = self._read(n, "record")
            frame = _Frame(head[:8], data)
            if is_blob_record(data):
                pos = f.tell()
                if f.read(len(_ZEXP_BLOB)) == _ZEXP_BLOB:
                    size = u64(self._read(8, "blob length"))
                    if size > self.size - f.tell():
                        raise ExportFormatError("truncated .zexp file: blob incomplete")
                    frame.blob = (f.tell(), size)
                    self.has_blobs = True
                    f.seek(size, 1)
                else:
                    f.seek(pos)
            yield frame

    def blob_to(self, frame: _Frame, path: str) -> None:
        assert frame.blob is not None
        offset, n = frame.blob
        here = self.f.tell()
        self.f.seek(offset)
        with open(path, "wb") as out:
            left = n
            while left:
                chunk = self.f.read(min(_CHUNK, left))
                if not chunk:
                    raise ExportFormatError("truncated blob")
                out.write(chunk)
                left -= len(chunk)
        self.f.seek(here)


def read_manifest(file: str | os.PathLike[str] | BinaryIO) -> Manifest:
    """The manifest of an export file (after checking its digest)."""
    with _opened(file) as f:
        reader = _Reader(f)
        reader.verify()
        if reader.manifest is None:
            raise ExportFormatError("a ZODB .zexp file has no manifest")
        return reader.manifest


class _opened:
    def __init__(self, file: Any) -> None:
        self.file = file
        self.own = isinstance(file, (str, os.PathLike))

    def __enter__(self) -> Any:
        if self.own:
            try:
                self.f: Any = open(self.file, "rb")  # noqa: SIM115
            except OSError as exc:
                raise TransferError(f"cannot read {self.file}: {exc.strerror}") from None
            return self.f
        if not (hasattr(self.file, "seek") and self.file.seekable()):
            raise TransferError("import needs a seekable file (a path or a regular file)")
        return self.file

    def __exit__(self, *exc: Any) -> None:
        if self.own:
            self.f.close()


# ---------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------


@dataclass
class _Plan:
    """The result of the check pass: rewritten records, ready to be stored."""

    reader: _Reader
    temp: Any  # frames of (new oid, rewritten record), see _prepare
    root: bytes  # the new oid of the imported root object
    refused: set[tuple[str, str]]
    records: int = 0


#: Marks a class passed as an argument in a record that also calls
#: ``copyreg._reconstructor`` (set by the check pass, not by the analyzer).
_CALLED_BY_RECONSTRUCTOR = 1 << 10


def _check_globals(
    needs: dict[tuple[str, str], int], registry: ClassRegistry, connection: Any,
    missing: str, policy: Any = None,
) -> tuple[list[str], set[tuple[str, str]]]:
    """Judge the globals with the import policy (:mod:`pclasses.allowlist`)."""
    from .allowlist import DEFAULT_POLICY, check_globals

    def resolve(module: str, name: str) -> tuple[bool, Any]:
        res = registry.explain(module, name, connection)
        return res.how != "broken", res.target

    def resident(module: str, name: str) -> bool:
        cls = registry(connection, module, name)
        return cls is not None and not _is_broken_class(cls)

    verdict = check_globals(needs, resolve, resident, policy or DEFAULT_POLICY)
    return verdict.missing, set(verdict.refused)


def _call_facts(data: bytes, oid: bytes, a: Any) -> Any:
    from .allowlist import record_facts

    try:
        return record_facts(data, a)
    except ValueError as exc:
        raise ExportFormatError(f"record {oid_repr(oid)} is not a readable ZODB record "
                                f"({exc})") from None


def _pid_classes(data: bytes, oid: bytes, a: Any) -> list[tuple[str, str]]:
    """Class names (strings or globals) of the record's ``(oid, class)`` references."""
    if not any(p[0] in ("oid_class", "multi") for p in a.pids):
        return []
    from .records import scan_record

    try:
        refs = scan_record(data, oid).references
    except PClassesError as exc:
        raise ExportFormatError(str(exc)) from None
    return [(r.klass.module, r.klass.name) for r in refs
            if r.klass is not None and r.klass.module is not None
            and r.klass.name is not None]


def _is_broken_class(obj: Any) -> bool:
    from ZODB.broken import Broken

    return isinstance(obj, type) and issubclass(obj, Broken)


def _plan(connection: Any, f: Any, registry: ClassRegistry, missing: str,
          progress: Progress | None, policy: Any = None) -> _Plan:
    """Check everything and prepare every record, before anything is stored.

    One pass over the file: each record is analysed (never unpickled),
    checked, given a new oid, and written with its references' oid bytes
    replaced to a temporary file that the store pass copies into the
    storage.  New oids are taken from the storage as records and
    references are met: a reference to an oid that is not in the file (a
    weak reference out of the subtree, a dangling one) gets a fresh oid
    nothing will be stored under.
    """
    reader = _Reader(f)
    reader.verify()
    manifest = reader.manifest
    missing_names: list[str] = []
    # References to classes stored in the source database, rebound by guid.
    declared = manifest.class_references if manifest is not None else {}
    mapping: dict[bytes, bytes] = {}
    class_refs_missing: list[str] = []
    if declared:
        table = class_table(connection, create=False)
        for oid, (guid, name) in sorted(declared.items()):
            cls = table.get(guid) if table is not None else None
            if cls is None or cls._p_oid is None:
                class_refs_missing.append(f"{GUID_PREFIX}{guid}.{name} (database-resident "
                                          f"class, guid {guid})")
            else:
                mapping[oid] = cls._p_oid
    missing_names.extend(class_refs_missing)
    skip: set[bytes] = set()
    if reader.kind == "zexp":
        # ZODB's exportFile copies class records along; they are not
        # imported but rebound by guid, as our own format does.
        for frame in reader.frames():
            a = _analyze(frame.data, frame.oid)
            pair = _record_class(frame.data, frame.oid, a)
            if pair == _CLASS_TABLE:
                skip.add(frame.oid)
            elif pair in _CLASS_METACLASSES:
                skip.add(frame.oid)
                info = _class_record_info(frame.data, frame.oid)
                if info is None:
                    raise ExportFormatError(f"class record {oid_repr(frame.oid)} has no guid")
                table = class_table(connection, create=False)
                cls = table.get(info[0]) if table is not None else None
                if cls is None or cls._p_oid is None:
                    class_refs_missing.append(f"{GUID_PREFIX}{info[0]}.{info[1]} "
                                              f"(database-resident class, guid {info[0]})")
                else:
                    mapping[frame.oid] = cls._p_oid
        missing_names.extend(class_refs_missing)
    new_oid = connection._storage.new_oid
    seen: set[bytes] = set()
    #: referenced oids with no record (yet): dangling when the pass ends
    pending: set[bytes] = set()
    needs: dict[tuple[str, str], int] = {}
    externals: set[str] = set()
    shapes: list[str] = []  # call shapes no renaming makes inert
    pid_classes: set[tuple[str, str]] = set()
    temp = tempfile.TemporaryFile(prefix="pclasses-import-")
    write = temp.write
    pack = _RECORD_HEAD.pack
    root = None
    n = 0
    try:
        for frame in reader.frames():
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
            a = _analyze(data, oid)
            if a.has_ext:
                raise ExportFormatError(f"record {oid_repr(oid)} uses pickle extension codes")
            if a.protocol > 5 or not data.endswith(b"."):
                raise ExportFormatError(f"record {oid_repr(oid)} is not a readable ZODB record")
            if a.has_stack_global:
                raise ExportFormatError(f"record {oid_repr(oid)} uses protocol-4 globals, "
                                        "which import cannot rebind safely")
            facts = _call_facts(data, oid, a)
            shapes.extend(f"record {oid_repr(oid)}: {p}" for p in facts.problems)
            for target in facts.pid_calls:
                # A plain instance of a database-resident class: its class
                # must be a class reference rebound to the target's table.
                if target is None or not (target in declared or target in skip):
                    shapes.append(f"record {oid_repr(oid)}: a call of a persistent object "
                                  "that is not a class reference")
            has_class_global = False
            reconstructs = False
            for g in a.globals:
                if (g[0], g[1]) in _RECONSTRUCTORS and g[5] & _USE_CALLED:
                    reconstructs = True
            for g in a.globals:
                key = (g[0], g[1])
                uses = g[5]
                if uses & 8:
                    has_class_global = True
                if reconstructs and uses & _USE_ARGUMENT:
                    uses |= _CALLED_BY_RECONSTRUCTOR
                old = needs.get(key)
                if old is None or old | uses != old:
                    needs[key] = (old or 0) | uses
            if not has_class_global:
                pair = _record_class(data, oid, a)
                if pair is not None:
                    needs[pair] = needs.get(pair, 0) | 8
            for pair in _pid_classes(data, oid, a):
                pid_classes.add(pair)
                needs[pair] = needs.get(pair, 0) | 16
            out = None
            for kind, off, length, database, shared, _pi in a.pids:
                if kind == "unknown" or off < 0 or shared:
                    raise ExportFormatError(f"record {oid_repr(oid)} has a reference that "
                                            "cannot be rebound without unpickling")
                if length != 8:
                    raise ExportFormatError(f"record {oid_repr(oid)} has a malformed oid")
                if database is not None:
                    externals.add(database)
                    continue  # the other database's oid stays
                end = off + 8
                target = data[off:end]
                new = mapping.get(target)
                if new is None:
                    new = mapping[target] = new_oid()
                    pending.add(target)
                if out is None:
                    out = bytearray(data)
                out[off:end] = new  # (several references may share one literal)
            new = mapping.get(oid)
            if new is None:
                new = mapping[oid] = new_oid()
            pending.discard(oid)
            if root is None:
                root = new
            record = data if out is None else bytes(out)
            write(b"R" + pack(new, len(record)))
            write(record)
            if frame.blob is not None:
                write(b"B" + struct.pack(">QQ", *frame.blob))
            n += 1
            if progress is not None and not n % 4096:
                progress(n, None)
        if root is None:
            raise ExportFormatError("the file holds no records")
        if pending:
            # References to oids not in the file (a weak reference out of the
            # subtree, a reference that dangled in the source) were given
            # fresh oids; after a reopen the storage could hand those out
            # again, so they are pointed at an oid it never allocates.
            temp = _redirect_dangling(temp, {mapping[o] for o in pending})
            write = temp.write
        if manifest is not None and manifest.record_count != n:
            raise ExportFormatError(f"the manifest says {manifest.record_count} records, the "
                                    f"file holds {n}")
        more_missing, refused = _check_globals(needs, registry, connection, missing, policy)
        missing_names.extend(more_missing)
        if shapes or refused & pid_classes:
            # Neither a computed callable nor a class named by strings in a
            # reference can be renamed away: refused even with "broken".
            raise RefusedGlobalsError(sorted(f"{m}.{nm}" for m, nm in refused) + shapes)
        dbs = getattr(connection.db(), "databases", {}) or {}
        for database in sorted(externals):
            if database not in dbs:
                missing_names.append(f"database {database!r} (cross-database references)")
        if refused and missing == "error":
            raise RefusedGlobalsError(sorted(f"{m}.{nm}" for m, nm in refused))
        missing_names = list(dict.fromkeys(missing_names))
        class_refs_missing = list(dict.fromkeys(class_refs_missing))
        if missing_names and missing == "error":
            raise MissingClassesError(missing_names)
        if class_refs_missing:
            # A plain instance of (or a reference to) a class stored in the
            # source database needs that class record; without it there is
            # nothing to import it as, not even a broken object.
            raise MissingClassesError(class_refs_missing)
        write(b"E")
        temp.flush()
    except BaseException:
        temp.close()
        raise
    return _Plan(reader, temp, root, refused, n)


#: Where dangling references point after an import: an oid no storage hands
#: out (the last of the 2**64), so a dangling reference never lands on an
#: unrelated object.
NOWHERE = b"\xff" * 8


def _redirect_dangling(temp: Any, fresh: set[bytes]) -> Any:
    """Rewrite the prepared records: every fresh-but-unused oid -> NOWHERE."""
    out = tempfile.TemporaryFile(prefix="pclasses-import-")
    temp.seek(0)
    read = temp.read
    unpack = _RECORD_HEAD.unpack
    pack = _RECORD_HEAD.pack
    while True:
        tag = read(1)
        if tag == b"R":
            oid, n = unpack(read(12))
            data = read(n)
            a = _ANALYZE(data)
            buf = None
            for _k, off, length, database, _s, _p in a.pids:
                if database is None and data[off:off + length] in fresh:
                    if buf is None:
                        buf = bytearray(data)
                    buf[off:off + length] = NOWHERE
            record = data if buf is None else bytes(buf)
            out.write(b"R" + pack(oid, len(record)))
            out.write(record)
        elif tag == b"B":
            out.write(b"B" + read(16))
        else:
            break
    temp.close()
    return out


def _prepared_frames(plan: _Plan) -> Iterator[tuple[bytes, bytes, tuple[int, int] | None]]:
    """``(new oid, record, blob)`` from the prepared temporary file."""
    f = plan.temp
    f.seek(0)
    read = f.read
    unpack = _RECORD_HEAD.unpack
    pending = None
    while True:
        tag = read(1)
        if tag == b"R":
            if pending is not None:
                yield pending
            oid, n = unpack(read(12))
            pending = (oid, read(n), None)
        elif tag == b"B":
            assert pending is not None
            pending = (pending[0], pending[1], struct.unpack(">QQ", read(16)))
        else:
            if pending is not None:
                yield pending
            return


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
    allow_code: bool = False,
    strict: Any = None,
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

    What the records may name is decided by :mod:`pclasses.allowlist`:
    ``allow_code=True`` also admits classes that turn state into code
    (source methods, persistent classes); ``strict`` (package names) admits
    only classes of those packages besides plain data types.
    """
    from .allowlist import ImportPolicy

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
    with _opened(file) as f:
        with _no_gc():
            plan = _plan(connection, f, registry, missing, progress, policy)
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
                plan.reader = _Reader(open(plan.reader.f.name, "rb"))  # noqa: SIM115
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
    for oid, data, _blob in _prepared_frames(plan):
        ghost = connection._reader.getGhost(data)
        connection._cache.new_ghost(oid, ghost)  # sets its oid and jar
        return ghost
    raise ExportFormatError("the file holds no records")


class _Importer:
    """What ``Connection._importDuringCommit`` receives for our imports."""

    def __init__(self, plan: _Plan, progress: Progress | None, close: bool = False) -> None:
        self.plan = plan
        self.progress = progress
        self.close = close

    def run(self, connection: Any, transaction: Any, returned: list[bytes]) -> None:
        try:
            with _no_gc():
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
            for oid, data, blob in _prepared_frames(plan):
                if refused:
                    data = _make_inert(data, oid, refused)
                if blob is not None:
                    tmpdir = tmpdir or tempfile.mkdtemp(prefix="pclasses-import-")
                    path = os.path.join(tmpdir, oid.hex())
                    plan.reader.blob_to(_Frame(oid, b"", blob), path)
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
    from .rewrite import FramedRecordError, rename_globals, replace_class_pickle

    a = _analyze(data, oid)
    if not any(g[5] & 8 for g in a.globals):
        pair = _record_class(data, oid, a)
        if pair in refused:  # format 3/7 class metadata naming a refused global
            from .records import read_class

            if read_class(data, oid).format != 3:
                raise ExportFormatError(f"record {oid_repr(oid)}: its class metadata names "
                                        f"{pair[0]}.{pair[1]} with arguments")
            data = replace_class_pickle(data, a.end1, (REFUSED_PREFIX + pair[0], pair[1]))
            a = _analyze(data, oid)
    try:
        new, _renamed = rename_globals(
            data, a, lambda m, n: (REFUSED_PREFIX + m, n) if (m, n) in refused else None)
    except FramedRecordError:
        raise ExportFormatError(f"record {oid_repr(oid)}: a framed record cannot be made "
                                "inert") from None
    return new


def _writer_connection(connection: Any) -> None:
    """Make sure ``connection`` handles our imports during its commit."""
    from ZODB.Connection import Connection as ZODBConnection

    from .writer import Connection

    if not isinstance(connection, Connection):
        if type(connection) is not ZODBConnection:
            raise TransferError("import needs a ZODB connection (or one made by a database "
                                "opened with pclasses)")
        connection.__class__ = Connection


def resolve_path(connection: Any, path: str) -> Any:
    """An object by path from the root (``site/docs`` or ``site.docs``) or oid (``0x1a``)."""
    if path.startswith("0x"):
        try:
            return connection.get(repr_to_oid(path))
        except Exception as exc:
            raise TransferError(f"no object {path}: {exc}") from None
    obj = connection.root()
    if path in ("", "/"):
        return obj
    for part in path.strip("/").split("/"):
        try:
            obj = obj[part]
        except (KeyError, TypeError):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise TransferError(f"no {part!r} in {path!r}") from None
    return obj


