"""Run ZODB's own tests, optionally with a fresh ClassRegistry on every ZODB.DB.

Usage: ``python run_zodb_tests.py [--registry] [--json OUT] MODULE...``
where MODULE names a ZODB test module (``ZODB.tests.testBroken``) or
``all`` (every ``ZODB.tests.test*`` module).  Each module's
``test_suite()`` (as zope.testrunner collects it) is run with unittest.
With ``--registry``, ``ZODB.DB.__init__`` is patched so that every
database created without an explicit ``class_factory`` gets a new
:class:`pclasses.ClassRegistry` installed right after ZODB set it up: the
registry replaces ZODB's default class factory, exactly as a user of
``pclasses.open`` gets it.  Prints (or writes) a JSON document with the
number of tests run and the ids of failures and errors.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import tempfile
import time
import unittest


def install_registry_on_every_db() -> None:
    import pclasses

    db_class = importlib.import_module("ZODB.DB").DB
    original = db_class.__init__

    def __init__(self, *args, **kw):  # noqa: N807
        original(self, *args, **kw)
        if kw.get("class_factory") is None:
            pclasses.ClassRegistry().install(self)

    db_class.__init__ = __init__
    _normalize_class_name()


def _normalize_class_name() -> None:
    """Doctests see the connection class's name in reprs; that name is the one
    difference the drop-in is allowed, so doctest output is compared with it
    spelled as ZODB's."""
    import doctest

    from zope.testing import renormalizing

    for checker in (doctest.OutputChecker, renormalizing.RENormalizing):
        original = checker.check_output

        def check_output(self, want, got, optionflags, _original=original):  # type: ignore[no-untyped-def]
            got = got.replace("pclasses.connection.Connection", "ZODB.Connection.Connection")
            return _original(self, want, got, optionflags)

        checker.check_output = check_output


def modules(names: list[str]) -> list[str]:
    if names != ["all"]:
        return names
    import ZODB.tests

    found = []
    for info in pkgutil.iter_modules(ZODB.tests.__path__):
        if info.name.startswith("test"):
            found.append(f"ZODB.tests.{info.name}")
    return sorted(found)


def suite_of(name: str) -> unittest.TestSuite:
    module = importlib.import_module(name)
    make = getattr(module, "test_suite", None)
    if make is not None:
        return make()
    return unittest.defaultTestLoader.loadTestsFromModule(module)


def ids(suite: unittest.TestSuite) -> list[str]:
    out = []
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            out.extend(ids(test))
        else:
            out.append(test.id())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--registry", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("modules", nargs="+")
    args = ap.parse_args()
    if args.registry:
        install_registry_on_every_db()
    # ZODB's tests write files in the current directory.
    work = tempfile.mkdtemp(prefix="zodb-dropin-")
    os.chdir(work)
    failures: dict[str, str] = {}
    run = 0
    skipped = 0
    t0 = time.perf_counter()
    for name in modules(args.modules):
        try:
            suite = suite_of(name)
        except Exception as exc:  # a module that cannot be collected
            failures[f"{name} (collect)"] = f"{type(exc).__name__}: {exc}"
            continue
        result = unittest.TextTestRunner(
            stream=sys.stderr if args.verbose else open(os.devnull, "w"),  # noqa: SIM115
            verbosity=2 if args.verbose else 0).run(suite)
        run += result.testsRun
        skipped += len(result.skipped)
        for test, trace in result.failures + result.errors:
            failures[test.id() if hasattr(test, "id") else str(test)] = trace[-2000:]
    doc = {
        "registry": args.registry,
        "run": run,
        "skipped": skipped,
        "failed": sorted(failures),
        "details": failures,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    text = json.dumps(doc, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
