"""``Ref`` and ``RefSet``: references that read and write like attributes.

A source keeps its references in one entry of its state,
``__pclasses_refs__`` (:data:`~pclasses.refs.registry.STATE_KEY`), a dict
``{ref key: reference id | tuple of reference ids | None}`` where the ref
key is the descriptor's id (``"module.Class.attribute"``), followed by
``"@database"`` for a reference into another database.  Reference ids are
text: no persistent reference to the target is stored, nothing pins it,
and the record engine reads them without loading anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSet
from typing import Any

from ZODB.utils import z64

from ..errors import Breach, ReferentialIntegrityError, UnlocatedError
from .events import ReferenceAdded, ReferenceRemoved, listened, notify
from .integrity import (
    check_mode,
    database_name,
    declared,
    defer_check,
    effective_mode,
    resolve_id,
    target_id,
)
from .location import describe, resolve, same
from .registry import LOG_ATTR, STATE_KEY, RefRegistry, log_link, registry_of

__all__ = ["Ref", "RefSet", "stored_refs"]


def stored_refs(source: Any) -> dict[str, Any]:
    """The ``{ref key: value}`` a source holds (a copy)."""
    source._p_activate()
    return dict(source.__dict__.get(STATE_KEY) or {})


class Ref:
    """A reference to one located persistent object (or ``None``).

    ``mode`` is ``"always"``, ``"commit"`` or ``"none"``; ``database`` names
    the database of a multi-database the targets live in; ``id`` defaults
    to ``"module.Class.attribute"``.
    """

    _multiple = False

    def __init__(self, *, mode: str = "always", database: str | None = None,
                 id: str | None = None) -> None:  # noqa: A002
        self.mode = check_mode(mode)
        self.database = database
        self.id = id
        self.name: str | None = None
        self._key: str | None = None
        if id is not None:
            self._bind(id)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        if self.id is None:
            self.id = f"{owner.__module__}.{owner.__qualname__}.{name}"
        self._bind(self.id)

    def _bind(self, ref_id: str) -> None:
        if "@" in ref_id:
            raise ValueError(f"reference id {ref_id!r} must not contain '@'")
        self._key = ref_id if self.database is None else f"{ref_id}@{self.database}"
        if self.name is None:
            self.name = ref_id.rpartition(".")[2]
        declared[ref_id] = self

    def __getstate__(self) -> dict[str, Any]:
        return {"mode": self.mode, "database": self.database, "id": self.id, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._key = None
        if self.id is not None:
            self._bind(self.id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} mode={self.mode!r}>"

    # -- reading -------------------------------------------------------------

    def _target_jar(self, inst: Any) -> Any:
        jar = inst._p_jar
        if self.database is not None and jar is not None:
            return jar.get_connection(self.database)
        return jar

    def _registry(self, inst: Any) -> tuple[RefRegistry, Any]:
        jar = self._target_jar(inst)
        if jar is None:
            raise UnlocatedError(describe(inst), "the source is not in a database")
        registry = jar.__dict__.get("_pclasses_refreg")
        if registry is None or registry._p_jar is not jar:
            registry = registry_of(jar)
        return registry, jar

    def __get__(self, inst: Any, owner: Any = None) -> Any:
        if inst is None:
            return self
        try:
            rid = inst.__dict__[STATE_KEY][self._key]
        except (KeyError, TypeError):
            raise AttributeError(self.name) from None
        if rid is None:
            return None
        jar = inst._p_jar
        if jar is not None and self.database is None:
            registry = jar.__dict__.get("_pclasses_refreg")
            if registry is not None:
                cache = registry.__dict__.get("_v_cache")
                if cache is not None:
                    obj = cache.get(rid)
                    if obj is not None:
                        return obj
        registry, jar = self._registry(inst)
        return resolve_id(registry, jar, rid, self.name)

    # -- writing -------------------------------------------------------------

    def _store(self, inst: Any, value: Any) -> None:
        refs = dict(inst.__dict__.get(STATE_KEY) or {})
        if value is _DELETE:
            refs.pop(self._key, None)
        else:
            refs[self._key] = value
        setattr(inst, STATE_KEY, refs)

    def _current(self, inst: Any) -> Any:
        inst._p_activate()
        refs = inst.__dict__.get(STATE_KEY)
        if not refs or self._key not in refs:
            return _DELETE
        return refs[self._key]

    def _ensure_source(self, inst: Any, target_jar: Any) -> None:
        if inst._p_jar is None:
            if self.database is not None:
                raise UnlocatedError(describe(inst), "add the source to its database before "
                                     "it refers into another one")
            target_jar.add(inst)

    def _rid_for(self, inst: Any, target: Any) -> tuple[RefRegistry, Any, str, str]:
        # Fast path: the target's location, cached under the registry's token
        # (any move/remove/replace changes the token) and checked against ids
        # (an aborted transaction rolls ids back).
        jar = getattr(target, "_p_jar", None)
        if jar is not None and inst._p_jar is not None:
            registry = jar.__dict__.get("_pclasses_refreg")
            cached = target.__dict__.get("_v_pclasses_loc")
            if (cached is not None and registry is not None
                    and cached[0] is registry.__dict__.get("_v_token")
                    and registry.ids.get(cached[2]) == cached[1]
                    and (self.database is None) == (jar is inst._p_jar)):
                key, rid = cached[1], cached[2]
                if (registry.modes.get(self.id) or self.mode) == "commit":
                    defer_check(registry, jar, rid)
                return registry, jar, key, rid
        registry, jar, key, rid = target_id(target, self.database)
        if self.database is None and inst._p_jar is not None and inst._p_jar is not jar:
            raise UnlocatedError(describe(target), f"it is in database {database_name(jar)!r}; "
                                 f"declare Ref(database={database_name(jar)!r})")
        self._ensure_source(inst, jar)
        mode = effective_mode(registry, self.id)  # type: ignore[arg-type]
        if mode == "always" and not _resolves_to(registry, jar, key, rid, target):
            raise ReferentialIntegrityError(
                [Breach(key, self.name or "", self.id or "", database_name(inst._p_jar),
                        inst._p_oid, inst._p_jar)], "assigning an unresolvable target")
        if mode == "commit":
            defer_check(registry, jar, rid)
        if (target._p_serial != z64 and self.database is None) and (
                mode == "always" or _resolves_to(registry, jar, key, rid, target)):
            target._v_pclasses_loc = (registry.location_token(), key, rid)
        return registry, jar, key, rid

    def _added(self, inst: Any, key: str) -> None:
        if listened(ReferenceAdded):
            # a veto raises here
            notify(ReferenceAdded(inst, self.name, key, self.id))  # type: ignore[arg-type]

    def _removed(self, inst: Any, registry: RefRegistry, rid: str) -> None:
        if listened(ReferenceRemoved):
            key = registry.ids.get(rid)
            notify(ReferenceRemoved(inst, self.name, key, self.id))  # type: ignore[arg-type]

    def _log(self, registry: RefRegistry, inst: Any, old: Any, new: Any) -> None:
        log_link(registry, inst, self.id, self._key, self.name,  # type: ignore[arg-type]
                 self.mode, old, new)

    def __set__(self, inst: Any, value: Any) -> None:
        # The fast path: a target whose location this connection knows
        # (cached on it by an earlier assignment, see _rid_for).
        cached = getattr(value, "__dict__", _EMPTY).get("_v_pclasses_loc")
        jar = inst._p_jar
        if (cached is not None and jar is not None and self.database is None
                and value._p_jar is jar):
            registry = jar.__dict__.get("_pclasses_refreg")
            if (registry is not None and cached[0] is registry.__dict__.get("_v_token")
                    and registry.ids.get(cached[2]) == cached[1]):
                rid = cached[2]
                if (registry.modes.get(self.id) or self.mode) == "commit":
                    defer_check(registry, jar, rid)
                inst._p_activate()
                refs = inst.__dict__.get(STATE_KEY)
                old = refs.get(self._key, _DELETE) if refs else _DELETE
                if rid == old:
                    return
                if listened(ReferenceAdded):
                    notify(ReferenceAdded(inst, self.name, cached[1], self.id))  # type: ignore[arg-type]
                log = jar.__dict__.get(LOG_ATTR)
                pair = (id(inst), self._key)
                entry = log.entries.get(pair) if log is not None else None
                if entry is not None:  # log_link's common case, inline
                    entry[5].add(rid)
                    if isinstance(old, str):
                        entry[5].add(old)
                    log.dirty.add(pair)
                else:
                    log_link(registry, inst, self.id, self._key,  # type: ignore[arg-type]
                             self.name, self.mode, old, rid)  # type: ignore[arg-type]
                if isinstance(old, str) and listened(ReferenceRemoved):
                    key = registry.ids.get(old)
                    notify(ReferenceRemoved(inst, self.name, key, self.id))  # type: ignore[arg-type]
                refs = dict(refs) if refs else {}
                refs[self._key] = rid
                setattr(inst, STATE_KEY, refs)
                return
        old = self._current(inst)
        if value is None:
            if isinstance(old, str):
                registry, _jar = self._registry(inst)
                self._log(registry, inst, old, None)
                self._removed(inst, registry, old)
            if old is not None:
                self._store(inst, None)
            return
        registry, _jar, key, rid = self._rid_for(inst, value)
        if rid == old:
            return
        self._added(inst, key)
        self._log(registry, inst, old, rid)
        if isinstance(old, str):
            self._removed(inst, registry, old)
        self._store(inst, rid)

    def __delete__(self, inst: Any) -> None:
        old = self._current(inst)
        if old is _DELETE:
            raise AttributeError(self.name)
        if isinstance(old, str):
            registry, _jar = self._registry(inst)
            self._log(registry, inst, old, None)
            self._removed(inst, registry, old)
        self._store(inst, _DELETE)


_DELETE = object()
_EMPTY: dict[str, Any] = {}


def _resolves_to(registry: RefRegistry, jar: Any, key: str, rid: str, target: Any) -> bool:
    """Whether ``key`` resolves to ``target`` (the resolved-target cache first)."""
    cache = registry.cache()
    if same(cache.get(rid), target):
        return True
    if same(resolve(jar, key), target):
        if target._p_serial != z64:  # objects new in this transaction may be aborted
            cache[rid] = target
        return True
    return False


class RefSet(Ref):
    """A set of references; reads give a live set of the targets, assigning
    any iterable of targets (or another source's set) copies it."""

    _multiple = True

    def __get__(self, inst: Any, owner: Any = None) -> Any:
        if inst is None:
            return self
        inst._p_activate()
        refs = inst.__dict__.get(STATE_KEY)
        if not refs or self._key not in refs:
            raise AttributeError(self.name)
        return BoundRefSet(self, inst)

    def _rids(self, inst: Any) -> tuple[str, ...]:
        value = self._current(inst)
        if value is None or value is _DELETE:
            return ()
        return tuple(r for r in value if isinstance(r, str))

    def __set__(self, inst: Any, value: Any) -> None:
        if value is None:
            value = ()
        targets = list(value)
        current = self._current(inst)
        old = set(self._rids(inst))
        new: dict[str, tuple[RefRegistry, str]] = {}
        for target in targets:
            registry, _jar, key, rid = self._rid_for(inst, target)
            new[rid] = (registry, key)
        for rid, (_registry, key) in new.items():
            if rid not in old:
                self._added(inst, key)
        if current is not _DELETE and old == set(new):
            return
        stored = tuple(sorted(new))
        gone = old - set(new)
        if gone or new:
            registry = next(iter(new.values()))[0] if new else self._registry(inst)[0]
            self._log(registry, inst, tuple(old), stored)
        if gone:
            registry = self._registry(inst)[0]
            for rid in sorted(gone):
                self._removed(inst, registry, rid)
        self._store(inst, stored)

    def __delete__(self, inst: Any) -> None:
        if self._current(inst) is _DELETE:
            raise AttributeError(self.name)
        self.__set__(inst, ())
        self._store(inst, _DELETE)


class BoundRefSet(MutableSet):  # type: ignore[type-arg]
    """The targets of one source's :class:`RefSet` (a live view)."""

    def __init__(self, ref: RefSet, source: Any) -> None:
        self._ref = ref
        self._source = source

    def _resolved(self) -> Iterator[Any]:
        registry, jar = self._ref._registry(self._source)
        for rid in self._ref._rids(self._source):
            yield resolve_id(registry, jar, rid, self._ref.name)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._resolved()))

    def __len__(self) -> int:
        return len(self._ref._rids(self._source))

    def __contains__(self, obj: object) -> bool:
        try:
            _registry, _jar, _key, rid = target_id(obj, self._ref.database)
        except (UnlocatedError, TypeError):
            return False
        return rid in self._ref._rids(self._source)

    def add(self, obj: Any) -> None:
        ref, source = self._ref, self._source
        registry, _jar, key, rid = ref._rid_for(source, obj)
        rids = ref._rids(source)
        if rid in rids:
            return
        ref._added(source, key)
        stored = tuple(sorted(rids + (rid,)))
        ref._log(registry, source, rids, stored)
        ref._store(source, stored)

    def clear(self) -> None:
        self._ref.__set__(self._source, ())

    def discard(self, obj: Any) -> None:
        try:
            _registry, _jar, _key, rid = target_id(obj, self._ref.database)
        except (UnlocatedError, TypeError):
            return
        ref, source = self._ref, self._source
        rids = ref._rids(source)
        if rid in rids:
            registry, _jar2 = ref._registry(source)
            stored = tuple(r for r in rids if r != rid)
            ref._log(registry, source, rids, stored)
            ref._store(source, stored)
            ref._removed(source, registry, rid)

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        return set(it)

    def __repr__(self) -> str:
        return f"<RefSet {self._ref.name} of {describe(self._source)}: {len(self)} targets>"
