"""``bench/plots.py``: the benchmark plots drawn from the results ``run_all.py`` keeps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

RESULTS = [
    {"script": "bench_census.py", "args": [], "records": 11680,
     "result": {"items": 10000, "zodbverify_s": 6.0, "pclasses_s": 3.0, "pclasses_1job_s": 4.0}},
    {"script": "bench_census.py", "args": [], "records": 116821,
     "result": {"items": 100000, "zodbverify_s": 60.0, "pclasses_s": 20.0,
                "pclasses_1job_s": 30.0}},
    {"script": "bench_repair.py", "args": [],
     "result": {"items": 10000, "zodbupdate_s": 9.0, "pclasses_s": 3.0}},
    {"script": "bench_transfer.py", "args": [],
     "result": {"items": 10000, "zodb_export_s": 1.0, "zodb_import_s": 2.0,
                "pclasses_export_s": 0.5, "pclasses_import_s": 1.0}},
    {"script": "bench_tree.py", "args": [],
     "result": {"items": 10000, "check": {"pclasses_s": 1.0, "zc.zodbdgc_s": 3.0},
                "gc": {"pclasses_s": 1.0, "zc.zodbdgc_s": 2.0}}},
]


def test_one_png_per_comparison(tmp_path):
    """From kept results, plots.py writes a PNG for census, rename,
    export/import, refs-check and gc."""
    pytest.importorskip("matplotlib", reason="matplotlib is in the bench extra")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULTS))
    out = tmp_path / "docs"
    subprocess.run([sys.executable, str(BENCH / "plots.py"), str(results), "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["bench-census.png", "bench-export-import.png", "bench-gc.png",
                     "bench-refs-check.png", "bench-rename.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_per_record():
    """The plotted figure is microseconds per record, by records (last run wins)."""
    sys.path.insert(0, str(BENCH))
    try:
        import plots
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("plots", None)
    got = plots.series(RESULTS, "bench_census.py", lambda r: r.get("zodbverify_s"))
    assert got == [(11680, pytest.approx(6.0 / 11680 * 1e6)),
                   (116821, pytest.approx(60.0 / 116821 * 1e6))]
    rename = plots.series(RESULTS, "bench_repair.py", lambda r: r.get("pclasses_s"))
    assert rename == [(round(10000 * plots.RECORDS_PER_ITEM),
                       pytest.approx(3.0 / round(10000 * plots.RECORDS_PER_ITEM) * 1e6))]
