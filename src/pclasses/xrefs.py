"""The cross-database reference seat belt.

In a multi-database, objects of one database can refer to objects of
another.  Applications create such references by accident (moving instead
of copying, a session object moved into the main database); they break when
the target expires or is packed away.  ZODB only offers all or nothing
(``xrefs=False``).

With ``check_xrefs`` switched on for a database (:func:`check_xrefs`, or
``pclasses.open(..., check_xrefs=True)``), every commit that stores an
object of that database holding a cross-database reference publishes a
:class:`CrossDatabaseReference` event (``ICrossDatabaseReferenceEvent``)
through ``zope.event``, one per reference.  A subscriber vetoes by raising:
the commit fails with that exception and the transaction is aborted in
every database.  Ready-made subscribers: :class:`XrefPolicy`.

Checking never wakes a ghost: the references come from the record just
written (the C record analyzer finds them), and targets are taken from the
target connection's cache (or as ghosts) by oid.  A record is only
analysed when the name of another database occurs in its bytes, so records
without cross-database references cost one substring search per database.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zope.event
from zope.interface import implementer

from .connection import add_record_hook
from .connection import install as install_connection
from .errors import (
    CrossDatabaseReferenceError,
    PClassesError,
    UnknownDatabaseError,
    XrefPolicySyntaxError,
)
from .interfaces import ICrossDatabaseReferenceEvent
from .record.analyze import EdgeKind
from .record.edges import edges, edges_of, split_targets
from .record.remote import MARKER as REMOTE_MARKER

__all__ = [
    "CrossDatabaseReference",
    "CrossDatabaseReferenceError",
    "XrefPolicy",
    "XrefRule",
    "check_xrefs",
    "check_record",
    "scan_xrefs",
]


@implementer(ICrossDatabaseReferenceEvent)
@dataclass
class CrossDatabaseReference:
    """An object of ``source_database`` about to be stored referring to ``target``.

    ``target`` is the referenced object (a ghost if it was not loaded), or
    ``None`` for a weak reference whose target no longer exists and for a
    remote reference of a tree of databases (``remote=True``: checking it
    opens no database; ``target_class`` and ``target_oid`` are what the
    reference records).
    """

    source: Any
    target: Any
    source_database: str
    target_database: str
    weak: bool = False
    remote: bool = False
    target_class: str | None = None
    target_oid: bytes | None = None

    def __repr__(self) -> str:
        from ZODB.utils import oid_repr

        return (f"<CrossDatabaseReference {self.source_database}:"
                f"{oid_repr(getattr(self.source, '_p_oid', None))} -> "
                f"{self.target_database}:"
                f"{oid_repr(self.target_oid or getattr(self.target, '_p_oid', None))}>")


def check_xrefs(db: Any, enabled: bool = True, databases: Iterable[str] | None = None) -> None:
    """Switch the seat belt on (or off) for ``db``.

    ``databases`` names the databases of ``db``'s multi-database to switch
    (default: ``db`` alone).  Each database's setting applies to the
    references its own objects hold.  The database's connections must be
    pclasses connections (a :class:`ClassRegistry` installed, as
    :func:`pclasses.open` does); this installs one if needed.
    """
    all_dbs = getattr(db, "databases", None) or {db.database_name: db}
    unknown = [name for name in (databases or ()) if name not in all_dbs]
    if unknown:
        raise UnknownDatabaseError(unknown, list(all_dbs))
    chosen = [db] if databases is None else [all_dbs[name] for name in databases]
    add_record_hook(_seat_belt)
    for each in chosen:
        each.check_xrefs = bool(enabled)
        install_connection(each)


def _seat_belt(connection: Any) -> Any:
    """The record hook: :func:`check_record` for databases with the seat belt on."""
    if not getattr(connection.db(), "check_xrefs", False):
        return None
    return lambda obj, data: check_record(connection, obj, data)


def check_record(connection: Any, obj: Any, data: bytes) -> None:
    """Publish an event for every cross-database reference in ``data``."""
    db = connection.db()
    others = [name for name in (getattr(db, "databases", None) or {})
              if name != db.database_name]
    remote = REMOTE_MARKER in data  # remote references of a tree of databases
    if not others and not remote:
        return
    encoded = [name.encode("utf-8") for name in others]
    if not remote and not any(name in data for name in encoded):
        return
    for e in edges(data):
        database = e.database
        if e.kind is EdgeKind.REMOTE:
            # Never opens the target's database: the record says it all.
            klass = ".".join(p for p in e.klass if p) if e.klass else None
            zope.event.notify(CrossDatabaseReference(
                obj, None, db.database_name, database or "?", remote=True,
                target_class=klass, target_oid=e.oid))
            continue
        if database is None or database == db.database_name or e.oid is None:
            continue
        oid = e.oid
        target_conn = connection.get_connection(database)
        target = target_conn._cache.get(oid)
        if target is None:
            try:
                target = target_conn.get(oid)  # a ghost; nothing is activated
            except KeyError:  # POSKeyError: a weak reference whose target was packed away
                target = None
        zope.event.notify(CrossDatabaseReference(obj, target, db.database_name, database,
                                                 weak=e.kind is EdgeKind.WEAK))


# ---------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class XrefRule:
    """``allow`` or deny references from ``source`` to ``target`` database.

    Database names and class names (``module.Name``) are shell patterns
    (``*`` matches all).
    """

    allow: bool
    source: str = "*"
    target: str = "*"
    source_class: str = "*"
    target_class: str = "*"

    def matches(self, event: Any) -> bool:
        if event.target is None and getattr(event, "remote", False):
            return (fnmatch.fnmatchcase(event.source_database, self.source)
                    and fnmatch.fnmatchcase(event.target_database, self.target)
                    and fnmatch.fnmatchcase(_dotted(event.source), self.source_class)
                    and fnmatch.fnmatchcase(event.target_class or "", self.target_class))
        if event.target is None:
            return self.target_class == "*" and fnmatch.fnmatchcase(
                event.source_database, self.source) and fnmatch.fnmatchcase(
                event.target_database, self.target) and fnmatch.fnmatchcase(
                _dotted(event.source), self.source_class)
        return (
            fnmatch.fnmatchcase(event.source_database, self.source)
            and fnmatch.fnmatchcase(event.target_database, self.target)
            and fnmatch.fnmatchcase(_dotted(event.source), self.source_class)
            and fnmatch.fnmatchcase(_dotted(event.target), self.target_class)
        )

    def __str__(self) -> str:
        text = f"{'allow' if self.allow else 'deny'} {self.source} -> {self.target}"
        if self.source_class != "*":
            text += f" source-class={self.source_class}"
        if self.target_class != "*":
            text += f" target-class={self.target_class}"
        return text


def _target_dotted(event: Any) -> str:
    if event.target is None and getattr(event, "target_class", None):
        return str(event.target_class)
    return _dotted(event.target)


def _dotted(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__name__}"


@dataclass
class XrefPolicy:
    """An ordered list of rules; the first rule that matches decides.

    References no rule matches are allowed (``default=True``) or denied.
    Call the policy with an event (it is a ``zope.event`` subscriber), or
    :meth:`install` it.

    >>> policy = XrefPolicy.parse("deny main -> session")
    """

    rules: list[XrefRule] = field(default_factory=list)
    default: bool = True

    def allow(self, source: str = "*", target: str = "*", *, source_class: str = "*",
              target_class: str = "*") -> XrefPolicy:
        self.rules.append(XrefRule(True, source, target, source_class, target_class))
        return self

    def deny(self, source: str = "*", target: str = "*", *, source_class: str = "*",
             target_class: str = "*") -> XrefPolicy:
        self.rules.append(XrefRule(False, source, target, source_class, target_class))
        return self

    def decide(self, event: Any) -> tuple[bool, XrefRule | None]:
        for rule in self.rules:
            if rule.matches(event):
                return rule.allow, rule
        return self.default, None

    def __call__(self, event: Any) -> None:
        if not ICrossDatabaseReferenceEvent.providedBy(event):
            return
        allowed, rule = self.decide(event)
        if not allowed:
            raise CrossDatabaseReferenceError(
                event.source_database, _dotted(event.source),
                getattr(event.source, "_p_oid", None), event.target_database,
                _target_dotted(event), event.target_oid or getattr(event.target, "_p_oid", None),
                None if rule is None else str(rule))

    def install(self) -> XrefPolicy:
        """Subscribe to ``zope.event`` (undo with :meth:`uninstall`)."""
        if self not in zope.event.subscribers:
            zope.event.subscribers.append(self)
        return self

    def uninstall(self) -> None:
        while self in zope.event.subscribers:
            zope.event.subscribers.remove(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    @classmethod
    def parse(cls, text: str) -> XrefPolicy:
        """Rules, one per line::

            # main may not reference the session database
            deny main -> session
            allow * -> catalog target-class=myapp.index.*
            default deny

        ``source-class=`` and ``target-class=`` restrict a rule by class.
        """
        policy = cls()
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] == "default" and len(words) == 2 and words[1] in ("allow", "deny"):
                policy.default = words[1] == "allow"
                continue
            if words[0] not in ("allow", "deny") or len(words) < 4 or words[2] != "->":
                raise XrefPolicySyntaxError(
                    number, "expected 'allow|deny SOURCE -> TARGET [source-class=PATTERN] "
                    f"[target-class=PATTERN]', got {raw.strip()!r}")
            options = {}
            for word in words[4:]:
                key, sep, value = word.partition("=")
                if not sep or key not in ("source-class", "target-class"):
                    raise XrefPolicySyntaxError(number, f"unknown option {word!r}")
                options[key.replace("-", "_")] = value
            policy.rules.append(XrefRule(words[0] == "allow", words[1], words[3], **options))
        return policy

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> XrefPolicy:
        with open(path, encoding="utf-8") as f:
            return cls.parse(f.read())


# ---------------------------------------------------------------------------
# Inventory of existing references
# ---------------------------------------------------------------------------


@dataclass
class XrefGroup:
    """References from ``source_database`` to ``target_database`` by class."""

    source_database: str
    target_database: str
    source_class: str
    target_class: str
    count: int = 0
    dangling: list[tuple[bytes, bytes]] = field(default_factory=list)  # (source, target)

    def to_dict(self) -> dict[str, Any]:
        from ZODB.utils import oid_repr

        return {
            "source_database": self.source_database,
            "target_database": self.target_database,
            "source_class": self.source_class,
            "target_class": self.target_class,
            "count": self.count,
            "dangling": [{"source": oid_repr(s), "target": oid_repr(t)}
                         for s, t in self.dangling],
        }


#: Target classes remembered (a cache: a target seen again is loaded again).
_TARGET_CACHE = 1 << 16


def scan_xrefs(db: Any, *, trust: Iterable[str] | None = None) -> list[XrefGroup]:
    """Every cross-database reference stored in ``db``'s multi-database.

    Read from the records with the record analyzer (nothing is unpickled);
    a reference whose target record does not exist (after a pack, say) is
    dangling.  Classes are named as the records spell them and never
    resolved, so no module is imported whatever ``trust`` says (accepted
    like the other inspection tools' option, see :mod:`pclasses.trust`).
    """
    from ZODB.POSException import POSKeyError

    from .record.analyze import analyze
    from .record.reader import read_class
    from .scan import iter_records

    dbs = getattr(db, "databases", None) or {db.database_name: db}
    groups: dict[tuple[str, str, str, str], XrefGroup] = {}
    target_classes: dict[tuple[str, bytes], str | None] = {}

    def target_class(database: str, oid: bytes) -> str | None:
        key = (database, oid)
        if key not in target_classes:
            if len(target_classes) >= _TARGET_CACHE:  # memory stays bounded
                target_classes.clear()
            other = dbs.get(database)
            if other is None:
                target_classes[key] = None
            else:
                try:
                    data, _tid = other.storage.load(oid)
                    target_classes[key] = read_class(data, oid).dotted
                except (POSKeyError, KeyError):
                    target_classes[key] = None
                except PClassesError:
                    target_classes[key] = "?"
        return target_classes[key]

    for name, each in sorted(dbs.items()):
        others = [n.encode("utf-8") for n in dbs if n != name]
        for oid, data in iter_records(each.storage):
            if others and not any(o in data for o in others):
                continue
            try:
                # the C pass lists references that are not plain ones of this
                # database; a record without any holds no cross-database one
                if not split_targets(data, oid)[1]:
                    continue
                a = analyze(data)
                source_class = read_class(data, oid).dotted
            except (ValueError, PClassesError):
                continue
            for e in edges_of(data, a):
                database = e.database
                if database is None or database == name or e.oid is None:
                    continue
                toid = e.oid
                if e.kind is EdgeKind.REMOTE and not dict.__contains__(dbs, database):
                    # a remote reference into a database not open: as recorded
                    tclass: str | None = ".".join(p for p in e.klass if p) if e.klass else "?"
                else:
                    tclass = target_class(database, toid)
                key = (name, database, source_class, tclass or "(missing)")
                group = groups.get(key)
                if group is None:
                    group = groups[key] = XrefGroup(*key)
                group.count += 1
                if tclass is None:
                    group.dangling.append((oid, toid))
    return sorted(groups.values(), key=lambda g: (g.source_database, g.target_database,
                                                  g.source_class, g.target_class))
