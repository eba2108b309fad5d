"""Import: check a whole file, then store its records under new oids.

:func:`import_subtree` runs two passes.  The **check pass**
(:class:`CheckPass`) reads the whole file once: it checks the digest and
the structure, analyses every record with the C record analyzer (never
unpickling; the manifest is never trusted), judges every global a record
names as soon as it is first met (:func:`pclasses.transfer.policy.check_globals`),
gives every record and reference a new oid, patches the references' oid
bytes and proves that only those bytes changed (:meth:`CheckPass.prove`
rebuilds the record from the checked bytes when every oid is a binary
payload; text forms and renamed globals are analysed once more), and
writes it to a temporary file (records back to back, in large writes).
What the pass learned is kept: the offsets of references to records not
met yet (settled at the end, when they turn out to dangle or, in a
``.zexp``, to be class records), the position of every prepared record (so
the imported objects can be read before the commit and stored without
reading frames again), which records hold intrinsic references, the
root's class.
Nothing is written to the target until the whole file has passed.  The
**store pass** (:mod:`pclasses.transfer.store`) copies the prepared records
into the storage inside the caller's transaction.
"""

from __future__ import annotations

import os
import tempfile
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, cast, overload

from ZODB.utils import oid_repr

from ..classtable import GUID_PREFIX, class_table, is_guid_module, is_placeholder
from ..errors import (
    ExportFormatError,
    MissingClassesError,
    PClassesError,
    RefusedGlobalsError,
    TransferError,
)
from ..oidset import OidRanks, OidRuns, OidSet
from ..record import Analysis
from ..record.analyze import Use
from ..record.analyze import analyze as _analyze
from ..record.edges import EdgeKind
from ..refs.transfer import MARK as _MARK
from ..registry import ClassRegistry
from ..scan import Progress
from ..trust import Trust
from .callsites import record_facts
from .format import CHUNK, ClassNeed, Reader, opened
from .policy import (
    CALLED_BY_RECONSTRUCTOR,
    RECONSTRUCTORS,
    REFUSED_PREFIX,
    USE_ARGUMENT,
    USE_CALLED,
    USE_PID_CLASS,
    USE_ROOT_CLASS,
    ImportPolicy,
    check_globals,
)
from .records import (
    CLASS_METACLASSES,
    CLASS_TABLE,
    HANDLE_REFERENCE,
    analyze,
    class_record_info,
    no_gc,
    record_class,
)
from .reports import ImportReport
from .store import HEAD, NO_BLOB, Plan, RecordIndex, pending_import, root_ghost

__all__ = ["import_subtree", "NOWHERE", "CheckPass"]

#: Where dangling references point after an import: an oid no storage hands
#: out (the last of the 2**64), so a dangling reference never lands on an
#: unrelated object.
NOWHERE = b"\xff" * 8

#: uses of a global item that change it (BUILD / SETITEM(S) / APPEND(S) target)
_CHANGED = int(Use.BUILD_TARGET | Use.ITEMS_TARGET)


# ---------------------------------------------------------------------------
# The check pass
# ---------------------------------------------------------------------------


class _Spool:
    """Appends to import's temporary file in large writes; ``pos`` is where
    the next byte goes."""

    __slots__ = ("f", "parts", "held", "pos")

    def __init__(self, f: Any) -> None:
        self.f = f
        self.parts: list[bytes] = []
        self.held = 0
        self.pos = 0

    def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.pos += len(data)
        self.held += len(data)
        if self.held >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.f.seek(0, 2)
            self.f.write(b"".join(self.parts))
            self.parts = []
            self.held = 0


def _literal_head(data: bytes, off: int) -> int:
    """Where the binary string opcode (SHORT_BINBYTES/SHORT_BINSTRING,
    BINBYTES/BINSTRING, BINBYTES8) whose 8-byte payload starts at ``off``
    starts, or -1 (text forms: PERSID, STRING, UNICODE)."""
    if off >= 2 and data[off - 1] == 8 and data[off - 2] in (0x43, 0x55):
        return off - 2
    if off >= 5 and data[off - 5] in (0x42, 0x54) and data[off - 4:off] == b"\x08\0\0\0":
        return off - 5
    if off >= 9 and data[off - 9] == 0x8E and data[off - 8:off] == b"\x08" + bytes(7):
        return off - 9
    return -1


_CLASS_META = int(Use.CLASS_META)

#: SHORT_BINBYTES / SHORT_BINSTRING of 8 bytes: the usual oid literal.
_SHORT_BINARY = frozenset({b"C\x08", b"U\x08"})

#: Bytes a text-form oid literal cannot hold verbatim: line ends end the
#: opcode, backslashes and quotes change the text's meaning, and non-ASCII
#: bytes do not decode as the ASCII of a PERSID line.
_TEXT_UNSAFE = frozenset(b"\n\r\\'\"") | frozenset(range(0x80, 0x100))


def _text_safe(oid: bytes) -> bool:
    return not any(b in _TEXT_UNSAFE for b in oid)


@dataclass
class CheckPass:
    """Check everything and prepare every record, before anything is stored.

    :meth:`run` reads the file once; its steps are
    :meth:`bind_class_references` (the manifest's classes stored in the
    source database), then per record :meth:`judge_globals`,
    :meth:`remap`, :meth:`make_inert` (``missing="broken"`` only) and
    :meth:`recheck`, and at the end :meth:`settle_forward_references` and
    :meth:`decide`.
    """

    connection: Any
    registry: ClassRegistry
    missing: str
    progress: Progress | None
    reader: Reader
    trust: Trust | Iterable[str] | None = None
    #: old oid -> new oid of the rebound class records and database handles
    #: (a record's new oid is ``news[rank of its old oid]``, :meth:`new_of`)
    mapping: dict[bytes, bytes] = field(default_factory=dict)
    missing_names: list[str] = field(default_factory=list)
    class_refs_missing: list[str] = field(default_factory=list)
    #: the old oids of the records met so far
    seen: OidSet = field(default_factory=OidSet)
    #: the old oids of every record of the file (:meth:`number_records`)
    records: OidSet = field(default_factory=OidSet)
    ranks: OidRanks | None = None
    _find: Any = None  # ranks.find
    #: the new oids, sorted, as runs of consecutive oids (a storage hands
    #: them out counting up): the record of rank r gets news[r]
    news: OidRuns = field(default_factory=OidRuns)
    #: oids of class records rebound to the target's class table
    bound: set[bytes] = field(default_factory=set)
    #: references to records not met yet when they were written, per
    #: record: (where the record starts in the temporary file, {offset in the
    #: record: (old oid, text form?)}); settled at the end
    forward: list[tuple[int, dict[int, tuple[bytes, bool]]]] = field(default_factory=list)
    #: oids of a ``.zexp``'s class records (rebound, not imported)
    zexp_classes: set[bytes] = field(default_factory=set)
    #: every global the records name -> how they use it (for the report)
    needs: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (global, uses) -> refused?  Judged once, when first met.
    judged: dict[tuple[tuple[str, str], int], bool] = field(default_factory=dict)
    refused: set[tuple[str, str]] = field(default_factory=set)
    missing_keys: set[tuple[str, str]] = field(default_factory=set)
    externals: dict[tuple[str, bytes], None] = field(default_factory=dict)
    dangling: int = 0
    #: what the import policy allows (:mod:`pclasses.transfer.policy`)
    policy: ImportPolicy | None = None
    #: why each refused global is refused (dotted name -> reason)
    reasons: dict[str, str] = field(default_factory=dict)
    #: call shapes no renaming makes inert (refused even with "broken")
    shapes: list[str] = field(default_factory=list)
    #: (record oid, oid of a persistent reference it calls): allowed only for
    #: class references rebound to the target's class table (known at the end)
    pid_calls: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    #: class names of ``(oid, class)`` references (strings cannot be renamed)
    pid_classes: set[tuple[str, str]] = field(default_factory=set)
    #: missing database-resident classes referred to directly (plain
    #: instances), missing="broken" only: guid -> (reserved oid, name) of
    #: the placeholder class to store once every check has passed
    placeholders: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def run(self) -> Plan:
        self.bind_class_references()
        self.number_records()
        temp = tempfile.TemporaryFile(prefix="pclasses-import-")
        try:
            plan = self.prepare_records(temp)
            self.settle_forward_references(temp)
            manifest = self.reader.manifest
            if manifest is not None and manifest.record_count != plan.records:
                raise ExportFormatError(f"the manifest says {manifest.record_count} records, "
                                        f"the file holds {plan.records}")
            self.decide(plan)
            temp.flush()
        except BaseException:
            temp.close()
            raise
        return plan

    def number_records(self) -> None:
        """Read the records' oids once (frames only, nothing analysed) and
        give each a new oid: the record of rank r among the file's oids
        gets the r-th new oid.  The oid map is then an :class:`OidSet`
        (one byte an old oid), its ranks and an array of new oids (8 bytes
        a record), not a dict.  A fault in the file stops this early; the
        check pass then meets it where it is, in order."""
        records = self.records
        try:
            for oid in self.reader.oids():
                if len(oid) == 8:
                    records.add_new(int.from_bytes(oid, "big"))
        except (PClassesError, ValueError):
            pass
        self.ranks = OidRanks(records)
        self._find = self.ranks.find
        new_oid = self.connection._storage.new_oid
        news = self.news
        append = news.append
        given = len(records)
        while given:
            x = int.from_bytes(new_oid(), "big")
            given -= 1
            if x > news.last:
                append(x)
                continue
            # (a storage that does not count up: sorted once, at the end)
            rest = array("Q", news)
            rest.append(x)
            for _ in range(given):
                rest.append(int.from_bytes(new_oid(), "big"))
            self.news = OidRuns(sorted(rest))
            break

    def new_of(self, old: bytes) -> bytes | None:
        """The new oid of ``old``: a rebound class or handle, a record of
        the file, or ``None`` (no record: the reference dangles)."""
        if self.mapping or self.zexp_classes:
            got = self.mapping.get(old)
            if got is not None:
                return got
            if old in self.zexp_classes:
                return None
        if len(old) != 8:
            return None
        r = self._find(int.from_bytes(old, "big"))
        return None if r < 0 else self.news[r].to_bytes(8, "big")

    def target_of(self, old: bytes) -> bytes:
        """What a reference to ``old`` is rewritten to (NOWHERE if it dangles)."""
        return self.new_of(old) or NOWHERE

    def bind_class_references(self) -> None:
        """Rebind the manifest's references to classes stored in the source
        database to the target's class table, by guid."""
        manifest = self.reader.manifest
        declared = manifest.class_references if manifest is not None else {}
        if not declared:
            return
        table = class_table(self.connection, create=False)
        for oid, (guid, name) in sorted(declared.items()):
            if guid == HANDLE_REFERENCE:
                self._bind_handle(oid, name)
                continue
            self._bind_class(oid, guid, name, table)

    def _bind_handle(self, oid: bytes, name: str) -> None:
        """A database handle the records refer to (remote references): the
        target database's handle of that name, or a missing name."""
        from ..tree.handle import HANDLES_KEY

        root = self.connection.root()
        handles = root.get(HANDLES_KEY) if hasattr(root, "get") else None
        handle = handles.get(name) if handles is not None else None
        if handle is None or handle._p_oid is None:
            self.class_refs_missing.append(f"database handle {name!r} (remote references)")
            return
        self.mapping[oid] = handle._p_oid
        self.bound.add(oid)

    def _bind_class(self, oid: bytes, guid: str, name: str, table: Any) -> bytes | None:
        cls = table.get(guid) if table is not None else None
        label = f"{GUID_PREFIX}{guid}.{name} (database-resident class, guid {guid})"
        broken = self.missing == "broken"
        if cls is not None and cls._p_oid is not None and (broken or not is_placeholder(cls)):
            new = cls._p_oid
            if is_placeholder(cls):  # an earlier import's placeholder
                self.missing_names.append(label)
        elif cls is None and broken:
            # A placeholder class under the same guid, stored once every
            # check has passed: the references load as broken objects.
            self.missing_names.append(label)
            reserved = self.placeholders.get(guid)
            if reserved is None:
                reserved = self.placeholders[guid] = (self.connection._storage.new_oid(), name)
            new = reserved[0]
        else:
            self.class_refs_missing.append(label)
            return None
        self.mapping[oid] = new
        self.bound.add(oid)
        return new  # type: ignore[no-any-return]

    def prepare_records(self, temp: Any) -> Plan:
        """Check, remap and write every record.

        The prepared records are written back to back into ``temp`` (in
        large chunks); ``plan.index`` says where each one is.
        """
        manifest = self.reader.manifest
        declared = manifest.class_references if manifest is not None else {}
        zexp = self.reader.kind == "zexp"
        seen = self.seen
        forward = self.forward
        records = self.records
        rank = cast(OidRanks, self.ranks).rank
        news = self.news
        spool = _Spool(temp)
        write = spool.write
        head = HEAD.pack
        index = RecordIndex(temp, news)
        plan = Plan(self.reader, temp, b"", self.refused, index)
        broken = self.missing == "broken"
        progress = self.progress
        #: the analyzer's globals of a record -> (refused, class pair, whether
        #: a global is changed by BUILD / SETITEM(S)): most records of a file
        #: share a few shapes, judged once each
        signatures: dict[tuple[Any, ...], tuple[frozenset[tuple[str, str]], Any, bool]] = {}
        holders = plan.reference_holders
        for oid, data, blob, a in self.reader.records():
            if len(oid) != 8:
                raise ExportFormatError("malformed record header")
            x = int.from_bytes(oid, "big")
            if seen.has(x):
                raise ExportFormatError(f"record {oid_repr(oid)} appears twice")
            if declared and oid in declared:
                raise ExportFormatError(f"record {oid_repr(oid)} is declared a class reference")
            if not records.has(x):  # (the first pass read the same frames)
                raise ExportFormatError("the file changed while it was read")
            seen.add_new(x)
            if a is None:
                try:
                    a = _analyze(data)
                except ValueError:
                    a = analyze(data, oid)  # raises the package's error, naming the record
            if zexp:
                meta = next(((g.module, g.name) for g in a.globals
                             if int(g.uses) & _CLASS_META), None)
                meta = meta or record_class(data, oid, a)
                if meta == CLASS_TABLE or meta in CLASS_METACLASSES:
                    # ZODB's exportFile copies class records along; they are
                    # not imported (nor judged) but rebound by guid, as our
                    # own format does.
                    self.bind_zexp_class_record(oid, data, meta)
                    continue
            verdict = signatures.get(sig := tuple(a.globals))
            if verdict is None:
                verdict = signatures[sig] = self.judge_globals(a)
            refused_here, pair, changes = verdict
            if pair is None:  # no class-metadata GLOBAL: formats 3 and 7, class records
                pair = record_class(data, oid, a)
                if pair is not None:
                    refused_here = refused_here | self.judge_class_pair(pair)
            if changes or a.calls_non_global:
                self.check_calls(data, oid, a)
            if a.pids and any(a.pid_classes):
                self.judge_pid_classes(a)
            if not index and pair is not None:
                # the root object is made at once (a ghost of its class)
                if self._judge(pair, 8 | USE_ROOT_CLASS, count_missing=False):
                    refused_here = refused_here | {pair}
            if a.has_ext or a.has_stack_global or a.protocol > 5 or data[-1:] != b".":
                _check_structure(data, oid, a)
            inert = bool(refused_here) and broken
            if inert:
                data, a = self.inert_class_metadata(data, oid, a, pair, refused_here)
            r = rank(x)
            new = news[r].to_bytes(8, "big")
            if not index:
                plan.root = new
            at = spool.pos  # the record's header; its bytes follow
            start = at + HEAD.size
            if a.pids:
                record, expect = self.remap(data, oid, a)
                if inert:
                    record = self.make_inert(record, oid, a, refused_here)
                if record is not data and (inert or not self.prove(data, a, record, oid)):
                    # (globals are renamed only with "broken"; with "error"
                    # the refusal is raised before anything is written)
                    pids2 = self.recheck(data, a, record, oid,
                                         refused_here if broken else frozenset()).pids
                    if expect and pids2 != a.pids:  # renamed globals moved the oids
                        moved = {p.oid_start: q.oid_start for p, q in zip(a.pids, pids2)}
                        expect = {moved[off]: w for off, w in expect.items()}
                if expect:
                    forward.append((start, expect))
            elif inert:
                record = self.make_inert(data, oid, a, refused_here)
                if record is not data:
                    self.recheck(data, a, record, oid, refused_here)
            else:
                record = data
            write(head(new, len(record), *(blob or (0, NO_BLOB))))
            write(record)
            if record.find(_MARK) >= 0:  # (faster than "in" for bytes)
                holders.append(new)
            if blob is not None:
                plan.blobs += 1
            index.add(r, at)
            if progress is not None and not len(index) % 4096:
                progress(len(index), None)
        spool.flush()
        if not index:
            raise ExportFormatError("the file holds no records")
        plan.records = len(index)
        return plan

    def bind_zexp_class_record(self, oid: bytes, data: bytes, pair: Any) -> None:
        """A class record of a ``.zexp``: its references point at the
        target's class with the same guid (a missing one is refused); the
        references written before it are settled at the end."""
        self.zexp_classes.add(oid)
        if pair == CLASS_TABLE:
            return  # references to the class table dangle, as before
        info = class_record_info(data, oid)
        if info is None:
            raise ExportFormatError(f"class record {oid_repr(oid)} has no guid")
        self.mapping.pop(oid, None)
        self._bind_class(oid, info[0], info[1], class_table(self.connection, create=False))

    def judge_globals(self, a: Any) -> tuple[frozenset[tuple[str, str]], Any, bool]:
        """Note every global the record names with how it uses it, judge
        each (global, use) once; the refused ones, the class-metadata
        global (``None`` when there is none) and whether a global is the
        target of BUILD or SETITEM(S)/APPEND(S)."""
        needs = self.needs
        judged = self.judged
        refused_here: set[tuple[str, str]] = set()
        reconstructs = False
        for g in a.globals:
            if (g.module, g.name) in RECONSTRUCTORS and int(g.uses) & USE_CALLED:
                reconstructs = True
        pair = None
        for g in a.globals:
            key: tuple[str, str] = (g.module, g.name)
            uses = int(g.uses)  # (IntFlag operators are slow)
            if uses & _CLASS_META and pair is None:
                pair = key
            if reconstructs and uses & USE_ARGUMENT:
                uses |= CALLED_BY_RECONSTRUCTOR
            needs[key] = needs.get(key, 0) | uses
            verdict = judged.get((key, uses))
            if verdict is None:
                verdict = self._judge(key, uses)
            if verdict:
                refused_here.add(key)
        changes = any(int(g.uses) & _CHANGED for g in a.globals)
        return frozenset(refused_here), pair, changes

    def judge_class_pair(self, pair: tuple[str, str]) -> frozenset[tuple[str, str]]:
        """Judge a class named by strings (formats 3 and 7)."""
        self.needs[pair] = self.needs.get(pair, 0) | 8
        verdict = self.judged.get((pair, 8))
        if verdict is None:
            verdict = self._judge(pair, 8)
        return frozenset({pair}) if verdict else frozenset()

    def _judge(self, key: tuple[str, str], uses: int, count_missing: bool = True) -> bool:
        verdict = self.judged.get((key, uses))
        if verdict is not None:
            return verdict
        v = check_globals({key: uses}, self.registry, self.connection, self.missing,
                          self.trust, self.policy)
        if v.missing and count_missing:
            self.missing_keys.add(key)
            self.missing_names.extend(v.missing)
        self.refused.update(v.refused)
        self.reasons.update(v.reasons)
        self.judged[(key, uses)] = verdict = bool(v.refused)
        return verdict

    def check_shapes(self, data: bytes, oid: bytes, a: Any) -> None:
        """Note calls of computed callables and state set on globals, the
        persistent references a record calls, and judge the class names of
        ``(oid, class)`` references (:mod:`pclasses.transfer.callsites`)."""
        if a.calls_non_global or any(int(g.uses) & _CHANGED for g in a.globals):
            self.check_calls(data, oid, a)
        self.judge_pid_classes(a)

    def check_calls(self, data: bytes, oid: bytes, a: Any) -> None:
        """Note calls of computed callables and state set on globals, and
        the persistent references a record calls."""
        try:
            facts = record_facts(data, a)
        except ValueError as exc:
            raise ExportFormatError(f"record {oid_repr(oid)} is not a readable ZODB "
                                    f"record ({exc})") from None
        self.shapes.extend(f"record {oid_repr(oid)}: {p}" for p in facts.problems)
        self.pid_calls.extend((oid, target) for target in facts.pid_calls)

    def judge_pid_classes(self, a: Any) -> None:
        """Judge the class names of ``(oid, class)`` references."""
        for part in dict.fromkeys(a.pid_classes):  # (in order, each once)
            if isinstance(part, tuple) and part[0] is not None and part[1] is not None:
                pair = (part[0], part[1])
                self.pid_classes.add(pair)
                self.needs[pair] = self.needs.get(pair, 0) | USE_PID_CLASS
                self._judge(pair, USE_PID_CLASS)

    def inert_class_metadata(self, data: bytes, oid: bytes, a: Any, pair: Any,
                             refused: frozenset[tuple[str, str]]) -> tuple[bytes, Any]:
        """Format 3/7 class metadata naming a refused global, renamed (a new
        class pickle, so the record is analysed again)."""
        if pair not in refused or any(int(g.uses) & _CLASS_META for g in a.globals):
            return data, a
        from ..record import read_class, replace_class_pickle

        if read_class(data, oid).format != 3:
            raise ExportFormatError(f"record {oid_repr(oid)}: its class metadata names "
                                    f"{pair[0]}.{pair[1]} with arguments")
        data = replace_class_pickle(data, a.end1, (REFUSED_PREFIX + pair[0], pair[1]))
        return data, analyze(data, oid)

    def remap(self, data: bytes, oid: bytes, a: Any
              ) -> tuple[bytes, dict[int, tuple[bytes, bool]]]:
        """The record with every reference's oid bytes replaced by its new
        oid, and ``{offset: (old oid, text form?)}`` of the references to
        records not met yet (their new oid may still change: dangling, class
        records)."""
        seen = self.seen
        bound = self.bound
        externals = self.externals
        new_of = self.new_of
        # only a .zexp's references can point at a record that turns out to
        # be a class record (rebound when it is met)
        zexp = self.reader.kind == "zexp"
        patches: dict[int, bytes] = {}  # offset -> new oid
        expect: dict[int, tuple[bytes, bool]] = {}
        ordered = True
        last = -1
        if a.ok_to_patch:
            # the analyzer found every oid a binary payload, recognised and
            # not used as anything else
            for site in a.pids:
                off = site.oid_start
                if off in patches:
                    continue  # a literal shared by several references (memoized oid)
                if site.oid_length != 8:
                    raise ExportFormatError(f"record {oid_repr(oid)} has a malformed oid")
                target = data[off:off + 8]
                if site.database is not None:
                    externals[(site.database, target)] = None
                    continue  # the other database's oid stays
                new = new_of(target)
                if new is None:  # no record of the file: it dangles
                    new = NOWHERE
                    self.dangling += 1
                elif zexp and target not in bound and target not in seen:
                    expect[off] = (target, False)
                patches[off] = new
                if off < last:
                    ordered = False
                last = off
        for site in () if a.ok_to_patch else a.pids:
            off, length, database = site.oid_start, site.oid_length, site.database
            if site.kind is EdgeKind.UNKNOWN or off < 0 or site.shared or length != 8:
                if length != 8 and site.kind is not EdgeKind.UNKNOWN and off >= 0 and \
                        not site.shared:
                    raise ExportFormatError(f"record {oid_repr(oid)} has a malformed oid")
                raise ExportFormatError(f"record {oid_repr(oid)} has a reference that "
                                        "cannot be rebound without unpickling")
            if off in patches:
                continue  # a literal shared by several references (memoized oid)
            end = off + 8
            target = data[off:end]
            if database is not None:
                externals[(database, target)] = None
                continue  # the other database's oid stays
            new = new_of(target)
            dangles = new is None
            if new is None:  # no record of the file: it dangles
                new = NOWHERE
            text = data[off - 2:off] not in _SHORT_BINARY and _literal_head(data, off) < 0
            if text and not _text_safe(new):
                raise ExportFormatError(
                    f"record {oid_repr(oid)} holds a text-form reference that cannot hold "
                    f"its new oid {oid_repr(new)} (write the file with a binary pickle)")
            if dangles:
                self.dangling += 1
            elif zexp and target not in bound and target not in seen:
                expect[off] = (target, text)
            patches[off] = new
            if off < last:
                ordered = False
            last = off
        if not patches:
            return data, expect
        offsets = list(patches)
        if not ordered or any(q - p < 8 for p, q in zip(offsets, offsets[1:])):
            # out of order or overlapping: patch in place
            out = bytearray(data)
            for o, n in patches.items():
                out[o:o + 8] = n
            return bytes(out), expect
        parts: list[bytes] = []
        done = 0  # the end of the last patched range: bytes before it are in ``parts``
        for off, new in patches.items():
            parts.append(data[done:off])
            parts.append(new)
            done = off + 8
        parts.append(data[done:])
        return b"".join(parts), expect

    def prove(self, old: bytes, a: Any, new: bytes, oid: bytes) -> bool:
        """Prove without a second analysis that ``new`` is the checked record
        ``old`` with only its references' oids replaced, when it can be.

        The analysis ``a`` of ``old`` must have found every reference's oid
        to be the whole payload of a binary string opcode (``ok_to_patch``:
        SHORT_BINBYTES, BINBYTES, BINBYTES8, SHORT_BINSTRING, BINSTRING; not
        shared with anything but references): an unpickler (and the
        analyzer) reads such a payload whatever its bytes are.  ``new`` must
        then be exactly ``old`` with each of those 8-byte payloads replaced
        by the new oid of the old one (a cross-database reference keeps its
        oid): rebuilt here from ``old`` and the oid mapping, independently
        of :meth:`remap`, and compared whole.  Returns False (the caller
        analyses ``new`` again, :meth:`recheck`) for what this cannot decide
        (text forms, overlapping ranges); raises when ``new`` differs.
        """
        if not a.ok_to_patch:
            return False
        target_of = self.target_of
        ranges = {p.oid_start: p.database for p in a.pids}
        parts: list[bytes] = []
        done = 0
        for off in sorted(ranges):
            if off < done:
                return False  # overlapping ranges: only the analyzer can tell
            end = off + 8
            was = old[off:end]
            now = was if ranges[off] is not None else target_of(was)
            parts.append(old[done:off])
            parts.append(now)
            done = end
        parts.append(old[done:])
        if b"".join(parts) != new:
            raise self._changed(oid, "meaning")
        return True

    def make_inert(self, record: bytes, oid: bytes, a: Any,
                   refused: frozenset[tuple[str, str]]) -> bytes:
        """Rename refused globals to names that never import (missing="broken")."""
        from ..record import FramedRecordError, rename_globals

        try:
            new, _renamed = rename_globals(
                record, a, lambda m, n: (REFUSED_PREFIX + m, n) if (m, n) in refused else None)
        except FramedRecordError:
            raise ExportFormatError(f"record {oid_repr(oid)}: a framed record cannot be made "
                                    "inert") from None
        return new

    def recheck(self, old: bytes, a: Any, new: bytes, oid: bytes,
                refused: frozenset[tuple[str, str]]) -> Any:
        """Analyse the patched record once more: it must mean what the old one
        meant, except for the remapped oids and the renamed globals.

        Oid bytes are patched in place (same length), so without renamed
        globals the analyzer must report exactly what it reported before
        (every opcode, offset and use); with renamed globals, the same
        globals under their new names and the same references.
        """
        b = analyze(new, oid)
        if not refused:
            if b != a or not _same_outside(old, _oid_ranges(a), new, _oid_ranges(b)):
                raise self._changed(oid, "meaning")
            return b

        if (b.protocol, b.has_ext, b.has_stack_global, b.has_frame, b.max_memo) != (
                a.protocol, a.has_ext, a.has_stack_global, a.has_frame, a.max_memo):
            raise self._changed(oid, "structure")
        if len(b.globals) != len(a.globals):
            raise self._changed(oid, "globals")
        for g, h in zip(a.globals, b.globals):
            key = (g.module, g.name)
            want = (REFUSED_PREFIX + str(g.module), g.name) if key in refused else key
            if (h.module, h.name) != want or h.opcode != g.opcode or h.uses != g.uses:
                raise self._changed(oid, "globals")
        if len(b.pids) != len(a.pids):
            raise self._changed(oid, "references")
        for p, q in zip(a.pids, b.pids):
            if p._replace(oid_start=0) != q._replace(oid_start=0):
                raise self._changed(oid, "references")
            was = old[p.oid_start:p.oid_start + 8]
            now = new[q.oid_start:q.oid_start + 8]
            if now != (was if p.database is not None else self.target_of(was)):
                raise self._changed(oid, "references")
        renamed_a = [(g.start, g.end) for g in a.globals if (g.module, g.name) in refused]
        renamed_b = [(h.start, h.end) for g, h in zip(a.globals, b.globals)
                     if (g.module, g.name) in refused]
        if not _same_outside(old, sorted(_oid_ranges(a) + renamed_a), new,
                             sorted(_oid_ranges(b) + renamed_b)):
            raise self._changed(oid, "meaning")
        return b

    @staticmethod
    def _changed(oid: bytes, what: str) -> ExportFormatError:
        return ExportFormatError(f"record {oid_repr(oid)}: rewriting it would change its "
                                 f"{what}; refused")

    def settle_forward_references(self, temp: Any) -> None:
        """References written before their target was met, whose target
        never came as a record: a ``.zexp``'s class record (pointed at the
        target's class it was rebound to), or an oid with no record in the
        file (a weak reference out of the subtree, a reference that dangled
        in the source).  Those were given fresh oids; after a reopen the
        storage could hand them out again, so they are pointed at an oid it
        never allocates (:data:`NOWHERE`)."""
        forward, self.forward = self.forward, []
        late = self.zexp_classes
        if not forward or not late:
            return
        bound = self.bound
        mapping = self.mapping
        here = temp.tell()
        for start, expect in forward:
            for off, (target, text) in expect.items():
                if target not in late:
                    continue
                if target in bound:
                    new = mapping[target]
                else:
                    new = NOWHERE
                    self.dangling += 1
                if text and not _text_safe(new):
                    raise ExportFormatError(f"a text-form reference cannot hold the oid "
                                            f"{oid_repr(new)}")
                temp.seek(start + off)
                temp.write(new)
        temp.seek(here)

    def decide(self, plan: Plan) -> None:
        """Refuse (raise) or accept what the records need, before anything
        is written."""
        connection = self.connection
        missing_names = list(self.missing_names) + list(self.class_refs_missing)
        dbs = getattr(connection.db(), "databases", {}) or {}
        for database in sorted({d for d, _o in self.externals}):
            if database not in dbs:
                missing_names.append(f"database {database!r} (cross-database references)")
        manifest = self.reader.manifest
        declared = manifest.class_references if manifest is not None else {}
        shapes = list(self.shapes)
        handles = {o for o, (guid, _n) in declared.items() if guid == HANDLE_REFERENCE}
        classes = (set(declared) | self.bound) - handles
        for oid, target in self.pid_calls:
            # A plain instance of a database-resident class: its class must
            # be a class reference rebound to the target's class table (a
            # database handle is not one).
            if target is None or target not in classes:
                shapes.append(f"record {oid_repr(oid)}: a call of a persistent object that "
                              "is not a class reference")
        refused_names = sorted(f"{m}.{nm}" for m, nm in self.refused)
        if shapes or self.refused & self.pid_classes:
            # Neither a computed callable nor a class named by strings in a
            # reference can be renamed away: refused even with "broken".
            raise RefusedGlobalsError(refused_names + shapes, self.reasons)
        if self.refused and self.missing == "error":
            raise RefusedGlobalsError(refused_names, self.reasons)
        missing_names = list(dict.fromkeys(missing_names))
        class_refs_missing = list(dict.fromkeys(self.class_refs_missing))
        if missing_names and self.missing == "error":
            raise MissingClassesError(missing_names)
        if class_refs_missing:
            # A plain instance of (or a reference to) a class stored in the
            # source database needs that class record; without it there is
            # nothing to import it as, not even a broken object.
            raise MissingClassesError(class_refs_missing)
        if plan.blobs:
            from ZODB.interfaces import IBlobStorage

            if not IBlobStorage.providedBy(connection._storage):
                raise TransferError(f"the file holds {plan.blobs} blobs and the target "
                                    "database has no blob support (open it with a blob "
                                    "directory)")
        plan.refused = self.refused
        plan.placeholders = self.placeholders
        manifest = self.reader.manifest
        plan.report = ImportReport(
            object=None, root_oid=plan.root,
            source_root_oid=manifest.root_oid if manifest is not None else None,
            source_database=manifest.source_database if manifest is not None else None,
            format=self.reader.kind, records=plan.records, blobs=plan.blobs,
            bytes=self.reader.size,
            classes=self._classes(),
            external_references=sorted(self.externals),
            missing=missing_names,
            refused=sorted(f"{m}.{nm}" for m, nm in self.refused),
            dangling=self.dangling,
        )

    def _classes(self) -> list[ClassNeed]:
        """What the records need, as the target sees it: ``importable``,
        ``database-resident`` (with its guid), ``missing`` (imported as
        broken objects) or ``refused`` (made inert)."""
        out = []
        for module, name in sorted(self.needs):
            guid = module[len(GUID_PREFIX):] if is_guid_module(module) else None
            if (module, name) in self.refused:
                kind = "refused"
            elif (module, name) in self.missing_keys:
                kind = "missing"
            elif guid is not None:
                kind = "database-resident"
            else:
                kind = "importable"
            out.append(ClassNeed(module, name, kind, guid))
        return out


def _oid_ranges(a: Analysis) -> list[tuple[int, int]]:
    return [(p.oid_start, p.oid_start + p.oid_length) for p in a.pids]


def _same_outside(old: bytes, old_edits: list[tuple[int, int]], new: bytes,
                  new_edits: list[tuple[int, int]]) -> bool:
    """Whether ``old`` and ``new`` hold the same bytes outside their edited
    ranges (matched in order)."""
    if len(old_edits) != len(new_edits):
        return False
    i = j = 0
    for (a0, a1), (b0, b1) in zip(old_edits, new_edits):
        if a0 < i or b0 < j:  # overlapping ranges (one literal, several references)
            i, j = max(i, a1), max(j, b1)
            continue
        if old[i:a0] != new[j:b0]:
            return False
        i, j = a1, b1
    return old[i:] == new[j:]


def _check_structure(data: bytes, oid: bytes, a: Any) -> None:
    """Refuse records import cannot rebind safely."""
    if a.has_ext:
        raise ExportFormatError(f"record {oid_repr(oid)} uses pickle extension codes")
    if a.protocol > 5 or not data.endswith(b"."):
        raise ExportFormatError(f"record {oid_repr(oid)} is not a readable ZODB record")
    if a.has_stack_global:
        raise ExportFormatError(f"record {oid_repr(oid)} uses protocol-4 globals, "
                                "which import cannot rebind safely")


# ---------------------------------------------------------------------------
# import_subtree
# ---------------------------------------------------------------------------


@overload
def import_subtree(connection: Any, file: str | os.PathLike[str] | BinaryIO, *,
                   missing: str = ..., into: Any = ..., name: str | None = ...,
                   registry: ClassRegistry | None = ..., progress: Progress | None = ...,
                   savepoint: bool = ..., trust: Trust | Iterable[str] | None = ...,
                   default_name: str | None = ..., allow_code: bool = ...,
                   strict: Iterable[str] | None = ..., report: Literal[False] = ...,
                   references: str = ...) -> Any: ...


@overload
def import_subtree(connection: Any, file: str | os.PathLike[str] | BinaryIO, *,
                   missing: str = ..., into: Any = ..., name: str | None = ...,
                   registry: ClassRegistry | None = ..., progress: Progress | None = ...,
                   savepoint: bool = ..., trust: Trust | Iterable[str] | None = ...,
                   default_name: str | None = ..., allow_code: bool = ...,
                   strict: Iterable[str] | None = ..., report: Literal[True],
                   references: str = ...) -> ImportReport: ...


def import_subtree(
    connection: Any,
    file: str | os.PathLike[str] | BinaryIO,
    *,
    missing: str = "error",
    into: Any = None,
    name: str | None = None,
    registry: ClassRegistry | None = None,
    progress: Progress | None = None,
    savepoint: bool = False,
    trust: Trust | Iterable[str] | None = None,
    default_name: str | None = None,
    allow_code: bool = False,
    strict: Iterable[str] | None = None,
    report: bool = False,
    references: str = "error",
) -> Any:
    """Import an export file (this package's format or ZODB's ``.zexp``).

    Every check happens before anything is written: the file's digest and
    structure, then every class and global the records name against the
    target's registry and class table.  ``missing="error"`` raises
    :class:`MissingClassesError` (or :class:`RefusedGlobalsError`) listing
    them all; ``missing="broken"`` imports objects of missing classes as
    broken objects (they reattach when their classes arrive) and turns
    refused globals into inert broken data.  The records are then stored in
    the caller's transaction under new oids; abort leaves the target as it
    was.  ``into`` (a mapping) receives the imported object under ``name``
    (default: the manifest's name, else ``default_name``).  Returns the imported root object, or
    with ``report=True`` an :class:`~pclasses.transfer.reports.ImportReport`
    whose ``object`` it is.

    The records are written straight into the storage when the transaction
    commits (one copy); until then the imported objects are read from the
    prepared records, so the returned object can be used at once, and
    several imports can wait in one transaction.  ``savepoint=True`` writes
    them into a savepoint at once instead, as ZODB's ``importFile`` does
    (every record is then copied twice).

    The checks resolve names without running modules that are not trusted
    (:mod:`pclasses.trust`; ``trust`` names more packages): a class whose
    module exists but is not trusted is refused unjudged until trusted.

    What the records may name is decided by :mod:`pclasses.transfer.policy`
    (see ``docs/security.md``): ``allow_code=True`` also admits classes that
    turn state into code (source methods, persistent classes); ``strict``
    (package names) admits only classes of those packages besides plain
    data types.

    Intrinsic references (:mod:`pclasses.refs`) the records hold are
    registered in the target: internal ones re-rooted under the new
    location; external keys of always-mode references must resolve there
    (:class:`~pclasses.errors.MissingReferencesError`, nothing written)
    unless ``references="dangling"`` (kept as they are) or ``"null"``
    (references whose keys do not resolve in the target become ``None``).
    """
    t0 = time.perf_counter()
    policy = ImportPolicy(allow_code=bool(allow_code),
                          strict=None if strict is None
                          else (strict,) if isinstance(strict, str) else tuple(strict))
    if missing not in ("error", "broken"):
        raise TransferError(f"missing must be 'error' or 'broken', not {missing!r}")
    if registry is None:
        registry = getattr(connection.db().classFactory, "registry", None) or ClassRegistry()
    _writer_connection(connection)
    pending = pending_import(connection)  # refuses a foreign pending import
    with opened(file) as f:
        with no_gc():
            reader = Reader(f)
            reader.verify()
            plan = CheckPass(connection, registry, missing, progress, reader, trust=trust,
                             policy=policy).run()
        try:
            key = name or (reader.manifest.name if reader.manifest else None) or default_name
            if into is not None:
                if not key:
                    raise TransferError("give a name to import into a container")
                if key in into:
                    raise TransferError(f"{key!r} already exists in the target container")
            from ..refs.transfer import POLICIES, import_references

            if plan.reference_holders or references not in POLICIES:
                # (the check pass noted the records that hold references)
                import_references(connection, plan, reader.manifest, into, key, references)
            own_reader = bool(plan.blobs) and isinstance(file, (str, os.PathLike))
            if own_reader:
                # The store pass copies blobs from the export file after this
                # function has closed it.
                plan.reader = Reader(open(plan.reader.f.name, "rb"))  # noqa: SIM115
        except BaseException:
            plan.temp.close()
            raise
    if plan.placeholders:
        from ..pclass import add_placeholder

        for guid, (oid, cname) in sorted(plan.placeholders.items()):
            add_placeholder(connection, guid, cname, oid)
    obj = root_ghost(connection, plan)
    pending.add(connection, plan, own_reader=own_reader, savepoint=savepoint)
    if savepoint:
        connection.transaction_manager.get().savepoint(optimistic=True)
    if into is not None:
        into[key] = obj
    rep = plan.report
    assert rep is not None
    rep.object = obj
    rep.name = key
    rep.savepoint = savepoint
    rep.file = os.fspath(file) if isinstance(file, (str, os.PathLike)) else None
    rep.seconds = time.perf_counter() - t0
    return rep if report else obj


def _writer_connection(connection: Any) -> None:
    """Make sure ``connection`` handles our imports during its commit."""
    from ..connection import install, is_installed

    install(connection.db())
    if not is_installed(connection):
        raise TransferError("import needs a ZODB connection (or one made by a database "
                            "opened with pclasses)")
