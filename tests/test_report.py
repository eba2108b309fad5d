"""``pclasses report``: the health page of a database, and the data behind it.

The page is checked as text here (counts, names, escaping, no network);
``tests/test_report_browser.py`` opens it in a real headless Chromium.
Every TARGET form is used against real storages: FileStorage, a ZConfig
multi-database and ZEO.  Expected figures come from the library's own
tools run separately, or from how the test built the data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import transaction
import ZODB
from click.testing import CliRunner
from persistent import Persistent
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage

import pclasses
from pclasses.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from pclasses.report import LIMITS, render, report_target

#: A class name a hostile database could hold (no dots: they split module and name).
HOSTILE = "evil<script>alert(1)</script>.W\"'&<img src=x onerror=alert(2)>"


def write_objects(path: Path, classes: dict[str, int], *, extra: Any = None) -> None:
    """A FileStorage holding, for each dotted name, that many persistent
    instances under ``root['objs'][dotted][i]``; the classes' modules exist
    only while writing (so every one of them is broken afterwards)."""
    made = []
    try:
        for dotted in classes:
            modname, _, name = dotted.rpartition(".")
            mod = sys.modules.get(modname) or types.ModuleType(modname)
            cls = type(name, (Persistent,), {"__module__": modname})
            cls.__qualname__ = name
            setattr(mod, name, cls)
            sys.modules[modname] = mod
            made.append(modname)
        db = ZODB.DB(FileStorage(str(path)))
        try:
            with db.transaction() as conn:
                objs = conn.root()["objs"] = PersistentMapping()
                for dotted, n in classes.items():
                    modname, _, name = dotted.rpartition(".")
                    cls = getattr(sys.modules[modname], name)
                    objs[dotted] = PersistentMapping({i: cls() for i in range(n)})
                if extra is not None:
                    extra(conn.root())
        finally:
            db.close()
    finally:
        for m in made:
            sys.modules.pop(m, None)


def demo_fs(directory: Path) -> Path:
    """The demo's sample database (renamed and removed classes)."""
    from pclasses.demo import build

    path = directory / "demo.fs"
    build(path)
    return path


def write_multi(directory: Path) -> tuple[Path, dict[str, Any]]:
    """A ZConfig multi-database main + catalog: main refers into catalog
    three times, one of them to an object packed away (dangling)."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "multi.conf"
    conf.write_text("".join(
        f"<zodb {n}>\n  <filestorage>\n    path {directory / (n + '.fs')}\n"
        "  </filestorage>\n</zodb>\n" for n in ("main", "catalog")))
    db = pclasses.open(conf)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        cat = conn.get_connection("catalog").root()
        for key in ("a", "b", "gone"):
            cat[key] = PersistentMapping(name=key)
        tm.commit()
        main_root = conn.root()
        main_root["links"] = PersistentMapping({k: cat[k] for k in ("a", "b", "gone")})
        tm.commit()
        del cat["gone"]
        tm.commit()
        conn.close()
        db.databases["catalog"].pack()  # the catalog does not know main refers to it
    finally:
        for each in set(db.databases.values()):
            each.close()
    return conf, {"records": None, "dangling": 1, "references": 3}


def page_of(runner_result: Any, path: Path) -> str:
    assert runner_result.exit_code == EXIT_OK, runner_result.output
    return path.read_text(encoding="utf-8")


class _Text(HTMLParser):
    """The text of one element (by id), as a browser shows it."""

    def __init__(self, element_id: str) -> None:
        super().__init__()
        self.element_id, self.depth, self.parts = element_id, 0, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth:
            self.depth += 1
        elif dict(attrs).get("id") == self.element_id:
            self.depth = 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)


def text_of(page: str, element_id: str) -> str:
    parser = _Text(element_id)
    parser.feed(page)
    return " ".join(parser.parts)


# ---------------------------------------------------------------------------
# the exact interface


def test_filestorage_page_summary_has_counts_and_broken_names(tmp_path):
    """`pclasses report Data.fs -o FILE` exits 0 and writes a page whose
    summary gives the number of records and of broken classes, and each
    broken class's dotted name; the figures are the census's."""
    path = demo_fs(tmp_path)
    out = tmp_path / "report.html"
    page = page_of(CliRunner().invoke(main, ["report", str(path), "-o", str(out)]), out)
    storage = FileStorage(str(path), read_only=True)
    try:
        census = pclasses.take_census(storage, jobs=1)
    finally:
        storage.close()
    broken = sorted(c.dotted for c in census.broken)
    assert broken == ["gone_addon.Widget", "legacy_shop.Product"]
    summary = text_of(page, "summary")
    assert f"{census.records} records" in summary
    assert "2 broken classes" in summary
    for name in broken:
        assert name in summary
    assert "Needs attention" in text_of(page, "verdict")


def test_healthy_database_says_so_and_exits_0(tmp_path):
    """A database where everything resolves gets a 'Healthy' verdict, 0 broken."""
    path = tmp_path / "ok.fs"
    db = ZODB.DB(FileStorage(str(path)))
    with db.transaction() as conn:
        conn.root()["x"] = PersistentMapping(a=1)
    db.close()
    out = tmp_path / "r.html"
    page = page_of(CliRunner().invoke(main, ["report", str(path), "-o", str(out)]), out)
    assert text_of(page, "verdict").startswith("Healthy")
    assert "0 broken classes" in text_of(page, "summary")


def test_unreadable_target_exits_1_with_one_line(tmp_path):
    """A target that cannot be read: exit 1, one line on stderr, no page."""
    out = tmp_path / "r.html"
    done = subprocess.run([sys.executable, "-m", "pclasses.cli", "report",
                           str(tmp_path / "missing.fs"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_ERROR
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pclasses: error:"), done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_neither_output_nor_json_is_a_usage_error(tmp_path):
    """`pclasses report TARGET` alone says what is missing (exit 2)."""
    result = CliRunner().invoke(main, ["report", str(tmp_path / "x.fs")])
    assert result.exit_code == EXIT_USAGE


def test_json_is_the_data_of_the_page(tmp_path):
    """--json prints the document the page is rendered from: same counts and
    names, and rendering it again gives the page's summary."""
    path = demo_fs(tmp_path)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(path), "-o", str(out), "--json"])
    page = page_of(result, out)
    data = json.loads(result.output)
    s = data["summary"]
    assert s["broken_class_names"] == ["gone_addon.Widget", "legacy_shop.Product"]
    assert f"{s['records']} records" in text_of(page, "summary")
    assert text_of(render(data), "summary") == text_of(page, "summary")
    broken = {f"{b['module']}.{b['name']}": b for b in data["databases"][0]["broken_classes"]}
    paths = [e["path"] for e in broken["legacy_shop.Product"]["examples"]]
    assert paths and all(p.startswith("root['site']") for p in paths)


# ---------------------------------------------------------------------------
# what the page holds


def test_broken_examples_have_root_paths_and_repair_commands(tmp_path):
    """Each broken class is a <details> with its example oids and their paths
    from the root; the suggested commands include `pclasses repair --rename`
    for it."""
    path = demo_fs(tmp_path)
    data = report_target(str(path), jobs=1)
    page = render(data.to_dict())
    found = re.findall(r'<details class="broken-class" data-name="([^"]*)">', page)
    assert found == ["gone_addon.Widget", "legacy_shop.Product"]
    broken = text_of(page, "broken")
    db = pclasses.open(path, read_only=True)
    try:
        expected = pclasses.find_broken(db, jobs=1)
    finally:
        db.close()
    for b in expected.classes:
        for e in b.examples:
            assert e.path and e.path.startswith("root['site']")
            assert e.path in broken
    repairs = text_of(page, "repairs")
    assert "pclasses repair" in repairs and "--rename legacy_shop.Product=" in repairs


def test_known_rename_rule_gives_the_repair_line(tmp_path):
    """A class the registry aliases (a rename rule it knows) gets the exact
    `pclasses repair TARGET --rename OLD=NEW` command."""
    path = demo_fs(tmp_path)
    registry = pclasses.ClassRegistry()
    registry.alias("legacy_shop.Product", "pclasses.demo_models.Product")
    data = report_target(str(path), registry, jobs=1)
    commands = [s.command for s in data.suggestions]
    assert (f"pclasses repair {path} --rename "
            "legacy_shop.Product=pclasses.demo_models.Product --dry-run") in commands
    assert data.broken_classes == ["gone_addon.Widget"]


def test_hostile_class_name_is_escaped(tmp_path):
    """A class name made of HTML and script reaches the page only as text:
    no tag, attribute or script of it survives, and it is still readable."""
    path = tmp_path / "h.fs"
    write_objects(path, {HOSTILE: 2})
    out = tmp_path / "r.html"
    page = page_of(CliRunner().invoke(main, ["report", str(path), "-o", str(out)]), out)
    assert "<script>alert" not in page and "<img" not in page
    assert page.count("<script>") == 1  # the page's own script
    assert "onerror=alert(2)&gt;" in page  # shown, escaped
    assert HOSTILE in text_of(page, "summary")  # the browser shows the real name


def test_page_needs_no_network(tmp_path):
    """No element loads anything: no src/href attributes, no @import or url(),
    and a Content-Security-Policy forbids every request."""
    path = demo_fs(tmp_path)
    page = render(report_target(str(path), jobs=1).to_dict())
    assert not re.search(r"\s(src|href)\s*=", page)
    assert "@import" not in page and "url(http" not in page
    assert "default-src 'none'" in page
    assert "<link" not in page


def test_examples_and_lists_are_capped(tmp_path, monkeypatch):
    """With many broken classes and objects the page keeps at most the
    configured numbers (and says how many there are)."""
    monkeypatch.setitem(LIMITS, "broken_classes", 4)
    path = tmp_path / "many.fs"
    write_objects(path, {f"gone{i}.C": 20 for i in range(10)})
    data = report_target(str(path), jobs=1, examples=2).to_dict()
    db = data["databases"][0]
    assert db["broken_classes_total"] == 10
    assert len(db["broken_classes"]) == 4
    assert all(len(b["examples"]) == 2 for b in db["broken_classes"])
    page = render(data)
    assert page.count('class="broken-class"') == 4
    assert "the first 4 of 10 broken classes" in page
    assert data["summary"]["broken_classes"] == 10  # the summary counts them all


# ---------------------------------------------------------------------------
# every target form


def test_zconfig_multi_database_draws_references_and_dangling(tmp_path):
    """A ZConfig multi-database: both databases in the summary and the
    drawing; the edge main -> catalog carries the reference count and is
    marked dangling with the count of references whose target is gone."""
    conf, expected = write_multi(tmp_path / "multi")
    out = tmp_path / "r.html"
    page = page_of(CliRunner().invoke(main, ["report", str(conf), "-o", str(out)]), out)
    assert "2 databases" in text_of(page, "summary")
    assert f"{expected['dangling']} dangling reference" in text_of(page, "summary")
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert 'data-db="main"' in svg and 'data-db="catalog"' in svg
    assert re.search(r'class="edge dangling">.*?3 \(1 dangling\)', svg)
    assert "pclasses refs-check" in text_of(page, "repairs")


@pytest.mark.zeo
def test_zeo_target(zeo_server, tmp_path):
    """A zeo:// URI: the page shows the server's records and broken class."""
    address, name = zeo_server.fresh()
    uri = zeo_server.uri(address, name)
    made = types.ModuleType("zeo_gone")

    class Thing(Persistent):
        pass

    Thing.__module__ = "zeo_gone"
    made.Thing = Thing  # type: ignore[attr-defined]
    sys.modules["zeo_gone"] = made
    try:
        db = ZODB.DB(zeo_server.client(address, name))
        with db.transaction() as conn:
            conn.root()["things"] = PersistentMapping({i: Thing() for i in range(4)})
        db.close()
    finally:
        del sys.modules["zeo_gone"]
    out = tmp_path / "r.html"
    page = page_of(CliRunner().invoke(main, ["report", uri, "-o", str(out)]), out)
    summary = text_of(page, "summary")
    assert "6 records" in summary  # root, the mapping, 4 things
    assert "zeo_gone.Thing" in summary and "1 broken class" in summary


def test_tree_root_reports_every_database(tmp_path):
    """The root of a tree of databases: the children its handles name are in
    the report (opened read-only) with the remote references drawn."""
    from pclasses.demo_models import Document

    main_path = tmp_path / "main.fs"
    db = pclasses.open(main_path, tree=True)
    tree = pclasses.tree_of(db)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        catalog = tree.add(conn, "catalog", tmp_path / "catalog.fs")
        page = conn.root()["page"] = Document("Home", "welcome")
        conn.add(page)
        catalog.root()["logo"] = logo = Document("Logo", "png")
        tm.commit()
        page.logo = pclasses.get_reference(page, logo)
        tm.commit()
        conn.close()
    finally:
        tree.close()
    data = report_target(str(main_path), jobs=1).to_dict()
    names = [d["name"] for d in data["databases"]]
    assert "catalog" in names and len(names) == 2
    assert data["summary"]["dangling_references"] == 0


@pytest.mark.postgres
def test_relstorage_target(pg_server, tmp_path):
    """A ZConfig file naming a RelStorage on PostgreSQL: the page shows its
    records and its broken class, as for any other storage."""
    dbname = pg_server.createdb()
    conf = tmp_path / "rel.conf"
    conf.write_text(
        "%import relstorage\n<zodb main>\n  <relstorage>\n    keep-history false\n"
        f"    <postgresql>\n      dsn {pg_server.dsn(dbname)}\n    </postgresql>\n"
        "  </relstorage>\n</zodb>\n")
    made = types.ModuleType("rel_gone")

    class Thing(Persistent):
        pass

    Thing.__module__ = "rel_gone"
    made.Thing = Thing  # type: ignore[attr-defined]
    sys.modules["rel_gone"] = made
    try:
        db = pclasses.open(conf)
        try:
            with db.transaction() as conn:
                conn.root()["things"] = PersistentMapping({i: Thing() for i in range(3)})
        finally:
            db.close()
    finally:
        del sys.modules["rel_gone"]
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(conf), "-o", str(out), "--json"])
    page = page_of(result, out)
    summary = text_of(page, "summary")
    assert "5 records" in summary  # root, the mapping, 3 things
    assert "rel_gone.Thing" in summary and "1 broken class" in summary
    data = json.loads(result.output)
    (broken,) = data["databases"][0]["broken_classes"]
    assert all(e["path"] and e["path"].startswith("root['things']") for e in broken["examples"])


def test_unreadable_and_hostile_records_are_findings(tmp_path):
    """Records that cannot be read (garbage, a pickle that would call
    os.system) are listed on the page; the command still exits 0 and nothing
    of them runs."""
    import pickle

    from ZODB.Connection import TransactionMetaData
    from ZODB.utils import p64, z64

    marker = tmp_path / "ran"
    path = tmp_path / "bad.fs"
    db = ZODB.DB(FileStorage(str(path)))
    with db.transaction() as conn:
        conn.root()["x"] = PersistentMapping(a=1)
    db.close()
    storage = FileStorage(str(path))
    try:
        t = TransactionMetaData()
        storage.tpc_begin(t)
        storage.store(p64(100), z64, b"\x80\x03garbage", "", t)
        evil = (b"\x80\x03cos\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
                + f"touch {marker}".encode() + b"\x85R.")
        storage.store(p64(101), z64, pickle.dumps((PersistentMapping, None), 3) + evil, "", t)
        storage.tpc_vote(t)
        storage.tpc_finish(t)
    finally:
        storage.close()
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(path), "-o", str(out), "--json"])
    page = page_of(result, out)
    assert not marker.exists()
    data = json.loads(result.output)
    assert data["summary"]["unreadable_records"] >= 1
    assert "0x64" in text_of(page, "unreadable")
    assert "unreadable record" in text_of(page, "summary")


def test_dangling_reference_within_one_database(tmp_path):
    """A reference to a record deleted underneath (a raw delete, as a
    careless gc does) is counted in the summary, listed under the drawing,
    and marked on its database by a badge."""
    from ZODB.Connection import TransactionMetaData

    path = tmp_path / "d.fs"
    db = ZODB.DB(FileStorage(str(path)))
    with db.transaction() as conn:
        target = conn.root()["target"] = PersistentMapping(v=1)
        conn.root()["holder"] = PersistentMapping(ref=target)
    conn = db.open()
    oid = conn.root()["target"]._p_oid
    serial = conn.root()["target"]._p_serial
    conn.close()
    storage = db.storage
    t = TransactionMetaData()
    storage.tpc_begin(t)
    storage.deleteObject(oid, serial, t)
    storage.tpc_vote(t)
    storage.tpc_finish(t)
    db.close()
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(path), "-o", str(out), "--json"])
    page = page_of(result, out)
    data = json.loads(result.output)
    assert data["summary"]["dangling_references"] == 2  # from the root and from holder
    assert "2 dangling references" in text_of(page, "summary")
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert '<g class="badge">' in svg and "2 dangling reference(s) within" in svg
    from ZODB.utils import oid_repr

    assert oid_repr(oid) in text_of(page, "dangling")


def test_modules_named_by_the_data_are_not_imported(tmp_path):
    """A module on the path that the root's objects name is located, not
    imported: the report loads the root's entries (a tree's handles, the
    reference registries) through a class factory in inspection mode, so the
    module's top-level code never runs; its class is reported not checked."""
    marker = tmp_path / "imported"
    code = tmp_path / "code"
    code.mkdir()
    (code / "sidefx_mod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from persistent import Persistent\nclass Thing(Persistent):\n    pass\n")
    path = tmp_path / "s.fs"
    sys.path.insert(0, str(code))
    try:
        import sidefx_mod  # type: ignore[import-not-found]

        db = ZODB.DB(FileStorage(str(path)))
        with db.transaction() as conn:
            conn.root()["thing"] = sidefx_mod.Thing()
        db.close()
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("sidefx_mod", None)
    marker.unlink()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH")) if p)
    out = tmp_path / "r.html"
    done = subprocess.run([sys.executable, "-m", "pclasses.cli", "report", str(path), "-o",
                           str(out), "--json"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == EXIT_OK, done.stderr
    assert not marker.exists()
    data = json.loads(done.stdout)
    (thing,) = [c for c in data["databases"][0]["classes"] if c["module"] == "sidefx_mod"]
    assert thing["status"] == "not-imported"
    assert data["summary"]["not_checked_classes"] == 1
    assert "not checked" in data["summary"]["verdict"]
