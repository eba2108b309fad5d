"""Mappings: which table holds objects of which class, by which key.

``store.map(name, table, key, cls, columns=None, *, kind=None)`` records a
*spec* in the store (a plain dict, pickled with the store).  A spec is
*bound* once per process against the live SQL database: the table's columns
are read, the version column is added when missing, the key's oid kind is
chosen, and the statements are prepared as text (:class:`BoundMapping`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreMappingError
from .dialect import VERSION_COLUMN, Dialect, quote
from .kinds import SEP, OidKind, oid_kinds

__all__ = ["spec", "BoundMapping", "bind", "split_oid", "COLUMNS_BY_CLASS"]

#: ``class -> (store name, mapping name, column names)`` of every mapping
#: bound in this process (split objects find their SQL columns here).
COLUMNS_BY_CLASS: dict[type, tuple[str, str, frozenset[str]]] = {}


def spec(table: str, key: str, cls: type, columns: Any, kind: str | None) -> dict[str, Any]:
    """The stored form of a mapping (what ``map`` compares to decide it is the same)."""
    return {"table": table, "key": key, "class": cls,
            "columns": None if columns is None else tuple(columns), "kind": kind}


def split_oid(oid: bytes) -> tuple[str, bytes]:
    """``(mapping name, kind oid)`` of a row's oid (``name NUL kind NUL key``)."""
    name, sep, rest = oid.partition(SEP)
    if not sep or not rest:
        raise KeyError(oid)
    return name.decode("utf-8"), rest


@dataclass
class BoundMapping:
    """A mapping checked against the SQL database, with its statements."""

    store: str
    name: str
    table: str
    key: str
    cls: Any
    columns: tuple[str, ...]
    kind_name: str
    kind: OidKind
    dialect: Dialect
    select_one: str = ""
    select_cols: str = ""
    prefix: bytes = b""
    column_set: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        cols = ", ".join(quote(c) for c in (*self.columns, VERSION_COLUMN))
        self.select_cols = cols
        p = self.dialect.placeholder
        self.select_one = (f"SELECT {cols} FROM {quote(self.table)} "
                           f"WHERE {quote(self.key)} = {p}")
        self.prefix = self.name.encode("utf-8") + SEP + self.kind_name.encode("utf-8") + SEP
        self.column_set = frozenset(self.columns)

    # -- keys and oids ----------------------------------------------------------

    def oid(self, key: Any) -> bytes:
        return self.prefix + self.kind.encode(self.kind.normalize(key))

    def key_of(self, oid: bytes) -> Any:
        if not oid.startswith(self.prefix):
            raise KeyError(oid)
        return self.kind.decode(oid[len(self.prefix):])

    # -- statements --------------------------------------------------------------

    def state_of(self, row: Any) -> tuple[dict[str, Any], int]:
        """``(attributes, version)`` of a row selected by :attr:`select_one`."""
        # the row is the columns then the version: zip stops before the version
        return dict(zip(self.columns, row)), int(row[-1] or 0)

    def values(self, obj: Any, state: dict[str, Any]) -> dict[str, Any]:
        """The column values of ``state``; an attribute that is no column is an error."""
        extra = [k for k in state if k not in self.column_set]
        if extra:
            raise StoreMappingError(
                self.store, self.name,
                f"{type(obj).__name__} has attributes that are no columns of table "
                f"{self.table!r}: {', '.join(sorted(map(str, extra)))}")
        return {c: state[c] for c in self.columns if c in state}

    def update(self, values: dict[str, Any]) -> str:
        p = self.dialect.placeholder
        sets = "".join(f"{quote(c)} = {p}, " for c in values)
        v = quote(VERSION_COLUMN)
        return (f"UPDATE {quote(self.table)} SET {sets}{v} = {v} + 1 "
                f"WHERE {quote(self.key)} = {p} AND {v} = {p}")

    def insert(self, values: dict[str, Any]) -> str:
        p = self.dialect.placeholder
        cols = [self.key, *values, VERSION_COLUMN]
        return (f"INSERT INTO {quote(self.table)} ({', '.join(quote(c) for c in cols)}) "
                f"VALUES ({', '.join([p] * len(cols))})")

    def delete(self) -> str:
        p = self.dialect.placeholder
        return (f"DELETE FROM {quote(self.table)} WHERE {quote(self.key)} = {p} "
                f"AND {quote(VERSION_COLUMN)} = {p}")

    def select_where(self, where: str) -> str:
        return (f"SELECT {quote(self.key)}, {self.select_cols} FROM {quote(self.table)} "
                f"WHERE {where}")


def bind(store: str, name: str, stored: dict[str, Any], dialect: Dialect,
         conn: Any) -> BoundMapping:
    """Check ``stored`` against the live database (adding the version column)."""
    table, key, cls = stored["table"], stored["key"], stored["class"]
    cols = dialect.columns(conn, table)
    if not cols:
        raise StoreMappingError(store, name, f"table {table!r} does not exist "
                                f"(the application creates its tables)")
    types = dict(cols)
    if key not in types:
        raise StoreMappingError(store, name, f"table {table!r} has no column {key!r}")
    wanted = stored["columns"]
    if wanted is None:
        columns = tuple(c for c, _t in cols if c not in (key, VERSION_COLUMN))
    else:
        missing = [c for c in wanted if c not in types]
        if missing:
            raise StoreMappingError(store, name, f"table {table!r} has no column "
                                    f"{', '.join(map(repr, missing))}")
        bad = [c for c in wanted if c in (key, VERSION_COLUMN)]
        if bad:
            raise StoreMappingError(store, name, f"{bad[0]!r} is the key or the version "
                                    f"column, not an attribute column")
        columns = tuple(wanted)
    kind_name = stored["kind"]
    if kind_name is None:
        kind_name = name if name in oid_kinds else oid_kinds.infer(types[key])
    kind = oid_kinds[kind_name]
    if VERSION_COLUMN not in types:  # only once everything else was checked
        dialect.add_version_column(conn, table)
    bound = BoundMapping(store, name, table, key, cls, columns, kind_name, kind, dialect)
    COLUMNS_BY_CLASS[cls] = (store, name, frozenset(columns))
    return bound
