"""Export/import of a subtree holding remote references into another tree
(issue 14): references to database handles are rebound by handle name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transaction

import pclasses

sys.path.insert(0, str(Path(__file__).parent))
from tree_models import Node  # noqa: E402


def make(tmp_path: Path, tag: str, child: Path):
    db = pclasses.open(tmp_path / f"{tag}.fs", tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    handle = tree.add(conn, "shared", child)
    return db, tree, tm, conn, handle


def test_subtree_with_remote_references_moves_to_another_tree(tmp_path):
    """The exported subtree's remote references point at the same child
    objects after import into another tree whose handle has the same name;
    the handle itself is not copied."""
    shared = tmp_path / "shared.fs"
    db, tree, tm, conn, handle = make(tmp_path, "one", shared)
    target = handle.root()["target"] = Node("shared target")
    folder = conn.root()["folder"] = Node("folder")
    conn.add(folder)
    tm.commit()
    folder.child = Node("child")
    folder.child.ref = pclasses.get_reference(folder, target)
    tm.commit()
    export = tmp_path / "folder.pclasses"
    pclasses.export_subtree(conn, folder._p_oid, export)
    conn.close()
    tree.close()

    db2, tree2, tm2, conn2, _h2 = make(tmp_path, "two", shared)
    tm2.commit()
    handles_before = len(conn2.root()["pclasses.databases"])
    new = pclasses.import_subtree(conn2, export)
    conn2.root()["folder"] = new
    tm2.commit()
    assert new.child.ref().name == "shared target"
    assert new.child.ref.via is conn2.root()["pclasses.databases"]["shared"]
    assert len(conn2.root()["pclasses.databases"]) == handles_before
    conn2.close()
    tree2.close()


def test_missing_handle_name_is_reported_like_a_missing_class(tmp_path):
    """Importing into a tree without a handle of that name is refused with
    MissingClassesError naming the handle; nothing is stored."""
    shared = tmp_path / "shared.fs"
    db, tree, tm, conn, handle = make(tmp_path, "one", shared)
    target = handle.root()["target"] = Node("t")
    folder = conn.root()["folder"] = Node("folder")
    conn.add(folder)
    tm.commit()
    folder.ref = pclasses.get_reference(folder, target)
    tm.commit()
    export = tmp_path / "folder.pclasses"
    pclasses.export_subtree(conn, folder._p_oid, export)
    conn.close()
    tree.close()
    db2 = pclasses.open(tmp_path / "other.fs", tree=True)
    conn2 = db2.open()
    size = (tmp_path / "other.fs").stat().st_size
    with pytest.raises(pclasses.MissingClassesError) as info:
        pclasses.import_subtree(conn2, export)
    assert "shared" in str(info.value)
    transaction.abort()
    conn2.close()
    pclasses.tree_of(db2).close()
    assert (tmp_path / "other.fs").stat().st_size == size
