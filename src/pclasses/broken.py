"""Broken classes and objects: lossless stand-ins for classes that went away.

A name that resolves to nothing gets a *broken class*: a subclass of ZODB's
:class:`ZODB.broken.Broken`, so ``IBroken`` checks and ZODB's own
``persistentBroken`` conversion keep working.  What ours adds:

* **Lossless writes.**  A non-persistent broken object pickles itself the
  way the original object was pickled (NEWOBJ of the original class name,
  the same arguments, the same state), where ZODB's ``Broken`` writes a
  REDUCE of ``ZODB.broken.rebuild``.  Together with the writer fallback of
  :mod:`pclasses.connection` (which writes the class as the GLOBAL ZODB had
  read), committing a container that holds broken objects rewrites them
  equivalently, and they come back whole when their class returns.
* **Clear refusals.**  Modifying a broken object raises
  :class:`~pclasses.errors.BrokenObjectModifiedError` (also ZODB's
  ``BrokenModified``) naming the class and, for a persistent one, its oid.
"""

from __future__ import annotations

import copyreg
import threading
from typing import Any

import ZODB.broken
from ZODB.broken import Broken, PersistentBroken

from .classtable import is_placeholder
from .errors import BrokenObjectModifiedError, NotBrokenError

__all__ = ["Broken", "PersistentBroken", "make_broken_class", "is_broken", "broken_state",
           "missing_name", "broken_classes_exist"]


#: Set while pclasses' writer pickles a record (see :mod:`pclasses.connection`):
#: broken objects then reduce to their original form, which only that
#: writer can pickle; anywhere else they reduce as ZODB's do (through
#: ``ZODB.broken.rebuild``), so ``pickle.dumps`` of a broken object works.
writing = threading.local()

#: Held while a broken plain object's state is stored and while reattachment
#: swaps a plain object's class (:mod:`pclasses.reattach`): an object being
#: unpickled in another thread gets its state either before the swap (which
#: then carries it over) or after it (applied as the real class reads it).
swap_lock = threading.RLock()


def apply_state(obj: Any, state: Any) -> None:
    """Give ``obj`` ``state`` the way unpickling's BUILD would for its class."""
    setstate = getattr(type(obj), "__setstate__", None)
    if setstate is not None and getattr(setstate, "__qualname__", "").split(".")[0] != "object":
        obj.__setstate__(state)
        return
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    if state:
        obj.__dict__.update(state)
    for k, v in (slots or {}).items():
        setattr(obj, k, v)


class _LosslessBroken(Broken):  # type: ignore[misc]  # ZODB is untyped
    """Base of our broken classes (non-persistent instances)."""

    __pclasses_missing__: tuple[str, str] = ("", "")

    def __reduce_ex__(self, protocol: Any) -> Any:
        if not getattr(writing, "active", False):
            return Broken.__reduce__(self)
        d = self.__dict__
        state = d.get("__Broken_state__")
        initargs = d.get("__Broken_initargs__")
        if initargs is not None:  # made by calling the class (INST/OBJ/REDUCE)
            return (type(self), tuple(initargs), state)
        newargs = d.get("__Broken_newargs__") or ()
        return (copyreg.__newobj__, (type(self), *newargs), state)  # type: ignore[attr-defined]

    def __setstate__(self, state: Any) -> None:
        with swap_lock:
            if isinstance(self, _LosslessBroken):
                self.__dict__["__Broken_state__"] = state
            else:  # reattached between its creation and its state (another thread)
                apply_state(self, state)

    def __setattr__(self, name: str, value: Any) -> None:
        module, cname = type(self).__pclasses_missing__
        raise BrokenObjectModifiedError(f"{module}.{cname}")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)


class _LosslessPersistentBroken(PersistentBroken):  # type: ignore[misc]
    """Mixin of the persistent variants: refusals name class and oid."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_p_"):
            PersistentBroken.__setattr__(self, name, value)
            return
        module, cname = type(self).__pclasses_missing__
        raise BrokenObjectModifiedError(f"{module}.{cname}", self._p_oid)

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return PersistentBroken.__reduce__(self)  # refuses, as ZODB's does


def make_broken_class(module: str, name: str) -> type:
    """A new broken class standing for ``module.name``.

    The class's ``__module__`` and ``__name__`` are the missing ones, as with
    ZODB's ``find_global``; its persistent variant (what ZODB's reader uses
    for persistent objects) is made at the same time.
    """
    # A name read from a record may hold characters ``type()`` refuses (NUL):
    # the class's own name shows them escaped; ``__pclasses_missing__`` keeps
    # the name as read, which is what is written back.
    shown = name.replace("\x00", "\\x00")
    cls = type(shown, (_LosslessBroken,), {"__module__": module,
                                           "__pclasses_missing__": (module, name)})
    persistent = type(shown, (_LosslessPersistentBroken, cls), {"__module__": module})
    cls.__Broken_Persistent__ = persistent  # type: ignore[attr-defined]
    return cls


def broken_classes_exist() -> bool:
    """Whether any broken class made by :func:`make_broken_class` is alive."""
    return bool(_LosslessBroken.__subclasses__())


def missing_name(cls: Any) -> tuple[str, str] | None:
    """``(module, name)`` a broken class stands for, or ``None``."""
    if isinstance(cls, type) and issubclass(cls, Broken):
        pair = getattr(cls, "__pclasses_missing__", None)
        # Only our own broken classes (and their persistent variants) stand
        # for the name they carry; a class that merely *inherits* from one
        # (a database-resident class whose base is missing) is itself.
        if pair and pair[0] == cls.__module__ and (
                cls.__name__ == pair[1].replace("\x00", "\\x00")):
            return pair  # type: ignore[no-any-return]
        return (cls.__module__, cls.__name__)
    return None


def is_broken(obj: Any) -> bool:
    """Whether ``obj`` (persistent or not) is an instance of a broken class."""
    return isinstance(obj, ZODB.broken.Broken) or is_placeholder(type(obj))


def broken_state(obj: Any) -> Any:
    """The state a broken object was loaded with.

    For a persistent broken object this loads the object (a ghost has no
    state yet); the state is returned as stored, never interpreted.  Raises
    :class:`~pclasses.errors.NotBrokenError` (a ``TypeError``) for an object
    that is not broken.
    """
    if not is_broken(obj):
        raise NotBrokenError(f"{type(obj).__module__}.{type(obj).__qualname__}")
    if isinstance(obj, PersistentBroken) and obj._p_jar is not None:
        obj._p_activate()
    if is_placeholder(type(obj)):  # an instance of a placeholder: its __dict__
        return dict(obj.__dict__)
    return obj.__dict__.get("__Broken_state__")
