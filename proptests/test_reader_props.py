"""Property: the safe reader agrees with ZODB on every record ZODB writes."""

from __future__ import annotations

import transaction
import ZODB
from hypothesis import given
from ZODB.MappingStorage import MappingStorage
from ZODB.serialize import get_refs, referencesf
from ZODB.utils import get_pickle_metadata

from pclasses.record.reader import read_class, read_record, scan_record
from pclasses.scan import iter_records
from strategies import graphs


def _records(root):
    db = ZODB.DB(MappingStorage())
    try:
        with db.transaction() as conn:
            conn.root()["g"] = root
        return list(iter_records(db.storage))
    finally:
        transaction.abort()
        db.close()


@given(graphs())
def test_reader_agrees_with_zodb(root):
    """For every record of a generated graph, our references, class and
    globals agree with referencesf, get_refs and get_pickle_metadata."""
    for oid, data in _records(root):
        info = scan_record(data, oid)
        full = read_record(data, oid)
        assert [r.oid for r in info.references if r.kind in ("oid", "oid_class")] == \
            referencesf(data)
        assert [r.oid for r in full.references] == [r.oid for r in info.references]
        theirs = get_refs(data)
        ours = [r for r in info.references if r.kind in ("oid", "oid_class", "multi")]
        assert [o for o, _ in theirs] == [r.oid for r in ours]
        module, name = get_pickle_metadata(data)
        assert (info.klass.module, info.klass.name) == (module, name)
        assert read_class(data, oid) == info.klass
        assert info.globals[0] == (module, name)
        assert full.globals == info.globals
