"""The exception hierarchy of pclasses.

Every error the package raises on purpose derives from :class:`PClassesError`.
Each concrete error also derives from the builtin it behaves like, so code
that already catches ``ValueError`` or ``LookupError`` keeps working, and each
carries the fields a caller needs (``oid``, ``chain``, ``target``) besides its
message.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    "ImportPolicyError",
]


class PClassesError(Exception):
    """Base class of every error raised by pclasses on purpose."""


class RecordDecodeError(PClassesError, ValueError):
    """A stored record could not be read as a ZODB record.

    Raised by the safe record reader for malformed, truncated or hostile
    bytes, and for class metadata that is not a class reference.  ``oid`` is
    the record's oid when the caller passed it, ``offset`` the byte offset
    where reading stopped when it is known.
    """

    def __init__(
        self, message: str, *, oid: bytes | None = None, offset: int | None = None
    ) -> None:
        self.oid = oid
        self.offset = offset
        self.reason = message
        if oid is not None:
            from ZODB.utils import oid_repr

            message = f"record {oid_repr(oid)}: {message}"
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

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (str(self),))


class ExportFormatError(TransferError, ValueError):
    """A damaged, truncated or foreign export file (nothing was imported)."""


class MissingClassesError(TransferError, LookupError):
    """Classes (or databases) the file needs are missing in the target.

    ``missing`` lists them, each as a dotted name with a note.
    """

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        super().__init__("missing in the target: " + ", ".join(self.missing))

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:  # type: ignore[override]
        return (type(self), (self.missing,))


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

    def __reduce__(self) -> tuple[type, tuple[list[str], dict[str, str]]]:  # type: ignore[override]
        return (type(self), (self.refused, self.reasons))


class ImportPolicyError(TransferError, ValueError):
    """An import policy option is malformed (e.g. ``strict`` names no package).

    ``option`` names the option, ``value`` is what was given (as text).
    """

    def __init__(self, option: str, value: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"{option}: {value!r} is not a package name")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.option, self.value))
