"""Claims about pclasses.connection: one place installs the package's
Connection class, and features subscribe through explicit hooks."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.Connection import Connection as ZODBConnection
from ZODB.MappingStorage import MappingStorage

import pclasses
from pclasses import connection as pconnection
from pclasses.connection import (
    CommitImport,
    Connection,
    add_record_hook,
    install,
    remove_record_hook,
)


@pytest.fixture
def db():
    d = ZODB.DB(MappingStorage())
    yield d
    d.close()


@pytest.fixture
def hook_list():
    """Record hooks added by a test are removed after it."""
    before = list(pconnection.record_hooks)
    yield
    pconnection.record_hooks[:] = before


def test_install_sets_the_class_on_the_database_and_on_connections_already_made(db):
    """A plain ZODB.DB gets the package's Connection class for new connections,
    and the connections it already made (open or pooled) are upgraded."""
    opened = db.open()
    assert type(opened) is ZODBConnection
    install(db)
    assert db.klass is Connection
    assert type(opened) is Connection
    opened.close()
    other = db.open()
    assert type(other) is Connection
    other.close()


def test_install_twice_is_a_no_op_and_covers_every_database_of_a_multidatabase():
    """install() reaches every database of the multi-database, once."""
    databases: dict = {}
    a = ZODB.DB(MappingStorage(), databases=databases, database_name="a")
    b = ZODB.DB(MappingStorage(), databases=databases, database_name="b")
    try:
        install(a)
        install(a)
        assert a.klass is Connection and b.klass is Connection
    finally:
        a.close()
        b.close()


def test_a_database_with_its_own_connection_class_is_left_alone():
    """A database whose application chose another Connection class keeps it."""

    class Mine(ZODBConnection):
        pass

    d = ZODB.DB(MappingStorage())
    try:
        d.klass = Mine
        d.pool.clear()  # drop the connection DB() made to create the root
        c = d.open()
        assert type(c) is Mine
        install(d)
        assert d.klass is Mine
        assert type(c) is Mine and not pconnection.is_installed(c)
        c.close()
    finally:
        d.close()


def test_every_pclasses_feature_installs_the_same_class(tmp_path):
    """The registry, the seat belt and import all put the one class in place."""
    d = pclasses.open(str(tmp_path / "Data.fs"))
    try:
        assert d.klass is Connection
        pclasses.check_xrefs(d, True)
        assert d.klass is Connection
    finally:
        d.close()
    plain = ZODB.DB(MappingStorage())
    try:
        pclasses.ClassRegistry().install(plain)
        assert plain.klass is Connection
    finally:
        plain.close()


def test_record_hooks_see_every_record_and_may_veto(db, hook_list):
    """A record hook is asked once per commit; its check sees every record
    written and a veto aborts the commit, leaving the database as it was."""
    install(db)
    seen: list[bytes] = []
    asked: list[object] = []

    def hook(connection):
        asked.append(connection)

        def check(obj, data):
            seen.append(data)
            if getattr(obj, "get", None) and obj.get("veto"):
                raise ValueError("vetoed")

        return check

    add_record_hook(hook)
    add_record_hook(hook)  # once only
    tm = transaction.TransactionManager()
    c = db.open(tm)
    c.root()["a"] = PersistentMapping()
    tm.commit()
    assert len(asked) == 1 and asked[0] is c
    assert len(seen) == 2  # the root and the new mapping
    last = db.lastTransaction()
    c.root()["a"]["veto"] = True
    with pytest.raises(ValueError):
        tm.commit()
    tm.abort()
    assert db.lastTransaction() == last
    remove_record_hook(hook)
    remove_record_hook(hook)  # unknown: ignored
    c.root()["b"] = 1
    tm.commit()
    assert len(asked) == 2
    c.close()


def test_a_hook_returning_none_is_not_called_per_record(db, hook_list):
    """A hook with nothing to do for a connection costs one call per commit."""
    install(db)
    calls = []
    add_record_hook(lambda connection: calls.append(connection))
    tm = transaction.TransactionManager()
    c = db.open(tm)
    c.root()["x"] = PersistentMapping()
    tm.commit()
    assert len(calls) == 1
    c.close()


def test_zodb_export_and_import_still_work_through_the_connection(db):
    """An ``_import`` that is not a CommitImport is ZODB's own importFile."""
    install(db)
    tm = transaction.TransactionManager()
    c = db.open(tm)
    c.root()["a"] = PersistentMapping(x=1)
    tm.commit()
    buf = io.BytesIO()
    c.exportFile(c.root()["a"]._p_oid, buf)
    buf.seek(0)
    c.root()["b"] = c.importFile(buf)
    tm.commit()
    assert c.root()["b"]["x"] == 1
    assert c.root()["b"]._p_oid != c.root()["a"]._p_oid
    c.close()


def test_commit_import_runs_inside_the_commit_and_is_dropped_on_abort(db):
    """A CommitImport set as the pending import runs at commit; an abort forgets it."""
    install(db)
    runs = []

    class Recorder(CommitImport):
        def run(self, connection, txn, returned):
            runs.append(connection)

    tm = transaction.TransactionManager()
    c = db.open(tm)
    c._import = (Recorder(), [])
    c._register()
    tm.abort()
    assert c._import is None
    c._import = (Recorder(), [])
    c._register()
    tm.commit()
    assert runs == [c]
    c.close()


def test_connection_module_imports_nothing_above_it():
    """connection.py sits below registry, xrefs and transfer: it imports none of them."""
    source = Path(pconnection.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            imported.add(node.module or "")
    assert imported <= {"broken", "records", "record", "record.reader"}, imported


def test_no_other_module_swaps_connection_classes():
    """Only connection.py assigns a connection class (``klass`` or ``__class__``)."""
    root = Path(pconnection.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "connection.py":
            continue
        text = path.read_text()
        if re.search(r"(\.klass|\.__class__) = \w*Connection|def _importDuringCommit|"
                     r"__module__ == .pclasses", text):
            offenders.append(path.name)
    assert offenders == []
