"""The test PostgreSQL server: started from the system's binaries, on loopback, not as root."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.postgres


def test_server_answers_and_runs_unprivileged(pg_server) -> None:
    """The server accepts SQL on 127.0.0.1, allows prepared transactions, and no
    server process runs as root (PostgreSQL refuses root; CI runs as root)."""
    name = pg_server.createdb()
    assert pg_server.psql("SELECT 1", dbname=name).strip() == "1"
    assert int(pg_server.psql("SHOW max_prepared_transactions").strip()) > 0
    assert pg_server.psql("SHOW listen_addresses").strip() == "127.0.0.1"
    datadir = pg_server.psql("SELECT current_setting('data_directory')").strip()
    assert datadir.startswith(str(pg_server.directory))
    assert os.stat(pg_server.datadir).st_uid != 0


def test_fresh_databases_are_separate(pg_server) -> None:
    """Each test gets its own empty database: a table made in one is absent from the other."""
    a, b = pg_server.createdb(), pg_server.createdb()
    pg_server.psql("CREATE TABLE t (x int)", dbname=a)
    found = pg_server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 't'", dbname=b)
    assert found.strip() == "0"
