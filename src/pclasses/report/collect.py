"""Gathering what the other tools compute into one :class:`ReportData`.

Every figure comes from a library function that reads records with the
record engine (nothing stored is run): the reference check of a tree or
multi-database (:func:`pclasses.tree.check_refs`, which also opens the
children a tree's handles name, read-only), the census of each database
and the broken inventory with root paths, both from one scan
(:func:`pclasses.inventory.broken_and_census`), the cross-database references
(:func:`pclasses.xrefs.scan_xrefs`, when there are several databases) and
the intrinsic-reference registries (:func:`pclasses.refs.verify.summarize`
and :func:`~pclasses.refs.verify.verify_refs`, only where a registry exists).

Lists that grow with the data are capped (:data:`LIMITS`) so that the page
and the JSON stay small on a database of ten million records; every capped
list keeps its full count beside it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from ZODB.utils import oid_repr

from ..census import Census
from ..errors import PClassesError
from ..inventory import BrokenReport, broken_and_census
from ..registry import ClassRegistry
from ..scan import Progress

__all__ = ["LIMITS", "DatabaseSection", "Link", "Suggestion", "ReportData", "collect",
           "report_target"]

#: How many items of each growing list a report keeps.
LIMITS = {
    "classes": 1000,         # rows of the classes table, per database
    "broken_classes": 100,   # broken classes shown with their examples, per database
    "broken_names": 500,     # broken class names listed in the summary
    "examples": 3,           # example objects per broken class
    "dangling": 100,         # dangling references listed
    "xref_dangling": 20,     # dangling references kept per cross-database group
    "unreadable": 100,       # unreadable records listed, per database
    "refs_problems": 100,    # intrinsic-reference problems listed
    "text": 600,             # characters of one path or message
}

#: A step of the work: ``step(label)`` returns a context giving a progress
#: callback (or ``None``), as :func:`pclasses.cli.progress_bar` does.
StepProgress = Callable[[str], AbstractContextManager[Progress | None]]


def _clip(text: str | None) -> str | None:
    limit = LIMITS["text"]
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


@dataclass
class DatabaseSection:
    """One database: its census and, if it has broken classes, their inventory."""

    name: str
    census: Census
    broken: BrokenReport | None = None

    @property
    def records(self) -> int:
        return self.census.records

    def to_dict(self) -> dict[str, Any]:
        classes = self.census.classes
        broken = self.broken.classes if self.broken is not None else []
        unreadable = self.census.unreadable
        return {
            "name": self.name,
            "records": self.census.records,
            "classes_total": len(classes),
            "classes": [c.to_dict() for c in classes[: LIMITS["classes"]]],
            "broken_classes_total": len(broken),
            "broken_classes": [
                {**b.to_dict(), "examples": [
                    {**e.to_dict(), "path": _clip(e.path)} for e in b.examples]}
                for b in broken[: LIMITS["broken_classes"]]],
            "unreadable_total": len(unreadable),
            "unreadable": [{"oid": oid_repr(u.oid), "reason": _clip(u.reason)}
                           for u in unreadable[: LIMITS["unreadable"]]],
            "resident_classes": [r.to_dict() for r in self.census.resident],
        }


@dataclass
class Link:
    """References from one database to another (or into nothing)."""

    source: str
    target: str
    count: int = 0
    dangling: int = 0
    #: the target is not a database of the report (unknown or unavailable)
    missing_target: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "count": self.count,
                "dangling": self.dangling, "missing_target": self.missing_target}


@dataclass
class Suggestion:
    """A command that would repair (or look closer at) something found."""

    command: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"command": self.command, "reason": self.reason}


@dataclass
class ReportData:
    """Everything a report page shows; :meth:`to_dict` is the ``--json`` document."""

    target: str
    databases: list[DatabaseSection] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    xrefs: list[Any] = field(default_factory=list)          # XrefGroup
    refs_check: Any = None                                  # RefsReport or None
    refs_check_error: str | None = None
    refs_rows: list[Any] = field(default_factory=list)      # RefRow
    refs_verify: Any = None                                 # VerifyReport or None
    suggestions: list[Suggestion] = field(default_factory=list)

    # -- totals ---------------------------------------------------------------

    @property
    def records(self) -> int:
        return sum(d.records for d in self.databases)

    @property
    def classes(self) -> int:
        return len({c.dotted for d in self.databases for c in d.census.classes})

    @property
    def broken_classes(self) -> list[str]:
        """Dotted names of every broken class (each once, sorted)."""
        return sorted({c.dotted for d in self.databases for c in d.census.broken})

    @property
    def dangling(self) -> int:
        if self.refs_check is not None:
            return len(self.refs_check.dangling)
        return sum(len(g.dangling) for g in self.xrefs)

    @property
    def unreadable(self) -> int:
        return sum(len(d.census.unreadable) for d in self.databases)

    @property
    def refs_problems(self) -> int:
        return len(self.refs_verify.remaining) if self.refs_verify is not None else 0

    @property
    def healthy(self) -> bool:
        return not (self.broken_classes or self.dangling or self.unreadable
                    or self.refs_problems)

    @property
    def not_checked(self) -> int:
        """Classes whose module was found but not imported (not trusted)."""
        return len({c.dotted for d in self.databases for c in d.census.classes
                    if c.status == "not-imported"})

    @property
    def verdict(self) -> str:
        """One line a person reads first."""
        if self.healthy:
            unchecked = self.not_checked
            note = (f"; {unchecked} class{'es' if unchecked != 1 else ''} not checked "
                    "(module found but not trusted, see --trust)" if unchecked else "")
            return (f"Healthy: every class resolves and no reference dangles "
                    f"({self.records} records in {len(self.databases)} "
                    f"database{'s' if len(self.databases) != 1 else ''}{note}).")
        found = []
        n = len(self.broken_classes)
        if n:
            found.append(f"{n} broken class{'es' if n != 1 else ''}")
        if self.dangling:
            found.append(f"{self.dangling} dangling reference{'s' if self.dangling != 1 else ''}")
        if self.unreadable:
            found.append(f"{self.unreadable} unreadable record"
                         f"{'s' if self.unreadable != 1 else ''}")
        if self.refs_problems:
            found.append(f"{self.refs_problems} intrinsic-reference problem"
                         f"{'s' if self.refs_problems != 1 else ''}")
        return "Needs attention: " + ", ".join(found) + "."

    def to_dict(self) -> dict[str, Any]:
        check = self.refs_check
        dangling = check.dangling if check is not None else []
        verify = self.refs_verify
        return {
            "target": self.target,
            "summary": {
                "verdict": self.verdict,
                "healthy": self.healthy,
                "databases": len(self.databases),
                "records": self.records,
                "classes": self.classes,
                "broken_classes": len(self.broken_classes),
                "broken_class_names": self.broken_classes[: LIMITS["broken_names"]],
                "dangling_references": self.dangling,
                "unreadable_records": self.unreadable,
                "refs_problems": self.refs_problems,
                "not_checked_classes": self.not_checked,
            },
            "databases": [d.to_dict() for d in self.databases],
            "links": [link.to_dict() for link in self.links],
            "xrefs": [_xref_dict(g) for g in self.xrefs],
            "refs_check": None if check is None else {
                "databases": check.databases,
                "unavailable": dict(check.unavailable),
                "objects": dict(check.objects),
                "references": check.references,
                "dangling_total": len(dangling),
                "dangling": [d.to_dict() for d in dangling[: LIMITS["dangling"]]],
            },
            "refs_check_error": self.refs_check_error,
            "refs": [row.to_dict() for row in self.refs_rows],
            "refs_verify": None if verify is None else {
                "records": verify.records,
                "links": verify.links,
                "problems_total": len(verify.problems),
                "problems": [p.to_dict() for p in verify.problems[: LIMITS["refs_problems"]]],
            },
            "suggestions": [s.to_dict() for s in self.suggestions],
            "limits": dict(LIMITS),
        }


def _xref_dict(group: Any) -> dict[str, Any]:
    data: dict[str, Any] = group.to_dict()
    data["dangling_total"] = len(group.dangling)
    data["dangling"] = data["dangling"][: LIMITS["xref_dangling"]]
    return data


# ---------------------------------------------------------------------------
# collecting


def report_target(
    target: str,
    registry: ClassRegistry | None = None,
    *,
    progress: StepProgress | None = None,
    jobs: int | None = None,
    trust: Iterable[str] | None = None,
    blob_dir: str | None = None,
    examples: int = LIMITS["examples"],
) -> ReportData:
    """Open ``target`` read-only, :func:`collect` its report, close it.

    The databases (the target's and those of a tree it is the root of) get
    a class factory that imports no module the data chooses
    (:class:`~pclasses.report.inspecting.Inspecting`): nothing the data
    names is imported or run beyond what ``trust`` allows.

    Raises :class:`~pclasses.errors.StorageOpenError` when the target
    cannot be opened; anything found in the data is a finding, not an error.
    """
    from ..database import open as open_db
    from ..tree.databases import databases_of
    from .inspecting import Inspecting

    if registry is None:
        registry = ClassRegistry()
    # Objects loaded through connections (a tree's handles, the reference
    # registries) import no module the data names, here and in every child.
    inspecting: Any = Inspecting(registry, trust or ())
    db = open_db(target, inspecting, read_only=True, create=False, blob_dir=blob_dir)
    try:
        databases_of(db, inspecting)
        return collect(db, registry, target=target, progress=progress, jobs=jobs,
                       trust=trust, examples=examples)
    finally:
        for each in set(db.databases.values()) | {db}:
            each.close()


def collect(
    db: Any,
    registry: ClassRegistry | None = None,
    *,
    target: str | None = None,
    progress: StepProgress | None = None,
    jobs: int | None = None,
    trust: Iterable[str] | None = None,
    examples: int = LIMITS["examples"],
) -> ReportData:
    """The report of ``db`` (a ``ZODB.DB``; every database of its
    multi-database, and of its tree when it is the root of one)."""
    from ..refs.verify import summarize, verify_refs
    from ..tree import check_refs
    from ..xrefs import scan_xrefs

    if registry is None:
        factory = getattr(db, "classFactory", None)
        registry = getattr(factory, "registry", None) or ClassRegistry()
    step: StepProgress = progress or (lambda _label: nullcontext(None))
    trust = tuple(trust or ())
    examples = max(0, min(examples, 10))
    data = ReportData(target if target is not None else str(db.database_name))

    # The reference check first: it opens (read-only) the children of a tree.
    with step("checking references"):
        try:
            data.refs_check = check_refs(db)
        except PClassesError as exc:
            data.refs_check_error = _clip(str(exc))
    dbs = dict(getattr(db, "databases", None) or {db.database_name: db})

    for name, each in sorted(dbs.items()):
        # One scan gives the census and, where classes are broken, the
        # referrers their examples' paths are followed through.
        with step(f"census of {name}") as cb:
            broken, census = broken_and_census(each, registry, examples=examples,
                                               progress=cb, jobs=jobs, trust=trust)
        section = DatabaseSection(name, census)
        if census.broken:
            section.broken = broken
        data.databases.append(section)

    if len(dbs) > 1:
        with step("cross-database references"):
            data.xrefs = scan_xrefs(db, trust=trust)

    with step("intrinsic references"):
        try:
            data.refs_rows = summarize(db)
            if data.refs_rows:
                data.refs_verify = verify_refs(db)
        except PClassesError as exc:  # a registry that cannot be read: say so, go on
            data.refs_check_error = data.refs_check_error or _clip(str(exc))

    data.links = _links(data, set(dbs))
    data.suggestions = suggest(data, registry)
    return data


def _links(data: ReportData, names: set[str]) -> list[Link]:
    """References between databases, with dangling counts, for the drawing."""
    links: dict[tuple[str, str], Link] = {}

    def link(source: str, target: str) -> Link:
        key = (source, target)
        if key not in links:
            links[key] = Link(source, target, missing_target=target not in names)
        return links[key]

    for g in data.xrefs:
        each = link(g.source_database, g.target_database)
        each.count += g.count
        each.dangling += len(g.dangling)
    check = data.refs_check
    if check is not None:
        for d in check.dangling:
            if d.target_database == d.source_database:
                link(d.source_database, d.target_database).dangling += 1
            elif d.target_database not in names:  # never seen by scan_xrefs
                each = link(d.source_database, d.target_database)
                each.count += 1
                each.dangling += 1
    return sorted(links.values(), key=lambda x: (x.source, x.target))


# ---------------------------------------------------------------------------
# suggestions


def suggest(data: ReportData, registry: ClassRegistry) -> list[Suggestion]:
    """The commands that would repair what ``data`` found.

    A class whose records still use a name the registry aliases (a rename
    rule known from a registration or an installed package's entry point)
    gets ``pclasses repair --rename OLD=NEW``; a broken class with no known
    rule gets the same command with ``NEW`` to fill in.  Names are quoted
    for a POSIX shell.
    """
    target = shlex.quote(data.target)
    out: list[Suggestion] = []
    renames: dict[str, str] = {}
    unknown: list[str] = []
    not_imported: set[str] = set()
    for section in data.databases:
        for c in section.census.classes:
            res = c.resolution
            if res is None:
                continue
            if res.how == "aliased" and len(res.chain) > 1:
                renames[c.dotted] = res.chain[-1]
            elif res.how == "broken":
                unknown.append(c.dotted)
            elif res.how == "not-imported":
                not_imported.add(c.module.split(".")[0])
    if renames:
        rules = " ".join(f"--rename {shlex.quote(f'{old}={new}')}"
                         for old, new in sorted(renames.items()))
        out.append(Suggestion(
            f"pclasses repair {target} {rules} --dry-run",
            f"{len(renames)} class name(s) resolve through a known rename rule; rewriting "
            "the records makes the rule unnecessary (drop --dry-run to write)"))
    for dotted in sorted(set(unknown))[: LIMITS["broken_classes"]]:
        module, _, name = dotted.rpartition(".")
        out.append(Suggestion(
            f"pclasses repair {target} --rename {shlex.quote(f'{dotted}=NEW.MODULE.{name}')}"
            " --dry-run",
            f"{dotted} does not resolve and no rename rule is known: put where the class "
            "lives now in place of NEW.MODULE (or install the package that provides "
            f"{module})"))
    for package in sorted(not_imported):
        out.append(Suggestion(
            f"pclasses report {target} --trust {shlex.quote(package)} -o report.html",
            f"modules of {package} exist but were not imported (not trusted), so their "
            "classes were not checked"))
    if data.dangling:
        out.append(Suggestion(
            f"pclasses refs-check {target} --referrers",
            f"{data.dangling} reference(s) dangle: list every referrer of each gone target"))
    if data.refs_problems:
        out.append(Suggestion(
            f"pclasses refs {target} --verify --fix keep --dry-run",
            f"{data.refs_problems} intrinsic-reference problem(s): repair the registries "
            "(--fix null or remove also clears dangling references)"))
    if data.unreadable:
        out.append(Suggestion(
            f"pclasses classes {target} --json",
            f"{data.unreadable} record(s) cannot be read; their oids and reasons are listed"))
    return out
