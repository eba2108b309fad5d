"""Temporary alias of :mod:`pclasses.record.reader` (the old module name).

Kept only while other branches still import ``pclasses.records``; new code
imports from :mod:`pclasses.record`.  The name is the same module object,
so private names and monkeypatching keep working.
"""

import importlib
import sys

_impl = importlib.import_module("pclasses.record.reader")

sys.modules[__name__] = _impl
