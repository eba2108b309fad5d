"""Split state (issue 15, seed 001 scenario 2): one object whose mapped
columns live in an SQL row and the rest in its own ZODB database."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
import transaction

import pclasses

sys.path.insert(0, str(Path(__file__).parent))
from sql_models import Member  # noqa: E402
from sql_util import Vetoer, sqlite_file, sqlite_rows  # noqa: E402

PEOPLE = "CREATE TABLE people (uid TEXT PRIMARY KEY, name TEXT, email TEXT)"
SEED = "INSERT INTO people VALUES ('u1', 'Ada', 'ada@example.org')"


def open_tree(tmp_path: Path, url: str | None = None):
    db = pclasses.open(tmp_path / "own.fs", tree=True)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    if url is not None:
        store = pclasses.tree_of(db).add(conn, "people", url)
        store.map("member", "people", "uid", Member, columns=["name", "email"])
        tm.commit()
    return db, tm, conn


@pytest.fixture
def split(tmp_path):
    url = sqlite_file(tmp_path / "people.db", PEOPLE, SEED)
    db, tm, conn = open_tree(tmp_path, url)
    yield db, tm, conn, url
    if conn.opened is not None:
        tm.abort()
        conn.close()
        pclasses.tree_of(db).close()


def test_adopt_wraps_the_row_and_one_commit_saves_both_parts(split, tmp_path):
    """``adopt`` wraps a row in an object of the own database (its ``_p_jar``);
    columns read and write through to the row, other attributes stay in
    ZODB, and one commit saves both parts."""
    db, tm, conn, url = split
    m = pclasses.adopt("member", "u1", into=conn)
    assert isinstance(m, pclasses.SplitPersistent)
    assert (m.name, m.email, m.uid) == ("Ada", "ada@example.org", "u1")
    m.name = "Ada Lovelace"
    m.notes = "kept in ZODB"
    tm.commit()
    assert m._p_jar is conn and m._p_oid is not None
    assert "name" not in m.__getstate__()  # the column is not in the own record
    assert sqlite_rows(url, "SELECT name FROM people") == [("Ada Lovelace",)]
    oid = m._p_oid
    conn.close()
    pclasses.tree_of(db).close()

    from pclasses.stores.mapping import COLUMNS_BY_CLASS

    COLUMNS_BY_CLASS.pop(Member, None)  # as in a new process: the store not used yet
    db2, tm2, conn2 = open_tree(tmp_path)
    try:
        loaded = conn2.root()["pclasses.split"].values()[0]
        assert loaded.name == "Ada Lovelace"  # binds the store on first use
        again = pclasses.adopt("member", "u1", into=conn2)
        assert again is loaded
        tm2.commit()
        loaded._p_deactivate()
        loaded.name = "A. Lovelace"  # set on a ghost: still the row's column
        tm2.commit()
        assert sqlite_rows(url, "SELECT name FROM people") == [("A. Lovelace",)]
        assert "name" not in loaded.__getstate__()
        assert again._p_oid == oid
        assert (again.notes, again.name) == ("kept in ZODB", "A. Lovelace")
        tm2.abort()
        conn2.close()
    finally:
        pclasses.tree_of(db2).close()


def test_both_parts_or_neither(split):
    """A veto at vote leaves both the row and the own part unchanged."""
    _db, tm, conn, url = split
    m = pclasses.adopt("member", "u1", into=conn)
    m.notes = "first"
    tm.commit()
    m.name = "Changed"
    m.notes = "second"
    tm.get().join(Vetoer())
    with pytest.raises(RuntimeError):
        tm.commit()
    tm.abort()
    assert sqlite_rows(url, "SELECT name FROM people") == [("Ada",)]
    assert (m.notes, m.name) == ("first", "Ada")


def test_adopt_refreshes_stale_copied_keys(split):
    """A copied column changed in SQL behind the object's back is updated in
    the own part the next time the object is adopted."""
    _db, tm, conn, url = split
    m = pclasses.adopt("member", "u1", into=conn)
    tm.commit()
    assert m.__dict__["email"] == "ada@example.org"
    raw = sqlite3.connect(url[len("sqlite:///"):])
    raw.execute("UPDATE people SET email = 'ada@lovelace.org' WHERE uid = 'u1'")
    raw.commit()
    raw.close()
    assert pclasses.adopt("member", "u1", into=conn) is m
    assert m.__dict__["email"] == "ada@lovelace.org"
    tm.commit()
    assert m._p_changed is False or m._p_changed is None


def test_adopting_a_missing_row_is_a_key_error(split):
    """``adopt`` of a key the table does not hold raises a KeyError."""
    _db, _tm, conn, _url = split
    with pytest.raises(KeyError):
        pclasses.adopt("member", "nobody", into=conn)
