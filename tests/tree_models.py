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
