"""Walking every database of a tree (or ZConfig multi-database) by its records.

Records are read with the record engine only (:func:`pclasses.record.edges`,
never unpickled); memory holds the sets of oids seen, not the records.
Every reference form is followed: plain (``oid`` / ``oid_class``), ZODB's
cross-database ``m`` and ``n``, weak references (only when asked: they do not
keep their target alive) and the remote references of a tree.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from ..errors import DatabaseUnavailableError, PClassesError
from ..oidset import NO_OID, OidSet
from ..record.analyze import EdgeKind
from ..record.edges import split_targets
from .databases import databases_of
from .loader import Loader, loader_for

__all__ = ["open_all", "Walk", "walk", "FORMS"]

#: More references a record may stand for, read from its bytes: functions
#: ``data -> [(database, oid)]`` (the stubs of :mod:`pclasses.stores.stubs`
#: register here); reported with the form ``remote``.
record_extras: list[Any] = []

#: Reference forms as reports name them.
FORMS = ("plain", "m", "n", "weak", "remote")

_FORM = {
    EdgeKind.OID: "plain",
    EdgeKind.OID_CLASS: "plain",
    EdgeKind.MULTI: "m",
    EdgeKind.MULTI_OID: "n",
    EdgeKind.WEAK: "weak",
    EdgeKind.LEGACY: "weak",
    EdgeKind.REMOTE: "remote",
}


def open_all(db: Any, *, read_only: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """Open every database of ``db``'s tree: ``(name -> ZODB.DB, name -> why
    unavailable)``.  Children are opened read-only when ``read_only``."""
    dbs = databases_of(db)
    old = getattr(dbs, "force_read_only", False)
    dbs.force_read_only = read_only
    unavailable: dict[str, str] = {}
    try:
        while True:
            pending = [info for name, info in sorted(dbs.known.items())
                       if not dict.__contains__(dbs, name) and name not in unavailable
                       and name not in getattr(dbs, "foreign", ())]
            if not pending:
                break
            for info in pending:
                try:
                    dbs.open_info(info)
                except DatabaseUnavailableError as exc:
                    unavailable[info.name] = exc.reason
    finally:
        dbs.force_read_only = old
    return dict(dict.items(dbs)), unavailable


@dataclass
class Walk:
    """What a walk found."""

    #: database name -> oids reached from the roots
    reached: dict[str, OidSet] = field(default_factory=dict)
    #: ``(source_db, source_oid, target_db, target_oid, form, reason)``
    dangling: list[tuple[str, bytes, str, bytes, str, str]] = field(default_factory=list)
    #: database name -> oids some remote reference points to
    remote_targets: dict[str, OidSet] = field(default_factory=dict)
    references: int = 0
    unreadable: list[tuple[str, bytes, str]] = field(default_factory=list)


def walk(databases: dict[str, Any], unavailable: Iterable[str] = (), *,
         follow_weak: bool = True, roots: Iterable[tuple[str, bytes]] = (),
         loaders: dict[str, Loader] | None = None, after: Walk | None = None) -> Walk:
    """Follow references from every database's root (and ``roots``).

    ``follow_weak=False`` does not follow weak references (garbage
    collection); dangling weak references are still listed.  ``loaders``
    (name -> :class:`~pclasses.tree.loader.Loader`, left open) are made and
    closed here when not given.  With ``after`` (an earlier walk of the same
    databases), the walk goes on from ``roots`` only, adding to ``after``'s
    reached sets, and returns ``after``.
    """
    out = Walk() if after is None else after
    foreign = _foreign_names(databases)
    if loaders is not None:
        return _walk(out, loaders, set(unavailable), follow_weak, roots, foreign)
    own = {name: loader_for(db.storage) for name, db in databases.items()}
    try:
        return _walk(out, own, set(unavailable), follow_weak, roots, foreign)
    finally:
        for loader in own.values():
            loader.close()


_SWAP = sys.byteorder == "little"


def _foreign_names(databases: dict[str, Any]) -> frozenset[str]:
    """Names of the foreign databases (SQL stores) of the tree of ``databases``."""
    from .databases import TreeDatabases, foreign_scheme

    for db in databases.values():
        tree = getattr(db, "databases", None)
        if isinstance(tree, TreeDatabases):
            return frozenset(n for n, info in tree.known.items()
                             if foreign_scheme(info.target) is not None)
    return frozenset()


def _walk(out: Walk, loaders: dict[str, Loader], unavailable: set[str], follow_weak: bool,
          roots: Iterable[tuple[str, bytes]], foreign: frozenset[str] = frozenset()) -> Walk:
    # One stack per database of (oid, referring oid) as two arrays of ints:
    # plain references push a whole record's targets at once.  A target
    # pushed with the referrer NO_OID was checked (or is a root): it is not
    # reported again when missing.
    reached = out.reached
    stacks: dict[str, tuple[array[int], array[int]]] = {}
    for name, loader in loaders.items():
        if name in reached:  # going on from an earlier walk
            stacks[name] = (array("Q"), array("Q"))
        else:
            reached[name] = OidSet(loader.size)
            stacks[name] = (array("Q", [0]), array("Q", [NO_OID]))
    for rname, root in roots:
        if rname in stacks:
            stacks[rname][0].append(int.from_bytes(root, "big"))
            stacks[rname][1].append(NO_OID)
    dangling = out.dangling
    missing: dict[str, set[int]] = {name: set() for name in loaders}
    references = out.references

    def other_edge(name: str, oid: int, kind: EdgeKind, toid: bytes, database: str | None) -> None:
        form = _FORM.get(kind)
        if form is None:
            return
        target = database or name
        t = int.from_bytes(toid, "big")
        if form == "remote":
            held = out.remote_targets.get(target)
            if held is None:
                held = out.remote_targets[target] = OidSet()
            held.add_new(t)
        tseen = reached.get(target)
        if tseen is None:
            if target in foreign:  # a row of an SQL store: not walked here
                return
            reason = "unavailable" if target in unavailable else "unknown-database"
            dangling.append((name, _b(oid), target, toid, form, reason))
            return
        if len(toid) != 8 and t.to_bytes(8, "big") != toid:
            dangling.append((name, _b(oid), target, toid, form, "missing"))
            return
        if tseen.has(t):
            return
        if t in missing[target] or loaders[target].load(t) is None:
            missing[target].add(t)
            dangling.append((name, _b(oid), target, toid, form, "missing"))
            return
        if form == "weak" and not follow_weak:
            return
        stacks[target][0].append(t)
        stacks[target][1].append(NO_OID)

    busy = True
    while busy:
        busy = False
        for name in sorted(stacks):
            stack, srcs = stacks[name]
            if not stack:
                continue
            busy = True
            seen = reached[name]
            bits = seen.bits
            nbits = len(bits)
            gone = missing[name]
            load = loaders[name].load
            pop, spop = stack.pop, srcs.pop
            push, spush = stack.extend, srcs.extend
            count = 0
            while stack:
                oid = pop()
                src = spop()
                if oid < nbits:
                    if bits[oid]:
                        continue
                    data = load(oid)
                    if data is None:
                        if src != NO_OID:
                            gone.add(oid)
                            dangling.append((name, _b(src), name, _b(oid), "plain", "missing"))
                        continue
                    bits[oid] = 1
                    count += 1
                else:
                    if seen.has(oid):
                        continue
                    data = load(oid)
                    if data is None:
                        if src != NO_OID:
                            gone.add(oid)
                            dangling.append((name, _b(src), name, _b(oid), "plain", "missing"))
                        continue
                    seen.add_new(oid)
                    bits = seen.bits
                    nbits = len(bits)
                try:
                    plain, other = split_targets(data)
                except PClassesError as exc:
                    out.unreadable.append((name, _b(oid), str(exc)))
                    continue
                n = len(plain) >> 3
                if n:
                    references += n
                    targets = array("Q", plain)
                    if _SWAP:
                        targets.byteswap()
                    push(targets)
                    spush(repeat(oid, n))
                if other:
                    references += len(other)
                    for kind, toid, database in other:
                        other_edge(name, oid, kind, toid, database)
                if record_extras:
                    for extra in record_extras:
                        for database, toid in extra(data):
                            references += 1
                            other_edge(name, oid, EdgeKind.REMOTE, toid, database)
            seen.count += count
    out.references = references
    return out


def _b(oid: int) -> bytes:
    return oid.to_bytes(8, "big")
