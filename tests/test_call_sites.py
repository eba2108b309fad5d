"""Call-site facts of the analyzer, for the import checker's policy.

For every REDUCE / NEWOBJ / NEWOBJ_EX / OBJ the analyzer says whether the
callable is a GLOBAL item; a call of anything else (the result of another
call, a memo-fetched non-global, a persistent reference, a literal) is listed
by byte offset in ``Analysis.calls_non_global`` (references also in
``calls_pid``).  BUILD on a GLOBAL (it would set class attributes) and
APPEND(S) / SETITEM(S) / ADDITEMS on a GLOBAL set ``Use.BUILD_TARGET`` /
``Use.ITEMS_TARGET``.  Both twins report the same.
"""

from __future__ import annotations

import datetime
import decimal
import pickle

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from persistent import Persistent
from persistent.mapping import PersistentMapping

from pclasses.record.analyze import HAVE_C_ANALYZE, Use, analyze_c, analyze_py

IMPLS = [analyze_py] + ([analyze_c] if HAVE_C_ANALYZE else [])


class Item(Persistent):
    pass


class Plain:
    def __init__(self, v=1):
        self.v = v


def both(data):
    outs = [impl(data) for impl in IMPLS]
    assert all(o == outs[0] for o in outs)
    return outs[0]


def test_records_zodb_writes_call_only_globals(tmp_path):
    """Every record ZODB writes for ordinary classes (plain objects, dates,
    decimals, sets, mappings) calls only GLOBAL items, and no global is a
    BUILD or item target."""
    db = ZODB.DB(ZODB.FileStorage.FileStorage(str(tmp_path / "Data.fs")))
    conn = db.open()
    root = conn.root()
    root["m"] = PersistentMapping({"p": Plain(3), "d": datetime.date(2020, 1, 2),
                                   "dec": decimal.Decimal("1.5"), "s": {1, 2},
                                   "fs": frozenset({3}), "c": complex(1, 2)})
    root["i"] = Item()
    root["i"].plain = [Plain(i) for i in range(3)]
    transaction.commit()
    n = 0
    for txn in db.storage.iterator():
        for rec in txn:
            a = both(rec.data)
            assert a.calls_non_global == [] and a.calls_pid == []
            assert not any(g.uses & (Use.BUILD_TARGET | Use.ITEMS_TARGET) for g in a.globals)
            n += 1
    assert n >= 3
    conn.close()
    db.close()


META = b"\x80\x02cbuiltins\nobject\nq\x00."


def test_call_of_a_call_result_is_flagged():
    """functools.partial(os.system, 'x')() : the outer REDUCE calls the result
    of the inner one; its offset is reported, the inner call is not."""
    state = (b"\x80\x02cfunctools\npartial\ncos\nsystem\nX\x01\x00\x00\x00x\x86R"
             b")R.")
    data = META + state
    a = both(data)
    outer = len(META) + state.index(b")R.") + 1
    assert a.calls_non_global == [outer] and data[outer] == ord("R")
    assert a.calls_pid == []


def test_memo_fetched_non_global_callable_is_flagged():
    """A call result stored in the memo and fetched again as a callable is
    still not a global."""
    state = (b"\x80\x02cbuiltins\ngetattr\ncos\npath\nX\x04\x00\x00\x00joinq\x05\x86Rq\x06"
             b"0h\x06X\x01\x00\x00\x00a\x85R.")
    data = META + state
    a = both(data)
    (off,) = a.calls_non_global
    assert data[off] == ord("R") and off > len(META) + state.index(b"0h\x06")


def test_memo_fetched_global_callable_is_fine():
    """A GLOBAL fetched from the memo is still a global."""
    state = b"\x80\x02cdatetime\ndate\nq\x01M\xe4\x07K\x01K\x01\x87R0h\x01M\xe5\x07K\x01K\x01\x87R."
    a = both(META + state)
    assert a.calls_non_global == []
    assert a.globals[1].uses & Use.REDUCE


@pytest.mark.parametrize("op", [b"R", b"\x81"])
def test_call_of_a_persistent_reference(op):
    """REDUCE / NEWOBJ on a persistent reference (an instance of a
    database-resident class) is listed in calls_pid and calls_non_global."""
    state = b"\x80\x03C\x08\x00\x00\x00\x00\x00\x00\x00\x05Q)" + op + b"."
    data = META + state
    a = both(data)
    off = len(data) - 2
    assert a.calls_pid == [off] and a.calls_non_global == [off]


def test_obj_and_newobj_ex_on_non_globals():
    """OBJ and NEWOBJ_EX whose class is not a global are flagged too; INST
    always names a global."""
    obj = META + b"\x80\x02(X\x01\x00\x00\x00xK\x01o."
    a = both(obj)
    assert a.calls_non_global == [len(obj) - 2]
    newobj_ex = META + b"\x80\x04K\x01)}\x92."
    a = both(newobj_ex)
    assert a.calls_non_global == [len(newobj_ex) - 2]
    inst = META + b"\x80\x02(K\x01idatetime\ndate\n."
    assert both(inst).calls_non_global == []


def test_build_and_items_on_a_global_are_flagged():
    """BUILD on a GLOBAL (setting class attributes), and APPEND / APPENDS /
    SETITEM / SETITEMS / ADDITEMS on a GLOBAL, set BUILD_TARGET /
    ITEMS_TARGET on that global; BUILD on an instance does not."""
    build = META + b"\x80\x02cpclasses.methods\nSourceMethod\n}X\x01\x00\x00\x00xK\x01sb."
    (g,) = [g for g in both(build).globals if g.name == "SourceMethod"]
    assert g.uses & Use.BUILD_TARGET and not g.uses & Use.ITEMS_TARGET
    for tail in (b"K\x01a.", b"(K\x01e.", b"K\x01K\x02s.", b"(K\x01K\x02u.", b"(K\x01\x90."):
        data = META + b"\x80\x04cbuiltins\nlist\n" + tail
        (g,) = [g for g in both(data).globals if g.name == "list"]
        assert g.uses & Use.ITEMS_TARGET and not g.uses & Use.BUILD_TARGET, tail
    fine = pickle.dumps(object, 2) + pickle.dumps(Plain(5), 2)
    assert not any(g.uses & (Use.BUILD_TARGET | Use.ITEMS_TARGET) for g in both(fine).globals)
