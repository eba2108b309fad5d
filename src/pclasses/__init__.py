"""pclasses: ZODB classes that live, move, disappear and come back.

The public API is re-exported here; the work happens in one module per
concept (see ``design/ARCHITECTURE.md``):

* :mod:`pclasses.record.reader`: the safe record reader (never runs a pickle);
* :mod:`pclasses.registry`: the class-factory registry;
* :mod:`pclasses.factory`: ``pclasses.class_factory``, the registry named in zope.conf;
* :mod:`pclasses.classtable`: the per-database class table (guid -> class);
* :mod:`pclasses.pclass`: persistent classes defined in the database;
* :mod:`pclasses.methods`: methods kept as source text;
* :mod:`pclasses.broken`: broken classes and objects;
* :mod:`pclasses.database`: opening targets (paths, ZConfig, zodburi);
* :mod:`pclasses.census`: which classes the records name;
* :mod:`pclasses.refs`: intrinsic references with integrity (``Ref``, ``Folder``...);
* :mod:`pclasses.tree`: trees of databases, remote references, cross-database gc;
* :mod:`pclasses.cli`: the command line.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .broken import broken_state, is_broken
from .census import Census, take_census
from .classtable import ClassTable, class_table, guid_of
from .errors import (
    AliasCycleError,
    BrokenObjectModifiedError,
    ClassNameError,
    DanglingReferenceError,
    DatabaseUnavailableError,
    DemoTargetError,
    DuplicateGuidError,
    DuplicateHandleError,
    DuplicateRowError,
    ExportFormatError,
    FramedRecordError,
    GarbageCollectionError,
    GarbageCollectionRefusedError,
    ImportPolicyError,
    MissingClassesError,
    MissingReferencesError,
    NotAGuidModuleError,
    NotBrokenError,
    OidKindError,
    PClassesError,
    RecordDecodeError,
    ReferentialIntegrityError,
    RefusedGlobalsError,
    RegistrationError,
    RowNotFoundError,
    ScanWorkerError,
    SQLRecoveryError,
    SQLReferenceError,
    StorageOpenError,
    StoreMappingError,
    TransferError,
    UnknownDatabaseError,
    UnlocatedError,
    UnreachableReferenceError,
    XrefPolicySyntaxError,
)
from .events import ClassReattached
from .factory import class_factory, process_registry
from .interfaces import IClassReattachedEvent, ICrossDatabaseReferenceEvent
from .inventory import BrokenReport, find_broken
from .methods import BrokenMethodError, MethodSourceError, method
from .pclass import PersistentClass, define_class
from .record.reader import ClassRef, RecordInfo, Reference, read_class, read_record, scan_record
from .refs import (
    Folder,
    KeyChanged,
    Ref,
    ReferenceAdded,
    ReferenceRemoved,
    RefModeChanged,
    RefSet,
    TargetReplaced,
    is_referenced,
    move,
    place,
    references,
    referrers,
    rekey,
    remove,
    rename,
    replace_target,
    set_ref_mode,
)
from .registry import ClassRegistry, Resolution
from .repair import RepairError, RepairReport, rename_classes
from .stores import SplitPersistent, SQLStore, adopt, enable_stubs, oid_kinds
from .transfer import Manifest, export_subtree, import_subtree, read_manifest
from .tree import (
    Dangling,
    DatabaseHandle,
    RemoteAttribute,
    RemoteReference,
    check_refs,
    collect_garbage,
    get_reference,
    is_dangling,
    open,
    tree_of,
)
from .xrefs import (
    CrossDatabaseReference,
    CrossDatabaseReferenceError,
    XrefPolicy,
    check_xrefs,
    scan_xrefs,
)

__all__ = [
    "__version__",
    "ClassRegistry",
    "Resolution",
    "class_factory",
    "process_registry",
    "open",
    "PersistentClass",
    "define_class",
    "class_table",
    "ClassTable",
    "guid_of",
    "method",
    "MethodSourceError",
    "BrokenMethodError",
    "is_broken",
    "broken_state",
    "take_census",
    "find_broken",
    "ClassReattached",
    "IClassReattachedEvent",
    "ICrossDatabaseReferenceEvent",
    "CrossDatabaseReference",
    "CrossDatabaseReferenceError",
    "XrefPolicy",
    "check_xrefs",
    "scan_xrefs",
    "rename_classes",
    "export_subtree",
    "import_subtree",
    "read_manifest",
    "Manifest",
    "TransferError",
    "ExportFormatError",
    "MissingClassesError",
    "RefusedGlobalsError",
    "ImportPolicyError",
    "RepairReport",
    "RepairError",
    "BrokenReport",
    "Census",
    "scan_record",
    "read_record",
    "read_class",
    "RecordInfo",
    "ClassRef",
    "Reference",
    "PClassesError",
    "RecordDecodeError",
    "AliasCycleError",
    "RegistrationError",
    "StorageOpenError",
    "FramedRecordError",
    "NotAGuidModuleError",
    "ClassNameError",
    "DuplicateGuidError",
    "BrokenObjectModifiedError",
    "NotBrokenError",
    "UnknownDatabaseError",
    "XrefPolicySyntaxError",
    "ScanWorkerError",
    "ReferentialIntegrityError",
    "DanglingReferenceError",
    "UnlocatedError",
    "MissingReferencesError",
    "Ref",
    "RefSet",
    "Folder",
    "place",
    "remove",
    "move",
    "rename",
    "rekey",
    "replace_target",
    "set_ref_mode",
    "referrers",
    "is_referenced",
    "references",
    "ReferenceAdded",
    "ReferenceRemoved",
    "KeyChanged",
    "TargetReplaced",
    "RefModeChanged",
    "DatabaseHandle",
    "tree_of",
    "get_reference",
    "RemoteReference",
    "RemoteAttribute",
    "Dangling",
    "is_dangling",
    "DatabaseUnavailableError",
    "UnreachableReferenceError",
    "DuplicateHandleError",
    "GarbageCollectionRefusedError",
    "GarbageCollectionError",
    "DemoTargetError",
    "check_refs",
    "collect_garbage",
    "SQLStore",
    "oid_kinds",
    "enable_stubs",
    "SplitPersistent",
    "adopt",
    "RowNotFoundError",
    "SQLReferenceError",
    "StoreMappingError",
    "OidKindError",
    "SQLRecoveryError",
    "DuplicateRowError",
]
