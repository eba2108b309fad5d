"""What export and import need to know about one record, read inertly.

The analyzer's findings (:func:`analyze`, with the package's error), the
class a record is of (:func:`record_class`), and the guid and name of a
persistent-class record (:func:`class_record_info`).  Nothing here
unpickles with real classes.
"""

from __future__ import annotations

from typing import Any

from ZODB.utils import oid_repr

from ..classtable import GUID_PREFIX, is_guid_module
from ..errors import ExportFormatError, PClassesError
from ..record import Analysis, read_class, read_record
from ..record import analyze as _ANALYZE
from ..record.analyze import Use

__all__ = ["BLOB_CLASS", "CLASS_METACLASSES", "CLASS_TABLE", "analyze", "record_class",
           "class_record_info", "no_gc"]

#: Class-metadata globals of class records (never exported).
CLASS_METACLASSES = {("pclasses.pclass", "PersistentClass"),
                     ("ZODB.persistentclass", "PersistentMetaClass")}
CLASS_TABLE = ("pclasses.classtable", "ClassTable")
_CLASS_META = int(Use.CLASS_META)
#: The class of blob records (ZODB's ``is_blob_record`` asks for exactly it).
BLOB_CLASS = ("ZODB.blob", "Blob")


def analyze(data: bytes, oid: bytes) -> Analysis:
    """The analyzer's findings for one record; unreadable -> ExportFormatError."""
    try:
        return _ANALYZE(data)
    except ValueError as exc:
        raise ExportFormatError(f"record {oid_repr(oid)} is not a readable ZODB record "
                                f"({exc})") from None


def record_class(data: bytes, oid: bytes, a: Analysis) -> tuple[str, str] | None:
    """The record's class by name: its class-metadata GLOBAL, or the
    ``(module, name)`` strings of formats 3 and 7 (instances of
    database-resident classes); ``None`` for a persistent class reference."""
    for g in a.globals:
        if int(g.uses) & _CLASS_META:  # (int: IntFlag operators are slow)
            return (g.module, g.name)  # type: ignore[return-value]
    try:
        return read_class(data, oid).pair
    except PClassesError as exc:
        raise ExportFormatError(str(exc)) from None


def class_record_info(data: bytes, oid: bytes) -> tuple[str, str] | None:
    """``(guid, name)`` of a persistent-class record (read inertly)."""
    info = read_record(data, oid)
    args = info.klass.args or ()
    name = args[0] if args and isinstance(args[0], str) else "?"
    state = info.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        name = state[1].get("__pclasses_name__", name)
        module: Any = state[1].get("__module__")
        if is_guid_module(module):
            return module[len(GUID_PREFIX):], name
    return None


class no_gc:  # noqa: N801 - a context manager
    """Pause the cyclic garbage collector during a bulk pass.

    The passes allocate millions of small tuples whose generations keep
    the collector busy; its full collections walk the whole (growing) oid
    index, which made time grow faster than the subtree.  Nothing these
    passes create forms a cycle.
    """

    def __enter__(self) -> None:
        import gc

        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: Any) -> None:
        import gc

        if self.was:
            gc.enable()


#: The class of a database handle of a tree of databases (:mod:`pclasses.tree`).
HANDLE_CLASS = ("pclasses.tree.handle", "DatabaseHandle")
#: The "guid" of a manifest class reference that is a database handle: the
#: reference is rebound by the handle's name, not by a class guid.
HANDLE_REFERENCE = "pclasses.tree.handle"


def handle_name(data: bytes, oid: bytes) -> str:
    """The name of the database handle stored in ``data`` (read inertly)."""
    state = read_record(data, oid).state
    name = state.get("name") if isinstance(state, dict) else None
    if not isinstance(name, str):
        raise ExportFormatError(f"record {oid_repr(oid)} is a database handle without a name")
    return name
