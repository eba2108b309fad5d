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
from ZODB.persistentclass import (
    PersistentMetaClass,
    _p_MethodDescr,
    _p_oid_or_jar_Descr,
    special_class_descrs,
)
from ZODB.utils import z64

from .broken import _LosslessBroken
from .classtable import PLACEHOLDER_KEY, class_table, guid_module, is_placeholder
from .errors import ClassNameError, DuplicateGuidError

__all__ = ["PersistentClass", "define_class", "DuplicateGuidError", "make_placeholder",
           "add_placeholder"]

_NAME_KEY = "__pclasses_name__"


#: Attributes Python itself caches on a class; setting them is not an edit.
_CACHES = frozenset({"__slotnames__", "__Broken_Persistent__"})


def _volatile(name: str) -> bool:
    return name.startswith("_p_") or name.startswith("_v_") or name in _CACHES


def _cdict(cls: type) -> dict[str, Any]:
    placeholder = PLACEHOLDER_KEY in cls.__dict__
    return {
        k: v
        for k, v in cls.__dict__.items()
        if not (_volatile(k) or k in special_class_descrs
                or (placeholder and k in _PLACEHOLDER_METHODS))
    }


class _DeletableOidOrJar(_p_oid_or_jar_Descr):  # type: ignore[misc]
    """ZODB's ``_p_oid``/``_p_jar`` of a persistent class, deletable: a
    connection that aborts the transaction that added a class (a placeholder
    an import stored) deletes them, as for any persistent object."""

    def __delete__(self, inst: Any) -> None:
        inst._p_class_dict.pop(self.__name__, None)


class PersistentClass(PersistentMetaClass):  # type: ignore[misc]  # ZODB is untyped
    """Metaclass of database-resident classes (rename and base changes allowed)."""

    _p_jar = _DeletableOidOrJar("_p_jar")
    _p_oid = _DeletableOidOrJar("_p_oid")

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
            if PLACEHOLDER_KEY in cdict:
                _install_placeholder_methods(cls)
        finally:
            type.__setattr__(cls, "_p_class_dict", saved)
        cls._p_changed = False

    __setstate__ = _p_MethodDescr(__setstate__)

    def __repr__(cls) -> str:
        return f"<persistent class {cls.__name__} {cls.__module__}>"


#: What makes a placeholder's instances read-only: installed on the class,
#: never stored in its record.  Their state is their ``__dict__``, as the
#: real class's would be, so the placeholder can become that class in place.
_PLACEHOLDER_METHODS: dict[str, Any] = {
    "__setattr__": _LosslessBroken.__dict__["__setattr__"],
    "__delattr__": _LosslessBroken.__dict__["__delattr__"],
}


def _install_placeholder_methods(cls: Any) -> None:
    for k, v in _PLACEHOLDER_METHODS.items():
        type.__setattr__(cls, k, v)


def _remove_placeholder_methods(cls: Any) -> None:
    for k in _PLACEHOLDER_METHODS:
        if k in cls.__dict__:
            type.__delattr__(cls, k)


def make_placeholder(guid: str, name: str) -> PersistentClass:
    """A placeholder class for the missing class ``*<guid>.<name>``.

    ``import_subtree(..., missing="broken")`` stores one under the guid of
    a database-resident class the target lacks, so that plain instances of
    that class (which refer to the class record itself) load as broken
    objects, state kept.  :func:`define_class` with that guid turns it into
    the real class, in place.
    """
    module = guid_module(guid)
    shown = str(name).replace("\x00", "\\x00")  # (a name read from a file)
    ns = {"__module__": module, "__qualname__": shown, PLACEHOLDER_KEY: True,
          "__pclasses_missing__": (module, name)}
    cls = PersistentClass(shown, (object,), ns)
    _install_placeholder_methods(cls)
    return cls


def add_placeholder(connection: Any, guid: str, name: str, oid: bytes) -> PersistentClass:
    """Store a placeholder class under ``oid`` (reserved by the import) and
    bind it to ``guid`` in the class table, creating the table if needed."""
    table = class_table(connection)
    cls = make_placeholder(guid, name)
    cls._p_serial = z64  # a new object, as Connection.add makes them
    connection._add(cls, oid)
    table[guid] = cls
    return cls


def _replace_placeholder(cls: Any, name: str, bases: tuple[type, ...],
                         ns: dict[str, Any]) -> Any:
    """Make the placeholder ``cls`` the real class in place (same object, same
    oid: every reference to it resolves to the real class); ``None`` when
    the new bases' instance layout differs (e.g. a persistent class)."""
    if tuple(cls.__bases__) != bases:
        try:
            cls.__bases__ = bases
        except TypeError:
            return None
    _remove_placeholder_methods(cls)
    for key in (PLACEHOLDER_KEY, "__pclasses_missing__"):
        if key in cls.__dict__:
            delattr(cls, key)
    cls.__name__ = name
    for k, v in ns.items():
        if k != "__qualname__":
            setattr(cls, k, v)
    type.__setattr__(cls, "__qualname__", name)
    return cls


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

    A *placeholder* under ``guid`` (written by an import of instances of
    the missing class) is replaced: it becomes this class in place when the
    instance layouts agree, else the table entry is rebound to a new class
    (references to the placeholder's record stay broken then).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ClassNameError(name)
    guid = str(uuid.uuid4()) if guid is None else guid
    module = guid_module(guid)
    table = class_table(connection)
    assert table is not None
    existing = table.get(guid)
    if existing is not None and not is_placeholder(existing):
        raise DuplicateGuidError(guid)
    ns = dict(namespace or {})
    ns["__module__"] = module
    ns["__qualname__"] = name
    if existing is not None:
        replaced = _replace_placeholder(existing, name, tuple(bases) or (Persistent,), ns)
        if replaced is not None:
            return replaced  # type: ignore[no-any-return]
    cls = PersistentClass(name, tuple(bases) or (Persistent,), ns)
    table[guid] = cls
    return cls
