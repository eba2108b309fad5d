"""``pclasses.open`` with the tree options (``tree=True``, ``dangling=``)."""

from __future__ import annotations

import os
from typing import Any

from ..database import open as open_database
from ..registry import ClassRegistry

__all__ = ["open"]

DANGLING_MODES = ("raise", "placeholder")


def open(  # noqa: A001 - the package's ``open``
    target: str | os.PathLike[str],
    registry: ClassRegistry | None = None,
    *,
    tree: bool = False,
    dangling: str = "raise",
    **db_kwargs: Any,
) -> Any:
    """Open a database (see :func:`pclasses.database.open`).

    ``tree=True`` makes it the root of a tree of databases: its
    ``databases`` mapping opens a child named by a
    :class:`~pclasses.tree.handle.DatabaseHandle` on first use
    (:func:`pclasses.tree_of` gives the tree).  ``dangling="placeholder"``
    turns ZODB's own cross-database references whose target is gone into
    :class:`~pclasses.tree.dangling.Dangling` placeholders (logged) instead
    of ``POSKeyError``.
    """
    if dangling not in DANGLING_MODES:
        raise ValueError(f"dangling must be one of {DANGLING_MODES}, not {dangling!r}")
    if registry is None:
        registry = ClassRegistry()
    db = open_database(target, registry, **db_kwargs)
    if tree or dangling != "raise":
        from .databases import databases_of

        try:
            databases_of(db, registry, dangling)
        except BaseException:
            db.close()
            raise
    return db
