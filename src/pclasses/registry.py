"""The class-factory registry.

A :class:`ClassRegistry` stands in for ``ZODB.DB.classFactory``: ZODB calls
it as ``factory(connection, module, name)`` for every global a record names
(the record's class, classes of references, functions used in reduces).

Resolution order for ``module.name``:

1. explicit registrations (:meth:`ClassRegistry.register`);
2. class aliases (:meth:`ClassRegistry.alias`), followed as a chain;
3. module aliases (:meth:`ClassRegistry.alias_module`, by prefix), after
   which steps 1-3 run again on the new name;
4. database-resident classes: a guid module is looked up in the class table
   of the connection asking (see :mod:`pclasses.classtable`);
5. importing the module (Python 2 names are mapped first, as ZODB does);
6. a broken class (ZODB's ``Broken`` family).

Results that do not depend on the connection are cached in one dict, read
without a lock (ZODB calls the factory from every connection's thread).
Broken results are cached separately so each one is still counted, and
:meth:`ClassRegistry.broken` reports them.  Registering, unregistering and
aliasing drop exactly the cached entries whose resolution passed through the
changed name; :meth:`ClassRegistry.refresh` drops everything, for modules
that became importable.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import threading
import time
import types
import weakref
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .broken import make_broken_class
from .classtable import NOT_RESIDENT, is_guid_module, resolve_resident
from .connection import install as install_connection
from .errors import AliasCycleError, RegistrationError
from .reattach import ReattachReport
from .reattach import reattach as reattach_objects
from .trust import Trust, as_trust, forget_installed

__all__ = ["ClassRegistry", "Resolution", "BrokenRecord", "EntryPointFailure"]

#: Entry-point groups read by :meth:`ClassRegistry.load_entry_points`.
ENTRY_POINT_CLASSES = "pclasses.classes"
ENTRY_POINT_ALIASES = "pclasses.aliases"
ENTRY_POINT_MODULE_ALIASES = "pclasses.module_aliases"
ENTRY_POINT_ZODBUPDATE = "zodbupdate"

_MAX_CHAIN = 64

_MISSING = object()

Key = tuple[str, str]


def _split(dotted: str, what: str = "name") -> Key:
    if not isinstance(dotted, str):
        raise RegistrationError(f"{what} must be a dotted string, got {type(dotted).__name__}")
    module, sep, name = dotted.rpartition(".")
    if not sep or not module or not name:
        raise RegistrationError(f"{what} {dotted!r} is not a dotted 'module.Name'")
    return module, name


def _dotted(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RegistrationError(f"{what} must be a dotted string, got {type(value).__name__}")
    return value


def _check_module(module: str, what: str) -> str:
    if not isinstance(module, str) or not module or module.startswith(".") or module.endswith("."):
        raise RegistrationError(f"{what} {module!r} is not a module name")
    return module


def _from_zodbupdate(text: str) -> str:
    """``'old.module OldName'`` (zodbupdate's rule format) to a dotted name."""
    text = text.strip()
    if " " in text:
        module, _, name = text.partition(" ")
        return f"{module.strip()}.{name.strip()}"
    return text


@dataclass(frozen=True)
class Resolution:
    """How a name resolves; returned by :meth:`ClassRegistry.explain`.

    ``how`` is one of ``"registered"``, ``"aliased"``, ``"imported"``,
    ``"database-resident"``, ``"broken"``, and under :meth:`ClassRegistry.inspect`
    also ``"not-imported"`` (the module exists at ``location`` but was not
    run: not trusted); ``chain`` the dotted names followed (the first is the
    name asked for); ``target`` the object it resolves to (``None`` when
    not imported); ``error`` why it is broken.
    """

    module: str
    name: str
    how: str
    chain: tuple[str, ...]
    target: Any = field(compare=False, repr=False)
    error: str | None = None
    #: Depends on the connection's class table, so never cached globally.
    resident: bool = field(default=False, compare=False)
    #: Where a module that was not imported was found.
    location: str | None = None
    #: ``(module name, sys.modules entry, attribute)`` an import step
    #: consulted (the registry's cache checks it is still current).
    source: tuple[str, Any, str] | None = field(default=None, compare=False, repr=False)

    @property
    def resolved(self) -> str:
        """The dotted name at the end of the chain."""
        return self.chain[-1]

    @property
    def ok(self) -> bool:
        return self.how != "broken"

    def __str__(self) -> str:
        name = f"{self.module}.{self.name}"
        if self.how == "aliased":
            return f"{name}: aliased ({' -> '.join(self.chain)})"
        if self.how == "broken":
            return f"{name}: broken ({self.error})"
        if self.how == "database-resident":
            return f"{name}: database-resident"
        if self.how == "not-imported":
            return f"{name}: not imported (module found at {self.location}; not trusted)"
        return f"{name}: {self.how}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "name": self.name,
            "how": self.how,
            "chain": list(self.chain),
            "error": self.error,
            "location": self.location,
        }


@dataclass
class BrokenRecord:
    """One name that resolved to a broken class: how often and since when."""

    module: str
    name: str
    count: int
    first_seen: float
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "name": self.name,
            "count": self.count,
            "first_seen": self.first_seen,
            "error": self.error,
        }


@dataclass(frozen=True)
class EntryPointFailure:
    """An entry point that could not be used; reported, never fatal."""

    group: str
    name: str
    value: str
    error: str

    def __str__(self) -> str:
        return f"entry point {self.name!r} in group {self.group!r} ({self.value}): {self.error}"


class ClassRegistry:
    """A ZODB class factory with registrations, aliases and broken-class caching.

    Install it on a database with :meth:`install`, or pass it to
    :func:`pclasses.open`.  It is safe to call from many threads at once.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._registered: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}
        self._module_aliases: dict[str, str] = {}
        # key -> (resolved object, module name, module, module.__dict__,
        # attribute): connection-independent results only.  A hit is used
        # only while ``sys.modules[module name]`` is still that module and
        # its ``attribute`` is still the object (so a module that left
        # sys.modules, or was reloaded, is resolved again).  A registration
        # is checked against ``builtins`` and a one-entry dict: always valid.
        self._cache: dict[Key, tuple[Any, str, Any, Mapping[str, Any], str]] = {}
        # The same entries as two levels, module name then global name: what
        # the factory reads (two lookups of the unpickler's fresh strings
        # cost less than building, hashing and comparing a key tuple).
        self._fast: dict[str, dict[str, tuple[Any, str, Any, Mapping[str, Any], str]]] = {}
        # key -> chain of dotted names the resolution consulted
        self._chains: dict[Key, tuple[str, ...]] = {}
        # key -> broken class (kept across refreshes so identity is stable)
        self._broken_classes: dict[Key, type] = {}
        # key -> (broken class, error, module name, sys.modules entry then)
        # for names currently resolving broken; used while that entry of
        # sys.modules is unchanged (a module imported since is retried)
        self._broken_cache: dict[Key, tuple[type, str, str | None, Any]] = {}
        self._broken_seen: dict[Key, BrokenRecord] = {}
        self._generation = 0
        self._databases: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Resolver for database-resident classes:
        #: ``resolver(connection, module, name) -> class | None | NOT_RESIDENT``.
        self.resident_resolver: Callable[[Any, str, str], Any] | None = resolve_resident
        self.class_factory = self._make_factory()

    # -- the factory -------------------------------------------------------

    def _make_factory(self) -> Callable[[Any, str, str], Any]:
        modules = sys.modules
        slow = self._lookup

        def class_factory(cache: dict[str, dict[str, Any]], connection: Any, modulename: str,
                          globalname: str) -> Any:
            # Subscriptions only (no calls): a miss anywhere is a KeyError.
            # The hit is checked against the module as it is now: still
            # ``sys.modules[source]`` (not removed, not replaced) and its
            # ``attr`` still the object (not reloaded).
            try:
                target, source, module, namespace, attr = cache[modulename][globalname]
                if modules[source] is module and namespace[attr] is target:
                    return target
            except KeyError:
                pass
            return slow(connection, modulename, globalname)

        class_factory.registry = self  # type: ignore[attr-defined]
        # A method bound to the cache, as ZODB's default factory is a bound
        # method of the database: code that checks for a method sees one,
        # and the cache arrives as an argument.  ``factory.registry`` reads
        # the function's attribute.
        return types.MethodType(class_factory, self._fast)

    def __call__(self, connection: Any, modulename: str, globalname: str) -> Any:
        """Return the class (or other global) ``modulename.globalname``."""
        return self.class_factory(connection, modulename, globalname)

    def find_global(self, modulename: str, globalname: str) -> Any:
        """Resolve without a connection (database-resident names resolve broken)."""
        return self(None, modulename, globalname)

    def _lookup(self, connection: Any, module: str, name: str) -> Any:
        key = (module, name)
        if (
            is_guid_module(module)
            and self.resident_resolver is resolve_resident
            and not self._registered
            and not self._aliases
        ):
            # The common case for database-resident classes: straight to the
            # connection's class table (never cached: it is per database).
            target = resolve_resident(connection, module, name)
            if target is not None:
                return target
        hit = self._broken_cache.get(key)
        if hit is not None and (hit[2] is None or sys.modules.get(hit[2]) is hit[3]):
            self._note_broken(key, hit[1])
            return hit[0]
        generation = self._generation
        res = self._resolve(connection, module, name)
        if res.resident:
            if res.how == "broken":
                self._note_broken(key, res.error)
            return res.target
        source = res.source
        with self._lock:
            if generation == self._generation:
                if res.how == "broken":
                    if source is None:  # e.g. an alias cycle: not about a module
                        self._broken_cache[key] = (res.target, res.error or "", None, None)
                    else:
                        self._broken_cache[key] = (res.target, res.error or "", source[0],
                                                   source[1])
                    self._chains[key] = res.chain
                elif source is None:  # a registration
                    self._store(key, (res.target, "builtins", builtins, {"": res.target}, ""))
                    self._chains[key] = res.chain
                elif source[1] is not None and "." not in source[2]:
                    # (a dotted ``Outer.Inner`` is resolved each time: rare)
                    mod_name, mod, attr = source
                    namespace = getattr(mod, "__dict__", None)
                    if isinstance(namespace, dict):
                        self._store(key, (res.target, mod_name, mod, namespace, attr))
                        self._chains[key] = res.chain
        if res.how == "broken":
            self._note_broken(key, res.error)
        return res.target

    def _store(self, key: Key, entry: tuple[Any, str, Any, Mapping[str, Any], str]) -> None:
        """Cache a connection-independent result (lock held)."""
        self._cache[key] = entry
        inner = self._fast.get(key[0])
        if inner is None:
            inner = self._fast[key[0]] = {}
        inner[key[1]] = entry

    def _note_broken(self, key: Key, error: str | None) -> None:
        rec = self._broken_seen.get(key)
        if rec is None:
            with self._lock:
                rec = self._broken_seen.get(key)
                if rec is None:
                    self._broken_seen[key] = BrokenRecord(key[0], key[1], 1, time.time(), error)
                    return
        rec.count += 1  # a lost increment under a race is acceptable for a tally

    # -- resolution ---------------------------------------------------------

    def _resolve(self, connection: Any, module: str, name: str,
                 trust: Trust | None = None) -> Resolution:
        asked = (module, name)
        if not isinstance(module, str) or not isinstance(name, str):
            return self._broken(asked, (f"{module}.{name}",), "names must be strings")
        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[(module, name)]
        if module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        dotted = f"{module}.{name}"
        chain = [f"{asked[0]}.{asked[1]}"]
        if dotted != chain[0]:
            chain.append(dotted)
        aliased = False
        registered = self._registered
        aliases = self._aliases
        while True:
            if len(chain) > _MAX_CHAIN or dotted in chain[:-1]:
                return self._broken(asked, tuple(chain), "alias cycle: " + " -> ".join(chain))
            target = registered.get(dotted, _MISSING)  # one read: no race with unregister
            if target is not _MISSING:
                return Resolution(asked[0], asked[1], "aliased" if aliased else "registered",
                                  tuple(chain), target)
            new = aliases.get(dotted)
            if new is None:
                new = self._module_alias(module, name)
            if new is None:
                break
            aliased = True
            dotted = new
            module, name = _split(new)
            chain.append(dotted)
        resolver = self.resident_resolver
        if resolver is not None:
            target = resolver(connection, module, name)
            if target is not NOT_RESIDENT:
                if target is None:
                    res = self._broken(
                        asked, tuple(chain),
                        f"database-resident class {dotted} is not in the class table")
                    return Resolution(res.module, res.name, res.how, res.chain, res.target,
                                      res.error, resident=True)
                return Resolution(asked[0], asked[1], "database-resident", tuple(chain), target,
                                  resident=True)
        if trust is not None:  # inspection: run no module code the data chooses
            outcome = trust.load(module, name)
            if outcome.kind == "broken":
                return self._broken(asked, tuple(chain), outcome.error or "")
            if outcome.kind == "not-imported":
                return Resolution(asked[0], asked[1], "not-imported", tuple(chain), None,
                                  location=outcome.location)
            target = outcome.target
        else:
            try:
                target = _import(module, name)
            except Exception as exc:  # ImportError, AttributeError, errors raised by the module
                res = self._broken(asked, tuple(chain), f"{type(exc).__name__}: {exc}")
                return Resolution(res.module, res.name, res.how, res.chain, res.target,
                                  res.error, source=(module, sys.modules.get(module), name))
        how = "aliased" if aliased else "imported"
        return Resolution(asked[0], asked[1], how, tuple(chain), target,
                          source=(module, sys.modules.get(module), name))

    def _module_alias(self, module: str, name: str) -> str | None:
        maliases = self._module_aliases
        if not maliases:
            return None
        prefix = module
        while True:
            new = maliases.get(prefix)
            if new is not None:
                return f"{new}{module[len(prefix):]}.{name}"
            prefix, sep, _ = prefix.rpartition(".")
            if not sep:
                return None

    def _broken(self, asked: Key, chain: tuple[str, ...], error: str) -> Resolution:
        module, name = asked
        with self._lock:
            cls = self._broken_classes.get((module, name))
            if cls is None:
                cls = self._broken_classes[(module, name)] = make_broken_class(module, name)
        return Resolution(asked[0], asked[1], "broken", chain, cls, error)

    def explain(self, module: str, name: str, connection: Any = None) -> Resolution:
        """Say how ``module.name`` resolves, with the chain followed.

        This is the run-time resolution: modules are imported as ZODB's
        class factory imports them.  Tools that read untrusted data use
        :meth:`inspect`.
        """
        return self._resolve(connection, module, name)

    def inspect(self, module: str, name: str, connection: Any = None, *,
                trust: Trust | Iterable[str] | None = None) -> Resolution:
        """Say how ``module.name`` resolves without running module code the data chooses.

        Registrations, aliases and database-resident classes resolve as at
        run time; a module is imported only as :class:`pclasses.trust.Trust`
        allows (already imported, an installed non-standard-library
        distribution, or a package named in ``trust``).  Any other module is
        located without being run: found, the name resolves
        ``"not-imported"`` (not broken; ``location`` says where); not found,
        broken.  Nothing raised by an import escapes (``SystemExit``
        included): the name resolves broken with the error.  Nothing is
        cached.
        """
        return self._resolve(connection, module, name, as_trust(trust))

    # -- registrations ------------------------------------------------------

    def register(self, cls: Any, name: str | None = None) -> None:
        """Resolve ``name`` (default: ``cls.__module__ + '.' + cls.__name__``) to ``cls``.

        Registering a name again replaces the earlier registration.
        """
        if name is None:
            try:
                name = f"{cls.__module__}.{cls.__name__}"
            except AttributeError:
                raise RegistrationError(
                    f"{cls!r} has no __module__/__name__; pass name='module.Name'"
                ) from None
        _split(name)
        with self._lock:
            self._registered[name] = cls
            self._invalidate(name)
        self._after_change()

    def unregister(self, name: str) -> None:
        """Forget a registration; unknown names are ignored."""
        with self._lock:
            if self._registered.pop(name, _MISSING) is not _MISSING:
                self._invalidate(name)

    def alias(self, old: str, new: str) -> None:
        """Resolve the dotted name ``old`` as ``new`` (which may itself be an alias).

        Both also accept zodbupdate's ``'module Name'`` form.  Repeating an
        identical alias does nothing; an alias that would close a cycle
        raises :class:`~pclasses.errors.AliasCycleError` and changes nothing.
        """
        old = _from_zodbupdate(_dotted(old, "alias source"))
        new = _from_zodbupdate(_dotted(new, "alias target"))
        _split(old, "alias source")
        _split(new, "alias target")
        with self._lock:
            if self._aliases.get(old) == new:
                return
            if old == new:
                raise AliasCycleError([old, new])
            previous: Any = self._aliases.get(old, _MISSING)
            self._aliases[old] = new
            cycle = self._find_cycle([old])
            if cycle is not None:
                if previous is _MISSING:
                    del self._aliases[old]
                else:
                    self._aliases[old] = previous
                raise AliasCycleError(cycle)
            self._invalidate(old)
        self._after_change()

    def unalias(self, old: str) -> None:
        """Remove a class alias; unknown names are ignored."""
        old = _from_zodbupdate(_dotted(old, "alias source"))
        with self._lock:
            if self._aliases.pop(old, None) is not None:
                self._invalidate(old)

    def alias_module(self, old: str, new: str) -> None:
        """Resolve every ``old.<rest>.Name`` as ``new.<rest>.Name`` (by prefix).

        A module alias that would close a cycle, alone or together with
        other module or class aliases, raises
        :class:`~pclasses.errors.AliasCycleError` and changes nothing.
        """
        _check_module(old, "module alias source")
        _check_module(new, "module alias target")
        with self._lock:
            if self._module_aliases.get(old) == new:
                return
            if old == new or new.startswith(old + "."):
                raise AliasCycleError([old, new])
            previous: Any = self._module_aliases.get(old, _MISSING)
            self._module_aliases[old] = new
            # Any new cycle passes through this rule, so it starts under
            # `old`: probe a name directly under it, and the names under it
            # that other rules (reached through `new`) send elsewhere.
            probes = [f"{old}.__pclasses_probe__"]
            prefix = new + "."
            for key in list(self._module_aliases):
                if key == new or key.startswith(prefix):
                    probes.append(f"{old}{key[len(new):]}.__pclasses_probe__")
            for key in list(self._aliases):
                if key.startswith(prefix):
                    probes.append(old + key[len(new):])
            cycle = self._find_cycle(probes)
            if cycle is not None:
                if previous is _MISSING:
                    del self._module_aliases[old]
                else:
                    self._module_aliases[old] = previous
                probe = ".__pclasses_probe__"
                raise AliasCycleError([c[: -len(probe)] if c.endswith(probe) else c
                                       for c in cycle])
            self._invalidate_module(old)
        self._after_change()

    def unalias_module(self, old: str) -> None:
        """Remove a module alias; unknown names are ignored."""
        with self._lock:
            if self._module_aliases.pop(old, None) is not None:
                self._invalidate_module(old)

    def _find_cycle(self, starts: Iterable[str]) -> list[str] | None:
        """Follow the rules from each start; the chain of the first cycle found."""
        for dotted in starts:
            chain = [dotted]
            seen = {dotted}
            while True:
                if dotted in self._registered:
                    break
                nxt = self._aliases.get(dotted)
                if nxt is None:
                    module, name = _split(dotted)
                    nxt = self._module_alias(module, name)
                if nxt is None:
                    break
                chain.append(nxt)
                if nxt in seen or len(chain) > _MAX_CHAIN:
                    return chain[chain.index(nxt):] if nxt in seen else chain
                seen.add(nxt)
                dotted = nxt
        return None

    @property
    def registrations(self) -> Mapping[str, Any]:
        return dict(self._registered)

    @property
    def aliases(self) -> Mapping[str, str]:
        return dict(self._aliases)

    @property
    def module_aliases(self) -> Mapping[str, str]:
        return dict(self._module_aliases)

    # -- cache invalidation -------------------------------------------------

    def _invalidate(self, dotted: str) -> None:
        """Drop cached results whose resolution consulted ``dotted`` (lock held)."""
        self._generation += 1
        self._drop(lambda chain: dotted in chain)

    def _invalidate_module(self, module: str) -> None:
        self._generation += 1
        prefix = module + "."

        def hit(chain: tuple[str, ...]) -> bool:
            return any(d.startswith(prefix) for d in chain)

        self._drop(hit)

    def _drop(self, hit: Callable[[tuple[str, ...]], bool]) -> None:
        for key, chain in list(self._chains.items()):
            if hit(chain):
                self._cache.pop(key, None)
                inner = self._fast.get(key[0])
                if inner is not None:
                    inner.pop(key[1], None)
                self._broken_cache.pop(key, None)
                del self._chains[key]

    def refresh(self) -> None:
        """Forget every cached resolution (e.g. after installing a package)."""
        with self._lock:
            self._generation += 1
            self._cache.clear()
            self._fast.clear()
            self._broken_cache.clear()
            self._chains.clear()
            importlib.invalidate_caches()
            forget_installed()
        self._after_change()

    # -- live reattachment --------------------------------------------------

    #: Whether registering, aliasing and :meth:`refresh` reattach broken
    #: objects of the installed databases right away.
    auto_reattach = True

    def reattach(self) -> ReattachReport:
        """Turn broken objects whose class resolves now back into real ones.

        Every name that resolved broken is resolved again first (its module
        import is retried, so an add-on reinstalled in the running process
        is found without :meth:`refresh`).  Covers every connection of the
        installed databases, open or idle in the pool; publishes a
        ``ClassReattached`` event per class.  Returns a
        :class:`~pclasses.reattach.ReattachReport`.
        """
        self._retry_broken()
        return self._reattach()

    def _reattach(self) -> ReattachReport:
        return reattach_objects(self.class_factory, self._broken_classes_snapshot(),
                                self.databases)

    def _retry_broken(self) -> None:
        """Forget the cached broken resolutions, so the next lookup retries them."""
        with self._lock:
            if not self._broken_cache:
                return
            self._generation += 1
            for key in list(self._broken_cache):
                del self._broken_cache[key]
                self._chains.pop(key, None)
            importlib.invalidate_caches()

    def _broken_classes_snapshot(self) -> dict[Key, type]:
        with self._lock:
            return dict(self._broken_classes)

    def _after_change(self) -> None:
        # The change itself dropped the affected cache entries: no retry of
        # every other broken name here.
        if self.auto_reattach and self._broken_classes and self._databases:
            self._reattach()

    # -- broken tally -------------------------------------------------------

    def broken(self) -> list[BrokenRecord]:
        """Every name that resolved to a broken class, with counts and first-seen times."""
        with self._lock:
            return [BrokenRecord(r.module, r.name, r.count, r.first_seen, r.error)
                    for r in self._broken_seen.values()]

    def is_broken_name(self, module: str, name: str, connection: Any = None) -> bool:
        return self.explain(module, name, connection).how == "broken"

    # -- databases ----------------------------------------------------------

    def install(self, db: Any) -> Any:
        """Make this registry the class factory of ``db`` (a ``ZODB.DB``).

        Every database of ``db``'s multi-database gets it, with the
        package's connection class (:func:`pclasses.connection.install`).
        Returns ``db``.
        """
        dbs = getattr(db, "databases", None) or {None: db}
        factory = self.class_factory
        for each in set(dbs.values()) | {db}:
            each.classFactory = factory
            # Connections already made (``DB()`` itself opens one to create
            # the root, and pools it) captured the old factory.
            connection_map = getattr(each, "_connectionMap", None)
            if connection_map is not None:
                connection_map(lambda c: _set_factory(c, factory))
            self._databases.add(each)
        install_connection(db)
        return db

    def adopt(self, db: Any) -> None:
        """Count ``db`` among this registry's databases (for :meth:`reattach`)
        without changing its class factory or connection class: for a
        database that names the registry's factory itself, as ZConfig's
        ``class-factory`` does (:func:`pclasses.class_factory`)."""
        if db not in self._databases:
            self._databases.add(db)

    @property
    def databases(self) -> list[Any]:
        """The databases this registry is installed on (while they exist)."""
        return list(self._databases)

    # -- entry points -------------------------------------------------------

    def load_entry_points(self) -> list[EntryPointFailure]:
        """Read registrations and rename rules from installed distributions.

        Groups: ``pclasses.classes`` (the entry point loads a class; its name,
        when dotted, is the name records use), ``pclasses.aliases`` (loads a
        mapping of old to new dotted names), ``pclasses.module_aliases``
        (a mapping of old to new module names), and ``zodbupdate`` (mappings
        of ``'old.module OldName'`` to ``'new.module NewName'``, as shipped
        for zodbupdate).  Returns the entry points that failed; each failure
        is skipped, never fatal.
        """
        failures: list[EntryPointFailure] = []
        for group, handler in (
            (ENTRY_POINT_CLASSES, self._ep_class),
            (ENTRY_POINT_ALIASES, self._ep_aliases),
            (ENTRY_POINT_MODULE_ALIASES, self._ep_module_aliases),
            (ENTRY_POINT_ZODBUPDATE, self._ep_aliases),
        ):
            for ep in _entry_points(group):
                try:
                    handler(ep.name, ep.load())
                except Exception as exc:
                    failures.append(EntryPointFailure(group, ep.name, ep.value,
                                                      f"{type(exc).__name__}: {exc}"))
        return failures

    def _ep_class(self, name: str, obj: Any) -> None:
        self.register(obj, name if "." in name else None)

    def _ep_aliases(self, name: str, rules: Any) -> None:
        if not isinstance(rules, Mapping):
            raise RegistrationError(
                f"expected a mapping of rename rules, got {type(rules).__name__}")
        for old, new in rules.items():
            self.alias(old, new)

    def _ep_module_aliases(self, name: str, rules: Any) -> None:
        if not isinstance(rules, Mapping):
            raise RegistrationError(
                f"expected a mapping of module names, got {type(rules).__name__}")
        for old, new in rules.items():
            self.alias_module(old, new)

    def rename_target(self, module: str, name: str) -> tuple[str, str] | None:
        """Where the class and module aliases send ``module.name``, or ``None``.

        Registrations and imports are not consulted: this is the pure rename
        rule, as offline repair applies it to records.
        """
        dotted = f"{module}.{name}"
        seen = {dotted}
        moved = False
        while True:
            nxt = self._aliases.get(dotted)
            if nxt is None:
                nxt = self._module_alias(module, name)
            if nxt is None or nxt in seen or len(seen) > _MAX_CHAIN:
                break
            seen.add(nxt)
            dotted = nxt
            module, name = _split(nxt)
            moved = True
        return (module, name) if moved else None

    def rename_rules(self) -> dict[str, str]:
        """The class aliases as a plain ``{old: new}`` dict (for offline repair)."""
        return dict(self._aliases)

    def update(self, aliases: Iterable[tuple[str, str]] = ()) -> None:
        for old, new in aliases:
            self.alias(old, new)


def _set_factory(connection: Any, factory: Any) -> None:
    reader = getattr(connection, "_reader", None)
    if reader is not None:
        reader._factory = factory


def _entry_points(group: str) -> list[Any]:
    from importlib.metadata import entry_points

    seen: set[tuple[str, str]] = set()
    result = []
    for ep in entry_points(group=group):
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        result.append(ep)
    return result


def _import(module: str, name: str) -> Any:
    mod = sys.modules.get(module)
    if mod is None:
        mod = importlib.import_module(module)
    obj: Any = mod
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj
