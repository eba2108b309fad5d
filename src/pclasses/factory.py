"""``pclasses.class_factory``: the registry as a bare ZODB class factory.

ZODB 6.3 and later take a class factory from a ZConfig ``<zodb>`` section
(and so from zope.conf)::

    <zodb>
      class-factory pclasses.class_factory
      <filestorage>
        path var/Data.fs
      </filestorage>
    </zodb>

ZConfig can only name an importable callable, so :func:`class_factory` is
one: it resolves names through one process-wide :class:`ClassRegistry`
(:func:`process_registry`), made on first use, which then reads the rules of
every installed distribution once (the ``pclasses.classes``,
``pclasses.aliases``, ``pclasses.module_aliases`` and ``zodbupdate``
entry-point groups; see :meth:`ClassRegistry.load_entry_points`).  An entry
point that fails is logged and skipped, never fatal.

The first lookup through a connection hands that connection's reader the
registry's own factory, so every later lookup costs exactly what the
registry costs, and the database joins the registry's databases (so
:meth:`ClassRegistry.reattach` reaches its broken objects).  The database's
``classFactory`` stays :func:`class_factory`.

What a bare class factory cannot do is documented in ``docs/class-factory.md``
with the one call that enables each: writing objects that hold broken
objects back (``process_registry().install(db)``) and the cross-database
seat belt (:func:`pclasses.check_xrefs`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .registry import ClassRegistry, EntryPointFailure

__all__ = ["class_factory", "process_registry", "entry_point_failures"]

log = logging.getLogger("pclasses")

_lock = threading.RLock()
_registry: ClassRegistry | None = None
_loading: ClassRegistry | None = None  # while its entry points are read
_failures: list[EntryPointFailure] = []


def process_registry() -> ClassRegistry:
    """The process-wide registry behind :func:`class_factory`.

    Made on the first call, which reads the installed distributions'
    entry-point rules (once per process; :meth:`ClassRegistry.refresh` and
    registrations work on it as on any registry).  Thread-safe: concurrent
    first calls make one registry.
    """
    global _registry, _loading
    registry = _registry
    if registry is not None:
        return registry
    with _lock:
        if _registry is not None:
            return _registry
        if _loading is not None:  # an entry point being loaded looked a class up
            return _loading
        registry = _loading = ClassRegistry()
        try:
            failures = registry.load_entry_points()
        finally:
            _loading = None
        for failure in failures:
            log.warning("pclasses: %s (skipped)", failure)
        _failures[:] = failures
        _registry = registry
        return registry


def entry_point_failures() -> list[EntryPointFailure]:
    """The entry points the process registry could not use (logged when read)."""
    return list(_failures)


def class_factory(connection: Any, modulename: str, globalname: str) -> Any:
    """A ZODB class factory resolving through :func:`process_registry`.

    Name it in ZConfig as ``class-factory pclasses.class_factory``, or pass
    it as ``ZODB.DB(storage, class_factory=pclasses.class_factory)``.
    """
    registry = _registry or process_registry()
    factory = registry.class_factory
    reader = getattr(connection, "_reader", None)
    if reader is not None and getattr(reader, "_factory", None) is class_factory:
        # This connection's later lookups go straight to the registry.
        reader._factory = factory
        db = getattr(connection, "_db", None)
        if db is not None:
            registry.adopt(db)
    return factory(connection, modulename, globalname)


def _reset() -> None:
    """Forget the process registry (tests only: the next use makes a new one)."""
    global _registry
    with _lock:
        _registry = None
        _failures.clear()
