"""Claim: a ClassRegistry is a drop-in class factory.  ZODB's own tests, run
with a fresh registry installed on every ZODB.DB they create, fail nowhere
ZODB alone does not.

The runner (``tests/zodb_dropin/run_zodb_tests.py``) runs each test module's
``test_suite()`` with unittest, once plain and once with ``ZODB.DB.__init__``
patched to install the registry (and with it the package's connection
class); both runs happen in fresh processes.  The subset here covers class
lookup, broken objects, serialization, persistent classes, cross-database
references, savepoints, caches and a whole storage suite; the full suite is
run by hand (``run_zodb_tests.py [--registry] all``, see design/decisions.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("zope.testing")
pytest.importorskip("manuel")

RUNNER = Path(__file__).parent / "zodb_dropin" / "run_zodb_tests.py"

SUBSET = [
    "ZODB.tests.testBroken",
    "ZODB.tests.testConnection",
    "ZODB.tests.testSerialize",
    "ZODB.tests.testpersistentclass",
    "ZODB.tests.testcrossdatabasereferences",
    "ZODB.tests.testDB",
    "ZODB.tests.testConfig",
    "ZODB.tests.testCache",
    "ZODB.tests.testConnectionSavepoint",
    "ZODB.tests.testPersistentWeakref",
    "ZODB.tests.testhistoricalconnections",
    "ZODB.tests.testmvcc",
    "ZODB.tests.testZODB",
    "ZODB.tests.test_doctest_files",
    "ZODB.tests.testMappingStorage",
]


def run(tmp_path: Path, registry: bool) -> dict:
    out = tmp_path / ("registry.json" if registry else "plain.json")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, str(RUNNER), "--json", str(out), *SUBSET]
    if registry:
        args.insert(2, "--registry")
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(900)
def test_zodb_own_tests_fail_nowhere_new_with_the_registry_installed(tmp_path):
    """Every ZODB test of the subset that passes with ZODB's default class
    factory also passes with a fresh ClassRegistry on every database."""
    plain = run(tmp_path, registry=False)
    with_registry = run(tmp_path, registry=True)
    assert with_registry["run"] == plain["run"] > 200
    added = sorted(set(with_registry["failed"]) - set(plain["failed"]))
    assert added == [], "\n\n".join(f"{t}:\n{with_registry['details'][t]}" for t in added)
