"""``pclasses refs``: listing, referrers, --verify/--fix/--mode/--dry-run/--json,
run as a real subprocess over a FileStorage built with real transactions.
Verification reads records only: the application's module is never imported."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import transaction
from ZODB import DB
from ZODB.FileStorage import FileStorage

import pclasses
from refsample import MODELS, cli_env, fill


def run(*args: str, models: Path | None = None, marker: Path | None = None):
    env = cli_env(models, marker)
    return subprocess.run([sys.executable, "-m", "pclasses.cli", "refs", *args],
                          capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def built(tmp_path):
    """A FileStorage with /cities (c0..c9), /docs (d0..d4) holding references."""
    moddir = tmp_path / "mods"
    moddir.mkdir()
    (moddir / "refs_cli_models.py").write_text(MODELS)
    sys.path.insert(0, str(moddir))
    try:
        models = importlib.import_module("refs_cli_models")
        path = tmp_path / "refs.fs"
        db = DB(FileStorage(str(path)))
        conn = db.open()
        root = conn.root()
        fill(root, models)
        transaction.commit()
        yield path, moddir, db, conn
        transaction.abort()
        conn.close()
        db.close()
    finally:
        sys.path.remove(str(moddir))
        sys.modules.pop("refs_cli_models", None)


def _release(db, conn):
    transaction.commit()
    conn.close()
    db.close()


def test_listing_one_row_per_reference(built):
    """Without a key: one row per reference with mode, links, targets, dangling."""
    path, _moddir, db, conn = built
    _release(db, conn)
    result = run(str(path), "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["ref_id"]: r for r in json.loads(result.stdout)["references"]}
    assert rows["refs_cli_models.Doc.city"]["links"] == 5
    assert rows["refs_cli_models.Doc.tags"]["targets"] == 1
    assert all(r["dangling"] == 0 for r in rows.values())
    text = run(str(path))
    assert text.returncode == 0 and "refs_cli_models.Doc.city" in text.stdout


def test_referrers_of_a_key(built):
    """With a key: its referrers (source oid, attribute)."""
    path, _moddir, db, conn = built
    _release(db, conn)
    result = run(str(path), "/cities/c9", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)["referrers"]
    assert len(found) == 6 and {r["name"] for r in found} == {"tags", "loose"}


def test_verify_clean_exits_0_without_importing_the_application(built, tmp_path):
    """A clean database verifies with exit 0; the application module, though
    importable and hostile, is never imported."""
    path, moddir, db, conn = built
    _release(db, conn)
    marker = tmp_path / "marker"
    result = run(str(path), "--verify", "--json", models=moddir, marker=marker)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["problems"] == [] and doc["links"] == 15
    assert not marker.exists()


def test_verify_finds_and_fixes_problems(built, tmp_path):
    """Dangling references, stale links (a raw BTree delete of a source) and
    missing links are found (exit 3, kinds and oid_repr in the JSON); --fix
    repairs them (exit 0) and a second verify is clean."""
    path, moddir, db, conn = built
    root = conn.root()
    cities, docs = root["cities"], root["docs"]
    pclasses.remove(cities, "c5")                  # d0.loose dangles (mode none)
    stale_oid = docs["d4"]._p_oid
    docs._data.pop("d4")                           # behind the registry's back
    missing = docs["d3"]
    from pclasses.refs.registry import registry_of

    registry = registry_of(conn)
    for link in list(registry.links):
        if link[3] == missing._p_oid and link[1].endswith(".city"):
            registry.drop_link(*link)
    _release(db, conn)
    marker = tmp_path / "marker"
    result = run(str(path), "--verify", "--json", models=moddir, marker=marker)
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    kinds = {(p["kind"], p["oid_repr"]) for p in doc["problems"]}
    from ZODB.utils import oid_repr

    assert ("missing", oid_repr(missing._p_oid)) in kinds
    assert ("stale", oid_repr(stale_oid)) in kinds
    assert any(k == "dangling" for k, _ in kinds)
    assert {p["kind"] for p in doc["problems"]} == {"missing", "stale", "dangling"}
    assert not marker.exists()
    dry = run(str(path), "--verify", "--fix", "null", "--dry-run", "--json", models=moddir)
    assert dry.returncode == 3
    fixed = run(str(path), "--verify", "--fix", "null", "--json", models=moddir)
    assert fixed.returncode == 0, fixed.stderr
    again = run(str(path), "--verify", "--json", models=moddir)
    assert again.returncode == 0 and json.loads(again.stdout)["problems"] == []


def test_fix_keep_leaves_dangling_and_exits_3(built):
    path, moddir, db, conn = built
    pclasses.remove(conn.root()["cities"], "c6")
    _release(db, conn)
    result = run(str(path), "--verify", "--fix", "keep", "--json", models=moddir)
    assert result.returncode == 3
    assert [p["kind"] for p in json.loads(result.stdout)["problems"]] == ["dangling"]


def test_mode_change(built):
    """--mode REF=MODE changes the effective mode; tightening over a dangling
    link is refused (exit 1, one line) unless --fix null/remove."""
    path, moddir, db, conn = built
    pclasses.remove(conn.root()["cities"], "c7")
    _release(db, conn)
    ref = "refs_cli_models.Doc.loose"
    refused = run(str(path), "--mode", f"{ref}=always", models=moddir)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    dry = run(str(path), "--mode", f"{ref}=always", "--fix", "null", "--dry-run", "--json",
              models=moddir)
    assert dry.returncode == 0 and json.loads(dry.stdout)["modes"][0]["applied"] is False
    done = run(str(path), "--mode", f"{ref}=always", "--fix", "null", "--json", models=moddir)
    assert done.returncode == 0, done.stderr
    rows = {r["ref_id"]: r for r in json.loads(run(str(path), "--json").stdout)["references"]}
    assert rows[ref]["mode"] == "always" and rows[ref]["dangling"] == 0


def test_cannot_run_exits_1(tmp_path):
    result = run(str(tmp_path / "missing.fs"), "--verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    bad = run(str(tmp_path / "missing.fs"), "--mode", "x=sometimes")
    assert bad.returncode == 1
