"""Classes the SQL store tests keep in databases and tables (importable by path)."""

from __future__ import annotations

from persistent import Persistent

import pclasses


class Item(Persistent):
    """A row of table ``items``."""

    def __init__(self, title: str = "", qty: int = 0) -> None:
        self.title = title
        self.qty = qty


class Person(Persistent):
    """A row keyed by a uid, uuid or DN."""

    def __init__(self, name: str = "") -> None:
        self.name = name


class Doc(Persistent):
    """A ZODB object referring to a row."""

    item = pclasses.RemoteAttribute()

    def __init__(self, title: str = "") -> None:
        self.title = title


class Member(pclasses.SplitPersistent):
    """Split: ``name`` and ``email`` in table ``people``, the rest in ZODB;
    ``email`` is also copied into the ZODB part."""

    copied = ("email",)
