"""Claims about ClassRegistry.load_entry_points on a real installed distribution.

Each test builds a tiny distribution in ``tmp_path`` (a package plus a
``.dist-info`` directory with ``METADATA`` and ``entry_points.txt``) and puts
it on ``sys.path``, so ``importlib.metadata`` finds it exactly as it finds an
installed wheel.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import ZODB.broken

from pclasses.registry import (
    ENTRY_POINT_ALIASES,
    ENTRY_POINT_CLASSES,
    ENTRY_POINT_MODULE_ALIASES,
    ENTRY_POINT_ZODBUPDATE,
    ClassRegistry,
    EntryPointFailure,
)


@dataclass
class Dist:
    root: Path
    pkg: str  # the package name, e.g. pcl_ep_pkg_1a2b3c
    u: str  # the random suffix shared by every name below

    @property
    def gone(self) -> str:  # a module records name but that no longer exists
        return f"pcl_ep_gone_{self.u}.legacy"

    @property
    def old_alias(self) -> str:
        return f"pcl_ep_old_{self.u}.OldWidget"

    @property
    def old_pkg(self) -> str:
        return f"pcl_ep_oldpkg_{self.u}"

    @property
    def zold(self) -> str:
        return f"pcl_ep_zold_{self.u}.mod"

    def module(self, name: str = ""):
        return importlib.import_module(f"{self.pkg}.{name}" if name else self.pkg)


PACKAGE_INIT = """
class Widget:
    pass

class Gadget:
    pass

ALIASES = {{"{old_alias}": "{pkg}.Widget"}}
MODULE_ALIASES = {{"{old_pkg}": "{pkg}"}}
ZODBUPDATE = {{"{zold} OldName": "{pkg}.newmod NewName"}}
NOT_A_MAPPING = ["{old_alias}", "{pkg}.Widget"]
"""

NEWMOD = """
class NewName:
    pass
"""

ENTRY_POINTS = """
[pclasses.classes]
{gone}.Gadget = {pkg}:Gadget
Widget = {pkg}:Widget
missing = {pkg}:DoesNotExist

[pclasses.aliases]
renames = {pkg}:ALIASES
notamapping = {pkg}:NOT_A_MAPPING

[pclasses.module_aliases]
moves = {pkg}:MODULE_ALIASES

[zodbupdate]
renames = {pkg}:ZODBUPDATE
"""


def write_distribution(root: Path, u: str) -> Dist:
    pkg = f"pcl_ep_pkg_{u}"
    dist = Dist(root, pkg, u)
    fields = {
        "pkg": pkg,
        "gone": dist.gone,
        "old_alias": dist.old_alias,
        "old_pkg": dist.old_pkg,
        "zold": dist.zold,
    }
    package = root / pkg
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PACKAGE_INIT.format(**fields)))
    (package / "newmod.py").write_text(textwrap.dedent(NEWMOD))
    info = root / f"{pkg}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS.format(**fields))
    return dist


@pytest.fixture
def dist(tmp_path, monkeypatch):
    u = uuid.uuid4().hex[:10]
    root = tmp_path / "site"
    d = write_distribution(root, u)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield d
    for name in list(sys.modules):
        if name == d.pkg or name.startswith(d.pkg + "."):
            del sys.modules[name]
    importlib.invalidate_caches()


def our_failures(failures, dist: Dist):
    return [f for f in failures if dist.pkg in f.value]


def test_distribution_is_visible_to_importlib_metadata(dist):
    """The hand-built distribution is found by importlib.metadata with all four groups (sanity check
    of the fixture)."""
    assert importlib.metadata.version(dist.pkg) == "1.0"
    for group, count in [
        (ENTRY_POINT_CLASSES, 3),
        (ENTRY_POINT_ALIASES, 2),
        (ENTRY_POINT_MODULE_ALIASES, 1),
        (ENTRY_POINT_ZODBUPDATE, 1),
    ]:
        eps = [ep for ep in importlib.metadata.entry_points(group=group) if dist.pkg in ep.value]
        assert len(eps) == count, group


def test_load_entry_points_reports_exactly_the_broken_entry_points(dist):
    """load_entry_points returns one failure per unusable entry point, naming it, and nothing
    else."""
    registry = ClassRegistry()
    failures = registry.load_entry_points()
    assert all(isinstance(f, EntryPointFailure) for f in failures)
    assert len(failures) == 2, failures
    assert our_failures(failures, dist) == failures
    by_key = {(f.group, f.name): f for f in failures}
    assert set(by_key) == {(ENTRY_POINT_CLASSES, "missing"), (ENTRY_POINT_ALIASES, "notamapping")}

    missing = by_key[ENTRY_POINT_CLASSES, "missing"]
    assert missing.value == f"{dist.pkg}:DoesNotExist"
    assert "DoesNotExist" in missing.error
    assert "'missing'" in str(missing) and ENTRY_POINT_CLASSES in str(missing)

    notamapping = by_key[ENTRY_POINT_ALIASES, "notamapping"]
    assert notamapping.value == f"{dist.pkg}:NOT_A_MAPPING"
    assert "mapping" in notamapping.error and "list" in notamapping.error
    assert "'notamapping'" in str(notamapping)


def test_working_entry_points_take_effect_despite_failures(dist):
    """Every usable entry point is applied even though others in the same groups fail."""
    registry = ClassRegistry()
    registry.load_entry_points()
    pkg = dist.module()
    newmod = dist.module("newmod")

    # pclasses.classes with an undotted name: registered under the class's own name
    assert registry.registrations[f"{dist.pkg}.Widget"] is pkg.Widget
    assert registry.explain(dist.pkg, "Widget").how == "registered"
    # pclasses.aliases
    old_mod, old_name = dist.old_alias.rsplit(".", 1)
    assert registry(None, old_mod, old_name) is pkg.Widget
    res = registry.explain(old_mod, old_name)
    assert res.how == "aliased" and res.chain == (dist.old_alias, f"{dist.pkg}.Widget")
    # pclasses.module_aliases
    assert registry(None, f"{dist.old_pkg}.newmod", "NewName") is newmod.NewName
    res = registry.explain(f"{dist.old_pkg}.newmod", "NewName")
    assert res.how == "aliased"
    assert res.chain == (f"{dist.old_pkg}.newmod.NewName", f"{dist.pkg}.newmod.NewName")
    # nothing from the failing entry points was half-applied
    assert dist.old_alias in registry.aliases
    ours = {k: v for k, v in registry.aliases.items() if dist.pkg in v}
    assert len(ours) == 2  # ALIASES + the zodbupdate rule (other installed packages may add more)
    assert not any("DoesNotExist" in name for name in registry.registrations)


def test_zodbupdate_rule_resolves_as_alias(dist):
    """A zodbupdate rule 'old.mod OldName' -> 'new.mod NewName' makes old.mod.OldName load
    new.mod.NewName."""
    registry = ClassRegistry()
    registry.load_entry_points()
    newmod = dist.module("newmod")
    assert registry(None, dist.zold, "OldName") is newmod.NewName
    assert registry.class_factory(None, dist.zold, "OldName") is newmod.NewName
    res = registry.explain(dist.zold, "OldName")
    assert res.how == "aliased"
    assert res.chain == (f"{dist.zold}.OldName", f"{dist.pkg}.newmod.NewName")
    assert registry.aliases[f"{dist.zold}.OldName"] == f"{dist.pkg}.newmod.NewName"


def test_class_under_dotted_entry_point_name_resolves_under_that_name(dist):
    """A pclasses.classes entry point with a dotted name registers the class under that name (the
    one records use)."""
    registry = ClassRegistry()
    gone_mod = dist.gone
    # before loading: the name is broken (the module does not exist)
    assert issubclass(registry(None, gone_mod, "Gadget"), ZODB.broken.Broken)
    registry.load_entry_points()
    pkg = dist.module()
    assert registry(None, gone_mod, "Gadget") is pkg.Gadget
    res = registry.explain(gone_mod, "Gadget")
    assert res.how == "registered" and res.chain == (f"{gone_mod}.Gadget",)
    # registered under the entry point's name, not the class's own name
    assert f"{dist.pkg}.Gadget" not in registry.registrations


def test_loading_entry_points_twice_is_harmless(dist):
    """Calling load_entry_points again raises nothing, reports the same failures and leaves the same
    declarations."""
    registry = ClassRegistry()
    first = registry.load_entry_points()
    state = (dict(registry.registrations), dict(registry.aliases), dict(registry.module_aliases))
    second = registry.load_entry_points()
    assert second == first
    assert (dict(registry.registrations), dict(registry.aliases),
            dict(registry.module_aliases)) == state


def test_distribution_found_twice_on_sys_path_is_loaded_once(dist, tmp_path, monkeypatch):
    """A distribution visible from two sys.path entries yields each failure once, not twice."""
    copy = tmp_path / "site-copy"
    shutil.copytree(dist.root, copy)
    monkeypatch.syspath_prepend(str(copy))
    importlib.invalidate_caches()
    failures = ClassRegistry().load_entry_points()
    assert sorted((f.group, f.name) for f in failures) == sorted(
        [(ENTRY_POINT_CLASSES, "missing"), (ENTRY_POINT_ALIASES, "notamapping")]
    )


def test_entry_point_objects_load_into_the_same_declarations(dist):
    """The EntryPoint objects importlib.metadata yields load the objects the registry declares."""
    eps = {
        (ep.group, ep.name): ep
        for group in (ENTRY_POINT_ZODBUPDATE, ENTRY_POINT_MODULE_ALIASES)
        for ep in importlib.metadata.entry_points(group=group)
        if dist.pkg in ep.value
    }
    manual = importlib.metadata.EntryPoint(
        name="renames", value=f"{dist.pkg}:ZODBUPDATE", group=ENTRY_POINT_ZODBUPDATE
    )
    assert eps[ENTRY_POINT_ZODBUPDATE, "renames"] == manual
    rules = manual.load()
    registry = ClassRegistry()
    registry.update((old, new) for old, new in rules.items())
    registry.alias_module(*next(iter(eps[ENTRY_POINT_MODULE_ALIASES, "moves"].load().items())))

    loaded = ClassRegistry()
    loaded.load_entry_points()
    assert registry.aliases.items() <= loaded.aliases.items()
    assert registry.module_aliases == loaded.module_aliases
