"""The import allow-list judged directly (pclasses.transfer.policy).

The policy is judged by the object a name resolves to, never by its
spelling; these tests hand it real objects and inert facts about records.
"""

from __future__ import annotations

import collections
import copyreg
import datetime
import decimal
import enum
import functools
import operator
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from BTrees.IOBTree import IOBTree
from BTrees.Length import Length
from BTrees.OOBTree import OOBTree, OOBucket, OOSet, OOTreeSet
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from ZODB.blob import Blob

from pclasses.errors import PClassesError
from pclasses.methods import SourceMethod
from pclasses.pclass import PersistentClass
from pclasses.transfer import policy as A


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


class AppThing(Persistent):
    """An ordinary application class."""

    def __init__(self, v: Any = None) -> None:
        self.v = v


class AppPlain:
    pass


class AppProcess(subprocess.Popen):  # type: ignore[type-arg]
    """An application class that inherits its constructor from Popen."""


class AppMethod(SourceMethod):
    """An application class whose __setstate__ compiles source."""


def test_data_types_and_helpers_are_allowed_in_every_use():
    """Builtin data types, datetime/decimal types and the pickle helpers are
    allowed whether called, created with NEWOBJ or named as data."""
    for obj in (set, frozenset, complex, bytearray, bytes, object, datetime.date,
                datetime.datetime, datetime.timedelta, datetime.timezone, decimal.Decimal,
                collections.OrderedDict, collections.deque, copyreg._reconstructor,
                copyreg.__newobj__):
        for uses in (A.USE_REDUCE, A.USE_NEWOBJ, A.USE_OTHER, A.USE_CALLED_BY_HELPER):
            assert A.judge(obj, uses) is None, obj


def test_infrastructure_data_classes_are_allowed():
    """PersistentMapping, PersistentList, BTrees of several families, Length and
    Blob are data classes a record may name."""
    for cls in (PersistentMapping, PersistentList, OOBTree, OOBucket, OOSet, OOTreeSet,
                IOBTree, Length, Blob, Persistent):
        assert A.judge(cls, A.USE_CLASS_META) is None, cls
        assert A.judge(cls, A.USE_NEWOBJ) is None, cls


def test_application_classes_are_allowed():
    """Classes of the application (not stdlib, not infrastructure) are allowed,
    called or not."""
    assert A.judge(AppThing, A.USE_CLASS_META) is None
    assert A.judge(AppPlain, A.USE_REDUCE) is None
    assert A.judge(AppPlain, A.USE_NEWOBJ | A.USE_OTHER) is None


def test_the_imported_roots_class_must_be_persistent():
    """The root record's class (made during the import) must be persistent: a
    plain class or a data type there is refused, not left to fail in ZODB."""
    root = A.USE_CLASS_META | A.USE_ROOT_CLASS
    assert "not persistent" in (A.judge(AppPlain, root) or "")
    assert "not persistent" in (A.judge(set, root) or "")
    assert A.judge(AppThing, root) is None


@pytest.mark.parametrize("obj", [os.system, eval, exec, compile, getattr, open,
                                 functools.partial, operator.attrgetter,
                                 operator.methodcaller, subprocess.Popen, subprocess.call,
                                 map, copyreg.__reduce__ if hasattr(copyreg, "__reduce__")
                                 else copyreg.pickle, os.popen, type, pickle.loads])
def test_callables_of_the_standard_library_are_refused(obj):
    """Functions, builtins and standard-library classes (partial, attrgetter,
    methodcaller, Popen, map, type) are refused, whatever the use."""
    for uses in (A.USE_REDUCE, A.USE_NEWOBJ, A.USE_OTHER, A.USE_CLASS_META):
        assert A.judge(obj, uses) is not None, (obj, uses)


def test_infrastructure_classes_outside_the_data_list_are_refused():
    """Infrastructure classes that are not listed data classes (a storage, a
    database, a transaction manager) are refused."""
    import transaction
    import ZODB
    from ZODB.FileStorage import FileStorage

    for cls in (FileStorage, ZODB.DB, transaction.TransactionManager):
        assert "infrastructure" in (A.judge(cls, A.USE_REDUCE) or "")


def test_application_class_inheriting_a_dangerous_constructor_is_refused_when_called():
    """A class of the application whose __init__ is subprocess.Popen's is
    judged by that: refused when called, allowed when only created with NEWOBJ."""
    why = A.judge(AppProcess, A.USE_REDUCE)
    assert why is not None and "subprocess.Popen" in why
    assert A.judge(AppProcess, A.USE_NEWOBJ) is None


class AppError(Exception):
    """An application exception (stored in an error log, say)."""


class AppColour(enum.Enum):
    RED = 1


def test_application_exceptions_and_enums_inherit_harmless_hooks():
    """Application subclasses of Exception and Enum may be called (their
    hooks only store what they are given); the bases themselves stay refused."""
    assert A.judge(AppError, A.USE_REDUCE) is None
    assert A.judge(AppColour, A.USE_REDUCE) is None
    assert A.judge(Exception, A.USE_REDUCE) is not None
    assert A.judge(enum.Enum, A.USE_REDUCE) is not None


def test_code_classes_need_allow_code():
    """SourceMethod, PersistentClass, any metaclass and subclasses of
    SourceMethod are refused unless allow_code=True."""
    code = A.ImportPolicy(allow_code=True)
    for cls in (SourceMethod, PersistentClass, AppMethod, type(AppThing)):
        why = A.judge(cls, A.USE_NEWOBJ)
        assert why is not None and "code" in why, cls
        assert A.judge(cls, A.USE_NEWOBJ, code) is None, cls


def test_strict_mode_allows_only_named_packages_and_data_types():
    """strict=(pkg,) allows classes of pkg (and its subpackages) and data
    types; everything else, even PersistentMapping, needs its package named;
    strict never widens the rules."""
    strict = A.ImportPolicy(strict=("test_import_policy",))
    assert A.judge(AppThing, A.USE_CLASS_META, strict) is None
    assert A.judge(datetime.date, A.USE_REDUCE, strict) is None
    assert "strict" in (A.judge(PersistentMapping, A.USE_CLASS_META, strict) or "")
    both = A.ImportPolicy(strict=("test_import_policy", "persistent"))
    assert A.judge(PersistentMapping, A.USE_CLASS_META, both) is None
    naming_stdlib = A.ImportPolicy(strict=("subprocess", "os"))
    assert A.judge(subprocess.Popen, A.USE_REDUCE, naming_stdlib) is not None
    assert A.judge(os.system, A.USE_REDUCE, naming_stdlib) is not None
    assert A.ImportPolicy(strict="tests").strict == ("tests",)


@pytest.mark.parametrize("bad", ["", "a..b", "1x", "a b"])
def test_strict_names_are_checked(bad):
    """A malformed strict package name is an ImportPolicyError (a PClassesError)."""
    with pytest.raises(PClassesError):
        A.ImportPolicy(strict=(bad,))


def _resolver(objects: dict[tuple[str, str], Any]) -> Any:
    asked: list[tuple[str, str]] = []

    def resolve(module: str, name: str) -> tuple[bool, Any]:
        asked.append((module, name))
        if (module, name) in objects:
            return True, objects[module, name]
        return False, None

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def test_check_globals_reports_refused_with_reasons_and_missing():
    """check_globals returns refused names with reasons and missing names; a
    database-resident class missing in the target is listed as missing."""
    resolve = _resolver({("os", "system"): os.system,
                         ("persistent.mapping", "PersistentMapping"): PersistentMapping,
                         ("myapp", "Thing"): AppThing})
    verdict = A.judge_globals(
        {("os", "system"): A.USE_REDUCE,
         ("persistent.mapping", "PersistentMapping"): A.USE_CLASS_META,
         ("myapp", "Thing"): A.USE_NEWOBJ,
         ("gone", "Thing"): A.USE_CLASS_META,
         ("*abc", "Doc"): A.USE_CLASS_META},
        resolve, lambda m, n: False)
    assert verdict.refused_names == ["os.system"]
    assert verdict.refused[("os", "system")] == "not a class"
    assert verdict.missing[0] == "*abc.Doc (database-resident class, guid abc)"
    assert verdict.missing[1:] == ["gone.Thing"]
    assert verdict.to_dict()["refused"] == {"os.system": "not a class"}


def test_a_third_party_name_re_exporting_a_stdlib_callable_is_judged_by_the_object():
    """A name spelled as an application module but resolving to subprocess.Popen
    or os.system is refused: the object decides, not the spelling."""
    resolve = _resolver({("niceapp", "Runner"): subprocess.Popen,
                         ("niceapp", "run"): os.system})
    verdict = A.judge_globals({("niceapp", "Runner"): A.USE_REDUCE,
                               ("niceapp", "run"): A.USE_OTHER},
                              resolve, lambda m, n: False)
    assert verdict.refused_names == ["niceapp.Runner", "niceapp.run"]


def test_main_and_unimported_stdlib_modules_are_never_resolved():
    """Names in __main__ or in a standard-library module not yet imported are
    refused without asking the resolver (which would import them)."""
    assert "antigravity" not in sys.modules
    resolve = _resolver({})
    verdict = A.judge_globals({("__main__", "x"): A.USE_REDUCE,
                               ("antigravity", "fly"): A.USE_OTHER},
                              resolve, lambda m, n: False)
    assert verdict.refused_names == ["__main__.x", "antigravity.fly"]
    assert resolve.asked == []
    assert "antigravity" not in sys.modules


def test_python2_spellings_are_judged_as_what_the_unpickler_loads():
    """copy_reg._reconstructor and __builtin__.set resolve as copyreg/builtins."""
    resolve = _resolver({("copyreg", "_reconstructor"): copyreg._reconstructor,
                         ("builtins", "set"): set})
    verdict = A.judge_globals({("copy_reg", "_reconstructor"): A.USE_REDUCE,
                               ("__builtin__", "set"): A.USE_REDUCE},
                              resolve, lambda m, n: False)
    assert verdict.refused == {} and verdict.missing == []


def test_resolution_errors_including_system_exit_become_refusals():
    """A resolver that raises (even SystemExit or KeyboardInterrupt) yields a
    refusal, never the exception."""
    def resolve(module: str, name: str) -> tuple[bool, Any]:
        raise {"a": SystemExit, "b": KeyboardInterrupt, "c": RuntimeError}[module]()

    verdict = A.judge_globals({("a", "x"): 1, ("b", "x"): 1, ("c", "x"): 1},
                              resolve, lambda m, n: False)
    assert verdict.refused_names == ["a.x", "b.x", "c.x"]


def test_refused_prefix_names_stay_inert():
    """Names already made inert by an earlier import are neither missing nor refused."""
    verdict = A.judge_globals({(A.REFUSED_PREFIX + "os", "system"): A.USE_REDUCE},
                              _resolver({}), lambda m, n: False)
    assert verdict.refused == {} and verdict.missing == []


# ---------------------------------------------------------------------------
# call-site facts


META = pickle.dumps(PersistentMapping, 3)


def facts(state: bytes) -> A.CallFacts:
    return A.call_facts(META + state)


def test_ordinary_pickles_of_every_protocol_have_no_forbidden_shapes():
    """Pickles of ordinary data, protocols 0 to 5, show no computed call and no
    state set on a global."""
    value = {"a": OOBTree(), "s": {1, 2}, "b": b"xx", "d": datetime.date(2000, 1, 2),
             "dec": decimal.Decimal("1.5"), "l": [1, (2, 3)], "od": collections.OrderedDict(a=1)}
    for proto in range(6):
        f = A.call_facts(pickle.dumps(PersistentMapping, proto) + pickle.dumps(value, proto))
        assert f == A.CallFacts(), proto


def test_a_call_of_a_call_result_is_a_computed_call():
    """functools.partial(subprocess.Popen, ...) called by REDUCE is reported."""
    frag = (b"\x80\x02cfunctools\npartial\ncsubprocess\nPopen\n\x85R"
            b"((X\x04\x00\x00\x00trueltR.")
    f = facts(frag)
    assert f.non_global_calls and "computed callable" in f.problems[0]


def test_a_call_through_the_memo_of_a_global_is_not_computed():
    """A global fetched back from the memo and called is still a global call."""
    frag = (b"\x80\x02cdatetime\ndate\nq\x00M\xd0\x07K\x01K\x01\x87R"
            b"h\x00M\xd1\x07K\x01K\x01\x87R\x86.")
    assert facts(frag) == A.CallFacts()


def test_obj_newobj_ex_and_stack_global_calls_of_computed_callables():
    """OBJ of a call result and NEWOBJ_EX of a call result are computed calls;
    a STACK_GLOBAL whose names are not literals is a global item (of no name,
    which check_globals refuses)."""
    obj = b"\x80\x02(cfunctools\npartial\ncos\nsystem\n\x85RX\x01\x00\x00\x00xo."
    assert facts(obj).non_global_calls
    newobj_ex = b"\x80\x04cbuiltins\ngetattr\n)R)}\x92."
    assert facts(newobj_ex).non_global_calls
    sg = b"\x80\x04K\x01K\x02\x93)R."
    assert facts(sg) == A.CallFacts()
    verdict = A.judge_globals({(None, None): A.USE_REDUCE}, _resolver({}),  # type: ignore[dict-item]
                              lambda m, n: False)
    assert verdict.refused_names == ["None.None"]


def test_build_setitem_append_on_a_global_are_reported():
    """BUILD, SETITEM and APPEND applied to a global item are reported with its name."""
    build = b"\x80\x02cmyapp\nThing\n}X\x01\x00\x00\x00aK\x01sb."
    assert facts(build).mutated_globals == (("myapp", "Thing"),)
    setitem = b"\x80\x02cmyapp\nThing\nX\x01\x00\x00\x00aK\x01s."
    assert facts(setitem).mutated_globals == (("myapp", "Thing"),)
    append = b"\x80\x02cmyapp\nThing\nK\x01a."
    assert facts(append).problems == ["state set on the global myapp.Thing"]


def test_persistent_reference_called_is_reported_with_its_oid():
    """A NEWOBJ of a persistent reference (a plain instance of a
    database-resident class) is reported as a pid call with the oid."""
    frag = b"\x80\x03C\x08\x00\x00\x00\x00\x00\x00\x00\x07Q)\x81."
    f = facts(frag)
    assert f.pid_calls == (b"\x00\x00\x00\x00\x00\x00\x00\x07",) and not f.non_global_calls


def test_record_facts_agree_with_the_walk_on_the_analyzers_fields():
    """record_facts reads the record analyzer's call-site fields and agrees
    with the pure-Python walk (which it falls back to for persistent calls)."""
    from pclasses.record import analyze

    samples = [
        b"\x80\x02cfunctools\npartial\ncsubprocess\nPopen\n\x85R((X\x04\x00\x00\x00trueltR.",
        b"\x80\x02cmyapp\nThing\n}X\x01\x00\x00\x00aK\x01sb.",
        b"\x80\x02cmyapp\nThing\nX\x01\x00\x00\x00aK\x01s.",
        b"\x80\x02cmyapp\nThing\nK\x01a.",
        b"\x80\x03C\x08\x00\x00\x00\x00\x00\x00\x00\x07Q)\x81.",
        pickle.dumps({"a": OOBTree(), "s": {1, 2}}, 3),
    ]
    for state in samples:
        data = META + state
        ours = A.record_facts(data, analyze(data))
        walked = A.call_facts(data)
        assert ours.problems == walked.problems, state
        assert ours.pid_calls == walked.pid_calls, state
    assert A.record_facts(META + b"\x80\x02N.", object()) == A.CallFacts()


def test_malformed_streams_raise_value_error():
    """Bytes that are not two pickles raise ValueError (callers map it to
    their error after the analyzer's own guards)."""
    for bad in (b"", META, META + b"\x80\x02(", META + b"\x80\x02t.", b"\xff"):
        with pytest.raises(ValueError):
            A.call_facts(bad)


def test_judged_class_from_a_re_exporting_module_on_disk(tmp_path: Path):
    """A real module on sys.path that re-exports subprocess.Popen under its own
    name: the object it resolves to is judged, and refused."""
    write_module(tmp_path, "h6_reexport_mod", "from subprocess import Popen as Runner\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import h6_reexport_mod  # type: ignore[import-not-found]

        assert A.judge(h6_reexport_mod.Runner, A.USE_REDUCE) is not None
        assert A.judge(h6_reexport_mod.Runner, A.USE_CLASS_META) is not None
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("h6_reexport_mod", None)
