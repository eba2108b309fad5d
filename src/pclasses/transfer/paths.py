"""Objects by path from the root, as the command line names them."""

from __future__ import annotations

from typing import Any

from ZODB.utils import repr_to_oid

from ..errors import TransferError

__all__ = ["resolve_path"]


def resolve_path(connection: Any, path: str) -> Any:
    """An object by path from the root (``site/docs`` or ``site.docs``) or oid (``0x1a``)."""
    if path.startswith("0x"):
        try:
            return connection.get(repr_to_oid(path))
        except Exception as exc:
            raise TransferError(f"no object {path}: {exc}") from None
    obj = connection.root()
    if path in ("", "/"):
        return obj
    for part in path.strip("/").split("/"):
        try:
            obj = obj[part]
        except (KeyError, TypeError):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise TransferError(f"no {part!r} in {path!r}") from None
    return obj
