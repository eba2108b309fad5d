"""Frozen names: module paths and strings that databases store never move.

A record names its class by dotted path and ZODB imports that path when the
record loads, so a database written by one version of pclasses must still
load with every later one (design/decisions.md, D14).
"""

from __future__ import annotations

import importlib
import io
import pickletools
import re
from pathlib import Path

import pytest
import transaction
from ZODB.FileStorage import FileStorage

import pclasses

#: Every ``pclasses.*`` global a database may name (keep in step with D14).
FROZEN = [
    "pclasses.pclass.PersistentClass",
    "pclasses.classtable.ClassTable",
    "pclasses.methods.SourceMethod",
    "pclasses.demo_models.Folder",
    "pclasses.demo_models.Document",
    "pclasses.demo_models.Product",
    "pclasses.demo_models.Stamp",
    "pclasses.demo_models.Widget",
    "pclasses.refs.registry.RefRegistry",
    "pclasses.refs.trees.KeyTree",
    "pclasses.refs.trees.KeyBucket",
    "pclasses.refs.trees.KeySet",
    "pclasses.refs.trees.KeySetBucket",
    "pclasses.refs.folder.Folder",
    "pclasses.refs.descriptor.Ref",
    "pclasses.refs.descriptor.RefSet",
    "pclasses.tree.handle.DatabaseHandle",
    "pclasses.tree.reference.RemoteReference",
    "pclasses.stores.sqlstore.SQLStore",
    "pclasses.stores.stubs.Stub",
]

#: Strings stored in records: (module, attribute, value).
FROZEN_STRINGS = [
    ("pclasses.classtable", "GUID_PREFIX", "*"),
    ("pclasses.classtable", "TABLE_KEY", "__pclasses_class_table__"),
    ("pclasses.pclass", "_NAME_KEY", "__pclasses_name__"),
    ("pclasses.refs.registry", "REGISTRY_KEY", "__pclasses_refs__"),
    ("pclasses.refs.registry", "STATE_KEY", "__pclasses_refs__"),
    ("pclasses.tree.handle", "HANDLES_KEY", "pclasses.databases"),
    ("pclasses.tree.pins", "PINS_KEY", "pclasses.pins"),
    ("pclasses.stores.dialect", "VERSION_COLUMN", "pclasses_version"),
    ("pclasses.stores.dialect", "SEQUENCES_TABLE", "pclasses_sequences"),
    ("pclasses.stores.dialect", "GID_PREFIX", "pclasses:"),
    ("pclasses.stores.jar", "EXTENSION_KEY", "pclasses.sql"),
    ("pclasses.stores.dialect", "PREPARED_TABLE", "pclasses_prepared"),
    ("pclasses.stores.stubs", "STUBS_KEY", "pclasses.stubs"),
    ("pclasses.stores.split", "SPLIT_KEY", "pclasses.split"),
]

DECISIONS = Path(__file__).resolve().parent.parent / "design" / "decisions.md"


@pytest.mark.parametrize("dotted", FROZEN)
def test_frozen_class_is_where_databases_look_for_it(dotted):
    """Each frozen class imports by the dotted path stored in databases, and
    says so itself (``__module__``/``__qualname__``, what pickle writes)."""
    module_name, _, qualname = dotted.rpartition(".")
    module = importlib.import_module(module_name)
    cls = getattr(module, qualname)
    assert (cls.__module__, cls.__qualname__) == (module_name, qualname)


@pytest.mark.parametrize("module_name, attribute, value", FROZEN_STRINGS)
def test_frozen_strings_keep_their_value(module_name, attribute, value):
    """The strings records hold (guid prefix, class-table key, name key) never change."""
    assert getattr(importlib.import_module(module_name), attribute) == value


def test_decision_lists_the_frozen_names():
    """design/decisions.md (D14) lists exactly the frozen classes of this test."""
    text = DECISIONS.read_text(encoding="utf-8")
    section = text.split("## D14.", 1)[1].split("\n## ", 1)[0]
    listed: set[str] = set()
    for item in re.findall(r"^- (.+?):", section, flags=re.M | re.S):
        names = re.findall(r"`([\w.]+)`", item)
        module = names[0].rpartition(".")[0]
        listed.update(n if "." in n else f"{module}.{n}" for n in names)
    assert listed == set(FROZEN)
    for _module, _attribute, value in FROZEN_STRINGS:
        assert f"`{value}`" in section


def _globals(data: bytes) -> set[str]:
    """The dotted globals both pickles of a record name (read, never run)."""
    found = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        for op, arg, _pos in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                found.add(arg.replace(" ", "."))
            elif isinstance(arg, str):
                strings.append(arg)
            if op.name == "STACK_GLOBAL":
                found.add(".".join(strings[-2:]))
    return found


def test_a_database_names_only_frozen_classes_of_ours(tmp_path):
    """A database using every stored feature (resident classes with and
    without persistent instances, source methods, the class table) names no
    ``pclasses.*`` global outside the frozen list."""
    path = str(tmp_path / "Data.fs")
    db = pclasses.open(path)
    try:
        conn = db.open()
        root = conn.root()
        note = pclasses.define_class(conn, "Note", namespace={
            "greet": pclasses.method("def greet(self):\n    return 'hi'\n")})
        tag = pclasses.define_class(conn, "Tag", bases=(object,))
        root["note"] = note()
        root["tags"] = [tag(), tag()]
        transaction.commit()
        conn.close()
    finally:
        db.close()
    storage = FileStorage(path, read_only=True)
    try:
        named = set()
        for txn in storage.iterator():
            for record in txn:
                named |= _globals(record.data)
    finally:
        storage.close()
    ours = {n for n in named if n.startswith("pclasses.")}
    assert "pclasses.pclass.PersistentClass" in ours  # the scan saw our records
    assert ours <= set(FROZEN), ours - set(FROZEN)
