"""ZEO: many requests in flight instead of one round trip per record.

A ZEO server answers one record per request (``record_iternext``,
``loadBefore``, the transaction iterator alike) and a request costs a round
trip: about 0.5 ms each on loopback, so a scan of 100,000 records took
minutes.  Here the requests of a batch are encoded and written at once (one
write on the client's I/O thread) before the first answer is read, and the
answers are put in place by the I/O thread as they arrive (a small slot per
request instead of a future and a coroutine step), so the main thread only
waits for whole batches, and two batches are in flight while it works:

* current records (:func:`iter_current`): ``record_iternext`` is asked
  for a run of consecutive oids at once.  A FileStorage server answers the
  record at or after each oid with the next oid it holds, so a gap in the
  oids only repeats an answer (dropped here) and a later run starts where
  the last answer points.  Runs grow while oids are dense and shrink where
  they are sparse, and never ask past the number of objects the server
  said it holds (``get_info``): a request past the last oid raises on the
  server, which logs a traceback for each.  Objects added meanwhile are
  followed one request at a time from the last answer.  An object whose
  record holds no data (deleted, or its creation undone) is skipped, as on
  the file.
* loads a walk is about to need (:class:`BatchLoader`): ``loadBefore`` at
  the connection's snapshot for the next oids of its queue, the next batch
  asked for while the walk works through half of the last one.

Answers are read as tuples or lists (a server running with ``msgpack``
answers lists).  A client whose protocol objects are not the ones this
module knows (another ZEO version) uses one ZEO call per request (the
fallback also taken by a server whose ``record_iternext`` does not hand out
oids, not a FileStorage behind it).

Nothing is put in the client's cache: the scan's answers bypass it, and
walks' loads too (``loadBefore`` sent as a plain request, not through
ZEO's cache-filling load).

A ``pclasses-zeo`` server (:mod:`pclasses.storages.zeoserver`) answers two
more requests with many records each (``pclasses_current``,
``pclasses_load_many``).  Whether a server does is asked once a
connection, from the keys of its ``get_info()`` (:func:`batched_info`: a
request a stock server does not know would make it drop the connection),
and then the scan, the walks' loader and the block reader use them, the
next answer asked for before the caller works through the last one; a
stock server gets the requests above, as before.
"""

from __future__ import annotations

import struct
import sys
import threading
import weakref
from array import array
from collections import deque
from collections.abc import Iterator
from itertools import accumulate, islice, pairwise
from typing import Any

from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

__all__ = ["iter_current", "BatchLoader", "BlockReader", "pipelined", "batched_info",
           "INFO_KEY", "PROTOCOL", "unpack_current", "unpack_loaded"]

#: Requests in one batch: the first run, and the bounds of runs.
FIRST_RUN = 256
MAX_RUN = 4096
MIN_RUN = 16
#: Batches of a scan in flight at once (the server answers one while the
#: caller works on the one before).
WINDOW = 2
#: Times a scan asks the server again for its object count when it has
#: answered as many (objects added while the scan runs).
REFRESHES = 8
#: Loads in flight for :class:`BatchLoader`.
LOAD_BATCH = 2_000
#: Loads :class:`BatchLoader` serves before it looks at the queue again
#: when it last found nothing new there.
QUIET_CALLS = 256

_PENDING: Any = object()
_frame = struct.Struct(">I").pack

# -- the batched requests of a ``pclasses-zeo`` server -----------------------

#: The ``get_info()`` key a ``pclasses-zeo`` server adds for each storage
#: (a dict: ``protocol``, whether ``current`` and ``load_many`` are
#: answered, and the caps of one answer).
INFO_KEY = "pclasses_batched"
#: The version of the batched requests' answers.
PROTOCOL = 1
#: Statuses of one oid in a ``pclasses_load_many`` answer: a record, no
#: such object (at that view), no data there (deleted).
LOADED, MISSING, NO_DATA = 0, 1, 2
#: Records and bytes asked for by one ``pclasses_current`` (the first
#: answer smaller, so the caller starts working sooner).
CURRENT_FIRST = 1_000
CURRENT_RECORDS = 5_000
CURRENT_BYTES = 4 << 20
#: Oids of one block of :class:`BlockReader` over a batched server.
BATCHED_BLOCK = 2_048

_COUNT = struct.Struct(">I")
_probed: weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, Any] | None]] = (
    weakref.WeakKeyDictionary())


def _lengths(packed: bytes, start: int, n: int) -> array[int]:
    lengths = array("I")
    if lengths.itemsize != 4:  # pragma: no cover - every platform pclasses runs on
        lengths = array("L")
    lengths.frombytes(packed[start:start + 4 * n])
    if sys.byteorder == "little":
        lengths.byteswap()
    return lengths


def _columns(packed: bytes, status: bool) -> tuple[int, int, list[int]]:
    """``(count, offset of the first oid or status, data ends)`` of an
    answer: ``count(4)``, then ``count`` oids (8 bytes) or statuses (1),
    ``count`` tids (8), ``count`` lengths (4, big-endian), the data."""
    if len(packed) < 4:
        raise ValueError("a truncated pclasses answer")
    (n,) = _COUNT.unpack_from(packed, 0)
    lead = n if status else 8 * n
    lengths_at = 4 + lead + 8 * n
    data_at = lengths_at + 4 * n
    if data_at > len(packed):
        raise ValueError("a truncated pclasses answer")
    ends = list(accumulate(_lengths(packed, lengths_at, n), initial=data_at))
    if ends[-1] != len(packed):
        raise ValueError("a truncated pclasses answer")
    return n, 4, ends


def unpack_current(packed: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    """The ``(oid, tid, data)`` records of a ``pclasses_current`` answer
    (``count(4)``, the oids, the tids, the lengths (4 bytes, big-endian),
    the data, each a run of its own)."""
    n, at, ends = _columns(packed, status=False)
    tids_at = at + 8 * n
    oids = [packed[k:k + 8] for k in range(at, tids_at, 8)]
    tids = [packed[k:k + 8] for k in range(tids_at, tids_at + 8 * n, 8)]
    return zip(oids, tids, [packed[i:j] for i, j in pairwise(ends)])


def unpack_loaded(packed: bytes) -> list[tuple[int, bytes, bytes]]:
    """The ``(status, tid, data)`` of each oid of a ``pclasses_load_many``
    answer (``count(4)``, the statuses (1 byte), the tids, the lengths,
    the data, each a run of its own)."""
    n, at, ends = _columns(packed, status=True)
    tids_at = at + n
    statuses = packed[at:tids_at]
    tids = [packed[k:k + 8] for k in range(tids_at, tids_at + 8 * n, 8)]
    return list(zip(statuses, tids, [packed[i:j] for i, j in pairwise(ends)]))


def batched_info(storage: Any) -> dict[str, Any] | None:
    """What the ``pclasses-zeo`` server behind the ZEO client ``storage``
    answers (its :data:`INFO_KEY` entry of ``get_info()``), or ``None``
    for a stock server (or one whose answers this module cannot read).

    Asked once a connection (a reconnection may reach another server):
    ``get_info`` is a request every ZEO server answers, whereas a request
    a stock server does not know makes it drop the connection."""
    generation = getattr(storage, "_connection_generation", None)
    try:
        known = _probed.get(storage)
    except TypeError:  # not weakly referable: asked each time
        known = None
    if known is not None and generation is not None and known[0] == generation:
        return known[1]
    try:
        info = storage._server.call("get_info")
    except Exception:
        return None
    entry = info.get(INFO_KEY) if isinstance(info, dict) else None
    found: dict[str, Any] | None = None
    if isinstance(entry, dict) and entry.get("protocol") == PROTOCOL:
        found = entry
    if generation is not None:
        try:
            _probed[storage] = (generation, found)
        except TypeError:
            pass
    return found


class _Request:
    """One request in flight: pipelined when the client allows it, else
    one ZEO call made when the answer is wanted."""

    __slots__ = ("batch", "storage", "method", "args")

    def __init__(self, storage: Any, method: str, args: tuple[Any, ...]) -> None:
        self.storage, self.method, self.args = storage, method, args
        self.batch = _start(storage, method, [args]) if _can_pipeline(storage) else None

    def result(self) -> Any:
        if self.batch is None:
            return self.storage._server.call(self.method, *self.args)
        (r,) = self.batch.result()
        if isinstance(r, BaseException):
            raise r
        return r


def _batched_current(storage: Any) -> Iterator[tuple[bytes, bytes, bytes]]:
    """Every current record, many an answer from a ``pclasses-zeo``
    server, the next answer asked for before these are handed out."""
    pending: _Request | None = _Request(storage, "pclasses_current",
                                        (None, CURRENT_FIRST, CURRENT_BYTES))
    while pending is not None:
        packed, last = pending.result()
        pending = (None if last is None else
                   _Request(storage, "pclasses_current", (last, CURRENT_RECORDS, CURRENT_BYTES)))
        yield from unpack_current(packed)



class _Batch:
    """The answers of one batch of requests, filled in by the I/O thread."""

    __slots__ = ("results", "left", "event", "runner")

    def __init__(self, n: int, runner: Any = None) -> None:
        self.results: list[Any] = [_PENDING] * n
        self.left = n
        self.event = threading.Event()
        self.runner = runner
        if not n:
            self.event.set()

    def put(self, index: int, value: Any) -> None:
        results = self.results
        if results[index] is _PENDING:
            results[index] = value
            self.left -= 1
            if not self.left:
                self.event.set()

    def fail(self, exc: BaseException) -> None:
        for i, r in enumerate(self.results):
            if r is _PENDING:
                self.put(i, exc)

    def result(self) -> list[Any]:
        while not self.event.wait(1.0):
            # A client closed meanwhile runs no more callbacks: its
            # requests are never sent, or never answered.
            runner = self.runner
            loop = getattr(runner, "loop", None)
            is_closed = getattr(runner, "is_closed", None)
            if (loop is not None and loop.is_closed()) or (callable(is_closed) and is_closed()):
                from ZEO.Exceptions import ClientDisconnected

                self.fail(ClientDisconnected("the ZEO client was closed"))
        return self.results


class _Slot:
    """Stands in the protocol's table of pending calls for one request:
    the protocol hands it the answer (``set_result``), the exception
    (``set_exception``), or, when the connection closes, asks ``done()``
    and sets ``ClientDisconnected``."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    def set_result(self, value: Any) -> None:
        self.batch.put(self.index, value)

    set_exception = set_result

    def done(self) -> bool:
        return self.batch.results[self.index] is not _PENDING

    def cancelled(self) -> bool:
        return False


def _send(client: Any, batch: _Batch, method: str, argss: list[tuple[Any, ...]]) -> None:
    """On the I/O thread: register a slot for each request and write them
    all (one write when nothing else waits to be written)."""
    try:
        from ZEO.Exceptions import ClientDisconnected

        protocol = client.protocol
        if protocol is None or protocol.closed:
            raise ClientDisconnected("closed")
        encode = protocol.encode
        futures = protocol.futures
        mid = protocol.message_id
        messages = []
        for i, args in enumerate(argss):
            mid += 1
            futures[mid] = _Slot(batch, i)
            messages.append(encode(mid, False, method, args))
        protocol.message_id = mid
        transport = getattr(getattr(protocol, "sm_protocol", None), "transport", None)
        if transport is not None and not transport.get_write_buffer_size():
            # Nothing queued (the sized-message layer is not paused, its
            # own queue empty): the frames go out in one write.
            out = []
            for m in messages:
                out.append(_frame(len(m)))
                out.append(m)
            transport.write(b"".join(out))
        else:
            for m in messages:
                protocol.write_message(m)
    except Exception as exc:  # the connection is gone: every request fails
        batch.fail(exc)


def _start(storage: Any, method: str, argss: list[tuple[Any, ...]]) -> _Batch:
    """Send ``method`` once per argument tuple, all at once; returns the
    batch whose :meth:`_Batch.result` waits for every answer."""
    runner = storage._server
    batch = _Batch(len(argss), runner)
    if argss:
        try:
            runner.loop.call_soon_threadsafe(_send, runner.client, batch, method, argss)
        except RuntimeError:  # the client's loop is closed
            from ZEO.Exceptions import ClientDisconnected

            batch.fail(ClientDisconnected("the ZEO client was closed"))
    return batch


def pipelined(storage: Any, method: str, argss: list[tuple[Any, ...]]) -> list[Any]:
    """Call ``method`` once per argument tuple, all requests in flight at
    once; one result (or the exception raised) per call, in order."""
    return _start(storage, method, argss).result()


def _can_pipeline(storage: Any) -> bool:
    runner = getattr(storage, "_server", None)
    client = getattr(runner, "client", None)
    protocol = getattr(client, "protocol", None)
    return (getattr(runner, "loop", None) is not None and protocol is not None
            and isinstance(getattr(protocol, "futures", None), dict)
            and isinstance(getattr(protocol, "message_id", None), int)
            and callable(getattr(protocol, "encode", None)))


def _past_the_end(exc: BaseException) -> bool:
    """Whether ``exc`` is the server's answer to a ``record_iternext`` past
    its last oid (a ``ValueError``, which reaches the client as a
    ``ServerException`` naming it)."""
    if isinstance(exc, ValueError):
        return True
    from ZEO.Exceptions import ServerException

    return (isinstance(exc, ServerException) and bool(exc.args)
            and str(exc.args[0]).endswith(".ValueError"))


def _object_count(storage: Any) -> int:
    """How many objects the server holds now (``len`` of a ClientStorage
    is as of its connection)."""
    is_closed = getattr(storage._server, "is_closed", None)
    if callable(is_closed) and is_closed():
        from ZEO.Exceptions import ClientDisconnected

        raise ClientDisconnected("the ZEO client was closed")
    try:
        return int(storage._server.call("get_info")["length"])
    except Exception:
        return len(storage)


def iter_current(storage: Any) -> Iterator[tuple[bytes, bytes, bytes]]:
    """``(oid, tid, data)`` of every current record, in oid order, each
    once; records without data (deleted objects) are skipped."""
    info = batched_info(storage)
    if info is not None and info.get("current"):
        yield from _batched_current(storage)
        return
    try:
        first = storage.record_iternext(None)
    except Exception as exc:
        if _past_the_end(exc):  # an empty storage
            return
        raise
    oid, tid, data, nxt = first
    if data is not None:
        yield oid, tid, data
    if nxt is None:
        return
    if not (isinstance(nxt, bytes) and len(nxt) == 8) or not _can_pipeline(storage):
        yield from _one_by_one(storage, nxt)
        return
    yield from _runs(storage, oid, u64(nxt))


def _one_by_one(storage: Any, nxt: bytes | None) -> Iterator[tuple[bytes, bytes, bytes]]:
    while nxt is not None:
        try:
            oid, tid, data, nxt = storage.record_iternext(nxt)
        except POSKeyError:  # ``nxt`` holds no data: go on after it
            nxt = p64(u64(nxt) + 1)
            continue
        except Exception as exc:
            if _past_the_end(exc):  # nothing after it (gone meanwhile)
                return
            raise
        if data is not None:
            yield oid, tid, data


def _runs(storage: Any, last: bytes, start: int) -> Iterator[tuple[bytes, bytes, bytes]]:
    """Every current record from oid ``start`` on (``last`` was yielded),
    by runs of ``record_iternext`` requests in flight."""
    total = _object_count(storage)
    seen = 1  # objects answered (``last``)
    in_flight: deque[tuple[_Batch, int, int]] = deque()  # (batch, first oid, size)
    asked = 0  # requests in flight
    nxt = start  # first oid not asked for yet
    run = FIRST_RUN
    following: bytes | None = p64(start)  # the next oid the server named
    ended = False
    refreshes = 0
    previous_answer: bytes | None = None  # the answer to the request before

    def fill() -> None:
        nonlocal nxt, asked
        while len(in_flight) < WINDOW:
            room = total - seen - asked
            if room <= 0:
                return
            n = min(run, room)
            in_flight.append((_start(storage, "record_iternext",
                                     [(p64(k),) for k in range(nxt, nxt + n)]), nxt, n))
            nxt += n
            asked += n

    fill()
    while True:
        if not in_flight:
            # Every object the server said it held has been answered: ask
            # it again (objects added meanwhile), a few times at most.
            if ended or following is None or refreshes == REFRESHES:
                return
            refreshes += 1
            nxt = max(nxt, u64(following))
            previous_answer = None
            total = _object_count(storage)
            fill()
            if not in_flight:
                return
        batch, first, n = in_flight.popleft()
        asked -= n
        results = batch.result()
        records: list[tuple[bytes, bytes, bytes]] = []
        fresh = 0
        if previous_answer is not None and previous_answer != p64(first - 1):
            previous_answer = None  # the runs jumped a gap
        for k, r in enumerate(results, first):
            if isinstance(r, BaseException):
                if isinstance(r, POSKeyError):
                    # The first object at or after ``k`` holds no data:
                    # skipped, and counted when it is surely a new one (the
                    # answer before was ``k - 1``); never counting one twice
                    # matters more than counting each (an object not counted
                    # costs one request past the last oid at the end, one
                    # counted twice would end the scan early).
                    if previous_answer == p64(k - 1):
                        fresh += 1
                    previous_answer = None
                    if following is not None and u64(following) <= k:
                        following = p64(k + 1)
                    continue
                if _past_the_end(r):
                    ended = True
                    break
                raise r
            oid, tid, data, following = r
            previous_answer = oid
            if oid <= last:
                continue  # a gap answered with a record already yielded
            last = oid
            fresh += 1
            if data is not None:
                records.append((oid, tid, data))
            if following is None:
                ended = True
                break
        seen += fresh
        if ended:
            in_flight.clear()  # past the end: nothing more to read there
            asked = 0
        else:
            if fresh * 2 >= n:
                run = min(run * 2, MAX_RUN)
            elif fresh * 8 < n:
                run = max(run // 2, MIN_RUN)
            if following is not None and u64(following) > nxt:
                nxt = u64(following)  # the requests in flight lie in a gap
            fill()
        yield from records


class BatchLoader:
    """``load(oid) -> (data, tid)`` at the snapshot of a connection's
    storage instance over ZEO, loading the oids :meth:`follow`'s queue is
    about to ask for with many requests in flight (the next batch asked
    for while the walk works through half of the last), or, from a
    ``pclasses-zeo`` server, with one ``pclasses_load_many`` a batch."""

    def __init__(self, instance: Any, client: Any) -> None:
        self._instance = instance
        self._client = client
        self._before = instance._start
        self._upcoming: Any = None
        self._got: dict[bytes, tuple[bytes, bytes]] = {}
        self._pending: tuple[Any, list[bytes]] | None = None
        self._asked: set[bytes] = set()
        self._quiet = 0  # calls before the queue is looked at again
        info = batched_info(client)
        self._batched = bool(info and info.get("load_many"))

    def follow(self, queue: Any) -> None:
        """Prefetch from ``queue`` (a deque of oids a walk pops from the left)."""
        self._upcoming = queue

    def _ask(self, first: bytes | None) -> None:
        wanted = [] if first is None else [first]
        got, asked = self._got, self._asked
        for o in islice(self._upcoming, 0, LOAD_BATCH):
            if o != first and o not in got and o not in asked:
                wanted.append(o)
        if not wanted:
            # everything ahead is loaded or asked for already: looking
            # again at every call would read the queue for nothing
            self._quiet = QUIET_CALLS
            return
        if wanted:
            asked.update(wanted)
            if self._batched:
                self._pending = (_Request(self._client, "pclasses_load_many",
                                          (b"".join(wanted), self._before)), wanted)
            else:
                self._pending = (_start(self._client, "loadBefore",
                                        [(o, self._before) for o in wanted]), wanted)

    def _collect(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        request, wanted = pending
        got = self._got
        self._asked.difference_update(wanted)
        if self._batched:
            # anything but a record (no such object, deleted) is left to
            # the instance's own load, which says so as it always does
            for o, (status, tid, data) in zip(wanted, unpack_loaded(request.result())):
                if status == LOADED:
                    got[o] = (data, tid)
            return
        for o, r in zip(wanted, request.result()):
            # a tuple, or a list from a msgpack server; None when the
            # object did not exist yet at the snapshot
            if isinstance(r, (tuple, list)) and r[0] is not None:
                got[o] = (r[0], r[1])

    def __call__(self, oid: bytes) -> tuple[bytes, bytes]:
        got = self._got.pop(oid, None)
        if got is None and self._pending is not None and oid in self._asked:
            self._collect()
            got = self._got.pop(oid, None)
        if got is None and self._upcoming is not None and len(self._upcoming) > 1:
            self._collect()
            self._ask(oid)
            self._collect()
            got = self._got.pop(oid, None)
        if self._quiet:
            self._quiet -= 1
        elif self._pending is None and self._upcoming and len(self._got) < LOAD_BATCH // 2:
            self._ask(None)  # the next ones, while the walk works on these
        if got is not None:
            return got
        return self._instance.load(oid)  # type: ignore[no-any-return]  # POSKeyError


_ABSENT: Any = object()


class BlockReader:
    """``load(oid: int) -> bytes | None`` for walks over a whole database
    over ZEO (``pclasses.tree``), whose order the walk alone knows: a miss
    loads the aligned block of :data:`BLOCK` oids around the oid with
    every request in flight (``loadBefore`` at the snapshot taken when the
    reader was made, so a missing oid is a quiet ``POSKeyError`` on the
    server), and the next :data:`AHEAD` blocks the walk's last stride points
    to are asked for while it works.  From a ``pclasses-zeo`` server a
    block is :data:`BATCHED_BLOCK` oids and one ``pclasses_load_many``,
    whose answer says which oids hold nothing.  A record is handed out once
    (a walk loads each record once) and then dropped, so what is kept is
    what the walk has not needed yet: at most :data:`KEPT` records, the
    oldest blocks dropped first.  An oid asked for again, or missing from a
    block it holds, is loaded alone."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._before = p64(u64(storage.lastTransaction()) + 1)
        self._blocks: dict[int, dict[int, bytes | None]] = {}
        self._pending: dict[int, Any] = {}
        self._last_block = -1
        self._kept = 0
        info = batched_info(storage)
        self._batched = bool(info and info.get("load_many"))
        self._block = BATCHED_BLOCK if self._batched else BLOCK

    def _ask(self, block: int) -> None:
        if block < 0 or block in self._blocks or block in self._pending:
            return
        while len(self._pending) >= 8:  # asked for, not needed yet: kept
            self._take(next(iter(self._pending)))
        size = self._block
        first = block * size
        before = self._before
        if self._batched:
            oids = array("Q", range(first, first + size))
            if sys.byteorder == "little":
                oids.byteswap()
            self._pending[block] = _Request(self._storage, "pclasses_load_many",
                                            (oids.tobytes(), before))
        else:
            self._pending[block] = _start(self._storage, "loadBefore",
                                          [(p64(k), before) for k in range(first, first + size)])

    def _take(self, block: int) -> dict[int, bytes | None]:
        self._ask(block)
        request = self._pending.pop(block)
        got: dict[int, bytes | None] = {}
        first = block * self._block
        if self._batched:
            for k, (status, _tid, data) in enumerate(unpack_loaded(request.result()), first):
                got[k] = data if status == LOADED else None
        else:
            for k, r in enumerate(request.result(), first):
                if isinstance(r, BaseException):
                    if not isinstance(r, POSKeyError):
                        raise r
                elif r is not None and r[0] is not None:  # (data, start, end), tuple or list
                    got[k] = r[0]
        blocks = self._blocks
        blocks[block] = got
        self._kept += len(got)
        while self._kept > KEPT and len(blocks) > 1:
            self._kept -= len(blocks.pop(next(iter(blocks))))
        return got

    def _alone(self, oid: int) -> bytes | None:
        (r,) = pipelined(self._storage, "loadBefore", [(p64(oid), self._before)])
        if isinstance(r, BaseException):
            if isinstance(r, POSKeyError):
                return None
            raise r
        return None if r is None else r[0]

    def load(self, oid: int) -> bytes | None:
        block = oid // self._block
        got = self._blocks.get(block)
        if got is None:
            got = self._take(block)
            # the next blocks the walk is likely to need: the same stride
            # again when it is short (walks of B-trees skip every other
            # block), else the neighbours in its direction
            stride = block - self._last_block
            if not 0 < abs(stride) <= 4:
                stride = 1 if stride > 0 else -1
            self._last_block = block
            for ahead in range(1, AHEAD + 1):
                self._ask(block + ahead * stride)
        data = got.pop(oid, _ABSENT)
        if data is _ABSENT:
            return self._alone(oid)
        self._kept -= 1
        if not got:
            del self._blocks[block]
        return data  # type: ignore[no-any-return]


#: Oids in one block of :class:`BlockReader`, blocks it asks for ahead of
#: the walk, and records it keeps at most.
BLOCK = 512
AHEAD = 2
KEPT = 131_072
