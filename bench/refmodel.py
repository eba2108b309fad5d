"""Classes of the reference benchmark's databases (importable by path)."""

from persistent import Persistent

import pclasses


class Target(Persistent):
    pass


class Source(Persistent):
    ref = pclasses.Ref(mode="always")
    loose = pclasses.Ref(mode="none")


class PlainSource(Persistent):
    ref = None
