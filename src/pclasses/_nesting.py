"""A cheap upper bound on how deep a record's values can nest.

Hashing a tuple nested deeper than the C stack allows (a dict key of a
hostile record) crashes the interpreter inside the unpickler, before any
Python-level guard runs.  Until the reader refuses such records itself (the
limits of the record engine), callers that unpickle a record with the safe
reader first check this bound and refuse records above :data:`MAX_NESTING`.
Each level of nesting needs one container-building opcode byte, so counting
those bytes (opcodes or not) bounds the depth from above in a few
microseconds per megabyte.
"""

from __future__ import annotations

__all__ = ["MAX_NESTING", "nesting_bound", "may_nest_too_deep"]

#: Deeper than ZODB's own pickler writes under Python's recursion limit, far
#: below what overflows the C stack when hashed.
MAX_NESTING = 20_000

_CONTAINER_OPS = tuple(bytes([op]) for op in b"()]}ltd\x85\x86\x87\x8f\x91")


def nesting_bound(data: bytes) -> int:
    """An upper bound of how deep the values of ``data`` can nest."""
    return sum(data.count(op) for op in _CONTAINER_OPS)


def may_nest_too_deep(data: bytes) -> bool:
    """Whether ``data`` might nest deeper than :data:`MAX_NESTING`."""
    return len(data) > MAX_NESTING and nesting_bound(data) > MAX_NESTING
