"""The per-database class table: guid -> database-resident class.

Classes that live in the database are found the ZClass way: a class's
``__module__`` is its *guid module* (:data:`GUID_PREFIX` followed by the
guid), and the registry resolves such a module by looking the guid up in
the class table of the connection asking, ignoring the class name.

The table is one persistent mapping per database, created on first use and
kept in the root mapping under :data:`TABLE_KEY`.  It is found *without
loading the root object*: when the root is a ghost (or is being loaded,
which is exactly when an instance of a database-resident class stored in the
root needs its class) the root's record is read with the safe record reader
to find the table's oid.
"""

from __future__ import annotations

import re
from typing import Any, Literal, cast, overload

from persistent.mapping import PersistentMapping
from ZODB.POSException import POSKeyError
from ZODB.utils import z64

from .errors import NotAGuidModuleError, RegistrationError
from .record.reader import PersistentRef, read_record

__all__ = [
    "GUID_PREFIX",
    "NOT_RESIDENT",
    "TABLE_KEY",
    "ClassTable",
    "class_table",
    "is_guid_module",
    "guid_module",
    "guid_of",
    "resolve_resident",
    "check_guid",
    "PLACEHOLDER_KEY",
    "is_placeholder",
]

#: A guid module is this prefix followed by the guid (ZClasses used ``*``).
GUID_PREFIX = "*"
#: The root-mapping key of the class table.
TABLE_KEY = "__pclasses_class_table__"

#: Marks a placeholder class (see :func:`pclasses.pclass.make_placeholder`).
PLACEHOLDER_KEY = "__pclasses_placeholder__"
#: What :func:`resolve_resident` returns for a module that is not a guid
#: module (not its business: the registry resolves it otherwise).
NOT_RESIDENT = object()

_GUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class ClassTable(PersistentMapping):  # type: ignore[misc]
    """guid -> database-resident class, one per database."""

    def __repr__(self) -> str:
        return f"<ClassTable with {len(self)} classes>"


def is_placeholder(cls: Any) -> bool:
    """Whether ``cls`` is a placeholder an import wrote for a missing class."""
    return isinstance(cls, type) and bool(cls.__dict__.get(PLACEHOLDER_KEY))


def check_guid(guid: str) -> str:
    if not isinstance(guid, str) or not _GUID.fullmatch(guid):
        raise RegistrationError(
            f"guid {guid!r} must be letters, digits, '-' and '_' (e.g. a uuid4 string)"
        )
    return guid


def guid_module(guid: str) -> str:
    """The ``__module__`` of the class with this guid."""
    return GUID_PREFIX + check_guid(guid)


def is_guid_module(module: Any) -> bool:
    return isinstance(module, str) and module.startswith(GUID_PREFIX) and len(module) > 1


def guid_of(cls_or_module: Any) -> str:
    """The guid of a database-resident class (or of its guid module)."""
    module = cls_or_module if isinstance(cls_or_module, str) else cls_or_module.__module__
    if not is_guid_module(module):
        raise NotAGuidModuleError(module)
    return module[len(GUID_PREFIX):]


def _live_root(connection: Any) -> Any:
    """The root object if it is loaded and usable in this connection, else None."""
    try:
        root = connection.get(z64)
    except (POSKeyError, KeyError):
        return None
    # A ghost, or a root in the middle of being loaded, has no 'data' yet.
    if root._p_changed is None or "data" not in root.__dict__:
        return None
    return root


def root_entry_oid(connection: Any, key: str) -> bytes | None:
    """The oid the root mapping holds under ``key``, read from the root's
    record with the inert reader (the root object is not activated, so it
    works while the root itself is being loaded); ``None`` when absent."""
    try:
        data, _serial = connection._storage.load(z64)
    except (POSKeyError, KeyError):
        return None
    state = read_record(data, z64).state
    if not isinstance(state, dict):
        return None
    mapping = state.get("data", state.get("_container"))
    if not isinstance(mapping, dict):
        return None
    ref = mapping.get(key)
    if isinstance(ref, PersistentRef):
        return ref.reference.oid
    return None


def _table_oid_from_record(connection: Any) -> bytes | None:
    return root_entry_oid(connection, TABLE_KEY)


@overload
def class_table(connection: Any, create: Literal[True] = True) -> ClassTable: ...


@overload
def class_table(connection: Any, create: bool) -> ClassTable | None: ...


def class_table(connection: Any, create: bool = True) -> ClassTable | None:
    """The class table of ``connection``'s database.

    ``create=True`` creates it (in the current transaction) when the
    database has none yet; ``create=False`` returns ``None`` then.
    """
    root = _live_root(connection)
    if root is not None:
        table = root.get(TABLE_KEY)
        if table is None and create:
            table = root[TABLE_KEY] = ClassTable()
        return cast("ClassTable | None", table)
    db = connection.db()
    oid = getattr(db, "_pclasses_table_oid", None)
    if oid is None:
        oid = _table_oid_from_record(connection)
        if oid is not None:
            db._pclasses_table_oid = oid
    if oid is not None:
        try:
            return connection.get(oid)  # type: ignore[no-any-return]
        except (POSKeyError, KeyError):
            db._pclasses_table_oid = None
    if not create:
        return None
    root = connection.root()
    table = root.get(TABLE_KEY)
    if table is None:
        table = root[TABLE_KEY] = ClassTable()
    return cast(ClassTable, table)


def resolve_resident(connection: Any, module: str, name: str) -> Any:
    """The registry's hook: resolve a guid module through the class table.

    Returns the class, ``None`` when the guid is not in the table (the
    registry then gives a broken class), or ``NOT_RESIDENT`` for modules
    that are not guid modules.  The class name is ignored, as with ZClasses.
    """
    if not is_guid_module(module):
        return NOT_RESIDENT
    if connection is None:
        return None
    table = class_table(connection, create=False)
    if table is None:
        return None
    cls = table.get(module[len(GUID_PREFIX):])
    # A placeholder answers only the references to its own record (plain
    # instances); by name the class is missing (persistent instances break).
    return None if is_placeholder(cls) else cls
