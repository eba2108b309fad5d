"""The first few referrers of every oid of a database, in arrays.

The broken inventory follows referrers from an object back to the root.
A dict of bytes oids costs about 150 bytes an object (1.5 GB at ten
million); :class:`Referrers` keeps, indexed by the (dense, see
:mod:`pclasses.oidset`) int oid:

* ``first[oid]``: the first referrer (4 bytes; 8 once an oid does not fit),
* ``slot[oid]``: for an object with more referrers, its block in ``more``
  (4 bytes), each block holding the next ``limit - 1`` referrers.

So 8 bytes an oid, plus 12 bytes for each object with more than one
referrer.  Oids at or above :data:`~pclasses.oidset.DENSE_LIMIT` (which no
storage that counts up reaches) are kept in a dict.

A scan split over several processes keeps a :class:`ReferrerLog` in each
worker instead (the pairs it found, in scan order, at most ``limit`` per
oid; a byte an oid plus 8 bytes a pair), which the first process replays
in order (the worker's parts follow its own): the result is the one a single scan gives.
"""

from __future__ import annotations

from array import array
from typing import Any

from .oidset import DENSE_LIMIT, NO_OID

__all__ = ["Referrers", "ReferrerLog", "REFERRERS"]

#: Referrers remembered per oid.
REFERRERS = 4

_EMPTY32 = 0xFFFFFFFF


def _grown(a: array[int], size: int, fill: int) -> None:
    """Extend ``a`` with ``fill`` to at least ``size`` items (by a quarter
    at least: a doubled array of ten million oids would hold 80 MB unused)."""
    if len(a) < size:
        a.extend(array(a.typecode, (fill,)) * (max(size, len(a) + len(a) // 4, 1 << 12)
                                               - len(a)))


class Referrers:
    """Up to ``limit`` distinct referrers of each oid, in the order added."""

    __slots__ = ("first", "slot", "more", "big", "limit", "empty")

    def __init__(self, limit: int = REFERRERS, size: int = 0) -> None:
        """``size``: one more than the largest oid expected, when known."""
        self.limit = max(limit, 1)
        self.empty = _EMPTY32
        size = min(max(size, 0), DENSE_LIMIT)
        self.first = array("I", (_EMPTY32,)) * size
        self.slot = array("I", (_EMPTY32,)) * size
        self.more = array("I")
        self.big: dict[int, list[int]] = {}

    def _widen(self) -> None:
        """Hold 8-byte referrers (an oid did not fit in 4 bytes)."""
        old = self.empty
        self.first = array("Q", (NO_OID if v == old else v for v in self.first))
        self.more = array("Q", (NO_OID if v == old else v for v in self.more))
        self.empty = NO_OID

    def add(self, child: int, parent: int) -> None:
        """Remember ``parent`` as a referrer of ``child`` (if not full)."""
        if child >= DENSE_LIMIT:
            known = self.big.setdefault(child, [])
            if parent not in known and len(known) < self.limit:
                known.append(parent)
            return
        empty = self.empty
        if parent >= empty:
            if parent == NO_OID:
                return
            self._widen()
            empty = self.empty
        first = self.first
        if child >= len(first):
            _grown(first, child + 1, empty)
            _grown(self.slot, len(first), _EMPTY32)
        f = first[child]
        if f == empty:
            first[child] = parent
            return
        if f == parent or self.limit == 1:
            return
        more = self.more
        width = self.limit - 1
        s = self.slot[child]
        if s == _EMPTY32:
            self.slot[child] = len(more) // width
            more.append(parent)
            if width > 1:
                more.extend(array(more.typecode, (empty,)) * (width - 1))
            return
        base = s * width
        for i in range(base, base + width):
            m = more[i]
            if m == parent:
                return
            if m == empty:
                more[i] = parent
                return

    def get(self, child: int) -> list[int]:
        """The referrers of ``child``, in the order they were added."""
        if child >= DENSE_LIMIT:
            return list(self.big.get(child, ()))
        first = self.first
        if child >= len(first) or first[child] == self.empty:
            return []
        found = [first[child]]
        s = self.slot[child]
        if s != _EMPTY32:
            width = self.limit - 1
            for m in self.more[s * width:(s + 1) * width]:
                if m == self.empty:
                    break
                found.append(m)
        return found

    def replay(self, log: ReferrerLog) -> None:
        """Add the pairs of ``log`` in the order they were found."""
        add = self.add
        for child, parent in zip(log.children, log.parents):
            add(child, parent)
        for child, parents in log.big.items():
            for parent in parents:
                add(child, parent)

    @property
    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.first, self.slot, self.more))


class ReferrerLog:
    """The pairs ``(child, parent)`` of one part of a scan, in scan order.

    At most ``limit`` per child; every record of a part is read once, so the
    parents of a child are distinct as long as each record adds a child once.
    """

    __slots__ = ("children", "parents", "counts", "big", "limit")

    def __init__(self, limit: int = REFERRERS, size: int = 0) -> None:
        self.limit = max(limit, 1)
        self.counts = bytearray(min(max(size, 0), DENSE_LIMIT))
        self.children = array("I")  # below DENSE_LIMIT: 4 bytes
        self.parents = array("I")  # 8 bytes once a parent does not fit
        self.big: dict[int, list[int]] = {}

    def add(self, child: int, parent: int) -> None:
        if child >= DENSE_LIMIT:
            known = self.big.setdefault(child, [])
            if parent not in known and len(known) < self.limit:
                known.append(parent)
            return
        counts = self.counts
        if child >= len(counts):
            counts.extend(bytes(max(child + 1, len(counts) + len(counts) // 4, 1 << 12)
                                - len(counts)))
        n = counts[child]
        if n < self.limit:
            counts[child] = n + 1
            self.children.append(child)
            if parent >= _EMPTY32 and self.parents.typecode == "I":
                self.parents = array("Q", self.parents)
            self.parents.append(parent)

    def __getstate__(self) -> tuple[Any, ...]:
        # The counts are only needed while adding.
        return (self.children, self.parents, self.big, self.limit)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.children, self.parents, self.big, self.limit = state
        self.counts = bytearray()
