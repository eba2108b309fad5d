"""Checking a tree never imports modules that the root's entries name.

``refs-check`` and ``gc`` learn a tree's handles from the root database; the
handles' mapping is found from the root's record with the inert reader, so a
module on the path whose class an entry of the root names is never imported
(its top-level code would run).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import ZODB
from ZODB.FileStorage import FileStorage

import pclasses


def _root_naming_a_module_with_side_effects(tmp_path):
    marker = tmp_path / "imported"
    code = tmp_path / "code"
    code.mkdir()
    (code / "sidefx_tree_mod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from persistent import Persistent\nclass Thing(Persistent):\n    pass\n")
    path = tmp_path / "main.fs"
    sys.path.insert(0, str(code))
    try:
        import sidefx_tree_mod  # type: ignore[import-not-found]

        db = pclasses.open(str(path), tree=True)
        with db.transaction() as conn:
            conn.root()["thing"] = sidefx_tree_mod.Thing()
            pclasses.tree_of(db).add(conn, "child", str(tmp_path / "child.fs"))
        db.close()
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("sidefx_tree_mod", None)
    marker.unlink()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH")) if p)
    return path, marker, env


@pytest.mark.parametrize("command", [["refs-check"], ["gc", "--days", "0"]])
def test_tree_commands_import_nothing_the_root_names(tmp_path, command):
    """refs-check and gc on a tree's root read the child handles without
    importing the module a root entry's class lives in (its code never runs),
    and still see the child database."""
    path, marker, env = _root_naming_a_module_with_side_effects(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pclasses.cli", *command, str(path), "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode in (0, 3), done.stderr
    assert not marker.exists()
    assert "child" in done.stdout


def test_handles_are_still_learned_from_the_root(tmp_path):
    """Reading the handles inertly still finds every child of the root."""
    path = tmp_path / "main.fs"
    db = pclasses.open(str(path), tree=True)
    with db.transaction() as conn:
        pclasses.tree_of(db).add(conn, "a", str(tmp_path / "a.fs"))
        pclasses.tree_of(db).add(conn, "b", str(tmp_path / "b.fs"))
    db.close()
    db = ZODB.DB(FileStorage(str(path), read_only=True))
    try:
        reopened = pclasses.open(str(path), tree=True, read_only=True)
        try:
            tree = pclasses.tree_of(reopened)
            assert tree.handle("a").name == "a" and tree.handle("b").name == "b"
            assert tree.opened == [reopened.database_name] or "a" not in tree.opened
        finally:
            reopened.close()
    finally:
        db.close()


@pytest.mark.parametrize("n", [0, 1, 5, 3000])
def test_pins_read_inertly_are_the_pin_trees_keys(tmp_path, n):
    """The pinned oids read from the records (one bucket inside the tree's
    record, or a chain of buckets) are exactly the pin tree's keys."""
    from BTrees.OOBTree import OOBTree
    from persistent.mapping import PersistentMapping

    from pclasses.tree.pins import PINS_KEY, pinned

    db = ZODB.DB(FileStorage(str(tmp_path / "p.fs")))
    try:
        with db.transaction() as conn:
            tree = conn.root()[PINS_KEY] = OOBTree()
            for _ in range(n):
                obj = PersistentMapping()
                conn.add(obj)
                tree[obj._p_oid] = obj
            want = set(tree.keys())
        conn = db.open()
        try:
            assert pinned(conn) == want
        finally:
            conn.close()
    finally:
        db.close()
