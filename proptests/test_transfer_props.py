"""Property: a generated graph exported and imported into a fresh database is the
same graph under new oids.

For graphs from :func:`strategies.graphs` (persistent nodes, mappings, lists,
objects with ``__getnewargs__`` whose references are bare oids, plain objects,
shared references, cycles, weak references, builtin values): store the graph
as ``root['g']`` of a FileStorage database opened with :func:`pclasses.open`,
export ``root['g']`` (this package's format or ``.zexp``), import it into
another FileStorage database that already holds unrelated objects (with a
savepoint or at commit time), reopen that database and compare: same shape,
same sharing (which references are the same object), same classes, equal
values; every imported object has an oid that is new in the target, and the
target gained exactly the exported records (counted with ZODB's storage
iterator), which are exactly the persistent objects of the graph.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import transaction
from hypothesis import given
from hypothesis import strategies as st
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef

import pclasses
from strategies import graphs


def records(storage: Any) -> dict[bytes, bytes]:
    """The current record of every oid (ZODB's own storage iterator)."""
    out: dict[bytes, bytes] = {}
    it = storage.iterator()
    try:
        for txn in it:
            for rec in txn:
                out[rec.oid] = rec.data
    finally:
        it.close()
    return out


def form(value: Any) -> tuple[Any, list[Any]]:
    """(structural description, persistent objects in order of first visit).

    Persistent objects are numbered when first met, so two graphs have equal
    descriptions exactly when they have the same shape, the same sharing and
    cycles, the same classes and equal values.  A weak reference is described
    by its target's number (None when it dangles)."""
    seen: dict[int, int] = {}
    order: list[Any] = []
    weak: list[list[Any]] = []

    def walk(v: Any) -> Any:
        if isinstance(v, WeakRef):
            slot = ["weak", v()]
            weak.append(slot)
            return slot
        if isinstance(v, Persistent):
            if id(v) in seen:
                return ("same", seen[id(v)])
            seen[id(v)] = len(order)
            order.append(v)
            cls = (type(v).__module__, type(v).__qualname__)
            if isinstance(v, PersistentMapping):
                return ("obj", cls, [(k, walk(x)) for k, x in v.items()])
            if isinstance(v, PersistentList):
                return ("obj", cls, [walk(x) for x in v])
            v._p_activate()  # vars() of a ghost is empty
            state = {
                k: x for k, x in vars(v).items() if not k.startswith(("_p_", "_v_"))
            }
            return ("obj", cls, [(k, walk(state[k])) for k in sorted(state)])
        if isinstance(v, (list, tuple)):
            return (type(v).__name__, [walk(x) for x in v])
        if isinstance(v, dict):
            return ("dict", [(k, walk(x)) for k, x in v.items()])
        if isinstance(v, (set, frozenset)):
            return (type(v).__name__, frozenset(v))
        if hasattr(v, "__dict__") and not isinstance(v, type):
            return (
                "plain",
                type(v).__module__,
                type(v).__qualname__,
                [(k, walk(x)) for k, x in sorted(vars(v).items())],
            )
        return (type(v).__name__, repr(v))

    result = walk(value)
    for slot in weak:
        slot[1] = None if slot[1] is None else seen.get(id(slot[1]))
    return result, order


@given(
    graph=graphs(),
    fmt=st.sampled_from(["pclasses", "zexp"]),
    savepoint=st.booleans(),
    decoys=st.integers(0, 6),
)
def test_exported_graph_imports_as_the_same_graph(graph, fmt, savepoint, decoys):
    """Export of root['g'] and import into a fresh database gives the same graph
    (shape, sharing, classes, values) under new oids, adding exactly its records."""
    directory = Path(tempfile.mkdtemp(prefix="pcl-transfer-prop-"))
    try:
        src = pclasses.open(str(directory / "src.fs"))
        try:
            conn = src.open()
            conn.root()["g"] = graph
            transaction.commit()
            # what the source database holds (pickling itself drops e.g. a
            # datetime's fold at ZODB's protocol 3), read by a new connection
            reader = src.open()
            expected, objects = form(reader.root()["g"])
            reader.close()
            buf = io.BytesIO()
            manifest = pclasses.export_subtree(conn, conn.root()["g"], buf, format=fmt)
            data = buf.getvalue()
        finally:
            transaction.abort()
            src.close()
        assert manifest.record_count == len(objects)
        assert manifest.root_oid == graph._p_oid

        dst_path = str(directory / "dst.fs")
        dst = pclasses.open(dst_path)
        try:
            c2 = dst.open()
            for i in range(decoys):
                c2.root()[f"decoy{i}"] = PersistentMapping(v=i)
            transaction.commit()
            before = records(dst.storage)
            obj = pclasses.import_subtree(
                c2, io.BytesIO(data), into=c2.root(), name="g", savepoint=savepoint
            )
            transaction.commit()
            after = records(dst.storage)
        finally:
            transaction.abort()
            dst.close()
        new = set(after) - set(before)
        assert len(new) == manifest.record_count
        assert {oid for oid in before if before[oid] != after[oid]} == {b"\0" * 8}

        again = pclasses.open(dst_path)
        try:
            c3 = again.open()
            imported = c3.root()["g"]
            actual, imported_objects = form(imported)
            assert actual == expected
            oids = [o._p_oid for o in imported_objects]
            assert set(oids) == new  # exactly the graph's objects, all new
            assert all(o._p_jar is c3 for o in imported_objects)
            if decoys:
                assert not (set(oids) & set(before))
            assert obj is not None
        finally:
            transaction.abort()
            again.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
