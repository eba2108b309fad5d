"""Subtree export + import: pclasses vs ZODB's ``exportFile`` + ``importFile``.

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
pclasses.import_subtree(c2, out, into=c2.root(), savepoint=False)
tm.commit()
t3 = time.perf_counter()
db2.close()
print(t1 - t0, t3 - t2)
"""


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
    args = ap.parse_args()
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
        print(json.dumps({"pclasses_scaling_300k_over_100k": round(t(by[300000]) / t(by[100000]), 2),
                          "zodb_scaling_300k_over_100k": round(
                              (by[300000]["zodb_export_s"] + by[300000]["zodb_import_s"])
                              / (by[100000]["zodb_export_s"] + by[100000]["zodb_import_s"]), 2)}))


if __name__ == "__main__":
    main()
