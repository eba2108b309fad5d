"""A stateful property test over the real system (issue #7).

One :class:`SystemMachine` run drives a real FileStorage in a temporary
directory, opened with :func:`pclasses.open` and a :class:`ClassRegistry`,
through two connections with their own transaction managers, a second
database (the target of subtree imports), a module file of regular classes
that can vanish and come back, and database-resident classes:

* define, edit, rename, delete (``del class_table(conn)[guid]``) and restore
  (the class record put back under its guid) database-resident classes;
* register, unregister, alias, unalias, alias and unalias the module of the
  regular classes under a legacy name, make their module file vanish and
  come back (``registry.refresh()``), reattach on demand;
* add, modify, touch and remove objects (instances of regular and
  database-resident classes holding plain objects of either kind), commit,
  abort and sync in either connection (conflicts are allowed, silent lost
  updates are not);
* export a subtree and import it into the second database;
* repair offline: rename the regular classes to the legacy names (or back)
  with :func:`pclasses.rename_classes` on the closed file, or on a copy;
* reopen everything.

A model holds the committed state (objects with the class name their
records carry, their values and plain objects; the database-resident
classes with name, attributes and whether they are in the class table)
and the registry's rules.  After every step, a read-only view of each file
opened with a fresh registry with the same rules shows that

* every record loads, as the class the model resolves or as a broken
  object when the model says its class is missing;
* no state is lost: every object holds the model's values, broken or not;
* the broken inventory (:func:`pclasses.find_broken`) lists exactly the
  classes named by the records (read with ``pickletools``, not with
  pclasses) that the model says do not resolve;

and after every live reattachment (registering, aliasing, refreshing,
``registry.reattach()``) no object cached by either connection is broken
while its class resolves.

The number of runs follows the active Hypothesis profile (``ci`` keeps the
whole machine well under a minute; ``deep`` runs many more, longer ones).
"""

from __future__ import annotations

import copy
import importlib
import io
import pickle
import pickletools
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import transaction
import zodbpickle.pickle
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from persistent.mapping import PersistentMapping
from ZODB.broken import Broken, BrokenModified
from ZODB.POSException import ConflictError
from ZODB.utils import get_pickle_metadata, oid_repr

import pclasses
from pclasses.broken import missing_name

REGULAR_SOURCE = '''
from persistent import Persistent


class Item(Persistent):
    """A persistent object of a regular (importable) class."""


class Plain:
    """A plain object, pickled inside the record holding it."""
'''

REGULAR = ("Item", "Plain")
#: ZODB pickles with zodbpickle, whose PicklingError is not pickle's
PICKLING_ERRORS = (pickle.PicklingError, zodbpickle.pickle.PicklingError)
RESIDENT_NAMES = ("Note", "Memo", "Card")
CLASS_ATTRS = ("a", "b")


# ---------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class Ref:
    """The class a record names: ``regular`` with the dotted name written in
    the record, or ``resident`` with the guid."""

    kind: str
    name: str


@dataclass
class ObjState:
    cls: Ref
    v: int
    plain: tuple[Ref, int] | None = None


@dataclass
class ClassState:
    name: str
    plain: bool
    attrs: dict[str, int]
    in_table: bool = True
    oid: bytes | None = None


@dataclass
class DBState:
    objects: dict[str, ObjState] = field(default_factory=dict)
    classes: dict[str, ClassState] = field(default_factory=dict)

    def copy(self) -> DBState:
        return copy.deepcopy(self)


@dataclass
class Rules:
    """The registry's rules, as the model knows them."""

    module: str
    legacy: str
    visible: bool = True
    registered: dict[str, str] = field(default_factory=dict)  # dotted -> class name
    aliases: dict[str, str] = field(default_factory=dict)
    module_aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, module: str, name: str, table: set[str]) -> str | None:
        """What ``module.name`` resolves to: ``"M.Item"``-like dotted name,
        ``"*guid"`` for a resident class, ``"lib"`` for library classes, or
        ``None`` when it is missing."""
        if module.startswith("*"):
            return module if module[1:] in table else None
        dotted = f"{module}.{name}"
        for _ in range(10):
            if dotted in self.registered:
                return f"{self.module}.{self.registered[dotted]}"
            if dotted in self.aliases:
                dotted = self.aliases[dotted]
                continue
            mod, _, nm = dotted.rpartition(".")
            if mod in self.module_aliases:
                dotted = f"{self.module_aliases[mod]}.{nm}"
                continue
            if mod == self.module:
                return dotted if self.visible and nm in REGULAR else None
            if mod == self.legacy:
                return None
            return "lib"
        raise AssertionError(f"rule cycle at {dotted}")


# ---------------------------------------------------------------------------
# helpers


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def _close_db(db: Any) -> None:
    for each in list((getattr(db, "databases", None) or {None: db}).values()):
        each.close()


def _record_names(data: bytes) -> set[tuple[str, str]]:
    """Every class a record names, read with pickletools and ZODB (not pclasses)."""
    names = {get_pickle_metadata(data)}
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            module, _, name = arg.partition(" ")
            names.add((module, name))
    # the state pickle follows the class pickle
    end = next(pos for op, _a, pos in pickletools.genops(data) if op.name == "STOP") + 1
    for op, arg, _pos in pickletools.genops(data[end:]):
        if op.name in ("GLOBAL", "INST"):
            module, _, name = arg.partition(" ")
            names.add((module, name))
    return names


def _profile_examples() -> int:
    return settings().max_examples


# ---------------------------------------------------------------------------
# the machine


class SystemMachine(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pclasses-sm-"))
        self.moddir = self.dir / "modules"
        self.moddir.mkdir()
        sys.path.insert(0, str(self.moddir))
        tag = uuid.uuid4().hex[:10]
        self.rules_model = Rules(module=f"pcl_sm_{tag}", legacy=f"pcl_sm_legacy_{tag}")
        self.modpath = self.moddir / f"{self.rules_model.module}.py"
        self.module = self._show_module()
        self.path = str(self.dir / "Data.fs")
        self.dst_path = str(self.dir / "Target.fs")
        self.registry = pclasses.ClassRegistry()
        self.db: Any = None
        self.dst: Any = None
        self.conns: list[Any] = []
        self.tms: list[transaction.TransactionManager] = []
        self.committed = DBState()
        self.views: list[DBState] = []
        self.pending: list[dict[str, Any]] = []
        self.copies: dict[str, ObjState] = {}
        self.counter = 0
        self._open_all(init=True)

    # -- the system ----------------------------------------------------------

    def _show_module(self) -> Any:
        name = self.rules_model.module
        sys.modules.pop(name, None)
        self.modpath.write_text(REGULAR_SOURCE)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    def _hide_module(self) -> None:
        sys.modules.pop(self.rules_model.module, None)
        self.modpath.unlink(missing_ok=True)
        shutil.rmtree(self.moddir / "__pycache__", ignore_errors=True)
        importlib.invalidate_caches()

    def _open_all(self, init: bool = False) -> None:
        self.db = pclasses.open(self.path, self.registry)
        self.dst = pclasses.open(self.dst_path, self.registry)
        self.conns, self.tms = [], []
        for _ in range(2):
            tm = transaction.TransactionManager()
            self.tms.append(tm)
            self.conns.append(self.db.open(tm))
        if init:
            root = self.conns[0].root()
            root["objs"] = PersistentMapping()
            pclasses.class_table(self.conns[0])
            self.tms[0].commit()
            tm = transaction.TransactionManager()
            dconn = self.dst.open(tm)
            dconn.root()["copies"] = PersistentMapping()
            tm.commit()
            dconn.close()
        for tm in self.tms:
            tm.abort()
        self.views = [self.committed.copy(), self.committed.copy()]
        self.pending = [self._no_pending(), self._no_pending()]

    def _close_all(self) -> None:
        for conn, tm in zip(self.conns, self.tms):
            try:
                tm.abort()
                conn.close()
            except Exception:
                pass
        self.conns, self.tms = [], []
        for db in (self.db, self.dst):
            if db is not None:
                _close_db(db)
        self.db = self.dst = None

    def teardown(self) -> None:
        try:
            self._close_all()
        finally:
            sys.modules.pop(self.rules_model.module, None)
            while str(self.moddir) in sys.path:
                sys.path.remove(str(self.moddir))
            importlib.invalidate_caches()
            shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _no_pending() -> dict[str, Any]:
        return {"objects": set(), "removed": set(), "classes": []}

    def _name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _table_guids(self, state: DBState) -> set[str]:
        return {g for g, c in state.classes.items() if c.in_table}

    # -- what a written record names ------------------------------------------

    def _written(self, x: Any, old: Ref) -> Ref:
        """The class a record names once ``x`` is written: a broken object
        keeps the name it was read with, a real one is written under its
        class's own name (or guid)."""
        if pclasses.is_broken(x):
            return old
        cls = type(x)
        if isinstance(cls, pclasses.PersistentClass):
            return Ref("resident", pclasses.guid_of(cls))
        return Ref("regular", _dotted(cls))

    def _unpicklable_class_in(self, conn: Any, key: str = "objs") -> bool:
        """Whether ``conn`` holds a real object of a regular class that
        cannot be pickled by name (its module file is gone, or was imported
        again since the object was loaded): committing may then fail, as
        ZODB's writer refuses such a class (in the object's record or in a
        reference to it)."""
        module = self.rules_model.module
        objects = [obj for _oid, obj in conn._cache.items()]
        objects += [obj for obj in conn.root()[key].values() if obj._p_jar is None]
        for obj in objects:
            for x in (obj, obj.__dict__.get("p") if obj._p_changed is not None else None):
                if x is None or pclasses.is_broken(x):
                    continue
                cls = type(x)
                if cls.__module__ != module:
                    continue
                current = sys.modules.get(module)
                if not self.rules_model.visible or current is None or \
                        getattr(current, cls.__name__, None) is not cls:
                    return True
        return False

    # -- initial state ------------------------------------------------------------

    @initialize(n=st.integers(0, 2), classes=st.booleans())
    def start(self, n: int, classes: bool) -> None:
        """A few committed objects to begin with; with ``classes``, one
        database-resident class of each kind and an instance of both."""
        for k in range(n):
            self._add(0, "item", "plain" if k % 2 else None, k)
        if classes:
            self.define_class(0, False, "Note", 1)
            self.define_class(0, True, "Card", 2)
            self._add(0, "resident", "resident", 3)
        self.commit(0)

    # -- objects --------------------------------------------------------------

    def _resident_guids(self, i: int, plain: bool) -> list[str]:
        return [g for g, c in sorted(self.views[i].classes.items())
                if c.in_table and c.plain == plain]

    @rule(data=st.data(), plain=st.sampled_from([None, "plain", "resident"]),
          v=st.integers(-5, 5))
    def add_object(self, data: Any, plain: str | None, v: int) -> None:
        i = data.draw(st.integers(0, 1), label="connection")
        kinds = (["item"] if self.rules_model.visible else []) + (
            ["resident"] if self._resident_guids(i, False) else [])
        if not kinds:
            return
        self._add(i, data.draw(st.sampled_from(kinds), label="kind"), plain, v)

    def _add(self, i: int, kind: str, plain: str | None, v: int) -> None:
        conn, view = self.conns[i], self.views[i]
        table = pclasses.class_table(conn)
        if kind == "item":
            obj = self.module.Item()
            ref = Ref("regular", f"{self.module.__name__}.Item")
        else:
            guids = self._resident_guids(i, False)
            guid = guids[v % len(guids)]
            assert guid in table, (guid, sorted(table))
            obj = table[guid]()
            ref = Ref("resident", guid)
        obj.v = v
        state = ObjState(ref, v)
        if plain == "plain" and self.rules_model.visible:
            p = self.module.Plain()
            p.w = v * 10
            obj.p = p
            state.plain = (Ref("regular", f"{self.module.__name__}.Plain"), v * 10)
        elif plain == "resident" and self._resident_guids(i, True):
            guids = self._resident_guids(i, True)
            guid = guids[v % len(guids)]
            assert guid in table, (guid, sorted(table))
            p = table[guid]()
            p.w = v * 10
            obj.p = p
            state.plain = (Ref("resident", guid), v * 10)
        name = self._name("o")
        conn.root()["objs"][name] = obj
        view.objects[name] = state
        self.pending[i]["objects"].add(name)
        event(f"add {kind}, plain {state.plain[0].kind if state.plain else None}")

    def _with_objects(self) -> list[int]:
        return [i for i in (0, 1) if self.views[i].objects]

    def _pick_object(self, data: Any) -> tuple[int, str]:
        i = data.draw(st.sampled_from(self._with_objects()), label="connection")
        name = data.draw(st.sampled_from(sorted(self.views[i].objects)), label="object")
        return i, name

    @precondition(lambda self: self._with_objects())
    @rule(data=st.data(), v=st.integers(-5, 5))
    def set_value(self, data: Any, v: int) -> None:
        i, name = self._pick_object(data)
        obj = self.conns[i].root()["objs"][name]
        if pclasses.is_broken(obj):
            try:
                obj.v = v
            except BrokenModified:
                event("set: a broken object refuses")
                return
            raise AssertionError(f"a broken object of {type(obj)} accepted a change")
        obj.v = v
        self.views[i].objects[name].v = v
        self.pending[i]["objects"].add(name)

    @precondition(lambda self: self._with_objects())
    @rule(data=st.data())
    def touch(self, data: Any) -> None:
        """Mark an object changed, so its record (and any broken plain
        object in it) is written again unchanged."""
        i, name = self._pick_object(data)
        obj = self.conns[i].root()["objs"][name]
        if pclasses.is_broken(obj):
            return
        obj._p_activate()
        obj._p_changed = True
        self.pending[i]["objects"].add(name)
        if pclasses.is_broken(obj.__dict__.get("p")):
            event("touch: an object holding a broken plain object")

    @precondition(lambda self: self._with_objects())
    @rule(data=st.data())
    def remove_object(self, data: Any) -> None:
        i, name = self._pick_object(data)
        del self.conns[i].root()["objs"][name]
        del self.views[i].objects[name]
        self.pending[i]["objects"].discard(name)
        self.pending[i]["removed"].add(name)

    # -- database-resident classes ----------------------------------------------

    @rule(i=st.integers(0, 1), plain=st.booleans(), name=st.sampled_from(RESIDENT_NAMES),
          a=st.integers(0, 3))
    def define_class(self, i: int, plain: bool, name: str, a: int) -> None:
        guid = self._name("guid-")
        conn = self.conns[i]
        cls = pclasses.define_class(conn, name, (object,) if plain else (), {"a": a},
                                    guid=guid)
        self.views[i].classes[guid] = ClassState(name, plain, {"a": a})
        self.pending[i]["classes"].append(("define", guid, cls))

    def _classes(self, in_table: bool) -> list[tuple[int, str]]:
        """(connection, guid) of classes in (or, restorable, out of) the table."""
        return [(i, g) for i in (0, 1) for g, c in sorted(self.views[i].classes.items())
                if (c.in_table if in_table else (not c.in_table and c.oid is not None))]

    def _pick_class(self, data: Any, in_table: bool) -> tuple[int, str, Any]:
        i, guid = data.draw(st.sampled_from(self._classes(in_table)), label="class")
        table = pclasses.class_table(self.conns[i])
        assert (guid in table) == in_table, (guid, sorted(table))
        return i, guid, table

    @precondition(lambda self: self._classes(True))
    @rule(data=st.data(), attr=st.sampled_from(CLASS_ATTRS), value=st.integers(0, 9))
    def edit_class(self, data: Any, attr: str, value: int) -> None:
        i, guid, table = self._pick_class(data, True)
        setattr(table[guid], attr, value)
        self.views[i].classes[guid].attrs[attr] = value
        self.pending[i]["classes"].append(("attr", guid, attr, value))

    @precondition(lambda self: self._classes(True))
    @rule(data=st.data(), name=st.sampled_from(RESIDENT_NAMES))
    def rename_class(self, data: Any, name: str) -> None:
        i, guid, table = self._pick_class(data, True)
        table[guid].__name__ = name
        self.views[i].classes[guid].name = name
        self.pending[i]["classes"].append(("name", guid, name))

    @precondition(lambda self: self._classes(True))
    @rule(data=st.data())
    def delete_class(self, data: Any) -> None:
        i, guid, table = self._pick_class(data, True)
        del table[guid]
        self.views[i].classes[guid].in_table = False
        self.pending[i]["classes"].append(("table", guid, False))

    @precondition(lambda self: self._classes(False))
    @rule(data=st.data())
    def restore_class(self, data: Any) -> None:
        """Put a deleted class back under the same guid (its record, by oid)."""
        i, guid, table = self._pick_class(data, False)
        oid = self.views[i].classes[guid].oid
        table[guid] = self.conns[i].get(oid)
        self.views[i].classes[guid].in_table = True
        self.pending[i]["classes"].append(("table", guid, True))
        event("restore a class")

    # -- transactions ---------------------------------------------------------------

    @rule(i=st.integers(0, 1))
    def commit(self, i: int) -> None:
        conn, tm = self.conns[i], self.tms[i]
        pending, view = self.pending[i], self.views[i]
        # what the records will name, from the objects as they are now
        objs = conn.root()["objs"]
        written: dict[str, ObjState] = {}
        for name in pending["objects"]:
            if name not in view.objects:
                continue
            state = copy.deepcopy(view.objects[name])
            obj = objs[name]
            state.cls = self._written(obj, state.cls)
            if state.plain is not None:
                p = obj.__dict__.get("p") if obj._p_changed is not None else None
                if p is not None:
                    state.plain = (self._written(p, state.plain[0]), state.plain[1])
            written[name] = state
        risky = self._unpicklable_class_in(conn)
        try:
            tm.commit()
        except ConflictError:
            event("commit: conflict")
            tm.abort()
        except PICKLING_ERRORS:
            assert risky, "commit failed though every class can be pickled by name"
            event("commit: a class that cannot be pickled by name")
            tm.abort()
        else:
            if pending["objects"] or pending["removed"] or pending["classes"]:
                event("commit: changes written")
            model = self.committed
            model.objects.update(written)
            for name in pending["removed"]:
                model.objects.pop(name, None)
            for op in pending["classes"]:
                guid = op[1]
                if op[0] == "define":
                    # stored when the table (or a plain instance) refers to it
                    model.classes[guid] = ClassState(op[2].__name__, view.classes[guid].plain,
                                                     {"a": op[2].a}, in_table=False,
                                                     oid=op[2]._p_oid)
                    model.classes[guid].in_table = True
                elif op[0] == "attr":
                    model.classes[guid].attrs[op[2]] = op[3]
                elif op[0] == "name":
                    model.classes[guid].name = op[2]
                else:
                    model.classes[guid].in_table = op[2]
            if any(op[0] == "table" and op[2] for op in pending["classes"]):
                # classes put back in the table: reattach, as the guide says
                self._synced(i)
                self.registry.reattach()
                self._check_live()
        self._synced(i)

    def _synced(self, i: int) -> None:
        self.views[i] = self.committed.copy()
        self.pending[i] = self._no_pending()

    @rule(i=st.integers(0, 1))
    def abort(self, i: int) -> None:
        self.tms[i].abort()
        self._synced(i)

    @rule(i=st.integers(0, 1))
    def sync(self, i: int) -> None:
        self.conns[i].sync()
        self._synced(i)

    # -- the registry ---------------------------------------------------------------

    def _names(self) -> list[str]:
        m, legacy = self.rules_model.module, self.rules_model.legacy
        return [f"{mod}.{c}" for mod in (m, legacy) for c in REGULAR]

    @rule(data=st.data())
    def register(self, data: Any) -> None:
        if not self.rules_model.visible:
            return
        name = data.draw(st.sampled_from(self._names()), label="name")
        cls_name = name.rpartition(".")[2]
        self.registry.register(getattr(self.module, cls_name), name)
        self.rules_model.registered[name] = cls_name
        self._check_live()

    @rule(data=st.data())
    def unregister(self, data: Any) -> None:
        name = data.draw(st.sampled_from(self._names()), label="name")
        self.registry.unregister(name)
        self.rules_model.registered.pop(name, None)

    @rule(cls_name=st.sampled_from(REGULAR), remove=st.booleans())
    def alias(self, cls_name: str, remove: bool) -> None:
        old = f"{self.rules_model.legacy}.{cls_name}"
        if remove:
            self.registry.unalias(old)
            self.rules_model.aliases.pop(old, None)
        else:
            new = f"{self.rules_model.module}.{cls_name}"
            self.registry.alias(old, new)
            self.rules_model.aliases[old] = new
            self._check_live()

    @rule(remove=st.booleans())
    def alias_module(self, remove: bool) -> None:
        legacy = self.rules_model.legacy
        if remove:
            self.registry.unalias_module(legacy)
            self.rules_model.module_aliases.pop(legacy, None)
        else:
            self.registry.alias_module(legacy, self.rules_model.module)
            self.rules_model.module_aliases[legacy] = self.rules_model.module
            self._check_live()

    @precondition(lambda self: self.rules_model.visible)
    @rule()
    def hide_module(self) -> None:
        """The module file goes away (an add-on uninstalled)."""
        self._hide_module()
        self.rules_model.visible = False
        self.registry.refresh()

    @precondition(lambda self: not self.rules_model.visible)
    @rule()
    def show_module(self) -> None:
        """The module file comes back (reinstalled): registrations are made
        again with its new classes, and the registry refreshed."""
        self.module = self._show_module()
        self.rules_model.visible = True
        for name, cls_name in self.rules_model.registered.items():
            self.registry.register(getattr(self.module, cls_name), name)
        self.registry.refresh()
        self._check_live()

    @rule()
    def reattach(self) -> None:
        report = self.registry.reattach()
        event(f"reattach: {'some' if report.total else 'none'} reattached")
        self._check_live()

    @rule(which=st.sampled_from(["source", "target"]))
    def peek(self, which: str) -> None:
        """Another thread reads every object in a connection of its own and
        returns it to the pool: the idle connection keeps what it loaded."""
        db, key = (self.db, "objs") if which == "source" else (self.dst, "copies")
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            for obj in conn.root()[key].values():
                obj._p_activate()
        finally:
            tm.abort()
            conn.close()

    # -- export and import ----------------------------------------------------------

    @rule(data=st.data())
    def export_import(self, data: Any) -> None:
        """Export a committed object's subtree; import it into the second
        database (missing classes imported as broken objects)."""
        names = sorted(self.committed.objects)
        if not names:
            return
        name = data.draw(st.sampled_from(names), label="object")
        state = self.committed.objects[name]
        tm = transaction.TransactionManager()
        conn = self.db.open(tm)
        buf = io.BytesIO()
        try:
            pclasses.export_subtree(conn, conn.root()["objs"][name], buf)
        finally:
            tm.abort()
            conn.close()
        tm = transaction.TransactionManager()
        dconn = self.dst.open(tm)
        try:
            buf.seek(0)
            copies = dconn.root()["copies"]
            # (a plain instance of a class stored in the source, which the
            # target lacks, refers to a placeholder class stored by the import)
            pclasses.import_subtree(dconn, buf, missing="broken", into=copies,
                                    name=name + "-" + str(len(self.copies)))
            risky = self._unpicklable_class_in(dconn, "copies")
            try:
                tm.commit()
            except PICKLING_ERRORS:
                # the copies mapping refers to an earlier copy whose class
                # object cannot be pickled by name any more
                assert risky, "import failed though every class can be pickled by name"
                return
            self.copies[name + "-" + str(len(self.copies))] = copy.deepcopy(state)
            event("export and import: imported")
        finally:
            tm.abort()
            dconn.close()

    # -- repair and reopening -----------------------------------------------------------

    def _rename_rules(self, back: bool) -> dict[str, str]:
        m, legacy = self.rules_model.module, self.rules_model.legacy
        pairs = {f"{m}.{c}": f"{legacy}.{c}" for c in REGULAR}
        return {v: k for k, v in pairs.items()} if back else pairs

    @staticmethod
    def _renamed(state: DBState, rules: dict[str, str]) -> None:
        for obj in state.objects.values():
            if obj.cls.kind == "regular":
                obj.cls = Ref("regular", rules.get(obj.cls.name, obj.cls.name))
            if obj.plain is not None and obj.plain[0].kind == "regular":
                obj.plain = (Ref("regular", rules.get(obj.plain[0].name, obj.plain[0].name)),
                             obj.plain[1])

    @rule(back=st.booleans())
    def repair(self, back: bool) -> None:
        """Close everything (uncommitted changes are lost), rename the
        regular classes to the legacy names (or back) in the file, reopen."""
        self._close_all()
        rules = self._rename_rules(back)
        report = pclasses.rename_classes(self.path, rules)
        assert not report.skipped and not report.unreadable, report.to_dict()
        assert set(report.renamed) <= set(rules)
        if report.changed:
            event("repair: records renamed")
        self._renamed(self.committed, rules)
        self._open_all()

    @rule(back=st.booleans())
    def repair_copy(self, back: bool) -> None:
        """Rename in a copy of the file (the database stays open) and check
        the copy against the renamed model."""
        copy_path = str(self.dir / "Copy.fs")
        shutil.copyfile(self.path, copy_path)
        rules = self._rename_rules(back)
        report = pclasses.rename_classes(copy_path, rules)
        assert not report.skipped and not report.unreadable, report.to_dict()
        expected = self.committed.copy()
        self._renamed(expected, rules)
        self._check_file(copy_path, expected, "objs")
        for suffix in ("", ".index", ".lock", ".tmp"):
            Path(copy_path + suffix).unlink(missing_ok=True)

    @rule()
    def reopen(self) -> None:
        self._close_all()
        self._open_all()

    # -- invariants ------------------------------------------------------------------------

    def _fresh_registry(self) -> pclasses.ClassRegistry:
        """A new registry with the model's rules."""
        r = pclasses.ClassRegistry()
        r.auto_reattach = False
        module = sys.modules.get(self.rules_model.module)
        for name, cls_name in self.rules_model.registered.items():
            cls = self.registry.registrations.get(name)
            assert cls is not None and cls.__name__ == cls_name
            r.register(cls, name)
        for old, new in self.rules_model.aliases.items():
            r.alias(old, new)
        for old, new in self.rules_model.module_aliases.items():
            r.alias_module(old, new)
        del module
        return r

    def _check_file(self, path: str, model: DBState, key: str,
                    objects: dict[str, ObjState] | None = None) -> set[tuple[str, str]]:
        """A read-only view of ``path`` with a fresh registry agrees with the
        model; returns the classes its records name that do not resolve."""
        objects = model.objects if objects is None else objects
        table = self._table_guids(model)
        registry = self._fresh_registry()
        db = pclasses.open(path, registry, read_only=True)
        try:
            conn = db.open(transaction.TransactionManager())
            # Every record loads, as the class its own record names: each
            # object is made from its record first (a reference to it, met
            # while loading another object, carries the class the referrer
            # knew, which ZODB takes for the object's class without reading
            # its record), then activated.
            storage = db.storage
            named: set[tuple[str, str]] = set()
            loaded = []
            for oid in sorted(storage._index.keys()):
                data, _serial = storage.load(oid)
                named |= _record_names(data)
                loaded.append(conn.get(oid))
            for obj in loaded:
                if not isinstance(obj, type):
                    obj._p_activate()
            # the objects and their state
            found = conn.root()[key]
            assert sorted(found) == sorted(objects), (sorted(found), sorted(objects))
            for name, state in objects.items():
                self._check_object(conn, found[name], state, model, table, name)
            # the broken inventory
            report = pclasses.find_broken(db)
            assert not report.unreadable, report.to_dict()
            listed = {(c.module, c.name) for c in report}
            if listed:
                event("a file holds broken objects")
            expected = {n for n in named if self.rules_model.resolve(*n, table) is None}
            assert listed == expected, (sorted(listed), sorted(expected))
            conn.close()
        finally:
            _close_db(db)
        return expected

    def _check_object(self, conn: Any, obj: Any, state: ObjState, model: DBState,
                      table: set[str], name: str) -> None:
        cls = state.cls
        module, cname = (f"*{cls.name}", "?") if cls.kind == "resident" else \
            cls.name.rsplit(".", 1)
        resolves = self.rules_model.resolve(module, cname, table)
        where = f"object {name} ({state})"
        if resolves is None:
            assert pclasses.is_broken(obj), where
            d = pclasses.broken_state(obj)
            assert d["v"] == state.v, where
            p = d.get("p")
        else:
            assert not pclasses.is_broken(obj), where
            if cls.kind == "resident":
                c = model.classes[cls.name]
                assert pclasses.guid_of(type(obj)) == cls.name, where
                assert type(obj).__name__ == c.name, where
                for attr, value in c.attrs.items():
                    assert getattr(type(obj), attr) == value, where
            else:
                assert _dotted(type(obj)) == resolves, where
            assert obj.v == state.v, where
            p = obj.__dict__.get("p")
        if state.plain is None:
            assert p is None, where
            return
        pref, w = state.plain
        if pref.kind == "resident" and pref.name not in model.classes:
            # an import target lacking the class: an instance of the
            # placeholder class the import stored, broken, state kept
            assert pclasses.is_broken(p), where
            assert pclasses.broken_state(p) == {"w": w}, where
            return
        if pref.kind == "resident":
            # plain instances refer to the class record itself: never broken
            c = model.classes[pref.name]
            assert not pclasses.is_broken(p) and pclasses.guid_of(type(p)) == pref.name, where
            assert type(p).__name__ == c.name and p.a == c.attrs["a"], where
            assert p.w == w, where
            return
        pmod, pname = pref.name.rsplit(".", 1)
        presolves = self.rules_model.resolve(pmod, pname, table)
        if presolves is None:
            assert pclasses.is_broken(p), where
            assert missing_name(type(p)) == (pmod, pname), where
            assert pclasses.broken_state(p) == {"w": w}, where
        else:
            assert not pclasses.is_broken(p), where
            assert _dotted(type(p)) == presolves and p.w == w, where

    def _check_live(self) -> None:
        """No object cached by a connection of either database, open or idle
        in the pool, is broken while its class resolves (live reattachment
        just happened).  An open connection resolves through its own view of
        the class table; an idle one will see the committed table when it is
        used again, so that is the table it is held to."""
        committed_table = self._table_guids(self.committed)
        connections: list[Any] = []
        for db in (self.db, self.dst):
            db._connectionMap(connections.append)
        for conn in connections:
            idle = conn.opened is None
            for _oid, obj in list(conn._cache.items()):
                if isinstance(obj, type):
                    continue
                candidates = [obj]
                if obj._p_changed is not None and not pclasses.is_broken(obj):
                    candidates.append(obj.__dict__.get("p"))
                for x in candidates:
                    if x is None or not pclasses.is_broken(x):
                        continue
                    module, name = missing_name(type(x))
                    event("live: a cached object is broken")
                    if idle:
                        table = committed_table if conn.db() is self.db else set()
                        resolves = self.rules_model.resolve(module, name, table) is not None
                        target = f"the model's {module}.{name}"
                    else:
                        target = self.registry(conn, module, name)
                        resolves = not (isinstance(target, type)
                                        and issubclass(target, Broken))
                    assert not resolves, (
                        f"{module}.{name} resolves ({target!r}) but the object "
                        f"{oid_repr(getattr(x, '_p_oid', None))} is still broken in "
                        f"{'an idle' if idle else 'an open'} connection")

    @invariant()
    def registry_agrees_with_the_model(self) -> None:
        table = self._table_guids(self.committed)
        for dotted in self._names():
            module, name = dotted.rsplit(".", 1)
            res = self.registry.explain(module, name)
            assert res.ok == (self.rules_model.resolve(module, name, table) is not None), res

    @invariant()
    def files_agree_with_the_model(self) -> None:
        if self.db is None:
            return
        expected = self._check_file(self.path, self.committed, "objs")
        # the live database, through the registry in use, says the same
        assert {(c.module, c.name) for c in pclasses.find_broken(self.db)} == expected
        if self.copies:
            expected = self._check_file(self.dst_path, DBState(), "copies", self.copies)
            assert {(c.module, c.name) for c in pclasses.find_broken(self.dst)} == expected


_EXAMPLES = _profile_examples()

#: the ``deep`` profile runs far longer than the suite's default timeout
pytestmark = pytest.mark.timeout(300 if _EXAMPLES <= 100 else 3600)

TestSystem = SystemMachine.TestCase
TestSystem.settings = settings(
    max_examples=max(6, _EXAMPLES // 6),
    stateful_step_count=20 if _EXAMPLES <= 100 else 50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
