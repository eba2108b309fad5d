"""``check_refs``: every dangling reference of a tree of databases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .walk import open_all, walk

__all__ = ["DanglingRef", "RefsReport", "check_refs"]


@dataclass(frozen=True)
class DanglingRef:
    """A reference whose target cannot be reached.

    ``form`` is ``plain``, ``m``, ``n``, ``weak`` or ``remote``; ``reason`` is
    ``missing`` (no such record), ``unavailable`` (its database cannot be
    opened) or ``unknown-database`` (no database of that name in the tree).
    """

    source_database: str
    source_oid: bytes
    target_database: str
    target_oid: bytes
    form: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        from ZODB.utils import oid_repr

        return {"source_database": self.source_database,
                "source_oid": oid_repr(self.source_oid),
                "target_database": self.target_database,
                "target_oid": oid_repr(self.target_oid),
                "form": self.form, "reason": self.reason}


@dataclass
class RefsReport:
    """What :func:`check_refs` found."""

    databases: list[str]
    unavailable: dict[str, str]
    objects: dict[str, int]
    references: int
    dangling: list[DanglingRef] = field(default_factory=list)
    unreadable: list[tuple[str, bytes, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.dangling

    def to_dict(self) -> dict[str, Any]:
        from ZODB.utils import oid_repr

        return {"ok": self.ok, "databases": self.databases,
                "unavailable": dict(self.unavailable), "objects": dict(self.objects),
                "references": self.references,
                "dangling": [d.to_dict() for d in self.dangling],
                "unreadable": [{"database": n, "oid": oid_repr(o), "reason": r}
                               for n, o, r in self.unreadable]}


def check_refs(db: Any) -> RefsReport:
    """Walk every database of ``db``'s tree (or multi-database) from its
    roots with the record engine and list the references that dangle.

    Children are opened read-only; a child that cannot be opened is listed
    in ``unavailable`` and references into it dangle with reason
    ``unavailable``.
    """
    databases, unavailable = open_all(db, read_only=True)
    w = walk(databases, unavailable)
    dangling = sorted({DanglingRef(*d) for d in w.dangling},
                      key=lambda d: (d.source_database, d.source_oid, d.target_database,
                                     d.target_oid, d.form))
    return RefsReport(sorted(databases), unavailable,
                      {name: len(oids) for name, oids in sorted(w.reached.items())},
                      w.references, dangling, w.unreadable)
