"""References in export files and on import.

References are not persistent references, so exporting a subtree never
drags master data along.  The manifest lists the references the subtree
holds (:func:`export_references`): reference id, declaration, key, whether
the key is inside the exported subtree (internal) or outside (external),
and the mode.  On import (:func:`import_references`), before anything is
written, external keys of always-mode references must resolve in the
target database (else :class:`~pclasses.errors.MissingReferencesError`
lists them), unless ``references="dangling"``; then the target's registry
learns the reference ids, internal ones re-rooted under the new location,
and the links of the imported sources.

Everything is read from the records (the safe reader); nothing of the
application is loaded.
"""

from __future__ import annotations

from typing import Any

from ZODB.utils import z64

from ..errors import MissingReferencesError
from ..record.reader import PersistentRef, read_record
from .integrity import database_name, declared
from .location import APPLICATION, resolve
from .registry import STATE_KEY, registry_of

__all__ = ["MARK", "key_from_records", "container_oid", "export_references", "import_references"]

MARK = STATE_KEY.encode("ascii")
POLICIES = ("error", "dangling")


def _state(load: Any, oid: bytes) -> Any:
    try:
        data, _serial = load(oid)
        return read_record(data, oid).state
    except Exception:
        return None


def key_from_records(load: Any, oid: bytes) -> str | None:
    """The key of ``oid`` read from the ``__parent__``/``__name__`` of the
    records up to the key root, or ``None`` when the chain breaks."""
    names: list[str] = []
    for _ in range(10_000):
        if oid == z64:
            break
        state = _state(load, oid)
        if not isinstance(state, dict):
            return None
        parent, name = state.get("__parent__"), state.get("__name__")
        if not isinstance(parent, PersistentRef) or not isinstance(name, str):
            return None
        parent_oid = parent.reference.oid
        if parent_oid == z64 and name == APPLICATION:
            break
        names.append(name)
        oid = parent_oid
    else:
        return None
    return "/" + "/".join(reversed(names))


def container_oid(load: Any, oid: bytes) -> bytes | None:
    """The oid the record's ``__parent__`` names (its container), if any: an
    export of a placed object must not follow that back-pointer, or it would
    drag its container (and everything else) along."""
    state = _state(load, oid)
    if isinstance(state, dict):
        parent = state.get("__parent__")
        if isinstance(parent, PersistentRef):
            return parent.reference.oid
    return None


def _under(key: str | None, root: str | None) -> bool:
    if key is None or root is None:
        return False
    return root == "/" or key == root or key.startswith(root + "/")


def export_references(connection: Any, start: bytes, holders: list[tuple[bytes, bytes]],
                      load: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """``(key of the exported root, references)`` for the manifest."""
    root_key = key_from_records(load, start)
    found: dict[tuple[str, str | None], dict[str, Any]] = {}
    for oid, data in holders:
        try:
            state = read_record(data, oid).state
        except Exception:
            continue
        refs = state.get(STATE_KEY) if isinstance(state, dict) else None
        if not isinstance(refs, dict):
            continue
        for ref_key, value in refs.items():
            if not isinstance(ref_key, str):
                continue
            ref_id, _, database = ref_key.partition("@")
            conn = connection.get_connection(database) if database else connection
            registry = registry_of(conn, create=False)
            for rid in (value if isinstance(value, tuple) else (value,)):
                if not isinstance(rid, str) or (rid, database or None) in found:
                    continue
                key = registry.ids.get(rid) if registry is not None else None
                mode = None
                if registry is not None:
                    mode = registry.modes.get(ref_id) or registry.code_modes.get(ref_id)
                if mode is None:
                    desc = declared.get(ref_id)
                    mode = desc.mode if desc is not None else "always"
                found[(rid, database or None)] = {
                    "reference_id": rid, "ref_id": ref_id, "database": database or None,
                    "key": key, "mode": mode,
                    "internal": not database and _under(key, root_key)}
    return root_key, sorted(found.values(), key=lambda r: (r["database"] or "",
                                                           r["reference_id"]))


def import_references(connection: Any, plan: Any, manifest: Any, into: Any, name: str | None,
                      policy: str = "error") -> None:
    """Check, then register, the references of an import (see the module)."""
    if policy not in POLICIES:
        from ..errors import TransferError

        raise TransferError(f"references must be one of {', '.join(POLICIES)}, not {policy!r}")
    holders = _imported_holders(plan)
    if not holders:
        return
    listed = {(r["reference_id"], r["database"]): r
              for r in (getattr(manifest, "references", None) or [])}
    old_root = getattr(manifest, "references_root", None)
    new_root = None
    if into is not None and name:
        from .containment import container_key

        try:
            base = container_key(into)[1]
            new_root = ("" if base == "/" else base) + "/" + name
        except Exception:
            new_root = None
    targets: dict[tuple[str, str | None], str | None] = {}
    missing: list[str] = []
    for _oid, refs in holders:
        for ref_key, value in refs.items():
            ref_id, _, database = ref_key.partition("@")
            for rid in (value if isinstance(value, tuple) else (value,)):
                if not isinstance(rid, str) or (rid, database or None) in targets:
                    continue
                entry = listed.get((rid, database or None))
                key = entry["key"] if entry else None
                if entry and entry["internal"] and old_root is not None and key is not None:
                    key = (new_root + key[len(old_root):]) if new_root is not None else None
                elif key is not None:
                    conn = connection.get_connection(database) if database else connection
                    mode = entry["mode"] if entry else "always"
                    if resolve(conn, key) is None and mode == "always" and policy == "error":
                        missing.append(key)
                targets[(rid, database or None)] = key
    if missing:
        raise MissingReferencesError(sorted(set(missing)))
    name_of = database_name(connection)
    for new_oid, refs in holders:
        for ref_key, value in refs.items():
            ref_id, _, database = ref_key.partition("@")
            conn = connection.get_connection(database) if database else connection
            registry = registry_of(conn)
            assert registry is not None
            if ref_id not in registry.names:
                registry.names[ref_id] = ref_id.rpartition(".")[2]
            for rid in (value if isinstance(value, tuple) else (value,)):
                if not isinstance(rid, str):
                    continue
                key = targets.get((rid, database or None))
                if key is not None and rid not in registry.ids:
                    registry.ids[rid] = key
                    if key not in registry.keys:
                        registry.keys[key] = rid
                registry.add_link(rid, ref_id, name_of, new_oid)


def _imported_holders(plan: Any) -> list[tuple[bytes, dict[str, Any]]]:
    """(new oid, stored references) of the prepared records holding some."""
    found = []
    temp = plan.temp
    here = temp.tell()
    for new_oid, (pos, length, _blob) in plan.index.items():
        temp.seek(pos)
        data = temp.read(length)
        if MARK not in data:
            continue
        try:
            state = read_record(data, new_oid).state
        except Exception:
            continue
        refs = state.get(STATE_KEY) if isinstance(state, dict) else None
        if isinstance(refs, dict):
            found.append((new_oid, {k: v for k, v in refs.items() if isinstance(k, str)}))
    temp.seek(here)
    return found
