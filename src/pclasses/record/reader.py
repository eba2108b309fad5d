"""The safe record reader: what a ZODB record names, without running it.

A ZODB data record is two pickles written back to back: the *class
metadata*, then the *state*.  This module answers three questions about a
record (which class, which persistent references, which globals) without
importing or calling anything the record names.

Class metadata formats (the numbering of ``ZODB/serialize.py``)
---------------------------------------------------------------

=====  ===========================================  ========================
 no.    pickled value                                 :class:`ClassRef`
=====  ===========================================  ========================
 1      ``klass``                                     ``format=1``
 2      ``(klass, newargs)``                          ``format=2``
 3      ``((module, name), None)``                    ``format=3``
 4      ``((module, name), initargs)`` (legacy)       read as ``format=7``
 5      ``(klass, None)`` (legacy)                    ``format=5``
 6      ``(klass, initargs)`` (legacy)                read as ``format=2``
 7      ``((module, name), newargs)``                 ``format=7``
=====  ===========================================  ========================

Formats 4 and 6 cannot be told apart from 7 and 2 (``serialize.py`` says
so too); the reader reports the current number.  ``klass`` is either a
GLOBAL (a *named* reference: ``ClassRef.kind == "named"``) or a persistent
reference to a class stored in the database (``kind == "persistent"``,
with ``ClassRef.oid`` set).  Formats 3 and 7 are named by construction.

Persistent reference formats
----------------------------

===========================  ==============  ==================================
 pickled persistent id        ``kind``        fields set
===========================  ==============  ==================================
 ``oid``                      ``"oid"``       ``oid``
 ``(oid, klass)``             ``"oid_class"`` ``oid``, ``klass``
 ``['w', (oid,)]``            ``"weak"``      ``oid``
 ``['w', (oid, db)]``         ``"weak"``      ``oid``, ``database``
 ``['n', (db, oid)]``         ``"multi_oid"`` ``oid``, ``database``
 ``['m', (db, oid, klass)]``  ``"multi"``     ``oid``, ``database``, ``klass``
 ``[oid]`` (legacy weak)      ``"legacy"``    ``oid``
===========================  ==============  ==================================

``klass`` in a reference is a :class:`ClassRef` (named, ``(module, name)``
tuple, or persistent).

How it reads without running
----------------------------

The record is fed to zodbpickle's C unpickler (the one ZODB itself uses,
with ZODB's ``encoding``/``errors`` settings) whose ``find_class`` returns an
inert placeholder *type* for each ``(module, name)`` and whose
``persistent_load`` returns an inert :class:`PersistentRef`.  Everything a
pickle can call (REDUCE, NEWOBJ, INST, OBJ, BUILD, APPEND(S), SETITEM(S)) is
then a call into those placeholders, which only record what they are given
and return an :class:`Inert` value.  Nothing outside this module is ever
imported or called, whatever the bytes say.  The pickle machine has no loops,
so reading terminates.  Before the unpickler sees a record, the C skimmer of
:mod:`pclasses.record.analyze` walks its opcodes (about 0.1 us) and refuses what cannot
be guarded from inside the unpickler: a structural error, a memo index
larger than the record could fill (the C unpickler would allocate and zero
16 bytes per index), and pickle *extension codes* (EXT1/2/4 read
``copyreg``'s process-wide extension cache, which can hold real callables)
while any extension code is registered in the process; with none
registered they are an "unregistered extension code" error.

Two speeds
----------

:func:`scan_record` is the census path: class, references and globals,
with the raw persistent ids collected by ``list.append`` at C speed.
:func:`read_record` also returns the state as a tree of inert values
(plain containers, :class:`Inert`, :class:`PersistentRef`), which is what
the broken-object inventory walks to name the attribute or key where a
reference sits.

The formats this module *writes* are none: it only reads.  Writers live
with the code that rewrites records (repair, export), which emit ZODB's own
encodings.
"""

from __future__ import annotations

import copyreg
import io
from dataclasses import dataclass, field
from typing import Any, cast

import zodbpickle.pickle as _zpickle

from ..errors import RecordDecodeError
from .analyze import Analysis, EdgeKind
from .edges import Edge, analyze_record, edges_of

__all__ = [
    "ClassRef",
    "Reference",
    "RecordInfo",
    "Inert",
    "PersistentRef",
    "GlobalRef",
    "scan_record",
    "read_record",
    "read_class",
    "split_record",
    "global_occurrences",
    "classify_reference",
    "REFERENCE_KINDS",
    "CLASS_FORMATS",
]

#: Every persistent-reference kind the reader reports.
REFERENCE_KINDS = ("oid", "oid_class", "weak", "multi_oid", "multi", "legacy")
#: The class-metadata formats the reader reports (4 and 6 read as 7 and 2).
CLASS_FORMATS = (1, 2, 3, 5, 7)

_Unpickler = _zpickle.Unpickler
_UnpicklingError = _zpickle.UnpicklingError


# ---------------------------------------------------------------------------
# Inert placeholders
# ---------------------------------------------------------------------------


class Inert:
    """The inert result of a call a pickle asked for.

    ``callable`` is a :class:`GlobalRef` type or a :class:`PersistentRef`;
    ``args`` the positional arguments; ``how`` one of ``"reduce"``,
    ``"newobj"``, ``"inst"``; ``state`` what BUILD passed (``None`` if no
    BUILD); ``listitems`` and ``dictitems`` what APPEND(S) and SETITEM(S)
    added.  Nothing here was ever called.
    """

    __slots__ = ("callable", "args", "how", "state", "listitems", "dictitems")

    def __init__(self, callable: Any, args: tuple[Any, ...], how: str) -> None:
        self.callable = callable
        self.args = args
        self.how = how
        self.state: Any = None
        self.listitems: list[Any] | None = None
        self.dictitems: list[tuple[Any, Any]] | None = None

    # The operations the unpickler performs on the object it built.
    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        if self.listitems is None:
            self.listitems = []
        self.listitems.append(item)

    def extend(self, items: Any) -> None:
        if self.listitems is None:
            self.listitems = []
        self.listitems.extend(items)

    def add(self, item: Any) -> None:  # protocol 4 ADDITEMS
        self.append(item)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.dictitems is None:
            self.dictitems = []
        self.dictitems.append((key, value))

    def __call__(self, *args: Any, **kw: Any) -> Inert:
        # A hostile pickle may REDUCE on the result of an earlier REDUCE.
        return Inert(self, args, "reduce")

    @property
    def target(self) -> tuple[str, str] | PersistentRef:
        """What was called: ``(module, name)`` or the persistent reference."""
        c = self.callable
        if isinstance(c, type) and issubclass(c, GlobalRef):
            return c.dotted_pair
        return c  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Inert {self.how} {self.target!r} args={self.args!r}>"


class _GlobalMeta(type):
    """Metaclass of the placeholder types; calling one builds an Inert."""

    dotted_pair: tuple[str, str]
    _classref: Any

    def __call__(cls, *args: Any, **kw: Any) -> Inert:  # REDUCE, INST, OBJ
        return Inert(cls, args, "reduce")

    def __repr__(cls) -> str:
        return f"<global {cls.dotted_pair[0]}.{cls.dotted_pair[1]}>"

    # Placeholder types are shared by every record read in this process; a
    # hostile BUILD with slot state must not be able to rename one.
    def __setattr__(cls, name: str, value: Any) -> None:
        raise TypeError("placeholder globals are read-only")

    def __delattr__(cls, name: str) -> None:
        raise TypeError("placeholder globals are read-only")


class GlobalRef(metaclass=_GlobalMeta):
    """Base of the placeholder types returned for a GLOBAL.

    A subclass stands for one ``(module, name)``: ``dotted_pair``.  It is a
    type only because pickle's NEWOBJ insists on one; it is never
    instantiated, and no attribute of it reaches real code.
    """

    dotted_pair: tuple[str, str] = ("", "")
    _classref: Any = None

    def __new__(cls, *args: Any) -> Any:  # NEWOBJ: cls.__new__(cls, *args)
        return Inert(cls, args, "newobj")


_global_types: dict[tuple[str, str], type[GlobalRef]] = {}
_GLOBAL_TYPES_MAX = 8192


def _global_type(module: str, name: str) -> type[GlobalRef]:
    key = (module, name)
    try:
        return _global_types[key]
    except KeyError:
        pass
    if len(_global_types) >= _GLOBAL_TYPES_MAX:  # hostile input: many names
        _global_types.clear()
    t = cast("type[GlobalRef]", _GlobalMeta("global", (GlobalRef,), {
        "dotted_pair": key, "__slots__": (), "_classref": None}))
    _global_types[key] = t
    return t


class PersistentRef:
    """An inert persistent reference found in a record's state.

    ``pid`` is the persistent id exactly as unpickled; :attr:`reference`
    classifies it.  If a pickle calls it (a non-persistent instance of a
    database-resident class pickled by INST/OBJ), the call is recorded as
    an :class:`Inert`.
    """

    __slots__ = ("pid", "edge")

    def __init__(self, pid: Any, edge: Edge | None = None) -> None:
        self.pid = pid
        #: the record's :class:`~pclasses.record.edges.Edge` for this
        #: reference (``None`` when built outside a record read)
        self.edge = edge

    @property
    def reference(self) -> Reference:
        if self.edge is not None:
            return _reference(self.edge, self.pid)
        return classify_reference(self.pid)

    def __call__(self, *args: Any, **kw: Any) -> Inert:
        return Inert(self, args, "reduce")

    def __repr__(self) -> str:
        try:
            ref = self.reference
        except RecordDecodeError:
            return f"<PersistentRef {self.pid!r}>"
        from ZODB.utils import oid_repr

        where = f" in {ref.database}" if ref.database else ""
        return f"<PersistentRef {ref.kind} {oid_repr(ref.oid)}{where}>"


_ref_types: dict[int, type] = {}


def _persistent_ref_type(pid: Any, edge: Edge | None = None) -> type:
    """A placeholder type standing for a persistent reference.

    Only used when a pickle applies NEWOBJ to a persistent reference (a
    non-persistent instance of a database-resident class), which needs a
    type.  Built per reference on that rare path.
    """

    class _Ref(GlobalRef):
        __slots__ = ()
        dotted_pair = ("", "")
        persistent_pid = pid
        persistent_edge = edge

        def __new__(cls, *args: Any) -> Any:
            return Inert(PersistentRef(pid, edge), args, "newobj")

    return _Ref


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class ClassRef:
    """A class reference: by name (``module``, ``name``) or persistent (``oid``).

    ``format`` is the class-metadata format number of ``serialize.py`` when
    this is a record's class, ``0`` when it is the class part of a
    persistent reference.  ``args`` is the inert ``__getnewargs__`` /
    ``__getinitargs__`` value, or ``None``.  ``database`` is set for the
    class of a cross-database reference to a persistent class.
    """

    module: str | None
    name: str | None
    oid: bytes | None = None
    format: int = 0
    args: Any = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        """``"named"`` or ``"persistent"`` (a direct reference to a class record)."""
        return "persistent" if self.oid is not None else "named"

    @property
    def dotted(self) -> str:
        if self.oid is not None:
            from ZODB.utils import oid_repr

            return f"<persistent class {oid_repr(self.oid)}>"
        return f"{self.module}.{self.name}"

    @property
    def pair(self) -> tuple[str, str] | None:
        if self.module is None or self.name is None:
            return None
        return (self.module, self.name)


@dataclass(slots=True, unsafe_hash=True)
class Reference:
    """One persistent reference found in a record.

    ``kind`` is one of :data:`REFERENCE_KINDS`; ``oid`` is always bytes;
    ``database`` is the target database name for cross-database and
    external weak references; ``klass`` the class part when the reference
    carries one.  ``pid`` is the persistent id as read (inert).
    """

    kind: str
    oid: bytes
    database: str | None = None
    klass: ClassRef | None = None
    pid: Any = field(default=None, compare=False, repr=False)

    @property
    def is_weak(self) -> bool:
        return self.kind in ("weak", "legacy")

    @property
    def is_cross_database(self) -> bool:
        return self.database is not None


class RecordInfo:
    """What a record names: its class, its references, its globals.

    ``globals`` lists each ``(module, name)`` once, in order of first
    appearance, including the record's own class when it is a GLOBAL.
    ``references`` is computed on first use from the raw persistent ids
    (``pids``).  ``state`` is the inert state tree (``None`` from
    :func:`scan_record`).  ``class_length`` is the length in bytes of the
    class-metadata pickle.
    """

    __slots__ = ("klass", "pids", "globals", "class_length", "state", "oid", "_refs", "_data",
                 "analysis")

    def __init__(
        self,
        klass: ClassRef,
        pids: list[Any],
        globals: list[tuple[str, str]],
        class_length: int,
        state: Any = None,
        oid: bytes | None = None,
    ) -> None:
        self.klass = klass
        self.pids = pids
        self.globals = globals
        self.class_length = class_length
        self.state = state
        self.oid = oid
        self._refs: list[Reference] | None = None
        self._data: bytes | None = None
        #: the analyzer's view of the record (the pre-scan's result)
        self.analysis: Analysis | None = None

    @property
    def references(self) -> list[Reference]:
        """Every persistent reference, classified, in pickle order.

        A reference whose class is itself a persistent reference (an
        instance of a database-resident class) contains another persistent
        id; like ``referencesf``, both are listed, the inner one first.
        """
        if self._refs is None:
            if self._data is None or self.analysis is None:
                raise RecordDecodeError("record bytes not kept", oid=self.oid)
            pids = self.pids
            refs = []
            for i, e in enumerate(self.edges):
                try:
                    refs.append(_reference(e, pids[i] if i < len(pids) else None))
                except RecordDecodeError as exc:
                    raise RecordDecodeError(exc.reason, oid=self.oid) from None
            self._refs = refs
        return self._refs

    @property
    def edges(self) -> list[Edge]:
        """Every persistent reference as an :class:`~pclasses.record.edges.Edge`
        (from the pre-scan's analysis; nothing is read again)."""
        if self._data is None or self.analysis is None:
            raise RecordDecodeError("record bytes not kept", oid=self.oid)
        return edges_of(self._data, self.analysis)

    def __repr__(self) -> str:
        return (
            f"<RecordInfo {self.klass.dotted} refs={len(self.pids)} "
            f"globals={len(self.globals)}>"
        )


_EXT_REGISTRY = copyreg._inverted_registry  # type: ignore[attr-defined]
_EXT_CACHE = copyreg._extension_cache  # type: ignore[attr-defined]


def _precheck(data: bytes, oid: bytes | None) -> Analysis:
    """Refuse, before unpickling, what the C unpickler cannot be guarded from.

    The record analyzer (:func:`pclasses.record.analyze.analyze`, C or its
    Python twin) walks every opcode first and refuses any structural error
    (unknown opcode, truncation, missing STOP, stack underflow) and a memo
    index larger than the record could ever fill (the C unpickler would
    allocate 16 bytes per index); EXT opcodes are refused while extension
    codes are registered.  Its result also tells the reader which inert
    hooks the record needs, so each record is decoded once.
    """
    a = analyze_record(data, oid)
    if a.max_memo > len(data):
        raise RecordDecodeError(
            f"memo index {a.max_memo} is more than a {len(data)}-byte record can fill "
            "(refused: the unpickler would allocate memory for it)", oid=oid)
    if a.has_ext and (_EXT_REGISTRY or _EXT_CACHE):
        raise RecordDecodeError(
            "pickle extension code refused (copyreg extension codes are registered in "
            "this process)", oid=oid)
    return a


def _loaders(a: Analysis, data: bytes) -> int:
    """Which persistent-reference hook a record needs (decided from its
    analysis, so it is decoded once): 0 ``list.append`` (references become
    ``None``: nothing uses them), 1 :class:`PersistentRef`, 2 placeholder
    types (a reference is the class of a NEWOBJ)."""
    calls = a.calls_pid
    if calls:
        for off in calls:
            if data[off] in (0x81, 0x92):  # NEWOBJ NEWOBJ_EX
                return 2
        return 1
    if a.class_pid >= 0:
        return 1
    for c in a.pid_classes:
        if c.__class__ is int:
            return 1
    return 0


# ---------------------------------------------------------------------------
# Decoding helpers
# ---------------------------------------------------------------------------


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):  # Python 2 str that was not ASCII
        return value.decode("latin-1")
    raise RecordDecodeError(f"expected a string for {what}, got {type(value).__name__}")


def _oid(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # Python 2 str oid that decoded as ASCII
        try:
            return value.encode("ascii")
        except UnicodeEncodeError:
            return value.encode("latin-1")
    raise RecordDecodeError(f"expected an oid, got {type(value).__name__}")


def _class_value(value: Any, fmt: int) -> ClassRef:
    """A class given as an unpickled value: placeholder type, ref, or pair."""
    if isinstance(value, type) and issubclass(value, GlobalRef):
        pid = getattr(value, "persistent_pid", None)
        if pid is not None:
            return _class_value(PersistentRef(pid), fmt)
        module, name = value.dotted_pair
        return ClassRef(module, name, None, fmt)
    if isinstance(value, PersistentRef) or (fmt == 0 and _looks_like_pid(value)):
        pid = value.pid if isinstance(value, PersistentRef) else value
        ref = classify_reference(pid)
        return ClassRef(None, None, ref.oid, fmt)
    if isinstance(value, tuple) and len(value) == 2:
        return ClassRef(_text(value[0], "module"), _text(value[1], "class name"), None, fmt)
    raise RecordDecodeError(
        f"class metadata is not a class reference: got {type(value).__name__}"
    )


def _looks_like_pid(value: Any) -> bool:
    return isinstance(value, (bytes, list))


def _class_meta(meta: Any) -> ClassRef:
    """Classify an unpickled class-metadata value into one of the formats."""
    if isinstance(meta, tuple):
        if len(meta) != 2:
            raise RecordDecodeError(
                f"class metadata is a tuple of {len(meta)} items, expected 2"
            )
        klass, args = meta
        if isinstance(klass, tuple):  # formats 3, 4, 7
            ref = _class_value(klass, 3 if args is None else 7)
        else:  # formats 2, 5, 6
            ref = _class_value(klass, 5 if args is None else 2)
        if args is not None:
            return ClassRef(ref.module, ref.name, ref.oid, ref.format, args)
        return ref
    return _class_value(meta, 1)


def classify_reference(pid: Any) -> Reference:
    """Classify one persistent id (as the unpickler handed it over).

    Mirrors ``ZODB.serialize.ObjectReader._persistent_load``; raises
    :class:`RecordDecodeError` for anything ZODB could not load either.
    """
    try:
        if isinstance(pid, tuple):
            if len(pid) != 2:
                raise RecordDecodeError(f"reference tuple of {len(pid)} items")
            return Reference("oid_class", _oid(pid[0]), None, _class_value(pid[1], 0), pid)
        if isinstance(pid, (bytes, str)):
            return Reference("oid", _oid(pid), None, None, pid)
        if isinstance(pid, list):
            if len(pid) == 1:
                return Reference("legacy", _oid(pid[0]), None, None, pid)
            if len(pid) == 2:
                rtype, args = pid
                rtype = _text(rtype, "reference type")
                if not isinstance(args, tuple):
                    raise RecordDecodeError("extended reference arguments are not a tuple")
                if rtype == "w":
                    if len(args) == 1:
                        return Reference("weak", _oid(args[0]), None, None, pid)
                    if len(args) == 2:
                        db = _text(args[1], "database name")
                        return Reference("weak", _oid(args[0]), db, None, pid)
                elif rtype == "n" and len(args) == 2:
                    db = _text(args[0], "database name")
                    return Reference("multi_oid", _oid(args[1]), db, None, pid)
                elif rtype == "m" and len(args) == 3:
                    db = _text(args[0], "database name")
                    return Reference("multi", _oid(args[1]), db, _class_value(args[2], 0), pid)
                raise RecordDecodeError(
                    f"unknown extended reference {rtype!r} with {len(args)} arguments"
                )
    except RecordDecodeError:
        raise
    except Exception as exc:  # a placeholder where a string was expected, ...
        raise RecordDecodeError(f"malformed persistent reference: {exc}") from None
    raise RecordDecodeError(f"persistent reference of type {type(pid).__name__}")


def _reference(e: Edge, pid: Any) -> Reference:
    """The :class:`Reference` for one edge of a record (the analyzer classified it)."""
    if e.oid is None:
        raise RecordDecodeError("persistent reference of an unknown shape")
    klass = None
    if e.kind is EdgeKind.REMOTE:
        if e.klass is not None and e.klass[1] is not None:
            klass = ClassRef(e.klass[0], e.klass[1], None, 0)
    elif e.kind is EdgeKind.OID_CLASS or e.kind is EdgeKind.MULTI:
        if e.klass_oid is not None:
            klass = ClassRef(None, None, e.klass_oid, 0)
        elif e.klass is not None and e.klass[0] is not None and e.klass[1] is not None:
            klass = ClassRef(e.klass[0], e.klass[1], None, 0)
        else:
            raise RecordDecodeError("the class part of a persistent reference is not a class")
    return Reference(e.kind, e.oid, e.database, klass, pid)


# ---------------------------------------------------------------------------
# The unpickler
# ---------------------------------------------------------------------------

class _SafeUnpickler(_Unpickler):  # type: ignore[misc,valid-type]  # zodbpickle is untyped
    """zodbpickle's C unpickler whose ``find_class`` returns placeholders.

    ``globals_seen`` is set on each instance before loading.
    """

    globals_seen: list[tuple[str, str]]

    def find_class(self, module: Any, name: Any) -> type[GlobalRef]:
        if module.__class__ is not str or name.__class__ is not str:
            module = _text(module, "module")
            name = _text(name, "global name")
        self.globals_seen.append((module, name))
        return _global_type(module, name)


def _open(data: bytes) -> tuple[Any, Any]:
    # A buffered reader gives the C unpickler ``peek``, so it prefetches the
    # record in one call instead of calling ``read`` for every opcode; its
    # ``tell`` still reports exactly where each pickle ended.
    f = io.BufferedReader(io.BytesIO(data))
    u = _SafeUnpickler(f, encoding="ASCII", errors="bytes")
    return f, u


def _persistent_ref_as_type(pid: Any, edge: Edge | None = None) -> Any:
    # References may be used as NEWOBJ classes, which must be types.
    if isinstance(pid, tuple) or isinstance(pid, list) or isinstance(pid, (bytes, str)):
        return _persistent_ref_type(pid, edge)
    return PersistentRef(pid, edge)


def _hook(mode: int, pids: list[Any], edges: list[Edge]) -> Any:
    """The ``persistent_load`` of loader ``mode`` (see :func:`_loaders`):
    each call is the next PERSID / BINPERSID, so the next edge."""
    if mode == 0:
        return pids.append
    wrap = PersistentRef if mode == 1 else _persistent_ref_as_type
    n = len(edges)

    def persistent_load(pid: Any) -> Any:
        i = len(pids)
        pids.append(pid)
        return wrap(pid, edges[i] if i < n else None)

    return persistent_load


def _run(
    data: bytes, persistent_load: Any, oid: bytes | None
) -> tuple[Any, Any, int, list[tuple[str, str]]]:
    globals_seen: list[tuple[str, str]] = []
    f, u = _open(data)
    u.globals_seen = globals_seen
    u.persistent_load = persistent_load
    try:
        meta = u.load()
        class_length = f.tell()
        state = u.load()
    except RecordDecodeError as exc:
        raise RecordDecodeError(exc.reason, oid=oid, offset=f.tell()) from None
    except (MemoryError, RecursionError):
        raise RecordDecodeError("record exhausts the reader's limits", oid=oid) from None
    except EOFError:
        raise RecordDecodeError(
            f"truncated: ran out of data at byte {f.tell()} of {len(data)}",
            oid=oid,
            offset=f.tell(),
        ) from None
    except Exception as exc:
        raise _Retry(exc, f.tell()) from None
    if f.tell() != len(data):
        raise RecordDecodeError(
            f"{len(data) - f.tell()} unexpected bytes after the state pickle",
            oid=oid,
            offset=f.tell(),
        )
    return meta, state, class_length, globals_seen


class _Retry(Exception):
    def __init__(self, exc: BaseException, offset: int) -> None:
        self.exc = exc
        self.offset = offset


def _is_ref_type(value: Any) -> bool:
    return isinstance(value, type) and "persistent_pid" in getattr(value, "__dict__", {})


def _untype_refs(root: Any) -> Any:
    """Replace reference placeholder types by :class:`PersistentRef` in a tree.

    Iterative (a hostile pickle can nest deeply) and cycle-safe (the memo can
    make a list contain itself).  Tuples are rebuilt when they change.
    """
    if _is_ref_type(root):
        return PersistentRef(root.persistent_pid, root.persistent_edge)
    done: dict[int, Any] = {}
    stack: list[Any] = [root]
    order: list[Any] = []
    while stack:  # collect every container once
        obj = stack.pop()
        if id(obj) in done:
            continue
        if isinstance(obj, (list, dict, tuple, set, frozenset, Inert)):
            done[id(obj)] = obj
            order.append(obj)
            if isinstance(obj, dict):
                stack.extend(obj.keys())
                stack.extend(obj.values())
            elif isinstance(obj, Inert):
                stack.extend((obj.callable, obj.args, obj.state, obj.listitems, obj.dictitems))
            else:
                stack.extend(obj)

    def fix(value: Any) -> Any:
        if _is_ref_type(value):
            return PersistentRef(value.persistent_pid, value.persistent_edge)
        if isinstance(value, tuple):
            return done.get(id(value), value)
        return value

    # Innermost first, so a rebuilt tuple is seen by its containers.
    for obj in reversed(order):
        if isinstance(obj, tuple):
            new = tuple(fix(v) for v in obj)
            if any(a is not b for a, b in zip(new, obj)):
                done[id(obj)] = new
        elif isinstance(obj, list):
            obj[:] = [fix(v) for v in obj]
        elif isinstance(obj, dict):
            items = [(fix(k), fix(v)) for k, v in obj.items()]
            obj.clear()
            obj.update(items)
        elif isinstance(obj, (set, frozenset)):
            if isinstance(obj, set):
                items2 = {fix(v) for v in obj}
                obj.clear()
                obj.update(items2)
        else:  # Inert
            obj.callable = fix(obj.callable)
            obj.args = fix(obj.args)
            obj.state = fix(obj.state)
            if obj.listitems is not None:
                obj.listitems = [fix(v) for v in obj.listitems]
            if obj.dictitems is not None:
                obj.dictitems = [(fix(k), fix(v)) for k, v in obj.dictitems]
    return fix(root)


def _load(
    data: bytes, oid: bytes | None, want_state: bool, a: Analysis | None = None
) -> tuple[Any, Any, int, list[tuple[str, str]], list[Any], Analysis]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RecordDecodeError(f"a record is bytes, not {type(data).__name__}", oid=oid)
    data = bytes(data)
    if not data:
        raise RecordDecodeError("empty record", oid=oid, offset=0)
    if a is None:
        a = _precheck(data, oid)
    mode = _loaders(a, data)
    if want_state and mode == 0:
        mode = 1  # the state tree holds PersistentRefs
    edges = edges_of(data, a) if mode else []
    # The analysis chose the hooks, so a record is decoded once; placeholder
    # types for references (mode 2) remain the answer for what it did not
    # foresee.
    for m in (mode, 2) if mode != 2 else (2,):
        pids: list[Any] = []
        try:
            meta, state, clen, globs = _run(data, _hook(m, pids, edges or edges_of(data, a)),
                                            oid)
        except _Retry as retry:
            last = retry
            continue
        if m == 2:
            # References that stood in as types (for a NEWOBJ) go back to
            # being PersistentRefs everywhere in the state tree.
            state = _untype_refs(state)
            pids = [_untype_refs(p) for p in pids]
        return meta, state, clen, globs, pids, a
    exc = last.exc
    msg = str(exc) or type(exc).__name__
    raise RecordDecodeError(
        f"not a readable ZODB record ({type(exc).__name__}: {msg})",
        oid=oid,
        offset=last.offset,
    )


def _build(
    data: bytes, oid: bytes | None, want_state: bool, a: Analysis | None = None
) -> RecordInfo:
    meta, state, clen, globs, pids, a = _load(data, oid, want_state, a)
    try:
        klass = _class_meta(meta)
    except RecordDecodeError as exc:
        raise RecordDecodeError(exc.reason, oid=oid) from None
    if len(globs) > 1:
        globs = list(dict.fromkeys(globs))
    info = RecordInfo(klass, pids, globs, clen, state if want_state else None, oid)
    info._data = bytes(data)
    info.analysis = a
    return info


def scan_record(data: bytes, oid: bytes | None = None) -> RecordInfo:
    """Class, references and globals of one record (no state tree).

    Raises :class:`~pclasses.errors.RecordDecodeError` for bytes that are
    not a readable ZODB record.  Never imports or calls anything the record
    names.
    """
    # The common case inlined (this runs once per record of a census):
    # persistent ids collected by a C method, a format-1 class whose
    # ClassRef is cached on its placeholder type.
    if data.__class__ is bytes and data:
        a = _precheck(data, oid)
        if _loaders(a, data) != 0:
            return _build(data, oid, False, a)
        globs: list[tuple[str, str]] = []
        pids: list[Any] = []
        f = io.BufferedReader(io.BytesIO(data))
        u = _SafeUnpickler(f, encoding="ASCII", errors="bytes")
        u.globals_seen = globs
        u.persistent_load = pids.append
        try:
            meta = u.load()
            clen = f.tell()
            u.load()
            ok = f.tell() == len(data)
        except Exception:
            ok = False
        if ok and meta is not None:
            klass = meta._classref if meta.__class__ is _GlobalMeta else None
            if klass is None:
                try:
                    klass = _class_meta(meta)
                except RecordDecodeError:
                    klass = None  # the slow path names the error
                else:
                    if meta.__class__ is _GlobalMeta:
                        type.__setattr__(meta, "_classref", klass)
            if klass is not None:
                if len(globs) > 1:
                    globs = list(dict.fromkeys(globs))
                info = RecordInfo(klass, pids, globs, clen, None, oid)
                info._data = data
                info.analysis = a
                return info
        return _build(data, oid, False, a)
    return _build(data, oid, False)


def global_occurrences(data: bytes, oid: bytes | None = None) -> tuple[list[tuple[str, str]], int]:
    """Every global the record's opcodes name, in order, *with repeats*, and
    the length of the class pickle.

    Each GLOBAL, INST, STACK_GLOBAL or EXT opcode counts once (a memoized
    global used again through GET does not).  Offline repair uses the
    counts to prove that every ``c<module>\\n<name>\\n`` byte sequence it
    rewrites is an opcode and not text that looks like one.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise RecordDecodeError("empty or non-bytes record", oid=oid)
    data = bytes(data)
    _meta, _state, clen, globs, _pids, _a = _load(data, oid, False)
    return globs, clen


def read_record(data: bytes, oid: bytes | None = None) -> RecordInfo:
    """Like :func:`scan_record`, plus the inert state tree in ``.state``."""
    return _build(data, oid, True)


def read_class(data: bytes, oid: bytes | None = None) -> ClassRef:
    """Only the class metadata of a record (the cheapest question).

    The class pickle ZODB writes for almost every record, ``PROTO GLOBAL
    [PUT] STOP`` (format 1, named), is parsed directly from the bytes; any
    other shape goes through the inert unpickler.  The state pickle is not
    read.
    """
    if data.__class__ is bytes and len(data) > 4:
        start = 2 if data[0] == 0x80 else 0
        if data[start] == 0x63:  # GLOBAL
            ref = _class_from_global(data, start + 1)
            if ref is not None:
                return ref
    return _load_meta_only(data, oid)


def _class_from_global(data: bytes, pos: int) -> ClassRef | None:
    """``GLOBAL module\\n name\\n [BINPUT i | LONG_BINPUT iiii] STOP`` or ``None``."""
    end1 = data.find(b"\n", pos)
    if end1 == -1:
        return None
    end2 = data.find(b"\n", end1 + 1)
    if end2 == -1:
        return None
    after = end2 + 1
    op = data[after : after + 1]
    if op == b"q":
        after += 2
    elif op == b"r":
        after += 5
    if data[after : after + 1] != b".":
        return None
    try:
        module = data[pos:end1].decode("ascii")
        name = data[end1 + 1 : end2].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not module or not name:
        return None
    return ClassRef(module, name, None, 1)


def _load_meta_only(data: bytes, oid: bytes | None) -> ClassRef:
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise RecordDecodeError("empty or non-bytes record", oid=oid)
    data = bytes(data)
    a = _precheck(data, oid)
    edges = edges_of(data, a)
    mode = max(1, _loaders(a, data))
    for m in (mode, 2) if mode != 2 else (2,):
        f, u = _open(data)
        u.globals_seen = []
        u.persistent_load = _hook(m, [], edges)
        try:
            meta = u.load()
        except EOFError:
            raise RecordDecodeError("truncated class metadata", oid=oid, offset=f.tell()) from None
        except RecordDecodeError as exc:
            raise RecordDecodeError(exc.reason, oid=oid) from None
        except (MemoryError, RecursionError):
            raise RecordDecodeError("record exhausts the reader's limits", oid=oid) from None
        except Exception as exc:
            err = exc
            continue
        try:
            return _class_meta(meta)
        except RecordDecodeError as exc:
            raise RecordDecodeError(exc.reason, oid=oid) from None
    raise RecordDecodeError(
        f"unreadable class metadata ({type(err).__name__}: {err})", oid=oid
    )


def split_record(data: bytes, oid: bytes | None = None) -> tuple[bytes, bytes]:
    """The two pickles of a record: ``(class_pickle, state_pickle)``."""
    info = scan_record(data, oid)
    return data[: info.class_length], data[info.class_length :]
