"""A tree of databases: the root database and the children its handles name.

:func:`tree_of` gives the :class:`Tree` of a database opened with
``pclasses.open(target, tree=True)`` (or makes one for any other database).
"""

from __future__ import annotations

from typing import Any

from persistent.mapping import PersistentMapping

from ..errors import DuplicateHandleError
from .databases import HandleInfo, TreeDatabases, databases_of
from .handle import HANDLES_KEY, DatabaseHandle

__all__ = ["Tree", "tree_of"]


class Tree:
    """The databases reachable from one root database through handles."""

    def __init__(self, db: Any, databases: TreeDatabases) -> None:
        self.db = db
        self.databases = databases
        self._conn: Any = None

    @property
    def opened(self) -> frozenset[str]:
        """Names of the databases actually open (the root's included)."""
        return frozenset(dict.keys(self.databases)) | frozenset(self.databases.foreign)

    @property
    def known(self) -> dict[str, HandleInfo]:
        """Every handle the tree knows of (from the databases open so far)."""
        return dict(self.databases.known)

    def add(self, connection: Any, name: str, target: Any, **kw: Any) -> DatabaseHandle:
        """Store a new handle ``name`` -> ``target`` in the database of ``connection``.

        Kept in that database's root under ``"pclasses.databases"``; committed
        with the connection's transaction.  ``kw`` are the handle's options
        (``read_only``, ``pin``, ``ZODB.DB`` keywords).  The child database is
        not opened here (it is created on first use if it does not exist).
        """
        dbs = self.databases
        if name in dbs.known or dict.__contains__(dbs, name):
            raise DuplicateHandleError(name)
        from .databases import FOREIGN, foreign_scheme

        scheme = foreign_scheme(target)
        cls = FOREIGN[scheme][1] if scheme is not None else DatabaseHandle
        handle: DatabaseHandle = cls(name, target, **kw)
        root = connection.root()
        handles = root.get(HANDLES_KEY)
        if handles is None:
            handles = root[HANDLES_KEY] = PersistentMapping()
        handles[name] = handle
        connection.add(handle)
        from .databases import _info

        dbs.learn(_info(handle, connection.db().database_name))
        dbs.creatable.add(name)
        return handle

    def handle(self, name: str, connection: Any = None) -> DatabaseHandle:
        """The handle ``name``, loaded through ``connection`` (default: a
        connection of the root database on the thread's transaction manager)."""
        info = self.databases.find(name)
        if info is None:
            raise KeyError(f"no database handle named {name!r} in this tree "
                           f"(known: {', '.join(sorted(self.databases.known)) or 'none'})")
        if connection is None:
            if self._conn is None or self._conn.opened is None:
                self._conn = self.db.open()
            connection = self._conn
        conn = connection.get_connection(info.parent)
        if info.oid is not None:
            try:
                return conn.get(info.oid)  # type: ignore[no-any-return]
            except KeyError:
                pass
        return conn.root()[HANDLES_KEY][name]  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close every open database of the tree (the root last)."""
        if self._conn is not None and self._conn.opened is not None:
            try:
                self._conn.transaction_manager.abort()
            finally:
                self._conn.close()
        self._conn = None
        self.databases.close_all()


def tree_of(db: Any) -> Tree:
    """The tree of databases whose root is ``db`` (made on first call)."""
    dbs = databases_of(db)
    if dbs.tree is None:
        root = dict.get(dbs, dbs.root_name) if dbs.root_name else db
        dbs.tree = Tree(root or db, dbs)
    return dbs.tree  # type: ignore[no-any-return]
