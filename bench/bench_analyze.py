"""Micro-benchmark of analyze (C and Python) beside the C skim and scan_record.

Writes a few thousand records with ZODB (the data set of bench_skim.py: Items
in an OOBTree, PersistentMappings, buckets), checks that both analyze
implementations agree and that their references match ``scan_record``, then
times one pass over all records per implementation (best of several rounds)
and prints one JSON line: microseconds per record for each, overall and for
the records under 300 bytes (the typical record is about 200 bytes).

    python bench/bench_analyze.py [--items N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_skim import make_records, per_record  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    import importlib

    skim_mod = importlib.import_module("pclasses.record.analyze")
    from pclasses.record.reader import scan_record

    records = make_records(args.items)
    small = [d for d in records if len(d) < 300]
    # Same answers before timing anything.
    for d in records:
        got = skim_mod.analyze_py(d)
        if skim_mod.HAVE_C_ANALYZE:
            assert skim_mod.analyze_c(d) == got
        refs = scan_record(d).references
        assert [p.kind for p in got.pids] == [r.kind for r in refs]
        assert [d[p.oid_start : p.oid_start + p.oid_length] for p in got.pids] == [
            r.oid for r in refs
        ]

    impls = {"analyze_python": skim_mod.analyze_py, "scan_record": scan_record}
    if skim_mod.HAVE_C_ANALYZE:
        impls = {"analyze_c": skim_mod.analyze_c, **impls}
    if skim_mod.HAVE_C:
        impls = {"skim_c": skim_mod.skim_c, **impls}

    result: dict[str, object] = {
        "bench": "analyze",
        "have_c": skim_mod.HAVE_C_ANALYZE,
        "records": len(records),
        "median_record_bytes": statistics.median(len(d) for d in records),
        "max_record_bytes": max(len(d) for d in records),
        "small_records": len(small),
        "median_small_record_bytes": statistics.median(len(d) for d in small)
        if small
        else None,
        "ok_to_patch_records": sum(skim_mod.analyze(d).ok_to_patch for d in records),
    }
    for name, fn in impls.items():
        fast = name in ("analyze_c", "skim_c")
        rounds = args.rounds if fast else max(2, args.rounds // 3)
        result[f"{name}_us_per_record"] = round(
            per_record(fn, records, rounds) * 1e6, 3
        )
        if small:
            result[f"{name}_us_per_small_record"] = round(
                per_record(fn, small, rounds) * 1e6, 3
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
