"""Broken classes and objects.

A name that resolves to nothing gets a *broken class*: a subclass of ZODB's
:class:`ZODB.broken.Broken`, so ``IBroken`` checks and ZODB's own
``persistentBroken`` conversion keep working.  Instances keep the state and
constructor arguments they were loaded with.
"""

from __future__ import annotations

from typing import Any

import ZODB.broken
from ZODB.broken import Broken, PersistentBroken

__all__ = ["Broken", "PersistentBroken", "make_broken_class", "is_broken", "broken_state"]


def make_broken_class(module: str, name: str) -> type:
    """A new broken class standing for ``module.name``.

    The class's ``__module__`` and ``__name__`` are the missing ones, as with
    ZODB's ``find_global``, so a record rewritten from a broken object keeps
    the original class name.
    """
    cls = type(name, (Broken,), {"__module__": module, "__pclasses_missing__": (module, name)})
    return cls


def is_broken(obj: Any) -> bool:
    """Whether ``obj`` (persistent or not) is an instance of a broken class."""
    return isinstance(obj, ZODB.broken.Broken)


def broken_state(obj: Any) -> Any:
    """The state a broken object was loaded with.

    For a persistent broken object this loads the object (a ghost has no
    state yet); the state is returned as stored, never interpreted.  Raises
    ``TypeError`` for an object that is not broken.
    """
    if not is_broken(obj):
        raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} object is not broken")
    if isinstance(obj, PersistentBroken) and obj._p_jar is not None:
        obj._p_activate()
    return obj.__dict__.get("__Broken_state__")
