"""Activating every object through the registry vs ZODB's default class factory.

Both walks run in this process, alternating, each on a fresh DB and
connection over the same packed FileStorage; every bucket, Item, meta and
group is activated.  Reports medians and the paired ratio registry/default,
of wall time and of the process's CPU time (on a shared machine the CPU
time of a one-threaded walk is the less disturbed of the two).

For a count that a busy machine cannot disturb, ``--one FACTORY --limit N``
makes a single walk of the first N items and exits, to be run under
``PYTHONHASHSEED=0 valgrind --tool=callgrind`` with N and with 0 (the
difference is the walk's instructions).

A second measure isolates the factory call itself: the class lookups the
walk makes (one per record loaded), timed as calls of each database's
``classFactory`` with the walk's names, alternating, median of paired ratios.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import time

from _common import build_storage, median


def walk(path, factory: str, limit: int | None = None) -> tuple[float, float]:
    import ZODB
    from ZODB.FileStorage import FileStorage

    import pclasses

    db = ZODB.DB(FileStorage(str(path), read_only=True), cache_size=1_000_000)
    if factory == "registry":
        pclasses.ClassRegistry().install(db)
    conn = db.open()
    gc.collect()
    t0 = time.perf_counter()
    c0 = time.process_time()
    tree = conn.root()["tree"]
    n = 0
    for item in itertools.islice(tree["items"].values(), limit):
        item._p_activate()
        n += 1
        meta = item.__dict__.get("meta")
        if meta is not None:
            meta._p_activate()
    for group in tree["groups"].values():
        group._p_activate()
    dt = time.perf_counter() - t0
    dc = time.process_time() - c0
    conn.close()
    db.close()
    return dt, dc


def lookups(factory: str, names: list[tuple[str, str]], repeat: int) -> float:
    import ZODB
    from ZODB.MappingStorage import MappingStorage

    import pclasses

    db = ZODB.DB(MappingStorage())
    if factory == "registry":
        pclasses.ClassRegistry().install(db)
    conn = db.open()
    lookup = db.classFactory
    for module, name in names:  # warm: both cache or import once
        lookup(conn, module, name)
    t0 = time.perf_counter()
    for _ in range(repeat):
        for module, name in names:
            lookup(conn, module, name)
    dt = time.perf_counter() - t0
    conn.close()
    db.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--lookup-runs", type=int, default=15)
    ap.add_argument("--one", choices=("default", "registry"),
                    help="one walk with this factory, then exit (for callgrind)")
    ap.add_argument("--limit", type=int, default=None, help="items the --one walk activates")
    args = ap.parse_args()
    path = build_storage(args.n)
    if args.one:
        walk(path, args.one, args.limit)
        return
    default, registry, ratios, cpu_ratios = [], [], [], []
    for i in range(args.runs):
        order = ("default", "registry") if i % 2 == 0 else ("registry", "default")
        got = {f: walk(path, f) for f in order}
        default.append(got["default"][0])
        registry.append(got["registry"][0])
        ratios.append(got["registry"][0] / got["default"][0])
        cpu_ratios.append(got["registry"][1] / got["default"][1])
    result = {
        "benchmark": "activation walk",
        "items": args.n,
        "default_s": round(median(default), 3),
        "registry_s": round(median(registry), 3),
        "ratio_registry_over_default": round(median(ratios), 3),
        "cpu_ratio_registry_over_default": round(median(cpu_ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "cpu_ratios": [round(r, 3) for r in cpu_ratios],
    }
    print(json.dumps(result))
    # The names the walk's records carry, in its proportions.
    names = ([("BTrees.OOBTree", "OOBucket")] * 1 + [("pbmodel", "Item")] * 10
             + [("persistent.mapping", "PersistentMapping")] * 1)
    repeat = max(1, args.n // len(names))
    d2, r2, ratios2 = [], [], []
    for i in range(args.lookup_runs):
        order = ("default", "registry") if i % 2 == 0 else ("registry", "default")
        got = {f: lookups(f, names, repeat) for f in order}
        d2.append(got["default"])
        r2.append(got["registry"])
        ratios2.append(got["registry"] / got["default"])
    calls = repeat * len(names)
    print(json.dumps({
        "benchmark": "class factory calls",
        "calls": calls,
        "default_ns_per_call": round(median(d2) / calls * 1e9, 1),
        "registry_ns_per_call": round(median(r2) / calls * 1e9, 1),
        "ratio_registry_over_default": round(median(ratios2), 3),
        # the least disturbed run of each (a shared machine adds noise only)
        "ratio_of_fastest": round(min(r2) / min(d2), 3),
        "ratios": [round(r, 3) for r in ratios2],
    }))


if __name__ == "__main__":
    main()
