"""BTrees of the reference registry that merge identical concurrent inserts.

BTrees resolve concurrent changes to different keys of a bucket, but two
transactions inserting the *same* key conflict even when they insert the
same value.  Reference ids are derived from the target (see
:mod:`pclasses.refs.registry`), so two writers that reference a target for
the first time at once insert identical entries; these trees accept that.
Anything else BTrees would refuse is still refused.

The class names are frozen (design/decisions.md, D14): registries are
stored in databases.
"""

from __future__ import annotations

from typing import Any

from BTrees.Interfaces import BTreesConflictError
from BTrees.OOBTree import OOBTree, OOBucket, OOSet, OOTreeSet

__all__ = ["KeyTree", "KeyBucket", "KeySet", "KeySetBucket"]

_MISSING = object()


def _pairs(flat: tuple[Any, ...]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2]))


def _merge_flat(old: tuple[Any, ...], s1: tuple[Any, ...], s2: tuple[Any, ...]) -> tuple[Any, ...]:
    """Three-way merge of flat bucket items; same-key changes must agree."""
    o, a, b = _pairs(old), _pairs(s1), _pairs(s2)
    merged = dict(o)
    for key in set(o) | set(a) | set(b):
        va, vb, vo = a.get(key, _MISSING), b.get(key, _MISSING), o.get(key, _MISSING)
        if va == vo:
            result = vb
        elif vb == vo or va == vb:
            result = va
        else:
            raise BTreesConflictError(-1, -1, -1, 5)
        if result is _MISSING:
            merged.pop(key, None)
        else:
            merged[key] = result
    if not merged:
        raise BTreesConflictError(-1, -1, -1, 12)  # emptied buckets stay BTrees' business
    out: list[Any] = []
    for key in sorted(merged):
        out += [key, merged[key]]
    return tuple(out)


def _merge_set(old: tuple[Any, ...], s1: tuple[Any, ...], s2: tuple[Any, ...]) -> tuple[Any, ...]:
    """Three-way merge of set bucket keys: additions and removals of both."""
    o, a, b = set(old), set(s1), set(s2)
    merged = (o & a & b) | (a - o) | (b - o)
    if not merged:
        raise BTreesConflictError(-1, -1, -1, 12)
    return tuple(sorted(merged))


def _resolve_bucket(merge: Any, old: Any, s1: Any, s2: Any) -> Any:
    if old is None or s1 is None or s2 is None:
        raise BTreesConflictError(-1, -1, -1, 12)
    if len(old) != len(s1) or len(s1) != len(s2):
        raise BTreesConflictError(-1, -1, -1, 12)
    if len(s1) > 1 and not (s1[1] == s2[1] == old[1]):
        raise BTreesConflictError(-1, -1, -1, 12)
    return (merge(old[0], s1[0], s2[0]),) + tuple(s1[1:])


class KeyBucket(OOBucket):  # type: ignore[misc]
    """A bucket of :class:`KeyTree`."""

    def _p_resolveConflict(self, old: Any, s1: Any, s2: Any) -> Any:  # noqa: N802
        try:
            return super()._p_resolveConflict(old, s1, s2)
        except BTreesConflictError:
            return _resolve_bucket(_merge_flat, old, s1, s2)


class KeyTree(OOBTree):  # type: ignore[misc]
    """An OOBTree whose identical concurrent inserts do not conflict."""

    _bucket_type = KeyBucket

    def _p_resolveConflict(self, old: Any, s1: Any, s2: Any) -> Any:  # noqa: N802
        try:
            return super()._p_resolveConflict(old, s1, s2)
        except BTreesConflictError:
            inline = [_inline(s) for s in (old, s1, s2)]
            if any(i is _MISSING for i in inline):
                raise
            merged = _merge_flat(*inline)
            return (((merged,),),)


def _inline(state: Any) -> Any:
    """The flat items of a tree that is one inline bucket (``()`` when empty)."""
    if state is None:
        return ()
    try:
        (inner,) = state
        (bucket,) = inner
        (flat,) = bucket
    except (TypeError, ValueError):
        return _MISSING
    if not isinstance(flat, tuple):
        return _MISSING
    return flat


class KeySetBucket(OOSet):  # type: ignore[misc]
    """A bucket of :class:`KeySet`."""

    def _p_resolveConflict(self, old: Any, s1: Any, s2: Any) -> Any:  # noqa: N802
        try:
            return super()._p_resolveConflict(old, s1, s2)
        except BTreesConflictError:
            return _resolve_bucket(_merge_set, old, s1, s2)


class KeySet(OOTreeSet):  # type: ignore[misc]
    """An OOTreeSet whose concurrent first inserts (into an empty or
    one-bucket set) merge."""

    _bucket_type = KeySetBucket

    def _p_resolveConflict(self, old: Any, s1: Any, s2: Any) -> Any:  # noqa: N802
        try:
            return super()._p_resolveConflict(old, s1, s2)
        except BTreesConflictError:
            inline = [_inline(s) for s in (old, s1, s2)]
            if any(i is _MISSING for i in inline):
                raise
            return (((_merge_set(*inline),),),)
