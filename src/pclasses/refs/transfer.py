"""References in export files and on import.

References are not persistent references, so exporting a subtree never
drags master data along.  The manifest lists the references the subtree
holds (:func:`export_references`): reference id, declaration, key, whether
the key is inside the exported subtree (internal) or outside (external),
and the mode.  On import (:func:`import_references`), before anything is
written, external keys of always-mode references must resolve in the
target database (else :class:`~pclasses.errors.MissingReferencesError`
lists them), unless ``references="dangling"`` (imported as they are: they
resolve once the key exists) or ``references="null"`` (every reference
whose key does not resolve in the target, whatever its mode, is imported
as ``None``, and leaves a ``RefSet``); then the target's registry learns
the reference ids, internal ones re-rooted under the new location, and the
links of the imported sources.

``"null"`` rewrites the prepared records in place, at the bytes of those
reference ids, with the same length (:func:`null_reference_ids`): nothing
is unpickled into objects, and the positions the importer keeps stay true.

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

__all__ = ["MARK", "key_from_records", "container_oid", "export_references", "import_references",
           "null_reference_ids"]

MARK = STATE_KEY.encode("ascii")
POLICIES = ("error", "dangling", "null")


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
    nulled: set[tuple[str, str | None]] = set()
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
                    if resolve(conn, key) is None:
                        if policy == "null":
                            key = None
                        elif mode == "always" and policy == "error":
                            missing.append(key)
                if key is None and policy == "null":
                    nulled.add((rid, database or None))
                targets[(rid, database or None)] = key
    if missing:
        raise MissingReferencesError(sorted(set(missing)))
    if nulled:
        holders = _null_in_records(plan, holders, nulled)
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


# ---------------------------------------------------------------------------
# references="null": reference ids replaced by None in the prepared records
# ---------------------------------------------------------------------------


def _null_in_records(plan: Any, holders: list[tuple[bytes, dict[str, Any]]],
                     nulled: set[tuple[str, str | None]]) -> list[tuple[bytes, dict[str, Any]]]:
    """Null the reference ids ``nulled`` in the prepared records holding
    them; returns the holders with their new stored references."""
    from ..errors import TransferError

    temp = plan.temp
    here = temp.tell()
    out = []
    try:
        for new_oid, refs in holders:
            drop: dict[str, set[str]] = {}
            for ref_key, value in refs.items():
                database = ref_key.partition("@")[2] or None
                gone = {rid for rid in (value if isinstance(value, tuple) else (value,))
                        if isinstance(rid, str) and (rid, database) in nulled}
                if gone:
                    drop[ref_key] = gone
            if not drop:
                out.append((new_oid, refs))
                continue
            pos, length, _blob = plan.index[new_oid]
            temp.seek(pos)
            data = temp.read(length)
            patched = null_reference_ids(data, drop)
            if patched is None:
                raise TransferError(f"record {new_oid.hex()}: its references cannot be set "
                                    "to None in place; import with references='dangling'")
            temp.seek(pos)
            temp.write(patched)
            state = read_record(patched, new_oid).state
            out.append((new_oid, {k: v for k, v in state.get(STATE_KEY, {}).items()
                                  if isinstance(k, str)}))
        temp.flush()
    finally:
        temp.seek(here)
    return out


class _Str:
    __slots__ = ("value", "start", "end", "uses")

    def __init__(self, value: str, start: int, end: int) -> None:
        self.value, self.start, self.end, self.uses = value, start, end, 1


class _Dict:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[Any, Any]] = []


class _Tuple:
    __slots__ = ("elems",)

    def __init__(self, elems: list[Any]) -> None:
        self.elems = elems


_MARK = object()
_TEXT_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def _filler(n: int) -> bytes:
    """``n`` bytes of pickle that leave the stack as it was."""
    if n % 2:
        return b"(N1" + b"N0" * ((n - 3) // 2)  # MARK NONE POP_MARK, then NONE POP
    return b"N0" * (n // 2)


def _pop_to_mark(stack: list[Any]) -> list[Any]:
    items: list[Any] = []
    while stack:
        item = stack.pop()
        if item is _MARK:
            break
        items.append(item)
    items.reverse()
    return items


def null_reference_ids(data: bytes, drop: dict[str, set[str]]) -> bytes | None:
    """``data`` (a ZODB record) with the reference ids ``drop`` (ref key ->
    ids) of its ``__pclasses_refs__`` state entry replaced by ``None``, at
    the same length (each text opcode becomes NONE followed by opcodes that
    leave the stack as it was).  Read with :mod:`pickletools` and a small
    stack model: nothing is unpickled.  ``None`` when the record is not
    shaped as the descriptors write it (the id's text shared with another
    part of the state, say), so that nothing is patched blindly."""
    import pickletools

    ops = pickletools.genops(data)
    start = 0
    for op, _arg, pos in ops:  # the class pickle
        if op.name == "STOP":
            start = pos + 1  # type: ignore[operator]
            break
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    try:
        listed = list(pickletools.genops(data[start:]))
        for i, (op, arg, pos) in enumerate(listed):
            name = op.name
            at = start + pos  # type: ignore[operator]
            if name in _TEXT_OPS:
                end = start + (listed[i + 1][2] if i + 1 < len(listed)  # type: ignore[operator]
                               else len(data) - start)
                stack.append(_Str(str(arg), at, end))
            elif name == "EMPTY_DICT":
                stack.append(_Dict())
            elif name == "EMPTY_TUPLE":
                stack.append(_Tuple([]))
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                elems = stack[-n:]
                del stack[-n:]
                stack.append(_Tuple(elems))
            elif name == "TUPLE":
                stack.append(_Tuple(_pop_to_mark(stack)))
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                if isinstance(stack[-1], _Dict):
                    stack[-1].items.append((key, value))
            elif name == "SETITEMS":
                flat = _pop_to_mark(stack)
                if isinstance(stack[-1], _Dict):
                    stack[-1].items.extend(zip(flat[::2], flat[1::2]))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                item = memo.get(arg)
                if isinstance(item, _Str):
                    item.uses += 1
                stack.append(item)
            elif name == "STOP":
                break
            else:
                before, after = op.stack_before, op.stack_after
                if pickletools.stackslice in before:
                    _pop_to_mark(stack)
                    extra = before.index(pickletools.markobject)
                else:
                    extra = len(before)
                for _ in range(extra):
                    stack.pop()
                stack.extend(None for _ in after)
    except (IndexError, ValueError):
        return None
    state = stack[0] if stack else None
    if isinstance(state, _Tuple) and state.elems:
        state = state.elems[0]
    if not isinstance(state, _Dict):
        return None
    refs = next((v for k, v in state.items if isinstance(k, _Str) and k.value == STATE_KEY),
                None)
    if not isinstance(refs, _Dict):
        return None
    patches: dict[int, _Str] = {}
    for key, value in refs.items:
        if not isinstance(key, _Str) or key.value not in drop:
            continue
        for item in (value.elems if isinstance(value, _Tuple) else [value]):
            if isinstance(item, _Str) and item.value in drop[key.value]:
                patches[item.start] = item
    out = bytearray(data)
    for item in patches.values():
        places = sum(1 for _k, v in refs.items
                     for x in (v.elems if isinstance(v, _Tuple) else [v]) if x is item)
        if item.uses != places:
            return None  # the same text is used elsewhere in the state
        n = item.end - item.start
        if n < 3:
            return None
        out[item.start:item.end] = b"N" + _filler(n - 1)
    return bytes(out)
