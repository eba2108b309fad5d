"""The exception hierarchy of pclasses: every error the package raises.

Every error the package raises on purpose derives from :class:`PClassesError`
and lives in this module (the modules that raise them re-export them under
their old names).  Each concrete error also derives from the builtin it
behaves like, so code that already catches ``ValueError``, ``LookupError`` or
``OSError`` keeps working, and each carries the fields a caller needs
(``oid``, ``chain``, ``target``...) besides its message.

Conventions, checked by ``tests/test_errors.py`` for every class here:

* every constructor argument except ``message`` is kept as an attribute of
  the same name;
* an error survives ``pickle`` (worker processes send errors to their parent
  that way) with its type, message and fields: :meth:`PClassesError.__reduce__`
  rebuilds the instance without calling ``__init__`` again;
* ``str(error)`` is the message, even for the ``KeyError`` family (whose
  builtin ``str`` would quote it).

New errors go at the end of the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ZODB.broken import BrokenModified
from ZODB.POSException import InvalidObjectReference, POSKeyError

__all__ = [
    "PClassesError",
    "RecordDecodeError",
    "AliasCycleError",
    "RegistrationError",
    "StorageOpenError",
    "TransferError",
    "ExportFormatError",
    "MissingClassesError",
    "RefusedGlobalsError",
    "FramedRecordError",
    "NotAGuidModuleError",
    "ClassNameError",
    "DuplicateGuidError",
    "MethodSourceError",
    "BrokenMethodError",
    "BrokenObjectModifiedError",
    "NotBrokenError",
    "CrossDatabaseReferenceError",
    "UnknownDatabaseError",
    "XrefPolicySyntaxError",
    "ScanWorkerError",
    "RepairError",
    "ReferentialIntegrityError",
    "DanglingReferenceError",
    "UnlocatedError",
    "MissingReferencesError",
    "DatabaseUnavailableError",
    "UnreachableReferenceError",
    "DuplicateHandleError",
    "GarbageCollectionRefusedError",
    "ImportPolicyError",
    "RowNotFoundError",
    "SQLReferenceError",
    "StoreMappingError",
    "OidKindError",
    "SQLRecoveryError",
    "DuplicateRowError",
    "GarbageCollectionError",
    "DemoTargetError",
]


def _oid_text(oid: bytes | None) -> str:
    from ZODB.utils import oid_repr

    return str(oid_repr(oid))


def _rebuild(cls: type[PClassesError], args: tuple[Any, ...],
             state: dict[str, Any]) -> PClassesError:
    """Unpickle an error: the instance as it was, without running ``__init__``."""
    exc = cls.__new__(cls, *args)
    for base in cls.__mro__:  # the builtin's own fields (SyntaxError.msg, ...)
        if base.__module__ == "builtins" and base is not object:
            base.__init__(exc, *args)  # type: ignore[misc]
            break
    for key, value in state.items():
        setattr(exc, key, value)
    return exc


class PClassesError(Exception):
    """Base class of every error raised by pclasses on purpose."""

    #: Fields the builtin base keeps outside ``__dict__`` (C slots).
    _slot_fields: ClassVar[tuple[str, ...]] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        for name in self._slot_fields:
            state[name] = getattr(self, name)
        return (_rebuild, (type(self), self.args, state))

    def __str__(self) -> str:
        if len(self.args) == 1 and isinstance(self.args[0], str):
            return self.args[0]
        return super().__str__()


class RecordDecodeError(PClassesError, ValueError):
    """A stored record could not be read as a ZODB record.

    Raised by the safe record reader for malformed, truncated or hostile
    bytes, and for class metadata that is not a class reference.  ``oid`` is
    the record's oid when the caller passed it, ``offset`` the byte offset
    where reading stopped when it is known; ``reason`` is the message
    without the oid.
    """

    def __init__(
        self, message: str, *, oid: bytes | None = None, offset: int | None = None
    ) -> None:
        self.oid = oid
        self.offset = offset
        self.reason = message
        if oid is not None:
            message = f"record {_oid_text(oid)}: {message}"
        super().__init__(message)


class RegistrationError(PClassesError, ValueError):
    """A registration, alias or rename rule is malformed."""


class AliasCycleError(RegistrationError):
    """Declaring an alias would create a cycle.

    ``chain`` is the list of dotted names that form the cycle, starting and
    ending with the same name.
    """

    def __init__(self, chain: Sequence[str]) -> None:
        self.chain = list(chain)
        super().__init__("alias cycle: " + " -> ".join(self.chain))


class StorageOpenError(PClassesError, OSError):
    """A storage or database could not be opened (missing, locked, corrupt,
    or a target that is neither a path, a ZConfig file nor a URI)."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"cannot open {target}: {reason}")


# -- transfer (export/import) ------------------------------------------------


class TransferError(PClassesError):
    """Export or import could not be done."""


class ExportFormatError(TransferError, ValueError):
    """A damaged, truncated or foreign export file (nothing was imported)."""


class MissingClassesError(TransferError, LookupError):
    """Classes (or databases) the file needs are missing in the target.

    ``missing`` lists them, each as a dotted name with a note.
    """

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        super().__init__("missing in the target: " + ", ".join(self.missing))


class RefusedGlobalsError(TransferError, ValueError):
    """The file's records name callables that import refuses to let run.

    ``refused`` lists them as dotted names; ``reasons`` maps some of them to
    why (the import policy's judgement of the object a name resolves to).
    """

    def __init__(self, refused: Sequence[str],
                 reasons: dict[str, str] | None = None) -> None:
        self.refused = list(refused)
        self.reasons = dict(reasons or {})
        super().__init__("the file names globals that could run code when loaded: "
                         + ", ".join(f"{n} ({self.reasons[n]})" if n in self.reasons else n
                                     for n in self.refused))


class FramedRecordError(PClassesError, ValueError):
    """The record is framed (protocol 4): its globals cannot change length."""

    def __init__(self, message: str = "a framed (protocol 4) record cannot be rewritten",
                 *, oid: bytes | None = None) -> None:
        self.oid = oid
        if oid is not None:
            message = f"record {_oid_text(oid)}: {message}"
        super().__init__(message)


class NotAGuidModuleError(PClassesError, ValueError):
    """A module name (or a class's ``__module__``) is not a guid module
    (``*<guid>``), so it names no database-resident class."""

    def __init__(self, module: str) -> None:
        self.module = module
        super().__init__(f"{module!r} is not a guid module")


class ClassNameError(PClassesError, ValueError):
    """``define_class`` was given a class name that is not an identifier."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(f"class name {name!r} is not an identifier")


class DuplicateGuidError(PClassesError, ValueError):
    """``define_class`` was given a guid the class table already holds."""

    def __init__(self, guid: str) -> None:
        self.guid = guid
        super().__init__(f"the class table already holds guid {guid}")


class MethodSourceError(PClassesError, SyntaxError):
    """The source given to :func:`pclasses.method` is not one valid function.

    ``lineno`` and ``offset`` locate the problem in the source when known;
    ``text`` is the offending line.
    """

    _slot_fields = ("msg", "lineno", "offset", "text")

    def __init__(self, message: str, lineno: int | None = None, offset: int | None = None,
                 text: str | None = None) -> None:
        where = f"line {lineno}, column {offset}: " if lineno is not None else ""
        super().__init__(f"{where}{message}")
        self.msg = f"{where}{message}"
        self.lineno = lineno
        self.offset = offset
        self.text = text


class BrokenMethodError(PClassesError, RuntimeError):
    """A stored method whose source could not be compiled when its class
    loaded was called.  ``method`` and ``class_name`` name it, ``reason``
    says why compiling failed."""

    def __init__(self, method: str, class_name: str, reason: str) -> None:
        self.method = method
        self.class_name = class_name
        self.reason = reason
        super().__init__(f"method {method}() of class {class_name} cannot run: "
                         f"its stored source failed to compile ({reason})")


class BrokenObjectModifiedError(PClassesError, BrokenModified):  # type: ignore[misc]
    """A broken object (its class is missing) was changed.

    Also ZODB's :class:`ZODB.broken.BrokenModified` (a ``TypeError``), which
    is what code written for ZODB catches.  ``class_name`` is the dotted
    name of the missing class, ``oid`` the object's oid (``None`` for an
    object that is not persistent).
    """

    def __init__(self, class_name: str, oid: bytes | None = None) -> None:
        self.class_name = class_name
        self.oid = oid
        which = "" if oid is None else f" {_oid_text(oid)}"
        super().__init__(f"cannot change broken object{which} of {class_name} "
                         "(its class is missing)")


class NotBrokenError(PClassesError, TypeError):
    """An operation on broken objects was given an object that is not broken."""

    def __init__(self, class_name: str) -> None:
        self.class_name = class_name
        super().__init__(f"{class_name} object is not broken")


class CrossDatabaseReferenceError(PClassesError, ValueError):
    """A policy refused a cross-database reference (the commit is aborted).

    The fields name both ends (database, dotted class, oid) and the rule
    that refused it (``None``: the policy's default).
    """

    def __init__(self, source_database: str, source_class: str, source_oid: bytes | None,
                 target_database: str, target_class: str, target_oid: bytes | None,
                 rule: str | None = None) -> None:
        self.source_database = source_database
        self.source_class = source_class
        self.source_oid = source_oid
        self.target_database = target_database
        self.target_class = target_class
        self.target_oid = target_oid
        self.rule = rule
        why = f"rule '{rule}'" if rule is not None else "the default of the policy"
        super().__init__(
            f"cross-database reference refused by {why}: {source_class} "
            f"{_oid_text(source_oid)} in {source_database!r} -> {target_class} "
            f"{_oid_text(target_oid)} in {target_database!r}")


class UnknownDatabaseError(PClassesError, LookupError):
    """Databases named that a multi-database does not hold.

    ``names`` are the unknown names, ``known`` the names it has.
    """

    def __init__(self, names: Sequence[str], known: Sequence[str]) -> None:
        self.names = list(names)
        self.known = sorted(known)
        super().__init__(f"no database named {', '.join(map(repr, self.names))} in this "
                         f"multi-database (it has {', '.join(map(repr, self.known))})")


class XrefPolicySyntaxError(PClassesError, ValueError):
    """A line of a cross-database policy text cannot be read.

    ``line`` is the 1-based line number, ``reason`` what is wrong with it.
    """

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}")


class ScanWorkerError(PClassesError, RuntimeError):
    """A worker process of a parallel scan died or failed in a way that
    cannot be sent back as an error of its own; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"a scanning worker process failed: {reason}")


class RepairError(PClassesError, RuntimeError):
    """An offline repair (:func:`pclasses.rename_classes`) could not start or go on.

    When it could not start (a bad rule, a read-only storage, a blob storage
    without a blob directory) nothing was changed.  When a batch failed, that
    batch was rolled back; batches committed before it stay repaired, and
    running the repair again continues (renaming is idempotent).
    ``database`` names the database of a multi-database target the error
    concerns, when there is one.
    """

    def __init__(self, message: str, *, database: str | None = None) -> None:
        self.database = database
        super().__init__(message)


class Breach:
    """One referrer that blocks a change: the link from ``source`` (its
    attribute ``name``, reference ``ref_id``) to the target at ``key``.

    ``database`` and ``oid`` name the source; :attr:`source` loads it through
    the connection the breach was found with (``None`` once pickled).
    """

    __slots__ = ("key", "name", "ref_id", "database", "oid", "_jar")

    def __init__(self, key: str, name: str, ref_id: str, database: str, oid: bytes,
                 jar: Any = None) -> None:
        self.key = key
        self.name = name
        self.ref_id = ref_id
        self.database = database
        self.oid = oid
        self._jar = jar

    @property
    def source(self) -> Any:
        """The referring object, loaded on access."""
        if self._jar is None:
            return None
        jar = self._jar
        if self.database and jar.db().database_name != self.database:
            jar = jar.get_connection(self.database)
        return jar.get(self.oid)

    def _fields(self) -> tuple[Any, ...]:
        return (self.key, self.name, self.ref_id, self.database, self.oid)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Breach, self._fields())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Breach) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"<Breach {self.ref_id} of {_oid_text(self.oid)} in {self.database!r} "
                f"-> {self.key!r}>")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "ref_id": self.ref_id,
                "database": self.database, "oid_repr": _oid_text(self.oid)}


class ReferentialIntegrityError(PClassesError, ValueError):
    """A change would leave (or left, at commit) a reference dangling.

    ``breaches`` lists the referrers that block, each a :class:`Breach`
    with ``source``, ``name`` and ``key``; ``action`` says what was refused.
    """

    def __init__(self, breaches: Sequence[Breach], action: str = "change") -> None:
        self.breaches = list(breaches)
        self.action = action
        shown = ", ".join(f"{_oid_text(b.oid)}.{b.name} -> {b.key}" for b in self.breaches[:5])
        more = f" and {len(self.breaches) - 5} more" if len(self.breaches) > 5 else ""
        keys = sorted({b.key for b in self.breaches})
        super().__init__(f"{action} refused: {', '.join(keys)} still referenced "
                         f"by {shown}{more}")



class UnlocatedError(PClassesError, TypeError):
    """An object without a canonical location was used as a reference
    target (not placed yet, or not persistent).  ``target`` describes it,
    ``reason`` says what is missing."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"{target} has no location: {reason}")


class MissingReferencesError(TransferError, LookupError):
    """An import would leave always-mode references dangling: their
    ``keys`` do not resolve in the target database.  Nothing was written."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)
        super().__init__(f"the import refers to keys the target database lacks: "
                         f"{', '.join(self.keys)} (import with references='dangling' "
                         "to keep them dangling, or references='null' to import them as None)")
# -- trees of databases (issue 14) ---------------------------------------------


class DatabaseUnavailableError(PClassesError, OSError):
    """The database a handle stands for cannot be opened (missing file, ZEO
    server down, bad URI).  ``name`` is the handle's (and database's) name,
    ``target`` what it opens, ``reason`` why it could not."""

    def __init__(self, name: str, target: str, reason: str) -> None:
        self.name = name
        self.target = target
        self.reason = reason
        super().__init__(f"database {name!r} ({target}) is unavailable: {reason}")



class UnreachableReferenceError(PClassesError, ValueError):
    """``get_reference(source, target)``: the target's database is not
    downstream of the source's in the tree of databases.  ``source_database``
    and ``target_database`` name them."""

    def __init__(self, source_database: str, target_database: str) -> None:
        self.source_database = source_database
        self.target_database = target_database
        super().__init__(f"database {target_database!r} cannot be reached from database "
                         f"{source_database!r} by following database handles")


class DuplicateHandleError(PClassesError, ValueError):
    """A database handle named ``name`` already exists in this tree of
    databases (handle names are unique in a tree)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a database named {name!r} already exists in this tree of databases")


class GarbageCollectionRefusedError(PClassesError, RuntimeError):
    """``collect_garbage(apply=True)`` refused to delete anything because of
    database ``database``: ``reason`` says why (a storage that collects
    garbage on pack by itself, a database that cannot be opened)."""

    def __init__(self, database: str, reason: str) -> None:
        self.database = database
        self.reason = reason
        super().__init__(f"garbage collection refused for database {database!r}: {reason}")


class DanglingReferenceError(PClassesError, POSKeyError):  # type: ignore[misc]
    """A reference whose target is gone was used.

    One class for every kind of reference the package makes (also ZODB's
    ``POSKeyError``, hence a ``KeyError``/``LookupError``):

    * an intrinsic reference (:class:`pclasses.Ref`): ``key`` is the key
      nothing is at (``None`` when the reference id itself is unknown),
      ``reference_id`` the stored id, ``name`` the attribute read;
    * a remote reference or a cross-database reference in a tree of
      databases: ``database_name`` and ``oid`` name the target, ``klass`` its
      class as the reference recorded it (dotted text, or ``None``).

    Fields that do not apply are ``None``.
    """

    def __init__(self, *, key: str | None = None, reference_id: str | None = None,
                 name: str | None = None, database_name: str | None = None,
                 oid: bytes | None = None, klass: str | None = None) -> None:
        self.key = key
        self.reference_id = reference_id
        self.name = name
        self.database_name = database_name
        self.oid = oid
        self.klass = klass
        if oid is not None:
            what = f" ({klass})" if klass else ""
            message = (f"the target {_oid_text(oid)}{what} of a reference into database "
                       f"{database_name!r} is gone")
        else:
            where = f"key {key!r}" if key is not None else f"reference id {reference_id!r}"
            message = f"dangling reference: nothing at {where}"
        if name:
            message = f"{name}: {message}"
        super().__init__(message)


class ImportPolicyError(TransferError, ValueError):
    """An import policy option is malformed (e.g. ``strict`` names no package).

    ``option`` names the option, ``value`` is what was given (as text).
    """

    def __init__(self, option: str, value: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"{option}: {value!r} is not a package name")


class RowNotFoundError(PClassesError, POSKeyError):  # type: ignore[misc]
    """SQL store ``store`` has no row under ``key`` (shown as text) for its
    mapping ``name``: ``store.get`` of a missing key, or a row deleted since
    it was referred to.  Also ZODB's ``POSKeyError``, hence a ``KeyError``."""

    def __init__(self, store: str, name: str, key: str) -> None:
        self.store = store
        self.name = name
        self.key = key
        super().__init__(f"SQL store {store!r} has no {name!r} row with key {key}")


class SQLReferenceError(PClassesError, InvalidObjectReference, TypeError):  # type: ignore[misc]
    """A row of SQL store ``store`` (class ``klass``) was assigned directly
    to an attribute of a ZODB object.  Also ZODB's ``InvalidObjectReference``."""

    def __init__(self, store: str, klass: str) -> None:
        self.store = store
        self.klass = klass
        super().__init__(
            f"a row of SQL store {store!r} ({klass}) cannot be stored in a ZODB object "
            f"directly: store pclasses.get_reference(source, row) or use a "
            f"pclasses.RemoteAttribute() class attribute")


class StoreMappingError(PClassesError, ValueError):
    """Mapping ``name`` of SQL store ``store`` is unknown, malformed or
    conflicts with an earlier one; ``reason`` says which."""

    def __init__(self, store: str, name: str, reason: str) -> None:
        self.store = store
        self.name = name
        self.reason = reason
        super().__init__(f"SQL store {store!r}, mapping {name!r}: {reason}")


class OidKindError(PClassesError, ValueError):
    """Oid kind ``kind`` cannot do what was asked (an unknown kind, a key of
    the wrong type, a kind that cannot make new keys); ``reason`` says which."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"oid kind {kind!r}: {reason}")


class SQLRecoveryError(PClassesError, RuntimeError):
    """``pclasses sql-recover`` could not look at or resolve the prepared
    transactions of ``target``; ``reason`` says why."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"sql-recover {target}: {reason}")


class DuplicateRowError(PClassesError, KeyError):
    """``store.new`` was given key ``key`` (shown as text) that mapping
    ``name`` of SQL store ``store`` already holds."""

    def __init__(self, store: str, name: str, key: str) -> None:
        self.store = store
        self.name = name
        self.key = key
        super().__init__(f"SQL store {store!r} already has a {name!r} row with key {key}")


class GarbageCollectionError(PClassesError, RuntimeError):
    """``collect_garbage(apply=True)`` stopped: the batch that failed was
    rolled back, batches committed before it stay deleted (running gc again
    continues); the message says why in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class DemoTargetError(PClassesError, ValueError):
    """The demo's ``target`` holds data that is not the demo's (its root has
    other entries): nothing was written there."""

    def __init__(self, target: str, entries: str) -> None:
        self.target = target
        self.entries = entries
        super().__init__(f"{target} holds data that is not the demo's (root entries: "
                         f"{entries}); nothing was written: give an empty database or "
                         "the demo's own")
