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
           "subtree_range"]

#: The root-mapping key of the registry (frozen).
REGISTRY_KEY = "__pclasses_refs__"
#: The key, in a source's state, of its stored references (frozen):
#: ``{ref key: reference id | tuple of reference ids | None}``.
STATE_KEY = "__pclasses_refs__"

_CONN_ATTR = "_pclasses_refreg"


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
    """The reference registry of ``connection``'s database.

    Found without loading the root object (or any application object);
    ``create=True`` creates it in the current transaction when missing.
    """
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
