"""Changing the effective mode of a reference at run time.

Links are kept in every mode, so a change never walks the tree: tightening
checks the links of that reference (one range scan of ``by_ref``) and
refuses, or fixes, when one dangles; loosening takes effect at once.
"""

from __future__ import annotations

from typing import Any

from ..errors import Breach, DanglingReferenceError, ReferentialIntegrityError
from .descriptor import Ref
from .events import RefModeChanged, notify
from .integrity import (
    check_mode,
    database_name,
    declared,
    effective_mode,
    resolve_id,
    source_status,
)
from .registry import STATE_KEY, RefRegistry, registry_of

__all__ = ["set_ref_mode", "ModeChange", "fix_link"]

_STRENGTH = {"none": 0, "commit": 1, "always": 2}


class ModeChange:
    """What :func:`set_ref_mode` did (or would do, with ``dry_run``)."""

    def __init__(self, ref_id: str, old: str, new: str, dangling: list[Breach],
                 fixed: int, applied: bool) -> None:
        self.ref_id, self.old, self.new = ref_id, old, new
        self.dangling, self.fixed, self.applied = dangling, fixed, applied

    def to_dict(self) -> dict[str, Any]:
        return {"ref_id": self.ref_id, "old": self.old, "new": self.new,
                "dangling": [b.to_dict() for b in self.dangling], "fixed": self.fixed,
                "applied": self.applied}


def _ref_id(ref: Any) -> str:
    if isinstance(ref, Ref):
        return ref.id  # type: ignore[return-value]
    if isinstance(ref, str):
        return ref
    raise TypeError(f"expected a Ref or its id, got {ref!r}")


def _database_of(ref_id: str, connection: Any) -> Any:
    desc = declared.get(ref_id)
    if desc is not None and desc.database is not None:
        return connection.get_connection(desc.database)
    return connection


def dangling_links(registry: RefRegistry, jar: Any,
                   ref_id: str) -> tuple[list[tuple[Breach, str]], list[Any]]:
    """The links of ``ref_id`` whose target does not resolve (live sources),
    and the stale ones (sources gone)."""
    dangling: list[tuple[Breach, str]] = []
    stale: list[Any] = []
    for rid, _ref, database, oid in registry.links_of_ref(ref_id):
        try:
            resolve_id(registry, jar, rid)
            continue
        except DanglingReferenceError:
            pass
        status = source_status(registry, jar, database, oid)
        link = (rid, ref_id, database, oid)
        if status == "gone":
            stale.append(link)
        else:
            dangling.append((Breach(registry.ids.get(rid, "?"),
                                    registry.names.get(ref_id, ref_id), ref_id, database, oid,
                                    jar), rid))
    return dangling, stale


def fix_link(registry: RefRegistry, breach: Breach, rid: str, how: str) -> None:
    """Repair a dangling link: ``"null"`` stores ``None``, ``"remove"``
    drops the reference (or the set member)."""
    source = breach.source
    source._p_activate()
    refs = dict(source.__dict__.get(STATE_KEY) or {})
    for ref_key, value in list(refs.items()):
        if ref_key.partition("@")[0] != breach.ref_id:
            continue
        if isinstance(value, tuple):
            refs[ref_key] = tuple(r for r in value if r != rid)
        elif value == rid:
            if how == "null":
                refs[ref_key] = None
            else:
                del refs[ref_key]
    setattr(source, STATE_KEY, refs)
    registry.drop_link(rid, breach.ref_id, breach.database, breach.oid)


def set_ref_mode(connection: Any, ref: Any, mode: str, fix: str | None = None,
                 dry_run: bool = False) -> ModeChange:
    """Set the effective mode of ``ref`` (a Ref or its id) in the database
    of ``connection`` (the reference's target database).

    Tightening checks every existing link and raises
    :class:`~pclasses.ReferentialIntegrityError` if one dangles, unless
    ``fix`` is ``"null"`` or ``"remove"``; ``dry_run`` reports without
    changing anything.
    """
    check_mode(mode)
    if fix not in (None, "keep", "null", "remove"):
        raise ValueError(f"fix {fix!r} is not one of null, remove")
    ref_id = _ref_id(ref)
    jar = _database_of(ref_id, connection)
    registry = registry_of(jar, create=not dry_run)
    if registry is None:
        desc = declared.get(ref_id)
        old = desc.mode if desc is not None else "always"
        return ModeChange(ref_id, old, mode, [], 0, False)
    old = effective_mode(registry, ref_id)
    pairs: list[tuple[Breach, str]] = []
    stale: list[Any] = []
    if mode != "none" or fix in ("null", "remove"):
        pairs, stale = dangling_links(registry, jar, ref_id)
    dangling = [breach for breach, _rid in pairs]
    if dry_run:
        return ModeChange(ref_id, old, mode, dangling, 0, False)
    if dangling and _STRENGTH[mode] > _STRENGTH[old] and fix in (None, "keep"):
        raise ReferentialIntegrityError(dangling, f"setting {ref_id} to mode {mode!r}")
    fixed = 0
    if fix in ("null", "remove"):
        for breach, rid in pairs:
            fix_link(registry, breach, rid, fix)
            fixed += 1
    for link in stale:
        registry.drop_link(*link)
    desc = declared.get(ref_id)
    code_mode = desc.mode if desc is not None else registry.code_modes.get(ref_id)
    if code_mode == mode:
        registry.modes.pop(ref_id, None)
    else:
        registry.modes[ref_id] = mode
    if old != mode:
        notify(RefModeChanged(ref_id, old, mode, database_name(jar)))
    return ModeChange(ref_id, old, mode, dangling, fixed, True)
