"""Peak memory and time of every read-only command, each in a fresh process.

The data set is :func:`_common.build_storage` (``N`` items) plus, written
by a module that is gone afterwards, two objects that refer only to each
other (no path from the root: ``broken`` lists their referrers) and five
under the root (paths).  At run time ``pbmodel`` is not importable either,
so every Item is a broken object too.  Each command runs in a child
process that reports its own peak resident memory (``ru_maxrss``: the map
of the file counts) and that of its largest forked worker.

    python bench/bench_readonly_memory.py N [--src DIR ...] [--only CMD ...]

Several ``--src`` (a ``src`` directory of pclasses each) run alternately,
command by command, for paired comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from _common import CACHE, HERE, build_storage

GONE = """
from persistent import Persistent


class Orphan(Persistent):
    pass


class Lost(Persistent):
    pass
"""

CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from pclasses.cli import main
argv = sys.argv[2:]
t0 = time.perf_counter()
saved = os.dup(1)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
try:
    main(argv)
except SystemExit as exc:
    code = exc.code
finally:
    sys.stdout.flush()
    os.dup2(saved, 1)
print(json.dumps({"code": code, "s": round(time.perf_counter() - t0, 2),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
                  "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10}))
"""


def build(n: int) -> Path:
    path = CACHE / f"readonly-{n}.fs"
    done = Path(f"{path}.done")
    if done.exists():
        return path
    build_storage(n, path)
    mods = CACHE / "readonly-gone"
    mods.mkdir(parents=True, exist_ok=True)
    (mods / "rogone.py").write_text(textwrap.dedent(GONE))
    code = f"""
import sys
sys.path.insert(0, {str(mods)!r})
import ZODB
from ZODB.FileStorage import FileStorage
import rogone
db = ZODB.DB(FileStorage({str(path)!r}))
with db.transaction() as conn:
    a, b = rogone.Orphan(), rogone.Orphan()
    a.other, b.other = b, a
    conn.add(a)
    conn.add(b)
    conn.root()["lost"] = [rogone.Lost() for _ in range(5)]
db.close()
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    done.touch()
    return path


def commands(fs: Path) -> dict[str, list[str]]:
    return {
        "classes": ["classes", str(fs), "--json", "--no-progress"],
        "broken": ["broken", str(fs), "--json", "--no-progress"],
        "broken-1job": ["broken", str(fs), "--json", "--no-progress", "--jobs", "1"],
        "xrefs": ["xrefs", str(fs), "--json"],
        "report": ["report", str(fs), "-o", os.devnull, "--no-progress"],
        "refs-check": ["refs-check", str(fs), "--json"],
        "gc": ["gc", str(fs), "--json", "--days", "0"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int)
    parser.add_argument("--src", action="append", default=[])
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    sources = args.src or [str(HERE.parent / "src")]
    fs = build(args.n)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # pbmodel is not importable
    for name, argv in commands(fs).items():
        if args.only and name not in args.only:
            continue
        for src in sources:
            p = subprocess.run([sys.executable, "-c", CHILD, src, *argv], capture_output=True,
                               text=True, env=env)
            lines = p.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if lines else {"error": p.stderr[-300:]}
            print(json.dumps({"command": name, "src": src, "n": args.n, **result}), flush=True)


if __name__ == "__main__":
    main()
