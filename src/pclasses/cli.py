"""The ``pclasses`` command line: small subcommands over the library.

Each subcommand parses its arguments, calls the library, and renders the
result: a table for people, ``--json`` for scripts.  Broken classes and
unreadable records are findings, not errors.

Whatever the input, a command exits with one of the codes below, never with
a traceback: an expected error (a :class:`~pclasses.errors.PClassesError`)
prints one line on stderr, and so does any other exception ("internal
error"; ``PCLASSES_DEBUG=1`` adds its traceback).  Everything a command
prints that comes from data (class names, keys, database names, messages)
goes through :func:`printable`, so control characters and escape sequences
reach the terminal escaped and rich markup in a name is printed, not
interpreted.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click

from . import __version__
from .errors import PClassesError
from .text import printable

# Exit codes, all of them.
#: The command did its job (whatever it found).
EXIT_OK = 0
#: The command could not do its job (missing/locked/corrupt storage, bad
#: input, an internal error, an interruption).
EXIT_ERROR = 1
#: Bad command-line usage (click's own convention).
EXIT_USAGE = 2
#: A check (``pclasses refs --verify``) found problems that remain.
EXIT_PROBLEMS = 3
#: ``refs-check`` ran and found dangling references.
EXIT_DANGLING = EXIT_PROBLEMS

#: Set to ``1`` to see the traceback of an error.
DEBUG_ENV = "PCLASSES_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


def _out(line: object) -> None:
    """Print one line of results on stdout (escaped)."""
    click.echo(printable(line))


def _warn(message: object) -> None:
    """Print one warning line on stderr (escaped)."""
    click.echo(f"pclasses: warning: {printable(message)}", err=True)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _fail(message: object, exc: BaseException | None = None) -> NoReturn:
    """Print one error line on stderr and exit with :data:`EXIT_ERROR`."""
    if exc is not None and _debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    click.echo(f"pclasses: error: {printable(message)}", err=True)
    raise click.exceptions.Exit(EXIT_ERROR)


def _internal(exc: BaseException) -> NoReturn:
    """An exception nobody expected: one line too (the traceback on demand)."""
    if _debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        hint = ""
    else:
        hint = f" (set {DEBUG_ENV}=1 for the traceback)"
    try:
        text = str(exc)
    except Exception:  # an exception whose str() fails
        text = ""
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    click.echo(f"pclasses: internal error: {printable(detail)}{printable(hint)}", err=True)
    raise click.exceptions.Exit(EXIT_ERROR)


@contextmanager
def _errors() -> Iterator[None]:
    """Kept for the commands' structure: errors are handled by :class:`_Main`."""
    yield


def _harden_streams() -> None:
    """Characters the terminal's encoding lacks are escaped, not fatal."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a detached or closed stream
                pass


class _Main(click.Group):
    """The command group: every exception of a command ends as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        _harden_streams()
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click prints these itself (usage errors, --help, --version)
        except BrokenPipeError:
            raise  # the reader went away (``| head``): click exits quietly
        except PClassesError as exc:
            _fail(str(exc), exc)
        except KeyboardInterrupt as exc:
            _fail("interrupted", exc)
        except BaseException as exc:  # SystemExit of foreign code too
            _internal(exc)


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    """A rich progress bar on a terminal; ``None`` (no callback) otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        f"[bold]{escape(printable(label))}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table; every cell is plain text (escaped, never read as markup)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(printable(title)), title_justify="left")
    for col in columns:
        table.add_column(Text(col), overflow="fold")
    for row in rows:
        table.add_row(*(Text(printable(cell)) for cell in row))
    Console(width=None if sys.stdout.isatty() else 160, markup=False, emoji=False,
            highlight=False).print(table)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pclasses")
def main() -> None:
    """pclasses: classes that live, move, disappear and come back, for ZODB.

    Inspect which classes a database's records need and how each resolves,
    without ever running a stored pickle.

    Every command takes a TARGET: a FileStorage path (Data.fs), a ZConfig
    file (.conf, zope.conf) with <zodb> sections or one storage section
    (<filestorage>, <clientstorage>, <relstorage>), one section of it
    (zope.conf#main), or a zodburi URI (file://, zeo://host:port,
    postgres://user@host/db for RelStorage, memory://).  Inspection
    commands open every storage read-only and create nothing.

    Exit status: 0 when the command did its job (whatever it found), 1 when
    it could not (one line on stderr), 2 on bad usage, 3 when a check
    (refs-check, refs --verify, sql-recover) found problems left.
    """


def _blob_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--blob-dir", type=click.Path(file_okay=False), default=None,
        help="The blob directory of a FileStorage TARGET [default: found beside it: "
             "Data.fs.blobs, Data.blobs, blobs, blobstorage, or ../blobstorage].")(f)


def _trust_option(f: Any) -> Any:
    return click.option(
        "--trust", "trust", multiple=True, metavar="PKG",
        help="Also import modules of package PKG to check the names it holds (repeatable). "
             "By default only modules already imported and those of installed distributions "
             "outside the standard library are imported; others are only located.")(f)


def _registry(entry_points: bool) -> Any:
    from .registry import ClassRegistry

    registry = ClassRegistry()
    if entry_points:
        for failure in registry.load_entry_points():
            _warn(f"skipped {failure}")
    return registry


@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.option("--entry-points/--no-entry-points", default=True, show_default=True,
              help="Apply registrations and rename rules declared by installed packages.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (only on a terminal).")
@click.option("--jobs", type=click.IntRange(min=1), envvar="PCLASSES_JOBS", default=None,
              help="Processes scanning a large FileStorage at once [default: one per CPU, "
                   "at most 4; env PCLASSES_JOBS].")
@_trust_option
@_blob_dir_option
def classes(target: str, as_json: bool, entry_points: bool, progress: bool,
            jobs: int | None, trust: tuple[str, ...], blob_dir: str | None) -> None:
    """List every class the records of TARGET name, with counts and resolution.

    For each class: how many records are instances of it (RECORDS), how
    many other records name it (MENTIONS: references, non-persistent
    sub-objects, reduce functions), and how it resolves: ok, aliased,
    database-resident, broken, or not-imported (the module exists but is
    not trusted, so it was not run; see --trust).  Records are read with
    the safe reader; nothing is imported except through the registry's
    class lookups, and those import no module the data chooses.
    Records that cannot be interpreted are listed as unreadable by oid.
    Classes stored in the database are listed with guid, name, bases and
    their number of persistent instances.

    TARGET is a FileStorage path (Data.fs), a ZConfig file (.conf) with
    <zodb> sections (every database is scanned) or one storage section, or
    a zodburi URI (file://, zeo://, postgres://, memory://).  Storages are
    opened read-only; a read-only FileStorage takes no lock, so a live
    database can be inspected.
    """
    from .census import take_census
    from .database import open as open_db

    with _errors():
        registry = _registry(entry_points)
        db = open_db(target, registry, read_only=True, create=False, blob_dir=blob_dir)
        try:
            results = []
            for name, each in sorted(db.databases.items()):
                conn = each.open()
                try:
                    with progress_bar(f"scanning {name}", progress) as cb:
                        census = take_census(each.storage, registry, connection=conn,
                                             progress=cb, jobs=jobs, trust=trust)
                finally:
                    conn.close()
                results.append((name, census))
        finally:
            for each in set(db.databases.values()):
                each.close()
    if as_json:
        _emit_json({"databases": [{"name": n, **c.to_dict()} for n, c in results]})
        return
    for name, census in results:
        rows = [
            [c.dotted, str(c.records), str(c.mentions), c.status,
             " -> ".join(c.resolution.chain[1:]) if c.resolution and c.status == "aliased"
             else (c.resolution.error or "") if c.resolution and c.status == "broken"
             else f"module found at {c.resolution.location}; not trusted, not run"
             if c.resolution and c.status == "not-imported" else ""]
            for c in census.classes
        ]
        _table(f"database {name!r}: {census.records} records, {len(census.classes)} classes",
               ["class", "records", "mentions", "status", "detail"], rows)
        from ZODB.utils import oid_repr

        if census.resident:
            _table(f"database {name!r}: classes stored in the database",
                   ["guid", "name", "bases", "instances", "oid"],
                   [[r.guid or "?", r.name, ", ".join(r.bases), str(r.instances),
                     oid_repr(r.oid)] for r in census.resident])
        for u in census.unreadable:
            _out(f"unreadable record {oid_repr(u.oid)}: {u.reason}")


@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.option("--examples", default=3, show_default=True, type=click.IntRange(min=0),
              help="Example oids per broken class.")
@click.option("--entry-points/--no-entry-points", default=True, show_default=True,
              help="Apply registrations and rename rules declared by installed packages.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (only on a terminal).")
@click.option("--jobs", type=click.IntRange(min=1), envvar="PCLASSES_JOBS", default=None,
              help="Processes scanning a large FileStorage at once [env PCLASSES_JOBS].")
@_trust_option
@_blob_dir_option
def broken(target: str, as_json: bool, examples: int, entry_points: bool, progress: bool,
           jobs: int | None, trust: tuple[str, ...], blob_dir: str | None) -> None:
    """List every class in TARGET that does not resolve, and where its objects sit.

    For each broken class: the records that are instances of it, the other
    records that name it (plain objects inside them, references), and
    example oids, each with its path from the root (attribute and key
    names) or, when none exists, the oids that refer to it.  Records that
    cannot be read at all are listed by oid.  Nothing is imported except
    through the registry's lookups; no pickle is run.  The exit status is 0
    whatever is found.

    TARGET is a FileStorage path, a ZConfig file or a zodburi URI; it is
    opened read-only.
    """
    from ZODB.utils import oid_repr

    from .database import open as open_db
    from .inventory import find_broken

    with _errors():
        registry = _registry(entry_points)
        db = open_db(target, registry, read_only=True, create=False, blob_dir=blob_dir)
        try:
            results = []
            for name, each in sorted(db.databases.items()):
                with progress_bar(f"scanning {name}", progress) as cb:
                    results.append((name, find_broken(each, registry, examples=examples,
                                                      progress=cb, jobs=jobs, trust=trust)))
        finally:
            for each in set(db.databases.values()):
                each.close()
    if as_json:
        _emit_json({"databases": [{"name": n, **r.to_dict()} for n, r in results]})
        return
    for name, report in results:
        if not report.classes:
            _out(f"database {name!r}: {report.records} records, no broken classes")
        for c in report.classes:
            _out(f"{c.dotted}: {c.records} records, named by {c.mentions} more "
                       f"({c.error})")
            for e in c.examples:
                where = e.path if e.path else (
                    "no path from the root; referred to by "
                    + (", ".join(oid_repr(o) for o in e.referrers) or "nothing"))
                _out(f"  {oid_repr(e.oid)}  {where}")
        for u in report.unreadable:
            _out(f"unreadable record {oid_repr(u.oid)}: {u.reason}")


@main.command()
@click.argument("target")
@click.option("--rename", "renames", multiple=True, metavar="OLD=NEW",
              help="Rename a global: 'old.module.Name=new.module.Name', or a whole module "
                   "with 'old.pkg.*=new.pkg.*'.  Repeatable.")
@click.option("--from-entry-points", is_flag=True,
              help="Also apply the rename rules installed packages declare (pclasses.aliases, "
                   "pclasses.module_aliases and zodbupdate entry points).")
@click.option("--dry-run", is_flag=True, help="Write nothing; report what would change.")
@click.option("--batch-size", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Records per committed transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (only on a terminal).")
def repair(target: str, renames: tuple[str, ...], from_entry_points: bool, dry_run: bool,
           batch_size: int, as_json: bool, progress: bool) -> None:
    """Rewrite the records of TARGET so renamed classes use their new names.

    Class metadata, every global named in a record's state and the class
    part of persistent references are rewritten in place, without importing
    the old or the new code (nothing stored is run).  Records are committed
    in batches; renaming is idempotent, so an interrupted run is resumed by
    running the same command again.  Run it while no application writes to
    the database.  Records that cannot be read are reported and skipped.

    TARGET is a FileStorage path, a ZConfig file or a zodburi URI.
    """
    from .registry import ClassRegistry
    from .repair import parse_rename, rename_classes

    with _errors():
        rules = dict(parse_rename(r) for r in renames)
        registry = None
        if from_entry_points:
            registry = ClassRegistry()
            for failure in registry.load_entry_points():
                _warn(f"skipped {failure}")
        if not rules and registry is None:
            raise click.UsageError("give at least one --rename OLD=NEW or --from-entry-points")
        with progress_bar("dry run" if dry_run else "repairing", progress) as cb:
            report = rename_classes(
                target, rules, registry=registry, dry_run=dry_run, batch_size=batch_size,
                progress=cb, warn=_warn)
    disk = (f"the replaced revisions take about {report.old_revisions_bytes / 1e6:.1f} MB "
            f"until the storage is packed; {report.pack_hint}"
            if report.old_revisions_bytes else None)
    if as_json:
        if disk:  # a note on stderr: stdout stays one JSON document with its keys
            click.echo(f"pclasses: note: {disk}", err=True)
        _emit_json(report.to_dict())
        return
    verb = "would rewrite" if dry_run else "rewrote"
    _out(f"read {report.records} records; {verb} {report.changed} "
               f"in {report.transactions} transactions")
    for old, n in sorted(report.renamed.items()):
        _out(f"  {old}: {n} records")
    if report.unreadable or report.skipped:
        _out(f"{len(report.unreadable)} unreadable, {len(report.skipped)} not rewritten "
                   "(see warnings)")
    if disk:
        _out(disk)



@main.command("export")
@click.argument("target")
@click.argument("path_or_oid")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The file to write.")
@click.option("--format", "fmt", type=click.Choice(["pclasses", "zexp"]), default="pclasses",
              show_default=True,
              help="pclasses: manifest and digest; zexp: ZODB's own format (no manifest).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary for scripts.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (only on a terminal).")
@_trust_option
@_blob_dir_option
def export_cmd(target: str, path_or_oid: str, output: str, fmt: str, as_json: bool,
               progress: bool, trust: tuple[str, ...], blob_dir: str | None) -> None:
    """Export the subtree at PATH_OR_OID of TARGET to a file.

    PATH_OR_OID is a path of keys (or attributes) from the root, such as
    site/docs, or an oid such as 0x1a.  Every record reachable from it in
    its database is written, with blobs; classes stored in the database are
    never written (instances refer to them by guid), and cross-database
    references are kept, not followed, and listed.  Nothing read is run.
    TARGET is opened read-only.  A failed export leaves no output file.
    """
    from .database import open as open_db
    from .transfer import export_subtree, resolve_path

    with _errors():
        db = open_db(target, _registry(True), read_only=True, create=False, blob_dir=blob_dir)
        try:
            conn = db.open()
            obj = resolve_path(conn, path_or_oid, persistent=True)
            name = None if path_or_oid.startswith("0x") else path_or_oid.strip("/").split("/")[-1]
            with progress_bar("exporting", progress) as cb:
                report = export_subtree(conn, obj, output, format=fmt, name=name or None,
                                        progress=cb, trust=trust)
            conn.close()
        finally:
            db.close()
    if as_json:
        _emit_json(report.to_dict(report=True))
        return
    _out(f"exported {report.record_count} records ({report.bytes} bytes, "
         f"{report.blobs} blobs) to {printable(output)} in {report.seconds:.2f} s")
    for c in report.classes:
        extra = f" guid {c.guid}" if c.guid else ""
        _out(f"  needs {printable(c.module)}.{printable(c.name)}: {c.kind}{extra}")
    for ref in report.to_dict()["external_references"]:
        _out(f"  external reference to {ref['oid']} in database {printable(ref['database'])}")


def _default_import_name(file: str) -> str:
    """The key an import without --name and without a recorded name gets:
    the file's name without its extension (``docs.pclasses`` -> ``docs``)."""
    base = os.path.basename(file)
    stem = base.split(".", 1)[0] or base
    return stem or "imported"


@main.command("import")
@click.argument("target")
@click.argument("file", type=click.Path())  # a missing file is an error (exit 1), not usage
@click.option("--into", default="/", show_default=True,
              help="Path of the container that receives the imported object.")
@click.option("--name", default=None,
              help="Key in the container [default: the name the export recorded, else the "
                   "file's name without its extension: docs.pclasses -> docs].")
@click.option("--missing", type=click.Choice(["error", "broken"]), default="error",
              show_default=True,
              help="error: refuse when classes are missing; broken: import their objects as "
                   "broken objects (reattached when the classes arrive).")
@click.option("--allow-code", is_flag=True,
              help="Also import objects whose state becomes code when loaded (source "
                   "methods, persistent classes); only for files you trust.")
@click.option("--strict", "strict", multiple=True, metavar="PKG",
              help="Allow only classes of package PKG (repeatable) besides plain data "
                   "types; see docs/security.md.")
@click.option("--batch-size", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Records a transaction stores; a larger import is stored in batches and "
                   "linked into the container last (see docs/operators.md).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary for scripts.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (only on a terminal).")
@_trust_option
@_blob_dir_option
def import_cmd(target: str, file: str, into: str, name: str | None, missing: str,
               allow_code: bool, strict: tuple[str, ...], batch_size: int, as_json: bool,
               progress: bool, trust: tuple[str, ...], blob_dir: str | None) -> None:
    """Import an export FILE (pclasses format or ZODB .zexp) into TARGET.

    Before anything is written, the file's digest and every class and global
    its records name are checked against TARGET's registry and class table;
    missing classes are listed (or, with --missing broken, imported as broken
    objects).  Nothing in the file is run.  The imported object is stored
    under --name in the container at --into: in one transaction up to
    --batch-size records; a larger import stores its records in batches
    and links the object into the container last, retrying that when the
    site changed the container meanwhile.
    """
    from .database import open as open_db
    from .transfer.batched import import_in_batches

    with _errors():
        db = open_db(target, _registry(True), create=False, blob_dir=blob_dir)
        try:
            with progress_bar("importing", progress) as cb:
                report = import_in_batches(
                    db, file, into=into, name=name, batch_size=batch_size, missing=missing,
                    progress=cb, trust=trust, default_name=_default_import_name(file),
                    allow_code=allow_code, strict=strict or None,
                    note=f"pclasses import {os.path.basename(file)}")
        finally:
            db.close()
    if as_json:
        _emit_json(report.to_dict())
        return
    from ZODB.utils import oid_repr

    _out(f"imported {report.records} records ({report.blobs} blobs) from {printable(file)} "
         f"as {oid_repr(report.root_oid)} under {printable(report.name)!r} in "
         f"{report.seconds:.2f} s")
    for what, names in (("missing (imported as broken objects)", report.missing),
                        ("refused (made inert)", report.refused)):
        for each in names:
            _out(f"  {what}: {printable(each)}")
    if report.dangling:
        _out(f"  {report.dangling} references point at no object (their targets were not "
             "in the file)")


@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@_trust_option
@_blob_dir_option
def xrefs(target: str, as_json: bool, trust: tuple[str, ...], blob_dir: str | None) -> None:
    """List the cross-database references stored in a multi-database.

    TARGET is typically a ZConfig file with several <zodb NAME> sections.
    References are read from the records (nothing is unpickled) and
    grouped by source and target database and class, with counts; a
    reference whose target record no longer exists (after a pack, for
    example) is marked dangling, with the target oid.  The exit status is 0
    whenever the databases could be scanned.
    """
    from ZODB.utils import oid_repr

    from .database import open as open_db
    from .xrefs import scan_xrefs

    with _errors():
        db = open_db(target, _registry(True), read_only=True, create=False,
                     blob_dir=blob_dir)
        try:
            groups = scan_xrefs(db, trust=trust)
            names = sorted(db.databases)
        finally:
            for each in set(db.databases.values()):
                each.close()
    if as_json:
        _emit_json({"databases": names, "references": [g.to_dict() for g in groups]})
        return
    if not groups:
        _out(f"no cross-database references in {', '.join(names)}")
    for g in groups:
        _out(f"{g.source_database} -> {g.target_database}: {g.count} x "
                   f"{g.source_class} -> {g.target_class}")
        for source, target_oid in g.dangling:
            _out(f"  dangling: {oid_repr(source)} -> {oid_repr(target_oid)} "
                       f"(no such record in {g.target_database!r})")


@main.command()
@click.argument("target")
@click.argument("key", required=False)
@click.option("--verify", is_flag=True,
              help="Compare the reference registries with the records: dangling references, "
                   "stale links, links missing from the registry.")
@click.option("--fix", type=click.Choice(["keep", "null", "remove"]), default=None,
              help="Repair what --verify finds (stale and missing links always; dangling "
                   "references kept, set to None or removed).")
@click.option("--mode", "modes", multiple=True, metavar="REF=MODE",
              help="Set the effective mode (none, always, commit) of the reference REF "
                   "(its id as --json shows it); repeatable.  Tightening refuses if a link "
                   "dangles unless --fix null/remove.")
@click.option("--dry-run", is_flag=True,
              help="Report what --fix or --mode would do; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def refs(target: str, key: str | None, verify: bool, fix: str | None, modes: tuple[str, ...],
         dry_run: bool, as_json: bool) -> None:
    """Intrinsic references of TARGET: list, verify, repair, change modes.

    Without KEY, one row per reference (its mode, links, targets and
    dangling targets); with KEY, the referrers of that key (and of the keys
    under it).  --verify reads the records with the record engine (nothing
    of the application is imported or unpickled) and exits 3 when problems
    remain, 0 when none were found or --fix fixed them all; any command
    exits 1 when it could not run.
    """
    from .database import open as open_db
    from .refs.verify import referrers_of_key, summarize, verify_refs

    parsed: list[tuple[str, str]] = []
    for item in modes:
        ref_id, sep, mode = item.rpartition("=")
        if not sep or not ref_id or mode not in ("none", "always", "commit"):
            _fail(f"--mode {item!r}: expected REF=MODE with MODE none, always or commit")
        parsed.append((ref_id, mode))
    writes = bool(parsed or (fix and verify)) and not dry_run
    db = open_db(target, _registry(True), read_only=not writes, create=False)
    try:
        result: dict[str, Any] = {}
        if parsed:
            result["modes"] = _set_modes(db, parsed, fix, dry_run)
        if verify:
            report = verify_refs(db, fix=fix, dry_run=dry_run)
            result["verify"] = report.to_dict()
        elif key is not None:
            result["referrers"] = referrers_of_key(db, key)
        elif not parsed:
            result["references"] = [row.to_dict() for row in summarize(db)]
    finally:
        for each in set(getattr(db, "databases", {None: db}).values()):
            each.close()
    if as_json:
        out = result
        if verify:  # the verify report at the top, what else was done beside it
            out = dict(result["verify"])
            if "modes" in result:
                out["modes"] = result["modes"]
        _emit_json(out)
    else:
        _render_refs(result)
    if verify and result["verify"]["remaining"]:
        raise click.exceptions.Exit(EXIT_PROBLEMS)


def _set_modes(db: Any, parsed: list[tuple[str, str]], fix: str | None,
               dry_run: bool) -> list[dict[str, Any]]:
    from .refs import registry_of, set_ref_mode

    dbs = getattr(db, "databases", None) or {db.database_name: db}
    first = sorted(dbs)[0]
    conn = dbs[first].open()
    done = []
    try:
        for ref_id, mode in parsed:
            where = conn
            for name in sorted(dbs):
                other = conn if name == first else conn.get_connection(name)
                registry = registry_of(other, create=False)
                if registry is not None and (ref_id in registry.names or ref_id in registry.modes):
                    where = other
                    break
            change = set_ref_mode(where, ref_id, mode, fix=fix, dry_run=dry_run)
            done.append(change.to_dict())
        if not dry_run:
            conn.transaction_manager.commit()
    finally:
        conn.transaction_manager.abort()
        conn.close()
    return done


def _render_refs(result: dict[str, Any]) -> None:
    for change in result.get("modes", []):
        state = "set" if change["applied"] else "would set"
        _out(f"{state} {printable(change['ref_id'])}: {change['old']} -> {change['new']} "
             f"({len(change['dangling'])} dangling, {change['fixed']} fixed)")
    if "references" in result:
        rows = [[printable(r["database"]), printable(r["ref_id"]), r["mode"], str(r["links"]),
                 str(r["targets"]), str(r["dangling"])] for r in result["references"]]
        if rows:
            _table("References", ["database", "reference", "mode", "links", "targets",
                                  "dangling"], rows)
        else:
            _out("no references")
    if "referrers" in result:
        if not result["referrers"]:
            _out("no referrers")
        for r in result["referrers"]:
            _out(f"{printable(r['key'])} <- {r['oid_repr']}.{printable(r['name'])} "
                 f"in {printable(r['source_database'])}")
    if "verify" in result:
        report = result["verify"]
        for p in report["problems"]:
            fixed = " (fixed)" if p["fixed"] else ""
            _out(f"{p['kind']}: {p['oid_repr']} in {printable(p['database'])} "
                 f"{printable(p['ref_id'])} -> {printable(p['key'])}{fixed}")
        _out(f"{report['records']} records, {report['links']} links, "
             f"{len(report['problems'])} problems, {report['remaining']} remaining")


def _open_tree(target: str, read_only: bool) -> Any:
    from .tree.opening import open as open_tree

    return open_tree(target, _registry(True), tree=True, read_only=read_only, create=False)


def _close_tree(db: Any) -> None:
    from .tree import tree_of

    tree_of(db).close()


@main.command("refs-check")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.option("--referrers", is_flag=True,
              help="Group dangling references by target, listing every referrer.")
def refs_check(target: str, as_json: bool, referrers: bool) -> None:
    """Check the references of every database of a tree or multi-database.

    TARGET is the root database of a tree (its database handles name the
    others) or a ZConfig file with several <zodb NAME> sections.  Every
    reference form (plain, m, n, weak, remote) is followed from the roots
    with the record engine; nothing is unpickled.  Exit status 0 when
    nothing dangles, 3 when something does, 1 when the check could not run.
    """
    from ZODB.utils import oid_repr

    from .tree import check_refs

    db = _open_tree(target, True)
    try:
        report = check_refs(db)
    finally:
        _close_tree(db)
    data = report.to_dict()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if referrers:
        for d in data["dangling"]:
            groups.setdefault((d["target_database"], d["target_oid"]), []).append(d)
        data["referrers"] = [
            {"target_database": db_name, "target_oid": oid, "reason": items[0]["reason"],
             "referrers": [{"source_database": i["source_database"],
                            "source_oid": i["source_oid"], "form": i["form"]} for i in items]}
            for (db_name, oid), items in sorted(groups.items())]
    if as_json:
        _emit_json(data)
    else:
        for name, why in sorted(report.unavailable.items()):
            _warn(f"database {name!r} is unavailable: {why}")
        _out(f"checked {len(report.databases)} databases "
             f"({', '.join(report.databases)}): "
             f"{sum(report.objects.values())} objects, {report.references} references")
        if referrers:
            for (db_name, oid), items in sorted(groups.items()):
                _out(f"dangling {db_name}:{oid} ({items[0]['reason']}), referred to by:")
                for i in items:
                    _out(f"  {i['source_database']}:{i['source_oid']} ({i['form']})")
        else:
            for d in report.dangling:
                _out(f"dangling: {d.source_database}:{oid_repr(d.source_oid)} -> "
                     f"{d.target_database}:{oid_repr(d.target_oid)} ({d.form}, {d.reason})")
        if report.ok:
            _out("no dangling references")
    if not report.ok:
        raise click.exceptions.Exit(EXIT_DANGLING)


@main.command("gc")
@click.argument("target")
@click.option("--days", type=float, default=1.0, show_default=True,
              help="Keep objects written in the last N days (0: no grace period).")
@click.option("--apply", "apply_", is_flag=True, help="Delete the garbage (default: dry run).")
@click.option("--force", is_flag=True,
              help="Go on even when a storage collects garbage on pack by itself.")
@click.option("--batch-size", type=click.IntRange(1), default=1000, show_default=True,
              help="Objects deleted per transaction with --apply.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar while deleting (on a terminal).")
def gc_command(target: str, days: float, apply_: bool, force: bool, batch_size: int,
               as_json: bool, progress: bool) -> None:
    """Find objects unreachable from the roots of a whole tree of databases.

    Plain, m, n and remote references keep objects alive, weak references do
    not.  A dry run unless --apply, which deletes the garbage through the
    storage API (FileStorage, ZEO, RelStorage) and drops pins no reference
    holds any more; it refuses storages that collect garbage on pack by
    themselves unless --force.  It deletes in batches while applications
    write: an object linked again meanwhile is kept.
    """
    from ZODB.utils import oid_repr

    from .tree import collect_garbage

    if days < 0:
        _fail("--days must be 0 or more")
    db = _open_tree(target, not apply_)
    try:
        with progress_bar("deleting garbage", progress and apply_) as cb:
            report = collect_garbage(db, days=days, apply=apply_, force=force,
                                     batch_size=batch_size, progress=cb)
    finally:
        _close_tree(db)
    if as_json:
        _emit_json(report.to_dict())
        return
    for name, why in sorted(report.unavailable.items()):
        _warn(f"database {name!r} is unavailable: {why}")
    verb = "deleted" if report.applied else "garbage (dry run, --apply deletes)"
    for name, oids in sorted(report.garbage.items()):
        _out(f"{name}: {len(oids)} {verb}")
        for oid in oids[:20]:
            _out(f"  {oid_repr(oid)}")
        if len(oids) > 20:
            _out(f"  ... and {len(oids) - 20} more")
        for oid in report.stale_pins.get(name, []):
            _out(f"  stale pin {oid_repr(oid)}{' (dropped)' if report.applied else ''}")
        for oid in report.relinked.get(name, []):
            _out(f"  kept {oid_repr(oid)}: linked again while gc ran")
        for oid in report.skipped.get(name, []):
            _out(f"  kept {oid_repr(oid)}: it kept changing while gc ran; run gc again")


@main.command("report")
@click.argument("target")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="The HTML file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report's data as JSON.")
@click.option("--examples", default=3, show_default=True, type=click.IntRange(0, 10),
              help="Example objects per broken class.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (only on a terminal).")
@click.option("--jobs", type=click.IntRange(min=1), envvar="PCLASSES_JOBS", default=None,
              help="Processes scanning a large FileStorage at once [env PCLASSES_JOBS].")
@_trust_option
@_blob_dir_option
def report_cmd(target: str, output: str | None, as_json: bool, examples: int, progress: bool,
               jobs: int | None, trust: tuple[str, ...], blob_dir: str | None) -> None:
    """Write one self-contained HTML page on the health of TARGET.

    The page shows a summary with a verdict, every class with counts and
    status (sortable, filterable), the broken classes with example objects
    and their paths from the root, a drawing of the databases and the
    references between them (dangling ones marked), and the commands that
    would repair what was found.  Every database of a multi-database or of a
    tree is included.  Records are read with the record engine; nothing
    stored is run.  The page needs no network.  Exit status 0 whatever is
    found, 1 when TARGET cannot be read.
    """
    from .report import render, report_target

    if output is None and not as_json:
        raise click.UsageError("give -o FILE (the page), --json, or both")
    data = report_target(target, _registry(True), jobs=jobs, trust=trust, blob_dir=blob_dir,
                         examples=examples,
                         progress=lambda label: progress_bar(label, progress)).to_dict()
    if output is not None:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(render(data))
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or exc}", exc)
    if as_json:
        _emit_json(data)
    elif output is not None:
        _out(f"wrote {output}: {data['summary']['verdict']}")


@main.command("sql-recover")
@click.argument("target")
@click.option("--resolve", is_flag=True,
              help="Commit each prepared transaction whose ZODB side finished, roll back "
                   "the others.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")
def sql_recover(target: str, resolve: bool, as_json: bool) -> None:
    """List the prepared transactions SQL stores left behind by a crash.

    TARGET is an SQL store's URL (postgresql://...) or the root database of
    a tree holding SQL stores.  Only prepared transactions this package
    created (ids starting with "pclasses:") are listed or touched; with
    --resolve each one whose ZODB side finished is committed and the others
    are rolled back (one whose ZODB databases cannot be read is left alone).
    Exit status 0 when nothing is left prepared, 3 when something is.
    """
    from .stores.recover import recover

    report = recover(target, resolve=resolve)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _out(f"stores: {', '.join(report.stores) or 'none'}")
        for t in report.transactions:
            done = t.action or ("left prepared" if t.error is None else f"failed: {t.error}")
            _out(f"{t.store} {t.gid} prepared {t.prepared}: ZODB side {t.zodb}; {done}")
        if not report.transactions:
            _out("no prepared transactions")
    if not report.ok:
        raise click.exceptions.Exit(EXIT_PROBLEMS)


if __name__ == "__main__":  # pragma: no cover
    main()
