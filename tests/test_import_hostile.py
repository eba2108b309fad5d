"""Hostile export files: nothing from an imported file ever runs.

Each case is a record payload that a real unpickler would turn into code
execution (it creates a marker file), drawn from fickling's bypass list and
the pickle-scanning literature: gadgets of ``functools``, ``operator``,
``builtins``, ``copyreg``, ``__reduce_ex__`` chains, ``__setstate__``
gadgets (this package's own ``SourceMethod``), a third-party module that
re-exports a standard-library callable, class names in persistent
references, payloads in the root record's class metadata, state set on a
class, and protocol 0 to 5 forms (INST, OBJ, STACK_GLOBAL, NEWOBJ_EX, FRAME).

Every file starts as a real export of a real FileStorage; the hostile record
replaces the root record and the digest is recomputed, so only the policy
stands between the payload and the target.  Each case is checked three
ways:

* the API (``pclasses.import_subtree``) refuses it with a ``PClassesError``
  and the target is unchanged (same last transaction, same records); with
  ``missing="broken"`` it is refused the same way or stored inert;
* the command line (``pclasses import``) exits 1 with one line and no
  traceback, the target unchanged;
* whatever was stored loads through ``pclasses.open`` and through a plain
  ``ZODB.DB`` without the marker ever appearing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.utils import p64

import pclasses
from pclasses.errors import PClassesError

MAGIC = b"PCLASSES-EXPORT\x00"
SRC = str(Path(pclasses.__file__).resolve().parents[1])

def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


# ---------------------------------------------------------------------------
# opcode helpers (see pickletools)


def U(text: str) -> bytes:
    """BINUNICODE."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def SU(text: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def G(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b"c" + f"{module}\n{name}\n".encode()


def B(data: bytes) -> bytes:
    """SHORT_BINBYTES."""
    return b"C" + bytes([len(data)]) + data


def call(fn: bytes, *args: bytes) -> bytes:
    """REDUCE of ``fn`` with a tuple of ``args``."""
    return fn + b"(" + b"".join(args) + b"tR"


def lst(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"


PM_META = b"\x80\x03" + G("persistent.mapping", "PersistentMapping") + b"."


def pm_state(items: dict[str, bytes], proto: int = 3) -> bytes:
    body = b"".join(U(k) + v for k, v in items.items())
    return b"\x80" + bytes([proto]) + b"}(" + U("data") + b"}(" + body + b"uu."


def pm_record(items: dict[str, bytes], proto: int = 3) -> bytes:
    return PM_META + pm_state(items, proto)


def touch_cmd(m: Path) -> str:
    return f"touch {m}"


def py_touch(m: Path) -> str:
    return f"open({str(m)!r}, 'w').close()"


# ---------------------------------------------------------------------------
# the cases


@dataclass
class Case:
    """A hostile record (built for a marker path) and what must be refused."""

    #: marker -> the whole root record (class metadata and state)
    record: Callable[[Path], bytes]
    #: the names the refusal lists (a subset is enough), or () for a shape
    names: tuple[str, ...] = ()
    #: marker -> a pickle that runs the payload under pickle.loads (proof
    #: that the case is live), or None when only ZODB's loader would run it
    live: Callable[[Path], bytes] | None = None
    #: modules the case needs on sys.path (name -> source)
    modules: dict[str, str] | None = None
    #: a phrase the refusal must contain (the shape that was refused)
    says: str = ""
    #: packages the import is told to trust (so their modules are imported
    #: and the objects judged); untrusted modules are never imported
    trust: tuple[str, ...] = ()


def in_pm(frag: Callable[[Path], bytes], proto: int = 3) -> Callable[[Path], bytes]:
    return lambda m: pm_record({"evil": frag(m), "fine": U("ok")}, proto)


def live_frag(frag: Callable[[Path], bytes], proto: int = 3) -> Callable[[Path], bytes]:
    return lambda m: b"\x80" + bytes([proto]) + frag(m) + b"."


def _partial_popen(m: Path) -> bytes:
    # functools.partial(subprocess.Popen, ["touch", m])()
    part = call(G("functools", "partial"), G("subprocess", "Popen"), lst(U("touch"), U(str(m))))
    return part + b")R"


def _map_system(m: Path) -> bytes:
    # list(map(os.system, ["touch m"]))
    return call(G("builtins", "list"), call(G("builtins", "map"), G("os", "system"),
                                            lst(U(touch_cmd(m)))))


def _import_os() -> bytes:
    return call(G("builtins", "__import__"), U("os"))


def _methodcaller(m: Path) -> bytes:
    # operator.methodcaller("system", "touch m")(__import__("os"))
    return call(call(G("operator", "methodcaller"), U("system"), U(touch_cmd(m))),
                _import_os())


def _attrgetter(m: Path) -> bytes:
    # operator.attrgetter("system")(__import__("os"))("touch m")
    return call(call(call(G("operator", "attrgetter"), U("system")), _import_os()),
                U(touch_cmd(m)))


def _getattr(m: Path) -> bytes:
    # getattr(__import__("os"), "system")("touch m")
    return call(call(G("builtins", "getattr"), _import_os(), U("system")), U(touch_cmd(m)))


def _eval_compile(m: Path) -> bytes:
    code = call(G("builtins", "compile"), U(py_touch(m)), U("<x>"), U("exec"))
    return call(G("builtins", "eval"), code)


def _exec(m: Path) -> bytes:
    return call(G("builtins", "exec"), U(py_touch(m)))


def _reconstructor_popen(m: Path) -> bytes:
    # copyreg._reconstructor(Popen, Popen, ["touch", m]) runs Popen.__init__
    return call(G("copyreg", "_reconstructor"), G("subprocess", "Popen"),
                G("subprocess", "Popen"), lst(U("touch"), U(str(m))))


def _reduce_ex_chain(m: Path) -> bytes:
    # getattr(os.system, "__call__")("touch m"): a bound method fetched at run time
    return call(call(G("builtins", "getattr"), G("os", "system"), U("__call__")),
                U(touch_cmd(m)))


def _source_method(m: Path) -> bytes:
    # SourceMethod's __setstate__ compiles and runs a def: defaults run
    src = f"def f(x={py_touch(m)}):\n    pass\n"
    return (G("pclasses.methods", "SourceMethod") + b")\x81}(" + U("source") + U(src)
            + U("name") + U("f") + b"ub")


def _source_method_meta(m: Path) -> bytes:
    # the gadget as the root object's class metadata
    return b"\x80\x03" + _source_method(m) + b"." + pm_state({"fine": U("ok")})


def _meta_partial(m: Path) -> bytes:
    # class metadata that is a computed call: runs when the root object is made
    return b"\x80\x03" + _partial_popen(m) + b"." + pm_state({"fine": U("ok")})


def _stack_global(m: Path) -> bytes:
    return (SU("os") + SU("system") + b"\x93(" + SU(touch_cmd(m)) + b"tR")


def _proto5_framed(m: Path) -> bytes:
    body = b"\x80\x05" + G("os", "system") + b"(" + SU(touch_cmd(m)) + b"tR."
    return body


def _framed_record(m: Path) -> bytes:
    inner = (b"}(" + U("data") + b"}(" + U("evil") + SU("os") + SU("system") + b"\x93("
             + SU(touch_cmd(m)) + b"tRuu.")
    return PM_META + b"\x80\x05\x95" + struct.pack("<Q", len(inner)) + inner


def _proto0(m: Path) -> bytes:
    # protocol 0 text form: c GLOBAL, ( MARK, V unicode, t TUPLE, R REDUCE
    return b"csubprocess\ncall\n((V" + b"touch\nV" + str(m).encode() + b"\nltR"


def _proto0_record(m: Path) -> bytes:
    # the whole state in protocol 0: {'data': {'evil': <payload>}}
    return PM_META + b"(dVdata\n(dVevil\n" + _proto0(m) + b"ss."


def _inst_popen(m: Path) -> bytes:
    return b"((" + U("touch") + U(str(m)) + b"lisubprocess\nPopen\n"


def _obj_partial(m: Path) -> bytes:
    # OBJ whose class is a call result
    return (b"(" + call(G("functools", "partial"), G("os", "system")) + U(touch_cmd(m))
            + b"o")


def _newobj_ex_popen(m: Path) -> bytes:
    return G("subprocess", "Popen") + b"(" + lst(U("touch"), U(str(m))) + b"t}\x92"


def _build_on_class(m: Path) -> bytes:
    # BUILD on a class: sets class attributes (here on PersistentMapping)
    return (G("persistent.mapping", "PersistentMapping") + b"N}(" + U("__doc__")
            + _reduce_system(m) + b"u\x86b")


def _reduce_system(m: Path) -> bytes:
    return call(G("os", "system"), U(touch_cmd(m)))


def _setitem_on_class(m: Path) -> bytes:
    return G("builtins", "dict") + U("k") + _reduce_system(m) + b"s"


def _pid_pair_system(m: Path) -> bytes:
    # a persistent reference whose class part names os.system by strings
    return b"(" + B(p64(99)) + b"(" + U("os") + U("system") + b"ttQ"


def _pid_called(m: Path) -> bytes:
    # calls the object behind a persistent reference (not a class reference)
    return B(p64(1)) + b"Q" + b"(" + U(touch_cmd(m)) + b"tR"


def _reexport(m: Path) -> bytes:
    return call(G("h6_gadgets", "Runner"), lst(U("touch"), U(str(m))))


def _reexport_function(m: Path) -> bytes:
    return call(G("h6_gadgets", "run"), U(touch_cmd(m)))


def _nested_pickle(m: Path) -> bytes:
    # pickle.loads of a payload carried as bytes
    inner = b"\x80\x03" + _reduce_system(m) + b"."
    return call(G("pickle", "loads"), b"C" + bytes([len(inner)]) + inner)


def _timeit(m: Path) -> bytes:
    # timeit.timeit(stmt, number=1) compiles and runs the statement
    return call(G("timeit", "timeit"), U(py_touch(m)), U("pass"),
                G("timeit", "default_timer"), b"K\x01")


def _import_module(m: Path) -> bytes:
    return call(G("importlib", "import_module"), U("h6_side"))


def _pty_spawn(m: Path) -> bytes:
    # fickling's GHSA-r7v6-mfhq-g3m2, in GLOBAL form
    return call(G("pty", "spawn"), lst(U("touch"), U(str(m))))


GADGETS = """
    from subprocess import Popen as Runner
    from os import system as run
    from pclasses.methods import SourceMethod as Method
"""

#: a module whose import alone runs the payload
SIDE_EFFECT = """
    import pathlib
    pathlib.Path(MARKER_PATH).touch()

    class Thing:
        pass
"""


def _pid_pair_side(m: Path) -> bytes:
    return b"(" + B(p64(99)) + b"(" + U("h6_side") + U("Thing") + b"ttQ"


def _meta_side(m: Path) -> bytes:
    return b"\x80\x03" + G("h6_side", "Thing") + b"." + pm_state({"fine": U("ok")})


def _reexport_method(m: Path) -> bytes:
    return _source_method(m).replace(G("pclasses.methods", "SourceMethod"),
                                     G("h6_gadgets", "Method"))


CASES: dict[str, Case] = {
    "functools.partial of Popen called by REDUCE": Case(
        in_pm(_partial_popen), ("functools.partial", "subprocess.Popen"),
        live_frag(_partial_popen), says="computed callable"),
    "map over os.system": Case(in_pm(_map_system), ("builtins.map", "os.system"),
                               live_frag(_map_system)),
    "operator.methodcaller": Case(in_pm(_methodcaller), ("operator.methodcaller",),
                                  live_frag(_methodcaller)),
    "operator.attrgetter then call": Case(in_pm(_attrgetter), ("operator.attrgetter",),
                                          live_frag(_attrgetter)),
    "builtins.getattr then call": Case(in_pm(_getattr), ("builtins.getattr",),
                                       live_frag(_getattr)),
    "eval of compile": Case(in_pm(_eval_compile), ("builtins.compile", "builtins.eval"),
                            live_frag(_eval_compile)),
    "exec": Case(in_pm(_exec), ("builtins.exec",), live_frag(_exec)),
    "copyreg._reconstructor with Popen base": Case(
        in_pm(_reconstructor_popen), ("subprocess.Popen",), live_frag(_reconstructor_popen)),
    "__reduce_ex__ chain: bound method fetched at run time": Case(
        in_pm(_reduce_ex_chain), ("builtins.getattr",), live_frag(_reduce_ex_chain)),
    "SourceMethod built with BUILD": Case(in_pm(_source_method),
                                          ("pclasses.methods.SourceMethod",),
                                          live_frag(_source_method)),
    "SourceMethod as root class metadata": Case(_source_method_meta, (),
                                                live_frag(_source_method)),
    "computed call in root class metadata": Case(_meta_partial, (),
                                                 live_frag(_partial_popen)),
    "STACK_GLOBAL os.system (protocol 4)": Case(in_pm(_stack_global, 4), (),
                                                live_frag(_stack_global, 4)),
    "FRAME and STACK_GLOBAL (protocol 5)": Case(_framed_record, (),
                                                 lambda m: _proto5_framed(m)),
    "protocol 0 text REDUCE of subprocess.call": Case(_proto0_record, ("subprocess.call",),
                                                      lambda m: _proto0(m) + b"."),
    "INST subprocess.Popen": Case(in_pm(_inst_popen), ("subprocess.Popen",),
                                  live_frag(_inst_popen)),
    "OBJ of a call result": Case(in_pm(_obj_partial), ("functools.partial",),
                                 live_frag(_obj_partial), says="computed callable"),
    "NEWOBJ_EX of Popen": Case(in_pm(_newobj_ex_popen, 4), ("subprocess.Popen",)),
    "BUILD on a class": Case(in_pm(_build_on_class), ("os.system",),
                             says="state set on the global persistent.mapping."
                                  "PersistentMapping"),
    "SETITEM on a global": Case(in_pm(_setitem_on_class), ("os.system",),
                                says="state set on the global builtins.dict"),
    "persistent reference class part naming os.system by strings": Case(
        in_pm(_pid_pair_system), ("os.system",)),
    "call of a persistent object": Case(in_pm(_pid_called), (),
                                        says="a call of a persistent object"),
    "third-party module re-exporting Popen (trusted: judged by the object)": Case(
        in_pm(_reexport), ("h6_gadgets.Runner",), live_frag(_reexport),
        {"h6_gadgets": GADGETS}, says="subprocess.Popen", trust=("h6_gadgets",)),
    "third-party module re-exporting os.system (trusted: judged by the object)": Case(
        in_pm(_reexport_function), ("h6_gadgets.run",), live_frag(_reexport_function),
        {"h6_gadgets": GADGETS}, trust=("h6_gadgets",)),
    "third-party module re-exporting SourceMethod (trusted: judged by the object)": Case(
        in_pm(_reexport_method), ("h6_gadgets.Method",), live_frag(_reexport_method),
        {"h6_gadgets": GADGETS}, trust=("h6_gadgets",)),
    "third-party module re-exporting Popen (not trusted: never imported)": Case(
        in_pm(_reexport), ("h6_gadgets.Runner",), live_frag(_reexport),
        {"h6_gadgets": GADGETS}),
    "pickle.loads of a nested payload": Case(in_pm(_nested_pickle), ("pickle.loads",),
                                             live_frag(_nested_pickle)),
    "timeit.timeit of a statement": Case(in_pm(_timeit), ("timeit.timeit",),
                                         live_frag(_timeit)),
    "importlib.import_module of a side-effect module": Case(
        in_pm(_import_module), ("importlib.import_module",), None,
        {"h6_side": SIDE_EFFECT}),
    "pty.spawn (fickling GHSA-r7v6-mfhq-g3m2)": Case(in_pm(_pty_spawn), ("pty.spawn",)),
    "persistent reference class part naming a side-effect module": Case(
        in_pm(_pid_pair_side), ("h6_side.Thing",), modules={"h6_side": SIDE_EFFECT}),
    "class metadata naming a side-effect module": Case(
        _meta_side, ("h6_side.Thing",), modules={"h6_side": SIDE_EFFECT}),
}


# ---------------------------------------------------------------------------
# files, databases, loading


def ran(marker: Path, wait: float = 0.3) -> bool:
    """Whether the payload created its marker (allowing a spawned process to run)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if marker.exists():
            return True
        time.sleep(0.02)
    return marker.exists()


@pytest.fixture
def modules_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for the cases' third-party modules."""
    d = tmp_path / "mods"
    d.mkdir()
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    for name in list(sys.modules):
        if name.startswith("h6_"):
            del sys.modules[name]


def records(path: Path) -> dict[bytes, bytes]:
    """Every current record of a FileStorage, read with ZODB's iterator."""
    storage = FileStorage(str(path), read_only=True)
    out: dict[bytes, bytes] = {}
    try:
        for txn in storage.iterator():
            for rec in txn:
                out[rec.oid] = rec.data
        return out
    finally:
        storage.close()


def state_of(path: Path) -> tuple[bytes, dict[bytes, bytes]]:
    storage = FileStorage(str(path), read_only=True)
    try:
        last = storage.lastTransaction()
    finally:
        storage.close()
    return last, records(path)


def real_export(tmp_path: Path) -> bytes:
    """A real export of a small subtree of a real FileStorage."""
    db = pclasses.open(str(tmp_path / "source.fs"))
    try:
        conn = db.open()
        sub = conn.root()["sub"] = PersistentMapping(a=1, child=PersistentMapping(b=2))
        transaction.commit()
        buf = io.BytesIO()
        pclasses.export_subtree(conn, sub, buf, name="sub")
        transaction.abort()
        conn.close()
    finally:
        db.close()
    return buf.getvalue()


def frames_of(data: bytes) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
    """Manifest and records of a file of the documented format (no blobs here)."""
    (mlen,) = struct.unpack(">I", data[18:22])
    manifest = json.loads(data[22:22 + mlen])
    pos = 22 + mlen
    out = []
    while data[pos:pos + 1] == b"R":
        oid = data[pos + 1:pos + 9]
        (n,) = struct.unpack(">I", data[pos + 9:pos + 13])
        out.append((oid, data[pos + 13:pos + 13 + n]))
        pos += 13 + n
    assert data[pos:pos + 1] == b"E"
    return manifest, out


def write_file(manifest: dict[str, Any], recs: list[tuple[bytes, bytes]]) -> bytes:
    head = json.dumps(manifest).encode()
    body = (MAGIC + struct.pack(">H", 1) + struct.pack(">I", len(head)) + head
            + b"".join(b"R" + oid + struct.pack(">I", len(d)) + d for oid, d in recs) + b"E")
    return body + struct.pack(">Q", len(body)) + hashlib.sha256(body).digest()


def zexp_of(recs: list[tuple[bytes, bytes]]) -> bytes:
    return (b"ZEXP" + b"".join(oid + p64(len(d)) + d for oid, d in recs) + b"\xff" * 16)


def hostile_file(base: bytes, root_record: bytes, fmt: str = "pclasses") -> bytes:
    """The real export with its root record replaced (digest recomputed)."""
    manifest, recs = frames_of(base)
    recs[0] = (recs[0][0], root_record)
    return write_file(manifest, recs) if fmt == "pclasses" else zexp_of(recs)


def make_target(path: Path) -> None:
    db = pclasses.open(str(path))
    try:
        conn = db.open()
        conn.root()["pre"] = PersistentMapping(a=1)
        transaction.commit()
        conn.close()
    finally:
        db.close()


def load_everything(path: Path, plain: bool) -> None:
    """Load every record's object (and what the state holds) in a fresh process
    state: through pclasses.open, or a plain ZODB.DB with ZODB's own factory."""
    if plain:
        db = ZODB.DB(FileStorage(str(path), read_only=True))
    else:
        db = pclasses.open(str(path))
    try:
        conn = db.open()
        for oid in records(path):
            try:
                obj = conn.get(oid)
                obj._p_activate()
                if isinstance(obj, PersistentMapping):
                    list(obj.values())
            except Exception:  # noqa: BLE001 - broken data may fail to load; it must not run
                pass
        transaction.abort()
        conn.close()
    finally:
        db.close()


def run_cli(*args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC] + ([str(extra_path)] if extra_path else []))
    return subprocess.run([sys.executable, "-m", "pclasses.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pclasses: error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def base_export(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return real_export(tmp_path_factory.mktemp("export"))


def _setup(case: Case, tmp_path: Path, mods: Path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    for name, source in (case.modules or {}).items():
        write_module(mods, name, source.replace("MARKER_PATH", repr(str(marker))))
    target = tmp_path / "target.fs"
    make_target(target)
    return marker, target


def _assert_live(case: Case, tmp_path: Path) -> None:
    """The payload really runs under a normal unpickler (so the case means it)."""
    if case.live is None:
        return
    control = tmp_path / "control"
    try:
        result = pickle.loads(case.live(control))
    except Exception:  # noqa: BLE001 - some payloads run and then fail
        result = None
    if hasattr(result, "wait"):
        result.wait()
    assert ran(control, 2.0), "the hostile payload is not live"
    control.unlink()


# ---------------------------------------------------------------------------
# the three checks


@pytest.mark.parametrize("fmt", ["pclasses", "zexp"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_api_refuses_or_stores_inert(name, fmt, base_export, tmp_path, modules_dir):
    """import_subtree refuses the case with a PClassesError naming it and leaves
    the target unchanged; with missing='broken' it is refused the same way or
    stored inert; loading the target through pclasses.open and a plain
    ZODB.DB never runs the payload."""
    case = CASES[name]
    marker, target = _setup(case, tmp_path, modules_dir)
    _assert_live(case, tmp_path)
    data = hostile_file(base_export, case.record(marker), fmt)
    before = state_of(target)
    db = pclasses.open(str(target))
    try:
        conn = db.open()
        trust = list(case.trust) or None
        with pytest.raises(PClassesError) as info:
            pclasses.import_subtree(conn, io.BytesIO(data), into=conn.root(), name="x",
                                    trust=trust)
        for n in case.names:
            assert n in str(info.value), (n, str(info.value))
        if fmt == "pclasses":
            assert case.says in str(info.value)
        transaction.commit()  # whatever the import left pending would be written now
        try:
            pclasses.import_subtree(conn, io.BytesIO(data), into=conn.root(), name="y",
                                    missing="broken", trust=trust)
            transaction.commit()
            stored = True
        except PClassesError:
            transaction.abort()
            stored = False
        conn.close()
    finally:
        transaction.abort()
        db.close()
    assert not ran(marker)
    if not stored:
        assert state_of(target) == before
    load_everything(target, plain=False)
    load_everything(target, plain=True)
    assert not ran(marker)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_refuses_with_one_line(name, base_export, tmp_path, modules_dir):
    """pclasses import exits 1 with one line on stderr and no traceback, the
    target unchanged and the payload never run."""
    case = CASES[name]
    marker, target = _setup(case, tmp_path, modules_dir)
    path = tmp_path / "hostile.pcx"
    path.write_bytes(hostile_file(base_export, case.record(marker)))
    before = state_of(target)
    trust = [arg for pkg in case.trust for arg in ("--trust", pkg)]
    line = assert_one_line_error(run_cli("import", str(target), str(path), *trust,
                                         extra_path=modules_dir))
    for n in case.names:
        assert n in line
    assert case.says in line
    assert state_of(target) == before
    assert not ran(marker)


def test_allow_code_admits_source_methods_only_when_asked(base_export, tmp_path, modules_dir):
    """A SourceMethod in a file is refused by default and imported with
    allow_code=True (the operator's explicit consent to code from the file)."""
    target = tmp_path / "target.fs"
    make_target(target)
    src = "def f(self):\n    return 42\n"
    rec = pm_record({"m": G("pclasses.methods", "SourceMethod") + b")\x81}(" + U("source")
                     + U(src) + U("name") + U("f") + b"ub"})
    data = hostile_file(base_export, rec)
    db = pclasses.open(str(target))
    try:
        conn = db.open()
        with pytest.raises(PClassesError, match="SourceMethod"):
            pclasses.import_subtree(conn, io.BytesIO(data), into=conn.root(), name="x")
        obj = pclasses.import_subtree(conn, io.BytesIO(data), into=conn.root(), name="x",
                                      allow_code=True)
        transaction.commit()
        assert obj["m"].source == src
    finally:
        transaction.abort()
        db.close()


def test_strict_mode_refuses_classes_outside_the_named_packages(base_export, tmp_path):
    """strict=['myapp'] refuses PersistentMapping (not named); naming
    'persistent' too imports the file; the CLI takes --strict repeatedly."""
    target = tmp_path / "target.fs"
    make_target(target)
    path = tmp_path / "ok.pcx"
    path.write_bytes(base_export)
    before = state_of(target)
    db = pclasses.open(str(target))
    try:
        conn = db.open()
        with pytest.raises(PClassesError, match="PersistentMapping"):
            pclasses.import_subtree(conn, io.BytesIO(base_export), into=conn.root(),
                                    name="x", strict=["myapp"])
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    assert state_of(target) == before
    line = assert_one_line_error(run_cli("import", str(target), str(path), "--strict", "myapp"))
    assert "PersistentMapping" in line
    assert state_of(target) == before
    ok = run_cli("import", str(target), str(path), "--strict", "myapp", "--strict",
                 "persistent", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert state_of(target) != before
