"""Claims about pclasses.registry.ClassRegistry, the ZODB class factory.

Modules the registry imports are real files written into ``tmp_path`` and
put on ``sys.path``; databases are real FileStorages.  Nothing in the
registry is patched.
"""

from __future__ import annotations

import copyreg
import importlib
import importlib.abc
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import transaction
import ZODB
import ZODB.broken
import ZODB.FileStorage
import ZODB.interfaces
from persistent.mapping import PersistentMapping
from ZODB.MappingStorage import MappingStorage

import pclasses
from pclasses.errors import AliasCycleError, PClassesError, RegistrationError
from pclasses.registry import NOT_RESIDENT, ClassRegistry, Resolution

HERE = __name__


class Alpha:
    pass


class Beta:
    pass


class Gamma:
    pass


def uid() -> str:
    return uuid.uuid4().hex[:10]


def dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------
# Real modules on disk


class ModuleWriter:
    """Writes importable modules under a directory on ``sys.path``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tops: set[str] = set()

    def write(self, modname: str, source: str) -> Path:
        parts = modname.split(".")
        self.tops.add(parts[0])
        directory = self.root
        for pkg in parts[:-1]:
            directory = directory / pkg
            directory.mkdir(exist_ok=True)
            init = directory / "__init__.py"
            if not init.exists():
                init.write_text("")
        path = directory / f"{parts[-1]}.py"
        path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return path

    def forget(self, modname: str) -> None:
        """Remove ``modname`` from sys.modules (it and its submodules)."""
        for name in list(sys.modules):
            if name == modname or name.startswith(modname + "."):
                del sys.modules[name]

    def cleanup(self) -> None:
        for top in self.tops:
            self.forget(top)


@pytest.fixture
def mods(tmp_path, monkeypatch):
    root = tmp_path / "mods"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    writer = ModuleWriter(root)
    yield writer
    writer.cleanup()
    importlib.invalidate_caches()


@pytest.fixture
def reg() -> ClassRegistry:
    return ClassRegistry()


# ---------------------------------------------------------------------------
# Resolution paths


def test_registered_name_resolves_to_the_registered_class(reg):
    """A registered dotted name resolves to the registered object, even if no such module exists."""
    name = f"pcl_gone_{uid()}.Thing"
    reg.register(Alpha, name)
    module, _, cls = name.rpartition(".")
    assert reg(None, module, cls) is Alpha
    assert reg.class_factory(None, module, cls) is Alpha
    res = reg.explain(module, cls)
    assert isinstance(res, Resolution)
    assert (res.how, res.chain, res.target, res.error) == ("registered", (name,), Alpha, None)
    assert res.ok


def test_register_without_name_uses_module_and_name_of_the_class(reg):
    """register(cls) registers cls under cls.__module__ + '.' + cls.__name__."""
    reg.register(Alpha)
    assert reg.registrations == {dotted(Alpha): Alpha}
    assert reg.explain(HERE, "Alpha").how == "registered"


def test_class_alias_resolves_to_the_target(reg):
    """alias(old, new) makes records naming old load new."""
    old = f"pcl_gone_{uid()}.Old"
    reg.alias(old, dotted(Alpha))
    assert reg(None, *old.rsplit(".", 1)) is Alpha
    res = reg.explain(*old.rsplit(".", 1))
    assert res.how == "aliased"
    assert res.chain == (old, dotted(Alpha))
    assert res.resolved == dotted(Alpha)
    assert res.target is Alpha
    assert res.error is None


def test_chain_of_aliases_is_followed(reg):
    """a -> b -> c resolves a (and b) to c, and explain lists the whole chain."""
    u = uid()
    a, b = f"pcl_a_{u}.A", f"pcl_b_{u}.B"
    reg.alias(a, b)
    reg.alias(b, dotted(Gamma))
    assert reg(None, *a.rsplit(".", 1)) is Gamma
    assert reg(None, *b.rsplit(".", 1)) is Gamma
    res = reg.explain(*a.rsplit(".", 1))
    assert res.how == "aliased"
    assert res.chain == (a, b, dotted(Gamma))


def test_module_alias_maps_by_dotted_prefix(reg, mods):
    """alias_module('old.pkg', 'new.pkg') maps old.pkg.sub.Cls to new.pkg.sub.Cls and old.pkg.Top to
    new.pkg.Top."""
    u = uid()
    new = f"pcl_new_{u}.pkg"
    old = f"pcl_old_{u}.pkg"
    mods.write(f"{new}.sub", "class Cls:\n    pass\n")
    mods.write(f"{new}.__init__", "class Top:\n    pass\n")
    reg.alias_module(old, new)
    import_sub = importlib.import_module(f"{new}.sub")
    import_top = importlib.import_module(new)

    assert reg(None, f"{old}.sub", "Cls") is import_sub.Cls
    assert reg(None, old, "Top") is import_top.Top
    res = reg.explain(f"{old}.sub", "Cls")
    assert res.how == "aliased"
    assert res.chain == (f"{old}.sub.Cls", f"{new}.sub.Cls")
    assert reg.module_aliases == {old: new}


def test_module_alias_does_not_match_a_mere_string_prefix(reg):
    """alias_module('old.pkg', ...) leaves old.pkgx.Cls alone (prefixes are whole dotted
    components)."""
    u = uid()
    reg.alias_module(f"pcl_old_{u}.pkg", "collections")
    res = reg.explain(f"pcl_old_{u}.pkgx", "OrderedDict")
    assert res.how == "broken"
    assert res.chain == (f"pcl_old_{u}.pkgx.OrderedDict",)


def test_module_alias_then_class_alias(reg):
    """A name renamed by a module alias is then subject to class aliases on its new name."""
    u = uid()
    old_mod, new_mod = f"pcl_old_{u}", f"pcl_new_{u}"
    reg.alias_module(old_mod, new_mod)
    reg.alias(f"{new_mod}.Cls", dotted(Beta))
    assert reg(None, old_mod, "Cls") is Beta
    res = reg.explain(old_mod, "Cls")
    assert res.how == "aliased"
    assert res.chain == (f"{old_mod}.Cls", f"{new_mod}.Cls", dotted(Beta))


def test_import_resolution(reg):
    """A name with no registration or alias is imported, like ZODB's find_global."""
    assert reg(None, HERE, "Alpha") is Alpha
    res = reg.explain(HERE, "Alpha")
    assert (res.how, res.chain, res.target, res.error) == (
        "imported", (dotted(Alpha),), Alpha, None)


def test_import_of_module_not_yet_imported(reg, mods):
    """A module that is importable but not yet in sys.modules is imported on first lookup."""
    name = f"pcl_lazy_{uid()}"
    mods.write(name, "class Lazy:\n    pass\n")
    assert name not in sys.modules
    cls = reg(None, name, "Lazy")
    assert cls is sys.modules[name].Lazy
    assert reg.explain(name, "Lazy").how == "imported"


@pytest.mark.parametrize(
    "module, name, expected",
    [
        ("copy_reg", "_reconstructor", copyreg._reconstructor),
        ("__builtin__", "set", set),
        ("__builtin__", "object", object),
        ("UserDict", "UserDict", __import__("collections").UserDict),
    ],
)
def test_python2_names_map_as_zodb_find_global_does(reg, module, name, expected):
    """Python 2 globals in old records (copy_reg._reconstructor, __builtin__.set) resolve as ZODB's
    find_global resolves them."""
    assert ZODB.broken.find_global(module, name) is expected
    assert reg(None, module, name) is expected
    res = reg.explain(module, name)
    assert res.how == "imported"
    assert res.chain[0] == f"{module}.{name}"
    assert res.chain[-1] == f"{expected.__module__}.{expected.__name__}"
    assert res.error is None


def test_missing_module_resolves_broken(reg):
    """A name whose module does not exist resolves to a broken class carrying the missing name."""
    module = f"pcl_missing_{uid()}"
    cls = reg(None, module, "Gone")
    assert issubclass(cls, ZODB.broken.Broken)
    assert (cls.__module__, cls.__name__) == (module, "Gone")
    res = reg.explain(module, "Gone")
    assert res.how == "broken"
    assert not res.ok
    assert res.chain == (f"{module}.Gone",)
    assert res.target is cls
    assert "ModuleNotFoundError" in res.error and module in res.error


def test_missing_attribute_resolves_broken(reg):
    """A name missing from an existing module resolves broken, and explain says which attribute."""
    cls = reg(None, HERE, "NoSuchClass")
    assert issubclass(cls, ZODB.broken.Broken)
    res = reg.explain(HERE, "NoSuchClass")
    assert res.how == "broken"
    assert "AttributeError" in res.error and "NoSuchClass" in res.error


def test_module_raising_at_import_resolves_broken(reg, mods):
    """A module that raises while importing yields a broken class, not an exception, and explain
    carries the error."""
    name = f"pcl_raises_{uid()}"
    marker = f"boom-{uid()}"
    mods.write(name, f"raise RuntimeError({marker!r})\nclass Thing:\n    pass\n")
    cls = reg(None, name, "Thing")
    assert issubclass(cls, ZODB.broken.Broken)
    res = reg.explain(name, "Thing")
    assert res.how == "broken"
    assert "RuntimeError" in res.error and marker in res.error


# ---------------------------------------------------------------------------
# Resolution order


@pytest.mark.parametrize("register_first", [True, False])
def test_registration_wins_over_alias(reg, register_first):
    """When a name is both registered and aliased, the registration is used whatever the declaration
    order."""
    name = f"pcl_both_{uid()}.X"
    if register_first:
        reg.register(Alpha, name)
        reg.alias(name, dotted(Beta))
    else:
        reg.alias(name, dotted(Beta))
        reg.register(Alpha, name)
    assert reg(None, *name.rsplit(".", 1)) is Alpha
    assert reg.explain(*name.rsplit(".", 1)).how == "registered"


def test_registration_wins_over_import(reg):
    """Registering an importable name overrides the imported object."""
    reg(None, HERE, "Alpha")  # cached as imported first
    reg.register(Beta, dotted(Alpha))
    assert reg(None, HERE, "Alpha") is Beta
    assert reg.explain(HERE, "Alpha").how == "registered"


def test_alias_wins_over_import(reg):
    """Aliasing an importable name overrides the imported object."""
    reg(None, HERE, "Alpha")
    reg.alias(dotted(Alpha), dotted(Beta))
    assert reg(None, HERE, "Alpha") is Beta
    res = reg.explain(HERE, "Alpha")
    assert res.how == "aliased" and res.chain == (dotted(Alpha), dotted(Beta))


def test_alias_to_registered_name_yields_registered_object(reg):
    """An alias chain ending in a registered name resolves to the registered object."""
    u = uid()
    reg.register(Gamma, f"pcl_reg_{u}.Target")
    reg.alias(f"pcl_old_{u}.Old", f"pcl_reg_{u}.Target")
    assert reg(None, f"pcl_old_{u}", "Old") is Gamma
    res = reg.explain(f"pcl_old_{u}", "Old")
    assert res.how == "aliased"
    assert res.chain == (f"pcl_old_{u}.Old", f"pcl_reg_{u}.Target")


# ---------------------------------------------------------------------------
# Declarations: cycles, repeats, malformed names


def snapshot(reg: ClassRegistry):
    return (dict(reg.registrations), dict(reg.aliases), dict(reg.module_aliases))


def test_two_cycle_refused_with_message_naming_it(reg):
    """alias(b, a) after alias(a, b) raises AliasCycleError naming the cycle and changes nothing."""
    reg.alias("pa.A", "pb.B")
    before = snapshot(reg)
    with pytest.raises(AliasCycleError) as info:
        reg.alias("pb.B", "pa.A")
    assert str(info.value) == "alias cycle: pb.B -> pa.A -> pb.B"
    assert info.value.chain == ["pb.B", "pa.A", "pb.B"]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PClassesError)
    assert isinstance(info.value, RegistrationError)
    assert snapshot(reg) == before


def test_self_alias_refused(reg):
    """alias(x, x) is refused as a cycle."""
    with pytest.raises(AliasCycleError, match=r"alias cycle: pa\.A -> pa\.A"):
        reg.alias("pa.A", "pa.A")
    assert reg.aliases == {}


def test_three_cycle_refused_with_message_naming_it(reg):
    """Closing a -> b -> c -> a raises with the full cycle in the message; the registry is
    unchanged."""
    reg.alias("pa.A", "pb.B")
    reg.alias("pb.B", "pc.C")
    before = snapshot(reg)
    with pytest.raises(AliasCycleError) as info:
        reg.alias("pc.C", "pa.A")
    assert str(info.value) == "alias cycle: pc.C -> pa.A -> pb.B -> pc.C"
    assert info.value.chain[0] == info.value.chain[-1] == "pc.C"
    assert snapshot(reg) == before
    assert reg.explain("pa", "A").chain == ("pa.A", "pb.B", "pc.C")


def test_class_alias_closing_cycle_through_module_alias_refused(reg):
    """With alias_module('a', 'b'), alias('b.X', 'a.X') is refused as a cycle through the module
    alias."""
    reg.alias_module("pcyc_a", "pcyc_b")
    before = snapshot(reg)
    with pytest.raises(AliasCycleError) as info:
        reg.alias("pcyc_b.X", "pcyc_a.X")
    assert str(info.value) == "alias cycle: pcyc_b.X -> pcyc_a.X -> pcyc_b.X"
    assert snapshot(reg) == before


def test_module_alias_closing_cycle_through_class_alias_refused(reg):
    """With alias('b.X', 'a.X'), alias_module('a', 'b') is refused: a.X -> b.X -> a.X would
    cycle."""
    reg.alias("pcyc_b.X", "pcyc_a.X")
    before = snapshot(reg)
    try:
        with pytest.raises(AliasCycleError):
            reg.alias_module("pcyc_a", "pcyc_b")
    finally:
        assert snapshot(reg) == before


def test_module_alias_closing_cycle_through_submodule_alias_refused(reg):
    """With alias_module('b.c', 'a.c'), alias_module('a', 'b') is refused: a.c.X -> b.c.X -> a.c.X
    would cycle."""
    reg.alias_module("pcyc_b.c", "pcyc_a.c")
    before = snapshot(reg)
    try:
        with pytest.raises(AliasCycleError):
            reg.alias_module("pcyc_a", "pcyc_b")
    finally:
        assert snapshot(reg) == before


def test_module_alias_two_cycle_refused(reg):
    """alias_module(b, a) after alias_module(a, b) is refused and changes nothing."""
    reg.alias_module("pcyc_a", "pcyc_b")
    before = snapshot(reg)
    with pytest.raises(AliasCycleError, match=r"alias cycle: pcyc_b -> pcyc_a -> pcyc_b"):
        reg.alias_module("pcyc_b", "pcyc_a")
    assert snapshot(reg) == before


def test_module_alias_into_own_submodule_refused(reg):
    """alias_module('a', 'a.b') is refused (a.X -> a.b.X -> a.b.b.X never ends) and changes
    nothing."""
    with pytest.raises(AliasCycleError) as info:
        reg.alias_module("pcyc_a", "pcyc_a.b")
    assert str(info.value).startswith("alias cycle: pcyc_a -> pcyc_a.b")
    assert reg.module_aliases == {}
    assert reg.explain("pcyc_a", "X").how == "broken"
    assert reg.explain("pcyc_a", "X").chain == ("pcyc_a.X",)


def test_identical_alias_repeated_is_a_no_op(reg):
    """Repeating an identical alias neither raises nor drops the cached resolution."""
    old = f"pcl_old_{uid()}.Old"
    key = tuple(old.rsplit(".", 1))
    reg.alias(old, dotted(Alpha))
    assert reg(None, *key) is Alpha
    assert key in reg._cache
    reg.alias(old, dotted(Alpha))
    assert key in reg._cache
    assert reg.aliases == {old: dotted(Alpha)}


def test_identical_module_alias_repeated_is_a_no_op(reg):
    """Repeating an identical module alias neither raises nor changes anything."""
    reg.alias_module("pcl_old_m", "collections")
    reg(None, "pcl_old_m", "OrderedDict")
    reg.alias_module("pcl_old_m", "collections")
    assert ("pcl_old_m", "OrderedDict") in reg._cache
    assert reg.module_aliases == {"pcl_old_m": "collections"}


def test_alias_accepts_zodbupdate_rule_format(reg):
    """alias('old.mod OldName', 'new.mod NewName') is the same as the dotted form."""
    reg.alias(f"pcl_old_{uid()}.mod OldName", f"{HERE} Beta")
    (old, new), = reg.aliases.items()
    assert old.endswith(".mod.OldName") and new == dotted(Beta)
    assert reg(None, *old.rsplit(".", 1)) is Beta


def test_registering_twice_replaces(reg):
    """Registering a name again replaces the earlier registration, including for cached lookups."""
    name = f"pcl_r_{uid()}.X"
    reg.register(Alpha, name)
    assert reg(None, *name.rsplit(".", 1)) is Alpha
    reg.register(Beta, name)
    assert reg(None, *name.rsplit(".", 1)) is Beta
    assert reg.registrations == {name: Beta}


def test_unregister_unalias_unknown_are_no_ops(reg):
    """unregister/unalias/unalias_module of names never declared do nothing and raise nothing."""
    reg.register(Alpha, "pk.A")
    before = snapshot(reg)
    reg.unregister("pcl_nope.X")
    reg.unalias("pcl_nope.X")
    reg.unalias_module("pcl_nope")
    assert snapshot(reg) == before


@pytest.mark.parametrize("bad", ["NoDot", "", ".Lead", "Trail.", "pk."])
def test_malformed_names_raise_registration_error(reg, bad):
    """Malformed dotted names in register/alias raise RegistrationError (a ValueError) and change
    nothing."""
    with pytest.raises(RegistrationError):
        reg.register(Alpha, bad)
    with pytest.raises(RegistrationError):
        reg.alias("pk.Good", bad)
    with pytest.raises(RegistrationError):
        reg.alias(bad, "pk.Good")
    with pytest.raises(ValueError):
        reg.alias(bad, "pk.Good")
    assert snapshot(reg) == ({}, {}, {})


@pytest.mark.parametrize("bad", [42, b"pk.Bytes"])
def test_non_string_name_in_register_raises_registration_error(reg, bad):
    """register(cls, name) with a name that is not a string raises RegistrationError."""
    with pytest.raises(RegistrationError):
        reg.register(Alpha, bad)
    assert snapshot(reg) == ({}, {}, {})


@pytest.mark.parametrize("position", ["old", "new"])
def test_non_string_name_in_alias_raises_registration_error(reg, position):
    """alias() with a name that is not a string (e.g. 42) raises RegistrationError."""
    args = (42, "pk.Good") if position == "old" else ("pk.Good", 42)
    with pytest.raises(RegistrationError):
        reg.alias(*args)


@pytest.mark.parametrize("bad", ["", ".lead", "trail.", 42, None])
def test_malformed_module_names_raise_registration_error(reg, bad):
    """alias_module refuses names that are not module names with RegistrationError."""
    with pytest.raises(RegistrationError):
        reg.alias_module(bad, "collections")
    with pytest.raises(RegistrationError):
        reg.alias_module("pcl_ok", bad)
    assert reg.module_aliases == {}


def test_register_object_without_name_needs_explicit_name(reg):
    """register(obj) of an object with no __module__/__name__ raises RegistrationError."""
    with pytest.raises(RegistrationError):
        reg.register(object())


# ---------------------------------------------------------------------------
# Caching and invalidation


def test_broken_name_resolvable_after_register(reg):
    """A name that resolved broken resolves to a class registered for it afterwards."""
    module = f"pcl_missing_{uid()}"
    assert issubclass(reg(None, module, "Gone"), ZODB.broken.Broken)
    reg.register(Alpha, f"{module}.Gone")
    assert reg(None, module, "Gone") is Alpha
    assert reg.class_factory(None, module, "Gone") is Alpha


def test_broken_name_resolvable_after_alias(reg):
    """A name that resolved broken resolves to an alias target declared afterwards."""
    module = f"pcl_missing_{uid()}"
    assert issubclass(reg(None, module, "Gone"), ZODB.broken.Broken)
    reg.alias(f"{module}.Gone", dotted(Beta))
    assert reg(None, module, "Gone") is Beta


def test_broken_name_resolvable_after_alias_module(reg):
    """A name that resolved broken resolves once its module is aliased to an existing one."""
    import collections.abc

    module = f"pcl_missing_{uid()}"
    assert issubclass(reg(None, f"{module}.abc", "Mapping"), ZODB.broken.Broken)
    reg.alias_module(module, "collections")
    assert reg(None, f"{module}.abc", "Mapping") is collections.abc.Mapping


def test_broken_name_resolvable_after_refresh_when_module_appears(reg, mods):
    """A module installed after a broken lookup is picked up by refresh() (and not before: broken
    results are cached)."""
    name = f"pcl_late_{uid()}"
    first = reg(None, name, "Thing")
    assert issubclass(first, ZODB.broken.Broken)
    mods.write(name, "class Thing:\n    pass\n")
    assert reg(None, name, "Thing") is first  # still cached broken
    reg.refresh()
    cls = reg(None, name, "Thing")
    assert not issubclass(cls, ZODB.broken.Broken)
    assert cls is sys.modules[name].Thing
    assert reg.explain(name, "Thing").how == "imported"


class CountingFinder(importlib.abc.MetaPathFinder):
    """Counts import attempts of one module name; finds nothing."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def find_spec(self, fullname, path, target=None):
        if fullname == self.name:
            self.calls += 1
        return None


def test_broken_lookups_are_cached(reg):
    """1000 lookups of a missing module attempt its import at most once."""
    module = f"pcl_missing_{uid()}"
    finder = CountingFinder(module)
    sys.meta_path.insert(0, finder)
    try:
        first = reg(None, module, "Gone")
        assert finder.calls == 1  # the finder does see the import attempt
        for _ in range(999):
            assert reg.class_factory(None, module, "Gone") is first
    finally:
        sys.meta_path.remove(finder)
    assert finder.calls <= 1


def test_unregister_falls_back_to_import(reg):
    """After unregister, an importable name resolves to the imported object again."""
    reg.register(Beta, dotted(Alpha))
    assert reg(None, HERE, "Alpha") is Beta
    reg.unregister(dotted(Alpha))
    assert reg(None, HERE, "Alpha") is Alpha
    assert reg.explain(HERE, "Alpha").how == "imported"


def test_unalias_and_unalias_module_fall_back(reg):
    """After unalias / unalias_module, names resolve as if the alias had never been declared."""
    reg.alias(dotted(Alpha), dotted(Beta))
    assert reg(None, HERE, "Alpha") is Beta
    reg.unalias(dotted(Alpha))
    assert reg(None, HERE, "Alpha") is Alpha

    module = f"pcl_missing_{uid()}"
    reg.alias_module(module, "collections")
    assert reg(None, module, "OrderedDict") is __import__("collections").OrderedDict
    reg.unalias_module(module)
    assert issubclass(reg(None, module, "OrderedDict"), ZODB.broken.Broken)


def test_unregister_of_none_global_invalidates(reg):
    """A global registered with the value None is forgotten by unregister like any other."""
    name = f"pcl_none_{uid()}.CONST"
    reg.register(None, name)
    assert reg(None, *name.rsplit(".", 1)) is None
    reg.unregister(name)
    assert reg.registrations == {}
    assert issubclass(reg(None, *name.rsplit(".", 1)), ZODB.broken.Broken)


def test_invalidation_is_exact_for_class_aliases(reg):
    """Aliasing X drops only cached entries whose resolution went through X."""
    assert reg(None, HERE, "Alpha") is Alpha
    assert reg(None, HERE, "Beta") is Beta
    assert (HERE, "Alpha") in reg._cache and (HERE, "Beta") in reg._cache
    reg.alias(dotted(Alpha), dotted(Gamma))
    assert (HERE, "Alpha") not in reg._cache
    assert reg._cache[HERE, "Beta"][0] is Beta
    assert reg(None, HERE, "Alpha") is Gamma


def test_invalidation_reaches_names_aliased_through_the_changed_name(reg):
    """Declaring something for b drops the cached result of a when a was aliased to b."""
    u = uid()
    reg.alias(f"pcl_a_{u}.A", dotted(Alpha))
    assert reg(None, f"pcl_a_{u}", "A") is Alpha
    reg.register(Beta, dotted(Alpha))
    assert reg(None, f"pcl_a_{u}", "A") is Beta


def test_invalidation_is_exact_for_module_aliases(reg):
    """alias_module(m, ...) drops only cached entries under module m."""
    module = f"pcl_missing_{uid()}"
    reg(None, HERE, "Beta")
    reg(None, module, "OrderedDict")
    reg.alias_module(module, "collections")
    assert reg._cache[HERE, "Beta"][0] is Beta
    assert (module, "OrderedDict") not in reg._broken_cache
    assert reg(None, module, "OrderedDict") is __import__("collections").OrderedDict


# ---------------------------------------------------------------------------
# Broken classes and the broken tally


def test_broken_tally_counts_every_broken_resolution(reg):
    """broken() reports each broken name with the number of lookups and when it was first seen."""
    u = uid()
    t0 = time.time()
    for _ in range(5):
        reg(None, f"pcl_m1_{u}", "One")
    for _ in range(2):
        reg.class_factory(None, f"pcl_m2_{u}", "Two")
    reg(None, HERE, "Alpha")  # not broken: not counted
    t1 = time.time()
    records = {(r.module, r.name): r for r in reg.broken()}
    assert set(records) == {(f"pcl_m1_{u}", "One"), (f"pcl_m2_{u}", "Two")}
    assert records[f"pcl_m1_{u}", "One"].count == 5
    assert records[f"pcl_m2_{u}", "Two"].count == 2
    for rec in records.values():
        assert t0 <= rec.first_seen <= t1
        assert rec.module in rec.error
    first_seen = records[f"pcl_m1_{u}", "One"].first_seen
    reg(None, f"pcl_m1_{u}", "One")
    again = {(r.module, r.name): r for r in reg.broken()}
    assert again[f"pcl_m1_{u}", "One"].count == 6
    assert again[f"pcl_m1_{u}", "One"].first_seen == first_seen


def test_broken_classes_are_zodb_broken(reg):
    """Broken classes subclass ZODB.broken.Broken and their instances provide IBroken."""
    cls = reg(None, f"pcl_missing_{uid()}", "Gone")
    assert issubclass(cls, ZODB.broken.Broken)
    obj = cls()
    assert ZODB.interfaces.IBroken.providedBy(obj)
    assert pclasses.is_broken(obj)


def test_same_broken_class_for_repeated_lookups(reg):
    """Repeated lookups (and explain, and lookups after refresh) of a broken name return the same
    class object."""
    module = f"pcl_missing_{uid()}"
    first = reg(None, module, "Gone")
    assert all(reg(None, module, "Gone") is first for _ in range(10))
    assert reg.explain(module, "Gone").target is first
    reg.refresh()
    assert reg(None, module, "Gone") is first
    assert reg(None, module, "Other") is not first


# ---------------------------------------------------------------------------
# The resident resolver hook


def test_resident_resolver_class_is_database_resident_and_not_cached(reg):
    """A class returned by resident_resolver is used, reported 'database-resident', and never cached
    globally."""
    calls = []
    conn = object()

    class Resident:
        pass

    def resolver(connection, module, name):
        calls.append((connection, module, name))
        return Resident if module == "pcl_guid_mod" else NOT_RESIDENT

    reg.resident_resolver = resolver
    assert reg(conn, "pcl_guid_mod", "K") is Resident
    assert reg.class_factory(conn, "pcl_guid_mod", "K") is Resident
    assert calls[:2] == [(conn, "pcl_guid_mod", "K")] * 2
    assert ("pcl_guid_mod", "K") not in reg._cache
    assert ("pcl_guid_mod", "K") not in reg._broken_cache
    res = reg.explain("pcl_guid_mod", "K", conn)
    assert res.how == "database-resident" and res.resident and res.target is Resident


def test_resident_resolver_none_is_broken_and_not_cached(reg):
    """A resident resolver returning None gives a broken class, counted, but not cached (the class
    may appear later)."""
    present = {}

    def resolver(connection, module, name):
        if module != "pcl_guid_mod":
            return NOT_RESIDENT
        return present.get(name)

    reg.resident_resolver = resolver
    cls = reg(None, "pcl_guid_mod", "K")
    assert issubclass(cls, ZODB.broken.Broken)
    assert ("pcl_guid_mod", "K") not in reg._cache
    assert ("pcl_guid_mod", "K") not in reg._broken_cache
    res = reg.explain("pcl_guid_mod", "K")
    assert res.how == "broken" and "class table" in res.error
    assert [(r.module, r.name, r.count) for r in reg.broken()] == [("pcl_guid_mod", "K", 1)]
    present["K"] = Gamma
    assert reg(None, "pcl_guid_mod", "K") is Gamma


def test_resident_resolver_not_resident_falls_through(reg):
    """NOT_RESIDENT from the resident resolver means normal resolution (import), which is cached."""
    reg.resident_resolver = lambda c, m, n: NOT_RESIDENT
    assert reg(None, HERE, "Alpha") is Alpha
    assert reg.explain(HERE, "Alpha").how == "imported"
    assert reg._cache[HERE, "Alpha"][0] is Alpha


def test_resident_resolver_sees_names_after_aliasing(reg):
    """The resident resolver is asked about the name aliases lead to, not the name in the record."""
    seen = []

    def resolver(connection, module, name):
        seen.append((module, name))
        return Beta if module == "pcl_guid_new" else NOT_RESIDENT

    reg.resident_resolver = resolver
    reg.alias("pcl_guid_old.K", "pcl_guid_new.K2")
    assert reg(None, "pcl_guid_old", "K") is Beta
    assert seen == [("pcl_guid_new", "K2")]
    assert reg.explain("pcl_guid_old", "K").chain == ("pcl_guid_old.K", "pcl_guid_new.K2")


# ---------------------------------------------------------------------------
# Thread safety


def _hammer(reg: ClassRegistry, u: str, *, unregister: bool) -> list[BaseException]:
    """8 reader threads x 20k lookups while one writer thread changes declarations.

    Returns the exceptions the threads raised, after leaving the registry in
    its final declared state (Reg registered as Alpha, Ali aliased to Beta,
    pcl_thrmod_<u> aliased to collections).
    """
    reg_name = f"pcl_thr_{u}.Reg"
    ali_name = f"pcl_thr_{u}.Ali"
    names = _thread_names(u)
    errors: list[BaseException] = []
    stop = threading.Event()
    start = threading.Barrier(9)
    progress = {"during": 0}

    def reader():
        try:
            start.wait()
            factory = reg.class_factory
            for i in range(20_000):
                m, n = names[i % len(names)]
                if factory(None, m, n) is None:
                    raise AssertionError(f"{m}.{n} resolved to None")
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    def writer():
        try:
            start.wait()
            i = 0
            while not stop.is_set() or i < 100:
                reg.register(Alpha if i % 2 else Gamma, reg_name)
                reg.alias(ali_name, reg_name if i % 2 else dotted(Beta))
                reg.alias_module(f"pcl_thrmod_{u}", "collections")
                if unregister:
                    reg.unregister(reg_name)
                reg.unalias(ali_name)
                reg.unalias_module(f"pcl_thrmod_{u}")
                if i % 50 == 0:
                    reg.refresh()
                i += 1
                if not stop.is_set():
                    progress["during"] = i
            # the final state
            reg.register(Alpha, reg_name)
            reg.alias(ali_name, dotted(Beta))
            reg.alias_module(f"pcl_thrmod_{u}", "collections")
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    w = threading.Thread(target=writer)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in threads + [w]:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        w.join(60)
    finally:
        sys.setswitchinterval(old_interval)
    assert not any(t.is_alive() for t in threads + [w])
    # the writer really ran while the readers did (thousands of rounds in practice)
    assert progress["during"] >= 10
    return errors


def _thread_names(u: str) -> list[tuple[str, str]]:
    return [
        (f"pcl_thr_{u}", "Reg"),
        (f"pcl_thr_{u}", "Ali"),
        (f"pcl_thrmod_{u}", "OrderedDict"),
        (HERE, "Gamma"),
        (f"pcl_thr_missing_{u}", "X"),
        ("copy_reg", "_reconstructor"),
    ]


def _check_final_state(reg: ClassRegistry, u: str) -> None:
    import collections

    names = _thread_names(u)
    expected = {
        names[0]: Alpha,
        names[1]: Beta,
        names[2]: collections.OrderedDict,
        names[3]: Gamma,
        names[5]: copyreg._reconstructor,
    }
    for key, want in expected.items():
        assert reg(None, *key) is want, key
        assert reg.class_factory(None, *key) is want, key
        assert reg.explain(*key).target is want, key
    assert issubclass(reg(None, *names[4]), ZODB.broken.Broken)


def test_concurrent_lookups_while_registering_and_aliasing(reg):
    """Lookups from 8 threads never fail while another thread re-registers and (un)aliases, and see
    the final state afterwards."""
    u = uid()
    errors = _hammer(reg, u, unregister=False)
    assert not errors, errors
    _check_final_state(reg, u)


def test_concurrent_lookups_while_registering_unregistering_and_aliasing(reg):
    """Lookups from 8 threads never fail while another thread registers, unregisters and aliases,
    and see the final state afterwards."""
    u = uid()
    errors = _hammer(reg, u, unregister=True)
    assert not errors, errors
    _check_final_state(reg, u)


class _UnregisteredMeanwhile(dict):
    """Stands in for the registrations dict and plays the other thread: the
    name is unregistered just after a lookup has seen it registered."""

    def __init__(self, reg: ClassRegistry, data: dict) -> None:
        super().__init__(data)
        self.reg = reg
        self.armed = True

    def __contains__(self, key):
        found = super().__contains__(key)
        if found and self.armed:
            self.armed = False
            self.pop(key)  # another thread's unregister() lands here
            self.reg._invalidate(key)
        return found


def test_lookup_survives_unregister_between_check_and_read(reg):
    """A lookup racing an unregister of the same name returns a class (registered or not), never
    raises."""
    name = f"pcl_thr_{uid()}.Reg"
    reg.register(Alpha, name)
    reg._registered = _UnregisteredMeanwhile(reg, reg._registered)
    result = reg(None, *name.rsplit(".", 1))
    assert result is Alpha or issubclass(result, ZODB.broken.Broken)


# ---------------------------------------------------------------------------
# A real ZODB


MODEL_SOURCE = """
from persistent import Persistent

class Item(Persistent):
    def __init__(self, x, label):
        self.x = x
        self.label = label

class Plain:
    def __init__(self, n):
        self.n = n
        self.tags = ["a", "b"]
"""

NEW_MODEL_SOURCE = """
from persistent import Persistent

class NewItem(Persistent):
    def total(self):
        return self.x * 2

class NewPlain:
    pass
"""


@pytest.fixture
def stored_db(tmp_path, mods):
    """A FileStorage holding a model Item and a Plain inside a PersistentMapping; the model module
    is then removed."""
    u = uid()
    old = f"pcl_reg_models_{u}"
    path = mods.write(old, MODEL_SOURCE)
    models = importlib.import_module(old)
    fs_path = tmp_path / "Data.fs"
    db = ZODB.DB(ZODB.FileStorage.FileStorage(str(fs_path)))
    try:
        with db.transaction() as conn:
            root = conn.root()
            root["item"] = models.Item(21, "twenty-one")
            root["map"] = PersistentMapping({"plain": models.Plain(7)})
    finally:
        db.close()
    # the class goes away: off disk and out of sys.modules
    path.unlink()
    for cached in path.parent.glob(f"__pycache__/{old}.*"):
        cached.unlink()
    mods.forget(old)
    importlib.invalidate_caches()
    return fs_path, old, u


def test_real_zodb_alias_loads_new_class_with_state(stored_db, mods):
    """Records of a renamed class load as the alias target, with their stored state."""
    fs_path, old, u = stored_db
    new = f"pcl_reg_models_new_{u}"
    mods.write(new, NEW_MODEL_SOURCE)
    new_mod = importlib.import_module(new)
    registry = ClassRegistry()
    registry.alias(f"{old}.Item", f"{new}.NewItem")
    registry.alias(f"{old}.Plain", f"{new}.NewPlain")
    db = pclasses.open(fs_path, registry)
    try:
        conn = db.open()
        root = conn.root()
        item = root["item"]
        assert type(item) is new_mod.NewItem
        assert (item.x, item.label) == (21, "twenty-one")
        assert item.total() == 42
        plain = root["map"]["plain"]
        assert type(plain) is new_mod.NewPlain
        assert plain.__dict__ == {"n": 7, "tags": ["a", "b"]}
        assert registry.broken() == []
        conn.close()
    finally:
        db.close()


def test_real_zodb_missing_class_loads_broken_with_state(stored_db):
    """Records of a class that no longer exists load as broken objects keeping their stored
    state."""
    fs_path, old, _ = stored_db
    registry = ClassRegistry()
    db = pclasses.open(fs_path, registry)
    try:
        conn = db.open()
        root = conn.root()
        item = root["item"]
        assert pclasses.is_broken(item)
        assert isinstance(item, ZODB.broken.Broken)
        assert ZODB.interfaces.IBroken.providedBy(item)
        assert (type(item).__module__, type(item).__name__) == (old, "Item")
        assert pclasses.broken_state(item) == {"x": 21, "label": "twenty-one"}

        plain = root["map"]["plain"]
        assert pclasses.is_broken(plain)
        assert pclasses.broken_state(plain) == {"n": 7, "tags": ["a", "b"]}
        assert (type(plain).__module__, type(plain).__name__) == (old, "Plain")

        tally = {(r.module, r.name) for r in registry.broken()}
        assert {(old, "Item"), (old, "Plain")} <= tally
        with pytest.raises(TypeError):
            pclasses.broken_state(root)
        conn.close()
        transaction.abort()
    finally:
        db.close()


def test_open_installs_the_registry(tmp_path):
    """pclasses.open(target, registry) makes registry.class_factory the database's class factory and
    records the database."""
    registry = ClassRegistry()
    db = pclasses.open(tmp_path / "Data.fs", registry)
    try:
        assert db.classFactory is registry.class_factory
        assert db in registry.databases
        assert registry.class_factory.registry is registry
    finally:
        db.close()


def test_install_covers_every_database_of_a_multidatabase():
    """install(db) sets the class factory on every database of db's multi-database."""
    databases: dict = {}
    one = ZODB.DB(MappingStorage(), databases=databases, database_name="one")
    two = ZODB.DB(MappingStorage(), databases=databases, database_name="two")
    try:
        registry = ClassRegistry()
        assert registry.install(one) is one
        assert one.classFactory is registry.class_factory
        assert two.classFactory is registry.class_factory
        assert set(registry.databases) == {one, two}
    finally:
        one.close()
        two.close()


def test_reattach_alone_retries_the_import_of_a_reinstalled_module(stored_db, mods):
    """An add-on removed and then reinstalled in the running process: its
    broken objects turn back into real ones by ``registry.reattach()`` alone,
    without ``refresh()``, with their stored state."""
    fs_path, old, _ = stored_db
    registry = ClassRegistry()
    db = pclasses.open(fs_path, registry)
    try:
        conn = db.open()
        item = conn.root()["item"]
        assert pclasses.is_broken(item)
        plain_holder = conn.root()["map"]
        assert pclasses.is_broken(plain_holder["plain"])
        mods.write(old, MODEL_SOURCE)  # the add-on is installed again
        report = registry.reattach()
        models = sys.modules[old]
        assert type(item) is models.Item
        assert (item.x, item.label) == (21, "twenty-one")
        assert type(plain_holder["plain"]) is models.Plain
        assert report.total >= 1
        assert registry(conn, old, "Item") is models.Item
        conn.close()
    finally:
        db.close()


# ---------------------------------------------------------------------------
# The cache follows the modules as they are now


def test_cached_class_is_dropped_when_its_module_leaves_sys_modules(reg, mods):
    """A name resolved (and cached) while its module was imported resolves
    broken once the module is gone from sys.modules and from disk, as with
    ZODB's own factory (ZODB.tests.testBroken.test_integration)."""
    name = f"pcl_leaves_{uid()}"
    path = mods.write(name, "class K:\n    pass\n")
    cls = reg.find_global(name, "K")
    assert reg.find_global(name, "K") is cls  # cached
    path.unlink()
    mods.forget(name)
    importlib.invalidate_caches()
    gone = reg.find_global(name, "K")
    assert gone is not cls and issubclass(gone, ZODB.broken.Broken)


def test_cached_class_follows_importlib_reload(reg, mods):
    """After importlib.reload the registry serves the reloaded class, as a
    development server or plone.reload expects."""
    name = f"pcl_reload_{uid()}"
    mods.write(name, "class K:\n    version = 1\n")
    module = importlib.import_module(name)
    assert reg.find_global(name, "K").version == 1
    mods.write(name, "class K:\n    version = 22\n")  # another size: no stale .pyc
    importlib.reload(module)
    assert reg.find_global(name, "K") is module.K
    assert reg.find_global(name, "K").version == 22


def test_cached_broken_name_is_retried_when_its_module_is_imported(reg, mods):
    """A broken resolution is cached while its module stays absent; once the
    application imports the module, the name resolves to the real class
    without refresh()."""
    name = f"pcl_later_{uid()}"
    first = reg.find_global(name, "K")
    assert issubclass(first, ZODB.broken.Broken)
    assert reg.find_global(name, "K") is first  # cached
    mods.write(name, "class K:\n    pass\n")
    module = importlib.import_module(name)
    assert reg.find_global(name, "K") is module.K


def test_registrations_stay_cached_whatever_sys_modules_holds(reg):
    """A registered class does not depend on any module being importable."""

    class Local:
        pass

    reg.register(Local, "pcl_nowhere_reg.Local")
    assert reg.find_global("pcl_nowhere_reg", "Local") is Local
    assert reg.find_global("pcl_nowhere_reg", "Local") is Local
