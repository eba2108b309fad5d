"""A compact set of oids for walks over whole databases.

Oids are 8-byte big-endian numbers that storages hand out counting up from
0, so a database's oids are dense: the set is a ``bytearray`` with one byte
per oid up to the largest one seen (a million objects: one megabyte), plus a
plain set of ints for oids too large for that (an oid above
:data:`DENSE_LIMIT`, which no storage that counts up reaches).  The walks
use :attr:`OidSet.bits` directly; everyone else sees a set of bytes oids.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["DENSE_LIMIT", "OidSet", "NO_OID"]

#: Oids below this are kept one byte each; larger ones in a set of ints.
DENSE_LIMIT = 1 << 27
#: An int that is no oid a storage hands out (stands for "no source").
NO_OID = (1 << 64) - 1


class OidSet:
    """Oids as a byte map (``bits[oid] == 1``) plus a set of large ints."""

    __slots__ = ("bits", "big", "count")

    def __init__(self, size: int = 0) -> None:
        self.bits = bytearray(min(max(size, 0), DENSE_LIMIT))
        self.big: set[int] = set()
        self.count = 0

    def add_new(self, oid: int) -> bool:
        """Add ``oid`` (an int); False when it was there already."""
        bits = self.bits
        if oid < len(bits):
            if bits[oid]:
                return False
            bits[oid] = 1
        elif oid < DENSE_LIMIT:
            bits.extend(bytes(max(oid + 1, 2 * len(bits), 1 << 16) - len(bits)))
            bits[oid] = 1
        else:
            if oid in self.big:
                return False
            self.big.add(oid)
        self.count += 1
        return True

    def discard(self, oid: int) -> None:
        bits = self.bits
        if oid < len(bits):
            if bits[oid]:
                bits[oid] = 0
                self.count -= 1
        elif oid in self.big:
            self.big.discard(oid)
            self.count -= 1

    def has(self, oid: int) -> bool:
        bits = self.bits
        if oid < len(bits):
            return bool(bits[oid])
        return oid in self.big

    def __contains__(self, oid: object) -> bool:
        if isinstance(oid, bytes):
            return self.has(int.from_bytes(oid, "big"))
        if isinstance(oid, int):
            return self.has(oid)
        return False

    def __len__(self) -> int:
        return self.count

    def ints(self) -> Iterator[int]:
        bits = self.bits
        i = bits.find(1)
        while i >= 0:
            yield i
            i = bits.find(1, i + 1)
        yield from sorted(self.big)

    def __iter__(self) -> Iterator[bytes]:
        for i in self.ints():
            yield i.to_bytes(8, "big")

    @property
    def nbytes(self) -> int:
        """Bytes the set holds (the byte map; large oids not counted)."""
        return len(self.bits)
