"""Verifying (and repairing) the reference registries from the records.

The records are read with the record engine: nothing is unpickled but the
registry itself (the package's own classes).  One pass over each storage

* follows every persistent reference from the root (C analyzer's edges) to
  know which sources are alive;
* reads the stored references of the records that hold some (a byte search
  for :data:`~pclasses.refs.registry.STATE_KEY` picks them);

then compares with the registry's links:

* ``missing``: a live source holds a reference the registry has no link for;
* ``stale``: a link whose source is gone (no record, unreachable after a raw
  delete) or no longer holds that reference;
* ``dangling``: a live source refers to a reference id that is unknown, or
  whose key resolves to nothing (walked through the records of the
  containers: root mapping, ``PersistentMapping``, :class:`Folder`, OOBTree,
  zope.container's containers, OFS object managers).

``fix`` repairs: missing links are added, stale ones dropped, dangling
references kept (``"keep"``), set to ``None`` (``"null"``) or removed
(``"remove"``); the last two load the sources through the connection.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ZODB.POSException import POSKeyError
from ZODB.utils import oid_repr, z64

from ..errors import Breach, PClassesError
from ..record.analyze import analyze
from ..record.edges import edges_of
from ..record.reader import PersistentRef, read_record
from .integrity import declared
from .location import APPLICATION, split_key
from .registry import REGISTRY_KEY, STATE_KEY, RefRegistry, registry_of

__all__ = ["Problem", "VerifyReport", "RefRow", "verify_refs", "summarize", "referrers_of_key"]

_MARK = STATE_KEY.encode("ascii")


class Problem:
    """One finding of :func:`verify_refs`."""

    __slots__ = ("kind", "database", "oid", "ref_id", "reference_id", "key", "target_database",
                 "fixed")

    def __init__(self, kind: str, database: str, oid: bytes, ref_id: str, reference_id: str,
                 key: str | None, target_database: str) -> None:
        self.kind, self.database, self.oid = kind, database, oid
        self.ref_id, self.reference_id, self.key = ref_id, reference_id, key
        self.target_database = target_database
        self.fixed = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "database": self.database, "oid_repr": oid_repr(self.oid),
                "ref_id": self.ref_id, "reference_id": self.reference_id, "key": self.key,
                "target_database": self.target_database, "fixed": self.fixed}


class VerifyReport:
    """What :func:`verify_refs` found (and fixed)."""

    def __init__(self, databases: list[str], records: int, links: int,
                 problems: list[Problem], fix: str | None, dry_run: bool) -> None:
        self.databases, self.records, self.links = databases, records, links
        self.problems, self.fix, self.dry_run = problems, fix, dry_run

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.fixed]

    def to_dict(self) -> dict[str, Any]:
        return {"databases": self.databases, "records": self.records, "links": self.links,
                "fix": self.fix, "dry_run": self.dry_run,
                "problems": [p.to_dict() for p in self.problems],
                "remaining": len(self.remaining)}


# ---------------------------------------------------------------------------
# reading containers from records


def _state(storage: Any, oid: bytes) -> Any:
    try:
        data, _serial = storage.load(oid)
    except (POSKeyError, KeyError):
        return None
    try:
        return read_record(data, oid).state
    except (ValueError, PClassesError):
        return None


def _ref_oid(value: Any) -> bytes | None:
    if isinstance(value, PersistentRef):
        return value.reference.oid
    return None


def _btree_get(storage: Any, state: Any, name: str, depth: int = 0) -> Any:
    """Look ``name`` up in an OOBTree/OOBucket state read from records."""
    if state is None or depth > 64:
        return None
    if isinstance(state, tuple) and len(state) in (1, 2) and isinstance(state[0], tuple):
        items = state[0]
        if len(state) == 1 and len(items) == 1 and isinstance(items[0], tuple):
            return _btree_get(storage, items, name, depth + 1)  # inline bucket
        if len(items) % 2 == 0 and (not items or not isinstance(items[0], PersistentRef)):
            for i in range(0, len(items), 2):  # bucket: k, v, k, v
                if items[i] == name:
                    return items[i + 1]
            return None
        # tree: child0, key1, child1, key2, child2 ...
        child = items[0]
        for i in range(1, len(items), 2):
            if name >= items[i]:
                child = items[i + 1]
            else:
                break
        oid = _ref_oid(child)
        if oid is None:
            return None
        return _btree_get(storage, _state(storage, oid), name, depth + 1)
    return None


def _child_oid(storage: Any, state: Any, name: str) -> bytes | None:
    """The oid of ``name`` in a container whose state is ``state``."""
    if not isinstance(state, dict):
        return None
    for attr in ("data", "_container"):  # PersistentMapping / PersistentDict
        mapping = state.get(attr)
        if isinstance(mapping, dict):
            return _ref_oid(mapping.get(name))
    for attr in ("_data", "_SampleContainer__data"):  # Folder, zope.container's containers
        data = state.get(attr)
        if isinstance(data, dict):
            return _ref_oid(data.get(name))
        tree_oid = _ref_oid(data)
        if tree_oid is not None:
            return _ref_oid(_btree_get(storage, _state(storage, tree_oid), name))
    objects = state.get("_objects")  # OFS ObjectManager: items are attributes
    if isinstance(objects, tuple) and any(
            isinstance(o, dict) and o.get("id") == name for o in objects):
        return _ref_oid(state.get(name))
    return None


class _KeyResolver:
    """Resolves keys to oids through the records, with a cache."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.cache: dict[str, bytes | None] = {}
        root = _state(storage, z64)
        app = _child_oid(storage, root, APPLICATION)
        self.cache["/"] = app if app is not None else z64

    def __call__(self, key: str) -> bytes | None:
        if key in self.cache:
            return self.cache[key]
        names = split_key(key)
        parent = "/" + "/".join(names[:-1]) if len(names) > 1 else "/"
        parent_oid = self(parent)
        oid = None
        if parent_oid is not None:
            oid = _child_oid(self.storage, _state(self.storage, parent_oid), names[-1])
        self.cache[key] = oid
        return oid


# ---------------------------------------------------------------------------
# the pass over the records


def _scan(name: str, storage: Any) -> tuple[int, set[bytes], dict[bytes, Any]]:
    """(records, reachable oids, {oid: stored refs dict}) of one storage."""
    from ..scan import iter_records

    graph: dict[bytes, list[bytes]] = {}
    holders: dict[bytes, Any] = {}
    count = 0
    for oid, data in iter_records(storage):
        count += 1
        try:
            a = analyze(data)
            graph[oid] = [e.oid for e in edges_of(data, a)
                          if e.oid is not None and e.database in (None, name)]
        except (ValueError, PClassesError):
            graph[oid] = []
        if _MARK in data:
            state = _state_of(data, oid)
            if isinstance(state, dict) and isinstance(state.get(STATE_KEY), dict):
                holders[oid] = state[STATE_KEY]
    reachable: set[bytes] = set()
    todo = [z64]
    while todo:
        oid = todo.pop()
        if oid in reachable:
            continue
        reachable.add(oid)
        todo.extend(o for o in graph.get(oid, ()) if o not in reachable)
    return count, reachable, holders


def _state_of(data: bytes, oid: bytes) -> Any:
    try:
        return read_record(data, oid).state
    except (ValueError, PClassesError):
        return None


def _stored_links(name: str,
                  holders: dict[bytes, Any]) -> dict[str, set[tuple[str, str, str, bytes]]]:
    """Links the records hold, by target database."""
    found: dict[str, set[tuple[str, str, str, bytes]]] = defaultdict(set)
    for oid, refs in holders.items():
        for ref_key, value in refs.items():
            if not isinstance(ref_key, str):
                continue
            ref_id, _, target = ref_key.partition("@")
            values = value if isinstance(value, tuple) else (value,)
            for rid in values:
                if isinstance(rid, str):
                    found[target or name].add((rid, ref_id, name, oid))
    return found


def _registries(db: Any, read_only: bool) -> tuple[Any, dict[str, Any]]:
    dbs = getattr(db, "databases", None) or {db.database_name: db}
    first = sorted(dbs)[0]
    conn = dbs[first].open()
    conns = {n: (conn if n == first else conn.get_connection(n)) for n in dbs}
    return conn, conns


def verify_refs(db: Any, *, fix: str | None = None, dry_run: bool = False) -> VerifyReport:
    """Compare every database's reference registry with the records.

    ``fix`` (``"keep"``, ``"null"`` or ``"remove"``) repairs what was found
    and commits, unless ``dry_run``.
    """
    if fix not in (None, "keep", "null", "remove"):
        raise ValueError(f"fix {fix!r} is not one of keep, null, remove")
    dbs = getattr(db, "databases", None) or {db.database_name: db}
    scans = {n: _scan(n, each.storage) for n, each in sorted(dbs.items())}
    expected: dict[str, set[tuple[str, str, str, bytes]]] = defaultdict(set)
    all_holders: dict[tuple[str, bytes], Any] = {}
    for name, (_count, reachable, holders) in scans.items():
        live = {oid: refs for oid, refs in holders.items() if oid in reachable}
        for target, links in _stored_links(name, live).items():
            expected[target] |= links
        for oid, refs in holders.items():
            all_holders[(name, oid)] = refs
    conn, conns = _registries(db, read_only=fix is None)
    problems: list[Problem] = []
    fixes: list[tuple[Problem, Any, tuple[str, str, str, bytes]]] = []
    total_links = 0
    try:
        for name in sorted(dbs):
            registry = registry_of(conns[name], create=False)
            have: set[tuple[str, str, str, bytes]] = set(registry.links) if registry else set()
            total_links += len(have)
            want = expected.get(name, set())
            resolver = _KeyResolver(dbs[name].storage)
            reachable_by_db = {n: s[1] for n, s in scans.items()}
            ids: Any = registry.ids if registry is not None else {}
            for link in sorted(want - have):
                rid, ref_id, sdb, oid = link
                p = Problem("missing", sdb, oid, ref_id, rid, ids.get(rid), name)
                problems.append(p)
                fixes.append((p, registry, link))
            for link in sorted(have - want):
                rid, ref_id, sdb, oid = link
                p = Problem("stale", sdb, oid, ref_id, rid, ids.get(rid), name)
                problems.append(p)
                fixes.append((p, registry, link))
            for link in sorted(want):
                rid, ref_id, sdb, oid = link
                key = ids.get(rid)
                if key is not None and resolver(key) is not None:
                    continue
                if sdb in reachable_by_db and oid not in reachable_by_db[sdb]:
                    continue
                p = Problem("dangling", sdb, oid, ref_id, rid, key, name)
                problems.append(p)
                fixes.append((p, registry, link))
        if fix is not None and not dry_run:
            _apply(fixes, fix, conns)
            conn.transaction_manager.commit()
    finally:
        conn.transaction_manager.abort()
        conn.close()
    records = sum(s[0] for s in scans.values())
    return VerifyReport(sorted(dbs), records, total_links, problems, fix, dry_run)


def _apply(fixes: list[tuple[Problem, Any, tuple[str, str, str, bytes]]], fix: str,
           conns: dict[str, Any]) -> None:
    from .modes import fix_link

    for problem, registry, link in fixes:
        rid, ref_id, sdb, oid = link
        target_conn = conns[problem.target_database]
        if registry is None:
            registry = registry_of(target_conn)
        if problem.kind == "missing":
            registry.add_link(rid, ref_id, sdb, oid)
            problem.fixed = True
        elif problem.kind == "stale":
            registry.drop_link(rid, ref_id, sdb, oid)
            problem.fixed = True
        elif fix in ("null", "remove"):
            breach = Breach(problem.key or "?", ref_id.rpartition(".")[2], ref_id, sdb, oid,
                            target_conn)
            fix_link(registry, breach, rid, fix)
            if (rid, ref_id, sdb, oid) in registry.links:
                registry.drop_link(rid, ref_id, sdb, oid)
            problem.fixed = True


# ---------------------------------------------------------------------------
# listing


class RefRow:
    """One reference (ref id) of a database: mode, links, targets, dangling."""

    def __init__(self, database: str, ref_id: str, name: str, mode: str, links: int,
                 targets: int, dangling: int) -> None:
        self.database, self.ref_id, self.name, self.mode = database, ref_id, name, mode
        self.links, self.targets, self.dangling = links, targets, dangling

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "ref_id": self.ref_id, "name": self.name,
                "mode": self.mode, "links": self.links, "targets": self.targets,
                "dangling": self.dangling}


def summarize(db: Any) -> list[RefRow]:
    """One row per reference known to each database's registry."""
    dbs = getattr(db, "databases", None) or {db.database_name: db}
    conn, conns = _registries(db, read_only=True)
    rows = []
    try:
        for name in sorted(dbs):
            registry = registry_of(conns[name], create=False)
            if registry is None:
                continue
            resolver = _KeyResolver(dbs[name].storage)
            ref_ids = set(registry.names) | set(registry.modes)
            for ref_id in sorted(ref_ids):
                links = registry.links_of_ref(ref_id)
                targets = {rid for rid, *_ in links}
                dangling = sum(1 for rid in targets
                               if registry.ids.get(rid) is None
                               or resolver(registry.ids[rid]) is None)
                mode = registry.modes.get(ref_id)
                if mode is None:
                    desc = declared.get(ref_id)
                    mode = desc.mode if desc is not None else registry.code_modes.get(
                        ref_id, "always")
                rows.append(RefRow(name, ref_id, registry.names.get(ref_id, ref_id), mode,
                                   len(links), len(targets), dangling))
    finally:
        conn.transaction_manager.abort()
        conn.close()
    return rows


def referrers_of_key(db: Any, key: str) -> list[dict[str, Any]]:
    """The links to ``key`` (and under it) in every database's registry."""
    dbs = getattr(db, "databases", None) or {db.database_name: db}
    conn, conns = _registries(db, read_only=True)
    found = []
    try:
        split_key(key)
        for name in sorted(dbs):
            registry: RefRegistry | None = registry_of(conns[name], create=False)
            if registry is None:
                continue
            for k, rid in registry.subtree(key):
                for _rid, ref_id, sdb, oid in registry.links_of(rid):
                    found.append({"database": name, "key": k, "reference_id": rid,
                                  "ref_id": ref_id, "name": registry.names.get(ref_id, ref_id),
                                  "source_database": sdb, "oid_repr": oid_repr(oid)})
    finally:
        conn.transaction_manager.abort()
        conn.close()
    return found


_ = (REGISTRY_KEY,)
