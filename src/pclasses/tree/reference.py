"""Remote references: the seed's ``getReference`` and ``RemoteReference``.

``get_reference(source, target)`` returns ``target`` itself when both live in
the same database (or the target has none), else a :class:`RemoteReference`
whose ``via`` is the handle of the target's database, or, two databases
deep or more, another :class:`RemoteReference` to that handle.

A :class:`RemoteReference` is an immutable, non-persistent value pickled
inline in the source's record as ``RemoteReference(via, oid, klass,
database_name)``: a plain persistent reference to the handle (or the nested
reference), the target's oid as bytes, its class and its database's name as
text.  Loading the source therefore opens no other database and imports
nothing of the target's class; ZODB's pack and ``referencesf`` see a plain
reference to the handle.  The record engine reports it as an edge of kind
``remote`` (:func:`pclasses.record.edges`).

Its path ``pclasses.tree.reference.RemoteReference`` is frozen (D14).
"""

from __future__ import annotations

from typing import Any

from ZODB.POSException import POSKeyError

from ..errors import DanglingReferenceError, UnreachableReferenceError
from .dangling import Dangling
from .handle import HANDLES_KEY, DatabaseHandle

__all__ = ["RemoteReference", "RemoteAttribute", "get_reference"]


class RemoteReference:
    """A reference to object ``oid`` of database ``database_name`` through ``via``."""

    __slots__ = ("via", "oid", "klass", "database_name", "_hit", "_top")

    via: Any
    oid: bytes
    klass: str | None
    database_name: str
    _hit: tuple[Any, Any, Any] | None
    _top: Any

    def __init__(self, via: Any, oid: bytes, klass: str | None, database_name: str) -> None:
        if not isinstance(oid, bytes):
            raise TypeError("oid must be bytes")
        if not isinstance(via, (DatabaseHandle, RemoteReference)):
            raise TypeError("via must be a DatabaseHandle or a RemoteReference")
        s = object.__setattr__
        s(self, "via", via)
        s(self, "oid", oid)
        s(self, "klass", klass)
        s(self, "database_name", database_name)
        s(self, "_hit", None)
        top = via
        while type(top) is RemoteReference:
            top = top.via
        s(self, "_top", top)  # the handle stored in the source's database

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a RemoteReference is immutable")

    __delattr__ = __setattr__  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteReference, (self.via, self.oid, self.klass, self.database_name))

    def __eq__(self, other: object) -> bool:
        if type(other) is not RemoteReference:
            return NotImplemented
        return (self.oid, self.database_name) == (other.oid, other.database_name)

    def __hash__(self) -> int:
        return hash((RemoteReference, self.oid, self.database_name))

    def __repr__(self) -> str:
        from ZODB.utils import oid_repr

        return (f"<RemoteReference {self.database_name}:{oid_repr(self.oid)}"
                f"{' ' + self.klass if self.klass else ''}>")

    def handle(self) -> DatabaseHandle:
        """The handle of the target's database (loading intermediate levels)."""
        via = self.via
        if type(via) is RemoteReference:
            via = via(strict=True)
        return via  # type: ignore[no-any-return]

    def connection(self) -> Any:
        """The connection of the target's database."""
        return self.handle().connection()

    def __call__(self, *, ghost: bool = False, strict: bool = False) -> Any:
        """The target: loaded, or a ghost with ``ghost=True``.  A target that
        is gone comes back as a :class:`Dangling`; ``strict=True`` raises
        :class:`~pclasses.errors.DanglingReferenceError` instead."""
        hit = self._hit
        if hit is not None:
            # Warm: the same connection group (the top handle's jar), still open.
            jar, conn, obj = hit
            if self._top._p_jar is jar and conn.opened is not None:
                if ghost or obj._p_changed is not None:
                    return obj
                try:
                    obj._p_activate()
                    return obj
                except POSKeyError:
                    pass
        try:
            conn = self.connection()
            obj = conn.get(self.oid)
            if not ghost:
                obj._p_activate()
        except POSKeyError:
            if strict:
                raise DanglingReferenceError(database_name=self.database_name, oid=self.oid,
                                             klass=self.klass) from None
            return Dangling(self.database_name, self.oid, self.klass)
        object.__setattr__(self, "_hit", (self._top._p_jar, conn, obj))
        return obj


def _dotted(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _handle_for(source_jar: Any, database_name: str) -> DatabaseHandle | None:
    """The handle of ``database_name``, loaded in ``source_jar``'s connection group."""
    from .databases import databases_of

    dbs = databases_of(source_jar.db())
    info = dbs.known.get(database_name)
    if info is None:
        return None
    conn = source_jar.get_connection(info.parent)
    if info.oid is not None:
        try:
            handle = conn.get(info.oid)
        except KeyError:
            handle = None
        if isinstance(handle, DatabaseHandle):
            return handle
    handles = conn.root().get(HANDLES_KEY) or {}
    found = handles.get(database_name)
    return found if isinstance(found, DatabaseHandle) else None


def get_reference(source: Any, target: Any) -> Any:
    """What ``source`` should store to refer to ``target`` (see the module)."""
    sjar = getattr(source, "_p_jar", None)
    if sjar is None:
        raise ValueError("the source has no jar: add it to a connection before taking "
                         "references from it")
    tjar = getattr(target, "_p_jar", None)
    if tjar is None or tjar is sjar:
        return target
    if tjar.connections is not sjar.connections:
        raise UnreachableReferenceError(sjar.db().database_name, tjar.db().database_name)
    return _reference(source, sjar, target, tjar)


def _reference(source: Any, sjar: Any, target: Any, tjar: Any) -> Any:
    source_name = sjar.db().database_name
    target_name = tjar.db().database_name
    chain: list[Any] = []  # targets from the outermost inwards
    name, obj = target_name, target
    seen = set()
    while True:
        if name in seen:
            raise UnreachableReferenceError(source_name, target_name)
        seen.add(name)
        handle = _handle_for(sjar, name)
        if handle is None:
            raise UnreachableReferenceError(source_name, target_name)
        chain.append((obj, name, handle))
        if handle._p_jar is sjar:
            break
        name, obj = handle._p_jar.db().database_name, handle
    via: Any = chain[-1][2]
    for obj, name, handle in reversed(chain):
        if obj._p_oid is None:
            obj._p_jar.add(obj)
        ref = RemoteReference(via, obj._p_oid, _dotted(obj), name)
        if handle.pin:
            from .pins import pin

            pin(handle, obj)
        via = ref
    return via


class RemoteAttribute:
    """A descriptor storing a :class:`RemoteReference` (via
    :func:`get_reference`) on set and dereferencing it on get."""

    def __init__(self) -> None:
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        activate = getattr(obj, "_p_activate", None)
        if activate is not None:
            activate()
        try:
            value = obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        if type(value) is RemoteReference:
            return value()
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        activate = getattr(obj, "_p_activate", None)
        if activate is not None:
            activate()
        if value is not None and getattr(value, "_p_jar", None) is not None:
            value = get_reference(obj, value)
        obj.__dict__[self.name] = value
        if activate is not None:
            obj._p_changed = True

    def __delete__(self, obj: Any) -> None:
        activate = getattr(obj, "_p_activate", None)
        if activate is not None:
            activate()
        try:
            del obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        if activate is not None:
            obj._p_changed = True
