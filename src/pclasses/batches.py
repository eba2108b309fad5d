"""What every command that writes in batches beside a live site shares.

``repair``, ``import`` and ``gc --apply`` store their work in batches of
their own transactions, between the application's commits.  A batch that
conflicts with the application is read again and retried
:data:`CONFLICT_RETRIES` times (then cut in halves, or reported); a batch
too large for PostgreSQL's lock table is cut in halves
(:func:`lock_table_full`); whatever else stops a batch is reported as one
line (:func:`one_line`).
"""

from __future__ import annotations

__all__ = ["CONFLICT_RETRIES", "lock_table_full", "one_line"]

#: How often a batch that conflicts with a writing application is re-read
#: and stored again before it is cut in halves (a record alone that keeps
#: conflicting is reported as not written).
CONFLICT_RETRIES = 3


def lock_table_full(exc: BaseException) -> bool:
    """PostgreSQL ran out of lock slots (RelStorage takes one advisory lock
    an object it changes; the lock table holds ``max_locks_per_transaction``
    times the connections)."""
    text = str(exc)
    return "out of shared memory" in text or "max_locks_per_transaction" in text


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: its type and the first line of its message
    (a driver's error can run to pages)."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
