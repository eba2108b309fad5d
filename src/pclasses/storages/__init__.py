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

__all__ = ["storage_kind", "keeps_history", "pack_hint"]


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


def keeps_history(storage: Any) -> bool | None:
    """Whether ``storage`` keeps old revisions until it is packed
    (``None`` when it cannot tell)."""
    kind = storage_kind(storage)
    if kind == "filestorage":
        return True
    if kind == "relstorage":
        return bool(storage.keep_history)
    if kind == "zeo":
        try:
            return bool(storage.supportsUndo())
        except Exception:
            return None
    return None


def pack_hint(storage: Any) -> str | None:
    """How to reclaim the space old revisions of ``storage`` take, right
    after they were made (a pack to now: ``zodbpack``'s default of one day
    packs nothing then)."""
    kind = storage_kind(storage)
    if kind == "filestorage":
        return ("pack to now: zodbpack -d 0 CONFIG, CONFIG a ZConfig file with this "
                "<filestorage> (zodbpack's default of 1 day keeps them)")
    if kind == "relstorage":
        return ("pack to now: RelStorage's zodbpack -d 0 CONFIG, CONFIG a ZConfig file with "
                "this <relstorage> (zodbpack's default of 1 day keeps them)")
    if kind == "zeo":
        return ("pack to now on the server: zeopack -d 0 HOST:PORT (a pack with the "
                "default of 1 day keeps them)")
    return None
