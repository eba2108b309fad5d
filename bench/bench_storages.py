"""Every storage side by side: FileStorage, ZEO, RelStorage (history-free and
history-preserving) on PostgreSQL, holding the same 100k-item data set.

One run starts a real PostgreSQL (``tests/pgserver.py``, with a lock table
large enough for zodbupdate's single 100,000-record commit) and a real ZEO
server over a copy of the file, copies the packed FileStorage into both
RelStorage databases (``copyTransactionsFrom``), then measures on each, in
this process, alternating the order between runs (medians reported):

* ``census``: :func:`pclasses.take_census` (one process, ``jobs=1``);
* ``zodbverify``: ``zodbverify.verify.verify_zodb`` (its API: the command
  line reads FileStorage only);
* ``broken``: :func:`pclasses.find_broken`;
* ``export``: :func:`pclasses.export_subtree` of ``root['tree']`` (the
  whole data set); the export files must be byte-identical on every storage;
* ``xrefs``, ``refs-check``, ``report``: those commands as a user runs them
  (``pclasses xrefs TARGET --json``, ``pclasses refs-check TARGET --json``,
  ``pclasses report TARGET --json --jobs 1``), in this process; not in the
  default steps (``--steps`` names them);
* on RelStorage, ``repair`` (:func:`pclasses.rename_classes`) against
  zodbupdate's API, each renaming every ``Item`` (``pbmodel.Item`` <->
  ``pbmodel_v2.Item``, so each run has the same work), zodbupdate with its
  ``TRANSACTION_COUNT`` raised so it commits once (its default of 100,000
  dies after the first commit on RelStorage: the commit ends the cursor it
  iterates with); each repair run starts from a vacuumed database.

``zeo`` is a stock ``runzeo``, ``zeo-pclasses`` a ``pclasses-zeo`` server
(:mod:`pclasses.storages.zeoserver`, batched reads), each over its own copy
of the same file.  ``--storages file,zeo,zeo-pclasses`` starts no
PostgreSQL and runs no repair.

Ratios: census/zodbverify speedup per storage; every read-only command on
each ZEO server against the same command on the file; export against census on
RelStorage; zodbupdate/repair on RelStorage.  Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import HERE, build_storage, median

sys.path.insert(0, str(HERE.parent / "tests"))

LOCKS = 2048  # max_locks_per_transaction for zodbupdate's one big commit


def _restart_with_locks(server: Any, locks: int) -> None:
    """Restart the test server with a larger lock table."""
    ctl = str(server.bindir / "pg_ctl")
    subprocess.run(server._cmd(ctl, "-D", str(server.datadir), "-m", "fast", "-w", "stop"),
                   check=True, capture_output=True, timeout=120, cwd=server.directory)
    options = " ".join([
        f"-p {server.port}", "-c listen_addresses=127.0.0.1", "-c unix_socket_directories=''",
        "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
        "-c max_prepared_transactions=20", "-c max_connections=100",
        f"-c max_locks_per_transaction={locks}",
    ])
    subprocess.run(server._cmd(ctl, "-D", str(server.datadir), "-l", str(server.logfile),
                               "-o", options, "-w", "-t", "60", "start"),
                   check=True, capture_output=True, timeout=120, cwd=server.directory)


def _zeo_server(path: Path, directory: Path,
                module: str = "ZEO.runzeo") -> tuple[subprocess.Popen[bytes], str]:
    """A ZEO server process serving ``path``: the stock ``runzeo``, or
    ``pclasses.storages.zeoserver`` (``pclasses-zeo``) with the same zeo.conf."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "zeo.conf"
    conf.write_text(f"<zeo>\n  address 127.0.0.1:{port}\n</zeo>\n"
                    f"<filestorage 1>\n  path {path}\n</filestorage>\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"),
                                         *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen([sys.executable, "-m", module, "-C", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"zeo://127.0.0.1:{port}?wait_timeout=60"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the ZEO server did not start")


def _copy_into_relstorage(src: Path, uri: str) -> None:
    from ZODB.FileStorage import FileStorage

    from pclasses.database import _resolver
    from pclasses.storages.relstorage import open_uri

    target, _unused = open_uri(uri, _resolver("postgres"), read_only=False)  # a new schema
    source = FileStorage(str(src), read_only=True)
    try:
        target.copyTransactionsFrom(source)
    finally:
        target.close()
        source.close()


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _census(target: str) -> None:
    import pclasses

    db = pclasses.open(target, read_only=True)
    try:
        pclasses.take_census(db.storage, jobs=1)
    finally:
        db.close()


def _broken(target: str) -> None:
    import pclasses

    db = pclasses.open(target, read_only=True)
    try:
        pclasses.find_broken(db, jobs=1)
    finally:
        db.close()


def _zodbverify(target: str) -> None:
    from zodbverify.verify import verify_zodb

    import pclasses

    db = pclasses.open(target, read_only=True)
    try:
        verify_zodb(db.storage)
    finally:
        db.close()


def _export(target: str, out: Path) -> None:
    import pclasses

    db = pclasses.open(target, read_only=True)
    try:
        conn = db.open()
        pclasses.export_subtree(conn, conn.root()["tree"], str(out), name="tree")
        conn.close()
    finally:
        db.close()


def _command(*args: str) -> None:
    """One pclasses command, as its command line runs it (output dropped)."""
    from click.testing import CliRunner

    from pclasses.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if result.exit_code not in (0, 3):  # refs-check: 3 when something dangles
        raise SystemExit(f"pclasses {' '.join(args)} failed: {result.output[-500:]}")


def _repair(target: str, old: str, new: str) -> int:
    import pclasses

    return pclasses.rename_classes(target, {f"{old}.Item": f"{new}.Item"}).changed


def _zodbupdate(target: str, old: str, new: str) -> None:
    import zodbupdate.update
    from zodbupdate.main import create_updater

    import pclasses

    zodbupdate.update.TRANSACTION_COUNT = 10**9
    db = pclasses.open(target)
    try:
        updater = create_updater(db.storage, default_renames={(old, "Item"): (new, "Item")})
        updater()
    finally:
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--no-repair", action="store_true")
    ap.add_argument("--storages", default="file,zeo,zeo-pclasses,relstorage-hf,relstorage-hp",
                    help="comma-separated subset of file,zeo,zeo-pclasses,relstorage-hf,"
                         "relstorage-hp (file is always measured: the ratios need it; "
                         "zeo is a stock runzeo, zeo-pclasses a pclasses-zeo server, each "
                         "over its own copy of the file; PostgreSQL is started only for "
                         "relstorage-*)")
    ap.add_argument("--steps", default="census,zodbverify,broken,export",
                    help="comma-separated subset of census,zodbverify,broken,export,"
                         "xrefs,refs-check,report")
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)  # zodbverify logs every record at debug level
    src = build_storage(args.n)
    from pgserver import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="pclasses-bench-storages-"))
    wanted = set(args.storages.split(",")) | {"file"}
    server = PostgresServer() if wanted & {"relstorage-hf", "relstorage-hp"} else None
    zeos: list[subprocess.Popen[bytes]] = []
    try:
        if server is not None:
            _restart_with_locks(server, LOCKS)
        fs = work / "Data.fs"
        shutil.copyfile(src, fs)
        shutil.copyfile(str(src) + ".index", str(fs) + ".index")
        targets = {"file": str(fs)}
        servers = (("zeo", "ZEO.runzeo"), ("zeo-pclasses", "pclasses.storages.zeoserver"))
        for kind, module in servers:
            if kind not in wanted:
                continue
            zeo_fs = work / kind / "zeo.fs"
            zeo_fs.parent.mkdir()
            shutil.copyfile(src, zeo_fs)
            shutil.copyfile(str(src) + ".index", str(zeo_fs) + ".index")
            proc, targets[kind] = _zeo_server(zeo_fs, work / kind, module)
            zeos.append(proc)
        setup: dict[str, float] = {}
        for kind, keep in (("relstorage-hf", False), ("relstorage-hp", True)):
            if kind not in wanted or server is None:
                continue
            name = server.createdb(kind.replace("-", "_"))
            uri = (f"postgres://postgres@{server.host}:{server.port}/{name}"
                   f"?keep_history={str(keep).lower()}")
            setup[kind] = round(_timed(lambda uri=uri: _copy_into_relstorage(fs, uri)), 1)
            targets[kind] = uri
        times: dict[str, dict[str, list[float]]] = {k: {} for k in targets}
        exports: dict[str, bytes] = {}
        for run in range(args.runs):
            order = list(targets) if run % 2 == 0 else list(reversed(targets))
            for kind in order:
                target = targets[kind]
                out = work / f"{kind}.pclasses"
                steps: list[tuple[str, Callable[[], Any]]] = [
                    ("census", lambda t=target: _census(t)),
                    ("zodbverify", lambda t=target: _zodbverify(t)),
                    ("broken", lambda t=target: _broken(t)),
                    ("export", lambda t=target, o=out: _export(t, o)),
                    ("xrefs", lambda t=target: _command("xrefs", t, "--json")),
                    ("refs-check", lambda t=target: _command("refs-check", t, "--json")),
                    ("report", lambda t=target: _command("report", t, "--json", "--jobs", "1",
                                                         "--no-progress")),
                ]
                steps = [st for st in steps if st[0] in args.steps.split(",")]
                if run % 2:
                    steps.reverse()
                for step, fn in steps:
                    times[kind].setdefault(step, []).append(_timed(fn))
                    print(f"# {kind} {step} {times[kind][step][-1]:.2f} s", file=sys.stderr)
                if out.exists():
                    exports[kind] = out.read_bytes()
        repair: dict[str, Any] = {}
        if not args.no_repair:
            for kind in [k for k in ("relstorage-hf", "relstorage-hp") if k in targets]:
                ours, theirs = [], []
                state = ("pbmodel", "pbmodel_v2")
                for run in range(max(args.runs, 1)):
                    pair = [("pclasses", ours), ("zodbupdate", theirs)]
                    if run % 2:
                        pair.reverse()
                    for who, bucket in pair:
                        old, new = state
                        # each tool starts from a vacuumed database (the rows the
                        # previous rewrite left dead would otherwise slow whoever
                        # comes next on a machine too busy for autovacuum)
                        assert server is not None
                        server.psql("VACUUM ANALYZE", kind.replace("-", "_"))
                        if who == "pclasses":
                            t = time.perf_counter()
                            changed = _repair(targets[kind], old, new)
                            bucket.append(time.perf_counter() - t)
                            if changed < args.n:  # every Item, and records referring to one
                                raise SystemExit(f"repair rewrote {changed} records, fewer "
                                                 f"than the {args.n} Items")
                        else:
                            bucket.append(_timed(lambda o=old, n=new, k=kind:
                                                 _zodbupdate(targets[k], o, n)))
                        print(f"# {kind} {who} {bucket[-1]:.2f} s", file=sys.stderr)
                        state = (new, old)
                repair[kind] = {"pclasses_s": round(median(ours), 2),
                                "zodbupdate_s": round(median(theirs), 2),
                                "speedup": round(median(theirs) / median(ours), 2)}
        med = {k: {s: round(median(v), 2) for s, v in steps_.items()}
               for k, steps_ in times.items()}
        def ratio(kind: str, a: str, b_kind: str, b: str) -> float | None:
            x, y = med[kind].get(a), med[b_kind].get(b)
            return round(x / y, 2) if x is not None and y else None

        ratios = {
            kind: {
                "census_vs_zodbverify_speedup": ratio(kind, "zodbverify", kind, "census"),
                **({f"{s}_vs_file": ratio(kind, s, "file", s)
                    for s in ("census", "broken", "export", "xrefs", "refs-check", "report")}),
                "export_vs_census": ratio(kind, "export", kind, "census"),
            }
            for kind in targets
        }
        # Paired ratios: each run measures every storage back to back, so the
        # ratio of one run is less exposed to the machine's load changing.
        pairs = {
            kind: {
                **{f"{s}_vs_file": [round(x / y, 2) for x, y in zip(v, times["file"][s])]
                   for s, v in times[kind].items() if s != "zodbverify" and s in times["file"]},
                **({"census_vs_zodbverify_speedup":
                    [round(z / c, 2) for z, c in zip(times[kind]["zodbverify"],
                                                     times[kind]["census"])]}
                   if "zodbverify" in times[kind] and "census" in times[kind] else {}),
            }
            for kind in targets if kind != "file"
        }
        first = next(iter(exports.values()), b"")
        print(json.dumps({
            "benchmark": "every storage side by side (same data set, same machine, one run)",
            "items": args.n,
            "runs": args.runs,
            "setup_copy_s": setup,
            "seconds": med,
            "ratios": ratios,
            "paired_ratios_per_run": pairs,
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "repair_vs_zodbupdate": repair,
            "exports_identical": all(v == first for v in exports.values()),
        }, indent=1))
    finally:
        for proc in zeos:
            proc.terminate()
            proc.wait(30)
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
