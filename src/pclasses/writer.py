"""Writing records that hold broken objects, losslessly.

ZODB pickles a class by name and checks, on the way, that the name imports
to the very same class.  A broken class stands for a name that does not
import, so the C pickler refuses any record that holds a broken object (or a
reference to a persistent one, whose class travels with the reference).

:class:`Connection` (installed by :meth:`ClassRegistry.install`) lets the C
pickler try first and, only when it refuses, pickles the object again with
zodbpickle's pure-Python pickler whose ``save_global`` writes a broken class
as the GLOBAL it was read from.  Everything else is ZODB's own writer: same
class metadata, same persistent ids, same protocol, so the record comes out
as ZODB would have written it with the class present.
"""

from __future__ import annotations

import io
from typing import Any

from zodbpickle import pickle_3
from ZODB import Connection as _connection_module
from ZODB.serialize import _oidtypes

from zodbpickle import binary
from ZODB.broken import PersistentBroken

from .broken import missing_name, writing

__all__ = ["Connection", "serialize_with_broken"]

_PROTOCOL = 3


class _Pickler(pickle_3._Pickler):  # type: ignore[misc,name-defined]
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
    dispatch = dict(pickle_3._Pickler.dispatch)  # type: ignore[attr-defined]


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
    klass = type(obj)
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


def _patch(writer: Any, connection: Any) -> Any:
    original = writer.serialize
    db = connection.db()
    registry = getattr(db.classFactory, "registry", None)
    if registry is not None and registry._broken_classes:
        # Only needed when broken objects may be referenced: a Python-level
        # persistent_id wrapper costs a call for every object pickled.
        writer._p.persistent_id = _persistent_id(writer)
    check = getattr(db, "check_xrefs", False)
    if check:
        from .xrefs import check_record

    def serialize(obj: Any) -> bytes:
        writing.active = True
        try:
            data = original(obj)
        except Exception as exc:
            if "pickl" not in type(exc).__name__.lower() and not isinstance(exc, TypeError):
                raise
            try:
                data = serialize_with_broken(writer, obj)
            except Exception:
                raise exc from None
        finally:
            writing.active = False
        if check:
            check_record(connection, obj, data)  # a veto raises and aborts the commit
        return data  # type: ignore[no-any-return]

    writer.serialize = serialize
    return writer


class Connection(_connection_module.Connection):  # type: ignore[misc]
    """ZODB's Connection, able to store objects that hold broken objects."""

    def _store_objects(self, writer: Any, transaction: Any) -> Any:
        return super()._store_objects(_patch(writer, self), transaction)

    def abort(self, transaction: Any) -> Any:
        # ZODB only forgets a pending import in tpc_abort; an import that
        # waits for the commit (pclasses' savepoint=False) must go on abort.
        self._import = None
        return super().abort(transaction)

    def _importDuringCommit(self, transaction: Any, f: Any, return_oid_list: Any) -> Any:  # noqa: N802
        # pclasses.import_subtree hands over a prepared importer (which has
        # checked the whole file already); anything else is ZODB's own.
        run = getattr(f, "run", None)
        if run is not None and type(f).__module__ == "pclasses.transfer":
            return run(self, transaction, return_oid_list)
        return super()._importDuringCommit(transaction, f, return_oid_list)
