"""``refs`` (listing, referrers, ``--verify``), ``refs-check`` and the ``gc``
dry run give the same JSON, keys and values, on RelStorage/PostgreSQL
(history-free and history-preserving) and over ZEO as on a FileStorage
holding the same data (issue 16), run through the command line as an
operator runs them.  Verification never imports the application's module.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import transaction

import pclasses
from refsample import MODELS, cli_env, fill

KINDS = ["zeo", "pg-history-free", "pg-history-preserving"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    moddir = tmp_path_factory.mktemp("mods")
    (moddir / "refs_storages_models.py").write_text(MODELS)
    sys.path.insert(0, str(moddir))
    try:
        yield importlib.import_module("refs_storages_models"), moddir
    finally:
        sys.path.remove(str(moddir))
        sys.modules.pop("refs_storages_models", None)


def build(db: Any, models: Any) -> None:
    """/cities (c0..c9), /docs (d0..d4) with references; c5 removed (d0.loose
    dangles), a link dropped behind the registry's back (d3.city missing),
    and an unlinked mapping (garbage)."""
    from persistent.mapping import PersistentMapping

    from pclasses.refs.registry import registry_of

    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        root = conn.root()
        cities, docs = fill(root, models)
        root["junk"] = PersistentMapping(inner=PersistentMapping())
        tm.commit()
        pclasses.remove(cities, "c5")
        missing = docs["d3"]
        registry = registry_of(conn)
        for link in list(registry.links):
            if link[3] == missing._p_oid and link[1].endswith(".city"):
                registry.drop_link(*link)
        del root["junk"]
        tm.commit()
    finally:
        tm.abort()
        conn.close()


def cli(*args: str, marker: Path | None = None, moddir: Path | None = None
        ) -> tuple[int, Any]:
    env = cli_env(moddir, marker)
    proc = subprocess.run([sys.executable, "-m", "pclasses.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError((args, proc.returncode, proc.stdout, proc.stderr)) from None


COMMANDS = [
    ("refs", "{t}", "--json"),
    ("refs", "{t}", "/cities/c9", "--json"),
    ("refs", "{t}", "--verify", "--json"),
    ("refs-check", "{t}", "--json"),
    ("refs-check", "{t}", "--referrers", "--json"),
    ("gc", "{t}", "--days", "0", "--json"),
]


#: Values made up per database when the data is written (not read from the
#: storage): compared by presence, not value.
MADE_UP = {"reference_id"}


def same_shape(doc: Any) -> Any:
    """``doc`` with the values of :data:`MADE_UP` keys replaced."""
    if isinstance(doc, dict):
        return {k: ("<made up>" if k in MADE_UP and v is not None else same_shape(v))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [same_shape(v) for v in doc]
    return doc


def outputs(target: str, moddir: Path, marker: Path) -> dict[str, tuple[int, Any]]:
    out = {}
    for command in COMMANDS:
        args = [a.format(t=target) for a in command]
        code, doc = cli(*args, marker=marker, moddir=moddir)
        out[" ".join(command)] = code, same_shape(doc)
    assert not marker.exists(), "the application's module was imported"
    return out


@pytest.fixture(scope="module")
def on_file(models: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, tuple[int, Any]]:
    mod, moddir = models
    path = tmp_path_factory.mktemp("file") / "refs.fs"
    db = pclasses.open(str(path))
    try:
        build(db, mod)
    finally:
        db.close()
    return outputs(str(path), moddir, path.parent / "marker")


def target_of(kind: str, request: Any) -> str:
    if kind == "zeo":
        return str(request.getfixturevalue("zeo_server").fresh_uri())
    pytest.importorskip("psycopg2")
    pytest.importorskip("relstorage")
    pg = request.getfixturevalue("pg_server")
    kh = "true" if kind == "pg-history-preserving" else "false"
    return f"postgres://postgres@{pg.host}:{pg.port}/{pg.createdb()}?keep_history={kh}"


@pytest.mark.parametrize("kind", KINDS)
def test_refs_commands_give_what_they_give_on_the_file(kind: str, models: Any, on_file: Any,
                                                       request: Any, tmp_path: Path):
    """Each command exits as on the file and prints the same JSON: the same
    keys, and the same values (references, links, referrers, problems with
    their kinds and oids, dangling references, garbage); only the random
    reference ids written with the data differ."""
    mod, moddir = models
    target = target_of(kind, request)
    db = pclasses.open(target)
    try:
        build(db, mod)
    finally:
        db.close()
    got = outputs(target, moddir, tmp_path / "marker")
    # the data is not trivial: these are the problems the file shows too
    code, verify = on_file["refs {t} --verify --json"]
    assert code == 3 and {p["kind"] for p in verify["problems"]} >= {"missing", "dangling"}
    assert on_file["gc {t} --days 0 --json"][1]["count"] >= 2
    for command, (code, doc) in on_file.items():
        assert got[command][0] == code, (command, got[command])
        assert got[command][1] == doc, command
