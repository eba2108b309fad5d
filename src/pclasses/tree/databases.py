"""The multi-database mapping of a tree: a dict that opens known children lazily.

ZODB keeps the databases of a multi-database in one dict shared by all of
them (``db.databases``); ``Connection.get_connection(name)`` looks the name
up there.  :class:`TreeDatabases` is that dict for a tree of databases: a
name it does not hold yet but knows from a :class:`DatabaseHandle` is opened
on first lookup, so a dormant child stays closed until something reaches it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ..classtable import root_entry_oid
from ..errors import DatabaseUnavailableError, DuplicateHandleError, PClassesError
from . import handle as _handle
from .guard import guard_child
from .handle import HANDLES_KEY, DatabaseHandle

__all__ = ["HandleInfo", "TreeDatabases", "databases_of", "register_foreign", "foreign_scheme"]

log = logging.getLogger(__name__)

#: Databases that are not ZODB databases (SQL stores, issue 15), by URL
#: scheme: ``scheme -> (opener(info, databases) -> database, handle class)``.
#: Registered by :mod:`pclasses.stores` (a layer above the tree).
FOREIGN: dict[str, tuple[Any, type]] = {}


def register_foreign(scheme: str, opener: Any, handle_class: type) -> None:
    """Targets ``scheme:...`` open with ``opener`` and get handles of ``handle_class``."""
    FOREIGN[scheme.lower()] = (opener, handle_class)


def foreign_scheme(target: object) -> str | None:
    """The registered foreign scheme of ``target`` (``"sqlite"``...), else None."""
    if not isinstance(target, str) or ":" not in target:
        return None
    scheme = target.split(":", 1)[0].lower()
    return scheme if scheme in FOREIGN else None


@dataclass(frozen=True)
class HandleInfo:
    """What the tree knows of a handle without loading it again."""

    name: str
    target: str
    parent: str  # database_name of the database holding the handle
    oid: bytes | None
    read_only: bool = False
    pin: bool = False
    options: dict[str, Any] = field(default_factory=dict, compare=False)


def _info(handle: DatabaseHandle, parent: str) -> HandleInfo:
    return HandleInfo(handle.name, handle.target, parent, handle._p_oid, handle.read_only,
                      handle.pin, dict(getattr(handle, "options", {}) or {}))


class TreeDatabases(dict):  # type: ignore[type-arg]
    """``name -> ZODB.DB`` for the databases open now; known names open on lookup."""

    def __init__(self, registry: Any = None, dangling: str = "raise") -> None:
        super().__init__()
        self.registry = registry
        self.dangling = dangling
        self.known: dict[str, HandleInfo] = {}
        self.root_name: str | None = None
        self.lock = threading.RLock()
        self.tree: Any = None
        #: names added in this process: their database may be created
        self.creatable: set[str] = set()
        self.unreachable: set[str] = set()
        #: open children read-only whatever their handles say (inspection)
        self.force_read_only = False
        #: foreign databases (SQL stores) open now, by name: not listed (see get)
        self.foreign: dict[str, Any] = {}

    # -- learning handles -----------------------------------------------------

    def learn(self, info: HandleInfo) -> None:
        with self.lock:
            old = self.known.get(info.name)
            if old is not None and (old.parent, old.oid) != (info.parent, info.oid) \
                    and old.oid is not None and info.oid is not None:
                raise DuplicateHandleError(info.name)
            if info.name == self.root_name:
                raise DuplicateHandleError(info.name)
            self.known[info.name] = info

    def learn_database(self, db: Any) -> None:
        """Read the handles ``db`` keeps in its root (loads nothing of any child)."""
        import transaction

        tm = transaction.TransactionManager()
        conn = db.open(transaction_manager=tm)
        try:
            # The handles' mapping is found from the root's record with the
            # inert reader: loading the root would make ghosts of every entry's
            # class through the class factory, importing modules the data names.
            oid = root_entry_oid(conn, HANDLES_KEY)
            handles = conn.get(oid) if oid is not None else None
            if handles is not None and hasattr(handles, "values"):
                for handle in list(handles.values()):
                    if isinstance(handle, DatabaseHandle):
                        self.learn(_info(handle, db.database_name))
        finally:
            tm.abort()
            conn.close()

    def find(self, name: str) -> HandleInfo | None:
        """The handle ``name``; a name not known yet is looked for in the
        children not open yet, opening them one level at a time (a grandchild's
        handle lives in its parent, so finding it wakes the parent)."""
        while True:
            info = self.known.get(name)
            if info is not None:
                return info
            closed = [i for n, i in sorted(self.known.items())
                      if not dict.__contains__(self, n) and n not in self.unreachable
                      and n not in self.foreign]
            if not closed:
                return None
            for each in closed:
                try:
                    self.open_info(each)
                except DatabaseUnavailableError:
                    self.unreachable.add(each.name)  # searched no further down

    # -- opening ----------------------------------------------------------------

    def get(self, name: str, default: Any = None) -> Any:
        # Foreign databases (SQL stores) are found by name (ZODB's writer and
        # get_connection look them up) but never listed: code iterating a
        # multi-database sees ZODB databases only.
        db = dict.get(self, name)
        if db is None:
            return self.foreign.get(name, default)
        return db

    def __missing__(self, name: str) -> Any:
        db = self.foreign.get(name)
        if db is not None:
            return db
        info = self.known.get(name)
        if info is None:
            raise KeyError(name)
        return self.open_info(info)

    def open_handle(self, handle: DatabaseHandle) -> Any:
        db = dict.get(self, handle.name)
        if db is None:
            db = self.foreign.get(handle.name)
        if db is not None:
            return db
        info = self.known.get(handle.name)
        if info is None:
            jar = handle._p_jar
            info = _info(handle, jar.db().database_name)
            self.learn(info)
        return self.open_info(info)

    def open_info(self, info: HandleInfo) -> Any:
        with self.lock:
            db = dict.get(self, info.name)
            if db is None:
                db = self.foreign.get(info.name)
            if db is not None:
                return db
            scheme = foreign_scheme(info.target)
            if scheme is not None:  # an SQL store: not a ZODB database
                db = self.foreign[info.name] = FOREIGN[scheme][0](info, self)
                return db
            from ..database import open as open_db
            from ..registry import ClassRegistry

            if self.registry is None:
                self.registry = ClassRegistry()
            kwargs = dict(info.options)
            try:
                read_only = info.read_only or self.force_read_only
                db = open_db(info.target, self.registry, read_only=read_only,
                             create=(info.name in self.creatable and not info.read_only
                                     and not self.force_read_only), databases=self,
                             database_name=info.name, **kwargs)
            except DatabaseUnavailableError:
                raise
            except (PClassesError, OSError, ValueError, KeyError, TypeError) as exc:
                dict.pop(self, info.name, None)
                reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                raise DatabaseUnavailableError(info.name, info.target, reason) from exc
            if db.databases is not self:  # a ZConfig <zodb> section made its own dict
                for other_name, other in list(db.databases.items()):
                    dict.__setitem__(self, other_name, other)
                    other.databases = self
            adopt_settings(self, db)
            guard_child(db, info.name, info.target)
            log.debug("opened database %r from %s", info.name, info.target)
            try:
                self.learn_database(db)
            except Exception:  # a child that cannot be read for handles stays usable
                log.warning("could not read the database handles of %r", info.name,
                            exc_info=True)
            return db

    def close_all(self) -> None:
        with self.lock:
            for name, db in list(self.foreign.items()):
                db.close()
                del self.foreign[name]
            root = dict.get(self, self.root_name) if self.root_name else None
            for name, db in list(self.items()):
                if db is not root:
                    db.close()
                    dict.pop(self, name, None)
            if root is not None:
                root.close()


def adopt_settings(databases: TreeDatabases, db: Any) -> None:
    """Give ``db`` the tree-wide settings (dangling placeholders)."""
    db.pclasses_dangling = databases.dangling
    if databases.dangling == "placeholder":
        from .dangling import install_placeholders

        install_placeholders(db)


def databases_of(db: Any, registry: Any = None, dangling: str | None = None) -> TreeDatabases:
    """The :class:`TreeDatabases` of ``db``'s multi-database, made on first call
    (ZODB's plain dict is replaced by one holding the same databases)."""
    current = getattr(db, "databases", None)
    if isinstance(current, TreeDatabases):
        if dangling is not None and dangling != current.dangling:
            current.dangling = dangling
            for each in list(current.values()):
                adopt_settings(current, each)
        return current
    tree = TreeDatabases(registry, dangling or "raise")
    tree.root_name = db.database_name
    members = dict(current or {db.database_name: db})
    members.setdefault(db.database_name, db)
    for name, each in members.items():
        dict.__setitem__(tree, name, each)
        each.databases = tree
    for each in list(members.values()):
        adopt_settings(tree, each)
        tree.learn_database(each)
    return tree


def _open_child(db: Any, handle: DatabaseHandle) -> Any:
    return databases_of(db).open_handle(handle)


_handle.open_child = _open_child
