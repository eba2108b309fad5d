"""Claims about inspection resolution (pclasses.trust, ClassRegistry.inspect):
inspecting a database never runs the top-level code of a module its records
name unless the operator trusts it, and nothing an allowed import raises
escapes; at run time the registry still imports as ZODB does."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import transaction
import ZODB
from click.testing import CliRunner
from persistent import Persistent
from ZODB.FileStorage import FileStorage

import pclasses
from pclasses.cli import main
from pclasses.trust import Trust, as_trust, installed_packages, locate

# Module sources written to a temporary directory on sys.path.  Each leaves
# a marker file when its top-level code runs.
SIDE_EFFECT = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
class Thing:
    pass
"""
MAIN = """
import pathlib, sys
pathlib.Path({marker!r}).write_text("ran")
class Thing:
    pass
sys.exit("the program ran")
"""
EXITS = """
import sys
class Thing:
    pass
sys.exit(3)
"""
INTERRUPTS = """
raise KeyboardInterrupt("pressed")
"""
PACKAGE_INIT = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
"""


@pytest.fixture
def modules(tmp_path: Path):
    """A directory on sys.path; every module under it is removed from sys.modules after."""
    root = tmp_path / "mods"
    root.mkdir()
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith("pcltrust_")]:
        del sys.modules[name]


def write(root: Path, dotted: str, source: str) -> Path:
    parts = dotted.split(".")
    directory = root
    for pkg in parts[:-1]:
        directory = directory / pkg
        directory.mkdir(exist_ok=True)
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
    path = directory / f"{parts[-1]}.py"
    path.write_text(source)
    return path


def store(path: Path, names: list[str]) -> None:
    """A FileStorage whose records hold a persistent object of each ``module.Name``.

    The classes are made here under those names (a stand-in module for the
    moment of the commit), so no module file is ever run to write them.
    """
    db = ZODB.DB(FileStorage(str(path)))
    saved = {}
    try:
        conn = db.open()
        for i, dotted in enumerate(names):
            module, _, name = dotted.rpartition(".")
            if module not in saved:
                saved[module] = sys.modules.get(module)
                sys.modules[module] = types.ModuleType(module)
            cls = type(name, (Persistent,), {"__module__": module})
            setattr(sys.modules[module], name, cls)
            conn.root()[f"o{i}"] = cls()
        transaction.commit()
        conn.close()
    finally:
        for module, previous in saved.items():
            if previous is None:
                sys.modules.pop(module, None)
            else:
                sys.modules[module] = previous
        db.close()


def classes_json(path: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["classes", "--json", "--no-progress", "--jobs", "1",
                                       *args, str(path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    return {f"{c['module']}.{c['name']}": c for c in doc["databases"][0]["classes"]}


def test_classes_does_not_run_an_untrusted_module_it_finds(modules, tmp_path):
    """`pclasses classes` on a record naming a module with import side effects
    reports it found but not imported (not broken) and never runs it."""
    marker = tmp_path / "marker"
    source = write(modules, "pcltrust_side", SIDE_EFFECT.format(marker=str(marker)))
    data = tmp_path / "Data.fs"
    store(data, ["pcltrust_side.Thing"])
    got = classes_json(data)["pcltrust_side.Thing"]
    assert got["status"] == "not-imported"
    assert got["location"] == str(source)
    assert not marker.exists()
    assert "pcltrust_side" not in sys.modules
    broken = CliRunner().invoke(main, ["broken", "--json", "--no-progress", str(data)])
    assert broken.exit_code == 0, broken.output
    assert json.loads(broken.stdout)["databases"][0]["broken_classes"] == []
    assert not marker.exists()


def test_trusting_a_package_imports_it(modules, tmp_path):
    """--trust PKG lets inspection import the package's modules and check the name."""
    marker = tmp_path / "marker"
    write(modules, "pcltrust_ok.sub", SIDE_EFFECT.format(marker=str(marker)))
    data = tmp_path / "Data.fs"
    store(data, ["pcltrust_ok.sub.Thing", "pcltrust_ok.sub.Gone"])
    got = classes_json(data, "--trust", "pcltrust_ok")
    assert got["pcltrust_ok.sub.Thing"]["status"] == "ok"
    assert got["pcltrust_ok.sub.Gone"]["status"] == "broken"
    assert marker.exists()


def test_a_main_module_is_never_imported_even_when_trusted(modules, tmp_path):
    """A record naming ``pkg.__main__`` never runs that program, trusted or not."""
    marker = tmp_path / "marker"
    write(modules, "pcltrust_app.__main__", MAIN.format(marker=str(marker)))
    data = tmp_path / "Data.fs"
    store(data, ["pcltrust_app.__main__.Thing"])
    for args in ((), ("--trust", "pcltrust_app")):
        got = classes_json(data, *args)["pcltrust_app.__main__.Thing"]
        assert got["status"] == "not-imported"
        assert not marker.exists()
    assert "pcltrust_app.__main__" not in sys.modules
    assert not pclasses.ClassRegistry().inspect(
        "pcltrust_app.__main__", "Thing", trust=["pcltrust_app"]).how == "imported"


def test_system_exit_at_import_becomes_a_broken_status(modules, tmp_path):
    """A trusted module that calls sys.exit when imported resolves broken with
    the message; the CLI still exits 0 with its report."""
    write(modules, "pcltrust_exits", EXITS)
    data = tmp_path / "Data.fs"
    store(data, ["pcltrust_exits.Thing"])
    got = classes_json(data, "--trust", "pcltrust_exits")["pcltrust_exits.Thing"]
    assert got["status"] == "broken"
    assert got["error"] == "SystemExit: 3"


def test_keyboard_interrupt_at_import_does_not_escape(modules):
    """KeyboardInterrupt raised by a trusted module's import is reported, not raised."""
    write(modules, "pcltrust_interrupts", INTERRUPTS)
    res = pclasses.ClassRegistry().inspect("pcltrust_interrupts", "Thing",
                                           trust=["pcltrust_interrupts"])
    assert res.how == "broken" and res.error == "KeyboardInterrupt: pressed"


def test_missing_module_is_broken_and_parent_packages_are_not_imported(modules, tmp_path):
    """A missing submodule of an untrusted package is broken; the package's
    __init__ (with a side effect) is not run to find that out, nor to find a
    submodule that exists."""
    marker = tmp_path / "marker"
    write(modules, "pcltrust_pkg.present", "class Thing: pass\n")
    (modules / "pcltrust_pkg" / "__init__.py").write_text(PACKAGE_INIT.format(marker=str(marker)))
    reg = pclasses.ClassRegistry()
    gone = reg.inspect("pcltrust_pkg.absent", "Thing")
    assert gone.how == "broken" and "pcltrust_pkg.absent" in (gone.error or "")
    here = reg.inspect("pcltrust_pkg.present", "Thing")
    assert here.how == "not-imported" and here.ok
    assert here.location and here.location.endswith("present.py")
    assert reg.inspect("pcltrust_nowhere.mod", "Thing").how == "broken"
    assert not marker.exists()
    assert "pcltrust_pkg" not in sys.modules


def test_standard_library_modules_not_imported_stay_unimported():
    """A standard-library module that is not imported yet is located, never run."""
    if "this" in sys.modules:
        pytest.skip("'this' was imported by something else")
    res = pclasses.ClassRegistry().inspect("this", "Zen", trust=["this"])
    assert res.how == "not-imported"
    assert "this" not in sys.modules


def test_already_imported_and_installed_modules_resolve():
    """Modules already imported, and modules of installed non-stdlib
    distributions, are imported and checked by default."""
    reg = pclasses.ClassRegistry()
    assert reg.inspect("persistent.mapping", "PersistentMapping").how == "imported"
    assert reg.inspect("json", "JSONDecoder").how == "imported"  # stdlib, already imported
    assert "ZODB" in installed_packages()
    assert Trust().may_import("ZODB.tests.testBroken")
    assert not Trust(installed=False).may_import("ZODB.tests.testBroken")
    assert reg.inspect("persistent.mapping", "Nope").how == "broken"


def test_registrations_and_aliases_resolve_without_importing(modules, tmp_path):
    """Registered and aliased names resolve in inspection; the alias target's
    module is judged by the same rules."""
    marker = tmp_path / "marker"
    write(modules, "pcltrust_target", SIDE_EFFECT.format(marker=str(marker)))
    reg = pclasses.ClassRegistry()

    class Here:
        pass

    reg.register(Here, "pcltrust_side_reg.Thing")
    assert reg.inspect("pcltrust_side_reg", "Thing").target is Here
    reg.alias("pcltrust_old.Thing", "pcltrust_target.Thing")
    res = reg.inspect("pcltrust_old", "Thing")
    assert res.how == "not-imported" and res.chain[-1] == "pcltrust_target.Thing"
    assert not marker.exists()


def test_run_time_resolution_still_imports_application_modules(modules, tmp_path):
    """As ZODB's class factory the registry imports the modules records name."""
    marker = tmp_path / "marker"
    write(modules, "pcltrust_app2", SIDE_EFFECT.format(marker=str(marker)))
    cls = pclasses.ClassRegistry().find_global("pcltrust_app2", "Thing")
    assert cls.__name__ == "Thing" and marker.exists()


def test_locate_never_imports_and_rejects_odd_names(modules):
    """locate() finds modules by path only; names that are not module names are missing."""
    write(modules, "pcltrust_loc.a.b", "raise RuntimeError('ran')\n")
    assert locate("pcltrust_loc.a.b")[0]
    assert not locate("pcltrust_loc.a.c")[0]
    assert not locate("pcltrust_loc.a.b.c")[0]  # b is not a package
    assert not locate("../etc")[0] and not locate("a..b")[0]
    assert "pcltrust_loc" not in sys.modules


def test_as_trust_accepts_names_or_a_trust():
    """The library option takes package names, one name, or a Trust."""
    assert as_trust(None) == Trust()
    assert as_trust("a") == Trust(packages=("a",))
    assert as_trust(["a", "b"]).packages == ("a", "b")
    t = Trust(installed=False)
    assert as_trust(t) is t


def test_export_listing_and_import_check_do_not_run_untrusted_modules(modules, tmp_path):
    """export's class listing and import's checks resolve in inspection mode."""
    marker = tmp_path / "marker"
    write(modules, "pcltrust_exp", SIDE_EFFECT.format(marker=str(marker)))
    data = tmp_path / "Data.fs"
    store(data, ["pcltrust_exp.Thing"])
    db = ZODB.DB(FileStorage(str(data)))
    try:
        conn = db.open()
        out = tmp_path / "x.pclasses"
        manifest = pclasses.export_subtree(conn, conn.root()._p_oid, str(out))
        kinds = {f"{c.module}.{c.name}": c.kind for c in manifest.classes}
        assert kinds["pcltrust_exp.Thing"] == "not-imported"
        assert not marker.exists()
        conn.close()
    finally:
        db.close()
    target = pclasses.open(str(tmp_path / "Target.fs"))
    try:
        conn = target.open()
        with pytest.raises(pclasses.PClassesError) as info:
            pclasses.import_subtree(conn, str(out), into=conn.root(), name="x")
        assert "pcltrust_exp.Thing" in str(info.value)
        assert not marker.exists()
        transaction.abort()
        pclasses.import_subtree(conn, str(out), into=conn.root(), name="x",
                                trust=["pcltrust_exp"])
        assert marker.exists()
        transaction.abort()
        conn.close()
    finally:
        target.close()
