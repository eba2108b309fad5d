"""The benchmark data model (the same shape as the peer baselines' ``pbmodel``)."""

from persistent import Persistent


class Payload:
    """A plain object pickled inline in its Item's record."""

    def __init__(self, n):
        self.n = n
        self.data = [n, n + 1]


class Item(Persistent):
    def __init__(self, name, n):
        self.name = name
        self.n = n
        self.tags = ("a", "b")
        self.payload = Payload(n)
