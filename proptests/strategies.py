"""Hypothesis strategies shared by the property tests.

* :func:`values`: every picklable builtin type, nested.
* :func:`graphs`: object graphs of persistent and plain objects, nested
  containers (PersistentMapping, PersistentList, OOBTree), shared
  references, cycles through persistent objects, and weak references.

Richer graphs (issue #7), as descriptions built in a database:

* :func:`builtin_values` (:data:`builtin_scalars`, :data:`transferable_scalars`):
  values of every picklable builtin type, or of those subtree import accepts;
* :func:`graph_specs`: a :class:`GraphSpec` describing persistent objects of
  regular classes, PersistentMapping, PersistentList, OOBTree, IOBTree (one
  or several buckets), blobs and instances of database-resident classes;
  plain objects of regular and database-resident classes, shared and in
  cycles; references, weak references and cross-database references (in
  the two-database setup of :func:`write_zconfig`); :func:`build_graph`
  makes the objects in a connection (:func:`ensure_residents` the classes);
* :func:`graph_form`, :func:`assert_same_form`, :func:`assert_same_graph`:
  structural graph equality (shape, sharing, classes by dotted name or
  guid, values) that holds across connections and databases;
* :class:`VanishingModule`: a module file of regular classes
  (:data:`GRAPH_CLASSES_SOURCE`) that can vanish and come back.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import importlib
import math
import os
import shutil
import sys
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping


class Node(Persistent):
    """A persistent object with arbitrary attributes."""


class Plain:
    """A non-persistent object pickled inside its holder."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Plain and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Plain({vars(self)!r})"


class NewArgs(Persistent):
    """A persistent class with ``__getnewargs__`` (class metadata format 2)."""

    def __new__(cls, *args):
        return super().__new__(cls)

    def __getnewargs__(self):
        return (1, 2)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.dates(),
    st.datetimes(),
    st.timedeltas(),
    st.decimals(allow_nan=False, allow_infinity=False),
)


def values(max_leaves: int = 12) -> st.SearchStrategy:
    """Picklable builtin values, nested in tuples, lists, dicts, sets."""
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.tuples(children, children),
            st.dictionaries(st.text(max_size=6), children, max_size=4),
            st.frozensets(st.integers() | st.text(max_size=5), max_size=4),
            st.sets(st.integers(), max_size=4),
            st.builds(bytearray, st.binary(max_size=8)),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def graphs(draw, max_objects: int = 8):
    """A root PersistentMapping holding a random graph.

    Returns the root; persistent objects may be shared and may refer to
    each other (cycles), plain objects carry values.
    """
    kinds = st.sampled_from(["node", "mapping", "list", "newargs"])
    n = draw(st.integers(min_value=1, max_value=max_objects))
    objs = []
    for _ in range(n):
        kind = draw(kinds)
        if kind == "node":
            o = Node()
        elif kind == "mapping":
            o = PersistentMapping()
        elif kind == "list":
            o = PersistentList()
        else:
            o = NewArgs()
        objs.append(o)
    for o in objs:
        for j in range(draw(st.integers(0, 3))):
            choice = draw(st.integers(0, 3))
            if choice == 0:
                value = draw(values())
            elif choice == 1:
                value = draw(st.sampled_from(objs))  # shared refs and cycles
            elif choice == 2:
                p = Plain()
                p.v = draw(values(4))
                p.ref = draw(st.sampled_from(objs))
                value = p
            else:
                from persistent.wref import WeakRef

                value = WeakRef(draw(st.sampled_from(objs)))
            key = f"k{j}"
            if isinstance(o, PersistentMapping):
                o[key] = value
            elif isinstance(o, PersistentList):
                o.append(value)
            else:
                setattr(o, key, value)
    root = PersistentMapping()
    root["objs"] = objs
    root["stamp"] = datetime.date(2020, 1, 2)
    root["money"] = decimal.Decimal("1.5")
    return root


# ===========================================================================
# Rich object graphs (issue #7): descriptions, builders and graph equality
# ===========================================================================
#
# A generated graph is a *description* (:class:`GraphSpec`, plain data that
# shrinks and prints well); :func:`build_graph` turns it into real objects in
# a connection (database-resident classes have to be defined in a database,
# objects of the second database added to its connection), and
# :func:`graph_form` / :func:`assert_same_graph` compare object graphs
# structurally, across connections and databases.

#: the names of the databases of the two-database setup
MAIN = "main"
OTHER = "other"

#: Object kinds; ``resident`` is an instance of a database-resident class.
OBJECT_KINDS = ("node", "newargs", "mapping", "list", "oobtree", "iobtree", "blob",
                "resident")
#: Kinds an object of the second database can be (class tables are per
#: database: the database-resident classes of a graph live in the main one).
OTHER_KINDS = ("node", "newargs", "mapping", "list", "oobtree", "blob")


# -- values of every picklable builtin type -------------------------------

def _fixed_offsets() -> st.SearchStrategy:
    return st.builds(
        datetime.timezone,
        st.timedeltas(min_value=datetime.timedelta(hours=-23, minutes=-59),
                      max_value=datetime.timedelta(hours=23, minutes=59)),
    )


#: Scalars that :func:`pclasses.import_subtree` accepts (classes and the
#: allow-listed builtin and stdlib types), beyond :data:`scalars`.
transferable_scalars = st.one_of(
    scalars,
    st.sampled_from([math.inf, -math.inf, -0.0, math.nan, 2.0**-1074]),
    st.text(alphabet=st.characters(min_codepoint=0x80), max_size=6),
    st.binary(min_size=250, max_size=300),  # BINBYTES, not SHORT_BINBYTES
    st.integers(min_value=2**63, max_value=2**200),
    st.datetimes(timezones=_fixed_offsets()),
    st.times(timezones=st.none() | _fixed_offsets()),
    _fixed_offsets(),
    st.decimals(places=3, allow_nan=False, allow_infinity=False),
    st.sampled_from([int, str, bytes, float, dict, list, tuple, set, frozenset, bool,
                     complex, bytearray]),
)

#: Every kind of picklable builtin value, including those export refuses
#: to import (they make the unpickler call a builtin or name a builtin
#: function): ``range``, ``slice``, ``Ellipsis``, ``NotImplemented``,
#: builtin functions, and types outside the import allow-list.
builtin_scalars = st.one_of(
    transferable_scalars,
    st.builds(range, st.integers(-5, 5), st.integers(-5, 50), st.integers(1, 4)),
    st.builds(slice, st.integers(-3, 3), st.none() | st.integers(0, 9)),
    st.sampled_from([Ellipsis, NotImplemented, len, max, type, object, range, slice,
                     memoryview, BaseException, ValueError]),
)


def builtin_values(max_leaves: int = 10, transferable: bool = False) -> st.SearchStrategy:
    """Values of every picklable builtin type, nested in tuples, lists, dicts,
    sets, frozensets and bytearrays.

    ``transferable=True`` keeps to what :func:`pclasses.import_subtree`
    accepts (no ``range``, ``slice``, builtin functions, ...).
    """
    leaves = transferable_scalars if transferable else builtin_scalars
    hashables = st.one_of(st.integers(), st.text(max_size=5), st.binary(max_size=4),
                          st.tuples(st.integers(), st.text(max_size=3)),
                          st.frozensets(st.integers(), max_size=3))
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.tuples(children, children),
            st.tuples(),
            st.dictionaries(hashables, children, max_size=4),
            st.frozensets(hashables, max_size=4),
            st.sets(hashables, max_size=4),
            st.builds(bytearray, st.binary(max_size=8)),
        ),
        max_leaves=max_leaves,
    )


# -- graph descriptions ----------------------------------------------------
#
# A value description (a *vspec*) is one of:
#   ("v", value)        a builtin value (deep-copied when built)
#   ("ref", i)          the persistent object objects[i]
#   ("wref", i)         persistent.wref.WeakRef(objects[i])
#   ("plain", j)        the plain object plains[j] (shared when named twice,
#                       cycles through its attributes)
#   ("list", [vspec])   ("tuple", [vspec])   ("dict", [(str, vspec)])


@dataclass
class ResidentSpec:
    """A database-resident class: ``base`` is ``"persistent"``, ``"plain"``
    (plain instances), ``"node"`` (a subclass of the importable Node),
    ``"plainbase"`` (plain instances, a subclass of the importable Plain) or
    the index of an earlier resident class with persistent instances."""

    name: str
    guid: str
    base: Any
    attrs: dict[str, Any] = field(default_factory=dict)
    method: bool = False

    @property
    def plain(self) -> bool:
        return self.base in ("plain", "plainbase")


@dataclass
class ObjSpec:
    kind: str
    db: str = MAIN
    resident: int | None = None  # index into GraphSpec.residents
    items: list[tuple[Any, Any]] = field(default_factory=list)
    blob: bytes = b""
    fill: int = 0  # extra int items for BTrees (several buckets)


@dataclass
class PlainSpec:
    resident: int | None = None  # None: an instance of the importable Plain
    attrs: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class GraphSpec:
    residents: list[ResidentSpec] = field(default_factory=list)
    objects: list[ObjSpec] = field(default_factory=list)
    plains: list[PlainSpec] = field(default_factory=list)
    #: vspecs held directly by the graph's root mapping, besides "objs"
    extra: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def databases(self) -> set[str]:
        return {MAIN} | {o.db for o in self.objects}


#: Leaves of value descriptions, made once: strategies made anew inside
#: every draw of a composite made generation flaky.
_LEAVES = {False: builtin_values(4), True: builtin_values(4, transferable=True)}
_CLASS_ATTR_VALUES = values(3)

_RESIDENT_NAMES = ("Note", "Memo", "Item", "Folder", "Tag")
_attr_names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", max_size=4),
)
_class_attr_names = _attr_names.map(lambda a: "c_" + a)
_object_attr_names = _attr_names.map(lambda a: "a_" + a)
_extra_names = _attr_names.map(lambda a: "x_" + a)
_mapping_keys = st.text(max_size=5)
_int_keys = st.integers(-1000, 1000)


@st.composite
def vspecs(draw: Any, n_objects: int, n_plains: int, leaves: st.SearchStrategy,
           weak: bool = True, depth: int = 2) -> Any:
    """A value description (see above) naming objects ``0..n_objects-1`` and
    plain objects ``0..n_plains-1``.

    Nested by hand rather than with ``st.recursive``: a recursive strategy
    drawn inside another one's capped region made generation flaky.
    """
    tags = ["v"]
    if n_objects:
        tags += ["ref", "wref"] if weak else ["ref"]
    if n_plains:
        tags.append("plain")
    if depth > 0:
        tags += ["list", "tuple", "dict"]
    tag = draw(st.sampled_from(tags))
    if tag == "v":
        return ("v", draw(leaves))
    if tag in ("ref", "wref"):
        return (tag, draw(st.integers(0, n_objects - 1)))
    if tag == "plain":
        return ("plain", draw(st.integers(0, n_plains - 1)))
    child = _vspec_strategy(n_objects, n_plains, leaves, weak, depth - 1)
    if tag == "dict":
        return ("dict", draw(st.lists(st.tuples(st.text(max_size=4), child), max_size=3)))
    return (tag, draw(st.lists(child, max_size=3)))


@functools.cache
def _vspec_strategy(n_objects: int, n_plains: int, leaves: st.SearchStrategy, weak: bool,
                    depth: int) -> st.SearchStrategy:
    return vspecs(n_objects, n_plains, leaves, weak, depth)


@st.composite
def graph_specs(
    draw: Any,
    max_objects: int = 6,
    max_plains: int = 3,
    *,
    databases: tuple[str, ...] = (MAIN,),
    residents: bool = True,
    blobs: bool = True,
    weak: bool = True,
    transferable: bool = False,
    max_residents: int = 3,
) -> GraphSpec:
    """A :class:`GraphSpec`: persistent objects of every kind (importable
    classes, PersistentMapping, PersistentList, OOBTree, IOBTree, blobs,
    instances of database-resident classes), plain objects (importable or
    database-resident classes) shared and in cycles, references between all
    of them (cycles, sharing, weak references, cross-database references
    when ``databases`` names two), and builtin values of every type.
    """
    spec = GraphSpec()
    leaves = _LEAVES[transferable]
    if residents:
        for k in range(draw(st.integers(0, max_residents))):
            earlier = [i for i, r in enumerate(spec.residents) if not r.plain]
            base = draw(st.sampled_from(["persistent", "plain", "node", "plainbase",
                                         *earlier]))
            spec.residents.append(ResidentSpec(
                name=draw(st.sampled_from(_RESIDENT_NAMES)),
                guid=f"guid-{k}",
                base=base,
                attrs=draw(st.dictionaries(_class_attr_names,
                                           _CLASS_ATTR_VALUES, max_size=2)),
                method=draw(st.booleans()),
            ))
    persistent_res = [i for i, r in enumerate(spec.residents) if not r.plain]
    plain_res = [i for i, r in enumerate(spec.residents) if r.plain]
    n = draw(st.integers(1, max_objects))
    for _ in range(n):
        db = draw(st.sampled_from(databases))
        kinds = [k for k in (OBJECT_KINDS if db == MAIN else OTHER_KINDS)
                 if (blobs or k != "blob") and (persistent_res or k != "resident")]
        kind = draw(st.sampled_from(kinds))
        obj = ObjSpec(kind, db)
        if kind == "resident":
            obj.resident = draw(st.sampled_from(persistent_res))
        elif kind == "blob":
            obj.blob = draw(st.binary(max_size=64))
        elif kind in ("oobtree", "iobtree"):
            obj.fill = draw(st.sampled_from([0, 0, 0, 70]))
        spec.objects.append(obj)
    m = draw(st.integers(0, max_plains))
    for _ in range(m):
        res = draw(st.none() | st.sampled_from(plain_res)) if plain_res else None
        spec.plains.append(PlainSpec(res))
    vspec = _vspec_strategy(n, m, leaves, weak, 2)
    for p in spec.plains:
        p.attrs = draw(st.lists(st.tuples(_attr_names, vspec), max_size=3,
                                unique_by=lambda kv: kv[0]))
    for obj in spec.objects:
        if obj.kind == "blob":
            continue
        if obj.kind == "iobtree":
            keys: st.SearchStrategy = _int_keys
        elif obj.kind in ("mapping", "oobtree"):
            keys = _mapping_keys
        else:
            keys = _object_attr_names
        obj.items = draw(st.lists(st.tuples(keys, vspec), max_size=3,
                                  unique_by=lambda kv: kv[0]))
    spec.extra = draw(st.lists(st.tuples(_extra_names, vspec),
                               max_size=2, unique_by=lambda kv: kv[0]))
    return spec


# -- building --------------------------------------------------------------

#: Source of importable classes for graphs that need their own module (a
#: module that can vanish, or be renamed): the same shapes as Node, Plain
#: and NewArgs above.
GRAPH_CLASSES_SOURCE = textwrap.dedent('''
    from persistent import Persistent


    class Node(Persistent):
        """A persistent object with arbitrary attributes."""


    class Plain:
        """A non-persistent object pickled inside its holder."""


    class NewArgs(Persistent):
        """A persistent class with ``__getnewargs__`` (class metadata format 2)."""

        def __new__(cls, *args):
            return super().__new__(cls)

        def __getnewargs__(self):
            return (1, 2)
''')


@dataclass
class GraphClasses:
    """The importable classes a graph is built with."""

    node: type = Node
    plain: type = Plain
    newargs: type = NewArgs


GREETING = "def greet(self):\n    return 'hello from ' + type(self).__name__\n"


def ensure_residents(spec: GraphSpec, conn: Any, classes: GraphClasses | None = None
                     ) -> list[Any]:
    """The spec's database-resident classes in ``conn``'s class table
    (defined there, with the spec's guids, when missing)."""
    import pclasses

    classes = classes or GraphClasses()
    table = pclasses.class_table(conn)
    made: list[Any] = []
    for r in spec.residents:
        cls = table.get(r.guid)
        if cls is None:
            if r.base == "persistent":
                bases: tuple[type, ...] = ()
            elif r.base == "plain":
                bases = (object,)
            elif r.base == "node":
                bases = (classes.node,)
            elif r.base == "plainbase":
                bases = (classes.plain,)
            else:
                bases = (made[r.base],)
            ns = dict(r.attrs)
            if r.method:
                ns["greet"] = pclasses.method(GREETING)
            cls = pclasses.define_class(conn, r.name, bases, ns, guid=r.guid)
        made.append(cls)
    return made


def build_graph(spec: GraphSpec, conn: Any, classes: GraphClasses | None = None) -> Any:
    """Real objects for ``spec`` in ``conn`` (and its ``other`` database).

    Returns the graph's root, a PersistentMapping with ``objs`` (every
    object, in order), ``plains`` (every plain object) and the spec's extra
    entries.  Every persistent object is added to its database's connection
    (and the second database's ones to its root, under ``objs``); the caller
    stores the root somewhere and commits.
    """
    import copy

    from BTrees.IOBTree import IOBTree
    from BTrees.OOBTree import OOBTree
    from persistent.wref import WeakRef
    from ZODB.blob import Blob

    classes = classes or GraphClasses()
    residents = ensure_residents(spec, conn, classes)
    objs: list[Any] = []
    for o in spec.objects:
        if o.kind == "node":
            obj = classes.node()
        elif o.kind == "newargs":
            obj = classes.newargs()
        elif o.kind == "mapping":
            obj = PersistentMapping()
        elif o.kind == "list":
            obj = PersistentList()
        elif o.kind == "oobtree":
            obj = OOBTree()
            for i in range(o.fill):
                obj[f"fill{i:03d}"] = i
        elif o.kind == "iobtree":
            obj = IOBTree()
            for i in range(o.fill):
                obj[5000 + i] = str(i)
        elif o.kind == "blob":
            obj = Blob(o.blob)
        else:
            obj = residents[o.resident]()
        objs.append(obj)
    plains: list[Any] = [classes.plain() if p.resident is None else residents[p.resident]()
                         for p in spec.plains]

    def make(v: Any) -> Any:
        tag = v[0]
        if tag == "v":
            return copy.deepcopy(v[1])
        if tag == "ref":
            return objs[v[1]]
        if tag == "wref":
            return WeakRef(objs[v[1]])
        if tag == "plain":
            return plains[v[1]]
        if tag == "list":
            return [make(x) for x in v[1]]
        if tag == "tuple":
            return tuple(make(x) for x in v[1])
        if tag == "dict":
            return {k: make(x) for k, x in v[1]}
        raise ValueError(v)

    for p, pspec in zip(plains, spec.plains):
        for k, v in pspec.attrs:
            setattr(p, k, make(v))
    for obj, o in zip(objs, spec.objects):
        for k, v in o.items:
            if o.kind in ("mapping", "oobtree", "iobtree"):
                obj[k] = make(v)
            elif o.kind == "list":
                obj.append(make(v))
            else:
                setattr(obj, k, make(v))
    other_objs = []
    for obj, o in zip(objs, spec.objects):
        jar = conn if o.db == MAIN else conn.get_connection(o.db)
        jar.add(obj)
        if o.db != MAIN:
            other_objs.append((jar, obj))
    for jar, obj in other_objs:
        oroot = jar.root()
        if "objs" not in oroot:
            oroot["objs"] = PersistentList()
        oroot["objs"].append(obj)
    root = PersistentMapping()
    conn.add(root)
    root["objs"] = list(objs)
    root["plains"] = list(plains)
    for k, v in spec.extra:
        root[k] = make(v)
    return root


# -- graph equality --------------------------------------------------------


def class_key(cls: type, rename: Callable[[str], str] | None = None) -> tuple[Any, ...]:
    """How a class is compared: by guid (and name) when it lives in the
    database, by dotted name (through ``rename``) otherwise; broken classes
    by the name they stand for."""
    from ZODB.broken import Broken

    import pclasses
    from pclasses.broken import missing_name

    if isinstance(cls, pclasses.PersistentClass):
        return ("resident", pclasses.guid_of(cls), cls.__name__)
    if issubclass(cls, Broken):
        module, name = missing_name(cls) or (cls.__module__, cls.__name__)
        return ("broken", f"{module}.{name}")
    dotted = f"{cls.__module__}.{cls.__qualname__}"
    return ("class", rename(dotted) if rename else dotted)


class GraphForm:
    """The structural form of an object graph (see :func:`graph_form`)."""

    def __init__(self, rename: Callable[[str], str] | None = None,
                 databases: bool = True, external: frozenset[str] = frozenset()) -> None:
        self.rename = rename
        self.databases = databases
        self.external = external
        self.persistent: dict[int, int] = {}
        self.scopes: list[dict[int, int]] = [{}]
        self.keep: list[Any] = []
        self.classes: dict[str, Any] = {}

    def _ckey(self, cls: type) -> tuple[Any, ...]:
        import pclasses

        key = class_key(cls, self.rename)
        if key[0] == "resident" and key[1] not in self.classes:
            guid = key[1]
            self.classes[guid] = None  # recursion guard
            attrs = [(k, self.form(v)) for k, v in sorted(cls.__dict__.items())
                     if not (k.startswith("__") or k.startswith("_p_")
                             or k.startswith("_v_"))
                     and not isinstance(v, pclasses.methods.SourceMethod)]
            methods = sorted(k for k, v in cls.__dict__.items()
                             if isinstance(v, pclasses.methods.SourceMethod))
            self.classes[guid] = (cls.__name__, [self._ckey(b) for b in cls.__bases__],
                                  attrs, methods)
        return key

    def form(self, x: Any) -> Any:
        import decimal as _decimal

        from persistent import Persistent
        from persistent.wref import WeakRef
        from ZODB.broken import Broken

        t = type(x)
        if x is None or t in (bool, int, str, bytes):
            return (t.__name__, x)
        if t is float:
            return ("float", "nan" if math.isnan(x) else x.hex())
        if t is complex:
            return ("complex", x.real.hex(), x.imag.hex())
        if t is _decimal.Decimal:
            return ("Decimal", str(x))
        if t in (datetime.datetime, datetime.time):
            # pickle protocol 3 (ZODB's) does not keep ``fold``
            return (t.__name__, repr(x.replace(fold=0)))
        if t in (datetime.date, datetime.timedelta, datetime.timezone, range, slice):
            return (t.__name__, repr(x))
        if x is Ellipsis or x is NotImplemented:
            return ("singleton", repr(x))
        if isinstance(x, type):
            return ("type", self._ckey(x))
        if t.__name__ == "builtin_function_or_method":
            return ("function", x.__module__, x.__qualname__)
        if isinstance(x, WeakRef):
            return ("wref", self.form(x()))
        if t is tuple:
            return ("tuple", [self.form(v) for v in x])
        if t is frozenset:
            return ("frozenset", sorted(repr(self.form(v)) for v in x))
        if isinstance(x, Persistent):
            return self._persistent(x)
        # mutable and instance objects: sharing counts within one record
        scope = self.scopes[-1]
        if id(x) in scope:
            return ("same", scope[id(x)])
        scope[id(x)] = len(scope)
        self.keep.append(x)
        k = scope[id(x)]
        if t is list:
            return ("list", k, [self.form(v) for v in x])
        if t is dict:
            return ("dict", k, [(self.form(a), self.form(b)) for a, b in x.items()])
        if t is set:
            return ("set", k, sorted(repr(self.form(v)) for v in x))
        if t is bytearray:
            return ("bytearray", k, bytes(x))
        if isinstance(x, Broken):
            import pclasses

            return ("inst", k, self._ckey(t), self.form(pclasses.broken_state(x)))
        return ("inst", k, self._ckey(t),
                [(a, self.form(v)) for a, v in sorted(vars(x).items())])

    def _persistent(self, x: Any) -> Any:
        from ZODB.blob import Blob
        from ZODB.broken import Broken

        import pclasses

        jar = x._p_jar
        if self.external and jar is not None and jar.db().database_name in self.external:
            return ("external", jar.db().database_name, x._p_oid)
        if id(x) in self.persistent:
            return ("ref", self.persistent[id(x)])
        n = self.persistent[id(x)] = len(self.persistent)
        self.keep.append(x)
        db = jar.db().database_name if (jar is not None and self.databases) else None
        key = self._ckey(type(x))
        self.scopes.append({})
        try:
            if isinstance(x, Broken):
                state: Any = ("broken", self.form(pclasses.broken_state(x)))
            elif isinstance(x, Blob):
                with x.open("r") as f:
                    state = ("blob", f.read())
            else:
                # BTrees too: their state names their buckets, each a record
                # of its own (a plain object in two buckets is two copies)
                x._p_activate()
                state = ("state", self.form(x.__getstate__()))
        finally:
            self.scopes.pop()
        return ("obj", n, db, key, state)


def graph_form(root: Any, rename: Callable[[str], str] | None = None,
               databases: bool = True, external: Any = ()) -> Any:
    """A comparable form of the graph reachable from ``root``.

    Persistent objects are numbered in the order they are reached (so the
    pattern of sharing and cycles is part of the form, oids are not), with
    their database name (``databases=False`` leaves it out), class and state;
    plain objects and mutable builtins are numbered within the record that
    holds them (pickling keeps sharing inside a record, never across
    records); classes compare by dotted name (``rename`` maps old names to
    new) or, for database-resident classes, by guid and name, and each
    database-resident class reached is compared by name, bases, attributes
    and method names; values compare by type and exact value (floats by bit
    pattern, sets by content; datetimes without ``fold``, which ZODB's
    pickle protocol does not keep).  Objects of the databases named in
    ``external`` are not entered: they compare by database and oid (what
    export and import keep of references leaving the subtree).
    """
    g = GraphForm(rename, databases, frozenset(external))
    top = g.form(root)
    return ("graph", top, sorted(g.classes.items()))


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}:\n  {a!r}\n  {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def assert_same_form(expected: Any, actual: Any) -> None:
    """Assert two forms made by :func:`graph_form` are equal, naming the
    first place they differ."""
    if expected != actual:
        raise AssertionError("graphs differ at "
                             + (_first_difference(expected, actual) or "?"))


def assert_same_graph(expected: Any, actual: Any, *,
                      rename: Callable[[str], str] | None = None,
                      databases: bool = True, external: Any = ()) -> None:
    """Assert two object graphs are structurally equal (see :func:`graph_form`);
    ``rename`` applies to the class names of ``expected``."""
    assert_same_form(graph_form(expected, rename, databases, external),
                     graph_form(actual, None, databases, external))


# -- databases -------------------------------------------------------------


def write_zconfig(directory: str | os.PathLike[str], names: tuple[str, ...] = (MAIN, OTHER),
                  blobs: bool = True, filename: str = "db.conf") -> str:
    """A ZConfig file with one ``<zodb>`` section (a FileStorage, with a blob
    directory) per name, all in ``directory``; the first is the one
    :func:`pclasses.open` returns."""
    parts = []
    for n in names:
        blob = f"\n    blob-dir {os.path.join(directory, n + '.blobs')}" if blobs else ""
        parts.append(f"<zodb {n}>\n  <filestorage>\n"
                     f"    path {os.path.join(directory, n + '.fs')}{blob}\n"
                     f"  </filestorage>\n</zodb>\n")
    path = os.path.join(directory, filename)
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def close_all(db: Any) -> None:
    """Close every database of ``db``'s multi-database."""
    for each in list((getattr(db, "databases", None) or {None: db}).values()):
        try:
            each.close()
        except Exception:
            pass


class VanishingModule:
    """A module file in ``directory`` (which must be on ``sys.path``) that can
    be made unimportable (:meth:`hide`) and brought back (:meth:`show`)."""

    def __init__(self, directory: str | os.PathLike[str], source: str,
                 prefix: str = "pcl_graph") -> None:
        self.directory = Path(directory)
        self.source = source
        self.name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.path = self.directory / f"{self.name}.py"

    def show(self) -> Any:
        """Write the module and import it afresh."""
        sys.modules.pop(self.name, None)
        self.path.write_text(self.source)
        importlib.invalidate_caches()
        return importlib.import_module(self.name)

    def hide(self) -> None:
        sys.modules.pop(self.name, None)
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.directory / "__pycache__", ignore_errors=True)
        importlib.invalidate_caches()

    @property
    def visible(self) -> bool:
        return self.path.exists()

    def classes(self) -> GraphClasses:
        m = sys.modules.get(self.name) or self.show()
        return GraphClasses(node=m.Node, plain=m.Plain, newargs=m.NewArgs)
