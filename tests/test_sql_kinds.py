"""Oid kinds (issue 15): every built-in kind and a registered one round-trip
through a real SQLite store; oids of different kinds never collide."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import transaction

import pclasses
from pclasses.stores.kinds import OidKind

sys.path.insert(0, str(Path(__file__).parent))
from sql_models import Person  # noqa: E402
from sql_util import sqlite_file, sqlite_rows  # noqa: E402


@pytest.fixture
def store(tmp_path):
    url = sqlite_file(
        tmp_path / "people.db",
        "CREATE TABLE by_uid (uid TEXT PRIMARY KEY, name TEXT)",
        "CREATE TABLE by_uuid (id UUID PRIMARY KEY, name TEXT)",
        "CREATE TABLE by_dn (dn TEXT PRIMARY KEY, name TEXT)",
        "CREATE TABLE by_int (n INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE by_code (code TEXT PRIMARY KEY, name TEXT)",
    )
    db = pclasses.open(tmp_path / "root.fs", tree=True)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    st = pclasses.tree_of(db).add(conn, "people", url)
    yield st, tm, url
    tm.abort()
    conn.close()
    pclasses.tree_of(db).close()


class UpperCode(OidKind):
    """An application kind: case-insensitive codes, stored upper-case."""

    def normalize(self, key):
        return str(key).upper()

    def encode(self, key):
        return key.encode("ascii")

    def decode(self, data):
        return data.decode("ascii")

    def new_key(self, sequence):
        return f"C{sequence():04d}"


def test_every_builtin_kind_round_trips(store):
    """Rows keyed by uid, uuid, DN and integer are added with ``new`` and found
    again by ``get`` with the key ``new`` returned, in a later transaction."""
    st, tm, url = store
    st.map("uid", "by_uid", "uid", Person)          # the kind named like the mapping
    st.map("uuid", "by_uuid", "id", Person)
    st.map("dn", "by_dn", "dn", Person)
    st.map("ints", "by_int", "n", Person)            # inferred from INTEGER
    keys = {name: st.new(name, Person(name)) for name in ("uid", "uuid", "ints")}
    keys["dn"] = st.new("dn", Person("dn"), key="CN=Ada Lovelace , OU=People,DC=example")
    tm.commit()
    assert isinstance(keys["uid"], str)
    assert isinstance(keys["uuid"], uuid.UUID)
    assert isinstance(keys["ints"], int)
    assert keys["dn"] == "cn=Ada Lovelace,ou=People,dc=example"
    for name, key in keys.items():
        assert st.get(name, key).name == name
        assert st.key(st.get(name, key)) == key
    # the DN kind finds a row by any spelling of its DN
    assert st.get("dn", "cn = Ada Lovelace,ou=People, DC=example").name == "dn"
    assert st.get("uuid", str(keys["uuid"])).name == "uuid"
    assert sqlite_rows(url, "SELECT dn FROM by_dn") == [(keys["dn"],)]


def test_a_registered_kind_is_used_by_name(store):
    """``oid_kinds.register`` adds a kind that mappings name with ``kind=``."""
    st, tm, url = store
    pclasses.oid_kinds.register("code", UpperCode())
    try:
        st.map("codes", "by_code", "code", Person, kind="code")
        key = st.new("codes", Person("x"))
        assert key == "C0001"
        st.new("codes", Person("y"), key="abc")
        tm.commit()
        assert st.get("codes", "ABC").name == "y"
        assert sorted(sqlite_rows(url, "SELECT code FROM by_code")) == [("ABC",), ("C0001",)]
    finally:
        pclasses.oid_kinds.unregister("code")


def test_oids_of_different_kinds_never_collide():
    """The same key text under different kinds gives different oids, and each
    oid decodes back to its kind and key."""
    kinds = pclasses.oid_kinds
    u = uuid.UUID(int=1)
    samples = [("int", 1), ("uid", "1"), ("dn", "cn=1"), ("uuid", u), ("uid", u.hex)]
    oids = [kinds.oid(k, key) for k, key in samples]
    assert len(set(oids)) == len(oids)
    for (k, key), oid in zip(samples, oids, strict=True):
        assert kinds.key(oid) == (k, key)
    for n in (-(2**70), -1, 0, 127, 128, 2**63):
        assert kinds.key(kinds.oid("int", n)) == ("int", n)


def test_bad_keys_are_clear_errors():
    """A key of the wrong type, an unknown kind, or asking the DN kind for a new
    key raise ``OidKindError`` (a ValueError)."""
    kinds = pclasses.oid_kinds
    with pytest.raises(pclasses.OidKindError):
        kinds.oid("int", "seven")
    with pytest.raises(pclasses.OidKindError):
        kinds.oid("uuid", "not-a-uuid")
    with pytest.raises(ValueError):
        kinds["no-such-kind"]
    with pytest.raises(pclasses.OidKindError):
        kinds["dn"].new_key(lambda: 1)
    with pytest.raises(pclasses.OidKindError):
        kinds.oid("dn", "no equals sign")
