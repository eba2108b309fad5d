"""Cost of the cross-database reference seat belt on ordinary commits.

A two-database multi-database (FileStorages); each run commits 10,000 new
objects that hold no cross-database references, with ``check_xrefs`` off
and on, alternating, in the same process.  Reports medians and the ratio
on / off (target: at most 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage

import pclasses
from _common import median


def commit_batch(db, n: int) -> float:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    root = conn.root()
    batch = root.setdefault("batches", PersistentMapping())
    tm.commit()
    items = PersistentMapping()
    for i in range(n):
        items[f"k{i}"] = PersistentMapping(n=i, name=f"item {i}", tags=["a", "b"])
    batch[f"b{len(batch)}"] = items
    t0 = time.perf_counter()
    tm.commit()
    dt = time.perf_counter() - t0
    conn.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dbs: dict = {}
        main_db = ZODB.DB(FileStorage(os.path.join(tmp, "main.fs")), databases=dbs,
                          database_name="main")
        ZODB.DB(FileStorage(os.path.join(tmp, "session.fs")), databases=dbs,
                database_name="session")
        pclasses.ClassRegistry().install(main_db)
        off, on, ratios = [], [], []
        commit_batch(main_db, 100)  # warm up
        for i in range(args.runs):
            got = {}
            for mode in ((False, True) if i % 2 == 0 else (True, False)):
                pclasses.check_xrefs(main_db, mode, ["main", "session"])
                got[mode] = commit_batch(main_db, args.n)
            off.append(got[False])
            on.append(got[True])
            ratios.append(got[True] / got[False])
        for db in set(dbs.values()):
            db.close()
    print(json.dumps({
        "benchmark": "commit of objects without cross-database references, check_xrefs on/off",
        "objects": args.n,
        "off_s": round(median(off), 4),
        "on_s": round(median(on), 4),
        "ratio_on_over_off": round(median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
    }))


if __name__ == "__main__":
    main()
