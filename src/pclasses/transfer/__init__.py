"""Subtree export and import that exclude classes, check them, and run nothing.

One module per concept:

* :mod:`~pclasses.transfer.format`: the file (frames, manifest, digest) and
  ZODB's ``.zexp``, one frame codec for every reader of the file;
* :mod:`~pclasses.transfer.records`: what export and import read from a
  record (analysis, its class, class records), inertly;
* :mod:`~pclasses.transfer.export`: :func:`export_subtree`;
* :mod:`~pclasses.transfer.policy`: which globals an imported record may
  name and call;
* :mod:`~pclasses.transfer.importer`: :func:`import_subtree` (check pass,
  store pass);
* :mod:`~pclasses.transfer.paths`: objects by path, for the command line.
"""

from __future__ import annotations

from ..errors import ExportFormatError, MissingClassesError, RefusedGlobalsError, TransferError
from .export import export_subtree
from .format import ClassNeed, Manifest, read_manifest
from .importer import NOWHERE, import_subtree
from .paths import resolve_path
from .policy import ALLOWED_GLOBALS, REFUSED_PREFIX

__all__ = [
    "Manifest",
    "ClassNeed",
    "TransferError",
    "ExportFormatError",
    "MissingClassesError",
    "RefusedGlobalsError",
    "export_subtree",
    "import_subtree",
    "read_manifest",
    "ALLOWED_GLOBALS",
    "REFUSED_PREFIX",
    "NOWHERE",
    "resolve_path",
]
