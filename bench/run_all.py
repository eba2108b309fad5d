"""Run every benchmark, keep their JSON results, and plot the side-by-side ones.

Each benchmark prints one JSON line per result (see docs/benchmarks.md);
they are echoed and also kept, with the script and its arguments, in
``var/bench/results.json``.  The benchmarks that compare pclasses with a
peer (census, rename, export/import, refs-check) run at several sizes so
that ``bench/plots.py`` can draw time per record against the number of
records (``docs/bench-*.png``), which it does at the end.

    python bench/run_all.py                         # everything (make bench)
    python bench/run_all.py --only-scaling --sizes 3000,10000,30000 --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: Benchmarks run once, at their own default size.
ONCE = ("bench_registry.py", "bench_skim.py", "bench_analyze.py", "bench_xrefs.py",
        "bench_sql.py")


def run(script: str, args: list[str]) -> list[dict[str, Any]]:
    """Run one benchmark, echo its output, return the JSON objects it printed."""
    print(f"# {script} {' '.join(args)}", flush=True)
    proc = subprocess.Popen([sys.executable, str(HERE / script), *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    found = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        text = line.strip()
        if text.startswith("{"):
            try:
                found.append(json.loads(text))
            except ValueError:
                pass
    if proc.wait():
        raise SystemExit(f"{script} failed with exit status {proc.returncode}")
    return [{"script": script, "args": args, "result": r} for r in found]


def records_of(items: int) -> int | None:
    """Records of the cached data set of ``items`` items (None if not built)."""
    from _common import CACHE

    path = CACHE / f"items-{items}.fs"
    if not path.exists():
        return None
    from ZODB.FileStorage import FileStorage

    storage = FileStorage(str(path), read_only=True)
    try:
        return len(storage)
    finally:
        storage.close()


def main() -> None:
    from _common import CACHE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=os.environ.get("PCLASSES_BENCH_SIZES",
                                                      "10000,30000,100000"),
                    help="items for census, rename and refs-check (comma separated)")
    ap.add_argument("--transfer-sizes", default=None,
                    help="items for export/import [default: 10000,100000,300000]")
    ap.add_argument("--runs", type=int, default=3, help="paired runs per size")
    ap.add_argument("--only-scaling", action="store_true",
                    help="only the side-by-side benchmarks that are plotted")
    ap.add_argument("--results", type=Path, default=CACHE / "results.json")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    runs = ["--runs", str(args.runs)]
    results: list[dict[str, Any]] = []
    if not args.only_scaling:
        for script in ONCE:
            results += run(script, [])
    for n in sizes:
        results += run("bench_census.py", ["-n", str(n), *runs])
        results += run("bench_repair.py", ["-n", str(n), *runs])
        results += run("bench_tree.py", ["--items", str(n), "--rounds", str(args.runs)])
    transfer = ["--sizes", args.transfer_sizes] if args.transfer_sizes else []
    results += run("bench_transfer.py", [*transfer, *runs])
    for entry in results:
        items = entry["result"].get("items")
        if isinstance(items, int) and entry["script"] != "bench_tree.py":
            entry["records"] = records_of(items)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    print(f"# results in {args.results}", flush=True)
    if not args.no_plots:
        subprocess.run([sys.executable, str(HERE / "plots.py"), str(args.results)], check=True)


if __name__ == "__main__":
    main()
