"""A compact set of oids for walks over whole databases.

Oids are 8-byte big-endian numbers that storages hand out counting up from
0, so a database's oids are dense: the set is a ``bytearray`` with one byte
per oid up to the largest one seen (a million objects: one megabyte), plus a
plain set of ints for oids too large for that (an oid above
:data:`DENSE_LIMIT`, which no storage that counts up reaches).  The walks
use :attr:`OidSet.bits` directly; everyone else sees a set of bytes oids.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["DENSE_LIMIT", "OidSet", "OidQueue", "OidRanks", "OidRuns", "NO_OID"]

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


class OidQueue:
    """A first-in first-out queue of oids for breadth-first walks, held as
    8-byte ints in chunks of ``array('Q')`` (8 bytes an oid, however long the
    queue grows).  :meth:`append` and :meth:`popleft` take and give ints;
    iterating gives the waiting oids, oldest first, as 8-byte oids (what a
    batch loader's ``follow`` looks ahead at)."""

    __slots__ = ("chunks", "head", "size")

    #: oids a chunk holds
    CHUNK = 1 << 14

    def __init__(self) -> None:
        self.chunks: list[array[int]] = []
        self.head = 0  # the next oid's position in chunks[0]
        self.size = 0

    def append(self, oid: int) -> None:
        chunks = self.chunks
        if not chunks or len(chunks[-1]) >= self.CHUNK:
            chunks.append(array("Q"))
        chunks[-1].append(oid)
        self.size += 1

    def popleft(self) -> int:
        """The oldest oid (IndexError when empty)."""
        if not self.size:
            raise IndexError("pop from an empty OidQueue")
        first = self.chunks[0]
        oid = first[self.head]
        self.head += 1
        self.size -= 1
        if self.head >= len(first):
            del self.chunks[0]
            self.head = 0
        return oid

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def peek(self, start: int, stop: int) -> list[int]:
        """The ints of the waiting oids at positions ``start`` to ``stop``
        (excluded; 0 is the oldest), without taking them (array slices: a
        batch loader's look-ahead)."""
        out: list[int] = []
        want = stop - start
        pos = self.head + max(start, 0)
        for chunk in self.chunks:
            if len(out) >= want:
                break
            if pos >= len(chunk):
                pos -= len(chunk)
                continue
            out.extend(chunk[pos:pos + want - len(out)])
            pos = 0
        return out

    def __iter__(self) -> Iterator[bytes]:
        head = self.head
        for chunk in list(self.chunks):
            for i in range(head, len(chunk)):
                yield chunk[i].to_bytes(8, "big")
            head = 0


class OidRanks:
    """The rank of each oid of a (no longer changing) :class:`OidSet`: its
    position in the set's sorted order, 0 to ``len(oids) - 1``.

    A dense map of positions for oids that need not be dense: a running
    count of the byte map's ones at every :data:`BLOCK` bytes (8 bytes a
    block), the rest counted in the block (a C ``count``); large oids come
    after, by bisection of their sorted list.  With it, a value per oid of
    the set is an ``array`` indexed by rank (8 bytes an oid for 8-byte
    values), not a dict of objects."""

    __slots__ = ("bits", "blocks", "big", "dense")

    BLOCK = 512  # (find() shifts by 9)

    def __init__(self, oids: OidSet) -> None:
        self.bits = bits = oids.bits
        block = self.BLOCK
        blocks = array("Q", [0])
        total = 0
        count = bits.count
        for start in range(0, len(bits), block):
            total += count(1, start, start + block)
            blocks.append(total)
        self.blocks = blocks
        self.dense = total
        self.big = sorted(oids.big)

    def find(self, oid: int) -> int:
        """The rank of ``oid``, or -1 when it is not in the set."""
        bits = self.bits
        if oid < len(bits):
            if not bits[oid]:
                return -1
            b = oid >> 9  # (BLOCK is 512)
            return self.blocks[b] + bits.count(1, b << 9, oid)
        from bisect import bisect_left

        i = bisect_left(self.big, oid)
        if i < len(self.big) and self.big[i] == oid:
            return self.dense + i
        return -1

    def rank(self, oid: int) -> int:
        """The rank of ``oid``, which must be in the set."""
        bits = self.bits
        if oid < len(bits):
            b = oid // self.BLOCK
            return self.blocks[b] + bits.count(1, b * self.BLOCK, oid)
        from bisect import bisect_left

        return self.dense + bisect_left(self.big, oid)


class OidRuns:
    """A sorted sequence of distinct oids (ints) held as runs of consecutive
    values: 16 bytes a run, whatever its length.

    The oids a storage hands out one after another (``new_oid``) are
    consecutive unless another writer takes some meanwhile, so the new oids
    of an import of ten million records are a handful of runs, not an
    array of 80 MB.  Reads like a sorted sequence: ``runs[r]`` is the r-th
    oid, :meth:`find` the position of an oid.  Oids are appended in
    increasing order."""

    __slots__ = ("starts", "firsts", "size", "last")

    def __init__(self, oids: Iterable[int] = ()) -> None:
        self.starts = array("Q")  # the first oid of each run
        self.firsts = array("Q")  # the position of that oid in the sequence
        self.size = 0
        self.last = -1
        for oid in oids:
            self.append(oid)

    def append(self, oid: int) -> None:
        """Add ``oid``, larger than every oid held (ValueError otherwise)."""
        if oid <= self.last:
            raise ValueError("OidRuns takes oids in increasing order")
        if oid != self.last + 1 or not self.size:
            self.starts.append(oid)
            self.firsts.append(self.size)
        self.size += 1
        self.last = oid

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, r: int) -> int:
        if r < 0:
            r += self.size
        if not 0 <= r < self.size:
            raise IndexError("OidRuns index out of range")
        i = bisect_right(self.firsts, r) - 1
        return self.starts[i] + r - self.firsts[i]

    def find(self, oid: int) -> int:
        """The position of ``oid``, or -1 when it is not held."""
        i = bisect_right(self.starts, oid) - 1
        if i < 0:
            return -1
        r = self.firsts[i] + oid - self.starts[i]
        end = self.firsts[i + 1] if i + 1 < len(self.firsts) else self.size
        return r if r < end else -1

    def __iter__(self) -> Iterator[int]:
        starts, firsts, size = self.starts, self.firsts, self.size
        for i, start in enumerate(starts):
            end = firsts[i + 1] if i + 1 < len(firsts) else size
            yield from range(start, start + end - firsts[i])

    @property
    def runs(self) -> int:
        return len(self.starts)
