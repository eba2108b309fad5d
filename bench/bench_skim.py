"""Micro-benchmark of the opcode pre-scan: C skim, Python skim, pickletools.genops.

Writes a few thousand records with ZODB (a MappingStorage shaped like the
census data set: Items in an OOBTree, PersistentMappings, buckets), then times
one pass over all of them per implementation (best of several rounds) and
prints one JSON line: microseconds per record for each (and, for scale, the
safe reader's ``scan_record``), the record sizes, and the records under 300
bytes with their own figure.

    python bench/bench_skim.py [--items N] [--rounds R]
"""

from __future__ import annotations

import argparse
import io
import json
import pickletools
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def make_records(n: int) -> list[bytes]:
    import transaction
    import ZODB
    from BTrees.OOBTree import OOBTree
    from persistent.mapping import PersistentMapping
    from ZODB.MappingStorage import MappingStorage

    import pbmodel

    storage = MappingStorage()
    db = ZODB.DB(storage)
    conn = db.open()
    root = conn.root()
    items = root["items"] = OOBTree()
    prev = None
    for i in range(n):
        item = pbmodel.Item(f"item {i}", i)
        items[f"k{i:08d}"] = item
        if i >= 10 and i % 10 == 0:
            item.meta = PersistentMapping(created=i, note="n", sibling=prev)
        prev = item
    transaction.commit()
    records = [r.data for t in storage.iterator() for r in t if r.data]
    conn.close()
    db.close()
    return records


def genops_walk(data: bytes) -> None:
    f = io.BytesIO(data)
    for _ in pickletools.genops(f):
        pass
    for _ in pickletools.genops(f):
        pass


def per_record(fn, records: list[bytes], rounds: int) -> float:
    """Best-of-``rounds`` seconds per record for one pass over ``records``."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for d in records:
            fn(d)
        best = min(best, time.perf_counter() - t0)
    return best / len(records)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    import importlib

    skim_mod = importlib.import_module("pclasses.record.analyze")
    from pclasses.record.reader import scan_record

    records = make_records(args.items)
    small = [d for d in records if len(d) < 300]
    # scan_record (the safe reader's census path) is the cost skim adds to.
    impls = {
        "python": skim_mod.skim_py,
        "genops": genops_walk,
        "scan_record": scan_record,
    }
    if skim_mod.HAVE_C:
        impls = {"c": skim_mod.skim_c, **impls}
    # Same answers before timing anything.
    for d in records:
        assert skim_mod.skim_py(d) == skim_mod.skim(d)

    result: dict[str, object] = {
        "bench": "skim",
        "have_c": skim_mod.HAVE_C,
        "records": len(records),
        "median_record_bytes": statistics.median(len(d) for d in records),
        "max_record_bytes": max(len(d) for d in records),
        "small_records": len(small),
    }
    for name, fn in impls.items():
        rounds = args.rounds if name == "c" else max(2, args.rounds // 3)
        result[f"{name}_us_per_record"] = round(
            per_record(fn, records, rounds) * 1e6, 3
        )
        if small:
            result[f"{name}_us_per_small_record"] = round(
                per_record(fn, small, rounds) * 1e6, 3
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
