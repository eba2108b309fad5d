"""Minimal examples of failures found by the property tests (proptests/).

Each test is the shrunk example, written out plainly.  Tests marked
``xfail(strict=True)`` document a bug that is not fixed yet: they fail
today, and the strict mark makes the suite say so when a fix makes them
pass (then drop the mark).  The others pin behaviour the property tests
had to learn about and rely on.
"""

from __future__ import annotations

import importlib
import io
import shutil
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import transaction
from persistent.mapping import PersistentMapping

import pclasses

BASE_SOURCE = """
    from persistent import Persistent


    class Node(Persistent):
        '''A regular persistent class a database-resident class derives from.'''
"""


class Module:
    """A module file on ``sys.path`` that can vanish and come back."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name = f"pcl_regr_{uuid.uuid4().hex[:12]}"
        self.path = directory / f"{self.name}.py"

    def show(self) -> Any:
        sys.modules.pop(self.name, None)
        self.path.write_text(textwrap.dedent(BASE_SOURCE))
        importlib.invalidate_caches()
        return importlib.import_module(self.name)

    def hide(self) -> None:
        sys.modules.pop(self.name, None)
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.directory / "__pycache__", ignore_errors=True)
        importlib.invalidate_caches()


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    directory = tmp_path / "modules"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    m = Module(directory)
    try:
        yield m
    finally:
        m.hide()


def _open(path: Path) -> tuple[Any, Any, transaction.TransactionManager]:
    db = pclasses.open(str(path), pclasses.ClassRegistry())
    tm = transaction.TransactionManager()
    return db, db.open(tm), tm


def _close(db: Any, conn: Any, tm: transaction.TransactionManager) -> None:
    tm.abort()
    conn.close()
    db.close()


def _store_resident_on_regular_base(path: Path, module: Module) -> None:
    """A database-resident class ``Note`` derived from the module's ``Node``,
    and one instance of it in a container: ``root['g']['objs'] == [note]``."""
    m = module.show()
    db, conn, tm = _open(path)
    try:
        note_class = pclasses.define_class(conn, "Note", (m.Node,), guid="g0")
        g = PersistentMapping()
        g["objs"] = [note_class()]
        conn.root()["g"] = g
        tm.commit()
    finally:
        _close(db, conn, tm)


# ---------------------------------------------------------------------------
# proptests/test_roundtrip_props.py::test_nothing_is_lost_through_a_broken_phase
#
# Shrunk example: one database-resident class whose base is a class of the
# module (ResidentSpec(base="node")), one instance of it in the graph, the
# module hidden, the graph's root mapping edited and committed, the module
# back: the root mapping no longer loads (StateLoadError).
#
# Cause: when the instance loads while the base is missing, its class (a
# PersistentClass whose base is now a broken class) is a subclass of
# Broken, so ZODB's reader asks ZODB.broken.persistentBroken() for its
# persistent variant, which *sets* ``__Broken_Persistent__`` on the class.
# PersistentClass records that as an edit of the class, so the next commit
# of the connection rewrites the class record and stores the variant (a new
# PersistentClass, bases (PersistentBroken, Note)) as a new class record.
# pclasses' writer then writes the reference to the broken instance as
# ``(oid, <that variant class>)`` (a persistent reference to the new class
# record) where ZODB had written a bare oid, and the container holding the
# reference cannot be loaded any more, even once the base class is back.


def test_loading_instance_of_resident_class_with_missing_base_does_not_edit_the_class(
        tmp_path: Path, module: Module) -> None:
    path = tmp_path / "Data.fs"
    _store_resident_on_regular_base(path, module)
    module.hide()
    db, conn, tm = _open(path)
    try:
        note = conn.root()["g"]["objs"][0]
        note._p_activate()
        assert pclasses.is_broken(note)
        note_class = pclasses.class_table(conn)["g0"]
        # expected: loading an object changes nothing; actual: the class is
        # marked changed, and any commit of this connection rewrites it
        assert note_class._p_changed is False
        assert note_class not in conn._registered_objects
    finally:
        _close(db, conn, tm)


def test_container_committed_while_resident_base_is_missing_loads_when_it_returns(
        tmp_path: Path, module: Module) -> None:
    path = tmp_path / "Data.fs"
    _store_resident_on_regular_base(path, module)
    module.hide()
    db, conn, tm = _open(path)
    try:
        g = conn.root()["g"]
        assert pclasses.is_broken(g["objs"][0])
        g["edited"] = True  # any change of the container holding the reference
        tm.commit()
    finally:
        _close(db, conn, tm)
    m = module.show()
    db, conn, tm = _open(path)
    try:
        g = conn.root()["g"]
        # actual: ZODB.POSException.StateLoadError ("The given oid is already
        # in the cache"): the reference was written as (oid, new class record)
        note = g["objs"][0]
        assert not pclasses.is_broken(note)
        assert type(note) is pclasses.class_table(conn)["g0"]
        assert isinstance(note, m.Node)
        assert g["edited"] is True
    finally:
        _close(db, conn, tm)


def test_resident_class_with_missing_base_no_edit_no_loss(
        tmp_path: Path, module: Module) -> None:
    """Without a commit in the broken phase, nothing is lost: the instance
    loads broken while the base is missing and as itself once it is back."""
    path = tmp_path / "Data.fs"
    _store_resident_on_regular_base(path, module)
    module.hide()
    db, conn, tm = _open(path)
    try:
        assert pclasses.is_broken(conn.root()["g"]["objs"][0])
    finally:
        _close(db, conn, tm)
    module.show()
    db, conn, tm = _open(path)
    try:
        note = conn.root()["g"]["objs"][0]
        assert not pclasses.is_broken(note)
        assert type(note) is pclasses.class_table(conn)["g0"]
    finally:
        _close(db, conn, tm)


# ---------------------------------------------------------------------------
# proptests/test_system_state_machine.py::export_import
#
# Shrunk example: an object holding a plain instance of a database-resident
# class, exported and imported with missing="broken" into a database whose
# class table lacks that class.  The import stores a placeholder class
# under the class's guid and the plain instance loads as a broken object,
# its state kept (issue 12); with missing="error" it is refused and nothing
# is written.


def test_import_of_plain_resident_instance_without_its_class_is_broken(
        tmp_path: Path) -> None:
    db, conn, tm = _open(tmp_path / "src.fs")
    try:
        card = pclasses.define_class(conn, "Card", (object,), {"a": 2}, guid="g1")
        obj = PersistentMapping()
        c = card()
        c.w = 7
        obj["p"] = c
        conn.root()["o"] = obj
        tm.commit()
        export = io.BytesIO()
        pclasses.export_subtree(conn, obj, export)
    finally:
        _close(db, conn, tm)
    dst = tmp_path / "dst.fs"
    db, conn, tm = _open(dst)
    try:
        conn.root()["copies"] = PersistentMapping()
        tm.commit()
        export.seek(0)
        with pytest.raises(pclasses.MissingClassesError, match="g1"):
            pclasses.import_subtree(conn, export, into=conn.root()["copies"], name="o")
        tm.commit()
        assert dict(conn.root()["copies"]) == {}
        export.seek(0)
        pclasses.import_subtree(conn, export, missing="broken",
                                into=conn.root()["copies"], name="o")
        tm.commit()
    finally:
        _close(db, conn, tm)
    db, conn, tm = _open(dst)
    try:
        p = conn.root()["copies"]["o"]["p"]
        assert pclasses.is_broken(p)
        assert pclasses.broken_state(p) == {"w": 7}
    finally:
        _close(db, conn, tm)


# ---------------------------------------------------------------------------
# proptests/test_roundtrip_props.py::test_nothing_is_lost_through_a_broken_phase
#
# Shrunk example: an object of a missing class living in the second database
# of a ZConfig multi-database.  find_broken(db) reports the records of ``db``
# alone (``pclasses broken`` walks every database of the target); the
# property asks each database of ``db.databases``.


def test_find_broken_reports_the_database_it_is_given(tmp_path: Path, module: Module) -> None:
    conf = tmp_path / "db.conf"
    conf.write_text("".join(
        f"<zodb {n}>\n  <filestorage>\n    path {tmp_path / (n + '.fs')}\n"
        f"  </filestorage>\n</zodb>\n" for n in ("main", "other")))
    m = module.show()
    db = pclasses.open(str(conf), pclasses.ClassRegistry())
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        other = conn.get_connection("other")
        node = m.Node()
        other.add(node)
        other.root()["n"] = node
        tm.commit()
    finally:
        tm.abort()
        conn.close()
        for each in list(db.databases.values()):
            each.close()
    module.hide()
    db = pclasses.open(str(conf), pclasses.ClassRegistry())
    try:
        assert not pclasses.find_broken(db)
        reports = {name: pclasses.find_broken(each) for name, each in db.databases.items()}
        assert not reports["main"]
        assert [c.dotted for c in reports["other"]] == [f"{module.name}.Node"]
    finally:
        for each in list(db.databases.values()):
            each.close()
