"""Bounds on the work one record may ask for, kept as one frozen value.

The record analyzer (:func:`pclasses.record.analyze.analyze`, C and Python
twin alike) enforces them while it walks the opcodes, before any unpickler
sees the bytes; a record beyond them is refused with a :class:`ValueError`
(:class:`~pclasses.errors.RecordDecodeError` from the reader and
:func:`~pclasses.record.edges.edges`).  Every check costs constant time per
opcode, so refusing is linear in the record's size.

The defaults let through everything ZODB writes for real applications
(BTree buckets, PersistentMappings of hundreds of thousands of keys, the
nesting ZODB's own pickler can produce under Python's default recursion
limit) and stop the two attacks that cost more than linear time:

* nesting deep enough that hashing a tuple key recurses in C past the
  stack (a segmentation fault), and
* dict keys or set elements crafted to share one hash (insertion becomes
  quadratic); see ``design/decisions.md`` for how hashes are modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "DEFAULT_LIMITS"]


@dataclass(frozen=True)
class Limits:
    """How much one record may ask of the reader."""

    #: containers and calls nested inside each other (a tuple in a tuple,
    #: an object's state dict, ...); ZODB's pickler cannot write deeper
    #: records under Python's default recursion limit
    max_depth: int = 1000
    #: items one container receives (list/tuple items, dict pairs, set
    #: elements), over every opcode that adds to it
    max_items: int = 5_000_000
    #: the largest memo index a record may store (also never more than the
    #: record's length, which the analyzer always checks)
    max_memo: int = 1 << 24
    #: dict keys / set elements of one container that share one hash (the
    #: hash the unpickler will compute, modelled exactly for numbers and
    #: conservatively for tuples and frozensets)
    max_collisions: int = 64

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_items", "max_memo", "max_collisions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not (
                    1 <= value <= 2**62):
                raise ValueError(f"Limits.{name} must be an int from 1 to 2**62, "
                                 f"not {value!r}")

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(max_depth, max_items, max_memo, max_collisions)`` (the C form)."""
        return (self.max_depth, self.max_items, self.max_memo, self.max_collisions)


#: The limits every reader uses unless told otherwise.
DEFAULT_LIMITS = Limits()
