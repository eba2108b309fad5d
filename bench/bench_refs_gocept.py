"""gocept.reference 1.0 measured the way ``bench_refs.py`` measures pclasses.

Run by ``bench_refs.py`` in its own process with gocept.reference and its
Zope 3 dependencies on ``PYTHONPATH`` (``GOCEPT_REFERENCE_PATH``, e.g. a
``pip install --target`` directory).  The minimum component setup for
reading and assigning (integrity off: the utility and its subscribers are
not needed for those): annotations, physical location, traversal.
Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import gocept.reference
import transaction
import ZODB
import zope.annotation.attribute
import zope.annotation.interfaces
import zope.component
import zope.component.hooks
import zope.interface
import zope.location.traversing
import zope.traversing.adapters
import zope.traversing.interfaces
from persistent import Persistent
from ZODB.FileStorage import FileStorage
from zope.container.btree import BTreeContainer
from zope.container.contained import Contained
from zope.location.interfaces import ILocation


@zope.interface.implementer(zope.annotation.interfaces.IAttributeAnnotatable)
class Target(Contained, Persistent):
    pass


@zope.interface.implementer(zope.annotation.interfaces.IAttributeAnnotatable)
class Source(Contained, Persistent):
    ref = gocept.reference.Reference()


class PlainSource(Contained, Persistent):
    ref = None


def setup() -> None:
    zope.component.provideAdapter(zope.annotation.attribute.AttributeAnnotations)
    zope.component.provideAdapter(zope.location.traversing.LocationPhysicallyLocatable,
                                  (ILocation,), zope.traversing.interfaces.IPhysicallyLocatable)
    zope.component.provideAdapter(zope.location.traversing.RootPhysicallyLocatable,
                                  (zope.traversing.interfaces.IContainmentRoot,),
                                  zope.traversing.interfaces.IPhysicallyLocatable)
    zope.component.provideAdapter(zope.traversing.adapters.DefaultTraversable,
                                  (zope.interface.Interface,),
                                  zope.traversing.interfaces.ITraversable)
    zope.component.provideAdapter(zope.traversing.adapters.Traverser,
                                  (zope.interface.Interface,),
                                  zope.traversing.interfaces.ITraverser)


def per_call(fn, n: int, repeat: int = 7) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        runs.append((time.perf_counter() - t0) / n)
    runs.sort()
    return runs[len(runs) // 2]


def main() -> None:
    setup()
    with tempfile.TemporaryDirectory() as d:
        db = ZODB.DB(FileStorage(str(Path(d) / "g.fs")))
        conn = db.open()
        app = BTreeContainer()
        zope.interface.alsoProvides(app, zope.traversing.interfaces.IContainmentRoot)
        conn.root()["app"] = app
        zope.component.hooks.setSite(None)
        folder = app
        for level in range(5):  # targets at depth 6, as in bench_refs.py
            folder[f"f{level}"] = BTreeContainer()
            folder = folder[f"f{level}"]
        folder["t0"], folder["t1"] = Target(), Target()
        t0, t1 = folder["t0"], folder["t1"]
        app["s"], app["p"] = Source(), PlainSource()
        src, plain = app["s"], app["p"]
        # gocept's get_root() starts from the current site
        zope.component.hooks.getSite = lambda: app  # type: ignore[assignment]
        gocept.reference.reference.zope.component.hooks.getSite = lambda: app
        src.ref = t0
        plain.ref = t0
        transaction.commit()
        assert src.ref is t0
        assign_only = int(os.environ.get("BENCH_ASSIGN_ONLY", "-1"))
        if assign_only >= 0:  # for instruction counts (bench_refs.py --instructions)
            src.ref = t1
            src.ref = t0
            for _ in range(assign_only // 2):
                src.ref = t1
                src.ref = t0
            transaction.abort()
            conn.close()
            db.close()
            return

        def plain_read(n):
            for _ in range(n):
                _ = plain.ref

        def read(n):
            for _ in range(n):
                _ = src.ref

        def assign(n):
            for _ in range(n // 2):
                src.ref = t1
                src.ref = t0

        out = {"gocept_plain_read_ns": per_call(plain_read, 200_000) * 1e9,
               "gocept_read_depth6_us": per_call(read, 20_000) * 1e6,
               "gocept_assign_us": per_call(assign, 10_000) * 1e6}
        transaction.abort()
        conn.close()
        db.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
