"""Split state (seed 001, scenario 2): one object, two databases.

A :class:`SplitPersistent` subclass is mapped like any row class
(``store.map(name, table, key, SplitSubclass, columns=[...])``): the mapped
columns live in that SQL row, every other attribute in the object's own
(ZODB) database, whose connection is the object's ``_p_jar``.  Reading or
setting a column attribute of the own object goes to its *row part*, the
store's row object for its key, which the store's jar saves in the same
transaction as the own part (one two-phase commit).  Column names listed in
the class attribute ``copied`` are also kept, as copies, in the own part
(usable without SQL, e.g. in a catalog); so is the key, under the key
column's name.

:func:`adopt` finds the own object of a row by key through the index
``root["pclasses.split"]`` of the own database, re-checking its copied
columns against the row and updating stale ones; an object not adopted yet
wraps the row, and gets its own oid when the transaction commits.
"""

from __future__ import annotations

from typing import Any, ClassVar

from persistent import Persistent

from ..errors import StoreMappingError
from .mapping import COLUMNS_BY_CLASS

__all__ = ["SplitPersistent", "adopt", "SPLIT_KEY"]

#: The root key of the own database's index ``(store, mapping, key oid) -> object``.
SPLIT_KEY = "pclasses.split"
_LINK = "_pclasses_split"  # (store name, mapping name, key) in the own part


def _is_row(obj: Any) -> bool:
    from .jar import SQLJar

    return isinstance(obj._p_jar, SQLJar)


def _columns(obj: Any) -> frozenset[str]:
    """The mapped columns of ``obj``'s class (binding its store's mappings
    first when this process has not yet: an object loaded before any use of
    its store)."""
    cls = type(obj)
    found = COLUMNS_BY_CLASS.get(cls)
    if found is None:
        link = obj.__dict__.get(_LINK)
        jar = obj._p_jar
        if link is not None and jar is not None and not _is_row(obj):
            _store(jar, link[0]).connection()  # binds every mapping of the store
            found = COLUMNS_BY_CLASS.get(cls)
    return found[2] if found is not None else frozenset()


class SplitPersistent(Persistent):  # type: ignore[misc]
    """A persistent object whose mapped columns live in an SQL row (see the module)."""

    #: Columns whose values the own part keeps a copy of (refreshed by :func:`adopt`).
    copied: ClassVar[tuple[str, ...]] = ()

    def __getattr__(self, name: str) -> Any:
        # Only called when the instance has no such attribute: a column of the row.
        if name.startswith("_") or _is_row(self) or name not in _columns(self):
            raise AttributeError(name)
        return getattr(self._pclasses_row(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith(("_p_", "_v_")) and self._p_jar is not None:
            self._p_activate()  # a ghost's __dict__ is empty until loaded
        if (name.startswith(("_p_", "_v_")) or _LINK not in self.__dict__
                or _is_row(self) or name not in _columns(self)):
            super().__setattr__(name, value)
            return
        setattr(self._pclasses_row(), name, value)
        if name in type(self).copied:
            super().__setattr__(name, value)

    def _pclasses_row(self) -> Any:
        """The row part (the store's row object for this object's key)."""
        row = self.__dict__.get("_v_pclasses_row")
        jar = self._p_jar
        if row is not None and row._p_jar is not None and jar is not None \
                and row._p_jar.transaction_manager is jar.transaction_manager:
            return row
        store_name, name, key = self.__dict__[_LINK]
        store = _store(jar, store_name)
        row = store.get(name, key)
        self.__dict__["_v_pclasses_row"] = row
        return row


def _store(conn: Any, name: str) -> Any:
    if conn is None:
        raise ValueError("a split object needs its own database: adopt(..., into=connection)")
    from ..tree.tree import tree_of

    return tree_of(conn.db()).handle(name, conn)


def _find(conn: Any, name: str) -> tuple[Any, Any]:
    """``(store, bound mapping)`` of the split mapping ``name`` in ``conn``'s tree."""
    from ..tree.databases import databases_of, foreign_scheme
    from ..tree.tree import tree_of

    dbs = databases_of(conn.db())
    tree = tree_of(conn.db())
    for handle_name, info in sorted(dbs.known.items()):
        if foreign_scheme(info.target) is None:
            continue
        store = tree.handle(handle_name, conn)
        if name in getattr(store, "mappings", {}):
            jar = store.connection()
            bound = jar.db().bind(name, store.mappings[name])
            if not (isinstance(bound.cls, type) and issubclass(bound.cls, SplitPersistent)):
                raise StoreMappingError(handle_name, name,
                                        f"{bound.cls.__name__} is not a SplitPersistent class")
            return store, bound
    raise StoreMappingError("?", name, "no SQL store of this tree maps it")


def adopt(name: str, key: Any, into: Any) -> Any:
    """The own object of row ``key`` of split mapping ``name``, in the database
    of connection ``into`` (see the module)."""
    from BTrees.OOBTree import OOBTree

    store, bound = _find(into, name)
    key = bound.kind.normalize(key)
    row = store.get(name, key)  # a missing row raises RowNotFoundError here
    root = into.root()
    index = root.get(SPLIT_KEY)
    entry = (store.name, name, bound.oid(key))
    obj = index.get(entry) if index is not None else None
    if obj is None:
        cls = bound.cls
        obj = cls.__new__(cls)
        Persistent.__setattr__(obj, _LINK, (store.name, name, key))
        Persistent.__setattr__(obj, bound.key, key)  # the key, copied
        for column in cls.copied:
            Persistent.__setattr__(obj, column, getattr(row, column, None))
        if index is None:
            index = root[SPLIT_KEY] = OOBTree()
        index[entry] = obj
        into.add(obj)  # its _p_jar is the own database; saved when the transaction commits
        obj.__dict__["_v_pclasses_row"] = row
        return obj
    if obj.__dict__.get(bound.key) != key:
        Persistent.__setattr__(obj, bound.key, key)
    for column in type(obj).copied:  # re-check the copies against the row
        value = getattr(row, column, None)
        if obj.__dict__.get(column) != value:
            Persistent.__setattr__(obj, column, value)
    return obj
