"""The broken-object inventory: which classes do not resolve, and where their objects sit.

:func:`find_broken` scans every current record once with the safe record
reader (nothing is imported except through the registry's lookups), counts
the records of each class that does not resolve and the records that name it
otherwise (a plain object pickled inside them, the class part of a
reference), and remembers each object's first referrer.  For a few example
oids per class it then follows the referrers back to the root and names
every step by attribute or key (``root['site'].shop['p0']``), or, when no
path to the root exists, lists the referring oids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ZODB.utils import oid_repr, z64

from .census import Unreadable, census_and_tally
from .errors import RecordDecodeError
from .record.reader import Inert, PersistentRef, read_record, scan_record
from .registry import ClassRegistry
from .scan import Progress, iter_records
from .trust import Trust

__all__ = ["BrokenReport", "BrokenClass", "BrokenExample", "find_broken", "edge_label"]

_MAX_DEPTH = 256


@dataclass
class BrokenExample:
    """One object of (or naming) a broken class, and where it sits."""

    oid: bytes
    path: str | None = None
    referrers: list[bytes] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "oid": oid_repr(self.oid),
            "path": self.path,
            "referrers": [oid_repr(o) for o in self.referrers],
        }


@dataclass
class BrokenClass:
    """A class named by the records that does not resolve."""

    module: str
    name: str
    records: int
    mentions: int
    error: str | None
    examples: list[BrokenExample] = field(default_factory=list)

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "name": self.name,
            "records": self.records,
            "mentions": self.mentions,
            "error": self.error,
            "examples": [e.to_dict() for e in self.examples],
        }


@dataclass
class BrokenReport:
    """The result of :func:`find_broken`: complete, not lazy."""

    records: int
    classes: list[BrokenClass]
    unreadable: list[Unreadable]

    def __bool__(self) -> bool:
        return bool(self.classes or self.unreadable)

    def __iter__(self) -> Any:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "broken_classes": [c.to_dict() for c in self.classes],
            "unreadable": [u.to_dict() for u in self.unreadable],
        }


def find_broken(
    db: Any,
    registry: ClassRegistry | None = None,
    *,
    examples: int = 3,
    progress: Progress | None = None,
    jobs: int | None = None,
    trust: Trust | Iterable[str] | None = None,
) -> BrokenReport:
    """Every class the records of ``db`` name that does not resolve.

    ``db`` is a ``ZODB.DB`` (its class factory's registry is used when
    ``registry`` is not given) or a storage.  Each broken class comes with
    its record count, the number of other records naming it, and up to
    ``examples`` example oids, each with a path from the root or, where
    none exists, the oids referring to it.  Names resolve as
    :func:`pclasses.census.take_census` resolves them: no module the records
    name is run unless trusted (``trust`` names more packages); a class
    whose module exists but is not trusted is not reported broken.
    """
    storage = getattr(db, "storage", db)
    if registry is None:
        factory = getattr(db, "classFactory", None)
        registry = getattr(factory, "registry", None) or ClassRegistry()
    connection = db.open() if hasattr(db, "open") else None
    try:
        census, tally = census_and_tally(storage, registry, connection=connection,
                                         progress=progress, jobs=jobs, parents=True,
                                         examples=examples, trust=trust)
    finally:
        if connection is not None:
            connection.close()
    parents = tally.parents or {}
    paths = _Paths(storage, parents)
    classes = []
    for usage in census.classes:
        if usage.status != "broken":
            continue
        # Objects of the class first; records that only name it otherwise
        # (containers of plain objects of it) when there are none.
        oids = sorted(usage.examples)[:examples] or sorted(usage.mention_examples)[:examples]
        found = [paths.example(oid) for oid in oids]
        classes.append(BrokenClass(usage.module, usage.name, usage.records, usage.mentions,
                                   usage.resolution.error if usage.resolution else None,
                                   found))
    missing_referrers = {e.oid for c in classes for e in c.examples if e.path is None}
    if missing_referrers:
        _all_referrers(storage, missing_referrers, classes)
    return BrokenReport(census.records, classes, census.unreadable)


class _Paths:
    """Paths from the root, following referrers and naming each edge."""

    def __init__(self, storage: Any, parents: dict[bytes, Any]) -> None:
        self.storage = storage
        self.parents = parents
        self._states: dict[bytes, Any] = {}

    def _referrers(self, oid: bytes) -> list[bytes]:
        known = self.parents.get(oid)
        if known is None:
            return []
        return [known] if known.__class__ is bytes else list(known)

    def _chain(self, oid: bytes) -> list[bytes] | None:
        """A chain of referrers from ``oid`` up to the root (breadth first)."""
        back: dict[bytes, bytes | None] = {oid: None}
        frontier = [oid]
        for _depth in range(_MAX_DEPTH):
            nxt = []
            for current in frontier:
                if current == z64:
                    chain = [current]
                    while back[chain[-1]] is not None:
                        chain.append(back[chain[-1]])  # type: ignore[arg-type]
                    return list(reversed(chain))
                for parent in self._referrers(current):
                    if parent not in back:
                        back[parent] = current
                        nxt.append(parent)
            if not nxt:
                return None
            frontier = nxt
        return None

    def example(self, oid: bytes) -> BrokenExample:
        referrers = self._referrers(oid)
        chain = self._chain(oid)
        if chain is None:
            return BrokenExample(oid, None, referrers)
        labels = [edge_label(self._state(parent), child)
                  for child, parent in zip(chain, chain[1:])]
        return BrokenExample(oid, "root" + "".join(reversed(labels)), referrers)

    def _state(self, oid: bytes) -> Any:
        if oid not in self._states:
            try:
                data, _tid = self.storage.load(oid)
                info = read_record(data, oid)
                self._states[oid] = (info.klass.pair or ("", ""), info.state)
            except (RecordDecodeError, KeyError) as exc:
                self._states[oid] = (("", ""), exc)
        return self._states[oid]


#: Classes whose state is ``{'data': <their items>}``: a step into them is a key.
_ITEM_CONTAINERS = {
    ("persistent.mapping", "PersistentMapping"),
    ("persistent.list", "PersistentList"),
    ("persistent.dict", "PersistentDict"),
    ("persistent.mapping", "PersistentDict"),
}


def edge_label(parent: tuple[str, Any], child: bytes) -> str:
    """How ``parent``'s state reaches ``child``: ``.attr``, ``['key']``, ``[3]``.

    ``parent`` is ``((class module, class name), inert state)``.
    PersistentMapping, PersistentDict and PersistentList keep their items
    under ``data``; BTrees keep internal nodes (which add no step) and
    buckets of alternating keys and values.
    """
    pair, state = parent
    if pair in _ITEM_CONTAINERS and isinstance(state, dict) and "data" in state:
        state = state["data"]
        found = _search(state, child, False, top=False)
    else:
        found = _search(state, child, pair[0].startswith("BTrees."), top=True)
    return found if found is not None else f"<{oid_repr(child)}>"


def _is_ref_to(value: Any, oid: bytes) -> bool:
    if isinstance(value, PersistentRef):
        try:
            return value.reference.oid == oid
        except RecordDecodeError:
            return False
    return False


def _key(k: Any) -> str:
    return f"[{k!r}]" if isinstance(k, (str, bytes, int, float, tuple)) else "[...]"


def _search(value: Any, oid: bytes, btree: bool, top: bool = False) -> str | None:
    # An explicit stack: inert state can nest deeply.
    stack: list[tuple[Any, str, bool]] = [(value, "", top)]
    seen: set[int] = set()
    while stack:
        v, prefix, is_top = stack.pop()
        if _is_ref_to(v, oid):
            return prefix
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, dict):
            for k, item in v.items():
                label = f".{k}" if is_top and isinstance(k, str) and k.isidentifier() else _key(k)
                stack.append((item, prefix + label, False))
        elif isinstance(v, (list, tuple)):
            if btree:
                # Buckets: (k0, v0, k1, v1, ...); tree nodes: (child0, key1, child1, ...)
                for i, item in enumerate(v):
                    if _is_ref_to(item, oid):
                        if i % 2 == 1 and not isinstance(v[i - 1], PersistentRef):
                            return prefix + _key(v[i - 1])
                        return prefix
                    if isinstance(item, (list, tuple, dict)):
                        stack.append((item, prefix, False))
                continue
            for i, item in enumerate(v):
                stack.append((item, prefix + f"[{i}]", False))
        elif isinstance(v, (set, frozenset)):
            for item in v:
                stack.append((item, prefix + "{...}", False))
        elif isinstance(v, Inert):
            stack.append((v.state, prefix, True))
            for i, item in enumerate(v.listitems or ()):
                stack.append((item, prefix + f"[{i}]", False))
            for k, item in v.dictitems or ():
                stack.append((item, prefix + _key(k), False))
            stack.append((v.args, prefix + "<args>", False))
    return None


def _all_referrers(storage: Any, wanted: set[bytes], classes: list[BrokenClass]) -> None:
    """Fill in every referrer of examples that have no path (one more pass)."""
    found: dict[bytes, list[bytes]] = {oid: [] for oid in wanted}
    for oid, data in iter_records(storage):
        try:
            pids = scan_record(data, oid).pids
        except RecordDecodeError:
            continue
        for p in pids:
            c = p.__class__
            child = p[0] if c is tuple else p if c is bytes else None
            if child in found and oid not in found[child] and len(found[child]) < 10:
                found[child].append(oid)
    for c in classes:
        for e in c.examples:
            if e.path is None:
                e.referrers = found.get(e.oid, e.referrers)
