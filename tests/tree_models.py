"""Classes stored by the tree tests (a test helper module, importable)."""

from persistent import Persistent

from pclasses.tree import RemoteAttribute


class Node(Persistent):
    """A plain persistent object with a name and optional links."""

    def __init__(self, name: str = "") -> None:
        self.name = name


class Holder(Persistent):
    """Holds a remote attribute."""

    target = RemoteAttribute()


class Keyed(Persistent):
    """Defines ``__getnewargs__``: ZODB refers to it by bare oid (the form
    zc.zodbdgc's check asserts on under Python 3)."""

    def __init__(self, key: str = "") -> None:
        self.key = key

    def __getnewargs__(self) -> tuple[str]:
        return (self.key,)

    def __new__(cls, key: str = "") -> "Keyed":
        return super().__new__(cls)


def pack_alone(path) -> None:
    """Pack one FileStorage by itself, as an operator would (gc on pack)."""
    import ZODB
    from ZODB.FileStorage import FileStorage

    db = ZODB.DB(FileStorage(str(path)))
    db.pack(days=0)
    db.close()
