"""Reading current records by int oid, for walks over whole databases.

:func:`loader_for` gives a :class:`Loader` of a storage: ``load(oid)`` is the
current record's bytes or ``None`` when there is none.  A FileStorage is read
straight from its file (a memory map) at the positions its index gives,
copied once into an array indexed by oid; anything unusual (a backpointer, a
deletion, a record written after the map was made) goes through the
storage.  ZEO is read by blocks of oids with many requests in flight
(:class:`pclasses.storages.zeo.BlockReader`), RelStorage on PostgreSQL by
blocks of oids in one query each
(:class:`pclasses.storages.relstorage.BlockReader`); other storages are
read through ``load``.
"""

from __future__ import annotations

import mmap
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import Any

from ZODB.POSException import POSKeyError

from ..mapped import DROP_BYTES, PAGE_SPAN, drop_pages
from ..oidset import DENSE_LIMIT, OidSet

__all__ = ["Loader", "loader_for"]


# oid tid prev tloc vlen plen
_HEADER = struct.Struct(">8s8sQQHQ")
_SWAP = sys.byteorder == "little"


class Loader:
    """``load(oid: int) -> bytes | None`` through the storage API."""

    #: one more than the largest oid, when known (sizes the oid sets)
    size = 0

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def load(self, oid: int) -> bytes | None:
        try:
            data, _tid = self.storage.load(oid.to_bytes(8, "big"))
        except POSKeyError:
            return None
        return data  # type: ignore[no-any-return]

    def oids(self) -> Iterator[int]:
        """Every oid with a current record (FileStorage: from the index)."""
        from ..scan import iter_records

        for oid, _data in iter_records(self.storage):
            yield int.from_bytes(oid, "big")

    def unreached(self, reached: OidSet) -> Iterator[int]:
        """Every oid with a current record that is not in ``reached``."""
        has = reached.has
        for oid in self.oids():
            if not has(oid) and self.load(oid) is not None:
                yield oid

    def close(self) -> None:
        pass


class _FileLoader(Loader):
    def __init__(self, storage: Any, positions: array[int], mm: mmap.mmap, f: Any) -> None:
        super().__init__(storage)
        self.positions = positions
        self.size = len(positions)
        self._mm = mm
        self._file = f
        unpack, hsize = _HEADER.unpack_from, _HEADER.size
        end = len(mm)
        slow = super().load
        frombytes = int.from_bytes
        read = [0]

        def load(oid: int) -> bytes | None:
            try:
                pos = positions[oid]
            except IndexError:
                return slow(oid)
            if not pos or pos + hsize > end:
                return slow(oid)
            hoid, _tid, _prev, _tloc, vlen, plen = unpack(mm, pos)
            start = pos + hsize
            if vlen or not plen or start + plen > end or frombytes(hoid, "big") != oid:
                return slow(oid)  # backpointer, deletion, or written since
            read[0] += plen + PAGE_SPAN
            if read[0] > DROP_BYTES:  # the map's pages count as resident memory
                read[0] = 0
                drop_pages(mm)
            return mm[start:start + plen]

        self.load = load  # type: ignore[method-assign]

    def oids(self) -> Iterator[int]:
        positions = self.positions
        for oid in range(len(positions)):
            if positions[oid]:
                yield oid

    def unreached(self, reached: OidSet) -> Iterator[int]:
        bits, positions, load = reached.bits, self.positions, self.load
        n = len(positions)
        if len(bits) < n:
            yield from super().unreached(reached)
            return
        oid = bits.find(0)
        while 0 <= oid < n:  # the byte map is at least as long as the index
            if positions[oid] and load(oid) is not None:
                yield oid
            oid = bits.find(0, oid + 1)

    def close(self) -> None:
        self.__dict__.pop("load", None)  # the reading closure refers back to self
        self.positions = array("q")
        self._mm.close()
        self._file.close()


def _positions(index: Any) -> array[int] | None:
    """The index as an array: ``positions[oid] == file position`` (0: none).

    Each of the index's buckets (2-byte oid suffixes, 6-byte positions) is
    copied with slice operations from its ``toString()`` bytes."""
    data = getattr(index, "_data", None)
    if data is None or not len(index):
        return None
    top = int.from_bytes(index.maxKey(), "big")
    if top >= DENSE_LIMIT:
        return None
    positions = array("q", (0,)) * (top + 1)
    for prefix, bucket in data.items():
        raw = bucket.toString()
        n = len(raw) // 8
        if not n:
            continue
        keys, values = raw[:2 * n], raw[2 * n:]
        wide = bytearray(8 * n)
        for j in range(6):
            wide[2 + j::8] = values[j::6]
        column = array("q", bytes(wide))
        if _SWAP:
            column.byteswap()
        base = int.from_bytes(prefix, "big") << 16
        first = base + int.from_bytes(keys[:2], "big")
        last = base + int.from_bytes(keys[-2:], "big")
        if last - first == n - 1:  # keys are sorted: contiguous
            positions[first:last + 1] = column
        else:
            for k in range(n):
                positions[base + int.from_bytes(keys[2 * k:2 * k + 2], "big")] = column[k]
    return positions


class _BlockLoader(Loader):
    """On RelStorage over PostgreSQL: blocks of oids read in one query each
    (:class:`pclasses.storages.relstorage.BlockReader`)."""

    def __init__(self, storage: Any, reader: Any) -> None:
        super().__init__(storage)
        self._reader = reader
        self.load = reader.load  # type: ignore[method-assign]

    def close(self) -> None:
        self._reader.close()


class _ReadAheadLoader(Loader):
    """Over ZEO: blocks of oids read with many requests in flight
    (:class:`pclasses.storages.zeo.BlockReader`)."""

    def __init__(self, storage: Any, reader: Any) -> None:
        super().__init__(storage)
        self.load = reader.load  # type: ignore[method-assign]


def loader_for(storage: Any) -> Loader:
    """The fastest :class:`Loader` for ``storage``."""
    from ..storages import storage_kind

    kind = storage_kind(storage)
    if kind == "zeo":
        from ..storages.zeo import BlockReader, _can_pipeline

        if _can_pipeline(storage):
            return _ReadAheadLoader(storage, BlockReader(storage))
    if kind == "relstorage":
        from ..storages import relstorage

        if relstorage.can_read_blocks(storage):
            return _BlockLoader(storage, relstorage.BlockReader(storage))
        return Loader(storage)
    name = getattr(storage, "_file_name", None)
    index = getattr(storage, "_index", None)
    if name is None or index is None:
        return Loader(storage)
    positions = _positions(index)
    if positions is None:
        return Loader(storage)
    f = open(name, "rb")  # noqa: SIM115 - closed by close()
    try:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (ValueError, OSError):  # an empty file
        f.close()
        return Loader(storage)
    return _FileLoader(storage, positions, mm, f)
