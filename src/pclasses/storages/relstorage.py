"""RelStorage: opening it as asked, and reading its current records in bulk.

Opening
-------

RelStorage creates its schema whenever it is opened with ``create-schema``
true, its default, even read-only; a URI (``postgres://...``) cannot even
say ``create-schema false``.  :func:`open_relstorage` builds the adapter
from the target's own options, looks at the tables the database holds
(``pg_tables``: any role can read it) and then:

* a database without RelStorage's tables is an error when opened read-only
  ("empty"); a writing command may let RelStorage create them;
* the history mode is the database's: a read-only opening whose options
  disagree (a URI without ``keep_history=false`` on a history-free
  database) reads the database in its own mode; a writing one is refused
  in one line naming the option to fix;
* read-only openings never create anything (``create_schema`` false, no
  store connections), so a role with only ``SELECT`` on the tables can
  inspect, count and export.

Reading
-------

* :func:`iter_current` streams ``(oid, tid, state)`` of every current
  object from one server-side cursor of its own connection (a REPEATABLE
  READ snapshot), in large batches: nothing is loaded twice, nothing is
  collected first, and stores made meanwhile (repair) do not move it.
* :class:`BatchLoader` loads the objects a walk is about to need (an
  export's queue) in one query per batch, at the snapshot of the
  connection it serves.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from typing import Any

from ZODB.utils import p64, u64

from ..errors import StorageOpenError

__all__ = ["open_relstorage", "open_uri", "patch_zconfig_factory", "iter_current",
           "BatchLoader", "BlockReader", "history_kept", "is_relstorage_uri_resolver", "blob_oids",
           "prefer_index_lookups", "skip_local_cache"]

#: Rows a server-side cursor fetches per round trip.
FETCH_ROWS = 10_000
#: Objects loaded per query by :class:`BatchLoader`.
LOAD_BATCH = 2_000


def _tables(adapter: Any) -> set[str]:
    def probe(_conn: Any, cursor: Any) -> set[str]:
        return {str(t).lower() for t in adapter.schema.list_tables(cursor)}

    return adapter.connmanager.open_and_call(probe)  # type: ignore[no-any-return]


def open_relstorage(make_adapter: Callable[[Any], Any], options: Any, *, read_only: bool,
                    target: str, name: str | None = None) -> Any:
    """A RelStorage for ``options`` (RelStorage's ``Options``), opened as above."""
    from relstorage.storage import RelStorage

    if read_only:
        options = options.copy(read_only=True, create_schema=False)
    adapter = make_adapter(options)
    tables = _tables(adapter)
    if "object_state" not in tables:
        if options.read_only:
            raise StorageOpenError(target, "the database is empty (it has no RelStorage "
                                           "tables) and was opened read-only")
        if not options.create_schema:
            raise StorageOpenError(target, "the database has no RelStorage tables and "
                                           "create-schema is false")
    else:
        kept = "current_object" in tables
        if kept != bool(options.keep_history):
            if options.read_only:
                options = options.copy(keep_history=kept)
                adapter = make_adapter(options)
            else:
                mode = "keeps history" if kept else "is history-free"
                raise StorageOpenError(
                    target, f"the database {mode} but the target says keep-history "
                            f"{str(not kept).lower()}: give keep_history="
                            f"{str(kept).lower()} in the URI (keep-history "
                            f"{str(kept).lower()} in a ZConfig section)")
    create = None if not options.read_only else False
    return RelStorage(adapter, name=name, options=options, create=create)


def is_relstorage_uri_resolver(resolver: Any) -> bool:
    if not type(resolver).__module__.startswith("relstorage"):
        return False  # (without importing RelStorage for other schemes)
    try:
        from relstorage.zodburi_resolver import RelStorageURIResolver
    except ImportError:
        return False
    return isinstance(resolver, RelStorageURIResolver)


def open_uri(uri: str, resolver: Any, *, read_only: bool) -> tuple[Any, dict[str, Any]]:
    """``(storage, db keyword arguments)`` for RelStorage's own URI forms
    (``postgres://``, ``mysql://``, ``sqlite://``...), as RelStorage's
    resolver reads them, opened by :func:`open_relstorage`."""
    from urllib.parse import parse_qsl, urlsplit

    from relstorage.options import Options

    text = uri
    for scheme in ("postgres", "mysql", "oracle", "sqlite"):
        text = text.replace(f"{scheme}://", "http://", 1)
    parsed = urlsplit(text)
    kw = dict(parse_qsl(parsed.query))
    adapter_factory, kw = resolver.adapter_helper(parsed, kw)
    kw, unused = resolver.interpret_kwargs(kw)
    if kw.pop("demostorage", False):
        raise StorageOpenError(uri, "demostorage=true is not supported here")
    options = Options(**kw)
    storage = open_relstorage(adapter_factory, options, read_only=read_only, target=uri)
    return storage, unused


def patch_zconfig_factory(factory: Any, *, read_only: bool, target: str) -> bool:
    """Make a ZConfig ``<relstorage>`` section open through
    :func:`open_relstorage`; ``False`` when ``factory`` is not one."""
    try:
        from relstorage.config import RelStorageFactory
    except ImportError:
        return False
    if not isinstance(factory, RelStorageFactory):
        return False
    from relstorage.options import Options

    config = factory.config

    def open_() -> Any:
        config.driver = config.adapter.config.driver
        options = Options.copy_valid_options(config)
        options.adapter = config.adapter
        return open_relstorage(config.adapter.create, options, read_only=read_only,
                               target=target, name=config.name)

    factory.open = open_
    return True


def history_kept(storage: Any) -> bool:
    return bool(storage._options.keep_history)


def _binary_copy(adapter: Any, cursor: Any) -> bool:
    """Whether rows can be read as binary ``COPY`` (PostgreSQL through
    psycopg2: its ``COPY ... TO STDOUT`` runs in the connection's own
    transaction, releases the GIL while it waits, and brings ``bytea``
    without hex-encoding it)."""
    driver = getattr(adapter, "driver", None)
    return (type(adapter).__module__.startswith("relstorage.adapters.postgresql")
            and getattr(driver, "__name__", None) == "psycopg2"
            and hasattr(cursor, "copy_expert") and hasattr(cursor, "mogrify"))


_COPY_HEAD = b"PGCOPY\n\xff\r\n\x00"
#: a row of ``(zoid, tid, state)``: field count, then each field's length
#: and bytes (a ``bigint`` is 8 bytes, big-endian: an oid or tid as ZODB
#: spells it); the state's length is -1 for NULL
_COPY_ROW = struct.Struct(">hi8si8si")
_COPY_END = b"\xff\xff"


def _copy_rows(cursor: Any, sql: str, args: Any) -> list[tuple[bytes, bytes, bytes | None]]:
    """``(oid, tid, state)`` rows of ``sql`` (selecting ``zoid, tid, state``),
    read as binary ``COPY`` on ``cursor``."""
    buf = io.BytesIO()
    cursor.copy_expert(cursor.mogrify(f"COPY ({sql}) TO STDOUT (FORMAT binary)", args), buf,
                       1 << 18)
    data = buf.getvalue()
    del buf
    if data[:11] != _COPY_HEAD:
        raise ValueError("not a binary COPY stream")
    pos = 19 + int.from_bytes(data[15:19], "big")
    rows: list[tuple[bytes, bytes, bytes | None]] = []
    append = rows.append
    unpack = _COPY_ROW.unpack_from
    size = _COPY_ROW.size
    end = len(data) - 2
    while pos < end:
        fields, l1, oid, l2, tid, length = unpack(data, pos)
        if fields != 3 or l1 != 8 or l2 != 8:
            raise ValueError("unexpected row in a binary COPY stream")
        pos += size
        if length < 0:
            append((oid, tid, None))
        else:
            append((oid, tid, data[pos:pos + length]))
            pos += length
    if data[pos:] != _COPY_END:
        raise ValueError("a binary COPY stream does not end where it should")
    return rows


def _current_sql(keep_history: bool) -> str:
    """Up to ``%(rows)s`` current rows after oid ``%(after)s``, in oid
    order, each chunk costing what it reads (an index range scan).  With
    history, each current row's state is one index lookup: a join would
    read every revision of each object (a merge join over ``object_state``
    walks them all)."""
    if keep_history:
        return ("SELECT c.zoid, c.tid, s.state FROM current_object c CROSS JOIN LATERAL "
                "(SELECT o.state FROM object_state o WHERE o.zoid = c.zoid "
                "AND o.tid = c.tid LIMIT 1) s WHERE c.zoid > %(after)s "
                "ORDER BY c.zoid LIMIT %(rows)s")
    return ("SELECT zoid, tid, state FROM object_state WHERE zoid > %(after)s "
            "ORDER BY zoid LIMIT %(rows)s")


def iter_current(storage: Any) -> Iterator[tuple[bytes, bytes, bytes]]:
    """``(oid, tid, state)`` of every current object, in oid order, streamed
    from a connection (and snapshot) of its own: on PostgreSQL as binary
    ``COPY`` of :data:`FETCH_ROWS` rows at a time, the next chunk read by a
    helper thread while the caller works on this one; elsewhere from a
    server-side cursor."""
    adapter = storage._adapter
    manager = adapter.connmanager
    conn, cursor = manager.open_for_load()
    try:
        if _binary_copy(adapter, cursor):
            yield from _copy_current(cursor, history_kept(storage))
            return
        ss = manager.driver.cursor(conn, server_side=True)
        if hasattr(ss, "itersize"):
            ss.itersize = FETCH_ROWS
        try:
            for oid, tid, state in adapter.dbiter.iter_current_records(ss):
                if state:
                    yield oid, tid, state
        finally:
            manager.close(cursor=ss)
    finally:
        manager.close(conn, cursor)


def _copy_current(cursor: Any, keep_history: bool) -> Iterator[tuple[bytes, bytes, bytes]]:
    from concurrent.futures import Future, ThreadPoolExecutor

    sql = _current_sql(keep_history)

    def chunk(after: int) -> list[tuple[bytes, bytes, bytes | None]]:
        return _copy_rows(cursor, sql, {"after": after, "rows": FETCH_ROWS})

    with ThreadPoolExecutor(1, thread_name_prefix="pclasses-relstorage") as pool:
        ahead: Future[list[tuple[bytes, bytes, bytes | None]]] | None = pool.submit(chunk, -1)
        while ahead is not None:
            rows = ahead.result()
            ahead = pool.submit(chunk, u64(rows[-1][0])) if len(rows) == FETCH_ROWS else None
            for oid, tid, state in rows:
                if state:
                    yield oid, tid, state
            del rows


#: oids a walk's block read covers (:class:`BlockReader`)
BLOCK = 2048
#: records a :class:`BlockReader` keeps, the oldest blocks dropped first
KEPT = 100_000


def _block_sql(keep_history: bool) -> str:
    """The current rows of the oids ``%(first)s`` to ``%(end)s`` (excluded),
    an index range scan."""
    if keep_history:
        return ("SELECT c.zoid, c.tid, s.state FROM current_object c CROSS JOIN LATERAL "
                "(SELECT o.state FROM object_state o WHERE o.zoid = c.zoid "
                "AND o.tid = c.tid LIMIT 1) s "
                "WHERE c.zoid >= %(first)s AND c.zoid < %(end)s")
    return ("SELECT zoid, tid, state FROM object_state "
            "WHERE zoid >= %(first)s AND zoid < %(end)s")


class BlockReader:
    """``load(oid: int) -> bytes | None`` for walks over a whole database
    (``pclasses.tree``) on RelStorage over PostgreSQL, whose order the walk
    alone knows: a miss reads the aligned block of :data:`BLOCK` oids
    around the oid in one query (binary ``COPY``), on a connection of its
    own whose snapshot (REPEATABLE READ, taken at the first read) the whole
    walk sees.  Blocks are kept until :data:`KEPT` records are held, the
    oldest dropped first; an oid of a dropped block reads its block again.
    :func:`can_read_blocks` says whether a storage can be read so."""

    def __init__(self, storage: Any) -> None:
        self._manager = storage._adapter.connmanager
        self._conn, self._cursor = self._manager.open_for_load()
        self._sql = _block_sql(history_kept(storage))
        self._blocks: dict[int, dict[int, bytes]] = {}
        self._kept = 0

    def _read(self, block: int) -> dict[int, bytes]:
        first = block * BLOCK
        rows = _copy_rows(self._cursor, self._sql, {"first": first, "end": first + BLOCK})
        got = {u64(oid): state for oid, _tid, state in rows if state}
        blocks = self._blocks
        blocks[block] = got
        self._kept += len(got)
        while self._kept > KEPT and len(blocks) > 1:
            self._kept -= len(blocks.pop(next(iter(blocks))))
        return got

    def load(self, oid: int) -> bytes | None:
        block = oid // BLOCK
        got = self._blocks.get(block)
        if got is None:
            got = self._read(block)
        return got.get(oid)

    def close(self) -> None:
        if self._conn is not None:
            self._manager.close(self._conn, self._cursor)
            self._conn = self._cursor = None
            self._blocks.clear()


def can_read_blocks(storage: Any) -> bool:
    """Whether :class:`BlockReader` can read ``storage`` (PostgreSQL
    through psycopg2; other databases are read through ``load``)."""
    adapter = storage._adapter
    conn, cursor = adapter.connmanager.open_for_load()
    try:
        return _binary_copy(adapter, cursor)
    finally:
        adapter.connmanager.close(conn, cursor)


class BatchLoader:
    """``load(oid) -> (state, tid)`` at the snapshot of a connection's
    RelStorage instance, fetching the oids :meth:`follow`'s queue is about
    to ask for in one query a batch.

    On PostgreSQL (psycopg2) the batch after the one being used is read
    ahead, by a helper thread on a second connection that shares the
    instance's snapshot (``pg_export_snapshot`` / ``SET TRANSACTION
    SNAPSHOT``), so the server looks up the next batch while the walk
    works through this one; the instance's own connection is only ever used
    by the caller's thread.  :meth:`close` ends the helper."""

    def __init__(self, instance: Any) -> None:
        self._instance = instance
        self._mover = instance._adapter.mover
        self._upcoming: Any = None
        self._got: dict[bytes, tuple[bytes, bytes]] = {}
        self._copy: bool | None = None
        self._kept = False  # whether the database keeps history
        self._ahead: Any = None  # the future of the batch read ahead
        self._helper: Any = None  # (pool, connection, cursor) of the read-ahead
        self._manager = instance._adapter.connmanager

    def follow(self, queue: Any) -> None:
        """Prefetch from ``queue`` (a deque of oids a walk pops from the left)."""
        self._upcoming = queue

    def __call__(self, oid: bytes) -> tuple[bytes, bytes]:
        got = self._got.pop(oid, None)
        if got is not None:
            return got
        if self._ahead is not None:
            self._collect()
            got = self._got.pop(oid, None)
            if got is not None:
                self._read_ahead()
                return got
        if self._upcoming is not None and len(self._upcoming) > 1:
            self._fetch(oid)
            got = self._got.pop(oid, None)
            self._read_ahead()
            if got is not None:
                return got
        return self._instance.load(oid)  # type: ignore[no-any-return]  # POSKeyError

    def _fetch(self, oid: bytes) -> None:
        from itertools import islice

        cursor = self._instance._load_connection.cursor
        got = self._got
        if self._copy is None:
            self._copy = _binary_copy(self._instance._adapter, cursor)
            self._kept = history_kept(self._instance)
        if self._copy:
            wanted_b = [oid]
            wanted_b.extend(o for o in islice(self._upcoming, 0, LOAD_BATCH)
                            if o != oid and o not in got)
            got.update(_load_batch(cursor, self._kept, wanted_b))
            return
        wanted = [u64(oid)]
        wanted.extend(u64(o) for o in islice(self._upcoming, 0, LOAD_BATCH)
                      if o != oid and o not in got)
        for oid_int, state_, tid_int in self._mover.load_currents(cursor, wanted):
            if state_:
                got[p64(oid_int)] = (state_, p64(tid_int))

    def _read_ahead(self) -> None:
        """Start reading the batch after the ones held."""
        from itertools import islice

        if not self._copy or self._ahead is not None or self._upcoming is None:
            return
        got = self._got
        peek = getattr(self._upcoming, "peek", None)
        if peek is not None:
            # (an OidQueue: the oids held lead the queue; ints, sliced in C)
            skip = len(got)
            wanted = [o for o in map(_P64, peek(skip, skip + LOAD_BATCH)) if o not in got]
        else:
            wanted = [o for o in islice(self._upcoming, 0, 2 * LOAD_BATCH) if o not in got]
            del wanted[LOAD_BATCH:]
        if len(wanted) < 2:
            return
        if self._helper is None:
            self._helper = self._start_helper()
        pool, _conn, cursor = self._helper
        self._ahead = pool.submit(_load_batch, cursor, self._kept, wanted)

    def _collect(self) -> None:
        ahead, self._ahead = self._ahead, None
        self._got.update(ahead.result())

    def _start_helper(self) -> Any:
        """A pool of one thread and a connection at the instance's snapshot."""
        from concurrent.futures import ThreadPoolExecutor

        cursor = self._instance._load_connection.cursor
        cursor.execute("SELECT pg_export_snapshot()")
        (snapshot,) = cursor.fetchone()
        conn, helper_cursor = self._manager.open_for_load()
        try:
            conn.rollback()  # (a new transaction, whose first statement is this)
            helper_cursor.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
        except Exception:
            self._manager.close(conn, helper_cursor)
            raise
        pool = ThreadPoolExecutor(1, thread_name_prefix="pclasses-relstorage-load")
        return pool, conn, helper_cursor

    def close(self) -> None:
        """End the read-ahead (its thread and connection), if any."""
        if self._ahead is not None:
            self._ahead.exception()  # (wait; its rows are not needed any more)
            self._ahead = None
        helper, self._helper = self._helper, None
        if helper is not None:
            pool, conn, cursor = helper
            pool.shutdown(wait=True)
            self._manager.close(conn, cursor)


#: an int oid as 8 bytes (``ZODB.utils.p64`` without its Python call)
_P64 = struct.Struct(">Q").pack

#: the current rows of the oids of an array, one index lookup each (a
#: join or ``IN`` list lets PostgreSQL's planner scan whole tables)
_LOAD_SQL = {
    False: ("SELECT w.zoid, s.tid, s.state FROM unnest(%s::bigint[]) AS w(zoid) "
            "CROSS JOIN LATERAL (SELECT o.tid, o.state FROM object_state o "
            "WHERE o.zoid = w.zoid LIMIT 1) s"),
    True: ("SELECT w.zoid, s.tid, s.state FROM unnest(%s::bigint[]) AS w(zoid) "
           "CROSS JOIN LATERAL (SELECT o.tid, o.state FROM current_object c "
           "JOIN object_state o ON o.zoid = c.zoid AND o.tid = c.tid "
           "WHERE c.zoid = w.zoid LIMIT 1) s"),
}
#: the current rows of the oids from ``%s`` to ``%s`` (included), an index
#: range scan (with history, one lookup of the state per current row)
_RANGE_SQL = {
    False: "SELECT zoid, tid, state FROM object_state WHERE zoid BETWEEN %s AND %s",
    True: ("SELECT c.zoid, c.tid, s.state FROM current_object c CROSS JOIN LATERAL "
           "(SELECT o.state FROM object_state o WHERE o.zoid = c.zoid "
           "AND o.tid = c.tid LIMIT 1) s WHERE c.zoid BETWEEN %s AND %s"),
}
#: A run of a batch's oids (sorted, no two more than :data:`RUN_GAP`
#: apart) is read as one range when it holds at least :data:`RUN_MIN`
#: oids and at least a third of the oids it spans: a range scan costs
#: PostgreSQL about a quarter of an index lookup a row, so reading the
#: rows between the wanted ones (and dropping them) is still cheaper.
RUN_GAP = 16
RUN_MIN = 32


def _runs(oids: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """``(ranges, singles)`` for the sorted, distinct ``oids``: the
    ``(first, last)`` of each run worth reading as a range, and the oids
    to look up one by one."""
    ranges: list[tuple[int, int]] = []
    singles: list[int] = []
    n = len(oids)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and oids[j + 1] - oids[j] <= RUN_GAP:
            j += 1
        count = j - i + 1
        if count >= RUN_MIN and 3 * count >= oids[j] - oids[i] + 1:
            ranges.append((oids[i], oids[j]))
        else:
            singles.extend(oids[i:j + 1])
        i = j + 1
    return ranges, singles


def _load_batch(cursor: Any, keep_history: bool,
                wanted: list[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
    """``{oid: (state, tid)}`` of the current records of the distinct oids
    ``wanted`` (a missing or deleted object is not in it), read in one
    binary ``COPY``: dense runs of oids as index range scans
    (:func:`_runs`; the rows between the wanted ones are dropped as they
    come), the others one index lookup each."""
    ranges, singles = _runs(sorted(int.from_bytes(o, "big") for o in wanted))
    parts: list[str] = []
    args: list[Any] = []
    for first, last in ranges:
        parts.append(_RANGE_SQL[keep_history])
        args += [first, last]
    if singles:
        parts.append(_LOAD_SQL[keep_history])
        args.append(singles)
    sql = parts[0] if len(parts) == 1 else " UNION ALL ".join(f"({p})" for p in parts)
    return _copy_states(cursor, sql, tuple(args), set(wanted) if ranges else None)


def _copy_states(cursor: Any, sql: str, args: Any,
                 want: set[bytes] | None) -> dict[bytes, tuple[bytes, bytes]]:
    """:func:`_copy_rows` as ``{oid: (state, tid)}`` (rows without a state,
    and rows whose oid is not in ``want`` unless it is None, left out), in
    one pass over the stream."""
    buf = io.BytesIO()
    cursor.copy_expert(cursor.mogrify(f"COPY ({sql}) TO STDOUT (FORMAT binary)", args), buf,
                       1 << 18)
    data = buf.getvalue()
    del buf
    if data[:11] != _COPY_HEAD:
        raise ValueError("not a binary COPY stream")
    pos = 19 + int.from_bytes(data[15:19], "big")
    got: dict[bytes, tuple[bytes, bytes]] = {}
    unpack = _COPY_ROW.unpack_from
    size = _COPY_ROW.size
    end = len(data) - 2
    while pos < end:
        fields, l1, oid, l2, tid, length = unpack(data, pos)
        if fields != 3 or l1 != 8 or l2 != 8:
            raise ValueError("unexpected row in a binary COPY stream")
        pos += size
        if length > 0:
            if want is None or oid in want:
                got[oid] = (data[pos:pos + length], tid)
            pos += length
    if data[pos:] != _COPY_END:
        raise ValueError("a binary COPY stream does not end where it should")
    return got


def prefer_index_lookups(storage: Any) -> None:
    """Tell PostgreSQL, for the transaction ``storage`` has begun
    (``tpc_begin``), that an index lookup costs about what a sequential
    read does (``SET LOCAL random_page_cost``).

    RelStorage's commit finds conflicts by joining the objects stored
    (its temporary table) with the current objects; with PostgreSQL's
    default costs the planner reads the whole table for each transaction
    (about 0.25 s at 100,000 records, ten times that at a million) instead
    of looking up the few thousand stored.  Only this transaction's plans
    change; nothing is written.  Other drivers and databases are left alone.
    """
    try:
        adapter = storage._adapter
        conn = storage._tpc_phase.shared_state.store_connection
        cursor = conn.cursor
    except AttributeError:
        return
    if _binary_copy(adapter, cursor):
        cursor.execute("SET LOCAL random_page_cost = 1.1")


def skip_local_cache(storage: Any) -> None:
    """Stop ``storage`` from copying each state it commits into RelStorage's
    local cache, which a command that streams its reads never consults
    again (copying them costs a repair about a tenth of its time).  For
    storages a one-shot command opened itself: an application's storage
    keeps its cache."""
    try:
        storage._cache.local_client.limit = 0
    except AttributeError:
        return


def blob_oids(storage: Any, oids: list[bytes]) -> set[bytes] | None:
    """Which of ``oids`` hold a blob, asked in one query a thousand oids,
    when the blobs live in the database (an unshared blob directory);
    ``None`` when they live in a shared blob directory (then asking the
    directory costs no query).  Asking RelStorage's PostgreSQL adapter
    one record at a time would also fail with an ``AssertionError`` for a
    record without a blob."""
    if storage._options.shared_blob_dir:
        return None
    cursor = storage._load_connection.cursor
    batcher = storage._adapter.mover.make_batcher(cursor, row_limit=1000)
    rows = batcher.select_from(("zoid",), "blob_chunk", zoid=[u64(o) for o in oids])
    return {p64(row[0]) for row in rows}
