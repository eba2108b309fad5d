"""Database handles: persistent objects that stand for other databases.

A :class:`DatabaseHandle` is stored in a parent database and names a child
database (by any target :func:`pclasses.open` takes).  It opens the child
lazily, once per process, into the multi-database of the connection it was
loaded through, so the child's connection shares that connection's
transaction manager and one two-phase commit covers both (ZODB's
``Connection.get_connection``).

This class is pickled into databases: its path
``pclasses.tree.handle.DatabaseHandle`` is frozen (design decision D14).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from persistent import Persistent

__all__ = ["DatabaseHandle", "HANDLES_KEY"]

#: The key of a database's root mapping under which :meth:`Tree.add
#: <pclasses.tree.tree.Tree.add>` keeps that database's handles (a
#: ``PersistentMapping`` name -> handle).
HANDLES_KEY = "pclasses.databases"

#: ``open_child(db, handle) -> ZODB.DB``: opens a handle's database in the
#: tree of ``db``.  Set by :mod:`pclasses.tree.databases` (which sits above
#: this module and is imported with the package), so this module imports
#: nothing of the tree.
open_child: Callable[[Any, DatabaseHandle], Any] | None = None


class DatabaseHandle(Persistent):  # type: ignore[misc]
    """A persistent stand-in for the database ``name`` opened from ``target``.

    ``read_only`` opens the child read-only; ``pin=True`` makes remote
    references through this handle pin their targets in the child (see
    :mod:`pclasses.tree.pins`); other keyword arguments go to
    :func:`pclasses.open` / ``ZODB.DB`` when the child is opened.
    """

    def __init__(self, name: str, target: str | os.PathLike[str], *, read_only: bool = False,
                 pin: bool = False, **db_kwargs: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a database handle needs a non-empty name")
        self.name = name
        self.target = os.fspath(target)
        self.read_only = bool(read_only)
        self.pin = bool(pin)
        self.options = dict(db_kwargs)

    def __repr__(self) -> str:
        return f"<DatabaseHandle {self.name!r} -> {self.target!r}>"

    def _jar(self) -> Any:
        jar = self._p_jar
        if jar is None:
            raise ValueError(f"the handle {self.name!r} is not stored in a database yet "
                             "(add it to a connection first)")
        return jar

    def db(self) -> Any:
        """The child ``ZODB.DB``, opened on first use (once per process).

        Raises :class:`~pclasses.errors.DatabaseUnavailableError` when it
        cannot be opened.
        """
        jar = self._jar()
        if open_child is None:  # pragma: no cover - set when pclasses.tree is imported
            raise RuntimeError("pclasses.tree.databases is not imported")
        return open_child(jar.db(), self)

    def connection(self) -> Any:
        """The child's connection, on the transaction manager of the
        connection this handle was loaded through."""
        jar = self._jar()
        conn = jar.connections.get(self.name)
        if conn is not None:
            return conn
        self.db()
        return jar.get_connection(self.name)

    def root(self) -> Any:
        """The child's root mapping (see :meth:`connection`)."""
        return self.connection().root()
