"""Shared helpers for the benchmarks: the data set and timing."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CACHE = Path(os.environ.get("PCLASSES_BENCH_DIR", HERE.parent / "var" / "bench"))


def build_storage(n: int, path: Path | None = None) -> Path:
    """A packed FileStorage shaped like the peer baselines' data set.

    ``root['tree'] = PersistentMapping{'items': OOBTree 'k%08d' -> Item,
    'groups': PersistentMapping 'g%d' -> PersistentMapping{first, label}}``;
    every 10th Item (i >= 10) has ``.meta`` = PersistentMapping with a
    reference to the previous Item.  About 1.168 records per item.
    """
    import transaction
    import ZODB
    from BTrees.OOBTree import OOBTree
    from persistent.mapping import PersistentMapping
    from ZODB.FileStorage import FileStorage

    import pbmodel

    path = path or CACHE / f"items-{n}.fs"
    if path.exists() and Path(str(path) + ".index").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    db = ZODB.DB(FileStorage(str(path)))
    with db.transaction() as conn:
        root = conn.root()
        tree = root["tree"] = PersistentMapping()
        items = tree["items"] = OOBTree()
        groups = tree["groups"] = PersistentMapping()
    conn = db.open()
    tree = conn.root()["tree"]
    items, groups = tree["items"], tree["groups"]
    prev = None
    for i in range(n):
        item = pbmodel.Item(f"item {i}", i)
        items[f"k{i:08d}"] = item
        if i >= 10 and i % 10 == 0:
            item.meta = PersistentMapping(created=i, note="n", sibling=prev)
        if i % 1000 == 0:
            groups[f"g{i // 1000}"] = PersistentMapping(first=item, label=f"group {i}")
        prev = item
        if i % 10000 == 9999:
            transaction.commit()
            conn.cacheMinimize()
    transaction.commit()
    conn.close()
    db.pack()
    db.close()
    for suffix in (".old", ".tmp", ".lock"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


def time_process(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)
