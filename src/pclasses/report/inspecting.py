"""Databases opened for a report load objects without importing what the data names.

Most of a report reads records with the record engine, but a few steps load
objects through connections: the handles a tree keeps in its root, the
reference registries.  Loading a record makes ZODB ask the class factory for
the classes it names, including those of the references it holds, and a
registry installed as class factory imports modules as ZODB does: a root
naming ``some_module.Thing`` would import ``some_module`` (and run its
top-level code) although the census only *locates* it.

:class:`Inspecting` stands in for the registry where the report opens
databases (the target and every child of a tree): it installs the registry,
then replaces the class factory with lookups in inspection mode
(:meth:`ClassRegistry.inspect` with :mod:`pclasses.trust`), so a module the
data chooses is never imported; what does not resolve, or is not trusted,
loads as a broken class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..broken import make_broken_class
from ..registry import ClassRegistry
from ..trust import as_trust

__all__ = ["Inspecting"]


class Inspecting:
    """A registry for :func:`pclasses.database.open` whose class factory imports
    only modules :mod:`pclasses.trust` allows (plus ``trust``)."""

    def __init__(self, registry: ClassRegistry, trust: Iterable[str] = ()) -> None:
        self.registry = registry
        rules = as_trust(tuple(trust))
        broken: dict[tuple[str, str], type] = {}

        def factory(connection: Any, module: str, name: str) -> Any:
            res = registry.inspect(module, name, connection, trust=rules)
            if res.target is not None and res.how != "not-imported":
                return res.target
            key = (module, name)
            if key not in broken:
                broken[key] = make_broken_class(module, name)
            return broken[key]

        factory.registry = registry  # type: ignore[attr-defined]  # as the registry's own
        self.factory: Callable[[Any, str, str], Any] = factory

    def install(self, db: Any) -> Any:
        """Install the registry on ``db``, then the inspecting class factory."""
        self.registry.install(db)
        for each in set((getattr(db, "databases", None) or {None: db}).values()) | {db}:
            each.classFactory = self.factory
            connection_map = getattr(each, "_connectionMap", None)
            if connection_map is not None:  # connections made already (DB() keeps one)
                connection_map(self._set)
        return db

    def _set(self, connection: Any) -> None:
        reader = getattr(connection, "_reader", None)
        if reader is not None:
            reader._factory = self.factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self.registry, name)
