"""The package's one Connection class, how it is installed, and its hooks.

:func:`install` puts :class:`Connection` on a database (every database of
its multi-database) and on the connections it already made.  It is the only
place that swaps a connection class; :meth:`ClassRegistry.install
<pclasses.registry.ClassRegistry.install>`, the cross-database seat belt and
import all call it.  Features then subscribe through explicit hooks instead
of subclassing again:

* **Record hooks** (:func:`add_record_hook`).  A hook is called once per
  commit with the committing connection and returns either ``None`` (nothing
  to do for this connection) or a function ``check(obj, data)`` called for
  every record the commit writes, after it is pickled.  A hook vetoes a
  record by raising; the commit then aborts.  The seat belt
  (:mod:`pclasses.xrefs`) subscribes this way.
* **Commit-time imports** (:class:`CommitImport`).  ZODB runs a pending
  import (``connection._import``) in ``_importDuringCommit``; an object that
  is a :class:`CommitImport` runs its own :meth:`CommitImport.run` there,
  anything else is ZODB's ``importFile`` as usual.

Writing records that hold broken objects, losslessly
----------------------------------------------------

ZODB pickles a class by name and checks, on the way, that the name imports
to the very same class.  A broken class stands for a name that does not
import, so the C pickler refuses any record that holds a broken object (or a
reference to a persistent one, whose class travels with the reference).

:class:`Connection` lets the C pickler try first and, only when it refuses a
record while broken classes exist, pickles the object again with
zodbpickle's pure-Python pickler whose ``save_global`` writes a broken class
as the GLOBAL it was read from.  Everything else is ZODB's own writer: same
class metadata, same persistent ids, same protocol, so the record comes out
as ZODB would have written it with the class present.

Nothing here imports a module above it: the record reader is the only
package module it uses.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ZODB.broken import PersistentBroken
from ZODB.Connection import Connection as _ZODBConnection
from ZODB.serialize import _oidtypes
from zodbpickle import binary, pickle_3

from .broken import broken_classes_exist, missing_name, writing

__all__ = ["Connection", "CommitImport", "install", "is_installed", "add_record_hook",
           "remove_record_hook", "record_hooks", "serialize_with_broken",
           "add_connection_hook", "connection_hooks"]

_PROTOCOL = 3


class _Pickler(pickle_3._Pickler):  # type: ignore[misc]
    """The pure-Python pickler, writing broken classes under their own names."""

    def save_global(self, obj: Any, name: Any = None, pack: Any = None) -> None:
        pair = missing_name(obj)
        if pair is None:
            if pack is None:
                return super().save_global(obj, name)  # type: ignore[no-any-return]
            return super().save_global(obj, name, pack)  # type: ignore[no-any-return]
        module, cname = pair
        self.write(pickle_3.GLOBAL + module.encode("utf-8") + b"\n"
                   + cname.encode("utf-8") + b"\n")
        self.memoize(obj)

    # The pure-Python pickler dispatches on type; broken classes are types.
    dispatch = dict(pickle_3._Pickler.dispatch)


def _persistent_id(writer: Any) -> Any:
    """ZODB's ``persistent_id``, but a reference to a persistent broken object
    takes the form ZODB wrote for the original class: ``(oid, class)``, or a
    bare oid when the class had ``__getnewargs__`` (its records carry
    arguments, format 2).  ZODB's broken objects always have
    ``__getnewargs__``, which would drop the class from every reference."""
    original = writer.persistent_id

    def persistent_id(obj: Any) -> Any:
        if (
            isinstance(obj, PersistentBroken)
            and obj._p_oid is not None
            and obj._p_jar is writer._jar
            and missing_name(type(obj)) is not None
        ):
            if _had_newargs(obj):
                return binary(obj._p_oid)
            return binary(obj._p_oid), type(obj)
        return original(obj)

    return persistent_id


def _had_newargs(obj: Any) -> bool:
    """Whether the broken object's own record carries ``__getnewargs__``."""
    from .record.reader import read_class

    try:
        data, _serial = obj._p_jar._storage.load(obj._p_oid)
        # Formats 2 and 7 carry __getnewargs__; format 3 names an instance of
        # a persistent class, whose references ZODB writes as bare oids too.
        return read_class(data, obj._p_oid).format in (2, 3, 7)
    except Exception:
        return False


def serialize_with_broken(writer: Any, obj: Any) -> bytes:
    """``writer.serialize(obj)`` with a pickler that can write broken classes.

    Mirrors ``ZODB.serialize.ObjectWriter.serialize``.
    """
    klass: Any = type(obj)
    newargs = getattr(obj, "__getnewargs__", None)
    if isinstance(getattr(klass, "_p_oid", 0), _oidtypes) and klass.__module__:
        klass = klass.__module__, klass.__name__
        meta: Any = (klass, None) if newargs is None else (klass, newargs())
    elif newargs is None:
        meta = klass
    else:
        meta = klass, newargs()
    out = io.BytesIO()
    p = _Pickler(out, _PROTOCOL)
    p.persistent_id = _persistent_id(writer)
    p.dump(meta)
    p.dump(obj.__getstate__())
    return out.getvalue()


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------

#: A record hook: ``hook(connection) -> check | None``, called once per
#: commit; ``check(obj, data)`` is then called for every record written.
RecordHook = Callable[[Any], "Callable[[Any, bytes], None] | None"]

#: The record hooks, in the order they run.  Use :func:`add_record_hook`.
record_hooks: list[RecordHook] = []


def add_record_hook(hook: RecordHook) -> None:
    """Subscribe ``hook`` to every record the package's connections write.

    Adding the same hook twice does nothing.
    """
    if hook not in record_hooks:
        record_hooks.append(hook)


def remove_record_hook(hook: RecordHook) -> None:
    """Unsubscribe ``hook``; an unknown hook is ignored."""
    if hook in record_hooks:
        record_hooks.remove(hook)


#: Called with every package connection when it is made (or upgraded from
#: ZODB's class): trees of databases (:mod:`pclasses.tree`) install their
#: reference loaders this way.
connection_hooks: list[Callable[[Any], None]] = []


def add_connection_hook(hook: Callable[[Any], None]) -> None:
    """Call ``hook(connection)`` for every package connection made from now on."""
    if hook not in connection_hooks:
        connection_hooks.append(hook)


#: Called as ``hook(connection, writer)`` before a commit pickles the
#: connection's changed objects, with ZODB's ``ObjectWriter``: stubs
#: (:mod:`pclasses.stores.stubs`) replace references to other databases'
#: objects there.  Use :func:`add_writer_hook`.
writer_hooks: list[Callable[[Any, Any], None]] = []


def add_writer_hook(hook: Callable[[Any, Any], None]) -> None:
    """Call ``hook(connection, writer)`` before every commit of a package connection."""
    if hook not in writer_hooks:
        writer_hooks.append(hook)


class CommitImport:
    """An import that runs inside the commit, in place of ZODB's ``importFile``.

    Set ``connection._import = (importer, returned)`` (and register the
    connection with its transaction) as ZODB's ``importFile`` does; when the
    commit reaches the import, :class:`Connection` calls
    ``importer.run(connection, transaction, returned)``.  Subclasses
    implement :meth:`run`.
    """

    def run(self, connection: Any, transaction: Any, returned: list[bytes]) -> None:
        raise NotImplementedError


def _patch(writer: Any, connection: Any) -> Any:
    checks = [check for check in (hook(connection) for hook in record_hooks)
              if check is not None]
    lossless = broken_classes_exist()
    if not lossless and not checks:
        return writer  # ZODB's writer, untouched
    original = writer.serialize
    if lossless:
        # Only needed when broken objects may be referenced: a Python-level
        # persistent_id wrapper costs a call for every object pickled.
        writer._p.persistent_id = _persistent_id(writer)

    def serialize(obj: Any) -> bytes:
        writing.active = True
        try:
            data = original(obj)
        except Exception as exc:
            if not lossless or (
                "pickl" not in type(exc).__name__.lower() and not isinstance(exc, TypeError)
            ):
                raise
            try:
                data = serialize_with_broken(writer, obj)
            except Exception:
                raise exc from None
        finally:
            writing.active = False
        for check in checks:
            check(obj, data)  # a veto raises and aborts the commit
        return data  # type: ignore[no-any-return]

    writer.serialize = serialize
    return writer


class Connection(_ZODBConnection):  # type: ignore[misc]
    """ZODB's Connection, able to store objects that hold broken objects,
    running the record hooks and the package's commit-time imports."""

    _import: Any  # ZODB's pending import: ``(file or CommitImport, returned oids)``

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        for hook in connection_hooks:
            hook(self)

    def _store_objects(self, writer: Any, transaction: Any) -> Any:
        for hook in writer_hooks:
            hook(self, writer)
        return super()._store_objects(_patch(writer, self), transaction)

    def abort(self, transaction: Any) -> Any:
        # ZODB only forgets a pending import in tpc_abort; an import of ours
        # that waits for the commit (savepoint=False) must go on abort too.
        pending: Any = self._import
        if pending and isinstance(pending[0], CommitImport):
            self._import = None
        return super().abort(transaction)

    def _importDuringCommit(self, transaction: Any, f: Any, return_oid_list: Any) -> Any:  # noqa: N802
        if isinstance(f, CommitImport):
            return f.run(self, transaction, return_oid_list)
        return super()._importDuringCommit(transaction, f, return_oid_list)


# ---------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------


def install(db: Any) -> Any:
    """Make :class:`Connection` the connection class of ``db``.

    Every database of ``db``'s multi-database gets it, and so do the
    connections they already made (open or pooled), which are of ZODB's own
    class.  A database with another connection class of its own is left
    alone (``is_installed`` then says so).  Installing again does nothing.
    Returns ``db``.
    """
    dbs = getattr(db, "databases", None) or {None: db}
    for each in set(dbs.values()) | {db}:
        if getattr(each, "klass", None) is _ZODBConnection:
            each.klass = Connection
        connection_map = getattr(each, "_connectionMap", None)
        if connection_map is not None:
            connection_map(_upgrade)
    return db


def _upgrade(connection: Any) -> None:
    if type(connection) is _ZODBConnection:
        connection.__class__ = Connection
        for hook in connection_hooks:
            hook(connection)


def is_installed(connection: Any) -> bool:
    """Whether ``connection`` is one of the package's connections."""
    return isinstance(connection, Connection)
