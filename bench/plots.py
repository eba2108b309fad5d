"""Plots of the side-by-side benchmarks: time per record against records.

Reads the results ``bench/run_all.py`` keeps (``var/bench/results.json``)
and writes one PNG per comparison under ``docs/``: census (zodbverify),
rename (zodbupdate), export/import (ZODB's exportFile/importFile),
refs-check and gc (zc.zodbdgc).  The x axis is logarithmic; a tool whose
time grows linearly with the data draws a flat line, one that grows faster
draws a rising line.

    python bench/plots.py [RESULTS ...] [--out DIR]

Several results files are read as one (a later run of the same size wins).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Records per item of the benchmarks' data set (bench/_common.py) when the
#: results do not say.
RECORDS_PER_ITEM = 1.168

Getter = Callable[[dict[str, Any]], float | None]

#: name -> (title, script, x label, [(series label, seconds getter, style)])
PLOTS: dict[str, tuple[str, str, str, list[tuple[str, Getter, str]]]] = {
    "census": ("Class census: pclasses classes vs zodbverify -f", "bench_census.py", "records",
               [("zodbverify -f", lambda r: r.get("zodbverify_s"), "s--"),
                ("pclasses classes", lambda r: r.get("pclasses_s"), "o-"),
                ("pclasses classes, 1 process", lambda r: r.get("pclasses_1job_s"), "o:")]),
    "rename": ("Offline rename: pclasses vs zodbupdate", "bench_repair.py", "records",
               [("zodbupdate", lambda r: r.get("zodbupdate_s"), "s--"),
                ("pclasses rename_classes", lambda r: r.get("pclasses_s"), "o-")]),
    "export-import": ("Export + import: pclasses vs ZODB exportFile/importFile",
                      "bench_transfer.py", "records",
                      [("ZODB", lambda r: _sum(r, "zodb_export_s", "zodb_import_s"), "s--"),
                       ("pclasses", lambda r: _sum(r, "pclasses_export_s",
                                                   "pclasses_import_s"), "o-")]),
    "refs-check": ("Reference check of a two-database tree: pclasses vs zc.zodbdgc",
                   "bench_tree.py", "objects (items over two databases)",
                   [("zc.zodbdgc check", lambda r: _get(r, "check", "zc.zodbdgc_s"), "s--"),
                    ("pclasses check_refs", lambda r: _get(r, "check", "pclasses_s"), "o-")]),
    "gc": ("Garbage analysis of a two-database tree: pclasses vs zc.zodbdgc",
           "bench_tree.py", "objects (items over two databases)",
           [("zc.zodbdgc gc", lambda r: _get(r, "gc", "zc.zodbdgc_s"), "s--"),
            ("pclasses collect_garbage (dry run)", lambda r: _get(r, "gc", "pclasses_s"),
             "o-")]),
}


def _sum(r: dict[str, Any], a: str, b: str) -> float | None:
    if r.get(a) is None or r.get(b) is None or r.get("defaults"):
        return None
    return float(r[a]) + float(r[b])


def _get(r: dict[str, Any], group: str, key: str) -> float | None:
    value = (r.get(group) or {}).get(key)
    return None if value is None else float(value)


def series(results: list[dict[str, Any]], script: str,
           get: Getter) -> list[tuple[int, float]]:
    """``(records, microseconds per record)`` for one tool, by size (last run wins)."""
    points: dict[int, float] = {}
    for entry in results:
        r = entry["result"]
        if entry["script"] != script or not isinstance(r.get("items"), int):
            continue
        seconds = get(r)
        if seconds is None:
            continue
        records = entry.get("records") or (
            r["items"] if script == "bench_tree.py" else round(r["items"] * RECORDS_PER_ITEM))
        points[int(records)] = seconds / records * 1e6
    return sorted(points.items())


def plot(results: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, (title, script, xlabel, lines) in PLOTS.items():
        drawn = [(label, series(results, script, get), style) for label, get, style in lines]
        drawn = [d for d in drawn if d[1]]
        if not drawn:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
        for label, points, style in drawn:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, label=label, linewidth=1.8, markersize=5)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("microseconds per " + ("object" if xlabel.startswith("objects")
                                             else "record"))
        ax.set_title(title, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=9)
        fig.tight_layout()
        path = out / f"bench-{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    from _common import CACHE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", type=Path, default=[CACHE / "results.json"])
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs")
    args = ap.parse_args()
    results = [entry for path in args.results for entry in json.loads(path.read_text())]
    args.out.mkdir(parents=True, exist_ok=True)
    for path in plot(results, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
