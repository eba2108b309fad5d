"""A small site for the storage tests: data, a class renamed by an upgrade,
blobs, and an application that keeps writing (a thread with its own
database object, retrying on ``ConflictError`` as Zope's publisher does).

The "old" class is a plain (non-persistent) class held in the state of
``PersistentMapping`` items, so renaming it rewrites records the
application also writes.  :func:`modules` installs the old and the new
module in ``sys.modules`` and removes them afterwards.
"""

from __future__ import annotations

import random
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.blob import Blob
from ZODB.POSException import ConflictError


@dataclass
class Modules:
    old: str
    new: str
    old_class: type
    new_class: type

    @property
    def rule(self) -> dict[str, str]:
        return {f"{self.old}.Thing": f"{self.new}.Thing"}


@contextmanager
def modules() -> Iterator[Modules]:
    """An old module whose ``Thing`` the site was written with, and the new
    module the upgrade moved it to; loading either name gives the new class
    (the application after the upgrade)."""
    tag = uuid.uuid4().hex[:8]
    old, new = f"h26old_{tag}", f"h26new_{tag}"
    old_class = type("Thing", (), {"__module__": old})
    new_class = type("Thing", (), {"__module__": new})
    old_mod, new_mod = types.ModuleType(old), types.ModuleType(new)
    old_mod.Thing = old_class  # type: ignore[attr-defined]
    new_mod.Thing = new_class  # type: ignore[attr-defined]
    sys.modules[old] = old_mod
    sys.modules[new] = new_mod
    try:
        yield Modules(old, new, old_class, new_class)
    finally:
        sys.modules.pop(old, None)
        sys.modules.pop(new, None)


def populate(db: Any, mods: Modules, n: int = 300, blobs: int = 2) -> None:
    """``root['site']``: an OOBTree of ``n`` items, each a PersistentMapping
    holding a counter and an old ``Thing``; ``root['files']``: blobs."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        root = conn.root()
        site = root["site"] = OOBTree()
        for i in range(n):
            thing = mods.old_class()
            thing.label = f"item {i}"  # type: ignore[attr-defined]
            site[i] = PersistentMapping(n=0, thing=thing)
            if i % 1000 == 999:
                tm.commit()
        files = root["files"] = PersistentMapping()
        for i in range(blobs):
            b = Blob()
            with b.open("w") as f:
                f.write(b"blob %d " % i * 1000)
            files[f"b{i}"] = b
        tm.commit()
    finally:
        tm.abort()
        conn.close()
    # the application's code moves on: the old name loads the new class
    sys.modules[mods.old].Thing = mods.new_class  # type: ignore[attr-defined]


@dataclass
class Writer:
    """An application thread: increments the counters of random items and
    gives them a fresh ``Thing`` of the new class, committing each change,
    retrying a transaction that conflicts.  ``expected`` is what it
    committed; ``conflicts`` how often it had to retry."""

    db: Any
    n: int
    expected: dict[int, int] = field(default_factory=dict)
    conflicts: int = 0
    commits: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def _run(self) -> None:
        rnd = random.Random(7)
        tm = transaction.TransactionManager()
        conn = self.db.open(tm)
        try:
            while not self._stop.is_set():
                keys = [rnd.randrange(self.n) for _ in range(5)]
                for _attempt in range(50):
                    try:
                        tm.begin()
                        site = conn.root()["site"]
                        values = {}
                        for k in keys:
                            item = site[k]
                            item["n"] = item["n"] + 1
                            thing = type(item["thing"])()
                            thing.label = f"item {k}"
                            item["thing"] = thing
                            values[k] = item["n"]
                        tm.commit()
                        self.expected.update(values)
                        self.commits += 1
                        break
                    except ConflictError:
                        tm.abort()
                        self.conflicts += 1
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            tm.abort()
            conn.close()


def counters(db: Any) -> dict[int, int]:
    """Every item's counter, read through a fresh connection."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        return {k: v["n"] for k, v in conn.root()["site"].items()}
    finally:
        tm.abort()
        conn.close()
