"""A stateful property test of intrinsic references (issue 13).

One run drives a real FileStorage through place / remove / move / rename /
rekey / replace / set / clear / RefSet add and discard / mode changes /
commit / abort, and checks after every step that

* the registry's links equal the references the sources actually store
  (read from their state, not through the registry);
* after every commit, no reference of an always-mode declaration dangles;
* a refused operation (ReferentialIntegrityError) changed nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import transaction
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from persistent import Persistent
from ZODB import DB
from ZODB.FileStorage import FileStorage

import pclasses
from pclasses.refs.integrity import effective_mode
from pclasses.refs.registry import STATE_KEY, registry_of


class SMTarget(Persistent):
    pass


class SMSource(Persistent):
    r = pclasses.Ref(mode="always")
    rs = pclasses.RefSet(mode="none")


TARGETS = ["t0", "t1", "t2", "t3"]
SOURCES = ["s0", "s1", "s2"]
FOLDERS = ["/m", "/m/sub"]
target = st.sampled_from(TARGETS)
source = st.sampled_from(SOURCES)
folders = st.sampled_from(FOLDERS)


class RefsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.db = DB(FileStorage(str(Path(self.dir) / "sm.fs")))
        self.tm = transaction.TransactionManager()
        self.conn = self.db.open(transaction_manager=self.tm)
        root = self.conn.root()
        m = pclasses.place(root, "m", pclasses.Folder())
        pclasses.place(m, "sub", pclasses.Folder())
        src = pclasses.place(root, "src", pclasses.Folder())
        for name in SOURCES:
            src[name] = SMSource()
        self.tm.commit()

    def teardown(self) -> None:
        self.tm.abort()
        self.conn.close()
        self.db.close()

    # -- helpers --------------------------------------------------------------

    def folder(self, key):
        return pclasses.refs.resolve(self.conn, key)

    def find(self, name):
        """(folder, name) where target ``name`` (or its renamed form) is placed."""
        for key in FOLDERS:
            f = self.folder(key)
            for n in (name, name + "_"):
                if n in f:
                    return f, n
        return None

    def src(self, name):
        return self.conn.root()["src"][name]

    def snapshot(self):
        registry = registry_of(self.conn)
        return (set(registry.links), dict(registry.keys.items()),
                {n: dict(self.src(n).__dict__.get(STATE_KEY) or {}) for n in SOURCES},
                {k: set(self.folder(k).keys()) for k in FOLDERS})

    def refused(self, fn):
        before = self.snapshot()
        try:
            fn()
        except pclasses.ReferentialIntegrityError as exc:
            assert exc.breaches
            assert self.snapshot() == before

    # -- rules ---------------------------------------------------------------

    @rule(name=target, where=folders)
    def place(self, name, where):
        if self.find(name) is None:
            self.folder(where)[name] = SMTarget()

    @rule(name=target)
    def remove(self, name):
        found = self.find(name)
        if found is not None:
            self.refused(lambda: pclasses.remove(*found))

    @rule(name=target, where=folders)
    def move(self, name, where):
        found = self.find(name)
        if found is not None and found[1] not in self.folder(where):
            pclasses.move(found[0][found[1]], self.folder(where))

    @rule(name=target)
    def rename(self, name):
        found = self.find(name)
        if found is not None:
            f, n = found
            pclasses.rename(f, n, name if n.endswith("_") else name + "_")

    @rule(name=target, where=folders)
    def rekey(self, name, where):
        found = self.find(name)
        if found is not None:
            old = pclasses.refs.key_of(found[0][found[1]])
            new = f"{where}/{found[1]}"
            if pclasses.refs.resolve(self.conn, new) is None:
                pclasses.rekey(self.conn, old, new)

    @rule(name=target)
    def replace(self, name):
        found = self.find(name)
        if found is not None:
            key = pclasses.refs.key_of(found[0][found[1]])
            pclasses.replace_target(self.conn, key, SMTarget())

    @rule(s=source, name=target)
    def set_ref(self, s, name):
        found = self.find(name)
        if found is not None:
            self.refused(lambda: setattr(self.src(s), "r", found[0][found[1]]))

    @rule(s=source)
    def clear_ref(self, s):
        self.src(s).r = None

    @rule(s=source)
    def del_ref(self, s):
        try:
            del self.src(s).r
        except AttributeError:
            pass

    @rule(s=source, name=target)
    def refset_add(self, s, name):
        found = self.find(name)
        if found is None:
            return
        obj = found[0][found[1]]
        try:
            self.src(s).rs.add(obj)
        except AttributeError:
            self.src(s).rs = [obj]

    @rule(s=source, name=target)
    def refset_discard(self, s, name):
        found = self.find(name)
        if found is not None:
            try:
                self.src(s).rs.discard(found[0][found[1]])
            except AttributeError:
                pass

    @rule(mode=st.sampled_from(["none", "always", "commit"]),
          fix=st.sampled_from([None, "null", "remove"]))
    def set_mode(self, mode, fix):
        self.refused(lambda: pclasses.set_ref_mode(self.conn, SMSource.r, mode, fix=fix))

    @rule()
    def commit(self):
        try:
            self.tm.commit()
        except pclasses.ReferentialIntegrityError:
            self.tm.abort()
            return
        self.check_committed()

    @rule()
    def abort(self):
        self.tm.abort()

    # -- invariants ----------------------------------------------------------

    @invariant()
    def links_equal_stored_references(self):
        registry = registry_of(self.conn)
        stored = set()
        for name in SOURCES:
            s = self.src(name)
            s._p_activate()
            for ref_key, value in (s.__dict__.get(STATE_KEY) or {}).items():
                for rid in (value if isinstance(value, tuple) else (value,)):
                    if rid is not None:
                        stored.add((rid, ref_key, "unnamed", s._p_oid))
        assert set(registry.links) == stored

    def check_committed(self):
        registry = registry_of(self.conn)
        if effective_mode(registry, SMSource.r.id) != "always":
            return
        for name in SOURCES:
            try:
                _ = self.src(name).r  # never a DanglingReferenceError
            except AttributeError:
                pass


TestRefsMachine = RefsMachine.TestCase
# Each step runs real transactions on a FileStorage: fewer, shorter runs
# than the profile's default (the ``deep`` profile still runs many more).
TestRefsMachine.settings = settings(
    max_examples=max(12, settings.default.max_examples // 3), stateful_step_count=30)
