"""The ``pclasses`` command line: small subcommands over the library.

Each subcommand parses its arguments, calls the library, and renders the
result: a table for people, ``--json`` for scripts.  Expected errors print
one line on stderr and exit with :data:`EXIT_ERROR`; broken classes and
unreadable records are findings, not errors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from . import __version__
from .errors import PClassesError

#: The command did its job (whatever it found).
EXIT_OK = 0
#: The command could not do its job (missing/locked/corrupt storage, bad input).
EXIT_ERROR = 1
#: Bad command-line usage (click's own convention).
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])

def _fail(message: str) -> None:
    click.echo(f"pclasses: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except PClassesError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted")


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    """A rich progress bar on a terminal; ``None`` (no callback) otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        f"[bold]{label}",
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
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pclasses")
def main() -> None:
    """pclasses: classes that live, move, disappear and come back, for ZODB.

    Inspect which classes a database's records need and how each resolves,
    without ever running a stored pickle.

    Every command takes a TARGET: a FileStorage path (Data.fs), a ZConfig
    file (.conf) with <zodb> sections or one storage section, or a zodburi
    URI (file://, memory://, zeo://host:port).
    """


def _registry(entry_points: bool) -> Any:
    from .registry import ClassRegistry

    registry = ClassRegistry()
    if entry_points:
        for failure in registry.load_entry_points():
            click.echo(f"pclasses: warning: skipped {failure}", err=True)
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
def classes(target: str, as_json: bool, entry_points: bool, progress: bool,
            jobs: int | None) -> None:
    """List every class the records of TARGET name, with counts and resolution.

    For each class: how many records are instances of it (RECORDS), how
    many other records name it (MENTIONS: references, non-persistent
    sub-objects, reduce functions), and how it resolves: ok, aliased,
    database-resident or broken.  Records are read with the safe reader;
    nothing is imported except through the registry's class lookups.
    Records that cannot be interpreted are listed as unreadable by oid.
    Classes stored in the database are listed with guid, name, bases and
    their number of persistent instances.

    TARGET is a FileStorage path (Data.fs), a ZConfig file (.conf) with
    <zodb> sections (every database is scanned) or one storage section, or
    a zodburi URI (file://, memory://, zeo://host:port).  Storages are
    opened read-only; a read-only FileStorage takes no lock, so a live
    database can be inspected.
    """
    from .database import open as open_db
    from .census import take_census

    with _errors():
        registry = _registry(entry_points)
        db = open_db(target, registry, read_only=True, create=False)
        try:
            results = []
            for name, each in sorted(db.databases.items()):
                conn = each.open()
                try:
                    with progress_bar(f"scanning {name}", progress) as cb:
                        census = take_census(each.storage, registry, connection=conn,
                                             progress=cb, jobs=jobs)
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
             else (c.resolution.error or "") if c.resolution and c.status == "broken" else ""]
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
            click.echo(f"unreadable record {oid_repr(u.oid)}: {u.reason}")


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
def broken(target: str, as_json: bool, examples: int, entry_points: bool, progress: bool,
           jobs: int | None) -> None:
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
        db = open_db(target, registry, read_only=True, create=False)
        try:
            results = []
            for name, each in sorted(db.databases.items()):
                with progress_bar(f"scanning {name}", progress) as cb:
                    results.append((name, find_broken(each, registry, examples=examples,
                                                      progress=cb, jobs=jobs)))
        finally:
            for each in set(db.databases.values()):
                each.close()
    if as_json:
        _emit_json({"databases": [{"name": n, **r.to_dict()} for n, r in results]})
        return
    for name, report in results:
        if not report.classes:
            click.echo(f"database {name!r}: {report.records} records, no broken classes")
        for c in report.classes:
            click.echo(f"{c.dotted}: {c.records} records, named by {c.mentions} more "
                       f"({c.error})")
            for e in c.examples:
                where = e.path if e.path else (
                    "no path from the root; referred to by "
                    + (", ".join(oid_repr(o) for o in e.referrers) or "nothing"))
                click.echo(f"  {oid_repr(e.oid)}  {where}")
        for u in report.unreadable:
            click.echo(f"unreadable record {oid_repr(u.oid)}: {u.reason}")


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
                click.echo(f"pclasses: warning: skipped {failure}", err=True)
        if not rules and registry is None:
            raise click.UsageError("give at least one --rename OLD=NEW or --from-entry-points")
        with progress_bar("dry run" if dry_run else "repairing", progress) as cb:
            report = rename_classes(
                target, rules, registry=registry, dry_run=dry_run, batch_size=batch_size,
                progress=cb, warn=lambda m: click.echo(f"pclasses: warning: {m}", err=True))
    if as_json:
        _emit_json(report.to_dict())
        return
    verb = "would rewrite" if dry_run else "rewrote"
    click.echo(f"read {report.records} records; {verb} {report.changed} "
               f"in {report.transactions} transactions")
    for old, n in sorted(report.renamed.items()):
        click.echo(f"  {old}: {n} records")
    if report.unreadable or report.skipped:
        click.echo(f"{len(report.unreadable)} unreadable, {len(report.skipped)} not rewritten "
                   "(see warnings)")


if __name__ == "__main__":  # pragma: no cover
    main()
