"""Foreign stores in a tree of databases (issue 15).

One concept per module:

* :mod:`.kinds`: oid kinds (``int``, ``uuid``, ``uid``, ``dn``, registered ones);
* :mod:`.dialect`: what differs between SQLite and PostgreSQL;
* :mod:`.mapping`: table <-> persistent class mappings and their statements;
* :mod:`.sqldb`: the SQL database as a member of a tree's multi-database;
* :mod:`.jar`: the store's data manager in the ZODB transaction;
* :mod:`.sqlstore`: :class:`SQLStore`, the persistent handle;
* :mod:`.recover`: ``pclasses sql-recover`` (prepared transactions after a crash);
* :mod:`.stubs`: :func:`enable_stubs`, DB-2 keeping stubs for DB-1's objects;
* :mod:`.split`: :class:`SplitPersistent` and :func:`adopt`, state split over two databases.
"""

from __future__ import annotations

from ..tree.databases import register_foreign
from ..tree.walk import record_extras
from .kinds import OidKind, oid_kinds
from .split import SplitPersistent, adopt
from .sqldb import open_store_database
from .sqlstore import SQLStore
from .stubs import Stub, enable_stubs, stub_targets

for _scheme in ("sqlite", "postgresql", "postgres"):
    register_foreign(_scheme, open_store_database, SQLStore)
if stub_targets not in record_extras:
    record_extras.append(stub_targets)

__all__ = ["OidKind", "SQLStore", "SplitPersistent", "Stub", "adopt", "enable_stubs",
           "oid_kinds"]
