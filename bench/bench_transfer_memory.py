"""Peak memory and time of ``export`` and ``import`` (issue 16: bounded memory).

Builds (once, cached beside the other benchmarks' data) a FileStorage of
``root['tree']``: a PersistentMapping of groups of 1000 small
PersistentMappings each, so a subtree of about N records.  Each
measurement runs in its own process, which reports its time and its peak
resident set (``ru_maxrss``): ``export`` (``export_subtree`` to a file),
``import`` (``import_subtree`` into a new FileStorage and one commit: the
library's way), with ``--batched`` also ``batched`` (``import_in_batches``,
the command line's way: FileStorage keeps an index entry per record of a
transaction, which batches bound), and ``baseline`` (the process that
opens the source and loads the root: what every measurement starts
from).  ``--src`` points the child processes at another source tree (for
before/after comparisons); runs of the two trees alternate and the report
gives the medians.

    python bench/bench_transfer_memory.py --sizes 200000,1000000 \\
        --src /tmp/before/src --src src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import CACHE

CHILD = """
import resource, sys, time
import transaction
import pclasses
what, src, out = sys.argv[1:4]
if what == 'export':
    db = pclasses.open(src, read_only=True)
    conn = db.open()
    t0 = time.perf_counter()
    pclasses.export_subtree(conn, conn.root()['tree'], out, name='imported')
elif what == 'batched':
    from pclasses.transfer.batched import import_in_batches
    db = pclasses.open(src)
    t0 = time.perf_counter()
    import_in_batches(db, out)
elif what == 'baseline':
    db = pclasses.open(src, read_only=True)
    db.open().root()['tree']
    t0 = time.perf_counter()
else:
    db = pclasses.open(src)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    t0 = time.perf_counter()
    pclasses.import_subtree(conn, out, into=conn.root())
    tm.commit()
t = time.perf_counter() - t0
db.close()
ru = resource.getrusage(resource.RUSAGE_SELF)
print(t, ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime)
"""


def build(n: int) -> Path:
    """A packed FileStorage whose ``root['tree']`` holds about ``n`` records."""
    import transaction
    import ZODB
    from persistent.mapping import PersistentMapping
    from ZODB.FileStorage import FileStorage

    path = CACHE / f"groups-{n}.fs"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    db = ZODB.DB(FileStorage(str(path) + ".part"))
    conn = db.open()
    tree = conn.root()["tree"] = PersistentMapping()
    for g in range(max(n // 1000, 1)):
        group = tree[f"g{g}"] = PersistentMapping()
        for i in range(min(n, 1000)):
            group[f"i{i}"] = PersistentMapping(n=g * 1000 + i, label="item")
        transaction.commit()
        conn.cacheMinimize()
    conn.close()
    db.close()
    os.replace(str(path) + ".part", path)
    for suffix in (".index", ".lock", ".tmp"):
        Path(str(path) + ".part" + suffix).unlink(missing_ok=True)
    return path


def _anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(src_tree: str, what: str, db: str, out: str) -> tuple[float, ...]:
    """(wall seconds, peak RSS MB, CPU seconds, peak anonymous RSS MB) of
    one child process.  The peak RSS counts the pages of memory-mapped
    files the process touched (the census and export read a FileStorage
    through a map), which the kernel drops under pressure; the anonymous
    peak (sampled every 50 ms from /proc) is the process's own memory."""
    import time

    env = {**os.environ, "PYTHONPATH": src_tree}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, what, db, out],
                            stdout=subprocess.PIPE, text=True, env=env)
    anon = 0
    while proc.poll() is None:
        anon = max(anon, _anon_kb(proc.pid))
        time.sleep(0.05)
    text, _err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{what} failed in {src_tree}")
    got = text.split()
    return float(got[0]), float(got[1]), float(got[2]), anon / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="200000")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--batched", action="store_true",
                    help="also measure import_in_batches (trees that have it)")
    ap.add_argument("--src", action="append", default=[],
                    help="a source tree to measure (repeatable; default: this one)")
    args = ap.parse_args()
    trees = [os.path.abspath(s) for s in args.src] or [
        str(Path(__file__).resolve().parent.parent / "src")]
    for n in (int(x) for x in args.sizes.split(",")):
        db = str(build(n))
        kinds = ["baseline", "export", "import"] + (["batched"] if args.batched else [])
        got: dict[str, dict[str, list[tuple[float, ...]]]] = {
            t: {k: [] for k in kinds} for t in trees}
        for r in range(args.runs):
            for tree in trees if r % 2 == 0 else trees[::-1]:
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "x.export")
                    got[tree]["baseline"].append(child(tree, "baseline", db, out))
                    got[tree]["export"].append(child(tree, "export", db, out))
                    got[tree]["import"].append(
                        child(tree, "import", os.path.join(tmp, "dst.fs"), out))
                    if args.batched and os.path.exists(
                            os.path.join(tree, "pclasses", "transfer", "batched.py")):
                        got[tree]["batched"].append(
                            child(tree, "batched", os.path.join(tmp, "dst2.fs"), out))
        for tree in trees:
            row: dict[str, object] = {"records": n, "src": tree}
            for what in kinds:
                if not got[tree][what]:
                    continue
                xs = got[tree][what]
                row[f"{what}_s"] = round(statistics.median(x[0] for x in xs), 2)
                row[f"{what}_cpu_s"] = round(statistics.median(x[2] for x in xs), 2)
                row[f"{what}_peak_mb"] = round(statistics.median(x[1] for x in xs), 1)
                row[f"{what}_peak_anon_mb"] = round(statistics.median(x[3] for x in xs), 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
