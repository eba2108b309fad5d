"""Round-trip properties of generated object graphs (issue #7).

Every graph comes from :func:`strategies.graph_specs`: persistent objects of
every kind (importable classes, PersistentMapping, PersistentList, BTrees,
blobs, instances of database-resident classes), plain objects shared and in
cycles, weak references, values of every picklable builtin type, and
cross-database references between the two databases of a ZConfig
multi-database (FileStorages with blob directories in a temporary
directory).  Graphs are compared with :func:`strategies.graph_form`: shape,
the pattern of sharing, classes (by dotted name, or by guid for classes
stored in the database) and values, never oids or bytes.

* store, then load in a fresh connection and a fresh database process
  state: the same graph;
* export a subtree, import it into another database (and into the same
  one): the same graph, under new oids, cross-database references kept;
* through a broken phase (a module vanishes and/or database-resident
  classes leave the class table, containers holding their objects are
  edited and committed, the classes come back): nothing is lost;
* offline renames (:func:`pclasses.rename_classes` on the closed files),
  then loading with the new names: the same graph under the new names.
"""

from __future__ import annotations

import datetime
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pclasses
from strategies import (
    GRAPH_CLASSES_SOURCE,
    MAIN,
    OTHER,
    GraphClasses,
    GraphForm,
    GraphSpec,
    ObjSpec,
    PlainSpec,
    ResidentSpec,
    VanishingModule,
    assert_same_form,
    build_graph,
    close_all,
    ensure_residents,
    graph_form,
    graph_specs,
    write_zconfig,
)

#: The heavier properties (several databases opened per example) run a
#: third of the profile's examples: about 20 under ``ci``, hundreds under
#: ``deep``.
HEAVY = settings(
    max_examples=max(10, settings().max_examples // 3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)


#: the ``deep`` profile runs far longer than the suite's default timeout
pytestmark = pytest.mark.timeout(300 if settings().max_examples <= 100 else 3600)


def _open(conf: str) -> tuple[Any, Any, transaction.TransactionManager]:
    db = pclasses.open(conf, pclasses.ClassRegistry())
    tm = transaction.TransactionManager()
    return db, db.open(tm), tm


def _persistent_objects(root: Any, external: tuple[str, ...] = ()) -> list[Any]:
    """The persistent objects of the graph (not entering ``external`` databases)."""
    g = GraphForm(external=frozenset(external))
    g.form(root)
    return [x for x in g.keep if hasattr(x, "_p_oid")]


def _store(conf: str, spec: GraphSpec, classes: GraphClasses | None = None) -> Any:
    """Build and commit the graph under ``root['g']``; its form."""
    db, conn, tm = _open(conf)
    try:
        g = build_graph(spec, conn, classes)
        conn.root()["g"] = g
        tm.commit()
        return graph_form(g)
    finally:
        tm.abort()
        conn.close()
        close_all(db)


class Modules:
    """Module files in a directory on ``sys.path``, one per name, made once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.made: dict[str, VanishingModule] = {}

    def __call__(self, key: str, source: str = GRAPH_CLASSES_SOURCE) -> VanishingModule:
        if key not in self.made:
            self.made[key] = VanishingModule(self.directory, source, prefix=f"pcl_rt_{key}")
        return self.made[key]


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("roundtrip_modules")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(directory))
        made = Modules(directory)
        try:
            yield made
        finally:
            for m in made.made.values():
                m.hide()


# ---------------------------------------------------------------------------
# store, then load


@given(graph_specs(databases=(MAIN, OTHER)))
@example(  # one plain object in two buckets of a BTree: two copies once stored
    GraphSpec(objects=[ObjSpec("oobtree", items=[("", ("plain", 0)), ("g", ("plain", 0))],
                               fill=70)],
              plains=[PlainSpec()]))
@example(  # a datetime with fold=1 (pickle protocol 3 drops fold)
    GraphSpec(objects=[ObjSpec("node")],
              extra=[("x_a", ("v", datetime.datetime(2000, 1, 1, fold=1,
                                                     tzinfo=datetime.timezone.utc)))]))
def test_store_then_load_gives_the_same_graph(spec: GraphSpec) -> None:
    """A committed graph loads as the same graph in another connection of
    the same database and in a database opened afresh (new registry)."""
    with tempfile.TemporaryDirectory() as d:
        conf = write_zconfig(d)
        db, conn, tm = _open(conf)
        try:
            g = build_graph(spec, conn)
            conn.root()["g"] = g
            tm.commit()
            expected = graph_form(g)
            tm2 = transaction.TransactionManager()
            conn2 = db.open(tm2)
            assert_same_form(expected, graph_form(conn2.root()["g"]))
            tm2.abort()
            conn2.close()
        finally:
            tm.abort()
            conn.close()
            close_all(db)
        db, conn, tm = _open(conf)
        try:
            assert_same_form(expected, graph_form(conn.root()["g"]))
            assert not any(pclasses.find_broken(each) for each in db.databases.values())
        finally:
            tm.abort()
            conn.close()
            close_all(db)


# ---------------------------------------------------------------------------
# export, then import


def _copy_database(src: str, dst: str, name: str) -> None:
    shutil.copyfile(Path(src) / f"{name}.fs", Path(dst) / f"{name}.fs")
    if (Path(src) / f"{name}.blobs").exists():
        shutil.copytree(Path(src) / f"{name}.blobs", Path(dst) / f"{name}.blobs")


@HEAVY
@given(graph_specs(databases=(MAIN, OTHER), transferable=True))
def test_export_then_import_gives_the_same_graph_with_new_oids(spec: GraphSpec) -> None:
    """export_subtree then import_subtree, into another multi-database (its
    second database a copy of the source's, so cross-database references
    still point somewhere) and into the source database itself: the same
    graph each time, every object of the subtree under a new oid, objects
    of the other database referred to as they were, and the source intact."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "src"
        dst = Path(d) / "dst"
        src.mkdir()
        dst.mkdir()
        src_conf = write_zconfig(src)
        dst_conf = write_zconfig(dst)
        export = io.BytesIO()
        db, conn, tm = _open(src_conf)
        try:
            g = build_graph(spec, conn)
            conn.root()["g"] = g
            tm.commit()
            expected = graph_form(g, external=[OTHER])
            source_oids = {o._p_oid for o in _persistent_objects(g, (OTHER,))}
            manifest = pclasses.export_subtree(conn, g, export, name="copy")
            assert manifest.record_count >= 1
            # into the source database itself, next to the original
            export.seek(0)
            copy = pclasses.import_subtree(conn, export, into=conn.root())
            tm.commit()
            assert_same_form(expected, graph_form(copy, external=[OTHER]))
            _check_new_oids(copy, source_oids)
            assert_same_form(expected, graph_form(conn.root()["g"], external=[OTHER]))
        finally:
            tm.abort()
            conn.close()
            close_all(db)
        db, conn, tm = _open(src_conf)
        try:  # both, from the records
            assert_same_form(expected, graph_form(conn.root()["g"], external=[OTHER]))
            assert_same_form(expected, graph_form(conn.root()["copy"], external=[OTHER]))
        finally:
            tm.abort()
            conn.close()
            close_all(db)
        _copy_database(str(src), str(dst), OTHER)
        db, conn, tm = _open(dst_conf)
        try:
            ensure_residents(spec, conn)
            tm.commit()
            export.seek(0)
            pclasses.import_subtree(conn, export, into=conn.root())
            tm.commit()
        finally:
            tm.abort()
            conn.close()
            close_all(db)
        db, conn, tm = _open(dst_conf)
        try:
            assert_same_form(expected, graph_form(conn.root()["copy"], external=[OTHER]))
            assert not any(pclasses.find_broken(each) for each in db.databases.values())
        finally:
            tm.abort()
            conn.close()
            close_all(db)


def _check_new_oids(copy: Any, source_oids: set[bytes]) -> None:
    """Every object of the copy (the main database's part of the graph) has
    an oid none of the originals has; references into the other database
    are compared by oid by :func:`graph_form` already."""
    copied = _persistent_objects(copy, (OTHER,))
    assert len(copied) == len(source_oids)
    for obj in copied:
        assert obj._p_jar.db().database_name == MAIN
        assert obj._p_oid not in source_oids, obj


# ---------------------------------------------------------------------------
# through a broken phase


def _edit(obj: Any, kind: str) -> None:
    """One committed change of a container (or object) of the graph."""
    if kind in ("mapping", "oobtree"):
        obj["edited"] = 1
    elif kind == "iobtree":
        obj[99999] = "edited"
    elif kind == "list":
        obj.append("edited")
    else:
        obj.edited = 1


def _resident_needs_module(spec: GraphSpec, k: int) -> bool:
    base = spec.residents[k].base
    if base == "node":
        return True
    return isinstance(base, int) and _resident_needs_module(spec, base)


def _loads_broken(spec: GraphSpec, i: int, hidden: bool, removed: set[str]) -> bool | None:
    """Whether objects[i] loads broken in the broken phase (``None``: not
    said here, a database-resident class whose base went missing)."""
    o = spec.objects[i]
    if o.kind in ("node", "newargs"):
        return hidden
    if o.kind == "resident":
        assert o.resident is not None
        if spec.residents[o.resident].guid in removed:
            return True
        return None if hidden and _resident_needs_module(spec, o.resident) else False
    return False


def _expected_broken(spec: GraphSpec, module: str, hidden: bool, removed: set[str]) -> set[str]:
    """The classes find_broken must list in the broken phase."""
    names = set()
    if hidden:
        if any(o.kind == "node" for o in spec.objects) or any(
                r.base == "node" for r in spec.residents):
            names.add(f"{module}.Node")
        if any(o.kind == "newargs" for o in spec.objects):
            names.add(f"{module}.NewArgs")
        if any(p.resident is None for p in spec.plains) or any(
                r.base == "plainbase" for r in spec.residents):
            names.add(f"{module}.Plain")
    for o in spec.objects:
        if o.kind == "resident":
            assert o.resident is not None
            r = spec.residents[o.resident]
            if r.guid in removed:
                names.add(f"*{r.guid}.{r.name}")
    return names


@st.composite
def broken_phases(draw: Any) -> tuple[GraphSpec, bool, list[str], list[int]]:
    """A graph, whether its module vanishes, the guids of the classes taken
    out of the class table, and the objects edited meanwhile."""
    spec = draw(graph_specs(databases=(MAIN, OTHER)))
    guids = [r.guid for r in spec.residents]
    removed = sorted(draw(st.sets(st.sampled_from(guids)))) if guids else []
    hidden = draw(st.booleans()) if removed else True
    edits = draw(st.lists(st.integers(0, len(spec.objects) - 1), unique=True))
    return spec, hidden, removed, edits


def _apply_edits(g: Any, spec: GraphSpec, edits: list[int], hidden: bool,
                 removed: set[str], check: bool) -> None:
    """Edit the graph's root and the objects ``edits`` names that are not
    broken in the broken phase (``hidden``, ``removed``); ``check`` that
    objects are broken exactly when their class is missing."""
    g["edited"] = True
    for i in edits:
        obj = g["objs"][i]
        broken = _loads_broken(spec, i, hidden, removed)
        if check and broken is not None:
            assert pclasses.is_broken(obj) == broken, (i, obj)
        if broken is False and spec.objects[i].kind != "blob":
            _edit(obj, spec.objects[i].kind)


@HEAVY
@given(broken_phases())
@example(  # tests/test_regressions.py: a resident class whose base goes missing
    (GraphSpec(residents=[ResidentSpec("Note", "guid-0", "node")],
               objects=[ObjSpec("resident", resident=0)]), True, [], []))
def test_nothing_is_lost_through_a_broken_phase(modules: Modules, case: Any) -> None:
    """Store a graph; make its module vanish and/or take database-resident
    classes out of the class table; edit and commit containers holding the
    broken objects (and the graph's root, which holds all of them); bring the
    classes back (the module file, the classes under their guids): the graph
    is the one a database that never lost its classes holds after the same
    edits.  Meanwhile find_broken lists exactly the classes that are gone."""
    spec, hidden, removed_list, edits = case
    removed = set(removed_list)
    vanishing = modules("broken")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d) / "work"
        ref = Path(d) / "ref"
        work.mkdir()
        ref.mkdir()
        conf = write_zconfig(work)
        ref_conf = write_zconfig(ref)
        vanishing.show()
        _store(conf, spec, vanishing.classes())
        for name in (MAIN, OTHER):
            _copy_database(str(work), str(ref), name)
        # the reference: same edits, classes present
        db, conn, tm = _open(ref_conf)
        try:
            _apply_edits(conn.root()["g"], spec, edits, hidden, removed, check=False)
            tm.commit()
        finally:
            tm.abort()
            conn.close()
            close_all(db)
        db, conn, tm = _open(ref_conf)
        try:
            expected = graph_form(conn.root()["g"])
        finally:
            conn.close()
            close_all(db)
        # the broken phase
        class_oids = {}
        db, conn, tm = _open(conf)
        try:
            table = pclasses.class_table(conn)
            for guid in removed:
                class_oids[guid] = table[guid]._p_oid
                del table[guid]
            tm.commit()
        finally:
            tm.abort()
            conn.close()
            close_all(db)
        if hidden:
            vanishing.hide()
        db, conn, tm = _open(conf)
        try:
            reports = [pclasses.find_broken(each) for each in db.databases.values()]
            assert {c.dotted for r in reports for c in r} == _expected_broken(
                spec, vanishing.name, hidden, removed)
            assert not any(r.unreadable for r in reports)
            _apply_edits(conn.root()["g"], spec, edits, hidden, removed, check=True)
            tm.commit()
        finally:
            tm.abort()
            conn.close()
            close_all(db)
        # the classes come back
        vanishing.show()
        db, conn, tm = _open(conf)
        try:
            table = pclasses.class_table(conn)
            for guid, oid in class_oids.items():
                table[guid] = conn.get(oid)
            tm.commit()
        finally:
            tm.abort()
            conn.close()
            close_all(db)
        db, conn, tm = _open(conf)
        try:
            assert_same_form(expected, graph_form(conn.root()["g"]))
            assert not any(pclasses.find_broken(each) for each in db.databases.values())
        finally:
            conn.close()
            close_all(db)


# ---------------------------------------------------------------------------
# offline renames

#: The classes a graph is built with, and the new names they can get.
RENAMED_SOURCE = GRAPH_CLASSES_SOURCE + '''

Knot = type("Knot", (Node,), {"__module__": __name__})
Flat = type("Flat", (Plain,), {"__module__": __name__})


class Args(NewArgs):
    pass
'''


@st.composite
def renames(draw: Any) -> tuple[GraphSpec, dict[str, str], bool, bool]:
    """A graph, the classes to rename (``Node``/``Plain``/``NewArgs`` to
    the same or a new name in the new module), whether to rename the whole
    module (``old.*=new.*``) instead, and whether the old module is gone
    when the renamed records are loaded."""
    spec = draw(graph_specs(databases=(MAIN, OTHER)))
    star = draw(st.booleans())
    mapping: dict[str, str] = {}
    if not star:
        for old, new in (("Node", "Knot"), ("Plain", "Flat"), ("NewArgs", "Args")):
            choice = draw(st.sampled_from(["keep", "same", "new"]))
            if choice != "keep":
                mapping[old] = old if choice == "same" else new
    everything = star or len(mapping) == 3
    hide_old = draw(st.booleans()) if everything else False
    return spec, mapping, star, hide_old


@HEAVY
@given(renames())
def test_offline_renames_then_loading_with_new_names_gives_the_same_graph(
        modules: Modules, case: Any) -> None:
    """rename_classes on the closed files (both databases of the ZConfig
    target), then loading with the new names (the old module gone when every
    class was renamed): the same graph, with the renamed classes."""
    spec, mapping, star, hide_old = case
    old = modules("old")
    new = modules("new", RENAMED_SOURCE)
    with tempfile.TemporaryDirectory() as d:
        conf = write_zconfig(d)
        old.show()
        new.show()
        expected = _store(conf, spec, old.classes())
        if star:
            rules = {f"{old.name}.*": f"{new.name}.*"}
            table = {f"{old.name}.{c}": f"{new.name}.{c}" for c in ("Node", "Plain", "NewArgs")}
        else:
            rules = {f"{old.name}.{a}": f"{new.name}.{b}" for a, b in mapping.items()}
            table = dict(rules)
        report = pclasses.rename_classes(conf, rules)
        assert not report.skipped and not report.unreadable
        assert set(report.renamed) <= set(table)
        assert sorted(report.databases) == [MAIN, OTHER]
        if hide_old:
            old.hide()
        try:
            db, conn, tm = _open(conf)
            try:
                actual = graph_form(conn.root()["g"])
                assert not any(pclasses.find_broken(each) for each in db.databases.values())
            finally:
                conn.close()
                close_all(db)
        finally:
            old.show()
        expected_renamed = graph_form_renamed(expected, table)
        assert_same_form(expected_renamed, actual)


def graph_form_renamed(form: Any, table: dict[str, str]) -> Any:
    """``form`` with the class names of ``table`` replaced."""
    if isinstance(form, tuple) and len(form) == 2 and form[0] == "class":
        return ("class", table.get(form[1], form[1]))
    if isinstance(form, tuple):
        return tuple(graph_form_renamed(x, table) for x in form)
    if isinstance(form, list):
        return [graph_form_renamed(x, table) for x in form]
    return form
