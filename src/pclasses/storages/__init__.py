"""Storage kinds and their fast paths.

The record scans of :mod:`pclasses.scan` and the openers of
:mod:`pclasses.database` ask :func:`storage_kind` which storage they hold and
use the module for that kind:

* :mod:`pclasses.storages.relstorage`: RelStorage (opening read-only without
  creating anything, the history mode read from the database, current
  records streamed from SQL in large batches, batched loads);
* :mod:`pclasses.storages.zeo`: ZEO clients (many requests in flight at
  once instead of one round trip per record).

FileStorage's fast paths stay in :mod:`pclasses.scan` (they read the file).
"""

from __future__ import annotations

from typing import Any

__all__ = ["storage_kind"]


def storage_kind(storage: Any) -> str:
    """``"filestorage"``, ``"relstorage"``, ``"zeo"`` or ``"other"``."""
    if getattr(storage, "_index", None) is not None and hasattr(storage, "_file_name"):
        return "filestorage"
    module = type(storage).__module__
    if module.startswith("relstorage.") and hasattr(storage, "_adapter"):
        return "relstorage"
    if module.startswith("ZEO.") and hasattr(storage, "_server"):
        return "zeo"
    return "other"
