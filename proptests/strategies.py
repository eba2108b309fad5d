"""Hypothesis strategies shared by the property tests.

* :func:`values`: every picklable builtin type, nested.
* :func:`graphs`: object graphs of persistent and plain objects, nested
  containers (PersistentMapping, PersistentList, OOBTree), shared
  references, cycles through persistent objects, and weak references.
"""

from __future__ import annotations

import datetime
import decimal

from hypothesis import strategies as st

from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping


class Node(Persistent):
    """A persistent object with arbitrary attributes."""


class Plain:
    """A non-persistent object pickled inside its holder."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Plain and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Plain({vars(self)!r})"


class NewArgs(Persistent):
    """A persistent class with ``__getnewargs__`` (class metadata format 2)."""

    def __new__(cls, *args):
        return super().__new__(cls)

    def __getnewargs__(self):
        return (1, 2)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.dates(),
    st.datetimes(),
    st.timedeltas(),
    st.decimals(allow_nan=False, allow_infinity=False),
)


def values(max_leaves: int = 12) -> st.SearchStrategy:
    """Picklable builtin values, nested in tuples, lists, dicts, sets."""
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.tuples(children, children),
            st.dictionaries(st.text(max_size=6), children, max_size=4),
            st.frozensets(st.integers() | st.text(max_size=5), max_size=4),
            st.sets(st.integers(), max_size=4),
            st.builds(bytearray, st.binary(max_size=8)),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def graphs(draw, max_objects: int = 8):
    """A root PersistentMapping holding a random graph.

    Returns the root; persistent objects may be shared and may refer to
    each other (cycles), plain objects carry values.
    """
    kinds = st.sampled_from(["node", "mapping", "list", "newargs"])
    n = draw(st.integers(min_value=1, max_value=max_objects))
    objs = []
    for _ in range(n):
        kind = draw(kinds)
        if kind == "node":
            o = Node()
        elif kind == "mapping":
            o = PersistentMapping()
        elif kind == "list":
            o = PersistentList()
        else:
            o = NewArgs()
        objs.append(o)
    for o in objs:
        for j in range(draw(st.integers(0, 3))):
            choice = draw(st.integers(0, 3))
            if choice == 0:
                value = draw(values())
            elif choice == 1:
                value = draw(st.sampled_from(objs))  # shared refs and cycles
            elif choice == 2:
                p = Plain()
                p.v = draw(values(4))
                p.ref = draw(st.sampled_from(objs))
                value = p
            else:
                from persistent.wref import WeakRef

                value = WeakRef(draw(st.sampled_from(objs)))
            key = f"k{j}"
            if isinstance(o, PersistentMapping):
                o[key] = value
            elif isinstance(o, PersistentList):
                o.append(value)
            else:
                setattr(o, key, value)
    root = PersistentMapping()
    root["objs"] = objs
    root["stamp"] = datetime.date(2020, 1, 2)
    root["money"] = decimal.Decimal("1.5")
    return root
