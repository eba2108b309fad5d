"""Which globals an imported record may name, and how it may use them.

The import's check pass collects every global the records name with how
they use it (the analyzer's use flags) and asks :func:`check_globals` once;
the answer is the list of missing classes and the set of refused globals.
Globals a record may name: classes (as the target's registry resolves
them) and :data:`ALLOWED_GLOBALS`, a short list of pickle helpers and
builtin types.  Classes of the standard library and of infrastructure
packages may not be *called*.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from ..classtable import GUID_PREFIX, is_guid_module
from ..record.analyze import Use
from ..registry import ClassRegistry
from ..trust import Trust

__all__ = ["ALLOWED_GLOBALS", "REFUSED_PREFIX", "CALLED_BY_RECONSTRUCTOR", "RECONSTRUCTORS",
           "USE_CALLED", "USE_ARGUMENT", "check_globals"]

#: Globals a record may name besides classes: pickle helpers and builtin
#: types whose construction runs no application or system code.
ALLOWED_GLOBALS = frozenset({
    ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"),
    ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__"),
    ("builtins", "object"), ("__builtin__", "object"),
    ("builtins", "set"), ("__builtin__", "set"),
    ("builtins", "frozenset"), ("__builtin__", "frozenset"),
    ("builtins", "complex"), ("__builtin__", "complex"),
    ("builtins", "bytearray"), ("__builtin__", "bytearray"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"),
    ("builtins", "bytes"), ("builtins", "bool"), ("__builtin__", "list"),
    ("__builtin__", "dict"), ("__builtin__", "tuple"),
    ("_codecs", "encode"),
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("datetime", "tzinfo"),
    ("decimal", "Decimal"),
    ("collections", "OrderedDict"), ("collections", "deque"),
    # zope.interface declarations (``__provides__``) pickle as a call of this
    # reconstructor, which only builds a declaration from interfaces.
    ("zope.interface.declarations", "Provides"),
    # A remote reference of a tree of databases (pclasses.tree.reference):
    # its constructor only checks and keeps its four arguments.
    ("pclasses.tree.reference", "RemoteReference"),
})

USE_CALLED = Use.REDUCE | Use.INSTANTIATE  # REDUCE callable, INST/OBJ class
USE_ARGUMENT = Use.OTHER  # passed as a value (e.g. to copyreg._reconstructor)
RECONSTRUCTORS = {("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")}
#: Marks a class passed as an argument in a record that also calls
#: ``copyreg._reconstructor`` (set by the check pass, not by the analyzer).
CALLED_BY_RECONSTRUCTOR = 1 << 10

#: Top-level packages whose classes an imported record may not *call*
#: (REDUCE, INST, OBJ, or as a ``copyreg._reconstructor`` argument, whose
#: ``base.__init__`` runs): the standard library and the database and
#: framework infrastructure, whose constructors open files, sockets and
#: storages.  Application classes may be called, as their own
#: ``__reduce__`` asks.
INFRASTRUCTURE = frozenset({
    "ZODB", "ZEO", "persistent", "BTrees", "transaction", "zc", "zope", "ZConfig",
    "zodbpickle", "zodburi", "relstorage", "pclasses", "pip", "setuptools",
    "pkg_resources", "_pytest", "pytest", "hypothesis", "click", "rich",
})
#: The module refused globals are renamed under with ``missing="broken"``:
#: not importable (the colon), so they load as inert broken objects.
REFUSED_PREFIX = "pclasses-refused:"


def check_globals(
    needs: dict[tuple[str, str], int], registry: ClassRegistry, connection: Any,
    missing: str, trust: Trust | Iterable[str] | None = None,
) -> tuple[list[str], set[tuple[str, str]]]:
    """``(missing class names, refused globals)`` for the globals ``needs``
    maps to their uses (the analyzer's flags, plus
    :data:`CALLED_BY_RECONSTRUCTOR`)."""
    missing_names: list[str] = []
    refused: set[tuple[str, str]] = set()
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    for (module, name), uses in sorted(needs.items()):
        dotted = f"{module}.{name}"
        if (module, name) in ALLOWED_GLOBALS:
            continue
        if module.startswith(REFUSED_PREFIX):
            continue  # already made inert by an earlier import
        if is_guid_module(module):
            if registry(connection, module, name) is None or _is_broken_class(
                    registry(connection, module, name)):
                missing_names.append(f"{dotted} (database-resident class, guid "
                                     f"{module[len(GUID_PREFIX):]})")
            continue
        res = registry.inspect(module, name, connection, trust=trust)
        if res.how == "broken":
            missing_names.append(dotted)
            continue
        if res.how == "not-imported":  # it exists, but judging it would run it
            missing_names.append(f"{dotted} (module {res.chain[-1].rpartition('.')[0]} is "
                                 "not trusted: not imported to check it; trust its package)")
            continue
        target = res.target
        if not isinstance(target, type):
            refused.add((module, name))
            continue
        top = module.split(".")[0]
        if uses & (USE_CALLED | CALLED_BY_RECONSTRUCTOR) and (
                top in stdlib or top in INFRASTRUCTURE):
            refused.add((module, name))  # e.g. subprocess.Popen(...) in a REDUCE
    return missing_names, refused


def _is_broken_class(obj: Any) -> bool:
    from ZODB.broken import Broken

    return isinstance(obj, type) and issubclass(obj, Broken)
