"""The compact oid structures whole-database commands hold instead of
per-record Python objects: they must answer exactly as a set, a deque and
a sorted list would (a wrong answer loses or misplaces a record)."""

from __future__ import annotations

from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pclasses.oidset import DENSE_LIMIT, OidQueue, OidRanks, OidRuns, OidSet


def test_queue_is_first_in_first_out_across_chunks():
    """An OidQueue hands oids back in the order they came, across its
    chunks, and says when it is empty."""
    q = OidQueue()
    n = OidQueue.CHUNK * 2 + 5
    for i in range(n):
        q.append(i * 3)
    assert len(q) == n and q
    assert list(q)[:3] == [(0).to_bytes(8, "big"), (3).to_bytes(8, "big"),
                           (6).to_bytes(8, "big")]
    assert [q.popleft() for _ in range(n)] == [i * 3 for i in range(n)]
    assert not q
    with pytest.raises(IndexError):
        q.popleft()


def test_ranks_are_positions_in_sorted_order_with_large_oids():
    """OidRanks gives each oid of a set its position in sorted order, for
    dense oids and for oids past DENSE_LIMIT alike; an oid not in the set
    has none."""
    s = OidSet()
    oids = [0, 1, 7, 511, 512, 513, 4096, DENSE_LIMIT + 5, DENSE_LIMIT + 2]
    for o in oids:
        s.add_new(o)
    ranks = OidRanks(s)
    for position, o in enumerate(sorted(oids)):
        assert ranks.find(o) == position
        assert ranks.rank(o) == position
    assert ranks.find(2) == -1 and ranks.find(DENSE_LIMIT + 3) == -1


def test_runs_of_consecutive_oids_take_one_entry_each():
    """New oids handed out counting up are one run (16 bytes, not 8 a
    record); positions and lookups are those of the sorted list."""
    runs = OidRuns(range(100, 1_000_100))
    assert runs.runs == 1 and len(runs) == 1_000_000
    assert runs[0] == 100 and runs[-1] == 1_000_099 and runs[500_000] == 500_100
    assert runs.find(100) == 0 and runs.find(1_000_099) == 999_999
    assert runs.find(99) == -1 and runs.find(1_000_100) == -1
    with pytest.raises(IndexError):
        runs[1_000_000]
    with pytest.raises(ValueError):
        runs.append(5)  # not increasing


@given(st.sets(st.integers(min_value=0, max_value=2**64 - 2), max_size=300))
def test_runs_read_like_the_sorted_list(oids):
    """For any set of oids, OidRuns built from them in order reads exactly
    like their sorted list: length, items, iteration and find."""
    ordered = sorted(oids)
    runs = OidRuns(ordered)
    assert len(runs) == len(ordered)
    assert list(runs) == ordered
    assert [runs[i] for i in range(len(ordered))] == ordered
    for o in ordered:
        assert runs.find(o) == bisect_left(ordered, o)
    for o in ordered:
        for probe in (o - 1, o + 1):
            if probe >= 0 and probe not in oids:
                assert runs.find(probe) == -1
