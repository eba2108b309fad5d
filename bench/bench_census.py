"""``pclasses classes`` vs ``zodbverify -f`` over the same FileStorage, as whole processes.

Both read every record of a packed 100k-item FileStorage (about 116,821
records).  zodbverify fully unpickles each record; pclasses reads each
with the safe record reader (nothing executed) and resolves each class
name once.  Runs alternate; medians and the paired ratio are reported,
with pclasses both in its default mode (a large FileStorage is scanned by
one process per CPU, at most 4) and with ``PCLASSES_JOBS=1``.
"""

from __future__ import annotations

import argparse
import json
import os

from _common import HERE, bin_path, build_storage, median, time_process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    path = str(build_storage(args.n))
    env = {"PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    peer = [bin_path("zodbverify"), "-f", path]
    ours = [bin_path("pclasses"), "classes", path, "--json", "--no-progress"]
    zv, pc, pc1 = [], [], []
    for _ in range(args.runs):
        zv.append(time_process(peer, env))
        pc.append(time_process(ours, env))
        pc1.append(time_process(ours, {**env, "PCLASSES_JOBS": "1"}))
    result = {
        "benchmark": "class census vs zodbverify -f (whole processes)",
        "items": args.n,
        "zodbverify_s": round(median(zv), 3),
        "pclasses_s": round(median(pc), 3),
        "pclasses_1job_s": round(median(pc1), 3),
        "speedup": round(median(zv) / median(pc), 2),
        "speedup_1job": round(median(zv) / median(pc1), 2),
        "cpus": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
