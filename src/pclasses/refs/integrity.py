"""Links, modes and integrity checks: the engine under the descriptors.

Every assignment notes its link change in the transaction's
:class:`~pclasses.refs.registry.LinkLog` (written when the registry is
read, and at commit), every removal goes through :func:`blockers`;
commit-mode work waits in a before-commit hook of the transaction of the
connection the objects belong to.
"""

from __future__ import annotations

from typing import Any

from ZODB.utils import z64

from ..errors import Breach, DanglingReferenceError, ReferentialIntegrityError, UnlocatedError
from .location import describe, locate, resolve, same
from .registry import RefRegistry, flush_links, registry_of

__all__ = ["MODES", "ref_ids_in_modes", "has_links_of", "declared", "effective_mode",
           "resolve_id", "target_id", "source_status", "blockers",
           "defer_check", "database_name", "check_mode"]

MODES = ("none", "always", "commit")
#: ref id -> descriptor, for every Ref/RefSet the process has seen.
declared: dict[str, Any] = {}
#: At most this many breaches are collected before refusing.
BREACH_LIMIT = 5


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def database_name(jar: Any) -> str:
    return jar.db().database_name  # type: ignore[no-any-return]


def effective_mode(registry: RefRegistry, ref_id: str) -> str:
    mode = registry.modes.get(ref_id)
    if mode is not None:
        return mode  # type: ignore[no-any-return]
    desc = declared.get(ref_id)
    if desc is not None:
        return desc.mode  # type: ignore[no-any-return]
    return registry.code_modes.get(ref_id, "always")  # type: ignore[no-any-return]


def resolve_id(registry: RefRegistry, jar: Any, rid: str, name: str | None = None) -> Any:
    """The target of reference id ``rid``; DanglingReferenceError when gone."""
    cache = registry.cache()
    obj = cache.get(rid)
    if obj is not None:
        return obj
    key = registry.ids.get(rid)
    if key is None:
        raise DanglingReferenceError(key=None, reference_id=rid, name=name)
    obj = resolve(jar, key)
    if obj is None:
        raise DanglingReferenceError(key=key, reference_id=rid, name=name)
    if obj._p_serial != z64:  # objects new in this transaction may be aborted
        cache[rid] = obj
    return obj


def target_id(target: Any, database: str | None) -> tuple[RefRegistry, Any, str, str]:
    """``(registry, connection, key, reference id)`` of a target, its id
    created when it is referenced for the first time."""
    jar, key = locate(target)
    name = database_name(jar)
    if database is not None and name != database:
        raise UnlocatedError(describe(target), f"it is in database {name!r}, "
                             f"the reference points into {database!r}")
    if target._p_jar is None:
        jar.add(target)
    registry = registry_of(jar)
    assert registry is not None
    return registry, jar, key, registry.id_for(key, target._p_oid)


def source_status(registry: RefRegistry, jar: Any, database: str, oid: bytes,
                  within: str | None = None) -> str:
    """``"alive"``, ``"gone"`` (no record, or no longer where its location
    says) or ``"inside"`` (under the key ``within``)."""
    try:
        conn = jar if database_name(jar) == database else jar.get_connection(database)
        source = conn.get(oid)
        source._p_activate()
    except Exception:
        return "gone"
    if getattr(source, "__parent__", None) is None and hasattr(source, "getPhysicalPath"):
        # OFS: an object loaded on its own has no parent to tell where it is
        # (its acquisition wrapper would): it is there, where cannot be told.
        return "alive"
    try:
        sjar, key = locate(source)
    except KeyError:
        # A container that does not load (an imported object's old
        # __parent__): the source is there, where cannot be told.
        return "alive"
    except UnlocatedError:
        # Never placed (kept in a plain attribute): only a dropped parent
        # chain tells it is gone.
        return "gone" if getattr(source, "__parent__", None) is not None else "alive"
    if not same(resolve(sjar, key), source):
        return "gone"
    if within is not None and (key == within or key.startswith(within.rstrip("/") + "/")):
        return "inside"
    return "alive"


def ref_ids_in_modes(registry: RefRegistry, modes: tuple[str, ...]) -> list[str]:
    """The ref ids (references known to the registry) whose mode is in ``modes``."""
    return [ref_id for ref_id in registry.names if effective_mode(registry, ref_id) in modes]


def blockers(registry: RefRegistry, jar: Any, rids: list[tuple[str, str]], within: str | None,
             modes: tuple[str, ...] = ("always",),
             limit: int = BREACH_LIMIT) -> tuple[list[Breach], list[Any]]:
    """Breaches of removing the targets ``(key, rid)``: links of a mode in
    ``modes`` from live sources outside ``within``.  Also returns the stale
    links met on the way (sources gone).  Only the links of references in
    those modes are read (a range scan each), and the search stops after
    ``limit`` breaches: the cost does not grow with the number of referrers."""
    if registry._p_jar is not None:
        flush_links(registry._p_jar)
    breaches: list[Breach] = []
    stale: list[Any] = []
    ref_ids = ref_ids_in_modes(registry, modes)
    if not ref_ids:
        return breaches, stale
    for key, rid in rids:
        for ref_id in ref_ids:
            for link in registry.links.keys(min=(rid, ref_id), max=(rid, ref_id + "\x00"),
                                            excludemax=True):
                _rid, _ref_id, database, oid = link
                status = source_status(registry, jar, database, oid, within)
                if status == "gone":
                    stale.append(link)
                elif status == "alive":
                    breaches.append(Breach(key, registry.names.get(ref_id, ref_id), ref_id,
                                           database, oid, jar))
                    if len(breaches) >= limit:
                        return breaches, stale
    return breaches, stale


def has_links_of(registry: RefRegistry, rid: str, ref_ids: list[str]) -> bool:
    for ref_id in ref_ids:
        for _ in registry.links.keys(min=(rid, ref_id), max=(rid, ref_id + "\x00"),
                                     excludemax=True):
            return True
    return False


# ---------------------------------------------------------------------------
# Commit mode
# ---------------------------------------------------------------------------


class _Pending:
    """The reference ids a transaction touched, per registry."""

    def __init__(self) -> None:
        self.by_registry: dict[int, tuple[RefRegistry, Any, set[str]]] = {}

    def __call__(self) -> None:
        breaches: list[Breach] = []
        for registry, jar, rids in self.by_registry.values():
            if registry._p_jar is None:
                continue
            flush_links(registry._p_jar)
            registry.__dict__.pop("_v_cache", None)
            for rid in sorted(rids):
                try:
                    resolve_id(registry, jar, rid)
                    continue
                except DanglingReferenceError:
                    pass
                key = registry.ids.get(rid, "?")
                found, _stale = blockers(registry, jar, [(key, rid)], None,
                                         ("commit", "always"))
                breaches.extend(found)
        if breaches:
            raise ReferentialIntegrityError(breaches, "commit")


_PENDING_KEY = object()


def defer_check(registry: RefRegistry, jar: Any, rid: str) -> None:
    """Check at commit that ``rid`` resolves (or nothing live refers to it)."""
    txn = jar.transaction_manager.get()
    pending = txn.data(_PENDING_KEY) if _has_data(txn) else None
    if pending is None:
        pending = _Pending()
        txn.set_data(_PENDING_KEY, pending)
        txn.addBeforeCommitHook(pending)
    entry = pending.by_registry.get(id(registry))
    if entry is None:
        entry = pending.by_registry[id(registry)] = (registry, jar, set())
    entry[2].add(rid)


def _has_data(txn: Any) -> bool:
    try:
        txn.data(_PENDING_KEY)
        return True
    except KeyError:
        return False
