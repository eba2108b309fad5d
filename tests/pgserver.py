"""A real PostgreSQL server for the tests, started from the system's binaries.

:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` from the installed
PostgreSQL (``/usr/lib/postgresql/<version>/bin``, or wherever ``pg_config``
or ``PATH`` points) in a fresh temporary directory, listening on 127.0.0.1
only (no Unix socket), with trust authentication for the superuser
``postgres``.  PostgreSQL refuses to run as root: when the tests run as root
(as CI does), the server runs as the unprivileged ``postgres`` system user
(created by Debian's PostgreSQL packages), or ``nobody`` when that user is
missing.  Nothing is written outside the temporary directory, which is
removed when the server stops.

The server allows prepared transactions (two-phase commit for SQL stores) and
runs with ``fsync=off`` (a test server loses nothing a test relies on).

Used by the session fixture ``pg_server`` in ``conftest.py``; also runnable
by hand::

    python tests/pgserver.py      # starts a server, prints its DSN, waits
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from netutil import free_port

START_TIMEOUT = 60.0
SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is absent."""
    env = os.environ.get("PCLASSES_PG_BINDIR")
    candidates: list[str] = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None



def _server_user() -> str | None:
    """The user to run the server as: None for the current (non-root) user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1:<free port>, in its own temporary directory."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl) found")
        self.bindir = found
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = SUPERUSER
        self._run_as = _server_user()
        self.directory = Path(tempfile.mkdtemp(prefix="pclasses-pg-"))
        self.datadir = self.directory / "data"
        self.logfile = self.directory / "server.log"
        if self._run_as is not None:
            pw = pwd.getpwnam(self._run_as)
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
        self._start()

    # -- process control --------------------------------------------------

    def _cmd(self, *argv: str) -> list[str]:
        if self._run_as is None:
            return list(argv)
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", self._run_as, "--", *argv]
        return ["su", "-s", "/bin/sh", self._run_as, "-c", " ".join(argv)]

    def _start(self) -> None:
        subprocess.run(
            self._cmd(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user,
                      "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"),
            check=True, capture_output=True, timeout=120, cwd=self.directory)
        options = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1", "-c unix_socket_directories=''",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_prepared_transactions=20", "-c max_connections=100",
            "-c max_locks_per_transaction=128",
        ])
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
                      str(self.logfile), "-o", options, "-w", "-t", str(int(START_TIMEOUT)),
                      "start"),
            check=True, capture_output=True, timeout=START_TIMEOUT + 10, cwd=self.directory)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start; see {self.logfile}")

    def stop(self) -> None:
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                      "-w", "stop"),
            capture_output=True, timeout=60, cwd=self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- using it ---------------------------------------------------------

    def psql(self, sql: str, dbname: str = "postgres", user: str | None = None) -> str:
        """Run SQL with ``psql`` (no Python driver needed); returns its unaligned output."""
        psql = self.bindir / "psql"
        exe = str(psql) if psql.exists() else (shutil.which("psql") or "psql")
        result = subprocess.run(
            [exe, "-h", self.host, "-p", str(self.port), "-U", user or self.user, "-d", dbname,
             "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-q", "-c", sql],
            capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def createdb(self, name: str | None = None) -> str:
        """Create a new, empty database and return its name (a fresh one when not given)."""
        name = name or f"db_{os.urandom(6).hex()}"
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def create_role(self, name: str, password: str | None = None) -> str:
        """Create a login role without privileges (grant what a test needs with :meth:`psql`)."""
        clause = f" PASSWORD '{password}'" if password else ""
        self.psql(f'CREATE ROLE "{name}" LOGIN{clause}')
        return name

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq keyword DSN (``host=... port=... user=... dbname=...``)."""
        return f"host={self.host} port={self.port} user={user or self.user} dbname={dbname}"

    def url(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A ``postgresql://user@127.0.0.1:port/dbname`` URL."""
        return f"postgresql://{user or self.user}@{self.host}:{self.port}/{dbname}"


if __name__ == "__main__":
    server = PostgresServer()
    print(server.dsn())
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


def fill_lock_table(dsn: str, leave: int = 100) -> Any:
    """A connection holding all but about ``leave`` slots of the server's
    lock table (advisory locks, 500 a query until the table is full)."""
    import psycopg2

    for _attempt in range(3):
        hog = psycopg2.connect(dsn)
        hog.autocommit = True
        cur = hog.cursor()
        held = 0
        while True:
            try:
                cur.execute("SELECT pg_advisory_lock(k) FROM generate_series(%s, %s) k",
                            (10**9 + held, 10**9 + held + 499))
                held += 500
            except psycopg2.Error:
                break
        if hog.closed or held < leave:  # the server dropped the session: again
            hog.close()
            continue
        cur.execute("SELECT pg_advisory_unlock(k) FROM generate_series(%s, %s) k",
                    (10**9 + held - leave, 10**9 + held - 1))
        return hog
    raise AssertionError("could not fill the lock table")
