"""Which modules inspection may import, and what is known of the others.

At run time the registry is ZODB's class factory and imports the modules a
record names, as ZODB does: the database content is the application's own.
Inspection (``classes``, ``broken``, export's class listing, import's checks)
reads databases and files that may not be trusted, so resolving a name must
not run the top-level code of a module the data chooses.  Under a
:class:`Trust` a module may be imported only when

* it is already imported (nothing runs: its attribute is read);
* it belongs to an installed distribution that is not part of the standard
  library (the application's own packages, as a Zope or Plone site installs
  them), found with :func:`importlib.metadata.packages_distributions`;
* or the operator named its package (``trust=[...]``, ``--trust PKG``).

Never imported, whatever the rules say: ``__main__`` modules (``pkg.__main__``
runs a program) and standard-library modules not already imported.  Every
other module is *located* without running anything: the path finder looks
for it in the search locations of its parents (``sys.path`` for a top-level
name, a parent's ``__path__`` when the parent is imported, else the parent's
own spec), and no parent package is imported on the way.  A module found this
way is reported as found but not imported (it exists, so it is not broken);
one not found is missing.  Whatever an allowed import raises, ``SystemExit``
and ``KeyboardInterrupt`` included, becomes the outcome's error.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Trust", "Outcome", "DEFAULT_TRUST", "as_trust", "locate", "is_stdlib",
           "installed_packages", "forget_installed"]

#: Outcome kinds.
IMPORTED = "imported"
NOT_IMPORTED = "not-imported"
BROKEN = "broken"


@dataclass(frozen=True)
class Outcome:
    """What :meth:`Trust.load` learned about ``module.name``.

    ``kind`` is ``"imported"`` (``target`` is the object), ``"not-imported"``
    (the module exists at ``location`` but was not run) or ``"broken"``
    (``error`` says why).
    """

    kind: str
    target: Any = None
    error: str | None = None
    location: str | None = None


def is_stdlib(module: str) -> bool:
    """Whether ``module`` is part of the standard library (by its top-level name)."""
    top = module.partition(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def _is_main(module: str) -> bool:
    return "__main__" in module.split(".")


@functools.lru_cache(maxsize=1)
def installed_packages() -> frozenset[str]:
    """Top-level import names of installed distributions, standard library excluded."""
    from importlib.metadata import packages_distributions

    try:
        names = packages_distributions()
    except Exception:  # a broken distribution's metadata: trust nothing more
        return frozenset()
    return frozenset(n for n in names if n.isidentifier() and not is_stdlib(n))


def forget_installed() -> None:
    """Read the installed distributions again next time (after installing one)."""
    installed_packages.cache_clear()


def locate(module: str) -> tuple[bool, str]:
    """Whether ``module`` exists, found without importing it or its parents.

    Returns ``(found, where_or_why)``: the module's origin (or search
    location) when found, the reason otherwise.
    """
    parts = module.split(".")
    if not all(p.isidentifier() for p in parts):
        return False, f"{module!r} is not a module name"
    path: list[str] | None = None
    origin = ""
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        mod = sys.modules.get(name)
        if mod is not None:
            origin = getattr(mod, "__file__", None) or name
            path = getattr(mod, "__path__", None)
        else:
            try:
                if i == 0:
                    spec = importlib.machinery.PathFinder.find_spec(name)
                    if spec is None:
                        for finder in (importlib.machinery.BuiltinImporter,
                                       importlib.machinery.FrozenImporter):
                            spec = finder.find_spec(name)
                            if spec is not None:
                                break
                else:
                    spec = (importlib.machinery.PathFinder.find_spec(name, list(path))
                            if path is not None else None)
            except Exception as exc:  # unreadable directories, odd path hooks
                return False, f"{name}: {type(exc).__name__}: {exc}"
            if spec is None:
                return False, f"No module named {name!r}"
            locations = spec.submodule_search_locations
            origin = spec.origin or (list(locations)[0] if locations else name)
            path = list(locations) if locations is not None else None
        if i < len(parts) - 1 and path is None:
            return False, f"No module named {'.'.join(parts[: i + 2])!r} ({name} is not a package)"
    return True, str(origin)


@dataclass(frozen=True)
class Trust:
    """The modules inspection may import.

    ``packages``: names of packages (or modules) the operator trusts, each
    covering its submodules.  ``installed``: whether the modules of
    installed non-standard-library distributions are trusted (default yes).
    """

    packages: tuple[str, ...] = ()
    installed: bool = True

    def may_import(self, module: str) -> bool:
        """Whether inspection may import ``module`` (not yet imported)."""
        if _is_main(module) or is_stdlib(module):
            return False
        for pkg in self.packages:
            if module == pkg or module.startswith(pkg + "."):
                return True
        return self.installed and module.partition(".")[0] in installed_packages()

    def load(self, module: str, name: str) -> Outcome:
        """Find ``module.name`` under these rules; never raises."""
        mod = sys.modules.get(module)
        if mod is None:
            if module in sys.modules:  # None: imports of it are blocked
                return Outcome(BROKEN, error=f"ImportError: import of {module} halted")
            if not self.may_import(module):
                found, where = locate(module)
                if found:
                    return Outcome(NOT_IMPORTED, location=where)
                return Outcome(BROKEN, error=f"ModuleNotFoundError: {where}")
            try:
                mod = importlib.import_module(module)
            except BaseException as exc:  # SystemExit and KeyboardInterrupt too
                return Outcome(BROKEN, error=f"{type(exc).__name__}: {exc}")
        obj: Any = mod
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except BaseException as exc:  # a module __getattr__ may raise anything
            return Outcome(BROKEN, error=f"{type(exc).__name__}: {exc}")
        return Outcome(IMPORTED, target=obj)


#: The rules inspection uses when the caller names nothing more.
DEFAULT_TRUST = Trust()


def as_trust(value: Trust | Iterable[str] | str | None) -> Trust:
    """A :class:`Trust` from ``None`` (the default), package names, or a Trust."""
    if value is None:
        return DEFAULT_TRUST
    if isinstance(value, Trust):
        return value
    if isinstance(value, str):
        value = [value]
    packages = tuple(str(v).strip() for v in value if str(v).strip())
    return Trust(packages=packages) if packages else DEFAULT_TRUST
