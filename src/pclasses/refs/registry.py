"""The per-database reference registry.

One :class:`RefRegistry` per database, kept in the root mapping under
:data:`REGISTRY_KEY` and found, like the class table
(:mod:`pclasses.classtable`), without loading the root object: when the root
is a ghost its record is read with the safe record reader to find the
registry's oid.  It holds

* ``ids``: reference id -> key (text path from the key root);
* ``keys``: key -> reference id, ordered, so a subtree is a range scan;
* ``links``: every link ``(reference id, ref id, source database, source
  oid)`` held by a source, in every mode;
* ``by_ref``: the same links ordered by ref id first (mode changes);
* ``names``: ref id -> attribute name;
* ``modes``: ref id -> mode set at run time (overrides the code's mode);
* ``code_modes``: ref id -> the mode the code declares, as last seen (so
  tools that do not import the application know it).

Reference ids are derived from the target's oid when it is first
referenced (the registry's random ``token`` and the hex oid, with a ``.n``
suffix if taken), never from a counter: two writers referencing the same new target insert the same
entries, which :class:`~pclasses.refs.trees.KeyTree` merges.  The registry
object itself is "bumped" (rewritten unchanged) whenever a key stops
meaning what it meant (remove, move, replace), which invalidates every
connection's cache of resolved targets; concurrent bumps merge.
"""

from __future__ import annotations

from typing import Any

from persistent import Persistent
from ZODB.POSException import POSKeyError
from ZODB.utils import u64, z64

from ..classtable import root_entry_oid
from .trees import KeySet, KeyTree

__all__ = ["REGISTRY_KEY", "STATE_KEY", "RefRegistry", "registry_of", "new_reference_id",
           "subtree_range", "LinkLog", "log_link", "flush_links"]

#: The root-mapping key of the registry (frozen).
REGISTRY_KEY = "__pclasses_refs__"
#: The key, in a source's state, of its stored references (frozen):
#: ``{ref key: reference id | tuple of reference ids | None}``.
STATE_KEY = "__pclasses_refs__"

_CONN_ATTR = "_pclasses_refreg"
#: The connection attribute holding the transaction's :class:`LinkLog`.
LOG_ATTR = _LOG_ATTR = "_pclasses_reflog"


class RefRegistry(Persistent):  # type: ignore[misc]
    """The reference registry of one database (see the module docstring)."""

    _v_cache: dict[str, Any]

    #: A random prefix of this database's reference ids, so that ids stay
    #: unique when subtrees move between databases (export/import).
    token = ""

    def __init__(self) -> None:
        import secrets

        self.token = secrets.token_hex(3)
        self.ids = KeyTree()
        self.keys = KeyTree()
        self.names = KeyTree()
        self.modes = KeyTree()
        self.code_modes = KeyTree()
        self.links = KeySet()
        self.by_ref = KeySet()

    def __repr__(self) -> str:
        return f"<RefRegistry with {len(self.ids)} reference ids>"

    # -- cache of resolved targets ------------------------------------------

    def cache(self) -> dict[str, Any]:
        try:
            return self._v_cache
        except AttributeError:
            cache: dict[str, Any] = {}
            self._v_cache = cache
            return cache

    def location_token(self) -> object:
        """A volatile token that stays the same while no key changes meaning
        (targets cache their location under it)."""
        token = self.__dict__.get("_v_token")
        if token is None:
            token = self._v_token = object()
        return token

    def bump(self) -> None:
        """Keys changed meaning: drop every connection's resolved targets."""
        self.__dict__.pop("_v_cache", None)
        self.__dict__.pop("_v_token", None)
        self._p_changed = True

    def _p_resolveConflict(self, old: Any, saved: Any, new: Any) -> Any:  # noqa: N802
        # Only bumps write this object; its state never changes.
        return saved

    # -- links ---------------------------------------------------------------

    def links_of(self, rid: str) -> list[tuple[str, str, str, bytes]]:
        return list(self.links.keys(min=(rid,), max=(rid + "\x00",), excludemax=True))

    def has_links(self, rid: str) -> bool:
        for _ in self.links.keys(min=(rid,), max=(rid + "\x00",), excludemax=True):
            return True
        return False

    def links_of_ref(self, ref_id: str) -> list[tuple[str, str, str, bytes]]:
        return [(rid, r, db, oid) for (r, rid, db, oid)
                in self.by_ref.keys(min=(ref_id,), max=(ref_id + "\x00",), excludemax=True)]

    def add_link(self, rid: str, ref_id: str, database: str, oid: bytes) -> bool:
        if self.links.insert((rid, ref_id, database, oid)):
            self.by_ref.insert((ref_id, rid, database, oid))
            return True
        return False

    def drop_link(self, rid: str, ref_id: str, database: str, oid: bytes) -> bool:
        link = (rid, ref_id, database, oid)
        if link in self.links:
            self.links.remove(link)
            self.by_ref.remove((ref_id, rid, database, oid))
            return True
        return False

    # -- keys ----------------------------------------------------------------

    def subtree(self, key: str) -> list[tuple[str, str]]:
        """(key, reference id) of ``key`` and every key under it."""
        found = []
        rid = self.keys.get(key)
        if rid is not None:
            found.append((key, rid))
        low, high = subtree_range(key)
        found.extend(self.keys.items(min=low, max=high, excludemax=True))
        return found

    def id_for(self, key: str, oid: bytes | None) -> str:
        """The reference id of ``key``, created (derived from ``oid``) if new."""
        rid = self.keys.get(key)
        if rid is None:
            rid = new_reference_id(self, oid)
            self.ids[rid] = key
            self.keys[key] = rid
        return rid  # type: ignore[no-any-return]

    def set_key(self, rid: str, new_key: str) -> None:
        old = self.ids.get(rid)
        if old is not None and self.keys.get(old) == rid:
            del self.keys[old]
        self.ids[rid] = new_key
        self.keys[new_key] = rid

    def forget(self, rid: str) -> None:
        key = self.ids.pop(rid, None)
        if key is not None and self.keys.get(key) == rid:
            del self.keys[key]


def subtree_range(key: str) -> tuple[str, str]:
    """The half-open range of keys strictly under ``key``."""
    base = "" if key == "/" else key
    return base + "/", base + "0"  # '0' follows '/'


def new_reference_id(registry: RefRegistry, oid: bytes | None) -> str:
    """A reference id derived from the target's oid, unique in ``registry``."""
    if oid is None:
        import secrets

        base = "r" + secrets.token_hex(8)
    else:
        base = registry.token + format(u64(oid), "x")
    rid, n = base, 0
    while rid in registry.ids:
        n += 1
        rid = f"{base}.{n}"
    return rid


def _registry_oid_from_record(connection: Any) -> bytes | None:
    return root_entry_oid(connection, REGISTRY_KEY)


def _usable(registry: Any, connection: Any) -> bool:
    return registry is not None and registry._p_jar is connection and registry._p_oid is not None


def registry_of(connection: Any, create: bool = True) -> RefRegistry | None:
    """The reference registry of ``connection``'s database, its links up to
    date with every assignment made so far (see :class:`LinkLog`).

    Found without loading the root object (or any application object);
    ``create=True`` creates it in the current transaction when missing.
    """
    log = connection.__dict__.get(_LOG_ATTR)
    if log is not None and log.dirty:
        log.sync()
    registry = connection.__dict__.get(_CONN_ATTR)
    if _usable(registry, connection):
        return registry  # type: ignore[no-any-return]
    db = connection.db()
    oid = getattr(db, "_pclasses_refreg_oid", None)
    if oid is None:
        oid = _registry_oid_from_record(connection)
    if oid is not None:
        try:
            registry = connection.get(oid)
        except (POSKeyError, KeyError):
            registry = None
        if isinstance(registry, RefRegistry):
            db._pclasses_refreg_oid = oid
            connection.__dict__[_CONN_ATTR] = registry
            return registry
    # Created in this transaction (not committed yet), or not at all.
    root = connection.get(z64)
    if root._p_changed is not None and "data" in root.__dict__:
        registry = root.get(REGISTRY_KEY)
    elif oid is None and not create:
        return None
    else:
        registry = root.get(REGISTRY_KEY)
    if registry is None:
        if not create:
            return None
        registry = RefRegistry()
        root[REGISTRY_KEY] = registry
        connection.add(registry)
    connection.__dict__[_CONN_ATTR] = registry
    return registry  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# Links written when they are read (or at commit), not at every assignment
# ---------------------------------------------------------------------------


class LinkLog:
    """The (source, reference) pairs one transaction assigned, per registry.

    An assignment only notes the pair here (:func:`log_link`); the links
    are brought in step with what the sources hold when anything reads the
    registry through :func:`registry_of` (removals, referrers, mode changes,
    verification) and, for every pair the transaction touched, in a
    before-commit hook.  A pair remembers every reference id it held during
    the transaction, so syncing from the sources' state is right after a
    savepoint rollback too (the commit syncs them all again).
    """

    __slots__ = ("registry", "jar", "entries", "dirty")

    def __init__(self, registry: RefRegistry, jar: Any) -> None:
        self.registry, self.jar = registry, jar
        #: (id(source), ref key) -> (source, ref id, ref key, name, the code's
        #: mode, reference ids seen)
        self.entries: dict[tuple[int, str], tuple[Any, str, str, str, str, set[str]]] = {}
        self.dirty: set[tuple[int, str]] = set()

    def sync(self, everything: bool = False) -> None:
        registry = self.registry
        entries = self.entries
        todo = list(entries) if everything else list(self.dirty)
        self.dirty.clear()
        for k in todo:
            source, ref_id, ref_key, name, code_mode, seen = entries[k]
            jar, oid = source._p_jar, source._p_oid
            if jar is None or oid is None:
                continue
            try:
                source._p_activate()
            except (POSKeyError, KeyError):
                continue  # created in a savepoint rolled back since
            value = (source.__dict__.get(STATE_KEY) or {}).get(ref_key)
            if isinstance(value, tuple):
                want = set(value)
            elif isinstance(value, str):
                want = {value}
            else:
                want = set()
            seen |= want
            database = jar.db().database_name
            if want and ref_id not in registry.names:
                registry.names[ref_id] = name
            if want and registry.code_modes.get(ref_id) != code_mode:
                registry.code_modes[ref_id] = code_mode
            for rid in seen:
                if rid in want:
                    registry.add_link(rid, ref_id, database, oid)
                else:
                    registry.drop_link(rid, ref_id, database, oid)

    def at_commit(self) -> None:
        if self.jar.__dict__.get(_LOG_ATTR) is self:
            self.sync(everything=True)
            del self.jar.__dict__[_LOG_ATTR]

    def at_abort(self) -> None:
        if self.jar.__dict__.get(_LOG_ATTR) is self:
            del self.jar.__dict__[_LOG_ATTR]


def log_link(registry: RefRegistry, source: Any, ref_id: str, ref_key: str, name: str,
             code_mode: str, old: Any, new: Any) -> None:
    """Note that ``source``'s reference ``ref_key`` changes from ``old`` to
    ``new`` (reference ids, tuples of them, or anything else for none)."""
    jar = registry._p_jar
    log = jar.__dict__.get(_LOG_ATTR)
    if log is not None and isinstance(new, str) and not isinstance(old, tuple):
        entry = log.entries.get((id(source), ref_key))
        if entry is not None:  # the common case, inline
            seen = entry[5]
            seen.add(new)
            if isinstance(old, str):
                seen.add(old)
            log.dirty.add((id(source), ref_key))
            return
    if log is None:
        log = LinkLog(registry, jar)
        txn = jar.transaction_manager.get()
        txn.addBeforeCommitHook(log.at_commit)
        txn.addAfterAbortHook(log.at_abort)
        jar.__dict__[_LOG_ATTR] = log
    k = (id(source), ref_key)
    entry = log.entries.get(k)
    if entry is None:
        entry = log.entries[k] = (source, ref_id, ref_key, name, code_mode, set())
    seen = entry[5]
    for value in (old, new):
        if isinstance(value, str):
            seen.add(value)
        elif isinstance(value, tuple):
            seen.update(value)
    log.dirty.add(k)


def flush_links(connection: Any) -> None:
    """Write the links assigned so far in ``connection``'s database."""
    log = connection.__dict__.get(_LOG_ATTR)
    if log is not None and log.dirty:
        log.sync()
