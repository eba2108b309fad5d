"""A commit that touches an unavailable child fails before anything is finished.

ZODB's two-phase commit already aborts every database when one storage
fails in ``tpc_begin`` or ``tpc_vote``.  Two cases slip through or take long:
a FileStorage child whose file was deleted or replaced while it was open
(the storage goes on writing into a file nobody will read again) and a ZEO
child whose server went away (ZODB's error is the client's own, after it
waited up to its ``wait_timeout``; the guard waits as long, then names the
handle).  Every connection of a child database checks, when
the commit reaches it (``tpc_begin``, before any database votes or
finishes), that its storage still stands for the child, and raises
:class:`~pclasses.errors.DatabaseUnavailableError` naming the handle and
target otherwise; the transaction then aborts in every database.

Installed through the package's connection hook (design decision D16): it
only touches connections of databases a tree opened for a handle.
"""

from __future__ import annotations

import os
from typing import Any

from ..connection import add_connection_hook
from ..errors import DatabaseUnavailableError

__all__ = ["guard_child", "unavailable_reason"]

#: attribute of a child ``ZODB.DB``: ``(handle name, target)``
CHILD_ATTR = "pclasses_tree_child"


def unavailable_reason(storage: Any) -> str | None:
    """Why ``storage`` cannot take a commit now, or ``None`` (one ``stat``
    for a FileStorage; for a ZEO client, its connection, waited for as long
    as the client would wait)."""
    name = getattr(storage, "_file_name", None)
    f = getattr(storage, "_file", None)
    if isinstance(name, str) and f is not None:
        try:
            st = os.stat(name)
        except OSError:
            return f"its file {name} is gone"
        try:
            fst = os.fstat(f.fileno())
        except (OSError, ValueError):
            return f"its file {name} is closed"
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            return f"its file {name} was replaced"
    is_connected = getattr(storage, "is_connected", None)
    if callable(is_connected) and not _connected(storage, is_connected):
        return "its storage server is not connected"
    return None


def _connected(storage: Any, is_connected: Any) -> bool:
    """Whether a ZEO client is connected, after waiting for it as long as
    the client itself would (its ``wait_timeout``): a server that restarts
    meanwhile is not an unavailable child."""
    try:
        if is_connected():
            return True
        wait = getattr(storage, "_wait", None)  # ZEO: waits up to wait_timeout
        if callable(wait):
            wait()
        return bool(is_connected())
    except Exception:  # noqa: BLE001 - a client that cannot connect is not connected
        return False


def _guard(connection: Any) -> None:
    db: Any = getattr(connection, "_db", None)
    child = getattr(db, CHILD_ATTR, None)
    if child is None or getattr(connection, "_pclasses_guarded", False):
        return
    name, target = child
    storage = db.storage
    original = connection.tpc_begin

    def tpc_begin(transaction: Any) -> Any:
        why = unavailable_reason(storage)
        if why is not None:
            raise DatabaseUnavailableError(name, target, why)
        return original(transaction)

    connection.tpc_begin = tpc_begin
    connection._pclasses_guarded = True


def guard_child(db: Any, name: str, target: str) -> None:
    """Make every connection of the child ``db`` check its storage when a
    commit begins (those it already made included)."""
    from ..connection import install

    setattr(db, CHILD_ATTR, (name, target))
    add_connection_hook(_guard)
    install(db)
    connection_map = getattr(db, "_connectionMap", None)
    if connection_map is not None:
        connection_map(_guard)
