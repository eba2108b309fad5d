"""Every persistent reference of a record, classified once.

:func:`edges` is the one place that says what a record refers to: census,
inventory, xrefs, repair, transfer and the reader's ``references`` all take
their references from it, so a new reference kind is added here and nowhere
else.  It is computed from :func:`~pclasses.record.analyze.analyze` (the
abstract pickle machine: nothing is unpickled, imported or called).
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import RecordDecodeError
from .analyze import Analysis, EdgeKind, analyze

__all__ = ["Edge", "EdgeKind", "edges", "edges_of", "analyze_record"]


class Edge(NamedTuple):
    """One persistent reference of a record (one PERSID / BINPERSID opcode)."""

    kind: EdgeKind
    #: the target oid (``None`` for an ``unknown`` reference)
    oid: bytes | None
    #: the target database of a cross-database (``m`` / ``n``) or external
    #: weak reference, else ``None``
    database: str | None
    #: the class part of an ``oid_class`` / ``multi`` reference named by
    #: ``(module, name)`` (a GLOBAL or a pair of strings), else ``None``
    klass: tuple[str | None, str | None] | None
    #: the oid of the class part when it is itself a persistent reference
    #: (a database-resident class), else ``None``
    klass_oid: bytes | None
    #: ``data[start:end]`` is the oid literal's payload (-1, -1 if unknown)
    start: int
    end: int
    #: 0: in the class-metadata pickle, 1: in the state pickle
    pickle: int
    #: patching the oid literal would change more than references
    shared: bool

    @property
    def is_weak(self) -> bool:
        return self.kind is EdgeKind.WEAK or self.kind is EdgeKind.LEGACY

    @property
    def is_cross_database(self) -> bool:
        return self.database is not None


def analyze_record(data: bytes, oid: bytes | None = None) -> Analysis:
    """:func:`analyze` with its :class:`ValueError` turned into the package's
    :class:`~pclasses.errors.RecordDecodeError` naming ``oid``."""
    try:
        return analyze(data)
    except ValueError as exc:
        raise RecordDecodeError(str(exc), oid=oid) from None


def edges_of(data: bytes, a: Analysis) -> list[Edge]:
    """The edges of ``data`` from its analysis ``a`` (no second walk)."""
    sites = a.pids
    if not sites:
        return []
    out: list[Edge] = []
    classes = a.pid_classes
    oids: list[bytes | None] = []
    for i, p in enumerate(sites):
        if p.oid_start < 0:
            oids.append(None)
            out.append(Edge(p.kind, None, None, None, None, -1, -1, p.pickle, p.shared))
            continue
        end = p.oid_start + p.oid_length
        target = data[p.oid_start:end]
        oids.append(target)
        c = classes[i]
        klass: tuple[str | None, str | None] | None = None
        klass_oid: bytes | None = None
        if isinstance(c, int):
            # The inner reference comes first (it is pickled inside).
            klass_oid = oids[c]
        else:
            klass = c
        out.append(
            Edge(p.kind, target, p.database, klass, klass_oid, p.oid_start, end, p.pickle,
                 p.shared)
        )
    return out


def edges(data: bytes, oid: bytes | None = None) -> list[Edge]:
    """Every persistent reference of the record ``data``, in byte order.

    A reference nested in another's class part (an instance of a
    database-resident class referred to with its class) comes first, as
    ``ZODB.serialize.referencesf`` lists it.  Raises
    :class:`~pclasses.errors.RecordDecodeError` for bytes that are not a
    record the analyzer can walk.
    """
    return edges_of(data, analyze_record(data, oid))
