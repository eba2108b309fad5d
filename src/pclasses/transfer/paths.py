"""Objects by path from the root, as the command line names them."""

from __future__ import annotations

from typing import Any

from ZODB.utils import oid_repr, repr_to_oid

from ..errors import TransferError

__all__ = ["resolve_path"]


def resolve_path(connection: Any, path: str, *, persistent: bool = False) -> Any:
    """An object by path from the root (``site/docs`` or ``site.docs``) or oid (``0x1a``).

    With ``persistent=True`` the object must be a stored persistent object
    (a subtree starts at one): a plain value inside a persistent object
    (a dict in its attributes, say) is refused with a message that names
    the persistent object holding it.
    """
    if path.startswith("0x"):
        try:
            return connection.get(repr_to_oid(path))
        except Exception as exc:
            raise TransferError(f"no object {path}: {exc}") from None
    obj = connection.root()
    if path in ("", "/"):
        return obj
    holder, holder_path = obj, "/"
    walked: list[str] = []
    for part in path.strip("/").split("/"):
        try:
            obj = obj[part]
        except (KeyError, TypeError, IndexError, AttributeError):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise TransferError(f"no {part!r} in {path!r}") from None
        walked.append(part)
        if getattr(obj, "_p_oid", None) is not None:
            holder, holder_path = obj, "/".join(walked)
    if persistent and getattr(obj, "_p_oid", None) is None:
        raise TransferError(
            f"{path!r} is a {type(obj).__name__} stored inside the persistent object "
            f"{holder_path!r} ({type(holder).__name__}, oid {oid_repr(holder._p_oid)}), not a "
            f"persistent object of its own: export {holder_path!r}")
    return obj
