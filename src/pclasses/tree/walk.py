"""Walking every database of a tree (or ZConfig multi-database) by its records.

Records are read with the record engine only (:func:`pclasses.record.edges`,
never unpickled); memory holds the sets of oids seen, not the records.
Every reference form is followed: plain (``oid`` / ``oid_class``), ZODB's
cross-database ``m`` and ``n``, weak references (only when asked: they do not
keep their target alive) and the remote references of a tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ZODB.POSException import POSKeyError
from ZODB.utils import z64

from ..errors import DatabaseUnavailableError, PClassesError
from ..record.analyze import EdgeKind
from ..record.edges import targets
from .databases import databases_of

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
                       if not dict.__contains__(dbs, name) and name not in unavailable]
            if not pending:
                break
            for info in pending:
                try:
                    dbs.open_info(info)
                except DatabaseUnavailableError as exc:
                    unavailable[info.name] = exc.reason
    finally:
        dbs.force_read_only = old
    # Foreign databases (SQL stores) hold no ZODB records: not walked.
    return {n: d for n, d in dict.items(dbs) if not getattr(d, "pclasses_foreign", False)}, \
        unavailable


@dataclass
class Walk:
    """What a walk found."""

    #: database name -> oids reached from the roots
    reached: dict[str, set[bytes]] = field(default_factory=dict)
    #: ``(source_db, source_oid, target_db, target_oid, form, reason)``
    dangling: list[tuple[str, bytes, str, bytes, str, str]] = field(default_factory=list)
    #: database name -> oids some remote reference points to
    remote_targets: dict[str, set[bytes]] = field(default_factory=dict)
    references: int = 0
    unreadable: list[tuple[str, bytes, str]] = field(default_factory=list)


def walk(databases: dict[str, Any], unavailable: Iterable[str] = (), *,
         follow_weak: bool = True, roots: Iterable[tuple[str, bytes]] = (),
         skip: dict[str, set[bytes]] | None = None) -> Walk:
    """Follow references from every database's root (and ``roots``).

    ``follow_weak=False`` does not follow weak references (garbage
    collection); dangling weak references are still listed.  ``skip`` names
    oids not to follow (still counted as reached).
    """
    out = Walk()
    databases = {n: d for n, d in databases.items() if not getattr(d, "pclasses_foreign", False)}
    storages = {name: _Loader(db.storage) for name, db in databases.items()}
    try:
        return _walk(out, storages, set(unavailable), follow_weak, roots, skip or {},
                     _foreign_names(databases))
    finally:
        for loader in storages.values():
            loader.close()


def _walk(out: Walk, storages: dict[str, Any], unavailable: set[str], follow_weak: bool,
          roots: Iterable[tuple[str, bytes]], skip: dict[str, set[bytes]],
          foreign: frozenset[str] = frozenset()) -> Walk:
    reached = out.reached
    for name in storages:
        reached[name] = set()
    # (database, oid, referring database, referring oid, form)
    stack: list[tuple[Any, ...]] = [(name, z64, None, None, "") for name in sorted(storages)]
    stack.extend((n, o, None, None, "") for n, o in roots)
    dangling = out.dangling
    missing: set[tuple[str, bytes]] = set()
    remote_targets = out.remote_targets
    push = stack.append
    pop = stack.pop
    while stack:
        name, oid, source, soid, form = pop()
        seen = reached[name]
        if oid in seen:
            continue
        try:
            data, _tid = storages[name].load(oid)
        except POSKeyError:
            if source is not None:
                dangling.append((source, soid, name, oid, form, "missing"))
                missing.add((name, oid))
            continue
        seen.add(oid)
        if oid in skip.get(name, ()):
            continue
        try:
            found = targets(data, oid)
        except PClassesError as exc:
            out.unreadable.append((name, oid, str(exc)))
            continue
        if record_extras:
            more = [(EdgeKind.REMOTE, o, d) for fn in record_extras for d, o in fn(data)]
            if more:
                found = [*found, *more]
        out.references += len(found)
        for kind, toid, database in found:
            form = _FORM.get(kind)
            if form is None:
                continue
            target = database or name
            if form == "remote":
                remote_targets.setdefault(target, set()).add(toid)
            tseen = reached.get(target)
            if tseen is None:
                if target in foreign:  # a row of an SQL store: not walked here
                    continue
                reason = "unavailable" if target in unavailable else "unknown-database"
                dangling.append((name, oid, target, toid, form, reason))
                continue
            if toid in tseen:
                continue
            if missing and (target, toid) in missing:
                dangling.append((name, oid, target, toid, form, "missing"))
                continue
            if form == "weak" and not follow_weak:
                if not _exists(storages[target], toid):
                    missing.add((target, toid))
                    dangling.append((name, oid, target, toid, form, "missing"))
                continue
            push((target, toid, name, oid, form))
    return out


def _foreign_names(databases: dict[str, Any]) -> frozenset[str]:
    """Names of the foreign databases (SQL stores) of the tree of ``databases``."""
    from .databases import TreeDatabases, foreign_scheme

    for db in databases.values():
        tree = getattr(db, "databases", None)
        if isinstance(tree, TreeDatabases):
            return frozenset(n for n, info in tree.known.items()
                             if foreign_scheme(info.target) is not None)
    return frozenset()


class _Loader:
    """``load(oid) -> (data, tid)`` of a storage; a FileStorage is read
    straight from its file at the positions its index gives (the databases
    are open for this walk, read-only or not written meanwhile), anything
    unusual (a backpointer, a deletion) through the storage."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.load = storage.load
        index = getattr(storage, "_index", None)
        name = getattr(storage, "_file_name", None)
        data = getattr(index, "_data", None)
        if data is None or name is None:
            return
        import mmap
        import struct

        f = open(name, "rb")  # noqa: SIM115 - closed by close()
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file
            f.close()
            return
        header = struct.Struct(">8s8sQQHQ")  # oid tid prev tloc vlen plen
        unpack, size = header.unpack_from, header.size
        buckets = data.get
        slow = storage.load
        end = len(mm)
        self._file = f
        self._mm = mm

        def load(oid: bytes) -> tuple[bytes, bytes]:
            bucket = buckets(oid[:6])
            p = bucket.get(oid[6:]) if bucket is not None else None
            if p is None:
                return slow(oid)  # type: ignore[no-any-return]  # POSKeyError
            pos = int.from_bytes(p, "big")
            if pos + size > end:  # written after the map was made
                return slow(oid)  # type: ignore[no-any-return]
            hoid, tid, _prev, _tloc, vlen, plen = unpack(mm, pos)
            if hoid != oid or vlen or not plen or pos + size + plen > end:
                return slow(oid)  # type: ignore[no-any-return]
            return mm[pos + size:pos + size + plen], tid

        self.load = load

    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None:
            mm.close()
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()


def _exists(storage: Any, oid: bytes) -> bool:
    try:
        storage.load(oid)
    except POSKeyError:
        return False
    return True
