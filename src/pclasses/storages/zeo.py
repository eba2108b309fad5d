"""ZEO: many requests in flight instead of one round trip per record.

A ZEO server answers one record per request (``record_iternext``,
``loadBefore``, the transaction iterator alike) and a request costs a round
trip: about 0.5 ms each on loopback, so a scan of 100,000 records took
minutes.  Here the requests of a batch are all written before the first
answer is read (one coroutine on the client's I/O thread), so the batch
costs one round trip plus the server's time per request:

* current records (:func:`iter_current`): ``record_iternext`` is asked
  for a run of consecutive oids at once.  A FileStorage server answers the
  record at or after each oid with the next oid it holds, so a gap in the
  oids only repeats an answer (dropped here) and the next run starts where
  the last answer points.  Runs grow while oids are dense and shrink where
  they are sparse.
* loads a walk is about to need (:class:`BatchLoader`): ``loadBefore`` at
  the connection's snapshot for the next oids of its queue.

A server whose ``record_iternext`` does not hand out oids (not a
FileStorage behind it) is read one record at a time, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from ZODB.utils import p64, u64

__all__ = ["iter_current", "BatchLoader", "pipelined"]

#: Requests in flight in one batch: the first run, and the bounds of runs.
FIRST_RUN = 256
MAX_RUN = 8192
MIN_RUN = 16
#: Loads in flight for :class:`BatchLoader`.
LOAD_BATCH = 2_000


def pipelined(storage: Any, method: str, argss: list[tuple[Any, ...]]) -> list[Any]:
    """Call ``method`` once per argument tuple, all requests in flight at
    once; one result (or the exception raised) per call, in order."""
    return start_pipelined(storage, method, argss).result()  # type: ignore[no-any-return]


def start_pipelined(storage: Any, method: str, argss: list[tuple[Any, ...]]) -> Any:
    """:func:`pipelined` without waiting: a future of its list of results
    (the caller works on the last batch while the server answers this one)."""
    runner = storage._server
    client = runner.client

    async def batch() -> list[Any]:
        protocol = client.protocol
        futures = [protocol.call_sync(method, args) for args in argss]
        out: list[Any] = []
        for f in futures:
            try:
                out.append(await f)
            except Exception as exc:  # returned to the caller, per request
                out.append(exc)
        return out

    return runner.io_call(batch(), wait=False)


def _can_pipeline(storage: Any) -> bool:
    runner = getattr(storage, "_server", None)
    client = getattr(runner, "client", None)
    return (callable(getattr(runner, "io_call", None))
            and getattr(client, "protocol", None) is not None)


def iter_current(storage: Any) -> Iterator[tuple[bytes, bytes, bytes]]:
    """``(oid, tid, data)`` of every current record, in oid order."""
    try:
        oid, tid, data, nxt = storage.record_iternext(None)
    except ValueError:  # an empty storage
        return
    if data is not None:
        yield oid, tid, data
    if nxt is None:
        return
    if not (isinstance(nxt, bytes) and len(nxt) == 8) or not _can_pipeline(storage):
        while nxt is not None:
            oid, tid, data, nxt = storage.record_iternext(nxt)
            if data is not None:
                yield oid, tid, data
        return
    last = oid
    start = u64(nxt)
    run = FIRST_RUN
    future = _run_from(storage, start, run)
    while future is not None:
        results = future.result()
        # Records of this run: the next run is asked for before they are
        # handed on, so the server works while the caller does.
        records: list[tuple[bytes, bytes, bytes]] = []
        following = None
        fresh = 0
        ended = False
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, ValueError):  # past the last oid
                    ended = True
                    break
                raise r
            oid, tid, data, following = r
            if oid <= last:
                continue  # a gap answered with a record already yielded
            last = oid
            fresh += 1
            if data is not None:
                records.append((oid, tid, data))
            if following is None:
                ended = True
                break
        future = None
        if not ended and following is not None:
            if fresh * 2 >= run:
                run = min(run * 2, MAX_RUN)
            elif fresh * 8 < run:
                run = max(run // 2, MIN_RUN)
            future = _run_from(storage, u64(following), run)
        yield from records


def _run_from(storage: Any, start: int, run: int) -> Any:
    return start_pipelined(storage, "record_iternext",
                           [(p64(k),) for k in range(start, start + run)])


class BatchLoader:
    """``load(oid) -> (data, tid)`` at the snapshot of a connection's
    storage instance over ZEO, loading the oids :meth:`follow`'s queue is
    about to ask for with many requests in flight."""

    def __init__(self, instance: Any, client: Any) -> None:
        self._instance = instance
        self._client = client
        self._before = instance._start
        self._upcoming: Any = None
        self._got: dict[bytes, tuple[bytes, bytes]] = {}

    def follow(self, queue: Any) -> None:
        """Prefetch from ``queue`` (a deque of oids a walk pops from the left)."""
        self._upcoming = queue

    def __call__(self, oid: bytes) -> tuple[bytes, bytes]:
        got = self._got.pop(oid, None)
        if got is not None:
            return got
        if self._upcoming is not None and len(self._upcoming) > 1:
            wanted = [oid]
            wanted.extend(o for o in islice(self._upcoming, 0, LOAD_BATCH)
                          if o != oid and o not in self._got)
            results = pipelined(self._client, "loadBefore",
                                [(o, self._before) for o in wanted])
            for o, r in zip(wanted, results):
                if isinstance(r, tuple) and r[0] is not None:
                    self._got[o] = (r[0], r[1])
            got = self._got.pop(oid, None)
            if got is not None:
                return got
        return self._instance.load(oid)  # type: ignore[no-any-return]  # POSKeyError
