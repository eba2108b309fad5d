"""The record engine: everything that reads or patches ZODB record bytes.

This docstring is the format specification; ``tests/test_record_spec.py``
enumerates the same lists from the code.

A ZODB data record is two pickles written back to back: the *class
metadata*, then the *state*.  ZODB loads both with one unpickler, so a memo
index stored by the first pickle can be fetched by the second.

Class-metadata formats
----------------------

The numbering is ``ZODB/serialize.py``'s.  ``klass`` is a GLOBAL (a class
*named* by module and name) or a persistent reference to a class stored in
the database (a database-resident class).

=====  ===========================================  ===========  =========
 no.    pickled value                                read as      written
=====  ===========================================  ===========  =========
 1      ``klass``                                     1            yes
 2      ``(klass, newargs)``                          2            no
 3      ``((module, name), None)``                    3            yes
 4      ``((module, name), initargs)`` (legacy)       7            no
 5      ``(klass, None)`` (legacy)                    5            no
 6      ``(klass, initargs)`` (legacy)                2            no
 7      ``((module, name), newargs)``                 7            no
=====  ===========================================  ===========  =========

Formats 4 and 6 cannot be told apart from 7 and 2 (``serialize.py`` says so
too); the reader reports the current number (:attr:`ClassRef.format`).

Persistent reference kinds
--------------------------

===========================  ==============  ====================================
 pickled persistent id        kind            meaning
===========================  ==============  ====================================
 ``oid``                      ``oid``         plain reference, same database
 ``(oid, klass)``             ``oid_class``   reference with its class (a hint)
 ``['w', (oid,)]``            ``weak``        weak reference, same database
 ``['w', (oid, db)]``         ``weak``        weak reference into database db
 ``['n', (db, oid)]``         ``multi_oid``   cross-database reference
 ``['m', (db, oid, klass)]``  ``multi``       cross-database reference, class
 ``[oid]``                    ``legacy``      legacy weak reference
 anything else                ``unknown``     reported, never followed
===========================  ==============  ====================================

Remote references of a tree of databases (:mod:`pclasses.tree`) are not
persistent ids: a REDUCE of ``pclasses.tree.reference.RemoteReference`` on
``(via, oid, klass, database_name)`` whose ``via`` is a persistent reference
to a database handle (or a nested remote reference).  ZODB sees the handle
reference; :func:`~pclasses.record.edges.edges` also reports each remote
reference as an edge of kind ``remote`` (:mod:`pclasses.record.remote`).

``klass`` in a reference is a GLOBAL, a ``(module, name)`` pair of strings
or itself a persistent reference (an instance of a database-resident
class); the reader lists an inner reference before the one holding it, as
``ZODB.serialize.referencesf`` does.

What we write
-------------

The package never pickles a record from scratch except through ZODB's own
``ObjectWriter`` (class-metadata format 1 for ordinary instances, a
persistent reference for instances of database-resident classes, the
reference kinds ``oid``, ``oid_class``, ``weak``, ``multi`` as ZODB chooses).
Two byte patches change existing records (:mod:`pclasses.record.patch`):

* renaming a GLOBAL / INST opcode in place (offline repair, import), in the
  record's own protocol, refused for framed (protocol 4+) records;
* replacing the class metadata with format 3 ``((module, name), None)``
  in the record's protocol;

and import rewrites oid literals of the reference kinds above in place,
same length, at the offsets :func:`analyze` located.

Modules
-------

:mod:`~pclasses.record.analyze`
    the pre-scan :func:`skim` and the abstract pickle machine
    :func:`analyze` (C extension ``pclasses.record._skim`` with a
    pure-Python twin; ``PCLASSES_PURE_PYTHON=1`` forces the twin);
:mod:`~pclasses.record.edges`
    :func:`edges`: every persistent reference, classified once;
:mod:`~pclasses.record.limits`
    :class:`Limits`, the bounds the analyzer enforces on every read;
:mod:`~pclasses.record.reader`
    the inert reader (:func:`scan_record`, :func:`read_record`,
    :func:`read_class`) built on zodbpickle's unpickler with placeholder
    globals and references;
:mod:`~pclasses.record.patch`
    byte patches of records.

The package attribute ``analyze`` is the function (re-exported below), which
hides the submodule of the same name from ``import pclasses.record.analyze as
m``; import names from it (``from pclasses.record.analyze import skim_py``) or
take the module from ``importlib.import_module("pclasses.record.analyze")``.
"""

from __future__ import annotations

from .analyze import (
    HAVE_C,
    HAVE_C_ANALYZE,
    PID_KINDS,
    Analysis,
    EdgeKind,
    GlobalSite,
    PidSite,
    Use,
    analyze,
    analyze_py,
    set_limits,
    skim,
    skim_py,
)
from .edges import Edge, edges, edges_of
from .limits import DEFAULT_LIMITS, Limits
from .patch import FramedRecordError, rename_globals, replace_class_pickle
from .reader import (
    CLASS_FORMATS,
    REFERENCE_KINDS,
    ClassRef,
    GlobalRef,
    Inert,
    PersistentRef,
    RecordInfo,
    Reference,
    classify_reference,
    global_occurrences,
    read_class,
    read_record,
    scan_record,
    split_record,
)

#: Every class-metadata format of ``ZODB/serialize.py``: number -> the
#: format number the reader reports for it.
FORMATS_READ_AS = {1: 1, 2: 2, 3: 3, 4: 7, 5: 5, 6: 2, 7: 7}
#: The class-metadata formats the package writes.
FORMATS_WRITTEN = (1, 3)

__all__ = [
    "CLASS_FORMATS",
    "DEFAULT_LIMITS",
    "set_limits",
    "Edge",
    "EdgeKind",
    "GlobalSite",
    "Limits",
    "PidSite",
    "Use",
    "edges",
    "edges_of",
    "FORMATS_READ_AS",
    "FORMATS_WRITTEN",
    "HAVE_C",
    "HAVE_C_ANALYZE",
    "PID_KINDS",
    "REFERENCE_KINDS",
    "Analysis",
    "ClassRef",
    "FramedRecordError",
    "GlobalRef",
    "Inert",
    "PersistentRef",
    "RecordInfo",
    "Reference",
    "analyze",
    "analyze_py",
    "classify_reference",
    "global_occurrences",
    "read_class",
    "read_record",
    "rename_globals",
    "replace_class_pickle",
    "scan_record",
    "skim",
    "skim_py",
    "split_record",
]
