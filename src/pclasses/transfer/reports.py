"""What export and import did, as data (only the command line prints)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from ZODB.utils import oid_repr

from .format import ClassNeed, Manifest

__all__ = ["ExportReport", "ImportReport"]


@dataclass
class ExportReport(Manifest):
    """The manifest of the written file plus what the export did.

    It *is* the file's :class:`Manifest` (``export_subtree`` has always
    returned one, and ``to_dict()`` stays the manifest's), with ``file``
    (the path, when one was given), ``format`` and ``seconds``; ``bytes``
    is the size of the written file.  ``to_dict(report=True)`` adds them.
    """

    file: str | None = None
    format: str = "pclasses"
    seconds: float = 0.0

    @property
    def records(self) -> int:
        return self.record_count

    def to_dict(self, *, report: bool = False) -> dict[str, Any]:
        d = Manifest.to_dict(self)
        if report:
            d.update({"records": self.record_count, "file": self.file, "format": self.format,
                      "seconds": round(self.seconds, 3)})
        return d


@dataclass
class ImportReport:
    """What :func:`~pclasses.transfer.import_subtree` did (``report=True``).

    ``object`` is the imported root object (what ``import_subtree``
    returns without ``report=True``), ``root_oid`` its new oid.
    ``missing`` lists the classes imported as broken objects
    (``missing="broken"``), ``refused`` the globals made inert,
    ``placeholders`` the guids of the placeholder class records created for
    missing database-resident classes, ``dangling`` the number of
    references pointed at no object (their target was not in the file),
    ``transactions`` how many transactions committed it (``None``: the
    caller's).
    """

    object: Any
    root_oid: bytes
    source_root_oid: bytes | None
    source_database: str | None
    format: str
    records: int
    blobs: int
    bytes: int
    name: str | None = None
    classes: list[ClassNeed] = field(default_factory=list)
    external_references: list[tuple[str, builtins.bytes]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    dangling: int = 0
    savepoint: bool = False
    file: str | None = None
    seconds: float = 0.0
    #: transactions the import committed (the command line: batches + the
    #: link, :func:`~pclasses.transfer.batched.import_in_batches`); ``None``
    #: when the caller commits (:func:`~pclasses.transfer.import_subtree`)
    transactions: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "oid": oid_repr(self.root_oid),
            "source_root_oid": (oid_repr(self.source_root_oid)
                                if self.source_root_oid is not None else None),
            "source_database": self.source_database,
            "format": self.format,
            "records": self.records,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "name": self.name,
            "classes": [c.to_dict() for c in self.classes],
            "external_references": [{"database": d, "oid": oid_repr(o)}
                                    for d, o in self.external_references],
            "missing": list(self.missing),
            "refused": list(self.refused),
            "placeholders": list(self.placeholders),
            "dangling": self.dangling,
            "savepoint": self.savepoint,
            "file": self.file,
            "seconds": round(self.seconds, 3),
            "transactions": self.transactions,
        }
