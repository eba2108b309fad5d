"""One exception hierarchy: every error of the package lives in ``pclasses.errors``.

The tests introspect the module, so an error class added later is covered
without editing this file: each one is constructed from its signature (sample
values chosen by annotation), pickled and unpickled (worker processes send
errors to their parent that way), and checked for type, message, fields and
the builtin it behaves like.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pickle
import pkgutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import pclasses
import pclasses.errors as errors

#: Errors that only group others (nobody raises them directly), so they need
#: no builtin of their own.  ``TransferError`` is listed for when it moves here.
CATEGORIES = {"PClassesError", "TransferError"}

#: Builtin exceptions a package error may "behave like".
BUILTIN_ERRORS = tuple(
    cls for cls in vars(builtins).values()
    if isinstance(cls, type) and issubclass(cls, BaseException)
    and cls not in (BaseException, Exception)
)

#: Constructor arguments that are not kept as a field of the same name.
NOT_FIELDS = {"self", "message", "args", "kwargs"}

#: Sample values by parameter annotation (the annotation as a string).
SAMPLES: dict[str, object] = {
    "str": "sample.module.Name",
    "str | None": "sample-text",
    "bytes": b"\x00\x00\x00\x00\x00\x00\x00\x2a",
    "bytes | None": b"\x00\x00\x00\x00\x00\x00\x00\x2a",
    "int": 17,
    "int | None": 17,
    "object": "not an identifier!",
    "Sequence[str]": ["a.B", "c.D", "a.B"],
    "list[str]": ["a.B", "c.D", "a.B"],
    "tuple[str, ...]": ("a.B", "c.D"),
    "Iterable[str]": ["a.B", "c.D"],
    "Sequence[Breach]": [errors.Breach("/cities/jena", "city", "app.Doc.city", "",
                                       b"\x00\x00\x00\x00\x00\x00\x00\x07")],
    "dict[str, str] | None": {"a.B": "sample reason"},
    "Sequence[bytes]": [b"\x00" * 7 + b"\x01", b"\x00" * 7 + b"\x02"],
    "list[bytes]": [b"\x00" * 7 + b"\x01", b"\x00" * 7 + b"\x02"],
    "Mapping[str, str]": {"a.B": "c.D"},
    "dict[str, str]": {"a.B": "c.D"},
    "float": 1.5,
    "bool": True,
    "Any": "anything",
    "object | None": "anything",
}


def error_classes() -> list[type[BaseException]]:
    """Every exception class defined in pclasses.errors."""
    return [
        cls for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, BaseException)
        and cls.__module__ == errors.__name__
    ]


def construct(cls: type[BaseException]) -> tuple[BaseException, dict[str, object]]:
    """An instance built from sample values for every parameter, and the
    arguments used (by name)."""
    if not inspect.isfunction(cls.__init__):  # the builtin's: one message
        message = f"sample message of {cls.__name__}"
        return cls(message), {"message": message}
    sig = inspect.signature(cls.__init__)
    hints = dict(cls.__init__.__annotations__)
    positional: list[object] = []
    keywords: dict[str, object] = {}
    used: dict[str, object] = {}
    for name, param in list(sig.parameters.items())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "message":
            value: object = f"sample message of {cls.__name__}"
        else:
            annotation = hints.get(name, "str")
            if not isinstance(annotation, str):
                annotation = typing.get_type_hints(cls.__init__).get(name, str).__name__
            assert annotation in SAMPLES, (
                f"{cls.__name__}({name}: {annotation}): add a sample value for this "
                "annotation to SAMPLES in tests/test_errors.py")
            value = SAMPLES[annotation]
        used[name] = value
        if param.kind == param.KEYWORD_ONLY:
            keywords[name] = value
        else:
            positional.append(value)
    return cls(*positional, **keywords), used


CLASSES = error_classes()


def test_the_module_defines_the_errors_it_exports():
    """errors.__all__ names exactly the error classes defined in errors.py."""
    assert sorted(errors.__all__) == sorted(c.__name__ for c in CLASSES)


def test_every_error_derives_from_the_package_base():
    """Catching PClassesError catches every error of the package."""
    for cls in CLASSES:
        assert issubclass(cls, errors.PClassesError), cls


@pytest.mark.parametrize("cls", [c for c in CLASSES if c.__name__ not in CATEGORIES],
                         ids=lambda c: c.__name__)
def test_every_error_is_also_a_builtin(cls):
    """Each error is also the builtin it behaves like (ValueError, LookupError,
    OSError...), so code catching the builtin keeps working."""
    assert issubclass(cls, BUILTIN_ERRORS), (
        f"{cls.__name__} derives from no builtin exception but Exception")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_fields(cls):
    """An error survives pickling (every protocol) with its type, message,
    args and fields: a worker process can send it to its parent."""
    exc, used = construct(cls)
    message = str(exc)
    assert message, f"{cls.__name__} has an empty message"
    fields = {name: value for name, value in used.items() if name not in NOT_FIELDS}
    for name in fields:
        assert hasattr(exc, name), (
            f"{cls.__name__}: constructor argument {name!r} is not kept as a field")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(exc, protocol))
        assert type(back) is cls
        assert str(back) == message
        assert back.args == exc.args
        assert vars(back) == vars(exc)
        for name in fields:
            assert getattr(back, name) == getattr(exc, name), (cls.__name__, name)
        if isinstance(exc, SyntaxError):
            assert (back.msg, back.lineno, back.offset, back.text) == (
                exc.msg, exc.lineno, exc.offset, exc.text)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_str_is_the_message(cls):
    """``str(error)`` is the plain message, also for the KeyError family
    (whose builtin ``str`` would wrap it in quotes)."""
    exc, _ = construct(cls)
    assert str(exc) == exc.args[0]


@pytest.mark.parametrize("cls", [c for c in CLASSES if c.__name__ not in CATEGORIES],
                         ids=lambda c: c.__name__)
def test_every_error_is_public(cls):
    """Every error can be imported from the package itself."""
    assert getattr(pclasses, cls.__name__) is cls
    assert cls.__name__ in pclasses.__all__


def test_no_module_defines_errors_elsewhere():
    """No module of the package defines an exception class outside errors.py
    (private control-flow exceptions, named with a leading underscore, aside)."""
    strays = []
    for info in pkgutil.walk_packages(pclasses.__path__, "pclasses."):
        if info.name.endswith("__main__") or info.name == errors.__name__:
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                    and not name.startswith("_")):
                strays.append(f"{module.__name__}.{name}")
    assert strays == []


@pytest.mark.parametrize("old_module, name", [
    ("pclasses.methods", "MethodSourceError"),
    ("pclasses.methods", "BrokenMethodError"),
    ("pclasses.xrefs", "CrossDatabaseReferenceError"),
    ("pclasses.pclass", "DuplicateGuidError"),
    ("pclasses.record.patch", "FramedRecordError"),
    ("pclasses.repair", "RepairError"),
    ("pclasses.transfer", "TransferError"),
    ("pclasses.transfer", "ExportFormatError"),
    ("pclasses.transfer", "MissingClassesError"),
    ("pclasses.transfer", "RefusedGlobalsError"),
])
def test_moved_errors_stay_importable_from_their_old_modules(old_module, name):
    """Code importing an error from the module that used to define it keeps working."""
    assert getattr(importlib.import_module(old_module), name) is getattr(errors, name)


def test_broken_modified_is_still_zodbs():
    """Changing a broken object raises an error ZODB code already catches."""
    from ZODB.broken import BrokenModified

    assert issubclass(errors.BrokenObjectModifiedError, BrokenModified)
    assert issubclass(errors.BrokenObjectModifiedError, TypeError)


def test_key_family_error_prints_its_message_unquoted():
    """A LookupError of the package reads as a sentence on the terminal."""
    exc = errors.UnknownDatabaseError(["nope"], ["main", "other"])
    assert str(exc) == "no database named 'nope' in this multi-database (it has 'main', 'other')"
    assert isinstance(exc, LookupError)
    assert exc.names == ["nope"] and exc.known == ["main", "other"]


def test_errors_cross_a_process_boundary(tmp_path: Path):
    """An error raised in another process arrives whole: type, fields, message."""
    script = (
        "import pickle, sys\n"
        "from pclasses.errors import RecordDecodeError\n"
        "sys.stdout.buffer.write(pickle.dumps(RecordDecodeError('truncated', "
        "oid=b'\\0'*7+b'\\x2a', offset=17)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    exc = pickle.loads(out.stdout)
    assert isinstance(exc, errors.RecordDecodeError) and isinstance(exc, ValueError)
    assert (exc.oid, exc.offset, exc.reason) == (b"\0" * 7 + b"\x2a", 17, "truncated")
    assert str(exc) == "record 0x2a: truncated"
