"""refs-check and gc across a tree of databases; pins (issue 14)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import transaction
import ZODB
from click.testing import CliRunner
from ZODB.FileStorage import FileStorage
from ZODB.utils import oid_repr

import pclasses
from pclasses.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from tree_models import Node  # noqa: E402


def pack_alone(path: Path) -> None:
    """Pack one database by itself, as an operator would (FileStorage gc on pack)."""
    db = ZODB.DB(FileStorage(str(path)))
    db.pack(days=0)
    db.close()


def build(tmp_path: Path, pin: bool = False):
    """root.src -> remote a.kept; a.garbage unreachable; a.gone referenced and
    deleted (packed away) -> dangling."""
    paths = [tmp_path / f"{n}.fs" for n in ("root", "a")]
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"] = Node("src")
    conn.add(src)
    ha = tree.add(conn, "a", paths[1], pin=pin)
    aroot = ha.root()
    holder = aroot["holder"] = Node("holder")
    kept = holder.kept = Node("kept")  # reachable in a only through holder
    garbage = aroot["garbage"] = Node("garbage")
    tm.commit()
    src.kept = pclasses.get_reference(src, kept)
    del aroot["holder"]  # kept now only referenced from root
    del aroot["garbage"]
    tm.commit()
    ids = {"src": src._p_oid, "kept": kept._p_oid, "garbage": garbage._p_oid,
           "holder": holder._p_oid}
    conn.close()
    tree.close()
    return paths, ids


def test_gc_dry_run_finds_garbage_and_keeps_remote_targets(tmp_path):
    """gc reports objects unreachable from every root of the tree; a target of
    a remote reference is alive; a dry run deletes nothing; --apply deletes
    through the storage API (with --force for FileStorage's own pack gc)."""
    paths, ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True, read_only=True)
    report = pclasses.collect_garbage(db, days=0)
    pclasses.tree_of(db).close()
    assert set(report.garbage["a"]) == {ids["garbage"], ids["holder"]}
    assert ids["kept"] not in report.garbage["a"] and report.garbage[db.database_name] == []
    assert not report.applied
    result = CliRunner().invoke(main, ["gc", str(paths[0]), "--days", "0", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc["databases"]["a"]["garbage"]) == {oid_repr(ids["garbage"]),
                                                      oid_repr(ids["holder"])}
    refused = CliRunner().invoke(main, ["gc", str(paths[0]), "--days", "0", "--apply"])
    assert refused.exit_code == 1 and "pack" in refused.output
    result = CliRunner().invoke(main, ["gc", str(paths[0]), "--days", "0", "--apply",
                                       "--force", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["applied"] is True
    fs = FileStorage(str(paths[1]), read_only=True)
    try:
        for oid in (ids["garbage"], ids["holder"]):
            with pytest.raises(KeyError):
                fs.load(oid)
        fs.load(ids["kept"])
    finally:
        fs.close()
    check = CliRunner().invoke(main, ["refs-check", str(paths[0])])
    assert check.exit_code == 0, check.output


def test_grace_period_keeps_recent_objects(tmp_path):
    """--days 1 keeps garbage written in the last day."""
    paths, _ids = build(tmp_path)
    db = pclasses.open(paths[0], tree=True, read_only=True)
    report = pclasses.collect_garbage(db)
    pclasses.tree_of(db).close()
    assert report.count == 0 and report.recent["a"] == 2


def test_refs_check_lists_dangling_remote_reference_after_pack(tmp_path):
    """Packing 'a' alone loses the object only root refers to: refs-check exits
    3 and names source, target, form and reason."""
    paths, ids = build(tmp_path)
    pack_alone(paths[1])
    result = CliRunner().invoke(main, ["refs-check", str(paths[0]), "--json"])
    assert result.exit_code == 3, result.output
    doc = json.loads(result.output)
    assert {"source_database": "unnamed", "source_oid": oid_repr(ids["src"]),
            "target_database": "a", "target_oid": oid_repr(ids["kept"]),
            "form": "remote", "reason": "missing"} in doc["dangling"]
    text = CliRunner().invoke(main, ["refs-check", str(paths[0]), "--referrers"])
    assert text.exit_code == 3 and "referred to by" in text.output


def test_pins_keep_remote_targets_through_pack_alone(tmp_path):
    """With pin=True the child keeps what other databases refer to when packed
    alone; gc drops a pin once no reference holds it."""
    paths, ids = build(tmp_path, pin=True)
    pack_alone(paths[1])
    db = pclasses.open(paths[0], tree=True, read_only=True)
    assert pclasses.check_refs(db).ok
    pclasses.tree_of(db).close()
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    assert conn.root()["src"].kept().name == "kept"
    del conn.root()["src"].kept
    conn.root()["src"]._p_changed = True
    tm.commit()
    conn.close()
    report = pclasses.collect_garbage(db, days=0, apply=True, force=True)
    tree.close()
    assert report.stale_pins["a"] == [ids["kept"]]
    assert ids["kept"] in report.garbage["a"]


def test_refs_check_unavailable_and_unknown(tmp_path):
    """A child that cannot be opened: its references dangle as 'unavailable'."""
    paths, ids = build(tmp_path)
    for p in tmp_path.glob("a.fs*"):
        p.unlink()
    db = pclasses.open(paths[0], tree=True, read_only=True)
    report = pclasses.check_refs(db)
    pclasses.tree_of(db).close()
    assert "a" in report.unavailable
    assert [(d.target_database, d.form, d.reason) for d in report.dangling] == [
        ("a", "remote", "unavailable")]


def test_refs_check_cannot_run(tmp_path):
    """A target that cannot be opened: exit 1, one line."""
    result = CliRunner().invoke(main, ["refs-check", str(tmp_path / "nope.fs")])
    assert result.exit_code == 1 and "Traceback" not in result.output
