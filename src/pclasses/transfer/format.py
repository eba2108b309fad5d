"""The export file: frames, manifest, digest, and ZODB's ``.zexp``.

File format (version 1)::

    magic    b"PCLASSES-EXPORT\\0" (16 bytes)
    version  u16 (big endian)
    manifest u32 length + UTF-8 JSON
    frames   b"R" oid(8) u32 length data      one per record
             b"B" u64 length bytes            the blob of the record before
    end      b"E"
    trailer  u64 length of everything above + SHA-256 of everything above

The manifest lists the format version, source database name, root oid,
record count, every class name the records need with its kind
(``importable``, ``database-resident`` with its guid, ``broken``, or
``callable`` for functions used in reduces), the class references, and the
external references.  The trailer's digest covers the whole file before it,
so truncation or any flipped byte is detected before anything is imported.

One frame codec (:func:`record_frame`, :func:`blob_frame`,
:func:`iter_frames`, and :meth:`Reader.records`, which cuts the frames of a
verified file out of large chunks) writes and reads the frames of the
export file.  :class:`Reader` reads both this format and ZODB's
``.zexp`` (``b"ZEXP"``, then oid(8) u64 length data per record, a blob as
``b"\\0BLOBSTART"`` u64 length bytes after its record, 16 bytes ``0xff``
at the end).  Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ZODB.utils import oid_repr, repr_to_oid, u64

from ..errors import ExportFormatError, TransferError

__all__ = [
    "MAGIC",
    "VERSION",
    "ClassNeed",
    "Manifest",
    "Frame",
    "Reader",
    "record_frame",
    "blob_frame",
    "iter_frames",
    "write_file",
    "opened",
    "read_manifest",
]

MAGIC = b"PCLASSES-EXPORT\x00"
VERSION = 1
ZEXP_MAGIC = b"ZEXP"
ZEXP_END = b"\xff" * 16
ZEXP_BLOB = b"\x00BLOBSTART"
END = b"E"
TRAILER = struct.Struct(">Q32s")
RECORD_HEAD = struct.Struct(">8sI")
_BLOB_HEAD = struct.Struct(">Q")
CHUNK = 1 << 20


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
    #: the intrinsic references the subtree holds (pclasses.refs.transfer)
    references: list[dict[str, Any]] = field(default_factory=list)
    #: the key of the exported root object, when it has one
    references_root: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self._to_dict()
        if not self.references:  # listed only when the subtree holds references
            del d["references"], d["references_root"]
        return d

    def _to_dict(self) -> dict[str, Any]:
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
            "references": self.references,
            "references_root": self.references_root,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """The manifest of a file, every field checked for its type and range
        (anything else is an :class:`ExportFormatError`)."""
        try:
            return cls(
                format_version=_count(d["format_version"]),
                source_database=_text(d["source_database"]),
                root_oid=_oid(d["root_oid"]),
                record_count=_count(d["record_count"]),
                classes=[ClassNeed(_text(c["module"]), _text(c["name"]), _text(c["kind"]),
                                   _text(c.get("guid"), none=True))
                         for c in _list(d["classes"])],
                external_references=[(_text(e["database"]), _oid(e["oid"]))
                                     for e in _list(d["external_references"])],
                class_references={_oid(o): (_text(v["guid"]), _text(v["name"]))
                                  for o, v in _dict(d["class_references"]).items()},
                blobs=_count(d.get("blobs", 0)),
                name=_text(d.get("name"), none=True),
                bytes=_count(d.get("bytes", 0)),
                references=[_reference(r) for r in _list(d.get("references", []))],
                references_root=_text(d.get("references_root"), none=True),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                RecursionError, struct.error) as exc:
            raise ExportFormatError(f"malformed manifest ({type(exc).__name__})") from None


def _count(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 1 << 63:
        raise ValueError("not a count")
    return value


def _text(value: Any, none: bool = False) -> Any:
    if value is None and none:
        return None
    if type(value) is not str:
        raise TypeError("not a string")
    return value


def _list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise TypeError("not a list")
    return value


def _dict(value: Any) -> dict[Any, Any]:
    if type(value) is not dict:
        raise TypeError("not an object")
    return value


def _reference(value: Any) -> dict[str, Any]:
    """One entry of the manifest's ``references`` (pclasses.refs.transfer)."""
    d = _dict(value)
    return {"reference_id": _text(d["reference_id"]), "ref_id": _text(d["ref_id"]),
            "database": _text(d.get("database"), none=True),
            "key": _text(d.get("key"), none=True), "mode": _text(d.get("mode", "always")),
            "internal": d.get("internal") is True}


def _oid(value: Any) -> bytes:
    text = _text(value)
    if not text.startswith("0x") or len(text) > 18:
        raise ValueError("not an oid")
    return repr_to_oid(text)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# The frame codec
# ---------------------------------------------------------------------------


@dataclass
class Frame:
    """One record of a file: ``blob`` is ``(offset in the export file, length)``."""

    oid: bytes
    data: bytes
    blob: tuple[int, int] | None = None
    #: the analyzer's findings when the reader needed them already (.zexp)
    analysis: Any = None


def record_frame(oid: bytes, data: bytes) -> bytes:
    """The head of a record frame (the record's bytes follow it)."""
    return b"R" + RECORD_HEAD.pack(oid, len(data))


def blob_frame(size: int) -> bytes:
    """The head of a blob frame (``size`` bytes of blob follow it)."""
    return b"B" + _BLOB_HEAD.pack(size)


def iter_frames(f: Any, size: int, *, end: int | None = None) -> Iterator[Frame]:
    """The frames of ``f`` from its current position up to the end marker.

    ``size`` is the file's size (a blob longer than the rest of the file is
    refused before it is skipped); ``end`` the position the end marker must
    be followed by.
    """
    read = f.read
    unpack = RECORD_HEAD.unpack
    last: Frame | None = None
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
            last = Frame(oid, data)
        elif tag == END:
            if last is not None:
                yield last
            if end is not None and f.tell() != end:
                raise ExportFormatError("data after the end marker")
            return
        elif not tag:
            raise ExportFormatError("truncated file: no end marker")
        elif tag == b"B":
            if last is None or last.blob is not None:
                raise ExportFormatError("blob without its record")
            head = read(8)
            if len(head) != 8:
                raise ExportFormatError("truncated file: blob header incomplete")
            (n,) = _BLOB_HEAD.unpack(head)
            if n > size - f.tell():
                raise ExportFormatError("truncated file: blob incomplete")
            last.blob = (f.tell(), n)
            f.seek(n, 1)
        else:
            raise ExportFormatError(f"unknown frame {tag!r} at byte {f.tell() - 1}")


def write_file(out: Any, body: Any, manifest: Manifest) -> None:
    """Write the export file: header and manifest, the frames of ``body``
    (a temporary file), the end marker and the trailer; sets
    ``manifest.bytes`` to the file's size."""
    digest = hashlib.sha256()
    length = 0

    def write(chunk: bytes) -> None:
        nonlocal length
        out.write(chunk)
        digest.update(chunk)
        length += len(chunk)

    body.write(END)
    body.flush()
    manifest.bytes = 0
    head = json.dumps(Manifest.to_dict(manifest), sort_keys=True).encode()
    write(MAGIC + struct.pack(">H", VERSION) + struct.pack(">I", len(head)) + head)
    body.seek(0)
    while True:
        chunk = body.read(CHUNK)
        if not chunk:
            break
        write(chunk)
    manifest.bytes = length + TRAILER.size
    out.write(TRAILER.pack(length, digest.digest()))


# ---------------------------------------------------------------------------
# Reading files (never unpickling)
# ---------------------------------------------------------------------------


class Reader:
    """Frames of a pclasses or ZEXP file, from a seekable binary file."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.has_blobs = False
        self.end: int | None = None
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
        data: bytes = self.f.read(n)
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
        if size < TRAILER.size + len(MAGIC):
            raise ExportFormatError("truncated file")
        f.seek(size - TRAILER.size)
        length, expected = TRAILER.unpack(f.read(TRAILER.size))
        if length != size - TRAILER.size:
            raise ExportFormatError("truncated or extended file (length check failed)")
        digest = hashlib.sha256()
        f.seek(0)
        left = length
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise ExportFormatError("truncated file")
            digest.update(chunk)
            left -= len(chunk)
        if digest.digest() != expected:
            raise ExportFormatError("the file is corrupt (digest mismatch)")
        self.end = length

    def frames(self) -> Iterator[Frame]:
        f = self.f
        f.seek(self.start)
        if self.kind == "zexp":
            yield from self._zexp_frames()
            return
        for frame in iter_frames(f, self.size, end=self.end):
            if frame.blob is not None:
                self.has_blobs = True
            yield frame

    def records(self) -> Iterator[tuple[bytes, bytes, tuple[int, int] | None, Any]]:
        """``(oid, data, blob, analysis)`` of every record, in file order.

        ``blob`` is ``(offset, length)`` of the record's blob in the file,
        ``analysis`` the analyzer's findings when the reader needed them
        already (``.zexp``), else ``None``.  After :meth:`verify`, a file of
        this package's format is read in large chunks and its frames are
        cut from them (no object per frame); otherwise this is
        :meth:`frames` as tuples.
        """
        if self.kind == "pclasses" and self.end is not None:
            return self._chunked_records(self.end)
        return ((frame.oid, frame.data, frame.blob, frame.analysis) for frame in self.frames())

    def oids(self) -> Iterator[bytes]:
        """The oid of every record, in file order, without analysing the
        records (a ``.zexp``'s record is analysed only where a blob may
        follow it, as :meth:`frames` decides)."""
        if self.kind == "pclasses":
            for oid, _data, _blob, _a in self.records():
                yield oid
            return
        self.f.seek(self.start)
        for frame in self._zexp_frames(light=True):
            yield frame.oid

    def _chunked_records(self, end: int
                         ) -> Iterator[tuple[bytes, bytes, tuple[int, int] | None, Any]]:
        # The frames of the verified region [start, end), read CHUNK bytes at
        # a time: ``buf`` holds the file's bytes from offset ``base`` on.
        # Every length is checked against ``end`` before anything is read or
        # skipped, so a crafted length never makes us read past the region.
        f = self.f

        def refill(at: int, keep: bytes, need: int) -> bytes:
            # the file from ``at`` on: ``keep`` (already read) + what follows
            f.seek(at + len(keep))
            more: bytes = f.read(min(max(CHUNK, need, 64), end - at - len(keep)))
            return keep + more

        base = self.start
        buf = refill(base, b"", 0)
        pos = 0
        unpack_head = RECORD_HEAD.unpack_from
        unpack_blob = _BLOB_HEAD.unpack_from
        while True:
            if pos + 22 > len(buf) and base + len(buf) < end:
                base += pos
                buf, pos = refill(base, buf[pos:], 0), 0
            if pos >= len(buf):
                raise ExportFormatError("truncated file: no end marker")
            tag = buf[pos]
            if tag == 0x52:  # b"R"
                if pos + 13 > len(buf):
                    raise ExportFormatError("truncated file: record header incomplete")
                oid, n = unpack_head(buf, pos + 1)
                start = pos + 13
                stop = start + n
                if stop > len(buf):
                    if base + stop > end:
                        raise ExportFormatError("truncated file: record incomplete")
                    base += start
                    buf, start, stop = refill(base, buf[start:], n), 0, n
                data = buf[start:stop]
                pos = stop
                blob: tuple[int, int] | None = None
                if pos + 9 > len(buf) and base + len(buf) < end:
                    base += pos
                    buf, pos = refill(base, buf[pos:], 0), 0
                if pos < len(buf) and buf[pos] == 0x42:  # b"B": this record's blob
                    if pos + 9 > len(buf):
                        raise ExportFormatError("truncated file: blob header incomplete")
                    (size,) = unpack_blob(buf, pos + 1)
                    at = base + pos + 9
                    if size > end - at:
                        raise ExportFormatError("truncated file: blob incomplete")
                    blob = (at, size)
                    self.has_blobs = True
                    if pos + 9 + size <= len(buf):
                        pos += 9 + size
                    else:  # skip the blob's bytes without reading them
                        base = at + size
                        buf, pos = refill(base, b"", 0), 0
                yield oid, data, blob, None
            elif tag == 0x45:  # b"E"
                if base + pos + 1 != end:
                    raise ExportFormatError("data after the end marker")
                return
            elif tag == 0x42:
                raise ExportFormatError("blob without its record")
            else:
                raise ExportFormatError(f"unknown frame {bytes([tag])!r} at byte {base + pos}")

    def _zexp_frames(self, light: bool = False) -> Iterator[Frame]:
        # Which records have a blob after them: ZODB asks an unpickler
        # (``is_blob_record``); we ask the record analyzer, which runs the
        # package's guards (pre-scan, lengths, limits) before anything else
        # looks at the record, and keep its findings for the check pass.
        from .records import BLOB_CLASS, analyze, record_class

        f = self.f
        while True:
            head = f.read(16)
            if head == ZEXP_END:
                return
            if len(head) != 16:
                raise ExportFormatError("truncated .zexp file (no end marker)")
            n = u64(head[8:])
            data = self._read(n, "record")
            frame = Frame(head[:8], data)
            maybe_blob = b"ZODB.blob" in data
            if light and not maybe_blob:  # (``light``: only where a blob may follow)
                yield frame
                continue
            frame.analysis = a = analyze(data, frame.oid)
            if maybe_blob and record_class(data, frame.oid, a) == BLOB_CLASS:
                pos = f.tell()
                if f.read(len(ZEXP_BLOB)) == ZEXP_BLOB:
                    size = u64(self._read(8, "blob length"))
                    if size > self.size - f.tell():
                        raise ExportFormatError("truncated .zexp file: blob incomplete")
                    frame.blob = (f.tell(), size)
                    self.has_blobs = True
                    f.seek(size, 1)
                else:
                    f.seek(pos)
            yield frame

    def blob_to(self, blob: tuple[int, int], path: str) -> None:
        """Copy the blob at ``(offset, length)`` of the file to ``path``."""
        offset, n = blob
        here = self.f.tell()
        self.f.seek(offset)
        with open(path, "wb") as out:
            left = n
            while left:
                chunk = self.f.read(min(CHUNK, left))
                if not chunk:
                    raise ExportFormatError("truncated blob")
                out.write(chunk)
                left -= len(chunk)
        self.f.seek(here)


class opened:  # noqa: N801 - used as a context manager, like open()
    """A path opened for reading, or a seekable binary file as it is."""

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


def read_manifest(file: str | os.PathLike[str] | BinaryIO) -> Manifest:
    """The manifest of an export file (after checking its digest)."""
    with opened(file) as f:
        reader = Reader(f)
        reader.verify()
        if reader.manifest is None:
            raise ExportFormatError("a ZODB .zexp file has no manifest")
        return reader.manifest
