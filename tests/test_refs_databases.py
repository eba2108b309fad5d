"""References across ZEO clients, multi-databases and database-resident classes."""

from __future__ import annotations

import pytest
import transaction
from persistent import Persistent
from ZODB import DB
from ZODB.FileStorage import FileStorage

import pclasses
from pclasses import Folder, Ref, RefSet, place


class Master(Persistent):
    pass


class Holder(Persistent):
    item = Ref()
    items = RefSet()
    master = Ref(database="catalog")


# ---------------------------------------------------------------------------
# ZEO: two clients


def _synced(tm, conn, name):
    """The root of ``conn`` once the other client's commit has reached it."""
    import time

    for _ in range(200):
        tm.begin()
        root = conn.root()
        if name in root:
            return root
        time.sleep(0.05)
    raise AssertionError("invalidations never arrived")


def _until(tm, predicate):
    import time

    for _ in range(200):
        tm.begin()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("invalidations never arrived")


@pytest.mark.zeo
def test_two_zeo_clients_add_references_without_conflict(zeo_server):
    """Two clients adding references, also to the same never-referenced
    target, in overlapping transactions commit without ConflictError: the
    reference id is derived from the target, and identical inserts merge."""
    address, name = zeo_server.fresh()
    db1 = DB(zeo_server.client(address, name))
    db2 = DB(zeo_server.client(address, name))
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    c1, c2 = db1.open(transaction_manager=tm1), db2.open(transaction_manager=tm2)
    try:
        root = c1.root()
        masters = place(root, "masters", Folder())
        for n in ("a", "b", "c"):
            masters[n] = Master()
        holders = place(root, "holders", Folder())
        for n in ("h1", "h2", "h3", "h4"):
            holders[n] = Holder()
        tm1.commit()
        r2 = _synced(tm2, c2, "holders")
        tm1.begin()
        # both refer to 'a' for the first time, and to other new targets
        holders["h1"].item = masters["a"]
        holders["h3"].items = [masters["b"]]
        r2["holders"]["h2"].item = r2["masters"]["a"]
        r2["holders"]["h4"].items = [r2["masters"]["c"], r2["masters"]["a"]]
        tm1.commit()
        tm2.commit()  # no ConflictError
        _until(tm1, lambda: pclasses.references(c1.root()["holders"]["h4"]))
        got = {(r.source.__name__, r.name) for r in pclasses.referrers(c1.root()["masters"]["a"])}
        assert got == {("h1", "item"), ("h2", "item"), ("h4", "items")}
        assert c1.root()["holders"]["h2"].item is c1.root()["masters"]["a"]
        # and the registry is consistent with what is stored
        with pytest.raises(pclasses.ReferentialIntegrityError):
            pclasses.remove(c1.root()["masters"], "a")
        # concurrent removals of unrelated referenced targets' sources merge too
        c1.root()["holders"]["h1"].item = None
        c2.root()["holders"]["h3"].items = []
        tm1.commit()
        tm2.commit()
    finally:
        tm1.abort()
        tm2.abort()
        c1.close()
        c2.close()
        db1.close()
        db2.close()


# ---------------------------------------------------------------------------
# multi-database


@pytest.fixture
def multi(tmp_path):
    databases: dict = {}
    main = DB(FileStorage(str(tmp_path / "main.fs")), database_name="main",
              databases=databases)
    DB(FileStorage(str(tmp_path / "catalog.fs")), database_name="catalog",
       databases=databases)
    yield main
    transaction.abort()
    for db in set(databases.values()):
        db.close()


def test_ref_into_another_database(multi):
    """Ref(database="catalog") refers to master data in another database: the
    key and link live in the catalog's registry, the source record holds no
    cross-database persistent reference, so the seat belt has nothing to veto."""
    conn = multi.open()
    catalog = conn.get_connection("catalog")
    cities = place(catalog.root(), "cities", Folder())
    cities["jena"] = Master()
    transaction.commit()
    pclasses.check_xrefs(multi)  # the seat belt: refuses any cross-db reference
    policy = pclasses.XrefPolicy().deny("*", "*").install()
    try:
        holder = place(conn.root(), "h", Holder())
        holder.master = cities["jena"]
        transaction.commit()
    finally:
        policy.uninstall()
        pclasses.check_xrefs(multi, enabled=False)
    assert holder.master is cities["jena"]
    from pclasses.refs.registry import registry_of

    assert registry_of(catalog).keys.get("/cities/jena") is not None
    assert registry_of(conn, create=False) is None or not registry_of(conn).links
    assert pclasses.scan_xrefs(multi) == []
    with pytest.raises(pclasses.ReferentialIntegrityError):
        pclasses.remove(cities, "jena")
    (ref,) = pclasses.referrers(cities["jena"])
    assert ref.source is holder and ref.name == "master"
    # a same-database Ref refuses targets from elsewhere
    with pytest.raises(pclasses.UnlocatedError):
        holder.item = cities["jena"]
    transaction.abort()
    conn.close()


# ---------------------------------------------------------------------------
# database-resident classes


def test_resident_class_declares_references(tmp_path):
    """A database-resident class can declare references; the declaration
    (id, mode) survives storing the class and reopening the database."""
    path = str(tmp_path / "resident.fs")
    db = DB(FileStorage(path))
    conn = db.open()
    Cls = pclasses.define_class(conn, "Order", (Persistent,),
                                {"customer": Ref(mode="always")}, guid="order-1")
    customers = place(conn.root(), "customers", Folder())
    customers["acme"] = Master()
    order = place(conn.root(), "order", Cls())
    order.customer = customers["acme"]
    ref_id = Cls.customer.id
    assert ref_id == "*order-1.Order.customer"
    transaction.commit()
    conn.close()
    db.close()
    pclasses.refs.integrity.declared.pop(ref_id, None)

    db = pclasses.open(path)
    conn = db.open()
    try:
        order = conn.root()["order"]
        assert type(order).customer.id == ref_id
        assert type(order).customer.mode == "always"
        assert order.customer is conn.root()["customers"]["acme"]
        with pytest.raises(pclasses.ReferentialIntegrityError):
            pclasses.remove(conn.root()["customers"], "acme")
    finally:
        transaction.abort()
        conn.close()
        db.close()
