"""Trees of databases: handles, lazy opening, one commit across databases,
remote references, dangling targets (issue 14), on real FileStorages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transaction
from ZODB.POSException import POSKeyError

import pclasses

sys.path.insert(0, str(Path(__file__).parent))
from tree_models import Holder, Node, pack_alone  # noqa: E402


def make_tree(tmp_path: Path, levels: int = 3):
    """root -> a -> b, each a FileStorage; returns paths.  Objects: root['src'],
    a's root['obj'], b's root['deep']."""
    paths = [tmp_path / f"{n}.fs" for n in ("root", "a", "b")[:levels]]
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    root = conn.root()
    root["src"] = Node("src")
    ha = tree.add(conn, "a", paths[1])
    a_root = ha.root()
    a_root["obj"] = Node("in a")
    if levels > 2:
        hb = tree.add(ha.connection(), "b", paths[2], pin=False)
        hb.root()["deep"] = Node("in b")
    tm.commit()
    conn.close()
    tree.close()
    return paths


def test_handles_open_children_lazily_and_one_commit_covers_all(tmp_path):
    """A reopened tree opens no child until a handle is used; a write in the
    root and in two children commits in one transaction."""
    paths = make_tree(tmp_path)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    assert tree.opened == {db.database_name}
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    ha = tree.handle("a", conn)
    assert isinstance(ha, pclasses.DatabaseHandle) and ha.name == "a"
    assert ha.target == str(paths[1])
    assert tree.opened == {db.database_name}
    assert ha.root()["obj"].name == "in a"
    assert tree.opened == {db.database_name, "a"}
    hb = tree.handle("b", conn)
    conn.root()["src"].name = "changed"
    ha.root()["obj"].name = "changed a"
    hb.root()["deep"].name = "changed b"
    tm.commit()
    conn.close()
    tree.close()
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    conn = db.open()
    assert conn.root()["src"].name == "changed"
    assert tree.handle("a", conn).root()["obj"].name == "changed a"
    assert tree.handle("b", conn).root()["deep"].name == "changed b"
    conn.close()
    tree.close()


def test_abort_rolls_back_parent_and_child(tmp_path):
    """An aborted transaction leaves root and child as they were."""
    paths = make_tree(tmp_path)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    ha = tree.handle("a", conn)
    conn.root()["src"].name = "x"
    ha.root()["obj"].name = "y"
    tm.abort()
    assert conn.root()["src"].name == "src"
    assert ha.root()["obj"].name == "in a"
    conn.close()
    tree.close()


def test_handle_names_are_unique(tmp_path):
    """Adding a second handle with a name the tree knows is a clear error."""
    paths = make_tree(tmp_path)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    conn = db.open()
    with pytest.raises(pclasses.DuplicateHandleError):
        tree.add(conn, "a", tmp_path / "other.fs")
    with pytest.raises(ValueError):
        tree.add(conn, db.database_name, tmp_path / "other.fs")
    transaction.abort()
    conn.close()
    tree.close()


def test_remote_reference_two_levels_deep_loads_nothing_until_called(tmp_path):
    """get_reference builds nested RemoteReferences as the seed does; loading
    the source opens no child; ref() opens them and returns the target."""
    paths = make_tree(tmp_path)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"]
    ha = tree.handle("a", conn)
    hb = tree.handle("b", conn)
    obj = ha.root()["obj"]
    deep = hb.root()["deep"]
    assert pclasses.get_reference(src, src) is src
    ra = pclasses.get_reference(src, obj)
    rb = pclasses.get_reference(src, deep)
    assert isinstance(ra, pclasses.RemoteReference) and ra.via is ha
    assert isinstance(rb.via, pclasses.RemoteReference) and rb.via.via is ha
    assert rb.via.oid == hb._p_oid and rb.oid == deep._p_oid
    assert rb.klass == "tree_models.Node" and rb.database_name == "b"
    src.a = ra
    src.b = rb
    tm.commit()
    conn.close()
    tree.close()

    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    conn = db.open()
    src = conn.root()["src"]
    assert isinstance(src.b, pclasses.RemoteReference)
    assert tree.opened == {db.database_name}
    assert src.a().name == "in a"
    assert tree.opened == {db.database_name, "a"}
    assert src.b(ghost=True)._p_changed is None
    assert src.b().name == "in b"
    assert tree.opened == {db.database_name, "a", "b"}
    conn.close()
    tree.close()


def test_unreachable_and_jarless(tmp_path):
    """Upstream targets are unreachable; a source without a jar is a ValueError."""
    paths = make_tree(tmp_path)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    conn = db.open()
    src = conn.root()["src"]
    obj = tree.handle("a", conn).root()["obj"]
    with pytest.raises(pclasses.UnreachableReferenceError):
        pclasses.get_reference(obj, src)
    with pytest.raises(ValueError):
        pclasses.get_reference(Node(), obj)
    conn.close()
    tree.close()


def test_remote_attribute_and_dangling_target(tmp_path):
    """RemoteAttribute stores a reference and dereferences it; a target packed
    away comes back as a falsy Dangling; strict=True raises."""
    paths = make_tree(tmp_path, levels=2)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    ha = tree.handle("a", conn)
    gone = Node("gone")
    ha.root()["gone"] = gone
    tm.commit()
    h = conn.root()["h"] = Holder()
    conn.add(h)  # the seed's rule: the source has a jar before it takes references
    h.target = gone
    assert isinstance(h.__dict__["target"], pclasses.RemoteReference)
    assert h.target is gone
    del ha.root()["gone"]
    tm.commit()
    conn.close()
    tree.close()
    pack_alone(paths[1])

    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    conn = db.open()
    h = conn.root()["h"]
    d = h.target
    assert pclasses.is_dangling(d) and not d
    assert (d.database_name, d.oid, d.klass) == ("a", gone._p_oid, "tree_models.Node")
    with pytest.raises(pclasses.DanglingReferenceError) as info:
        _ = d.name
    assert isinstance(info.value, POSKeyError)
    with pytest.raises(pclasses.DanglingReferenceError):
        h.__dict__["target"](strict=True)
    conn.close()
    tree.close()


def test_unavailable_child_keeps_referrer_loadable(tmp_path):
    """A child whose file is gone: the referring object still loads, and
    dereferencing raises DatabaseUnavailableError (an OSError) naming it."""
    paths = make_tree(tmp_path, levels=2)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"]
    src.a = pclasses.get_reference(src, tree.handle("a", conn).root()["obj"])
    tm.commit()
    conn.close()
    tree.close()
    for p in tmp_path.glob("a.fs*"):
        p.unlink()
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"]
    assert src.name == "src"
    with pytest.raises(pclasses.DatabaseUnavailableError) as info:
        src.a()
    assert isinstance(info.value, OSError)
    assert info.value.name == "a" and info.value.target == str(paths[1])
    src.name = "touched"
    with pytest.raises(pclasses.DatabaseUnavailableError):
        tree.handle("a", conn).root()
    tm.abort()
    assert not (tmp_path / "a.fs").exists()
    conn.close()
    tree.close()


def test_dangling_placeholder_for_zodb_multi_references(tmp_path):
    """dangling="placeholder": ZODB's own ['m', ...] reference to a packed-away
    target loads as a Dangling instead of raising POSKeyError later."""
    paths = make_tree(tmp_path, levels=2)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    ha = tree.handle("a", conn)
    gone = ha.root()["gone"] = Node("gone")
    tm.commit()
    conn.root()["src"].direct = gone  # a ZODB cross-database reference
    del ha.root()["gone"]
    tm.commit()
    oid = gone._p_oid
    conn.close()
    tree.close()
    pack_alone(paths[1])
    db = pclasses.open(paths[0], tree=True, dangling="placeholder")
    conn = db.open()
    d = conn.root()["src"].direct
    assert pclasses.is_dangling(d) and d.database_name == "a" and d.oid == oid
    conn.close()
    pclasses.tree_of(db).close()


def test_child_on_a_real_zeo_server(tmp_path, zeo_uri):
    """A child served by ZEO: written through its handle in one commit with
    the root, reached lazily through a remote reference after reopening, and
    counted by refs-check."""
    root_path = tmp_path / "root.fs"
    db = pclasses.open(root_path, tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"] = Node("src")
    conn.add(src)
    hz = tree.add(conn, "zeo", zeo_uri)
    remote = hz.root()["remote"] = Node("on zeo")
    tm.commit()
    src.ref = pclasses.get_reference(src, remote)
    tm.commit()
    conn.close()
    tree.close()
    db = pclasses.open(root_path, tree=True)
    tree = pclasses.tree_of(db)
    conn = db.open()
    src = conn.root()["src"]
    assert tree.opened == {db.database_name}
    assert src.ref().name == "on zeo"
    assert "zeo" in tree.opened
    conn.close()
    report = pclasses.check_refs(db)
    tree.close()
    assert report.ok and report.objects["zeo"] >= 2


def test_conflict_in_child_aborts_the_parent_change_too(tmp_path):
    """Two transactions change the same child object; the second commit fails
    with a ConflictError and its change in the root database is not stored."""
    from ZODB.POSException import ConflictError

    paths = make_tree(tmp_path, levels=2)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    c1, c2 = db.open(tm1), db.open(tm2)
    o1 = tree.handle("a", c1).root()["obj"]
    o2 = tree.handle("a", c2).root()["obj"]
    o1.name, o2.name = "first", "second"
    c2.root()["src"].name = "from the loser"
    tm1.commit()
    with pytest.raises(ConflictError):
        tm2.commit()
    tm2.abort()
    c1.close()
    c2.close()
    tree.close()
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    conn = db.open()
    assert conn.root()["src"].name == "src"
    assert tree.handle("a", conn).root()["obj"].name == "first"
    conn.close()
    tree.close()


def test_zeo_child_whose_server_is_down_is_unavailable(tmp_path):
    """A handle naming a ZEO server nobody listens on: the referring object
    loads, dereferencing raises DatabaseUnavailableError naming handle and target."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"zeo://127.0.0.1:{port}?wait_timeout=1"
    db = pclasses.open(tmp_path / "root.fs", tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    conn.root()["h"] = handle = pclasses.DatabaseHandle("down", uri)
    tm.commit()
    with pytest.raises(pclasses.DatabaseUnavailableError) as info:
        handle.root()
    assert info.value.name == "down" and info.value.target == uri
    assert "down" not in tree.opened
    conn.close()
    tree.close()


def _names_in(path: Path, key: str) -> str:
    """What root[key].name is in the FileStorage at ``path``, read with plain
    ZODB (no tree)."""
    import ZODB
    from ZODB.FileStorage import FileStorage

    db = ZODB.DB(FileStorage(str(path), read_only=True))
    try:
        conn = db.open()
        return conn.root()[key].name
    finally:
        db.close()


@pytest.mark.zeo
def test_commit_fails_before_anything_when_the_zeo_child_server_stops(tmp_path):
    """Parent and ZEO child changed in one transaction, then the child's ZEO
    server stops: the commit raises DatabaseUnavailableError naming the
    handle and target before any database votes, and neither the parent's
    file nor the child's file holds the change."""
    import ZEO

    zeo_path = tmp_path / "zeo.fs"
    address, stop = ZEO.server(path=str(zeo_path), threaded=False)  # a server process
    try:
        uri = f"zeo://{address[0]}:{address[1]}?wait_timeout=2"
        root_path = tmp_path / "root.fs"
        db = pclasses.open(root_path, tree=True)
        tree = pclasses.tree_of(db)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        src = conn.root()["src"] = Node("src")
        hz = tree.add(conn, "zeo", uri)
        obj = hz.root()["obj"] = Node("on zeo")
        tm.commit()
        src.name = "changed in root"
        obj.name = "changed on zeo"
        stop()
        stop = None
        with pytest.raises(pclasses.DatabaseUnavailableError) as info:
            tm.commit()
        tm.abort()
        assert info.value.name == "zeo" and info.value.target == uri
        conn.close()
        tree.close()
        assert _names_in(root_path, "src") == "src"
        assert _names_in(zeo_path, "obj") == "on zeo"
    finally:
        if stop is not None:
            stop()


def test_commit_fails_before_anything_when_the_child_file_vanished(tmp_path):
    """A FileStorage child whose file is deleted while it is open (it would
    go on writing into a file nobody reads again): a commit changing parent
    and child raises DatabaseUnavailableError, and the parent is unchanged."""
    paths = make_tree(tmp_path, levels=2)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    src = conn.root()["src"]
    obj = tree.handle("a", conn).root()["obj"]
    src.name, obj.name = "changed in root", "changed in a"
    for p in tmp_path.glob("a.fs*"):
        p.unlink()
    with pytest.raises(pclasses.DatabaseUnavailableError) as info:
        tm.commit()
    tm.abort()
    assert info.value.name == "a" and "gone" in info.value.reason
    assert _names_in(paths[0], "src") == "src"
    # a commit that does not touch the child still works
    src.name = "root only"
    tm.commit()
    conn.close()
    tree.close()
    assert _names_in(paths[0], "src") == "root only"


def test_dangling_placeholder_for_zodb_n_references(tmp_path):
    """ZODB writes ['n', (db, oid)] for a cross-database reference to an
    object whose class defines __getnewargs__; with dangling="placeholder" a
    packed-away target of that form loads as a Dangling (database and oid,
    class unknown) and refs-check lists it with form 'n'; without it, using
    the target raises POSKeyError."""
    from pclasses.record.edges import edges
    from tree_models import Keyed

    paths = make_tree(tmp_path, levels=2)
    db = pclasses.open(paths[0], tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    ha = tree.handle("a", conn)
    gone = ha.root()["gone"] = Keyed("k")
    tm.commit()
    src = conn.root()["src"]
    src.direct = gone
    tm.commit()
    data, _ = db.storage.load(src._p_oid)
    assert [(str(e.kind), e.database) for e in edges(data) if e.database] == [("multi_oid", "a")]
    del ha.root()["gone"]
    tm.commit()
    oid = gone._p_oid
    conn.close()
    tree.close()
    pack_alone(paths[1])
    db = pclasses.open(paths[0], tree=True, dangling="placeholder")
    conn = db.open()
    d = conn.root()["src"].direct
    assert pclasses.is_dangling(d) and not d
    assert (d.database_name, d.oid, d.klass) == ("a", oid, None)
    with pytest.raises(pclasses.DanglingReferenceError):
        d.key  # noqa: B018
    conn.close()
    report = pclasses.check_refs(db)
    pclasses.tree_of(db).close()
    assert [(x.target_database, x.target_oid, x.form, x.reason) for x in report.dangling] == [
        ("a", oid, "n", "missing")]
    db = pclasses.open(paths[0], tree=True)
    conn = db.open()
    with pytest.raises(POSKeyError):
        conn.root()["src"].direct.key  # noqa: B018
    conn.close()
    pclasses.tree_of(db).close()


@pytest.mark.zeo
def test_commit_waits_for_a_zeo_child_server_that_comes_back(tmp_path):
    """The commit guard waits for a disconnected ZEO child as long as the
    client would (its wait_timeout): a server that comes back on the same
    address meanwhile takes the commit, in parent and child."""
    import threading
    import time

    import ZEO

    zeo_path = tmp_path / "zeo.fs"
    address, stop = ZEO.server(path=str(zeo_path), threaded=False)
    stops = [stop]
    try:
        uri = f"zeo://{address[0]}:{address[1]}?wait_timeout=60"
        root_path = tmp_path / "root.fs"
        db = pclasses.open(root_path, tree=True)
        tree = pclasses.tree_of(db)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        src = conn.root()["src"] = Node("src")
        hz = tree.add(conn, "zeo", uri)
        obj = hz.root()["obj"] = Node("on zeo")
        tm.commit()
        src.name, obj.name = "changed in root", "changed on zeo"
        stops.pop()()

        def restart() -> None:
            time.sleep(1)
            stops.append(ZEO.server(path=str(zeo_path), port=address[1], threaded=False)[1])

        thread = threading.Thread(target=restart)
        thread.start()
        while hz.db().storage.is_connected():  # the client notices the stop
            time.sleep(0.05)
        tm.commit()
        thread.join()
        conn.close()
        tree.close()
        assert _names_in(root_path, "src") == "changed in root"
    finally:
        for each in stops:
            each()
    assert _names_in(zeo_path, "obj") == "changed on zeo"
