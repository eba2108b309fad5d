"""Offline class rename: ``pclasses.rename_classes`` vs zodbupdate, same storage and rule.

Each run renames ``pbmodel.Item`` to ``pbmodel_v2.Item`` on a fresh copy of
the same packed 100k-item FileStorage (116,821 records), through each
tool's Python API in a fresh process, alternating.  Reports medians and the
ratio zodbupdate / pclasses (above 1 means pclasses is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from _common import HERE, build_storage, median

PCLASSES = """
import sys, time
from pclasses import rename_classes
t = time.perf_counter()
report = rename_classes(sys.argv[1], {"pbmodel.Item": "pbmodel_v2.Item"})
print(time.perf_counter() - t, report.changed)
"""

ZODBUPDATE = """
import sys, time
from ZODB.FileStorage import FileStorage
from zodbupdate.main import create_updater
t = time.perf_counter()
storage = FileStorage(sys.argv[1])
updater = create_updater(storage, default_renames={("pbmodel", "Item"): ("pbmodel_v2", "Item")})
updater()
storage.close()
print(time.perf_counter() - t, -1)
"""


def renamed_items(path: str) -> int:
    """How many records are of class pbmodel_v2.Item afterwards (read safely)."""
    from ZODB.FileStorage import FileStorage

    from pclasses import take_census

    storage = FileStorage(path, read_only=True)
    try:
        census = take_census(storage, jobs=1)
    finally:
        storage.close()
    return sum(c.records for c in census.classes if c.dotted == "pbmodel_v2.Item")


def run(script: str, src: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "Data.fs")
        shutil.copyfile(src, path)
        shutil.copyfile(src + ".index", path + ".index")
        out = subprocess.run([sys.executable, "-c", script, path], check=True,
                             capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                 p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}).stdout
        got = renamed_items(path)
        if got != n:
            raise SystemExit(f"rename incomplete: {got} of {n} Items renamed")
        return float(out.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    src = str(build_storage(args.n))
    ours, peer = [], []
    for i in range(args.runs):
        if i % 2 == 0:
            ours.append(run(PCLASSES, src, args.n))
            peer.append(run(ZODBUPDATE, src, args.n))
        else:
            peer.append(run(ZODBUPDATE, src, args.n))
            ours.append(run(PCLASSES, src, args.n))
    print(json.dumps({
        "benchmark": "offline rename vs zodbupdate (API, same storage and rule)",
        "items": args.n,
        "zodbupdate_s": round(median(peer), 3),
        "pclasses_s": round(median(ours), 3),
        "speedup": round(median(peer) / median(ours), 2),
        "runs_pclasses": [round(x, 3) for x in ours],
        "runs_zodbupdate": [round(x, 3) for x in peer],
    }))


if __name__ == "__main__":
    main()
