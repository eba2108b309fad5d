"""Activating every object through the registry vs ZODB's default class factory.

Both walks run in this process, alternating, each on a fresh DB and
connection over the same packed FileStorage; every bucket, Item, meta and
group is activated.  Reports medians and the paired ratio registry/default.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from _common import build_storage, median


def walk(path, factory: str) -> float:
    import ZODB
    from ZODB.FileStorage import FileStorage

    import pclasses

    db = ZODB.DB(FileStorage(str(path), read_only=True), cache_size=1_000_000)
    if factory == "registry":
        pclasses.ClassRegistry().install(db)
    conn = db.open()
    gc.collect()
    t0 = time.perf_counter()
    tree = conn.root()["tree"]
    n = 0
    for item in tree["items"].values():
        item._p_activate()
        n += 1
        meta = item.__dict__.get("meta")
        if meta is not None:
            meta._p_activate()
    for group in tree["groups"].values():
        group._p_activate()
    dt = time.perf_counter() - t0
    conn.close()
    db.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    path = build_storage(args.n)
    default, registry, ratios = [], [], []
    for i in range(args.runs):
        order = ("default", "registry") if i % 2 == 0 else ("registry", "default")
        got = {f: walk(path, f) for f in order}
        default.append(got["default"])
        registry.append(got["registry"])
        ratios.append(got["registry"] / got["default"])
    result = {
        "benchmark": "activation walk",
        "items": args.n,
        "default_s": round(median(default), 3),
        "registry_s": round(median(registry), 3),
        "ratio_registry_over_default": round(median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
