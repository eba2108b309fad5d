"""Foreign stores in a tree of databases (issue 15).

One concept per module:

* :mod:`.kinds`: oid kinds (``int``, ``uuid``, ``uid``, ``dn``, registered ones);
* :mod:`.dialect`: what differs between SQLite and PostgreSQL;
* :mod:`.mapping`: table <-> persistent class mappings and their statements;
* :mod:`.sqldb`: the SQL database as a member of a tree's multi-database;
* :mod:`.jar`: the store's data manager in the ZODB transaction;
* :mod:`.sqlstore`: :class:`SQLStore`, the persistent handle.
"""

from __future__ import annotations

from ..tree.databases import register_foreign
from .kinds import OidKind, oid_kinds
from .sqldb import open_store_database
from .sqlstore import SQLStore

for _scheme in ("sqlite", "postgresql", "postgres"):
    register_foreign(_scheme, open_store_database, SQLStore)

__all__ = ["OidKind", "SQLStore", "oid_kinds"]
