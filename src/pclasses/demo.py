"""The main job: build (or reuse) a sample database and run the workflows on it.

Run with ``python -m pclasses.demo [DIRECTORY] [--target TARGET]`` (``make
demo`` uses ``var/``; ``make demo TARGET=...``).  Each step uses the real API
and prints what it did.

With ``--target`` (a RelStorage URI ``postgres://...``, ``zeo://host:port``,
a ZConfig file, any TARGET the command line takes) the sample data is built
in that database and the steps run there; the steps that need more
databases (the repaired copy, the class table with export and import, the
seat belt, the tree) use FileStorages in DIRECTORY beside it and say so.  A
target that holds anything but the demo's own data is refused, untouched.

The sample database holds what a ZODB operator meets after a few upgrades:
ordinary content, instances of a class whose module was renamed
(``legacy_shop.Product``, now ``pclasses.demo_models.Product``) and
instances of a removed add-on (``gone_addon.Widget``).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import transaction
import ZODB
import zope.event
from ZODB.utils import oid_repr

import pclasses
from pclasses.demo_models import Document, Folder, Stamp, Widget
from pclasses.errors import DemoTargetError

#: The root entry that marks a database as the demo's own (a target holding
#: anything else is refused).
MARKER = "pclasses-demo"
MARKER_TEXT = "sample data of python -m pclasses.demo; safe to delete"

NOTE_GUID = "0d5f2a9c-demo-note"
TAG_GUID = "0d5f2a9c-demo-tag"

_LEGACY = '''
from persistent import Persistent

class Product(Persistent):
    def __init__(self, sku, price):
        self.sku = sku
        self.price = price
'''

_ADDON = '''
from persistent import Persistent

class Widget(Persistent):
    def __init__(self, color):
        self.color = color
'''


def _say(step: str) -> None:
    print(f"\n== {step}")


def build(path: Path | str) -> None:
    """Write the sample database (a path or any writable TARGET, empty) with
    modules that then disappear."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "legacy_shop.py").write_text(_LEGACY)
        (Path(tmp) / "gone_addon.py").write_text(_ADDON)
        sys.path.insert(0, tmp)
        try:
            legacy = importlib.import_module("legacy_shop")
            addon = importlib.import_module("gone_addon")
            db = pclasses.open(path)
            try:
                with db.transaction() as conn:
                    root = conn.root()
                    root[MARKER] = MARKER_TEXT
                    site = root["site"] = Folder("Sample site")
                    docs = site["docs"] = Folder("Documents")
                    for i in range(20):
                        docs[f"doc-{i}"] = Document(f"Document {i}", "text " * i)
                    shop = site["shop"] = Folder("Shop")
                    for i in range(5):
                        shop[f"p{i}"] = legacy.Product(f"SKU-{i}", 100 + i)
                    site["widgets"] = [addon.Widget("red"), addon.Widget("blue")]
                    site["settings"] = {"stamp": Stamp("built", 1)}
            finally:
                db.close()
        finally:
            sys.path.remove(tmp)
            for name in ("legacy_shop", "gone_addon"):
                sys.modules.pop(name, None)


def shown(target: str) -> str:
    """``target`` as printed: a password in a URI is replaced by ``***``."""
    return re.sub(r"(://[^:/@?]+):[^@/]*@", r"\1:***@", target)


def root_entries(storage: Any) -> list[str]:
    """The keys of the root mapping, read with the record engine (nothing is
    unpickled); ``[]`` when there is no root object yet."""
    from ZODB.POSException import POSKeyError
    from ZODB.utils import z64

    try:
        data, _tid = storage.load(z64)
    except POSKeyError:
        return []
    state = pclasses.read_record(data, z64).state
    if isinstance(state, dict):
        for name in ("data", "_container"):
            entries = state.get(name)
            if isinstance(entries, dict):
                return sorted(str(k) for k in entries)
    return ["(a root that is not a mapping)"]


def prepare_target(target: str) -> bool:
    """Build the sample data in ``target`` when it is empty (``True``), reuse
    it when it is the demo's own (``False``); refuse anything else."""
    db = pclasses.open(target)  # an empty database gets its root object
    try:
        entries = root_entries(db.storage)
    finally:
        db.close()
    if not entries:
        build(target)
        return True
    if MARKER in entries:
        return False
    more = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise DemoTargetError(shown(target), more)


def copy_current(storage: Any, path: Path) -> int:
    """Store the current records of ``storage`` in a new FileStorage at
    ``path`` (one transaction, the bytes as they are); returns how many."""
    from ZODB.Connection import TransactionMetaData
    from ZODB.FileStorage import FileStorage
    from ZODB.utils import z64

    from pclasses.scan import iter_current

    for suffix in ("", ".index", ".lock", ".tmp"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fs = FileStorage(str(path), create=True)
    count = 0
    try:
        txn = TransactionMetaData(description="pclasses demo: a copy of the target")
        fs.tpc_begin(txn)
        for oid, _tid, data in iter_current(storage):
            fs.store(oid, z64, data, "", txn)
            count += 1
        fs.tpc_vote(txn)
        fs.tpc_finish(txn)
    finally:
        fs.close()
    return count


def _seat_belt() -> None:
    """A main and a session database; main may not refer into session."""
    from persistent.mapping import PersistentMapping
    from ZODB.MappingStorage import MappingStorage

    dbs: dict[str, object] = {}
    main_db = ZODB.DB(MappingStorage(), databases=dbs, database_name="main")
    ZODB.DB(MappingStorage(), databases=dbs, database_name="session")
    pclasses.ClassRegistry().install(main_db)
    pclasses.check_xrefs(main_db, True, ["main", "session"])
    policy = pclasses.XrefPolicy.parse("deny main -> session").install()
    try:
        tm = transaction.TransactionManager()
        conn = main_db.open(tm)
        cart = conn.get_connection("session").root()["cart"] = PersistentMapping(items=3)
        tm.commit()
        conn.root()["last_cart"] = cart  # the accident: main now points into session
        try:
            tm.commit()
        except pclasses.CrossDatabaseReferenceError as exc:
            tm.abort()
            print(f"vetoed: {exc}")
        print(f"nothing was stored: {'last_cart' not in conn.root()}")
        conn.get_connection("session").root()["home"] = conn.root()  # allowed direction
        tm.commit()
        for group in pclasses.scan_xrefs(main_db):
            print(f"  stored references {group.source_database} -> {group.target_database}: "
                  f"{group.count}")
        conn.close()
    finally:
        policy.uninstall()
        for db in set(dbs.values()):
            db.close()  # type: ignore[attr-defined]


def _tree(var: Path) -> None:
    """main -> catalog -> shared, remote references, a target packed away."""
    from ZODB.FileStorage import FileStorage

    here = var / "tree"
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir()
    db = pclasses.open(here / "main.fs", tree=True)
    tree = pclasses.tree_of(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    catalog = tree.add(conn, "catalog", here / "catalog.fs")
    shared = tree.add(catalog.connection(), "shared", here / "shared.fs")
    page = conn.root()["page"] = Document("Home", "welcome")
    conn.add(page)
    shared.root()["logo"] = logo = Document("Logo", "png")
    shared.root()["banner"] = banner = Document("Banner", "png")
    tm.commit()
    page.logo = pclasses.get_reference(page, logo)
    page.banner = pclasses.get_reference(page, banner)
    del shared.root()["banner"]  # only main refers to it now
    tm.commit()
    print(f"page.logo = {page.logo!r} (via {page.logo.via!r})")
    conn.close()
    tree.close()
    packed = ZODB.DB(FileStorage(str(here / "shared.fs")))
    packed.pack(days=0)  # packing 'shared' alone loses the banner
    packed.close()

    db = pclasses.open(here / "main.fs", tree=True)
    tree = pclasses.tree_of(db)
    conn = db.open(transaction.TransactionManager())
    page = conn.root()["page"]
    print(f"page loaded; databases open: {sorted(tree.opened)}")
    print(f"page.logo() -> {page.logo().title!r}; open now: {sorted(tree.opened)}")
    gone = page.banner()
    print(f"page.banner() -> {gone!r}: falsy={not gone}, is_dangling={pclasses.is_dangling(gone)}")
    conn.close()
    report = pclasses.check_refs(db)
    for d in report.dangling:
        print(f"refs-check: {d.source_database}:{oid_repr(d.source_oid)} -> "
              f"{d.target_database}:{oid_repr(d.target_oid)} ({d.form}, {d.reason})")
    tree.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pclasses.demo",
        description="Build (or reuse) a sample database and run pclasses' workflows on it.")
    parser.add_argument("directory", nargs="?", default="var",
                        help="where the files go (default: var)")
    parser.add_argument("--target", default=None,
                        help="build the sample data in this database instead of "
                             "DIRECTORY/demo.fs (postgres://..., zeo://host:port, a ZConfig "
                             "file); it must be empty or the demo's own")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    var = Path(args.directory)
    var.mkdir(parents=True, exist_ok=True)
    target: str | None = args.target or None
    path = var / "demo.fs"
    where: Path | str = path if target is None else target
    beside = "" if target is None else f" (a FileStorage beside the target, in {var})"

    _say("1. sample database")
    if target is None and path.exists():
        print(f"reusing {path}")
    elif target is None:
        build(path)
        print(f"built {path}: a site with documents, products of the renamed "
              "module legacy_shop and widgets of the removed add-on gone_addon")
    else:
        try:
            built = prepare_target(target)
        except DemoTargetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except pclasses.PClassesError as exc:
            print(f"error: {shown(target)}: {exc}", file=sys.stderr)
            return 1
        if built:
            print(f"built the sample data in {shown(target)}: a site with documents, products "
                  "of the renamed module legacy_shop and widgets of the removed add-on "
                  "gone_addon")
        else:
            print(f"reusing the demo's data in {shown(target)}")

    _say("2. census: every class the records name, read without running any pickle")
    registry = pclasses.ClassRegistry()
    db = pclasses.open(where, registry)
    try:
        conn = db.open()
        census = pclasses.take_census(db.storage, registry, connection=conn, jobs=1)
        print(f"{census.records} records")
        for c in census.classes:
            print(f"  {c.dotted:45} records={c.records:<4} mentions={c.mentions:<4} {c.status}")

        _say("3. the safe record reader on one record")
        site = conn.root()["site"]
        data, _tid = db.storage.load(site["shop"]._p_oid)
        info = pclasses.scan_record(data, site["shop"]._p_oid)
        print(f"record {oid_repr(site['shop']._p_oid)}: class {info.klass.dotted} "
              f"(format {info.klass.format}, {info.klass.kind})")
        for ref in info.references:
            cls = ref.klass.dotted if ref.klass else "-"
            print(f"  reference {ref.kind:9} -> {oid_repr(ref.oid)} class {cls}")

        _say("4. broken objects keep their state, and the inventory says where they sit")
        product = site["shop"]["p0"]
        print(f"legacy_shop.Product instance loads as {type(product).__module__}."
              f"{type(product).__name__}: is_broken={pclasses.is_broken(product)}, "
              f"state={pclasses.broken_state(product)}")
        widget = site["widgets"][0]
        print(f"gone_addon.Widget: is_broken={pclasses.is_broken(widget)}, "
              f"state={pclasses.broken_state(widget)}")
        print(f"explain: {registry.explain('legacy_shop', 'Product')}")
        report = pclasses.find_broken(db, registry, examples=2, jobs=1)
        for broken_class in report.classes:
            print(f"  {broken_class.dotted}: {broken_class.records} records")
            for example in broken_class.examples:
                print(f"    {oid_repr(example.oid)} at {example.path}")

        _say("5. reattached live: rename rules take effect in open connections")
        events: list[pclasses.ClassReattached] = []
        zope.event.subscribers.append(events.append)
        try:
            registry.alias("legacy_shop.Product", "pclasses.demo_models.Product")
            registry.register(Widget, "gone_addon.Widget")
        finally:
            zope.event.subscribers.remove(events.append)
        for ev in events:
            print(f"  event: {ev.count} {ev.module}.{ev.name} object(s) reattached "
                  f"as {ev.cls.__module__}.{ev.cls.__name__}")
        print(f"the same objects, no reopen: {type(product).__name__}(sku={product.sku!r}, "
              f"price={product.price}), {type(widget).__name__}(color={widget.color!r})")
        conn.close()

        _say("6. repaired offline: records rewritten to the new names (on a copy)")
        copy = var / "demo-repaired.fs"
        rules = {"legacy_shop.Product": "pclasses.demo_models.Product",
                 "gone_addon.Widget": "pclasses.demo_models.Widget"}
        if target is None:
            shutil.copyfile(path, copy)
            index = Path(f"{path}.index")
            if index.exists():
                shutil.copyfile(index, f"{copy}.index")
            else:
                Path(f"{copy}.index").unlink(missing_ok=True)
            dry = pclasses.rename_classes(copy, rules, dry_run=True)
            print(f"dry run: {dry.changed} of {dry.records} records would change")
        else:
            dry = pclasses.rename_classes(target, rules, dry_run=True)
            print(f"dry run on the target: {dry.changed} of {dry.records} records would change")
            copied = copy_current(db.storage, copy)
            print(f"the repair itself runs on a copy of the target's {copied} current "
                  f"records{beside}: {copy}")
        done = pclasses.rename_classes(copy, rules)
        print(f"repair: rewrote {done.changed} records in {done.transactions} transaction(s): "
              f"{done.renamed}")
        again = pclasses.rename_classes(copy, rules)
        print(f"run again (idempotent): {again.changed} records changed")
        plain_db = pclasses.open(copy, read_only=True)
        try:
            left = pclasses.find_broken(plain_db, jobs=1)
            print(f"broken classes left in the copy, with no rename rules at all: "
                  f"{[c.dotted for c in left.classes] or 'none'}")
        finally:
            plain_db.close()

        _say("7. a class that lives in the database (guid module, class table)")
        classes_path = var / "demo-classes.fs"
        print(f"{'reusing' if classes_path.exists() else 'creating'} {classes_path}{beside}")
        cdb = pclasses.open(classes_path, registry)
        with cdb.transaction() as conn:
            table = pclasses.class_table(conn)
            Note = table.get(NOTE_GUID)
            if Note is None:
                Note = pclasses.define_class(conn, "Note", namespace={
                    "kind": "note",
                    "describe": pclasses.method(
                        "def describe(self):\n"
                        "    return f'{self.kind}: {self.text}'\n"),
                }, guid=NOTE_GUID)
                Tag = pclasses.define_class(conn, "Tag", (object,), {"color": "grey"},
                                            guid=TAG_GUID)
                note = Note()
                note.text = "stored in the database, class and all"
                conn.root()["note"] = note  # directly in the root mapping
                tag = Tag()
                tag.label = "plain instance"
                conn.root()["tagged"] = Folder("tagged")
                conn.root()["tagged"]["tag"] = tag
                print(f"defined {Note.__name__} with __module__ {Note.__module__!r}")
        with cdb.transaction() as conn:
            note = conn.root()["note"]
            data, _ = cdb.storage.load(note._p_oid)
            meta = pclasses.scan_record(data, note._p_oid).klass
            print(f"persistent instance record: class by name, format {meta.format} "
                  f"{meta.module}.{meta.name}")
            holder = conn.root()["tagged"]
            data, _ = cdb.storage.load(holder._p_oid)
            tag_state = pclasses.read_record(data).state["data"]["tag"]
            print(f"plain instance inside its holder: {tag_state.how} of "
                  f"{tag_state.callable!r} (a direct reference to the class record)")
            print(f"note.describe() -> {note.describe()!r}")
            Note = type(note)
            Note.kind = "edited note"
            Note.shout = pclasses.method("def shout(self):\n    return self.text.upper()\n")
        with cdb.transaction() as conn:
            note = conn.root()["note"]
            print(f"after editing the class: {note.describe()!r}; "
                  f"shout() -> {note.shout()!r}")
        conn = cdb.open()
        census = pclasses.take_census(cdb.storage, registry, connection=conn, jobs=1)
        for r in census.resident:
            print(f"  resident class {r.name} guid={r.guid} bases={r.bases} "
                  f"persistent instances={r.instances}")
        conn.close()

        _say("8. export a subtree with database-resident classes, import it elsewhere")
        with cdb.transaction() as conn:
            root = conn.root()
            if "shelf" not in root:  # a container of both kinds of instances
                shelf = root["shelf"] = Folder("shelf")
                shelf["note"] = root["note"]
                shelf["tagged"] = root["tagged"]
        export_file = var / "shelf.pclasses"
        conn = cdb.open()
        manifest = pclasses.export_subtree(conn, conn.root()["shelf"], export_file, name="shelf")
        source_classes = {guid: cls for guid, cls in pclasses.class_table(conn).items()}
        conn.close()
        cdb.close()
        print(f"exported {manifest.record_count} records to {export_file} "
              f"({export_file.stat().st_size} bytes); the classes themselves stay behind:")
        for need in manifest.classes:
            print(f"  needs {need.module}.{need.name}: {need.kind}")
        target_path = var / "demo-target.fs"
        if target is not None:
            print(f"import target: {target_path}{beside}")
        for suffix in ("", ".index", ".lock", ".tmp"):
            Path(f"{target_path}{suffix}").unlink(missing_ok=True)
        tdb = pclasses.open(target_path)
        try:
            with tdb.transaction() as tconn:
                try:
                    pclasses.import_subtree(tconn, export_file, into=tconn.root())
                except pclasses.MissingClassesError as exc:
                    print(f"import refused before writing anything: {len(exc.missing)} "
                          "classes missing in the target")
            with tdb.transaction() as tconn:  # the target gets the classes (same guids)
                for guid, cls in source_classes.items():
                    pclasses.define_class(tconn, cls.__name__, cls.__bases__,
                                          {k: v for k, v in vars(cls).items()
                                           if not k.startswith(("_", "__"))}, guid=guid)
            with tdb.transaction() as tconn:
                shelf = pclasses.import_subtree(tconn, export_file, into=tconn.root())
                note, tag = shelf["note"], shelf["tagged"]["tag"]
                table = pclasses.class_table(tconn)
                print(f"imported as {oid_repr(shelf._p_oid)}: note.describe() -> "
                      f"{note.describe()!r}; the note's class is the target's own: "
                      f"{type(note) is table[NOTE_GUID]}, the tag's too: "
                      f"{type(tag) is table[TAG_GUID]}")
        finally:
            tdb.close()

        _say("9. the cross-database reference seat belt")
        _seat_belt()

        _say("10. a tree of databases: lazy handles, remote references, a dangling target")
        if target is not None:
            print(f"the tree's databases are FileStorages in {var / 'tree'}{beside}")
        _tree(var)

        _say("11. what the registry saw")
        for rec in registry.broken():
            print(f"  broken {rec.module}.{rec.name}: {rec.count} lookups ({rec.error})")
    finally:
        db.close()
    transaction.abort()
    print("\ndone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
