"""Trees of databases (issue 14): handles, remote references, dangling
targets, and a reference check and garbage collection across a tree.

One concept per module:

* :mod:`.handle`: :class:`DatabaseHandle`, a persistent stand-in for a database;
* :mod:`.databases`: the lazily-opening multi-database mapping;
* :mod:`.tree`: :class:`Tree` and :func:`tree_of`;
* :mod:`.opening`: ``pclasses.open(..., tree=True, dangling=...)``;
* :mod:`.reference`: :func:`get_reference`, :class:`RemoteReference`,
  :class:`RemoteAttribute`;
* :mod:`.dangling`: :class:`Dangling` placeholders;
* :mod:`.pins`: pins that keep externally referenced objects through pack;
* :mod:`.walk`: reading every database of a tree with the record engine;
* :mod:`.check`: :func:`check_refs`; :mod:`.gc`: :func:`collect_garbage`.
"""

from __future__ import annotations

from .check import RefsReport, check_refs
from .dangling import Dangling, is_dangling
from .gc import GcReport, collect_garbage
from .handle import DatabaseHandle
from .opening import open
from .reference import RemoteAttribute, RemoteReference, get_reference
from .tree import Tree, tree_of

__all__ = [
    "GcReport",
    "RefsReport",
    "check_refs",
    "collect_garbage",
    "DatabaseHandle",
    "Dangling",
    "RemoteAttribute",
    "RemoteReference",
    "Tree",
    "get_reference",
    "is_dangling",
    "open",
    "tree_of",
]
