"""Property: records holding broken objects are rewritten losslessly.

For generated states (attribute values from :func:`strategies.values`, plain
objects of a class that goes missing nested at random in lists, dicts and
tuples of a PersistentMapping, shared plain objects, and a persistent object
of the missing class referred to from the container and from inside a plain
object): store them, make the class's module disappear, load the container in
a new database with a new registry, edit it (add a key) and commit, bring
the module back, and load everything in a new database: the state is the
generated one and every object is an instance of the real class again.

The module is written once per test module; each example only varies the
data and uses a FileStorage in its own temporary directory.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import transaction
from hypothesis import example, given
from hypothesis import strategies as st
from persistent.mapping import PersistentMapping

import pclasses
from pclasses.record.reader import GlobalRef, Inert, PersistentRef, read_record, split_record
from strategies import values

SOURCE = """
    from persistent import Persistent


    class Plain:
        '''Not persistent: pickled inside the record holding it.'''


    class Thing(Persistent):
        '''Persistent: a record of its own.'''
"""


class Vanishing:
    """One module file that can be made unimportable and brought back."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name = f"pcl_brk_{uuid.uuid4().hex}"
        self.path = directory / f"{self.name}.py"

    def show(self) -> Any:
        """Write the module and import it afresh."""
        sys.modules.pop(self.name, None)
        self.path.write_text(textwrap.dedent(SOURCE))
        importlib.invalidate_caches()
        return importlib.import_module(self.name)

    def hide(self) -> None:
        sys.modules.pop(self.name, None)
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.directory / "__pycache__", ignore_errors=True)
        importlib.invalidate_caches()


@pytest.fixture(scope="module")
def vanishing(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("broken_props_modules")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(directory))
        module = Vanishing(directory)
        try:
            yield module
        finally:
            sys.modules.pop(module.name, None)


# ---------------------------------------------------------------------------
# Descriptions of states: PlainDesc stands for a plain object of the missing class


class PlainDesc:
    """A plain object of the class that goes missing, by its attributes."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.attrs = attrs

    def __eq__(self, other: object) -> bool:
        return type(other) is PlainDesc and other.attrs == self.attrs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PlainDesc({self.attrs!r})"


class ThingRef:
    """Stands for the persistent object of the missing class."""

    def __eq__(self, other: object) -> bool:
        return type(other) is ThingRef

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "ThingRef()"


attr_names = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)


def plains(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(PlainDesc, st.dictionaries(attr_names, children, max_size=3))


def trees() -> st.SearchStrategy:
    """Values with plain objects of the missing class nested at random."""
    leaves = st.one_of(values(4), plains(values(4)), st.just(ThingRef()))
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.text(max_size=5), children, max_size=3),
            st.tuples(children, children),
            plains(children),
        ),
        max_leaves=8,
    )


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    return {
        "items": draw(st.dictionaries(st.text(max_size=6).map(lambda k: "g" + k), trees(),
                                      max_size=4)),
        "thing": draw(st.dictionaries(attr_names, trees(), max_size=3)),
        "shared": draw(st.none() | plains(values(3))),
    }


def build(desc: Any, m: Any, thing: Any) -> Any:
    """Real objects for a description (``m`` is the module, ``thing`` the Thing)."""
    if isinstance(desc, PlainDesc):
        obj = m.Plain()
        obj.__dict__.update({k: build(v, m, thing) for k, v in desc.attrs.items()})
        return obj
    if isinstance(desc, ThingRef):
        return thing
    if type(desc) is list:
        return [build(v, m, thing) for v in desc]
    if type(desc) is tuple:
        return tuple(build(v, m, thing) for v in desc)
    if type(desc) is dict:
        return {k: build(v, m, thing) for k, v in desc.items()}
    return desc


def describe(obj: Any, m: Any, thing: Any) -> Any:
    """The description of loaded objects; asserts nothing is broken on the way."""
    assert not pclasses.is_broken(obj), obj
    if type(obj) is m.Plain:
        return PlainDesc({k: describe(v, m, thing) for k, v in vars(obj).items()})
    if obj is thing:
        return ThingRef()
    assert type(obj).__module__ != m.__name__, obj  # no other object of the module
    if type(obj) is list:
        return [describe(v, m, thing) for v in obj]
    if type(obj) is tuple:
        return tuple(describe(v, m, thing) for v in obj)
    if type(obj) is dict:
        return {k: describe(v, m, thing) for k, v in obj.items()}
    return obj


def _store(path: Path, m: Any, scenario: dict[str, Any]) -> None:
    db = pclasses.open(str(path), pclasses.ClassRegistry())
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        thing = m.Thing()
        c = PersistentMapping()
        for key, desc in scenario["items"].items():
            c[key] = build(desc, m, thing)
        thing.__dict__.update(
            {k: build(v, m, thing) for k, v in scenario["thing"].items()})
        c["thing"] = thing
        holder = m.Plain()
        holder.ref = thing
        c["holder"] = holder
        if scenario["shared"] is not None:
            shared = build(scenario["shared"], m, thing)
            c["s1"] = shared
            c["s2"] = [shared]
        conn.root()["c"] = c
        tm.commit()
        conn.close()
    finally:
        db.close()


def inert_tree(x: Any) -> Any:
    """A comparable form of a state read by :func:`pclasses.read_record`.

    Set contents compare as sets (a set rebuilt from a pickle may iterate in
    another order, broken or not); sharing is not compared here (object
    identity of equal strings can change in any pickle round trip).
    """
    if isinstance(x, Inert):
        target = x.target
        if isinstance(target, PersistentRef):
            target = inert_tree(target)
        if target in (("builtins", "set"), ("builtins", "frozenset")) and x.args:
            args: Any = ("elements", frozenset(inert_tree(v) for v in x.args[0]))
        else:
            args = inert_tree(x.args)
        return ("inert", target, x.how, args, inert_tree(x.state),
                inert_tree(x.listitems), inert_tree(x.dictitems))
    if isinstance(x, PersistentRef):
        ref = x.reference
        return ("ref", ref.kind, ref.oid, ref.klass.pair if ref.klass else None)
    if isinstance(x, type) and issubclass(x, GlobalRef):
        return ("global", x.dotted_pair)
    if type(x) is dict:
        return ("dict", tuple((inert_tree(k), inert_tree(v)) for k, v in x.items()))
    if type(x) in (list, tuple):
        return (type(x).__name__, tuple(inert_tree(v) for v in x))
    return ("value", type(x).__name__, x)


def _edit_while_missing(path: Path, m_name: str) -> None:
    db = pclasses.open(str(path), pclasses.ClassRegistry())
    tm = transaction.TransactionManager()
    try:
        conn = db.open(tm)
        c = conn.root()["c"]
        oid = c._p_oid
        assert pclasses.is_broken(c["thing"]) and pclasses.is_broken(c["holder"])
        assert type(c["holder"]).__module__ == m_name
        original = db.storage.load(oid)[0]
        c["added"] = "while missing"
        tm.commit()
        edited = db.storage.load(oid)[0]
        assert edited != original
        assert inert_tree(read_record(edited, oid).state) != \
            inert_tree(read_record(original, oid).state)
        # the edit undone gives the original record back: the same class
        # pickle, byte for byte, and the same state (tests/test_broken.py
        # checks byte identity of whole records for ordinary data)
        del c["added"]
        tm.commit()
        again = db.storage.load(oid)[0]
        assert split_record(again, oid)[0] == split_record(original, oid)[0]
        assert inert_tree(read_record(again, oid).state) == \
            inert_tree(read_record(original, oid).state)
        c["added"] = "while missing"
        tm.commit()
        info = pclasses.scan_record(db.storage.load(oid)[0], oid)
        assert (m_name, "Plain") in info.globals and (m_name, "Thing") in info.globals
        conn.close()
    finally:
        tm.abort()
        db.close()


@given(scenarios())
@example({"items": {"g": [{15, 7}, (frozenset({"x"}), b"")]}, "thing": {"t": ThingRef()},
          "shared": PlainDesc({"a": {15, 7}})})
@example({"items": {"g": PlainDesc({"p": PlainDesc({"q": ThingRef()})})},
          "thing": {"nested": PlainDesc({"deep": [{"k": (PlainDesc({}), 1)}]})},
          "shared": None})
def test_containers_of_broken_objects_are_rewritten_losslessly(vanishing, scenario):
    """A container holding broken objects, edited while their class is missing,
    loads back with the generated state and real classes once the class returns."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "Data.fs"
        _store(path, vanishing.show(), scenario)
        vanishing.hide()
        _edit_while_missing(path, vanishing.name)
        m = vanishing.show()
        db = pclasses.open(str(path))  # a default registry
        try:
            c = db.open(transaction.TransactionManager()).root()["c"]
            thing = c["thing"]
            assert type(thing) is m.Thing
            thing._p_activate()
            assert {k: describe(v, m, thing) for k, v in vars(thing).items()} == \
                scenario["thing"]
            for key, desc in scenario["items"].items():
                assert describe(c[key], m, thing) == desc
            assert type(c["holder"]) is m.Plain and c["holder"].ref is thing
            assert c["added"] == "while missing"
            if scenario["shared"] is not None:
                assert c["s1"] is c["s2"][0]
                assert describe(c["s1"], m, thing) == scenario["shared"]
            expected = {*scenario["items"], "thing", "holder", "added"}
            if scenario["shared"] is not None:
                expected |= {"s1", "s2"}
            assert set(c) == expected
        finally:
            db.close()
