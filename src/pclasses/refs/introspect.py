"""Who refers to what: answered from the registry, without a walk."""

from __future__ import annotations

from typing import Any

from ZODB.utils import oid_repr

from .descriptor import stored_refs
from .integrity import database_name, declared, source_status
from .location import locate
from .registry import RefRegistry, registry_of

__all__ = ["Referrer", "referrers", "is_referenced", "references", "Reference"]


class Referrer:
    """One link to a target: ``source`` (loaded on access), ``name`` (the
    attribute), ``key`` (the target's key), ``ref_id``, ``database``, ``oid``."""

    __slots__ = ("name", "key", "ref_id", "database", "oid", "_jar")

    def __init__(self, name: str, key: str, ref_id: str, database: str, oid: bytes,
                 jar: Any) -> None:
        self.name, self.key, self.ref_id = name, key, ref_id
        self.database, self.oid, self._jar = database, oid, jar

    @property
    def source(self) -> Any:
        jar = self._jar
        if database_name(jar) != self.database:
            jar = jar.get_connection(self.database)
        return jar.get(self.oid)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "ref_id": self.ref_id,
                "database": self.database, "oid_repr": oid_repr(self.oid)}

    def __repr__(self) -> str:
        return f"<Referrer {oid_repr(self.oid)}.{self.name} -> {self.key}>"


def _links(target: Any, recursive: bool) -> tuple[RefRegistry | None, Any, list[Any]]:
    jar, key = locate(target)
    registry = registry_of(jar, create=False)
    if registry is None:
        return None, jar, []
    if recursive:
        rids = registry.subtree(key)
    else:
        rid = registry.keys.get(key)
        rids = [] if rid is None else [(key, rid)]
    return registry, jar, rids


def referrers(target: Any, recursive: bool = False) -> list[Referrer]:
    """The live links to ``target`` (and, ``recursive``, to anything under
    it), in registry order.  Links of sources that are gone are left out."""
    registry, jar, rids = _links(target, recursive)
    found = []
    for key, rid in rids:
        for _rid, ref_id, database, oid in registry.links_of(rid):  # type: ignore[union-attr]
            if source_status(registry, jar, database, oid) == "gone":  # type: ignore[arg-type]
                continue
            name = registry.names.get(ref_id, ref_id)  # type: ignore[union-attr]
            found.append(Referrer(name, key, ref_id, database, oid, jar))
    return found


def is_referenced(target: Any, recursive: bool = True) -> bool:
    """Whether a live source refers to ``target`` (or, ``recursive``, to
    anything under it)."""
    registry, jar, rids = _links(target, recursive)
    for _key, rid in rids:
        for _rid, _ref_id, database, oid in registry.links_of(rid):  # type: ignore[union-attr]
            if source_status(registry, jar, database, oid) != "gone":  # type: ignore[arg-type]
                return True
    return False


class Reference:
    """One reference a source holds: ``name``, ``ref_id``, ``database``
    (``None``: the source's own), ``reference_id`` and ``key`` (``None``
    when the id is unknown)."""

    __slots__ = ("name", "ref_id", "database", "reference_id", "key")

    def __init__(self, name: str, ref_id: str, database: str | None, reference_id: str,
                 key: str | None) -> None:
        self.name, self.ref_id, self.database = name, ref_id, database
        self.reference_id, self.key = reference_id, key

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ref_id": self.ref_id, "database": self.database,
                "reference_id": self.reference_id, "key": self.key}

    def __repr__(self) -> str:
        return f"<Reference {self.name} -> {self.key}>"


def references(source: Any) -> list[Reference]:
    """The references ``source`` holds (``None`` values left out)."""
    found = []
    jar = source._p_jar
    for ref_key, value in sorted(stored_refs(source).items()):
        ref_id, _, database = ref_key.partition("@")
        if value is None:
            continue
        tjar = jar.get_connection(database) if database and jar is not None else jar
        registry = registry_of(tjar, create=False) if tjar is not None else None
        desc = declared.get(ref_id)
        name = desc.name if desc is not None else ref_id.rpartition(".")[2]
        for rid in (value if isinstance(value, tuple) else (value,)):
            key = registry.ids.get(rid) if registry is not None else None
            found.append(Reference(name, ref_id, database or None, rid, key))
    return found
