"""Every persistent reference of a record, classified once.

:func:`edges` is the one place that says what a record refers to: census,
inventory, xrefs, repair, transfer and the reader's ``references`` all take
their references from it, so a new reference kind is added here and nowhere
else.  It is computed from :func:`~pclasses.record.analyze.analyze` (the
abstract pickle machine: nothing is unpickled, imported or called).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import RecordDecodeError
from .analyze import PURE_PYTHON, Analysis, EdgeKind, Use, analyze, analyze_py
from .remote import MARKER, REMOTE_MODULE, REMOTE_NAME, remote_sites, single_remote_site

__all__ = ["Edge", "EdgeKind", "edges", "edges_of", "analyze_record", "targets",
           "split_targets", "split_targets_py", "targets_of", "export_refs_py",
           "export_refs_c"]


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
    #: ``remote`` edges only: the oid of the database handle the reference
    #: goes through (see :class:`pclasses.record.remote.RemoteSite`)
    via: bytes | None = None

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


def _remote_start(a: Analysis) -> int:
    """Where a walk for remote references may start (-1: no global names
    ``RemoteReference``)."""
    first = None
    meta_end = -1
    for g in a.globals:
        if g.uses & Use.CLASS_META:
            meta_end = g.end
        elif first is None and g.module == REMOTE_MODULE and g.name == REMOTE_NAME:
            first = g
    if first is None:
        return -1
    # Records ZODB writes name their class with a GLOBAL first: a remote
    # reference after it is in the state pickle, where the walk may begin.
    return first.start if first.opcode == "global" and 0 <= meta_end < first.start else 0


def _remote_edges(data: bytes, a: Analysis) -> list[Edge]:
    if MARKER not in data:
        return []
    start = _remote_start(a)
    if start < 0:
        return []
    out = []
    for site in remote_sites(data, start=start):
        klass: tuple[str | None, str | None] | None = None
        if site.klass:
            module, _, name = site.klass.rpartition(".")
            klass = (module or None, name)
        out.append(Edge(EdgeKind.REMOTE, site.oid, site.database, klass, None, -1, -1,
                        site.pickle, False, site.via))
    return out


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
    # A remote reference always holds a persistent reference (to its handle).
    out.extend(_remote_edges(data, a))
    return out


def edges(data: bytes, oid: bytes | None = None) -> list[Edge]:
    """Every persistent reference of the record ``data``, in byte order.

    A reference nested in another's class part (an instance of a
    database-resident class referred to with its class) comes first, as
    ``ZODB.serialize.referencesf`` lists it.  Remote references of a tree of
    databases (kind ``remote``, no byte range, ``via`` the handle's oid)
    follow all persistent references, innermost first; the reference to
    their handle is among the persistent ones.  Raises
    :class:`~pclasses.errors.RecordDecodeError` for bytes that are not a
    record the analyzer can walk.
    """
    return edges_of(data, analyze_record(data, oid))


def targets(data: bytes, oid: bytes | None = None) -> list[tuple[EdgeKind, bytes, str | None]]:
    """``(kind, target oid, target database or None)`` of every reference of
    ``data`` with a known target: :func:`edges` without class parts and byte
    ranges, for walks over whole databases (reference checks, gc)."""
    a = analyze_record(data, oid)
    sites = a.pids
    if not sites:
        return []
    out = [(p.kind, data[p.oid_start:p.oid_start + p.oid_length], p.database)
           for p in sites if p.oid_start >= 0]
    if MARKER in data:
        out.extend((e.kind, e.oid, e.database) for e in _remote_edges(data, a)
                   if e.oid is not None)
    return out


_Other = list[tuple[EdgeKind, bytes, "str | None"]]
_PLAIN = (EdgeKind.OID, EdgeKind.OID_CLASS)

try:
    if PURE_PYTHON:
        raise ImportError("PCLASSES_PURE_PYTHON is set")
    from ._skim import refs as _c_refs
except ImportError:  # not built (or built before refs)
    _c_refs = None


def split_targets(data: bytes, oid: bytes | None = None) -> tuple[bytes, _Other]:
    """:func:`targets` for walks over whole databases, in two parts:
    ``(plain, other)``.  ``plain`` concatenates the 8-byte oids of the
    record's plain references (kinds ``oid`` / ``oid_class``, this
    database); ``other`` lists ``(kind, oid, database or None)`` for every
    other reference with a known target (weak, ``m``, ``n``, legacy, an oid
    that is not 8 bytes, and remote references).  The C extension builds no
    object per plain reference; same errors and limits as :func:`edges`.
    (Added for the tree walks of :mod:`pclasses.tree`, issue 14.)"""
    if _c_refs is None:
        return split_targets_py(data, oid)
    try:
        plain_b, found, remote, site = _c_refs(data)
    except ValueError as exc:
        raise RecordDecodeError(str(exc), oid=oid) from None
    other = found if found is not None else []
    if remote >= 0:
        if site is not None:
            other.append((EdgeKind.REMOTE, site[0], site[2]))
        else:
            other.extend((EdgeKind.REMOTE, s.oid, s.database)
                         for s in remote_sites(data, start=remote))
    return plain_b, other


def split_targets_py(data: bytes, oid: bytes | None = None) -> tuple[bytes, _Other]:
    """:func:`split_targets` from :func:`analyze`'s result (what it runs
    without the C extension)."""
    a = analyze_record(data, oid)
    plain = []
    other: _Other = []
    for p in a.pids:
        if p.oid_start < 0:
            continue
        target = data[p.oid_start:p.oid_start + p.oid_length]
        if p.kind in _PLAIN and p.oid_length == 8:
            plain.append(target)
        else:
            other.append((p.kind, target, p.database))
    if MARKER in data:
        start = _remote_start(a)
        site = single_remote_site(data, start) if start > 0 else None
        if site is not None:
            other.append((EdgeKind.REMOTE, site.oid, site.database))
        else:
            other.extend((e.kind, e.oid, e.database) for e in _remote_edges(data, a)
                         if e.oid is not None)
    return b"".join(plain), other


def targets_of(data: bytes, a: Analysis) -> list[tuple[EdgeKind, bytes | None, str | None]]:
    """``(kind, target oid, target database)`` of each of :func:`edges_of`'s
    edges, in the same order (``None`` for an ``unknown`` reference's oid):
    for walks that follow references of records they have analysed already
    (export), without an :class:`Edge` per reference."""
    sites = a.pids
    if not sites:
        return []
    out: list[tuple[EdgeKind, bytes | None, str | None]] = [
        (p.kind, data[p.oid_start:p.oid_start + p.oid_length] if p.oid_start >= 0 else None,
         p.database) for p in sites]
    if data.find(MARKER) >= 0:
        out.extend((e.kind, e.oid, e.database) for e in _remote_edges(data, a))
    return out


_Pair = tuple[str, str]


def export_refs_py(data: bytes, marker: bytes = MARKER) -> (
        tuple[tuple[_Pair, tuple[_Pair, ...]], tuple[int, ...]] | None):
    """What export's walk needs from an ordinary record, in one walk:
    ``((klass, names), oids)`` where ``klass`` and ``names`` are what
    :func:`~pclasses.record.analyze.census` gives (the class-metadata
    global, then every other global, byte order) and ``oids`` the ints of
    the record's 8-byte ``oid`` / ``oid_class`` references in byte order
    (weak references, and references of other lengths, left out).  ``None``
    when the record needs :func:`analyze` and :func:`targets_of` instead:
    ``data`` contains ``marker`` (remote references), a global's names are
    not literals, no global is the class metadata (formats 3 and 7, class
    references), or a reference is anything but an ``oid``, ``oid_class``
    or ``weak`` reference of this database with a known oid.  Same errors
    (``ValueError``) and limits as :func:`analyze`.  The C twin is
    :data:`export_refs_c` (added for issue 16's RelStorage export target)."""
    if marker and data.find(marker) >= 0:
        return None
    a = analyze_py(data)
    klass: _Pair | None = None
    names: list[_Pair] = []
    for g in a.globals:
        if g.module is None or g.name is None:
            return None
        if klass is None and int(g.uses) & _CLASS_META:
            klass = (g.module, g.name)
        else:
            names.append((g.module, g.name))
    if klass is None:
        return None
    oids: list[int] = []
    for p in a.pids:
        if p.oid_start < 0 or p.database is not None:
            return None
        if p.kind in _PLAIN:
            if p.oid_length == 8:
                oids.append(int.from_bytes(data[p.oid_start:p.oid_start + 8], "big"))
        elif p.kind is not EdgeKind.WEAK:
            return None
    return (klass, tuple(names)), tuple(oids)


_CLASS_META = int(Use.CLASS_META)

try:
    if PURE_PYTHON:
        raise ImportError("PCLASSES_PURE_PYTHON is set")
    from ._skim import export_refs as _c_export_refs
except ImportError:  # not built (or built before export_refs)
    _c_export_refs = None

#: :func:`export_refs_py` in C, or ``None`` (pure Python, or not built):
#: export then reads every record through :func:`analyze`
export_refs_c: Any = _c_export_refs
