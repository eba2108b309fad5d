"""Which globals an imported record may name, and in which shapes.

Import never unpickles what it reads, but what it stores is unpickled later
by every program that opens the target database.  This module decides, from
inert facts about each record, whether storing it is safe.  It is an
*allow-list judged by the object a name resolves to*: the spelling in the
record (``module``/``name``) is only used to find the object; the decision
looks at the object itself (its identity, ``cls.__module__``, the origin of
the module that defines it, and where its ``__init__``/``__new__``/
``__setstate__`` come from).  A deny-list judged by spelling is the classic
bypass (a third-party module that re-exports ``subprocess.Popen``).

The rules (see ``docs/security.md``):

* **Callables are classes.**  A global is allowed when it resolves to

  - a short list of data types of Python and helper callables of the pickle
    protocols (:data:`DATA_TYPES`, :data:`HELPERS`): what protocols 0-5 write
    for ordinary data (sets, dates, decimals, ``copyreg._reconstructor``...);
  - persistent data classes of the database infrastructure, listed one by
    one (:func:`infrastructure_data_classes`: ``PersistentMapping``,
    ``PersistentList``, the ``BTrees`` families, ``Length``, ``Blob``...);
  - any other class that is neither from the standard library nor from an
    infrastructure package (:data:`INFRASTRUCTURE`), and whose ``__init__``,
    ``__new__`` and ``__setstate__`` do not come from such a class either;
  - a database-resident class of the target (a ``*<guid>`` name the
    target's class table holds).

  Functions, methods, modules' attributes that are not classes, classes of
  the standard library or the infrastructure are refused, whatever module
  name the record spells.
* **Code needs consent.**  Classes that turn state into code
  (:class:`pclasses.methods.SourceMethod`, persistent classes, any
  metaclass: their instances are classes whose methods the state defines)
  are refused unless the policy has ``allow_code=True``.
* **Strict mode** (``strict=("myapp", ...)``) narrows the rules: besides the
  data types and helpers, only classes whose real defining module lies in
  one of the named packages are allowed.  It never widens them.
* **Shapes.**  A call (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ) of anything that is
  not a global item (the result of another call, an attribute fetched at run
  time) is refused, and so is state set on a global item (BUILD, SETITEM(S),
  APPEND(S), ADDITEMS on a class); a call of a persistent reference is
  allowed only when it is a class reference the importer rebinds to the
  target's class table (:attr:`CallFacts.pid_calls`).
  These shapes cannot be made inert by renaming, so they are refused even
  with ``missing="broken"``.

Resolving a name may import its module.  The policy never asks the resolver
about ``__main__`` modules nor about standard-library modules that are not
already imported (no standard-library class but the listed ones is allowed
anyway): such names are refused without being imported.

:func:`judge_globals` is pure policy: it raises nothing for a refusal but
returns a :class:`Verdict`; :func:`check_globals` asks the target's registry
(through :meth:`~pclasses.registry.ClassRegistry.inspect`, so modules that
are not trusted are never run) and the importer turns the answer into
:class:`~pclasses.errors.RefusedGlobalsError` or
:class:`~pclasses.errors.MissingClassesError`.
"""

from __future__ import annotations

import _compat_pickle
import enum
import importlib
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..classtable import GUID_PREFIX, is_guid_module
from ..errors import ImportPolicyError
from ..registry import ClassRegistry
from ..trust import Trust
from .callsites import CallFacts, call_facts, record_facts

__all__ = [
    "ALLOWED_GLOBALS",
    "REFUSED_PREFIX",
    "CALLED_BY_RECONSTRUCTOR",
    "RECONSTRUCTORS",
    "USE_CALLED",
    "USE_ARGUMENT",
    "ImportPolicyError",
    "judge_globals",
    "ImportPolicy",
    "Verdict",
    "CallFacts",
    "call_facts",
    "record_facts",
    "check_globals",
    "judge",
    "DATA_TYPES",
    "HELPERS",
    "INFRASTRUCTURE",
    "CODE_CLASS_NAMES",
    "infrastructure_data_classes",
    "is_standard_library",
    "USE_REDUCE",
    "USE_NEWOBJ",
    "USE_INSTANTIATE",
    "USE_CLASS_META",
    "USE_PID_CLASS",
    "USE_OTHER",
    "USE_CALLED_BY_HELPER",
    "USE_ROOT_CLASS",
]

# Uses of a global item, as the record analyzer reports them.
USE_REDUCE = 1
USE_NEWOBJ = 2
USE_INSTANTIATE = 4
USE_CLASS_META = 8
USE_PID_CLASS = 16
USE_OTHER = 32
#: Set by the importer for a global passed as an argument in a record that
#: calls ``copyreg._reconstructor`` (whose ``base.__init__`` runs).
USE_CALLED_BY_HELPER = 1 << 10
#: Set by the importer for the class of the file's first (root) record.
USE_ROOT_CLASS = 1 << 11
_CALLED = USE_REDUCE | USE_INSTANTIATE | USE_CALLED_BY_HELPER
# The importer's names for the same flags.
USE_CALLED = USE_REDUCE | USE_INSTANTIATE
USE_ARGUMENT = USE_OTHER
CALLED_BY_RECONSTRUCTOR = USE_CALLED_BY_HELPER
RECONSTRUCTORS = frozenset({("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")})

#: The prefix of refused globals that ``missing="broken"`` made inert.
REFUSED_PREFIX = "pclasses-refused:"


#: Top-level packages (or dotted package prefixes) of the database and tool
#: infrastructure.  Their classes open storages, files, sockets and
#: transactions, or are the machinery that turns records into code; a record
#: may only use the data classes of :func:`infrastructure_data_classes`.
INFRASTRUCTURE: tuple[str, ...] = (
    "ZODB", "ZEO", "persistent", "BTrees", "transaction", "zodbpickle", "zodburi",
    "ZConfig", "relstorage", "zc.lockfile", "zc.zlibstorage", "zodbupdate", "zodbverify",
    "zope.interface", "zope.component", "zope.event", "zope.proxy", "zope.hookable",
    "zope.deferredimport", "zope.dottedname", "zope.configuration", "zope.security",
    "pclasses", "pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils",
    "_pytest", "pytest", "pluggy", "hypothesis", "click", "rich", "IPython",
)

#: Dotted names of classes that turn their state into code: allowed only
#: with ``allow_code=True``.  Any metaclass (a subclass of ``type``) counts
#: too.
CODE_CLASS_NAMES: tuple[str, ...] = (
    "pclasses.methods.SourceMethod",
    "pclasses.pclass.PersistentClass",
    "ZODB.persistentclass.PersistentMetaClass",
)


def _objects(names: Iterable[str]) -> dict[int, Any]:
    """``id -> object`` for the dotted names that import (missing ones skipped)."""
    out: dict[int, Any] = {}
    for dotted in names:
        module, _, attr = dotted.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        out[id(obj)] = obj
    return out


#: Data types whose construction runs no application or system code: what
#: pickles of ordinary data name.
DATA_TYPES: dict[int, Any] = _objects([
    "builtins.object", "builtins.set", "builtins.frozenset", "builtins.complex",
    "builtins.bytearray", "builtins.bytes", "builtins.list", "builtins.dict",
    "builtins.tuple", "builtins.int", "builtins.float", "builtins.str", "builtins.bool",
    "datetime.date", "datetime.datetime", "datetime.time", "datetime.timedelta",
    "datetime.timezone", "datetime.tzinfo",
    "decimal.Decimal", "fractions.Fraction", "uuid.UUID",
    "collections.OrderedDict", "collections.deque", "collections.Counter",
])

#: Helper callables of the pickle protocols and of zope.interface.  The
#: reconstructors call ``base.__new__``/``base.__init__`` of the classes
#: passed to them, so those classes are judged as called.
HELPERS: dict[int, Any] = _objects([
    "copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__",
    "_codecs.encode",  # bytes below protocol 3
    # ``__provides__`` declarations: builds a declaration from interfaces.
    "zope.interface.declarations.Provides",
])

_CODE: dict[int, Any] = _objects(CODE_CLASS_NAMES)

_BTREE_PREFIXES = ("OO", "OI", "OL", "OU", "OQ", "IO", "II", "IF", "IL", "IU", "LO", "LL",
                   "LF", "LQ", "UO", "UU", "UF", "UI", "QO", "QQ", "QF", "QL", "fs")


#: The package's own persistent data classes that application records hold
#: (frozen names, design/decisions.md D14): containers, the key trees of the
#: reference registry, database handles and remote references.  Making one
#: runs no code beyond setting its state; the rest of ``pclasses`` stays
#: infrastructure.
PCLASSES_DATA_CLASSES: tuple[str, ...] = (
    "pclasses.refs.folder.Folder", "pclasses.refs.registry.RefRegistry",
    "pclasses.refs.trees.KeyTree", "pclasses.refs.trees.KeyBucket",
    "pclasses.refs.trees.KeySet", "pclasses.refs.trees.KeySetBucket",
    "pclasses.tree.handle.DatabaseHandle",
    "pclasses.tree.reference.RemoteReference",
    "pclasses.demo_models.Folder", "pclasses.demo_models.Document",
    "pclasses.demo_models.Product", "pclasses.demo_models.Stamp",
    "pclasses.demo_models.Widget",
)


def infrastructure_data_classes() -> dict[int, Any]:
    """The persistent data classes of the infrastructure a record may use.

    ``persistent``'s base class, mapping, list and weak-reference classes,
    ``ZODB.blob.Blob``, ``BTrees.Length.Length`` and, for every ``BTrees``
    family, its ``BTree``, ``Bucket``, ``Set`` and ``TreeSet`` classes (C and
    Python versions).
    """
    names = [
        "persistent.Persistent", "persistent.mapping.PersistentMapping",
        "persistent.list.PersistentList", "persistent.wref.WeakRef",
        "persistent.wref.PersistentWeakKeyDictionary",
        "ZODB.blob.Blob", "BTrees.Length.Length",
        *PCLASSES_DATA_CLASSES,
    ]
    for p in _BTREE_PREFIXES:
        for kind in ("BTree", "Bucket", "Set", "TreeSet"):
            for suffix in ("", "Py"):
                names.append(f"BTrees.{p}BTree.{p}{kind}{suffix}")
    return _objects(names)


_INFRA_DATA: dict[int, Any] | None = None


def _infra_data() -> dict[int, Any]:
    global _INFRA_DATA
    if _INFRA_DATA is None:
        _INFRA_DATA = infrastructure_data_classes()
    return _INFRA_DATA


def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib") if k in paths}
    return tuple(sorted(dirs))


_STDLIB_DIRS = _stdlib_dirs()
_STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ())) | {"builtins", "__main__"}


def _under(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _module_is_stdlib(module: str) -> bool:
    if module.split(".")[0] in _STDLIB_NAMES:
        return True
    mod = sys.modules.get(module)
    origin = getattr(getattr(mod, "__spec__", None), "origin", None)
    if isinstance(origin, str) and origin not in ("built-in", "frozen"):
        real = os.path.realpath(origin)
        if "site-packages" not in real and "dist-packages" not in real:
            return real.startswith(_STDLIB_DIRS)
    return False


def is_standard_library(obj: Any) -> bool:
    """Whether ``obj`` (a class or function) is defined by the standard library.

    Judged by the object: its ``__module__`` (the module that really defines
    it, not the one a record named) and that module's file.
    """
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return True  # no honest origin: treat as the most privileged
    return _module_is_stdlib(module)


def _is_infrastructure(obj: Any) -> bool:
    module = getattr(obj, "__module__", None)
    return not isinstance(module, str) or _under(module, INFRASTRUCTURE)


def _privileged(obj: Any) -> bool:
    return is_standard_library(obj) or _is_infrastructure(obj)


def _is_code_class(cls: type) -> bool:
    """Instances of ``cls`` turn state into code (a metaclass, a source method)."""
    if issubclass(cls, type):
        return True
    return any(id(base) in _CODE for base in cls.__mro__)


def _defining_class(cls: type, attr: str) -> Any:
    for base in cls.__mro__:
        if attr in vars(base):
            return base
    return None


#: Standard-library classes whose construction and state hooks only store
#: what they are given, so application subclasses (stored exceptions,
#: enumerations) may inherit them.  They are not allowed as globals.
_HARMLESS_HOOKS: frozenset[type] = frozenset({
    object, BaseException, Exception, enum.Enum, enum.IntEnum, enum.Flag, enum.IntFlag,
})


def _hooks_ok(cls: type, called: bool) -> str | None:
    """Why the class's construction or state hooks are not acceptable, or None.

    An application class inheriting ``__init__`` from ``subprocess.Popen`` is
    ``Popen`` as far as a call is concerned.
    """
    data = _infra_data()
    attrs = ("__init__", "__new__", "__setstate__") if called else ("__new__", "__setstate__")
    for attr in attrs:
        owner = _defining_class(cls, attr)
        if owner is None or owner is cls and not _privileged(cls):
            continue
        if id(owner) in DATA_TYPES or id(owner) in data or owner in _HARMLESS_HOOKS:
            continue
        if _privileged(owner):
            return f"its {attr} comes from {owner.__module__}.{owner.__qualname__}"
    return None


@dataclass(frozen=True)
class ImportPolicy:
    """What an import may store.

    ``allow_code``: also allow classes that turn state into code (source
    methods, persistent classes, metaclasses).  ``strict``: when given, a
    sequence of package names; only classes defined in those packages (and
    the data types and helpers) are allowed.
    """

    allow_code: bool = False
    strict: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.strict is not None:
            if isinstance(self.strict, str):
                object.__setattr__(self, "strict", (self.strict,))
            names = tuple(self.strict)
            for name in names:
                if not isinstance(name, str) or not name or any(
                        not part.isidentifier() for part in name.split(".")):
                    raise ImportPolicyError("strict", str(name))
            object.__setattr__(self, "strict", names)

    def to_dict(self) -> dict[str, Any]:
        return {"allow_code": self.allow_code,
                "strict": list(self.strict) if self.strict is not None else None}


DEFAULT_POLICY = ImportPolicy()

#: ``(module, name)`` spellings of the listed data types and helpers (the
#: decision itself is made on the objects).
ALLOWED_GLOBALS = frozenset(
    (getattr(o, "__module__", None) or "builtins", o.__name__)
    for o in (*DATA_TYPES.values(), *HELPERS.values()))


def judge(target: Any, uses: int, policy: ImportPolicy = DEFAULT_POLICY) -> str | None:
    """Why the object ``target`` may not be named with ``uses``, or None when it may."""
    if uses & USE_ROOT_CLASS and not (isinstance(target, type) and _is_persistent_class(target)):
        # Import makes the root object at once (ZODB's ``klass.__new__``, then
        # its cache): anything but a persistent class would fail there.
        return "the imported root's class is not persistent"
    if id(target) in DATA_TYPES and DATA_TYPES[id(target)] is target:
        return None
    if id(target) in HELPERS and HELPERS[id(target)] is target:
        return None
    if not isinstance(target, type):
        if not uses & (_CALLED | USE_NEWOBJ | USE_CLASS_META | USE_PID_CLASS) and (
                _is_interface(target)):
            return None  # an interface named in a declaration
        return "not a class"
    if _is_code_class(target):
        if not policy.allow_code:
            return "turns state into code (allow it with allow_code / --allow-code)"
    elif id(target) in _infra_data():
        pass
    elif getattr(target, "__module__", None) == "__main__":
        return "a class of a program's __main__ module"
    elif _privileged(target):
        where = "the standard library" if is_standard_library(target) else "infrastructure"
        return f"a class of {where} ({target.__module__}.{target.__qualname__})"
    else:
        why = _hooks_ok(target, bool(uses & _CALLED))
        if why is not None:
            return why
    if policy.strict is not None:
        module = getattr(target, "__module__", "")
        if not _under(module, policy.strict):
            return f"not in the strict packages ({target.__module__})"
    return None


def _is_persistent_class(cls: type) -> bool:
    from persistent import Persistent

    return issubclass(cls, (Persistent, type))


def _is_interface(obj: Any) -> bool:
    try:
        from zope.interface.interface import InterfaceClass
    except ImportError:  # pragma: no cover - zope.interface comes with ZODB
        return False
    return isinstance(obj, InterfaceClass)


@dataclass
class Verdict:
    """The policy's answer for a set of globals.

    ``refused`` maps each refused ``(module, name)`` to its reason;
    ``missing`` lists dotted names (with a note) that do not resolve in the
    target.
    """

    refused: dict[tuple[str, str], str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def refused_names(self) -> list[str]:
        return sorted(f"{m}.{n}" for m, n in self.refused)

    @property
    def reasons(self) -> dict[str, str]:
        """Dotted name -> why it is refused."""
        return {f"{m}.{n}": why for (m, n), why in self.refused.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"refused": {f"{m}.{n}": why for (m, n), why in sorted(self.refused.items())},
                "missing": list(self.missing)}


def canonical_name(module: str, name: str) -> tuple[str, str]:
    """The name the unpickler will really look up (Python 2 spellings mapped)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


#: ``resolve(module, name) -> (status, value)``: ``True`` and the object the
#: name resolves to; ``False`` when it does not resolve in the target (value:
#: a note for the missing list, or None); ``"refused"`` when it cannot be
#: judged without running code (value: the reason).
Resolver = Callable[[str, str], "tuple[bool | str, Any]"]
#: ``resident(module, name) -> bool``: the target's class table holds the
#: database-resident class.
ResidentCheck = Callable[[str, str], bool]


def judge_globals(
    needs: Mapping[tuple[str, str], int],
    resolve: Resolver,
    resident: ResidentCheck,
    policy: ImportPolicy = DEFAULT_POLICY,
) -> Verdict:
    """Judge every ``(module, name) -> uses`` a file's records name."""
    verdict = Verdict()
    for (module, name), uses in sorted(needs.items()):
        if not isinstance(module, str) or not isinstance(name, str):
            verdict.refused[(str(module), str(name))] = "not a literal name"
            continue
        dotted = f"{module}.{name}"
        if module.startswith(REFUSED_PREFIX):
            continue  # made inert by an earlier import: can never resolve
        if is_guid_module(module):
            if not resident(module, name):
                verdict.missing.append(f"{dotted} (database-resident class, guid "
                                       f"{module[len(GUID_PREFIX):]})")
            continue
        real_module, real_name = canonical_name(module, name)
        top = real_module.split(".")[0]
        if top == "__main__" or (top in _STDLIB_NAMES and real_module not in sys.modules):
            # Never import a program or a standard-library module on a file's
            # say; nothing there is allowed but the listed (imported) types.
            verdict.refused[(module, name)] = "names a module that is never imported"
            continue
        try:
            ok, target = resolve(real_module, real_name)
        except (SystemExit, KeyboardInterrupt, Exception) as exc:  # noqa: BLE001
            verdict.refused[(module, name)] = f"resolving it failed ({type(exc).__name__})"
            continue
        if ok == "refused":
            verdict.refused[(module, name)] = str(target)
            continue
        if not ok:
            verdict.missing.append(target if isinstance(target, str) else dotted)
            continue
        why = judge(target, uses, policy)
        if why is not None:
            verdict.refused[(module, name)] = why
    return verdict


def check_globals(
    needs: Mapping[tuple[str, str], int], registry: ClassRegistry, connection: Any,
    missing: str, trust: Trust | Iterable[str] | None = None,
    policy: ImportPolicy | None = None,
) -> Verdict:
    """The verdict on the globals ``needs`` maps to their uses, as the
    target's registry resolves them (without running modules that are not
    trusted, :mod:`pclasses.trust`)."""

    def resolve(module: str, name: str) -> tuple[bool | str, Any]:
        res = registry.inspect(module, name, connection, trust=trust)
        if res.how == "broken":
            return False, None
        if res.how == "not-imported":
            # It exists, but judging it would run its module: refused (made
            # inert with "broken"), since loading would import and run it.
            return "refused", (f"module {res.chain[-1].rpartition('.')[0]} is not trusted "
                               "(not imported to judge it; trust its package)")
        return True, res.target

    def resident(module: str, name: str) -> bool:
        from ZODB.broken import Broken

        cls = registry(connection, module, name)
        return cls is not None and not (isinstance(cls, type) and issubclass(cls, Broken))

    return judge_globals(needs, resolve, resident, policy or DEFAULT_POLICY)
