"""Claims about ``pclasses.equivalence``: when two records mean the same.

Repair refuses a rewritten record unless it means what the old one meant up
to the renamed globals; these tests pin down what "means the same" is for
the inert trees the safe reader builds: equal values of equal types, the
same sharing, the same references, globals mapped through the renames, and
no recursion however deep the tree.
"""

from __future__ import annotations

import pickle

import pytest

from pclasses.record.equivalence import differences
from pclasses.record.reader import read_record

CLASS = b"\x80\x03cmod\nC\nq\x00."


def record(state: object, klass: bytes = CLASS) -> bytes:
    return klass + pickle.dumps(state, protocol=3)


def same(a: bytes, b: bytes, renamed: dict | None = None) -> bool:
    return differences(read_record(a), read_record(b), renamed or {}) is None


def test_equal_records_mean_the_same():
    """Two encodings of equal values are equal, including nested containers."""
    state = {"a": [1, 2.5, "x", b"y", None, (1, (2, 3))], "b": {"c": frozenset({1, 2})}}
    assert same(record(state), record(state))


@pytest.mark.parametrize("a, b", [
    (1, True), (1, 1.0), ("1", b"1"), (0.0, -0.0), ([1], (1,)), ({"a": 1}, {"b": 1}),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}), ([1, 2], [1, 2, 3]), (frozenset({1}), frozenset({True})),
])
def test_a_different_value_or_type_is_a_difference(a, b):
    """Values differ by type as well as value (1, 1.0 and True are three)."""
    assert not same(record({"v": a}), record({"v": b}))


def test_nan_equals_nan():
    """A NaN stays the same NaN (compared by its bits, not by ==)."""
    assert same(record({"v": float("nan")}), record({"v": float("nan")}))


def test_sharing_is_part_of_the_meaning():
    """A list held twice is not the same as two equal lists."""
    x = [1]
    assert same(record([x, x]), record([x, x]))
    assert not same(record([x, x]), record([[1], [1]]))
    assert not same(record([[1], [1]]), record([x, x]))


def test_cycles_terminate():
    """A self-referential state compares without looping."""
    a: list = [1]
    a.append(a)
    b: list = [1]
    b.append(b)
    assert same(record(a), record(b))


def test_deep_trees_do_not_recurse():
    """A very deeply nested state (lists, beyond the default limits, which a
    user may raise) is compared without recursion."""
    from pclasses.record import Limits, set_limits

    depth = 50_000
    data = CLASS + b"\x80\x03" + b"]" * depth + b"a" * (depth - 1) + b"."
    previous = set_limits(Limits(max_depth=2 * depth))
    try:
        info = read_record(data)
        assert differences(info, read_record(data), {}) is None
    finally:
        set_limits(previous)


def test_renamed_globals_are_mapped_and_others_are_not():
    """Globals (class and in the state) are compared after the renames."""
    old = b"\x80\x03cold\nC\nq\x00." + b"\x80\x03cold\nF\nq\x01)Rq\x02."
    new = b"\x80\x03cnew\nC\nq\x00." + b"\x80\x03cnew\nF\nq\x01)Rq\x02."
    renamed = {("old", "C"): ("new", "C"), ("old", "F"): ("new", "F")}
    assert same(old, new, renamed)
    assert not same(old, new, {("old", "C"): ("new", "C")})
    assert not same(old, new, {})


def test_references_must_match():
    """A persistent reference to another oid is a difference."""
    def ref(oid: bytes) -> bytes:
        return CLASS + b"\x80\x03]q\x01C\x08" + oid + b"q\x02Q."

    assert same(ref(b"\0" * 7 + b"\1"), ref(b"\0" * 7 + b"\1"))
    assert not same(ref(b"\0" * 7 + b"\1"), ref(b"\0" * 7 + b"\2"))
