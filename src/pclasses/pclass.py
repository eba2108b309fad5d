"""Persistent classes: classes defined and edited in the database.

:class:`PersistentClass` builds on ZODB's ``PersistentMetaClass`` (a class
is never a ghost, ``_p_changed`` is tracked on every attribute change, abort
restores the committed class) and adds what ZClasses could not do: a class
can be **renamed** and its **bases changed**, transactionally; another
connection's copy of the class is updated *in place* when it syncs, so
existing instances (persistent or not) see the new name, bases, attributes
and methods.

The hybrid reference strategy of the design notes falls out of ZODB's own
writer once the class is persistent:

* a persistent instance's record names its class ``((guid module, name),
  None)`` (format 3) and references to it are plain oids, so the class is
  always found *by name* through the registry and the class table;
* a non-persistent instance, pickled inside another object's state, refers
  to the class record directly (a persistent reference).
"""

from __future__ import annotations

import uuid
from typing import Any

from persistent import Persistent
from ZODB.persistentclass import PersistentMetaClass, _p_MethodDescr, special_class_descrs

from .classtable import class_table, guid_module
from .errors import ClassNameError, DuplicateGuidError

__all__ = ["PersistentClass", "define_class", "DuplicateGuidError"]

_NAME_KEY = "__pclasses_name__"


#: Attributes Python itself caches on a class; setting them is not an edit.
_CACHES = frozenset({"__slotnames__", "__Broken_Persistent__"})


def _volatile(name: str) -> bool:
    return name.startswith("_p_") or name.startswith("_v_") or name in _CACHES


def _cdict(cls: type) -> dict[str, Any]:
    return {
        k: v
        for k, v in cls.__dict__.items()
        if not (_volatile(k) or k in special_class_descrs)
    }


class PersistentClass(PersistentMetaClass):  # type: ignore[misc]  # ZODB is untyped
    """Metaclass of database-resident classes (rename and base changes allowed)."""

    # ZODB's metaclass treats every name starting with "_v" as volatile and
    # every other change, including Python's own ``__slotnames__`` cache
    # written when the first instance is pickled, as an edit of the class.
    def __setattr__(cls, name: str, value: Any) -> None:
        if not _volatile(name):
            cls._p_maybeupdate(name)
        type.__setattr__(cls, name, value)

    def __delattr__(cls, name: str) -> None:
        if not _volatile(name):
            cls._p_maybeupdate(name)
        type.__delattr__(cls, name)

    def __getstate__(cls) -> tuple[tuple[type, ...], dict[str, Any]]:
        cdict = _cdict(cls)
        cdict[_NAME_KEY] = cls.__name__
        cdict.pop("__qualname__", None)
        return (cls.__bases__, cdict)

    __getstate__ = _p_MethodDescr(__getstate__)

    def __setstate__(cls, state: tuple[tuple[type, ...], dict[str, Any]]) -> None:
        bases, cdict = state
        cdict = {k: v for k, v in cdict.items() if not _volatile(k)}
        name = cdict.pop(_NAME_KEY, cls.__name__)
        saved = cls._p_class_dict
        # With an empty _p_class_dict, attribute changes below are not
        # reported to the jar (there is none to report to while loading).
        type.__setattr__(cls, "_p_class_dict", {})
        try:
            if tuple(cls.__bases__) != tuple(bases):
                type.__setattr__(cls, "__bases__", tuple(bases))
            if cls.__name__ != name:
                type.__setattr__(cls, "__name__", name)
                type.__setattr__(cls, "__qualname__", name)
            for k in [k for k in cls.__dict__
                      if k not in cdict and k not in special_class_descrs
                      and k not in ("_p_class_dict", "__qualname__") and not _volatile(k)]:
                type.__delattr__(cls, k)
            for k, v in cdict.items():
                type.__setattr__(cls, k, v)
        finally:
            type.__setattr__(cls, "_p_class_dict", saved)
        cls._p_changed = False

    __setstate__ = _p_MethodDescr(__setstate__)

    def __repr__(cls) -> str:
        return f"<persistent class {cls.__name__} {cls.__module__}>"


def define_class(
    connection: Any,
    name: str,
    bases: tuple[type, ...] = (),
    namespace: dict[str, Any] | None = None,
    *,
    guid: str | None = None,
) -> PersistentClass:
    """Create a database-resident class and put it in the class table.

    ``bases`` defaults to ``(persistent.Persistent,)`` (instances are
    persistent); pass ``(object,)`` for a class of plain instances.
    ``namespace`` holds the class attributes: picklable values, importable
    functions, or :func:`pclasses.method` source methods.  The class gets
    the guid module ``*<guid>`` (``guid`` defaults to a new uuid4) and is
    stored in the current transaction.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ClassNameError(name)
    guid = str(uuid.uuid4()) if guid is None else guid
    module = guid_module(guid)
    table = class_table(connection)
    assert table is not None
    if guid in table:
        raise DuplicateGuidError(guid)
    ns = dict(namespace or {})
    ns["__module__"] = module
    ns["__qualname__"] = name
    cls = PersistentClass(name, tuple(bases) or (Persistent,), ns)
    table[guid] = cls
    return cls
