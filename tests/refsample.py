"""The sample of the ``refs`` command tests: a models module with intrinsic
references, the cities/docs tree built from it, and the environment a
``pclasses`` subprocess needs to find both (pclasses from this checkout).

A module of its own (as :mod:`netutil`), not ``conftest``: ``from conftest
import`` finds ``proptests/conftest.py`` when both suites are collected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pclasses

__all__ = ["MODELS", "SRC", "fill", "cli_env"]

#: The checkout's (or installed) ``src`` directory, first on a subprocess' path.
SRC = str(Path(pclasses.__file__).resolve().parent.parent)

#: Source of the models module; importing it with ``REFS_MARKER`` set writes
#: that file (tests that must not import it check the marker is absent).
MODELS = '''
import os
from persistent import Persistent
import pclasses

if os.environ.get("REFS_MARKER"):
    open(os.environ["REFS_MARKER"], "w").write("imported")


class City(Persistent):
    pass


class Doc(Persistent):
    city = pclasses.Ref()
    loose = pclasses.Ref(mode="none")
    tags = pclasses.RefSet(mode="none")
'''


def fill(root: Any, models: Any) -> tuple[Any, Any]:
    """/cities (c0..c9) and /docs (d0..d4): ``d{i}.city`` is ``c{i}``,
    ``d{i}.loose`` is ``c{i + 5}``, every doc tags ``c9``.  Returns both
    folders (not committed)."""
    cities = pclasses.place(root, "cities", pclasses.Folder())
    for i in range(10):
        cities[f"c{i}"] = models.City()
    docs = pclasses.place(root, "docs", pclasses.Folder())
    for i in range(5):
        docs[f"d{i}"] = d = models.Doc()
        d.city = cities[f"c{i}"]
        d.loose = cities[f"c{i + 5}"]
        d.tags = [cities["c9"]]
    return cities, docs


def cli_env(moddir: Path | None = None, marker: Path | None = None) -> dict[str, str]:
    """The environment for ``python -m pclasses.cli``: this pclasses, the
    models' directory when given, the import marker when given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC] + ([str(moddir)] if moddir else []))
    if marker is not None:
        env["REFS_MARKER"] = str(marker)
    return env
