"""The installed wheel works on its own (``make wheel`` runs this file from a
directory where ``src/`` is not importable, with ``PCLASSES_TEST_INSTALLED=1``).

A user installs the wheel, not the source tree: what it holds must be enough
(the package, its C extension, its type marker, its command, its metadata).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pclasses

pytestmark = pytest.mark.skipif(
    os.environ.get("PCLASSES_TEST_INSTALLED") != "1",
    reason="checks an installed wheel (run by `make wheel`)",
)

PACKAGE = Path(pclasses.__file__).resolve().parent


def test_package_comes_from_the_environment_not_the_source_tree():
    """``pclasses`` is imported from the environment's site-packages, and no
    ``src/pclasses`` is on the import path."""
    assert PACKAGE.parent.name == "site-packages", PACKAGE
    assert Path(sys.prefix).resolve() in PACKAGE.parents
    for entry in sys.path:
        assert not (Path(entry or ".") / "src" / "pclasses").exists(), entry


def test_wheel_holds_the_c_extension():
    """The wheel ships the compiled record analyzer (a user with the wheel
    gets C speed without a compiler)."""
    names = [n for n in ("pclasses.record._skim", "pclasses._skim")]
    loaded = []
    for name in names:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            continue
    assert loaded, f"none of {names} imports"
    assert Path(loaded[0].__file__).resolve().is_relative_to(PACKAGE)


def test_wheel_holds_the_type_marker_and_metadata():
    """py.typed is installed, and the metadata carries the SPDX license and
    the console script."""
    assert (PACKAGE / "py.typed").exists()
    meta = importlib.metadata.metadata("pclasses")
    assert meta["License-Expression"] == "ZPL-2.1"
    assert meta["Version"] == pclasses.__version__
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert any(ep.name == "pclasses" and ep.value == "pclasses.cli:main" for ep in scripts)


def test_installed_command_runs():
    """The ``pclasses`` command of the environment answers ``--version``."""
    command = Path(sys.executable).parent / "pclasses"
    assert command.exists() or shutil.which("pclasses")
    out = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                         timeout=120, check=True)
    assert pclasses.__version__ in out.stdout
