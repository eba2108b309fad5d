"""Which classes a database's records name, and how each resolves.

The census reads every current record with the C record analyzer of
:mod:`pclasses.record.analyze` (nothing is imported or called but what the registry
resolves; records whose class is named by strings go through the safe
record reader), counts

* ``records``: records whose class this is (their class metadata), and
* ``mentions``: records that name it anywhere else (the class part of a
  reference, a non-persistent sub-object, a function used in a reduce),

then asks the registry how each name resolves.  Records the reader cannot
interpret are listed as unreadable by oid; they never stop the census.
"""

from __future__ import annotations

import os
import sys
from array import array
from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ZODB.utils import oid_repr

from .classtable import GUID_PREFIX, is_guid_module
from .errors import RecordDecodeError
from .record.analyze import census
from .record.edges import split_targets
from .record.reader import GlobalRef, PersistentRef, read_class, read_record
from .referrers import ReferrerLog, Referrers
from .registry import ClassRegistry, Resolution
from .scan import Progress, count_records, map_records
from .trust import Trust, as_trust

__all__ = ["ClassUsage", "Census", "take_census", "STATUS"]

#: How a resolution is shown: registered and imported names are simply "ok".
STATUS = {
    "registered": "ok",
    "imported": "ok",
    "aliased": "aliased",
    "database-resident": "database-resident",
    "broken": "broken",
    # found but not run: the module is not trusted (see pclasses.trust)
    "not-imported": "not-imported",
}

#: Example oids the census keeps per class (the smallest).
CENSUS_EXAMPLES = _EXAMPLES = 3


@dataclass
class ClassUsage:
    """One class (or other global) named by the records."""

    module: str
    name: str
    records: int = 0
    mentions: int = 0
    examples: list[bytes] = field(default_factory=list)
    resolution: Resolution | None = None
    #: records that name it other than as their class (the smallest few oids,
    #: so every storage and scan order gives the same)
    mention_examples: list[bytes] = field(default_factory=list)

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def status(self) -> str:
        return STATUS[self.resolution.how] if self.resolution else "unknown"

    def to_dict(self) -> dict[str, Any]:
        res = self.resolution
        return {
            "module": self.module,
            "name": self.name,
            "records": self.records,
            "mentions": self.mentions,
            "status": self.status,
            "how": res.how if res else None,
            "chain": list(res.chain) if res else [],
            "error": res.error if res else None,
            "location": res.location if res else None,
            "examples": [oid_repr(o) for o in self.examples],
        }


@dataclass
class Unreadable:
    oid: bytes
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"oid": oid_repr(self.oid), "reason": self.reason}


@dataclass
class ResidentClass:
    """A class stored in the database (see :mod:`pclasses.pclass`)."""

    oid: bytes
    guid: str | None
    name: str
    bases: list[str]
    instances: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"oid": oid_repr(self.oid), "guid": self.guid, "name": self.name,
                "bases": self.bases, "instances": self.instances}


@dataclass
class Census:
    """The result of :func:`take_census`."""

    records: int
    classes: list[ClassUsage]
    unreadable: list[Unreadable]
    persistent_class_refs: dict[bytes, int] = field(default_factory=dict)
    resident: list[ResidentClass] = field(default_factory=list)

    @property
    def broken(self) -> list[ClassUsage]:
        return [c for c in self.classes if c.status == "broken"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "classes": [c.to_dict() for c in self.classes],
            "unreadable": [u.to_dict() for u in self.unreadable],
            "persistent_class_references": {
                oid_repr(k): v for k, v in self.persistent_class_refs.items()
            },
            "resident_classes": [r.to_dict() for r in self.resident],
        }


class _Tally:
    """Counts from one part of a scan; parts merge with :meth:`merge`."""

    __slots__ = ("records", "as_class", "mentioned", "examples", "pclass_refs", "unreadable",
                 "resident", "mention_examples", "parents", "limit")

    def __init__(self, parents: bool = False, examples: int = _EXAMPLES,
                 dense: bool = True, size: int = 0) -> None:
        self.limit = examples
        #: the first few referrers of each oid (only when asked: the broken
        #: inventory follows them back to the root), in arrays indexed by
        #: oid; a scan's worker process logs the pairs it finds instead
        #: (``dense`` false), and the first process replays them in order
        self.parents: Referrers | ReferrerLog | None = None
        if parents:
            self.parents = Referrers(size=size) if dense else ReferrerLog(size=size)
        self.mention_examples: dict[tuple[str, str], list[bytes]] = {}
        self.records = 0
        self.as_class: dict[tuple[str, str], int] = {}
        self.mentioned: dict[tuple[str, str], int] = {}
        self.examples: dict[tuple[str, str], list[bytes]] = {}
        self.pclass_refs: dict[bytes, int] = {}
        self.unreadable: list[Unreadable] = []
        self.resident: list[ResidentClass] = []

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for k, v in zip(self.__slots__, state):
            setattr(self, k, v)

    def add(self, records: Iterable[tuple[bytes, bytes]]) -> _Tally:
        as_class = self.as_class
        mentioned = self.mentioned
        examples = self.examples
        mention_examples = self.mention_examples
        parents = self.parents
        limit = self.limit
        n = 0
        for oid, data in records:
            n += 1
            # The C record analyzer (about 1 us) tells the record's class and
            # every other global it names, as plain tuples; nothing runs.
            # The broken inventory also wants the record's plain references
            # (``parents``): one more C pass gives their oids as one string.
            plain = b""
            try:
                pair, names = census(data)
                if parents is not None:
                    plain = split_targets(data, oid)[0]
            except ValueError as exc:
                self.unreadable.append(Unreadable(oid, str(exc)))
                continue
            except RecordDecodeError as exc:
                self.unreadable.append(Unreadable(oid, exc.reason))
                continue
            if pair is None:
                # Class metadata by strings (format 3/7) or a persistent class.
                try:
                    klass = read_class(data, oid)
                except RecordDecodeError as exc:
                    self.unreadable.append(Unreadable(oid, exc.reason))
                    continue
                pair = klass.pair
                if pair is None and klass.oid is not None:
                    self.pclass_refs[klass.oid] = self.pclass_refs.get(klass.oid, 0) + 1
            if pair is not None:
                if pair == _METACLASS:
                    self.resident.append(_resident(oid, data))
                count = as_class.get(pair, 0)
                as_class[pair] = count + 1
                if count < limit:
                    insort(examples.setdefault(pair, []), oid)
                elif limit:
                    ex = examples[pair]
                    if oid < ex[-1]:  # the smallest oids, whatever the scan order
                        ex.pop()
                        insort(ex, oid)
            for g in dict.fromkeys(names) if len(names) > 1 else names:
                if g != pair:
                    count = mentioned.get(g, 0)
                    mentioned[g] = count + 1
                    if count < limit:
                        insort(mention_examples.setdefault(g, []), oid)
                    elif limit:
                        ex = mention_examples[g]
                        if oid < ex[-1]:
                            ex.pop()
                            insort(ex, oid)
            if plain and parents is not None:
                me = int.from_bytes(oid, "big")
                if len(plain) == 8:
                    if plain != oid:
                        parents.add(int.from_bytes(plain, "big"), me)
                else:
                    targets = array("Q", plain)
                    if _SWAP:
                        targets.byteswap()
                    for child in dict.fromkeys(targets):  # each once
                        if child != me:
                            parents.add(child, me)
        self.records += n
        return self

    def merge(self, other: _Tally) -> None:
        self.records += other.records
        counters: tuple[tuple[dict[Any, int], dict[Any, int]], ...] = (
            (self.as_class, other.as_class), (self.mentioned, other.mentioned),
            (self.pclass_refs, other.pclass_refs))
        for mine, theirs in counters:
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for mine_d, theirs_d in ((self.examples, other.examples),
                                 (self.mention_examples, other.mention_examples)):
            for k, oids in theirs_d.items():
                mine_d[k] = sorted(set(mine_d.get(k, [])) | set(oids))[: self.limit]
        if self.parents is not None and other.parents is not None:
            if not isinstance(self.parents, Referrers):
                log, self.parents = self.parents, Referrers()
                self.parents.replay(log)
            if isinstance(other.parents, ReferrerLog):
                self.parents.replay(other.parents)
            else:  # a whole map (not a worker's): its oids in order
                dense = other.parents
                for child in range(len(dense.first)):
                    for parent in dense.get(child):
                        self.parents.add(child, parent)
                for child, known in dense.big.items():
                    for parent in known:
                        self.parents.add(child, parent)
        self.unreadable.extend(other.unreadable)
        self.resident.extend(other.resident)


_METACLASS = ("pclasses.pclass", "PersistentClass")


_SWAP = sys.byteorder == "little"


def _oid_bound(storage: Any) -> int:
    """One more than the largest oid of ``storage`` when it tells cheaply
    (a FileStorage's index), else its number of objects (oids are dense)."""
    n = count_records(storage) or 0
    index = getattr(storage, "_index", None)
    try:
        if index is not None and len(index):
            top = int.from_bytes(index.maxKey(), "big") + 1
            return top if top <= 2 * n + (1 << 16) else n  # sparse oids: grow as met
    except Exception:  # not an fsIndex after all
        pass
    return n


def _name_of(value: Any) -> str:
    if isinstance(value, type) and issubclass(value, GlobalRef):
        return ".".join(value.dotted_pair)
    if isinstance(value, PersistentRef):
        return f"<persistent class {oid_repr(value.reference.oid)}>"
    return repr(value)


def _resident(oid: bytes, data: bytes) -> ResidentClass:
    """Name, guid and bases of a class record, read inertly."""
    try:
        info = read_record(data, oid)
        args: tuple[Any, ...] = info.klass.args or ()
        name = args[0] if args and isinstance(args[0], str) else "?"
        bases = ([_name_of(b) for b in args[1]]
                 if len(args) > 1 and isinstance(args[1], tuple) else [])
        guid = None
        state = info.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            module: Any = state[1].get("__module__")
            if is_guid_module(module):
                guid = module[len(GUID_PREFIX):]
        return ResidentClass(oid, guid, name, bases)
    except RecordDecodeError:
        return ResidentClass(oid, None, "?", [])


def take_census(
    storage: Any,
    registry: ClassRegistry | None = None,
    *,
    connection: Any = None,
    progress: Progress | None = None,
    jobs: int | None = None,
    trust: Trust | Iterable[str] | None = None,
) -> Census:
    """Count and resolve every class named by the current records of ``storage``.

    ``connection`` (optional) is passed to the registry so database-resident
    classes resolve through that database's class table.  A large
    FileStorage is scanned by ``jobs`` processes at once (see
    :func:`pclasses.scan.map_records`); ``jobs=1`` keeps it in this one.

    Names resolve in inspection mode (:meth:`ClassRegistry.inspect`): no
    module the records name is imported unless :mod:`pclasses.trust`
    allows it; ``trust`` names more packages that may be imported.
    """
    return census_and_tally(storage, registry, connection=connection, progress=progress,
                            jobs=jobs, trust=trust)[0]


def census_and_tally(
    storage: Any,
    registry: ClassRegistry | None = None,
    *,
    connection: Any = None,
    progress: Progress | None = None,
    jobs: int | None = None,
    parents: bool = False,
    examples: int = _EXAMPLES,
    trust: Trust | Iterable[str] | None = None,
) -> tuple[Census, _Tally]:
    """:func:`take_census`, plus the merged tally (with referrers if asked)."""
    if registry is None:
        registry = ClassRegistry()
    rules = as_trust(trust)

    home = os.getpid()
    size = _oid_bound(storage) if parents else 0

    def tally(records: Iterable[tuple[bytes, bytes]]) -> _Tally:
        # A worker process logs referrers; this one keeps them in arrays.
        return _Tally(parents, examples, dense=os.getpid() == home, size=size).add(records)

    parts = map_records(storage, tally, progress, jobs)
    total = parts[0]
    for part in parts[1:]:
        total.merge(part)
    usages = []
    for key in sorted(set(total.as_class) | set(total.mentioned)):
        usage = ClassUsage(key[0], key[1], total.as_class.get(key, 0),
                           total.mentioned.get(key, 0), total.examples.get(key, []),
                           mention_examples=total.mention_examples.get(key, []))
        usage.resolution = registry.inspect(key[0], key[1], connection, trust=rules)
        usages.append(usage)
    unreadable = sorted(total.unreadable, key=lambda u: u.oid)
    resident = sorted(total.resident, key=lambda r: r.oid)
    for r in resident:
        if r.guid is not None:
            module = GUID_PREFIX + r.guid
            r.instances = sum(n for (m, _), n in total.as_class.items() if m == module)
    census = Census(total.records, usages, unreadable, total.pclass_refs, resident)
    return census, total
