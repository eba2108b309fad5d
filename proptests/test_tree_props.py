"""Property: random graphs of objects spread over a chain of databases
(root -> a -> b) survive store, load, garbage collection and export/import
into another tree with nothing reachable lost.

Each node lives in one database; a link from a node to a node of the same or
a downstream database is stored with ``get_reference`` (a plain reference in
the same database, a remote reference, nested for two levels).  Some nodes
are put in their database's root, the others are only reachable through
links or are garbage.  After ``collect_garbage(days=0, apply=True,
force=True)``: every node reachable from a root still loads with its links,
and every node that was unreachable is gone.  Then the root database's
holder is exported and imported into a new root database whose handle 'a'
names the same child: the imported links reach the same nodes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import transaction
from hypothesis import given, settings
from hypothesis import strategies as st

import pclasses

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tree_models import Node  # noqa: E402

DBS = ("unnamed", "a", "b")  # the root keeps ZODB's default database_name


@st.composite
def graphs(draw):
    n = draw(st.integers(2, 10))
    where = [draw(st.integers(0, 2)) for _ in range(n)]
    rooted = [draw(st.booleans()) for _ in range(n)]
    links = []
    for i in range(n):
        for j in draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True)):
            if where[j] >= where[i] and i != j:
                links.append((i, j))
    return where, rooted, links


def reachable(where, rooted, links):
    seen = {i for i, r in enumerate(rooted) if r}
    stack = list(seen)
    out = {}
    for i, j in links:
        out.setdefault(i, []).append(j)
    while stack:
        i = stack.pop()
        for j in out.get(i, ()):
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return seen


def deref(value):
    return value() if isinstance(value, pclasses.RemoteReference) else value


@settings(max_examples=20)
@given(graphs())
def test_trees_survive_store_gc_and_transfer(graph):
    where, rooted, links = graph
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        db = pclasses.open(d / "root.fs", tree=True)
        tree = pclasses.tree_of(db)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        ha = tree.add(conn, "a", d / "a.fs")
        hb = tree.add(ha.connection(), "b", d / "b.fs")
        conns = [conn, ha.connection(), hb.connection()]
        roots = [c.root() for c in conns]
        holder = roots[0]["holder"] = Node("holder")
        conn.add(holder)
        nodes = []
        for i, k in enumerate(where):
            node = Node(f"n{i}")
            node.links = []
            conns[k].add(node)
            nodes.append(node)
            if rooted[i]:
                if k == 0:
                    holder.links = getattr(holder, "links", []) + [node]
                else:
                    roots[k][f"n{i}"] = node
        tm.commit()
        for i, j in links:
            nodes[i].links = nodes[i].links + [pclasses.get_reference(nodes[i], nodes[j])]
        tm.commit()
        oids = [(DBS[k], nodes[i]._p_oid) for i, k in enumerate(where)]
        conn.close()
        tree.close()

        alive = reachable(where, rooted, links)
        db = pclasses.open(d / "root.fs", tree=True)
        report = pclasses.collect_garbage(db, days=0, apply=True, force=True)
        tree = pclasses.tree_of(db)
        tree.close()
        garbage = {(name, oid) for name, got in report.garbage.items() for oid in got}
        for i, key in enumerate(oids):
            assert (key in garbage) == (i not in alive), (i, key)

        db = pclasses.open(d / "root.fs", tree=True)
        tree = pclasses.tree_of(db)
        conn = db.open(transaction.TransactionManager())
        check = pclasses.check_refs(db)
        assert check.ok, check.to_dict()["dangling"]
        names = {}
        for i in alive:
            name, oid = oids[i]
            c = conn if name == "unnamed" else tree.handle(name, conn).connection()
            node = c.get(oid)
            names[i] = node.name
            assert [deref(x).name for x in node.links] == [f"n{j}" for a, j in links if a == i]
        export = d / "holder.pclasses"
        pclasses.export_subtree(conn, conn.root()["holder"]._p_oid, export)
        conn.close()
        tree.close()

        db2 = pclasses.open(d / "root2.fs", tree=True)
        tree2 = pclasses.tree_of(db2)
        tm2 = transaction.TransactionManager()
        conn2 = db2.open(tm2)
        tree2.add(conn2, "a", d / "a.fs")
        tm2.commit()
        new = pclasses.import_subtree(conn2, export)
        conn2.root()["holder"] = new
        tm2.commit()
        for node in getattr(new, "links", []):
            assert node.name in {f"n{i}" for i in alive}
            assert [deref(x).name for x in node.links] == [
                f"n{j}" for a, j in links if f"n{a}" == node.name]
        conn2.close()
        tree2.close()
