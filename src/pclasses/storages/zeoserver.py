"""A ZEO server that hands out many records an answer: ``pclasses-zeo``.

A stock ZEO server answers one record a request, and each request costs it
40-55 us of CPU: a scan of 100,000 records over ZEO stays 7-17x slower
than the same scan of the file, however many requests the client keeps in
flight (:mod:`pclasses.storages.zeo`).  This server is ZEO's own
(``ZEO.StorageServer``, every request and option as ``runzeo``) with two
more requests, each answered with many records packed into one bytes
value:

``pclasses_current(after, max_records, max_bytes) -> (packed, last)``
    the current records of the objects after oid ``after`` (``None``: from
    the first), in oid order, until ``max_records`` records or about
    ``max_bytes`` bytes (at least one record; both capped by the server);
    ``packed`` holds ``count`` (4 bytes, big-endian) and then four runs:
    the oids (8 bytes each), their tids (8), the lengths of their data (4,
    big-endian) and the data; ``last`` is the last oid looked at (ask
    again after it), ``None`` at the end.  Objects whose current record
    holds no data (deleted, their creation undone) are skipped.
``pclasses_load_many(oids, before=None) -> packed``
    for each oid of ``oids`` (8-byte oids, a list or one bytes value of
    them), its record current before tid ``before`` (``None``: its current
    record), packed as above with a status byte in place of each oid:
    0 a record, 1 no such object (then tid and length are zero), 2 no
    data there (deleted).

Splitting the columns makes both ends cheap: the server appends to four
lists, the client slices four runs in list comprehensions.

Both read at the server's current view: each answer is read while the
storage's lock is held, so a commit lands wholly before or wholly after it
(records committed after a request may or may not be in later answers,
as in a scan of the file); nothing is unpickled or run on the server, it
ships the bytes it holds.  A FileStorage is read straight from the file at
the positions its index gives, through a memory map (as
:mod:`pclasses.scan` reads a file), anything unusual (a backpointer, a
record beyond the map) through the storage's own ``load``/``loadBefore``;
any other storage through its ``record_iternext`` and ``loadBefore``.
Blob files keep ZEO's own path (``sendBlob``).

Clients learn the server offers these from ``get_info()``, which carries
:data:`pclasses.storages.zeo.INFO_KEY` (a stock server's does not: a request it does not know
would make it drop the connection).

Run it as ``pclasses-zeo -C zeo.conf`` (or ``python -m
pclasses.storages.zeoserver``), with exactly ``runzeo``'s options and
configuration file.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from array import array
from typing import Any

from ZEO.runzeo import ZEOOptions
from ZEO.runzeo import ZEOServer as _RunZEOServer
from ZEO.StorageServer import StorageServer, ZEOStorage, registered_methods
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from ..mapped import DROP_BYTES, PAGE_SPAN, drop_pages
from . import storage_kind
from .zeo import INFO_KEY, LOADED, MISSING, NO_DATA, PROTOCOL

__all__ = ["METHODS", "PClassesZEOStorage", "PClassesStorageServer", "PClassesZEOServer",
           "create_server", "main"]

#: The requests added to ZEO's.
METHODS = frozenset({"pclasses_current", "pclasses_load_many"})
#: Caps on one answer, whatever the client asks: records, bytes (a record
#: larger than this still comes alone), oids of one ``pclasses_load_many``.
MAX_RECORDS = 20_000
MAX_BYTES = 8 << 20
MAX_OIDS = 20_000

_DATA_HEADER = struct.Struct(">8s8sQQHQ")  # a FileStorage data record: oid tid prev tloc vlen plen
_OID_TID_VLEN_PLEN = struct.Struct(">8s8s16xHQ")  # the same header, the fields read here
_COUNT = struct.Struct(">I")
_NOTHING = b"\0" * 8


class _Columns:
    """An answer being built: per record an oid (or a status), a tid, a
    length and the data, packed as ``count(4)`` and then each a run of its
    own (read back by :func:`pclasses.storages.zeo.unpack_current` and
    :func:`~pclasses.storages.zeo.unpack_loaded`)."""

    __slots__ = ("lead", "tids", "lengths", "data", "size")

    def __init__(self) -> None:
        self.lead: list[Any] = []
        self.tids: list[bytes] = []
        self.lengths = array("I")
        self.data: list[bytes] = []
        self.size = 0

    def add(self, lead: Any, tid: bytes, data: bytes) -> None:
        self.lead.append(lead)
        self.tids.append(tid)
        self.lengths.append(len(data))
        self.data.append(data)
        self.size += len(data) + 20

    def pack(self, status: bool = False) -> bytes:
        lengths = self.lengths
        if sys.byteorder == "little":
            lengths = array("I", lengths)
            lengths.byteswap()
        lead = bytes(self.lead) if status else b"".join(self.lead)
        return b"".join([_COUNT.pack(len(self.tids)), lead, b"".join(self.tids),
                         lengths.tobytes(), *self.data])


def _check_oid(oid: Any, what: str) -> bytes:
    if not isinstance(oid, bytes) or len(oid) != 8:
        raise ValueError(f"{what} must be an 8-byte oid, not {type(oid).__name__}"
                         f"{'' if not isinstance(oid, bytes) else f' of {len(oid)} bytes'}")
    return oid


def _check_count(value: Any, what: str, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer")
    return min(value, cap)


def _oids(oids: Any) -> list[bytes]:
    if isinstance(oids, bytes):
        if len(oids) % 8:
            raise ValueError("oids given as bytes must be 8 bytes each")
        if len(oids) // 8 > MAX_OIDS:
            raise ValueError(f"at most {MAX_OIDS} oids a request")
        return [oids[k:k + 8] for k in range(0, len(oids), 8)]
    if not isinstance(oids, (list, tuple)):
        raise ValueError("oids must be a list of 8-byte oids or one bytes value of them")
    if len(oids) > MAX_OIDS:
        raise ValueError(f"at most {MAX_OIDS} oids a request")
    return [_check_oid(o, "each oid") for o in oids]


class _Reader:
    """Answers the two requests for one storage through its own API."""

    current_supported = True

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.current_supported = callable(getattr(storage, "record_iternext", None))

    def current(self, after: bytes | None, max_records: int,
                max_bytes: int) -> tuple[bytes, bytes | None]:
        storage = self.storage
        out = _Columns()
        if after is None:
            nxt: bytes | None = None
        elif after == _LAST:
            return out.pack(), None
        else:
            nxt = p64(u64(after) + 1)
        last = after
        while len(out.tids) < max_records and out.size < max_bytes:
            try:
                oid, tid, data, following = storage.record_iternext(nxt)
            except POSKeyError:  # a record without data at ``nxt``: after it
                assert nxt is not None
                last = nxt
                if nxt == _LAST:
                    return out.pack(), None
                nxt = p64(u64(nxt) + 1)
                continue
            except (ValueError, KeyError, IndexError, StopIteration):  # past the last oid
                return out.pack(), None
            if nxt is not None and oid < nxt:  # a storage that went back: the end
                return out.pack(), None
            last = oid
            if data is not None:
                out.add(oid, tid, data)
            if following is None:
                return out.pack(), None
            nxt = following
        return out.pack(), last

    def load_many(self, oids: list[bytes], before: bytes | None) -> bytes:
        out = _Columns()
        for oid in oids:
            self._load(out, oid, before)
        return out.pack(status=True)

    def _load(self, out: _Columns, oid: bytes, before: bytes | None) -> None:
        storage = self.storage
        try:
            if before is None:
                data, tid = storage.load(oid)
            else:
                r = storage.loadBefore(oid, before)
                if r is None:  # it did not exist yet
                    out.add(MISSING, _NOTHING, b"")
                    return
                data, tid = r[0], r[1]
        except POSKeyError:
            out.add(MISSING, _NOTHING, b"")
            return
        if data is None:
            out.add(NO_DATA, tid or _NOTHING, b"")
        else:
            out.add(LOADED, tid, data)


_LAST = b"\xff" * 8


class _FileReader(_Reader):
    """Answers for a FileStorage: records read straight from its file at
    the positions its index gives, through a memory map made again when
    the file grows past it or is replaced (a pack), all while the
    storage's lock is held (a commit updates the index under it)."""

    def __init__(self, storage: Any) -> None:
        super().__init__(storage)
        self.current_supported = True
        self._mm: Any = None
        self._key: tuple[int, int] | None = None
        self._read = 0

    def _map(self) -> Any:
        """The map of the file as it is now (the lock held)."""
        storage = self.storage
        f = storage._file
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino)
        mm = self._mm
        if mm is None or self._key != key or len(mm) < storage._pos:
            if mm is not None:
                mm.close()
                self._mm = None
            self._mm = mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._key = key
        return mm

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def _drop(self, n: int, mm: Any) -> None:
        """Count ``n`` bytes read through the map (and the pages around
        them); give the map's pages back now and then."""
        self._read += n
        if self._read > DROP_BYTES:
            self._read = 0
            drop_pages(mm)

    def current(self, after: bytes | None, max_records: int,
                max_bytes: int) -> tuple[bytes, bytes | None]:
        storage = self.storage
        out = _Columns()
        oids, tids, lengths, datas = out.lead, out.tids, out.lengths, out.data
        add_oid, add_tid, add_length, add_data = (
            oids.append, tids.append, lengths.append, datas.append)
        from_bytes = int.from_bytes
        unusual: list[int] = []  # places whose record the storage must read
        n = total = read = 0
        ended = True
        with storage._lock:
            mm = self._map()
            size = len(mm)
            data_tree = storage._index._data
            unpack_from = _OID_TID_VLEN_PLEN.unpack_from
            hsize = _DATA_HEADER.size
            # iterators, never ``items()``: a bucket's ``items()`` is a list
            # of up to 65,536 pairs, made again for every answer
            if after is None:
                prefixes = data_tree.iteritems()
                first_prefix = None
                first_suffix = b""
            else:
                prefixes = data_tree.iteritems(min=after[:6])
                first_prefix, first_suffix = after[:6], after[6:]
            try:
                for prefix, bucket in prefixes:
                    if prefix == first_prefix:
                        entries = bucket.iteritems(min=first_suffix, excludemin=True)
                    else:
                        entries = bucket.iteritems()
                    for suffix, p in entries:
                        if n >= max_records or total >= max_bytes:
                            ended = False
                            break
                        n += 1
                        pos = from_bytes(p, "big")
                        end = pos + hsize
                        if end <= size:
                            hoid, tid, vlen, plen = unpack_from(mm, pos)
                            if (not vlen and plen and hoid == prefix + suffix
                                    and end + plen <= size):
                                add_oid(hoid)
                                add_tid(tid)
                                add_length(plen)
                                add_data(mm[end:end + plen])
                                total += plen + 20
                                read += plen + PAGE_SPAN
                                continue
                        # a backpointer, no data, or anything unusual: the
                        # storage reads it, once the lock is let go (its
                        # load waits for a pack that waits for the lock)
                        unusual.append(len(tids))
                        add_oid(prefix + suffix)
                        add_tid(_NOTHING)
                        add_length(0)
                        add_data(b"")
                        total += 20
                    else:
                        continue
                    break
            finally:
                self._drop(read, mm)
        # every oid looked at is in ``oids`` (until the unusual ones are
        # read): the last one is where the next answer starts after
        last = oids[-1] if oids else after
        if unusual:
            out = self._fill_unusual(out, unusual)
        return out.pack(), (None if ended else last)

    def _fill_unusual(self, out: _Columns, unusual: list[int]) -> _Columns:
        """``out`` with the records at places ``unusual`` read through the
        storage, those without data (deleted, creation undone) left out."""
        load = self.storage.load
        gone = set()
        for k in unusual:
            try:
                data, tid = load(out.lead[k])
            except POSKeyError:
                data = None
            if data is None:
                gone.add(k)
                continue
            out.tids[k] = tid
            out.lengths[k] = len(data)
            out.data[k] = data
        if not gone:
            return out
        kept = _Columns()
        for k, (oid, tid, data) in enumerate(zip(out.lead, out.tids, out.data)):
            if k not in gone:
                kept.add(oid, tid, data)
        return kept

    def load_many(self, oids: list[bytes], before: bytes | None) -> bytes:
        storage = self.storage
        out = _Columns()
        statuses, tids, lengths, datas = out.lead, out.tids, out.lengths, out.data
        unusual: list[int] = []  # places whose record the storage must read
        read = 0
        with storage._lock:
            mm = self._map()
            size = len(mm)
            buckets = storage._index._data.get
            unpack_from = _DATA_HEADER.unpack_from
            hsize = _DATA_HEADER.size
            prefix: bytes | None = None
            bucket: Any = None
            try:
                for oid in oids:
                    if oid[:6] != prefix:  # the oids of a block share their bucket
                        prefix = oid[:6]
                        bucket = buckets(prefix)
                    p = None if bucket is None else bucket.get(oid[6:])
                    if p is None:
                        out.add(MISSING, _NOTHING, b"")
                        continue
                    pos = int.from_bytes(p, "big")
                    end = pos + hsize
                    if end <= size:
                        hoid, tid, _prev, _tloc, vlen, plen = unpack_from(mm, pos)
                        if (hoid == oid and not vlen and plen and end + plen <= size
                                and (before is None or tid < before)):
                            statuses.append(LOADED)
                            tids.append(tid)
                            lengths.append(plen)
                            datas.append(mm[end:end + plen])
                            read += plen + PAGE_SPAN
                            continue
                    # read by the storage once the lock is let go
                    unusual.append(len(tids))
                    out.add(MISSING, _NOTHING, b"")
            finally:
                self._drop(read, mm)
        for k in unusual:
            one = _Columns()
            self._load(one, oids[k], before)
            statuses[k], tids[k], lengths[k], datas[k] = (
                one.lead[0], one.tids[0], one.lengths[0], one.data[0])
        return out.pack(status=True)


class PClassesZEOStorage(ZEOStorage):  # type: ignore[misc]
    """ZEO's handler of one client connection, answering the two requests
    of this module too."""

    def setup_delegation(self) -> None:
        super().setup_delegation()
        self.connection.methods = registered_methods | METHODS

    def get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super().get_info()
        reader = self.server.pclasses_reader(self.storage_id)
        info[INFO_KEY] = {"protocol": PROTOCOL, "current": reader.current_supported,
                          "load_many": True, "max_records": MAX_RECORDS,
                          "max_bytes": MAX_BYTES, "max_oids": MAX_OIDS}
        return info

    def pclasses_current(self, after: Any, max_records: Any,
                         max_bytes: Any) -> tuple[bytes, bytes | None]:
        """Current records after oid ``after`` (see the module's text)."""
        if after is not None:
            _check_oid(after, "after")
        max_records = _check_count(max_records, "max_records", MAX_RECORDS)
        max_bytes = _check_count(max_bytes, "max_bytes", MAX_BYTES)
        reader: _Reader = self.server.pclasses_reader(self.storage_id)
        if not reader.current_supported:
            raise ValueError("this storage cannot list its records in oid order")
        packed, last = reader.current(after, max_records, max_bytes)
        self.stats.loads += 1
        return packed, last

    def pclasses_load_many(self, oids: Any, before: Any = None) -> bytes:
        """Records of many oids at once (see the module's text)."""
        wanted = _oids(oids)
        if before is not None:
            _check_oid(before, "before")
        reader: _Reader = self.server.pclasses_reader(self.storage_id)
        packed = reader.load_many(wanted, before)
        self.stats.loads += len(wanted)
        return packed


class PClassesStorageServer(StorageServer):  # type: ignore[misc]
    """ZEO's storage server whose client handlers answer this module's
    requests; one reader (one map of each FileStorage) a storage."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._pclasses_readers: dict[str, _Reader] = {}
        super().__init__(*args, **kw)

    def create_client_handler(self) -> PClassesZEOStorage:
        return PClassesZEOStorage(self, self.read_only)

    def pclasses_reader(self, storage_id: str) -> _Reader:
        reader = self._pclasses_readers.get(storage_id)
        if reader is None:
            storage = self.storages[storage_id]
            # a FileStorage itself, never a wrapper that hands on its
            # attributes (zc.zlibstorage's, whose file holds other bytes)
            if isinstance(storage, FileStorage) and storage_kind(storage) == "filestorage":
                reader = _FileReader(storage)
            else:
                reader = _Reader(storage)
            self._pclasses_readers[storage_id] = reader
        return reader

    def close(self, join_timeout: float = 1) -> None:
        try:
            super().close(join_timeout)
        finally:
            for reader in self._pclasses_readers.values():
                if isinstance(reader, _FileReader):
                    reader.close()


def create_server(storages: dict[str, Any], options: Any) -> PClassesStorageServer:
    """``runzeo``'s server for ``options``, answering this module's requests."""
    return PClassesStorageServer(
        options.address,
        storages,
        read_only=options.read_only,
        client_conflict_resolution=options.client_conflict_resolution,
        msgpack=(options.msgpack if isinstance(options.msgpack, bool)
                 else os.environ.get("ZEO_MSGPACK")),
        invalidation_queue_size=options.invalidation_queue_size,
        invalidation_age=options.invalidation_age,
        transaction_timeout=options.transaction_timeout,
        ssl=options.ssl,
    )


class PClassesZEOServer(_RunZEOServer):  # type: ignore[misc]
    """``runzeo``'s server process, serving through :func:`create_server`."""

    def create_server(self) -> None:
        self.server = create_server(self.storages, self.options)


def main(args: list[str] | None = None) -> None:
    """``pclasses-zeo``: ``runzeo`` with this module's requests."""
    options = ZEOOptions()
    options.realize(args)
    PClassesZEOServer(options).main()


if __name__ == "__main__":
    main()
