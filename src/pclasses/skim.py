"""Temporary alias of :mod:`pclasses.record.analyze` (the old module name).

Kept only while other branches still import ``pclasses.skim``; new code
imports from :mod:`pclasses.record`.  The name is the same module object,
so private names and monkeypatching keep working.
"""

import importlib
import sys

_impl = importlib.import_module("pclasses.record.analyze")

sys.modules[__name__] = _impl
