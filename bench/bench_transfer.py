"""Subtree export + import: pclasses vs ZODB's ``exportFile`` + ``importFile``.

``--defaults`` (what issue 12 asks to hold for what a user gets): one
process per run opens both databases, exports the subtree to a file object
with ``export_subtree``'s defaults, imports it with ``import_subtree``'s
defaults into the second database and commits; ZODB the same with
``exportFile`` + ``importFile`` + commit.  Runs alternate; the ratio is
the median of the paired ratios.

For each size, the same packed FileStorage subtree (``root['tree']``, about
1.168 records per item) is exported and imported into a fresh FileStorage
(committed), once with ZODB's ExportImport and once with
``pclasses.export_subtree`` + ``import_subtree``, in separate processes,
alternating.  Reports seconds per direction, the ratio ZODB / pclasses for
the round trip, and how pclasses' time scales from 100k to 300k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _common import HERE, build_storage, median

ZODB_SCRIPT = """
import sys, time, os
import transaction, ZODB
from ZODB.FileStorage import FileStorage
src, out, dst = sys.argv[1:4]
db = ZODB.DB(FileStorage(src, read_only=True))
conn = db.open()
oid = conn.root()['tree']._p_oid
t0 = time.perf_counter()
with open(out, 'wb') as f:
    conn.exportFile(oid, f)
t1 = time.perf_counter()
db.close()
db2 = ZODB.DB(FileStorage(dst))
tm = transaction.TransactionManager()
c2 = db2.open(tm)
t2 = time.perf_counter()
obj = c2.importFile(out)
c2.root()['imported'] = obj
tm.commit()
t3 = time.perf_counter()
db2.close()
print(t1 - t0, t3 - t2)
"""

PCLASSES_SCRIPT = """
import sys, time
import transaction
import pclasses
import pbmodel  # the application's classes, imported as the application would
src, out, dst = sys.argv[1:4]
db = pclasses.open(src, read_only=True)
conn = db.open()
t0 = time.perf_counter()
pclasses.export_subtree(conn, conn.root()['tree'], out, name='imported')
t1 = time.perf_counter()
db.close()
db2 = pclasses.open(dst)
tm = transaction.TransactionManager()
c2 = db2.open(tm)
t2 = time.perf_counter()
pclasses.import_subtree(c2, out, into=c2.root())
tm.commit()
t3 = time.perf_counter()
db2.close()
print(t1 - t0, t3 - t2)
"""


DEFAULTS_SCRIPT = """
import sys, time, tempfile
import transaction, ZODB
import pbmodel  # the application's classes, imported as the application would
from ZODB.FileStorage import FileStorage
who, src, dst = sys.argv[1:4]
if who == 'zodb':
    db, db2 = ZODB.DB(FileStorage(src, read_only=True)), ZODB.DB(FileStorage(dst))
else:
    import pclasses
    db, db2 = pclasses.open(src, read_only=True), pclasses.open(dst)
conn = db.open()
tm = transaction.TransactionManager()
c2 = db2.open(tm)
tree = conn.root()['tree']
t0 = time.perf_counter()
c0 = time.process_time()
f = tempfile.TemporaryFile()
if who == 'zodb':
    conn.exportFile(tree._p_oid, f)
    f.seek(0)
    obj = c2.importFile(f)
else:
    pclasses.export_subtree(conn, tree, f)
    f.seek(0)
    obj = pclasses.import_subtree(c2, f)
c2.root()['imported'] = obj
tm.commit()
print(time.perf_counter() - t0, time.process_time() - c0)
db.close()
db2.close()
"""


def run_defaults(who: str, src: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process) of one run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", DEFAULTS_SCRIPT, who, src, os.path.join(tmp, "dst.fs")],
            check=True, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(HERE), os.environ.get("PYTHONPATH", "")])}).stdout.split()
        return float(out[0]), float(out[1])


def defaults(n: int, runs: int) -> dict[str, object]:
    """Paired, alternating runs; the wall-clock ratio is what issue 12 asks
    for, the CPU ratio (the processes' own CPU time) is the same comparison
    with less noise on a busy machine."""
    src = str(build_storage(n))
    ours, peer, ratios, cpu_ratios = [], [], [], []
    for i in range(runs):
        order = ("pclasses", "zodb") if i % 2 == 0 else ("zodb", "pclasses")
        got = {who: run_defaults(who, src) for who in order}
        ours.append(got["pclasses"])
        peer.append(got["zodb"])
        ratios.append(got["zodb"][0] / got["pclasses"][0])
        cpu_ratios.append(got["zodb"][1] / got["pclasses"][1])
    return {"items": n, "defaults": True,
            "pclasses_s": round(median([w for w, _c in ours]), 3),
            "zodb_s": round(median([w for w, _c in peer]), 3),
            "ratio_zodb_over_pclasses": round(median(ratios), 2),
            "ratios": [round(r, 2) for r in ratios],
            "pclasses_cpu_s": round(median([c for _w, c in ours]), 3),
            "zodb_cpu_s": round(median([c for _w, c in peer]), 3),
            "cpu_ratio_zodb_over_pclasses": round(median(cpu_ratios), 2)}


def run(script: str, src: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", script, src, os.path.join(tmp, "x.exp"),
             os.path.join(tmp, "dst.fs")],
            check=True, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(HERE)}).stdout.split()
        return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000,300000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--defaults", action="store_true",
                    help="one process per run, the library's defaults (see above)")
    args = ap.parse_args()
    if args.defaults:
        got = {}
        for n in (int(x) for x in args.sizes.split(",")):
            got[n] = defaults(n, args.runs)
            print(json.dumps(got[n]), flush=True)
        if 100000 in got and 300000 in got:
            for key in ("pclasses_s", "pclasses_cpu_s", "zodb_s", "zodb_cpu_s"):
                print(json.dumps({f"scaling_300k_over_100k_{key}": round(
                    float(str(got[300000][key])) / float(str(got[100000][key])), 2)}))
        return
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        src = str(build_storage(n))
        ours, peer = [], []
        for i in range(args.runs):
            order = (("pclasses", PCLASSES_SCRIPT), ("zodb", ZODB_SCRIPT))
            if i % 2:
                order = order[::-1]
            for who, script in order:
                (ours if who == "pclasses" else peer).append(run(script, src))
        o_exp, o_imp = median([x[0] for x in ours]), median([x[1] for x in ours])
        p_exp, p_imp = median([x[0] for x in peer]), median([x[1] for x in peer])
        row = {
            "items": n,
            "zodb_export_s": round(p_exp, 3), "zodb_import_s": round(p_imp, 3),
            "pclasses_export_s": round(o_exp, 3), "pclasses_import_s": round(o_imp, 3),
            "round_trip_ratio_zodb_over_pclasses": round((p_exp + p_imp) / (o_exp + o_imp), 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    by = {r["items"]: r for r in rows}
    if 100000 in by and 300000 in by:
        t = lambda r: r["pclasses_export_s"] + r["pclasses_import_s"]  # noqa: E731
        print(json.dumps({"pclasses_scaling_300k_over_100k":
                          round(t(by[300000]) / t(by[100000]), 2),
                          "zodb_scaling_300k_over_100k": round(
                              (by[300000]["zodb_export_s"] + by[300000]["zodb_import_s"])
                              / (by[100000]["zodb_export_s"] + by[100000]["zodb_import_s"]), 2)}))


if __name__ == "__main__":
    main()
