"""Cost of intrinsic references (issue 13), beside a plain attribute.

* reading a reference the connection resolved before, against reading a
  plain attribute holding the object (target: at most 30x);
* reading uncached (the connection's cache of resolved targets dropped
  before every read) at depth 6 (target: at most 10 µs);
* assigning (target: at most 10 µs);
* removing a target with 10,000 referrers (mode none: allowed; mode always:
  refused) and a folder of 10,000 unreferenced objects (target: at most 1 ms,
  flat: also measured at 1,000);
* a commit of 10,000 objects holding no references, with and without the
  reference layer in use in the database (target: at most 1.05x);
* ``verify_refs`` against ``scan_xrefs`` over the 100,000-item FileStorage of
  ``_common.build_storage`` (target: at most 2x).

Prints one JSON line.  ``--quick`` uses smaller sizes.  ``--instructions``
counts instructions per assignment under valgrind's callgrind (pclasses, a
plain attribute and, with ``GOCEPT_REFERENCE_PATH``, gocept.reference): a
figure that a machine shared with other work does not disturb.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage

import pclasses
from _common import median
from refmodel import PlainSource, Source, Target


def per_call(fn, n: int, repeat: int = 7) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` runs of ``n`` calls."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        runs.append((time.perf_counter() - t0) / n)
    return median(runs)


def deep_world(conn, depth: int = 6):
    root = conn.root()
    folder = pclasses.place(root, "f0", pclasses.Folder())
    for level in range(1, depth - 1):
        folder = pclasses.place(folder, f"f{level}", pclasses.Folder())
    targets = [pclasses.place(folder, f"t{i}", Target()) for i in range(2)]
    sources = pclasses.place(root, "sources", pclasses.Folder())
    src = pclasses.place(sources, "s", Source())
    plain = pclasses.place(sources, "p", PlainSource())
    src.ref = targets[0]
    plain.ref = targets[0]
    transaction.commit()
    return targets, src, plain


def bench_reads_and_assign(tmp: Path) -> dict:
    db = ZODB.DB(FileStorage(str(tmp / "reads.fs")))
    conn = db.open()
    targets, src, plain = deep_world(conn)
    assert pclasses.refs.key_of(targets[0]).count("/") == 6

    def plain_read(n):
        for _ in range(n):
            _ = plain.ref

    def cached_read(n):
        for _ in range(n):
            _ = src.ref

    registry = pclasses.refs.registry_of(conn)

    def uncached_read(n):
        d = registry.__dict__
        for _ in range(n):
            d.pop("_v_cache", None)
            _ = src.ref

    t0, t1 = targets

    def assign(n):
        for _ in range(n // 2):
            src.ref = t1
            src.ref = t0

    _ = src.ref  # warm
    out = {
        "plain_read_ns": per_call(plain_read, 200_000) * 1e9,
        "cached_read_ns": per_call(cached_read, 200_000) * 1e9,
        "uncached_read_depth6_us": per_call(uncached_read, 20_000) * 1e6,
        "assign_us": per_call(assign, 10_000) * 1e6,
    }
    out["cached_read_ratio"] = out["cached_read_ns"] / out["plain_read_ns"]
    transaction.abort()
    conn.close()
    db.close()
    return out


def bench_removals(tmp: Path, sizes=(1_000, 10_000)) -> dict:
    out = {}
    for n in sizes:
        db = ZODB.DB(FileStorage(str(tmp / f"rm{n}.fs")))
        conn = db.open()
        root = conn.root()
        master = pclasses.place(root, "master", pclasses.Folder())
        hot = pclasses.place(master, "hot", Target())
        warm = pclasses.place(master, "warm", Target())
        sources = pclasses.place(root, "sources", pclasses.Folder())
        bulk = pclasses.place(root, "bulk", pclasses.Folder())
        for i in range(n):
            s = pclasses.place(sources, f"s{i}", Source())
            s.loose = hot
            s.ref = warm
            pclasses.place(bulk, f"b{i}", Target())
        transaction.commit()

        def timed(fn, runs: int = 5) -> float:  # noqa: B023 - called in this iteration
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                try:
                    fn()
                except pclasses.ReferentialIntegrityError:
                    pass
                times.append(time.perf_counter() - t0)
                transaction.abort()
            return median(times)

        none_mode = timed(lambda: pclasses.remove(master, "hot"))  # noqa: B023
        refused = timed(lambda: pclasses.remove(master, "warm"))  # noqa: B023
        folder = timed(lambda: pclasses.remove(root, "bulk"))  # noqa: B023
        out[n] = {"remove_target_none_mode_ms": none_mode * 1e3,
                  "remove_target_always_refused_ms": refused * 1e3,
                  "remove_folder_unreferenced_ms": folder * 1e3}
        conn.close()
        db.close()
    return out


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


def bench_commit(tmp: Path, n: int, rounds: int) -> dict:
    plain = ZODB.DB(FileStorage(str(tmp / "plain.fs")))
    used = ZODB.DB(FileStorage(str(tmp / "used.fs")))
    with used.transaction() as conn:  # the reference layer in use there
        root = conn.root()
        t = pclasses.place(root, "t", Target())
        pclasses.place(root, "s", Source()).ref = t
    off, on = [], []
    for _ in range(rounds):
        off.append(commit_batch(plain, n))
        on.append(commit_batch(used, n))
    plain.close()
    used.close()
    return {"commit_without_s": median(off), "commit_with_s": median(on),
            "commit_ratio": median([b / a for a, b in zip(off, on)])}


def bench_verify(n: int) -> dict:
    from _common import build_storage
    from pclasses.refs.verify import verify_refs
    from pclasses.xrefs import scan_xrefs

    path = build_storage(n)
    db = ZODB.DB(FileStorage(str(path), read_only=True))
    xs, vs = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        scan_xrefs(db)
        xs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = verify_refs(db)
        vs.append(time.perf_counter() - t0)
    db.close()
    return {"xrefs_s": median(xs), "verify_s": median(vs), "verify_ratio": median(vs) / median(xs),
            "records": report.records}


def bench_gocept() -> dict | None:
    """gocept.reference 1.0 in its own process, if ``GOCEPT_REFERENCE_PATH``
    names a directory it is installed in (``pip install --target DIR
    gocept.reference==1.0``)."""
    import os
    import subprocess
    import sys

    where = os.environ.get("GOCEPT_REFERENCE_PATH")
    if not where:
        return None
    env = dict(os.environ, PYTHONPATH=where)
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_refs_gocept.py"))],
                          capture_output=True, text=True, env=env, timeout=600)
    if done.returncode:
        return {"gocept_error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def assign_only(n: int, plain: bool) -> None:
    """``n`` assignments (for instruction counts), after the set-up."""
    with tempfile.TemporaryDirectory() as d:
        db = ZODB.DB(FileStorage(str(Path(d) / "a.fs")))
        conn = db.open()
        (t0, t1), src, plain_src = deep_world(conn)
        holder = plain_src if plain else src
        holder.ref = t1
        holder.ref = t0
        for _ in range(n // 2):
            holder.ref = t1
            holder.ref = t0
        transaction.abort()
        conn.close()
        db.close()


def _callgrind(cmd: list[str], env: dict[str, str]) -> int:
    import subprocess

    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           *cmd], capture_output=True, text=True, env=env, timeout=1800)
    for line in done.stderr.splitlines():
        if "Collected" in line:
            return int(line.split()[-1])
    raise RuntimeError(done.stderr[-500:])


def bench_instructions(n: int = 4000) -> dict:
    """Instructions per assignment (callgrind; the set-up subtracted)."""
    import os
    import sys

    here = Path(__file__)
    env = dict(os.environ)
    out = {}
    for label, extra in (("pclasses", []), ("plain_attribute", ["--plain"])):
        counts = [_callgrind([sys.executable, str(here), "--assign-only", str(k), *extra], env)
                  for k in (0, n)]
        out[f"{label}_assign_instructions"] = (counts[1] - counts[0]) // n
    where = os.environ.get("GOCEPT_REFERENCE_PATH")
    if where:
        genv = dict(env, PYTHONPATH=where)
        counts = [_callgrind([sys.executable, str(here.with_name("bench_refs_gocept.py"))],
                             dict(genv, BENCH_ASSIGN_ONLY=str(k))) for k in (0, n)]
        out["gocept_assign_instructions"] = (counts[1] - counts[0]) // n
        out["assign_instructions_ratio"] = (out["pclasses_assign_instructions"]
                                            / out["gocept_assign_instructions"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--assign-only", type=int, default=None)
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    if args.assign_only is not None:
        assign_only(args.assign_only, args.plain)
        return
    if args.instructions:
        print(json.dumps({"bench": "refs-instructions", **bench_instructions()}))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"bench": "refs"}
        result.update(bench_reads_and_assign(tmp))
        gocept = bench_gocept()
        if gocept:
            result.update(gocept)
        result["removals"] = bench_removals(tmp, (100, 1_000) if args.quick else (1_000, 10_000))
        result.update(bench_commit(tmp, 1_000 if args.quick else 10_000, 3 if args.quick else 7))
        result.update(bench_verify(10_000 if args.quick else 100_000))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
