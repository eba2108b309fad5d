"""The broken-object inventory: which classes do not resolve, and where their objects sit.

:func:`find_broken` scans every current record once with the safe record
reader (nothing is imported except through the registry's lookups), counts
the records of each class that does not resolve and the records that name it
otherwise (a plain object pickled inside them, the class part of a
reference), and remembers each object's first few referrers in arrays
indexed by oid (:class:`pclasses.referrers.Referrers`: 8 bytes an object,
12 more for one with several referrers).  For a few example
oids per class it then follows the referrers back to the root and names
every step by attribute or key (``root['site'].shop['p0']``), or, when no
path to the root exists, lists the referring oids.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ZODB.utils import oid_repr

from .census import CENSUS_EXAMPLES, Census, Unreadable, census_and_tally
from .errors import RecordDecodeError
from .oidset import OidSet
from .record.edges import split_targets
from .record.reader import Inert, PersistentRef, read_record
from .referrers import REFERRERS, Referrers
from .registry import ClassRegistry
from .scan import Progress, in_oid_order, iter_records
from .trust import Trust

__all__ = ["BrokenReport", "BrokenClass", "BrokenExample", "find_broken", "broken_and_census",
           "edge_label"]

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
    return broken_and_census(db, registry, examples=examples, progress=progress, jobs=jobs,
                             trust=trust)[0]


def broken_and_census(
    db: Any,
    registry: ClassRegistry | None = None,
    *,
    examples: int = 3,
    progress: Progress | None = None,
    jobs: int | None = None,
    trust: Trust | Iterable[str] | None = None,
) -> tuple[BrokenReport, Census]:
    """:func:`find_broken`, and the census its one scan takes on the way
    (what :func:`pclasses.census.take_census` gives), for the report."""
    storage = getattr(db, "storage", db)
    if registry is None:
        factory = getattr(db, "classFactory", None)
        registry = getattr(factory, "registry", None) or ClassRegistry()
    connection = db.open() if hasattr(db, "open") else None
    try:
        census, tally = census_and_tally(storage, registry, connection=connection,
                                         progress=progress, jobs=jobs, parents=True,
                                         examples=max(examples, CENSUS_EXAMPLES), trust=trust)
    finally:
        if connection is not None:
            connection.close()
    referrers = tally.parents
    if not isinstance(referrers, Referrers):  # none were asked for
        referrers = Referrers()
    paths = _Paths(storage, referrers)
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
    # Examples without a path list every referrer (up to ten).  Those with
    # fewer than the map keeps have them all already when the scan met
    # records in oid order; the others take one more pass.
    ordered = in_oid_order(storage)
    missing_referrers = {e.oid for c in classes for e in c.examples
                         if e.path is None and not (ordered and _complete(storage, e))}
    if missing_referrers:
        _all_referrers(storage, missing_referrers, classes)
    for usage in census.classes:  # as many examples as take_census keeps (the smallest)
        usage.examples = usage.examples[:CENSUS_EXAMPLES]
        usage.mention_examples = usage.mention_examples[:CENSUS_EXAMPLES]
    return BrokenReport(census.records, classes, census.unreadable), census


class _Paths:
    """Paths from the root, following referrers and naming each edge."""

    def __init__(self, storage: Any, referrers: Referrers) -> None:
        self.storage = storage
        self.referrers = referrers
        self._states: dict[bytes, Any] = {}
        self._seen = OidSet(len(referrers.first))

    def _chain(self, oid: int) -> list[int] | None:
        """A chain of referrers from ``oid`` up to the root (breadth first).

        Each level of the search is two arrays: the oids first reached at
        that depth and, for each, its position in the level before (the
        oid it is a referrer of); the oids seen are an :class:`OidSet`,
        emptied again afterwards."""
        get, seen = self.referrers.get, self._seen
        levels: list[tuple[array[int], array[int]]] = [(array("Q", [oid]), array("Q", [0]))]
        seen.add_new(oid)
        try:
            for depth in range(_MAX_DEPTH):
                frontier = levels[depth][0]
                nodes, via = array("Q"), array("Q")
                levels.append((nodes, via))  # before filling: forgotten in any case
                for i, current in enumerate(frontier):
                    if current == 0:  # the root: back down to ``oid``
                        chain = [current]
                        for d in range(depth, 0, -1):
                            i = levels[d][1][i]
                            chain.append(levels[d - 1][0][i])
                        return list(reversed(chain))
                    for parent in get(current):
                        if seen.add_new(parent):
                            nodes.append(parent)
                            via.append(i)
                if not nodes:
                    return None
            return None
        finally:
            for nodes, _via in levels:
                for n in nodes:
                    seen.discard(n)

    def example(self, oid: bytes) -> BrokenExample:
        number = int.from_bytes(oid, "big")
        referrers = [_b(r) for r in self.referrers.get(number)]
        chain = self._chain(number)
        if chain is None:
            return BrokenExample(oid, None, referrers)
        labels = [edge_label(self._state(_b(parent)), _b(child))
                  for child, parent in zip(chain, chain[1:])]
        return BrokenExample(oid, "root" + "".join(reversed(labels)), referrers)

    def _state(self, oid: bytes) -> Any:
        if oid not in self._states:
            try:
                data, _tid = self.storage.load(oid)
                info = read_record(data, oid)
                self._states[oid] = (info.klass.pair or ("", ""), info.state)
            except (RecordDecodeError, KeyError, RecursionError, MemoryError) as exc:
                self._states[oid] = (("", ""), exc)  # no step can be named through it
        return self._states[oid]


#: Classes whose state is ``{'data': <their items>}``: a step into them is a key.
_ITEM_CONTAINERS = {
    ("persistent.mapping", "PersistentMapping"),
    ("persistent.list", "PersistentList"),
    ("persistent.dict", "PersistentDict"),
    ("persistent.mapping", "PersistentDict"),
}

#: How a step into a set member or into a key that is itself an object reads.
MEMBER = "{...}"


def edge_label(parent: tuple[tuple[str, str], Any], child: bytes) -> str:
    """How ``parent``'s state reaches ``child``: ``.attr``, ``['key']``, ``[3]``.

    ``parent`` is ``((class module, class name), inert state)``.
    PersistentMapping, PersistentDict and PersistentList keep their items
    under ``data``.  The classes of :mod:`BTrees` are read by their state
    layout: a tree node's children and first bucket and a bucket's next
    bucket add no step, a value in a bucket is the step ``[key]`` (with its
    real key), and a set member, or a key that is the object itself, is
    ``{...}``.  Keys are shown truncated (at most a few levels and items,
    and 240 characters), however deep or long they are.
    """
    pair, state = parent
    found: str | None
    if pair in _ITEM_CONTAINERS and isinstance(state, dict) and "data" in state:
        found = _search(state["data"], child, top=False)
    else:
        kind = _btree_kind(pair) if isinstance(state, tuple) else None
        if kind is not None:
            found = _btree_label(kind, state, child)
        else:
            found = _search(state, child, top=True)
    return found if found is not None else f"<{oid_repr(child)}>"


def _btree_kind(pair: tuple[str, str]) -> str | None:
    """``"bucket"``, ``"set"``, ``"tree"``, ``"treeset"`` for the classes of BTrees."""
    module, name = pair
    if not module.startswith("BTrees."):
        return None
    name = name.removesuffix("Py")
    for suffix, kind in (("Bucket", "bucket"), ("TreeSet", "treeset"), ("BTree", "tree"),
                         ("Set", "set")):
        if name.endswith(suffix):
            return kind
    return None


def _btree_label(kind: str, state: tuple[Any, ...], child: bytes) -> str | None:
    """The step from a BTrees node (by its ``__getstate__`` layout) to ``child``.

    Buckets and sets: ``(items,)`` or ``(items, next_bucket)``, items being
    ``(k0, v0, k1, v1, ...)`` for buckets and ``(k0, k1, ...)`` for sets.
    Trees and tree sets: ``None`` (empty), ``((bucket_state,),)`` (one bucket,
    kept inline) or ``((child0, key1, child1, ...), first_bucket)``.
    """
    if kind in ("bucket", "set"):
        return _bucket_label(kind == "set", state, child)
    if len(state) == 1 and isinstance(state[0], tuple) and len(state[0]) == 1 \
            and isinstance(state[0][0], tuple):  # one bucket, inline
        return _bucket_label(kind == "treeset", state[0][0], child)
    if len(state) == 2 and isinstance(state[0], tuple):
        nodes, first = state
        if _is_ref_to(first, child):
            return ""
        for i, item in enumerate(nodes):
            if i % 2 == 0:
                if _is_ref_to(item, child):
                    return ""
            elif _search(item, child) is not None:  # a separating key
                return MEMBER
        return None
    return _search(state, child, top=True)


def _bucket_label(is_set: bool, state: tuple[Any, ...], child: bytes) -> str | None:
    if not state or not isinstance(state[0], tuple):
        return _search(state, child, top=True)
    items = state[0]
    if len(state) > 1 and _is_ref_to(state[1], child):
        return ""  # the next bucket
    if is_set:
        for key in items:
            if _search(key, child) is not None:
                return MEMBER
        return None
    for i in range(0, len(items) - 1, 2):
        key, value = items[i], items[i + 1]
        found = _search(value, child)
        if found is not None:
            return _key(key) + found
        if _search(key, child) is not None:
            return MEMBER
    return None


def _is_ref_to(value: Any, oid: bytes) -> bool:
    if isinstance(value, PersistentRef):
        try:
            return value.reference.oid == oid
        except RecordDecodeError:
            return False
    return False


#: Bounds of a key's rendering in a path.
_KEY_DEPTH = 3
_KEY_ITEMS = 4
_KEY_TEXT = 200
_KEY_WIDTH = 240


def _key(k: Any) -> str:
    """``[<key>]``, the key rendered within bounds (never recursing deeply)."""
    text = _render(k, 0)
    if len(text) > _KEY_WIDTH:
        text = text[: _KEY_WIDTH - 3] + "..."
    return f"[{text}]"


def _render(value: Any, depth: int) -> str:
    cls = value.__class__
    if value is None or cls is bool or cls is float:
        return repr(value)
    if cls is int:
        return repr(value) if value.bit_length() <= 128 else f"<int of {value.bit_length()} bits>"
    if cls is str or cls is bytes:
        if len(value) > _KEY_TEXT:
            return repr(value[:_KEY_TEXT]) + "..."
        return repr(value)
    if cls is tuple:
        if depth >= _KEY_DEPTH:
            return "(...)"
        parts = [_render(v, depth + 1) for v in value[:_KEY_ITEMS]]
        if len(value) > _KEY_ITEMS:
            parts.append("...")
        return "(" + ", ".join(parts) + ("," if len(value) == 1 else "") + ")"
    if cls is PersistentRef:
        try:
            return f"<{oid_repr(value.reference.oid)}>"
        except RecordDecodeError:
            return "<reference>"
    return "..."


def _search(value: Any, oid: bytes, top: bool = False) -> str | None:
    """The step (attribute, key, index) from ``value`` to a reference to ``oid``."""
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
            for i, item in enumerate(v):
                stack.append((item, prefix + f"[{i}]", False))
        elif isinstance(v, (set, frozenset)):
            for item in v:
                stack.append((item, prefix + MEMBER, False))
        elif isinstance(v, Inert):
            stack.append((v.state, prefix, True))
            for i, item in enumerate(v.listitems or ()):
                stack.append((item, prefix + f"[{i}]", False))
            for k, item in v.dictitems or ():
                stack.append((item, prefix + _key(k), False))
            stack.append((v.args, prefix + "<args>", False))
    return None


def _b(oid: int) -> bytes:
    return oid.to_bytes(8, "big")


def _complete(storage: Any, example: BrokenExample) -> bool:
    """Whether ``example.referrers`` (from the map, in oid order) are all of
    them; if so, the example itself joins them where it refers to itself
    (the map leaves that out, the full list does not)."""
    if len(example.referrers) >= REFERRERS:
        return False
    oid = example.oid
    try:
        data, _tid = storage.load(oid)
        plain = split_targets(data, oid)[0]
    except (KeyError, RecordDecodeError):  # gone meanwhile, or unreadable: look again
        return False
    if any(plain[i:i + 8] == oid for i in range(0, len(plain), 8)):
        example.referrers = sorted([*example.referrers, oid])
    return True


def _all_referrers(storage: Any, wanted: set[bytes], classes: list[BrokenClass]) -> None:
    """Fill in every referrer of examples that have no path (one more pass)."""
    found: dict[bytes, list[bytes]] = {oid: [] for oid in wanted}
    few = len(wanted) <= 8  # else one lookup per reference is cheaper than searches
    for oid, data in iter_records(storage):
        try:
            plain = split_targets(data, oid)[0]  # this database's plain references
        except RecordDecodeError:
            continue
        if few and not any(w in plain for w in wanted):  # the usual case, at C speed
            continue
        for i in range(0, len(plain), 8):
            child = plain[i:i + 8]
            if child in found and oid not in found[child] and len(found[child]) < 10:
                found[child].append(oid)
    for c in classes:
        for example in c.examples:
            if example.path is None:
                example.referrers = found.get(example.oid, example.referrers)
