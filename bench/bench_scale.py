"""Every command over a FileStorage of 1 and 10 million records: time and peak memory.

Bounded memory is claimed for the read-only commands, ``repair`` and
export/import (issue 16): memory held by compact oid sets plus one batch,
never by the records.  This benchmark builds real FileStorages of the
sizes asked (``--sizes``, records) and runs each command as users do, the
``pclasses`` command line (``--json`` where it has it) in a fresh child
process, recording its wall time and its peak resident memory: the
largest of the exact peak of the main process (``/usr/bin/time``'s
maximum resident set, from ``wait4``) and the polled sum over the whole
process tree (scans of a large FileStorage fork worker processes).

The data set (records written straight through the storage API, see
:func:`build_scale`)::

    root['tree'] = PersistentMapping{'items': PersistentMapping
        'c00000'.. -> chunk PersistentMapping 'k0000'..'k0999' -> Item}

1,101 records a chunk: the chunk, 1,000 ``pbmodel.Item``\\ s (every 10th
with ``.meta``, a PersistentMapping referring to the item before) and
100 metas.  In every hundred items one is a ``pbmodel_gone.Ghost`` (a
module that does not exist: ``broken`` finds 1% of the items) and one a
``pbmodel_legacy.Item`` (renamed: ``repair`` renames it to
``pbmodel.Item``).

Commands: ``classes``, ``broken``, ``report --json``, ``xrefs``,
``refs-check``, ``gc`` (dry run), ``export`` of ``tree`` (every record),
``import`` of that file into a new FileStorage, ``repair`` (on a copy).
Prints one JSON document: per command and size the time and peak memory,
the time ratio between the largest and the smallest size over the ratio of
their records (1.0 is linear) and whether the peak stays under the bound
(500 MB).

    python bench/bench_scale.py --sizes 1000000,10000000 --cache /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import CACHE, HERE, bin_path

ITEMS_PER_CHUNK = 1000
META_EVERY = 10          # every 10th item has a .meta PersistentMapping
GHOST_AT = 50            # item j with j % 100 == GHOST_AT is a pbmodel_gone.Ghost
LEGACY_AT = 75           # item j with j % 100 == LEGACY_AT is a pbmodel_legacy.Item
RECORDS_PER_CHUNK = 1 + ITEMS_PER_CHUNK + ITEMS_PER_CHUNK // META_EVERY
FIRST_CHUNK_OID = 3      # 0 root, 1 tree, 2 items
CHUNKS_PER_TXN = 100     # about 110,000 records a transaction
BOUND_MB = 500
RENAME = "pbmodel_legacy.Item=pbmodel.Item"
TRUST = ("--trust", "pbmodel")  # the data's own model, as an installed package would be
_MARK = re.compile(rb"\xfe\xed(..)\xfe\xed\xfa\xce", re.DOTALL)


def _marker(local: int) -> bytes:
    return b"\xfe\xed" + struct.pack(">H", local) + b"\xfe\xed\xfa\xce"


def _stand_in_modules() -> tuple[type, type]:
    """Classes named ``pbmodel_gone.Ghost`` and ``pbmodel_legacy.Item``, only to pickle."""
    from persistent import Persistent

    import pbmodel

    classes = []
    for module, name in (("pbmodel_gone", "Ghost"), ("pbmodel_legacy", "Item")):
        mod = types.ModuleType(module)
        cls = type(name, (Persistent,), {"__module__": module, "__init__": pbmodel.Item.__init__})
        cls.__qualname__ = name
        setattr(mod, name, cls)
        sys.modules[module] = mod
        classes.append(cls)
    return classes[0], classes[1]


def _serialize(obj: Any) -> bytes:
    from ZODB.serialize import ObjectWriter

    writer = ObjectWriter()
    writer._jar = None  # every object referred to already has its oid
    data: bytes = writer.serialize(obj)
    return data


def chunk_templates() -> list[tuple[int, list[bytes], list[int]]]:
    """One chunk's records as (local oid, literal pieces, local oids between them).

    The objects get marker oids; a record of chunk ``c`` is the pieces joined
    with the real oids (``first + local``) in place of the markers.
    """
    from persistent.mapping import PersistentMapping

    import pbmodel

    ghost_cls, legacy_cls = _stand_in_modules()
    try:
        chunk = PersistentMapping()
        chunk._p_oid = _marker(0)
        objects: list[tuple[int, Any]] = [(0, chunk)]
        prev = None
        for j in range(ITEMS_PER_CHUNK):
            cls = (ghost_cls if j % 100 == GHOST_AT else legacy_cls if j % 100 == LEGACY_AT
                   else pbmodel.Item)
            item = cls(f"item {j:04d}", j)
            item._p_oid = _marker(1 + j)
            if j % META_EVERY == 0:
                meta = PersistentMapping(created=j, note="n", sibling=prev)
                meta._p_oid = _marker(1 + ITEMS_PER_CHUNK + j // META_EVERY)
                item.meta = meta
                objects.append((1 + ITEMS_PER_CHUNK + j // META_EVERY, meta))
            chunk[f"k{j:04d}"] = item
            objects.append((1 + j, item))
            prev = item
        templates = []
        for local, obj in sorted(objects, key=lambda x: x[0]):
            data = _serialize(obj)
            pieces, locals_, pos = [], [], 0
            for m in _MARK.finditer(data):
                pieces.append(data[pos:m.start()])
                locals_.append(struct.unpack(">H", m.group(1))[0])
                pos = m.end()
            pieces.append(data[pos:])
            assert all(0 <= x < RECORDS_PER_CHUNK for x in locals_)
            templates.append((local, pieces, locals_))
        return templates
    finally:
        del sys.modules["pbmodel_gone"], sys.modules["pbmodel_legacy"]


def _chunk_records(templates: list[tuple[int, list[bytes], list[int]]],
                   first: int) -> Iterator[tuple[bytes, bytes]]:
    oids = [struct.pack(">Q", first + k) for k in range(RECORDS_PER_CHUNK)]
    for local, pieces, locals_ in templates:
        if locals_:
            parts = [pieces[0]]
            for k, piece in zip(locals_, pieces[1:]):
                parts.append(oids[k])
                parts.append(piece)
            yield oids[local], b"".join(parts)
        else:
            yield oids[local], pieces[0]


def chunks_for(records: int) -> int:
    return max(1, round((records - FIRST_CHUNK_OID) / RECORDS_PER_CHUNK))


def _counts(chunks: int) -> dict[str, int]:
    per100 = ITEMS_PER_CHUNK // 100
    return {"records": FIRST_CHUNK_OID + chunks * RECORDS_PER_CHUNK, "chunks": chunks,
            "items": chunks * ITEMS_PER_CHUNK, "ghosts": chunks * per100,
            "legacy": chunks * per100, "metas": chunks * (ITEMS_PER_CHUNK // META_EVERY)}


def build_scale(records: int, directory: Path,
                progress: bool = False) -> tuple[Path, dict[str, int]]:
    """A FileStorage of about ``records`` records in ``directory`` (reused when built).

    Written through the storage API (``tpc_begin``/``store``/``tpc_vote``/
    ``tpc_finish``) in transactions of 100 chunks: each record is a pickle
    made once per chunk position by ZODB's own ``ObjectWriter`` and given
    its oids by joining bytes, so 10 million records take minutes, not the
    hours that Connection commits would.  A ``.json`` beside the file, with
    the counts, is written last: its presence means the file is complete.
    """
    from persistent.mapping import PersistentMapping
    from ZODB.Connection import TransactionMetaData
    from ZODB.FileStorage import FileStorage
    from ZODB.utils import p64, z64

    chunks = chunks_for(records)
    counts = _counts(chunks)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"scale-{counts['records']}.fs"
    done = Path(str(path) + ".json")
    if done.exists() and path.exists() and Path(str(path) + ".index").exists():
        return path, json.loads(done.read_text())
    for suffix in ("", ".index", ".tmp", ".lock", ".old"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    templates = chunk_templates()
    storage = FileStorage(str(path), create=True)
    t0 = time.perf_counter()
    try:
        for start in range(0, chunks, CHUNKS_PER_TXN):
            txn = TransactionMetaData(description=f"chunks {start}..")
            storage.tpc_begin(txn)
            for c in range(start, min(chunks, start + CHUNKS_PER_TXN)):
                for oid, data in _chunk_records(templates, FIRST_CHUNK_OID + c * RECORDS_PER_CHUNK):
                    storage.store(oid, z64, data, "", txn)
            storage.tpc_vote(txn)
            storage.tpc_finish(txn)
            if progress:
                print(f"  {path.name}: {min(chunks, start + CHUNKS_PER_TXN)}/{chunks} chunks, "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        # The containers above the chunks, last: their references are known now.
        root, tree, items = PersistentMapping(), PersistentMapping(), PersistentMapping()
        for oid, obj in ((0, root), (1, tree), (2, items)):
            obj._p_oid = p64(oid)
        root["tree"] = tree
        tree["items"] = items
        for c in range(chunks):
            ref = PersistentMapping()
            ref._p_oid = p64(FIRST_CHUNK_OID + c * RECORDS_PER_CHUNK)
            items[f"c{c:05d}"] = ref
        txn = TransactionMetaData(description="root")
        storage.tpc_begin(txn)
        for obj in (root, tree, items):
            storage.store(obj._p_oid, z64, _serialize(obj), "", txn)
        storage.tpc_vote(txn)
        storage.tpc_finish(txn)
    finally:
        storage.close()
    for suffix in (".tmp", ".lock"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    counts["build_s"] = round(time.perf_counter() - t0, 1)
    counts["bytes"] = path.stat().st_size
    done.write_text(json.dumps(counts))
    return path, counts


# -- measuring ---------------------------------------------------------------------------


def _tree_memory_kb(pid: int) -> tuple[int, int]:
    """Memory of ``pid`` and its descendants, in KiB: (all, anonymous).

    Proportional set sizes from ``/proc/PID/smaps_rollup`` (``Pss``,
    ``Pss_Anon``): a page shared by a forked scan worker and its parent (the
    FileStorage index, copied on write) counts once, split between them.
    ``Pss`` counts the pages of memory-mapped files too (a FileStorage read
    through ``mmap``: page cache the kernel takes back under pressure);
    ``Pss_Anon`` is the memory the processes themselves hold."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total = anon = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, ()))
        try:
            with open(f"/proc/{p}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1])
                    elif line.startswith(b"Pss_Anon:"):
                        anon += int(line.split()[1])
        except OSError:
            continue
    return total, anon


def measure(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Run ``argv`` in a child: its wall time and peak resident memory (MB).

    ``peak_mb``: the larger of the main process's exact peak (``wait4``'s
    maximum resident set, through ``/usr/bin/time``) and the whole process
    tree's memory (proportional set size) polled every 0.2 s; ``anon_mb``:
    the tree's polled peak of anonymous memory (without mapped file
    pages)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        timed = ["/usr/bin/time", "-f", "%M", "-o", tf.name, *argv] \
            if os.path.exists("/usr/bin/time") else argv
        t0 = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **env})
        peak = [0, 0]
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.2):
                rss, anon = _tree_memory_kb(proc.pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
        lines = [x for x in tf.read().split() if x.isdigit()]
    main_kb = int(lines[-1]) if lines else 0
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: "
                         f"{err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = {
        "s": round(wall, 2),
        "peak_mb": round(max(main_kb, peak[0]) / 1024, 1),
        "anon_mb": round(peak[1] / 1024, 1),
        "main_process_mb": round(main_kb / 1024, 1),
        "process_tree_mb": round(peak[0] / 1024, 1),
    }
    try:
        result["json"] = json.loads(out)
    except ValueError:
        pass
    return result


def _summary(name: str, doc: Any) -> Any:
    """The few figures of a command's JSON output that show it did the whole job."""
    if not isinstance(doc, dict):
        return None
    found = {k: doc[k] for k in ("records", "bytes", "changed", "count", "ok", "references")
             if isinstance(doc.get(k), (int, bool))}
    dbs = doc.get("databases")
    if isinstance(dbs, list) and dbs and all(isinstance(d, dict) for d in dbs):
        found["records"] = sum(d.get("records") or 0 for d in dbs)
        found["broken_classes"] = sum(len(d.get("broken_classes") or ()) for d in dbs) \
            if name == "broken" else None
    elif isinstance(doc.get("objects"), dict):
        found["reached"] = sum(doc["objects"].values())
    return {k: v for k, v in found.items() if v is not None}


def run_size(records: int, cache: Path, work: Path, commands: list[str],
             env: dict[str, str], keep: Path | None = None) -> dict[str, Any]:
    src, counts = build_scale(records, cache, progress=True)
    cli = bin_path("pclasses")
    out: dict[str, Any] = {"data": counts, "commands": {}}
    export_file = work / "tree.pclasses"

    def run(name: str, argv: list[str], ok: tuple[int, ...] = (0,)) -> None:
        print(f"  {counts['records']:,} records: {name} ...", file=sys.stderr, flush=True)
        r = measure(argv, env, ok)
        r["result"] = _summary(name, r.pop("json", None))
        out["commands"][name] = r
        if keep is not None:  # one line a measure, kept as soon as it is made
            with keep.open("a") as f:
                f.write(json.dumps({"size": records, "data": counts, "command": name,
                                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    **r}) + "\n")
        print(f"    {r['s']} s, {r['peak_mb']} MB ({r['anon_mb']} MB anonymous)",
              file=sys.stderr, flush=True)

    for name in commands:
        if name == "classes":
            run(name, [cli, "classes", str(src), "--json", "--no-progress", *TRUST])
        elif name == "broken":
            run(name, [cli, "broken", str(src), "--json", "--no-progress", *TRUST])
        elif name == "report":
            run(name, [cli, "report", str(src), "--json", "--no-progress",
                       "-o", str(work / "report.html"), *TRUST])
        elif name == "xrefs":
            run(name, [cli, "xrefs", str(src), "--json", *TRUST])
        elif name == "refs-check":
            run(name, [cli, "refs-check", str(src), "--json"], ok=(0, 3))
        elif name == "gc":
            run(name, [cli, "gc", str(src), "--json", "--days", "0"])
        elif name == "export":
            export_file.unlink(missing_ok=True)
            run(name, [cli, "export", str(src), "tree", "-o", str(export_file), "--json",
                       "--no-progress", *TRUST])
        elif name == "import":
            if not export_file.exists():
                raise SystemExit("import needs export to run first")
            target = work / "import.fs"
            _new_database(target)
            run(name, [cli, "import", str(target), str(export_file), "--name", "imported",
                       "--missing", "broken", "--json", "--no-progress", *TRUST])
            _remove_fs(target)
        elif name == "repair":
            copy = work / "repair.fs"
            shutil.copyfile(src, copy)
            shutil.copyfile(str(src) + ".index", str(copy) + ".index")
            run(name, [cli, "repair", str(copy), "--rename", RENAME, "--json", "--no-progress"])
            _remove_fs(copy)
        else:
            raise SystemExit(f"unknown command {name}")
    export_file.unlink(missing_ok=True)
    for leftover in work.iterdir():
        if leftover.is_file():
            leftover.unlink()
    return out


def _new_database(path: Path) -> None:
    """An empty FileStorage with its root, as a new site has (not timed)."""
    import ZODB
    from ZODB.FileStorage import FileStorage

    _remove_fs(path)
    ZODB.DB(FileStorage(str(path))).close()


def _remove_fs(path: Path) -> None:
    for suffix in ("", ".index", ".tmp", ".lock", ".old"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    for blobs in (Path(str(path) + ".blobs"),):
        shutil.rmtree(blobs, ignore_errors=True)


COMMANDS = "classes,broken,report,xrefs,refs-check,gc,export,import,repair"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000",
                    help="comma-separated numbers of records (smallest first)")
    ap.add_argument("--commands", default=COMMANDS, help=f"subset of {COMMANDS}")
    ap.add_argument("--cache", type=Path, default=CACHE / "scale",
                    help="directory keeping the built FileStorages between runs")
    ap.add_argument("--work", type=Path, default=None,
                    help="directory for export files, copies and imports [default: a "
                         "temporary directory beside --cache]")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--keep", type=Path, default=None,
                    help="append each measure to this file as one JSON line when made")
    ap.add_argument("--summarize", type=Path, default=None,
                    help="print the table of the measures kept in this file, run nothing")
    ap.add_argument("--markdown", action="store_true",
                    help="with --summarize: the table as Markdown (docs/benchmarks.md)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    commands = [c for c in args.commands.split(",") if c]
    if args.summarize:
        kept = load_kept(args.summarize)
        names = [c for c in COMMANDS.split(",")
                 if any(c in v["commands"] for v in kept.values())]
        table = summarize(kept, names)
        print(markdown(table) if args.markdown else json.dumps(table, indent=1))
        return
    if args.build_only:
        for n in sizes:
            path, counts = build_scale(n, args.cache, progress=True)
            print(json.dumps({"path": str(path), **counts}))
        return
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH"))
                                         if p)}
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scale-work-", dir=args.work or args.cache))
    by_size: dict[int, Any] = {}
    try:
        for n in sizes:
            by_size[n] = run_size(n, args.cache, work, commands, env, args.keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summarize(by_size, commands), indent=1))


def summarize(by_size: dict[int, Any], commands: list[str]) -> dict[str, Any]:
    """The table: per command, time and memory at each size, the time ratio
    between the largest and smallest size, and whether the bound holds."""
    sizes = sorted(by_size)
    small, large = by_size[sizes[0]], by_size[sizes[-1]]
    scale = large["data"]["records"] / small["data"]["records"]
    table = {}
    for name in commands:
        row: dict[str, Any] = {}
        runs = [by_size[n]["commands"][name] for n in sizes if name in by_size[n]["commands"]]
        for n in sizes:
            r = by_size[n]["commands"].get(name)
            if r is not None:
                row[f"s_{n}"] = r["s"]
                row[f"peak_mb_{n}"] = r["peak_mb"]
                row[f"anon_mb_{n}"] = r["anon_mb"]
        if len(sizes) > 1 and name in small["commands"] and name in large["commands"]:
            ratio = large["commands"][name]["s"] / max(small["commands"][name]["s"], 1e-9)
            row["time_ratio"] = round(ratio, 2)
            row["ratio_over_records_ratio"] = round(ratio / scale, 2)
        row["under_bound"] = all(r["peak_mb"] < BOUND_MB for r in runs)
        row["anon_under_bound"] = all(r["anon_mb"] < BOUND_MB for r in runs)
        table[name] = row
    return {
        "benchmark": "every command over 1M-10M records (FileStorage): time and peak memory",
        "bound_mb": BOUND_MB, "cpus": len(os.sched_getaffinity(0)),
        "sizes": {n: by_size[n]["data"] for n in sizes}, "table": table,
        "runs": {n: by_size[n]["commands"] for n in sizes},
    }


def markdown(summary: dict[str, Any]) -> str:
    """The summary as the Markdown table of docs/benchmarks.md."""
    sizes = sorted(summary["sizes"], key=int)
    recs = [summary["sizes"][n]["records"] for n in sizes]
    head = ["command"]
    head += [f"s, {r / 1e6:.1f}M" for r in recs]
    if len(sizes) > 1:
        head.append(f"time ratio (records x{recs[-1] / recs[0]:.2f})")
    head += [f"peak MB, {r / 1e6:.1f}M" for r in recs]
    head += [f"anonymous MB, {r / 1e6:.1f}M" for r in recs]
    head.append(f"under {summary['bound_mb']} MB?")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in summary["table"].items():
        cells = [f"`{name}`"]
        cells += [str(row.get(f"s_{n}", "-")) for n in sizes]
        if len(sizes) > 1:
            cells.append(str(row.get("time_ratio", "-")))
        cells += [str(row.get(f"peak_mb_{n}", "-")) for n in sizes]
        cells += [str(row.get(f"anon_mb_{n}", "-")) for n in sizes]
        cells.append("yes" if row["under_bound"] else
                     "anonymous only" if row["anon_under_bound"] else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_kept(path: Path) -> dict[int, Any]:
    """Measures kept by ``--keep`` (the last of each size and command wins)."""
    by_size: dict[int, Any] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        size = r.pop("size")
        entry = by_size.setdefault(size, {"data": r.pop("data"), "commands": {}})
        r.pop("data", None)
        entry["commands"][r.pop("command")] = r
    return by_size


if __name__ == "__main__":
    main()
