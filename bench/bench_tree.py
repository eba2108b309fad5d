"""Trees of databases (issue 14): refs-check and gc against zc.zodbdgc, the
cost of a warm remote reference, and the cost of a commit without remote
references with and without the feature.

The reference check and the gc read the same two-database FileStorage tree
(``--items`` objects spread over a root database and a child, linked by
remote references, plain BTrees and PersistentMappings) side by side in one
run: ``pclasses.check_refs`` / ``pclasses.collect_garbage`` (dry run, days=0)
against zc.zodbdgc's ``check`` / ``gc`` (the functions behind
``multi-zodb-check-refs`` / ``multi-zodb-gc``), on the ZConfig
multi-database naming both files.  There is no garbage, so zc.zodbdgc's gc
only analyses too.  Times include opening and closing the databases.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path


def build(directory: Path, items: int) -> tuple[Path, Path]:
    import transaction
    from BTrees.OOBTree import OOBTree
    from persistent.mapping import PersistentMapping

    import pclasses

    root_path, child_path = directory / "root.fs", directory / "a.fs"
    db = pclasses.open(root_path, tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    handle = tree.add(conn, "a", child_path)
    croot = handle.root()
    half = items // 2
    ctree = croot["items"] = OOBTree()
    rtree = conn.root()["items"] = OOBTree()
    tm.commit()
    for start in range(0, half, 5000):
        for i in range(start, min(start + 5000, half)):
            ctree[i] = PersistentMapping({"n": i})
        tm.commit()
    targets = list(ctree.values())
    for start in range(0, items - half, 5000):
        for i in range(start, min(start + 5000, items - half)):
            m = rtree[i] = PersistentMapping({"n": i})
            conn.add(m)
            if i % 10 == 0:
                m["ref"] = pclasses.get_reference(m, targets[i % len(targets)])
        tm.commit()
    conn.close()
    tree.close()
    conf = directory / "multi.conf"
    conf.write_text(f"<zodb unnamed>\n  <filestorage>\n    path {root_path}\n  </filestorage>\n"
                    f"</zodb>\n<zodb a>\n  <filestorage>\n    path {child_path}\n"
                    "  </filestorage>\n</zodb>\n")
    return root_path, conf


def ours_check(root: Path) -> float:
    import pclasses

    t0 = time.perf_counter()
    db = pclasses.open(root, tree=True, read_only=True)
    report = pclasses.check_refs(db)
    pclasses.tree_of(db).close()
    assert report.ok, report.to_dict()["dangling"][:3]
    return time.perf_counter() - t0


def ours_gc(root: Path) -> float:
    import pclasses

    t0 = time.perf_counter()
    db = pclasses.open(root, tree=True, read_only=True)
    report = pclasses.collect_garbage(db, days=0)
    pclasses.tree_of(db).close()
    assert report.count == 0, report.count
    return time.perf_counter() - t0


def theirs_check(conf: Path) -> float:
    import zc.zodbdgc

    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        zc.zodbdgc.check(str(conf))
    took = time.perf_counter() - t0
    assert "!!!" not in out.getvalue(), out.getvalue()[:500]
    return took


def theirs_gc(conf: Path) -> float:
    import zc.zodbdgc

    t0 = time.perf_counter()
    bad = zc.zodbdgc.gc(str(conf), days=0, return_bad=True)
    took = time.perf_counter() - t0
    assert not bad, bad[:5]
    return took


def _records(root: Path) -> dict[str, int]:
    import pclasses
    from pclasses.tree.walk import open_all

    db = pclasses.open(root, tree=True, read_only=True)
    databases, _ = open_all(db)
    counts = {name: len(each.storage) for name, each in databases.items()}
    pclasses.tree_of(db).close()
    return counts


def warm_ref(directory: Path) -> float:
    """Seconds per warm ``ref()`` call (median of 5 runs of 100,000 calls)."""
    import transaction

    import pclasses

    db = pclasses.open(directory / "root.fs", tree=True)
    conn = db.open(transaction.TransactionManager())
    ref = conn.root()["items"][0]["ref"]
    ref()
    runs = timeit.repeat(ref, number=100_000, repeat=5)
    conn.close()
    pclasses.tree_of(db).close()
    return statistics.median(runs) / 100_000


def commit_ratio(directory: Path, rounds: int) -> float:
    """Ratio of the median commit time of 200 changed objects in a database
    opened with ``tree=True`` over the same commit in one opened without the
    feature; both databases are open at once and their commits alternate."""
    import transaction
    from persistent.mapping import PersistentMapping

    import pclasses

    sides = []
    for tree in (False, True):
        db = pclasses.open(directory / f"commit-{tree}.fs", tree=tree)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        objs = [PersistentMapping({"i": i}) for i in range(200)]
        conn.root()["objs"] = objs
        tm.commit()
        sides.append((db, tm, objs, []))
    for k in range(40 * rounds):
        for _db, tm, objs, took in sides:
            for o in objs:
                o["i"] = k
            t0 = time.perf_counter()
            tm.commit()
            took.append(time.perf_counter() - t0)
    for db, tm, _objs, _took in sides:
        tm.abort()
        db.close()
    return statistics.median(sides[1][3]) / statistics.median(sides[0][3])


_CHILD_RUNS = {
    "pclasses:check": lambda d: ours_check(d / "root.fs"),
    "pclasses:gc": lambda d: ours_gc(d / "root.fs"),
    "zc.zodbdgc:check": lambda d: theirs_check(d / "multi.conf"),
    "zc.zodbdgc:gc": lambda d: theirs_gc(d / "multi.conf"),
    "baseline": lambda d: _baseline(d),
}


def _baseline(directory: Path) -> float:
    """Import both tools and open (then close) the tree: the memory every run starts from."""
    import zc.zodbdgc  # noqa: F401

    import pclasses
    from pclasses.tree.walk import open_all

    db = pclasses.open(directory / "root.fs", tree=True, read_only=True)
    open_all(db)
    pclasses.tree_of(db).close()
    return 0.0


def _status() -> dict[str, int]:
    """This process's VmRSS / VmHWM (peak) / RssAnon / RssFile in kB (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def _traced(run: str, directory: Path) -> float:
    """Peak of Python allocations (MB) during the library call alone: the
    databases are opened (indexes loaded) before tracing starts."""
    import tracemalloc

    import pclasses
    from pclasses.tree.walk import open_all

    db = pclasses.open(directory / "root.fs", tree=True, read_only=True)
    open_all(db)
    tracemalloc.start()
    if run == "pclasses:check":
        pclasses.check_refs(db)
    else:
        pclasses.collect_garbage(db, days=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    pclasses.tree_of(db).close()
    return peak / 2**20


def _child(run: str, directory: str, trace: bool) -> None:
    """One run in this (fresh) process: the peaks of its resident memory
    (all, anonymous: heap, and file-backed: mapped files), sampled every 10
    ms; with ``trace``, tracemalloc's peak of the library call instead."""
    import threading

    if trace:
        print(json.dumps({"traced_peak_mb": round(_traced(run, Path(directory)), 2)}))
        return
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            for key, value in _status().items():
                if key in peaks:
                    peaks[key] = max(peaks[key], value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _CHILD_RUNS[run](Path(directory))
    done.set()
    sampler.join()
    print(json.dumps({
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent
        "peak_rss_mb": round(_status()["VmHWM"] / 1024, 1),
        "anon_peak_mb": round(peaks["RssAnon"] / 1024, 1),
        "file_peak_mb": round(peaks["RssFile"] / 1024, 1),
    }))


def memory(directory: Path) -> dict[str, dict[str, float]]:
    """Peak memory of each run in a fresh process (and of the baseline:
    imports and the databases opened), and tracemalloc's peak of our library
    calls (separate processes: tracing slows a run and costs memory)."""
    import subprocess

    def child(run: str, trace: bool) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--child", run, str(directory)]
        if trace:
            cmd.append("--trace")
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    result: dict[str, dict[str, float]] = {}
    for run in _CHILD_RUNS:
        result[run] = child(run, False)
        if run.startswith("pclasses"):
            result[run].update(child(run, True))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="indented JSON (default: one line)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--child", nargs=2, metavar=("RUN", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.trace)
        return
    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        t0 = time.perf_counter()
        root, conf = build(directory, args.items)
        built = time.perf_counter() - t0
        rows = {"check": ([], []), "gc": ([], [])}
        for _ in range(args.rounds):
            rows["check"][0].append(ours_check(root))
            rows["check"][1].append(theirs_check(conf))
            rows["gc"][0].append(ours_gc(root))
            rows["gc"][1].append(theirs_gc(conf))
        result = {"items": args.items, "build_seconds": round(built, 1)}
        for what, (ours, theirs) in rows.items():
            o, t = statistics.median(ours), statistics.median(theirs)
            result[what] = {"pclasses_s": round(o, 3), "zc.zodbdgc_s": round(t, 3),
                            "speedup": round(t / o, 2)}
        result["records"] = _records(root)
        if not args.no_memory:
            result["memory"] = memory(directory)
        result["warm_ref_us"] = round(warm_ref(directory) * 1e6, 3)
        result["commit_ratio"] = round(commit_ratio(directory, args.rounds), 3)
    print(json.dumps(result, indent=2) if args.json else json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
