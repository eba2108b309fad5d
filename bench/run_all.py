"""Run every benchmark and print one JSON line per result (see docs/benchmarks.md)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("bench_registry.py", "bench_census.py", "bench_repair.py", "bench_skim.py",
               "bench_analyze.py", "bench_transfer.py", "bench_xrefs.py",
               "bench_tree.py"):
    subprocess.run([sys.executable, str(HERE / script)], check=True)
