"""The README's main job (``python -m pclasses.demo``, ``make demo``) runs
against a ZEO server (URI or ZConfig file) or a RelStorage/PostgreSQL database given on its
command line (issue 16): it builds the sample data there, runs every step
and exits 0; run again it reuses the demo's own data; a database holding
anything else is refused in one line and left as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import transaction

import pclasses

SRC = str(Path(pclasses.__file__).resolve().parent.parent)


def demo(directory: Path, target: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "pclasses.demo", str(directory),
                           "--target", target], capture_output=True, text=True, env=env,
                          timeout=600, stdin=subprocess.DEVNULL)


def target_of(kind: str, request: Any, tmp_path: Path) -> str:
    if kind == "zeo":
        return str(request.getfixturevalue("zeo_server").fresh_uri())
    if kind == "zeo-zconfig":  # a ZConfig file with a <clientstorage> section
        (host, port), name = request.getfixturevalue("zeo_server").fresh()
        conf = tmp_path / "zeo.conf"
        conf.write_text(f"%import ZEO\n<zodb main>\n  <clientstorage>\n"
                        f"    server {host}:{port}\n    storage {name}\n"
                        "    wait-timeout 20\n  </clientstorage>\n</zodb>\n")
        return str(conf)
    pytest.importorskip("psycopg2")
    pytest.importorskip("relstorage")
    pg = request.getfixturevalue("pg_server")
    return (f"postgres://postgres@{pg.host}:{pg.port}/{pg.createdb()}"
            f"?keep_history={'true' if kind == 'pg-history-preserving' else 'false'}")


@pytest.mark.parametrize("kind", ["zeo", "zeo-zconfig", "pg-history-free",
                                  "pg-history-preserving"])
def test_demo_runs_on_the_target_and_again(kind: str, request: Any, tmp_path: Path):
    """Every step runs on the target and the demo exits 0: the census,
    the broken objects and their inventory, live reattachment and the
    repair dry run read the target; the steps needing other databases say
    they use FileStorages beside it.  A second run reuses the data."""
    target = target_of(kind, request, tmp_path)
    first = demo(tmp_path / "var", target)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    out = first.stdout
    assert "built the sample data in" in out
    assert "legacy_shop.Product" in out and "gone_addon.Widget" in out
    assert "is_broken=True" in out and "object(s) reattached" in out
    assert "dry run on the target: 9 of 31 records" in out  # as on var/demo.fs
    assert "a FileStorage beside the target" in out
    assert "repair: rewrote 9 records" in out
    assert "note.describe() ->" in out and "refs-check:" in out
    assert out.rstrip().endswith("done.")
    assert (tmp_path / "var" / "demo-repaired.fs").exists()
    assert not (tmp_path / "var" / "demo.fs").exists()  # the target took its place
    again = demo(tmp_path / "var", target)
    assert again.returncode == 0, again.stderr
    assert "reusing the demo's data in" in again.stdout
    assert "dry run on the target: 9 of" in again.stdout  # the target was not repaired


@pytest.mark.parametrize("kind", ["zeo", "pg-history-free"])
def test_demo_refuses_a_database_that_is_not_its_own(kind: str, request: Any,
                                                     tmp_path: Path):
    """A target holding other data is refused: exit 1, one line on stderr
    naming its root entries, and nothing written to it."""
    target = target_of(kind, request, tmp_path)
    db = pclasses.open(target)
    try:
        with db.transaction() as conn:
            conn.root()["customers"] = {"alice": 1}
        last = db.storage.lastTransaction()
    finally:
        db.close()
    result = demo(tmp_path / "var", target)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "customers" in result.stderr
    assert "Traceback" not in result.stderr
    db = pclasses.open(target, read_only=True)
    try:
        assert db.storage.lastTransaction() == last
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        assert sorted(conn.root().keys()) == ["customers"]
        tm.abort()
        conn.close()
    finally:
        db.close()
