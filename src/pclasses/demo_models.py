"""Classes used by the demo (``make demo``) and by the benchmarks."""

from __future__ import annotations

from persistent import Persistent
from persistent.mapping import PersistentMapping


class Folder(PersistentMapping):  # type: ignore[misc]
    """A container, as content-management systems have."""

    def __init__(self, title: str = "") -> None:
        super().__init__()
        self.title = title


class Document(Persistent):  # type: ignore[misc]
    """A persistent document with a non-persistent ``Stamp`` in its state."""

    def __init__(self, title: str, body: str = "") -> None:
        self.title = title
        self.body = body
        self.stamp = Stamp("created", 1)


class Product(Persistent):  # type: ignore[misc]
    """What ``legacy_shop.Product`` was renamed to."""

    def __init__(self, sku: str, price: int) -> None:
        self.sku = sku
        self.price = price


class Stamp:
    """A plain (non-persistent) object pickled inside its holder's record."""

    def __init__(self, what: str, n: int) -> None:
        self.what = what
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stamp) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Stamp({self.what!r}, {self.n!r})"


class Widget(Persistent):  # type: ignore[misc]
    """What the removed add-on's ``gone_addon.Widget`` is registered as."""

    def __init__(self, color: str) -> None:
        self.color = color
