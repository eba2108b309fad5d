"""Oid kinds: how an application key becomes oid bytes, and new keys are made.

A row of an SQL store is a persistent object whose ``_p_oid`` is made from
its key.  Each *kind* of key (the seed's "DN oids, uid oids, UUID oids,
integer oids") is an :class:`OidKind`: it normalises a key, encodes it as
bytes and back, and makes new keys.  :data:`oid_kinds` is the registry, with
the built-in kinds:

* ``"int"``: integers; new keys come from a sequence kept in the store's SQL
  database (table ``pclasses_sequences``) that never hands out a key already
  in the table;
* ``"uuid"``: :class:`uuid.UUID` (text or UUID accepted); new keys are random;
* ``"uid"``: text; new keys are random hexadecimal text;
* ``"dn"``: LDAP distinguished names, normalised as RFC 4514 writes them
  (attribute types in lower case, values escaped canonically, no blanks
  around separators, multi-valued RDNs sorted); no new keys.

:meth:`OidKinds.oid` prefixes the kind's name, so oids of different kinds
never collide (``oid("int", 1) != oid("uid", "1")``).  Applications register
their own kinds with ``oid_kinds.register(name, kind)``.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import OidKindError

__all__ = ["OidKind", "IntKind", "UUIDKind", "UidKind", "DNKind", "OidKinds", "oid_kinds",
           "normalize_dn"]

#: Separates the kind's name from the encoded key in an oid.
SEP = b"\x00"


class OidKind:
    """One kind of key.  Subclasses override :meth:`encode`, :meth:`decode`
    and, when they can, :meth:`new_key` and :meth:`normalize`."""

    #: Column types (lower-case prefixes) this kind is inferred from.
    sql_types: tuple[str, ...] = ()

    def normalize(self, key: Any) -> Any:
        """The canonical form of ``key`` (raise :class:`OidKindError` when it is no key)."""
        return key

    def encode(self, key: Any) -> bytes:
        """The bytes of ``key`` (normalised first when it is not yet)."""
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        """The key :meth:`encode` made ``data`` from."""
        raise NotImplementedError

    def new_key(self, sequence: Callable[[], int]) -> Any:
        """A new key; ``sequence()`` gives the next number of the table's
        sequence in the store's database (for kinds that count)."""
        raise OidKindError(type(self).__name__, "makes no new keys: pass key= to store.new")

    def to_sql(self, key: Any) -> Any:
        """The value the key column holds for ``key``."""
        return key

    def from_sql(self, value: Any) -> Any:
        """The key for the key column's ``value``."""
        return self.normalize(value)


class IntKind(OidKind):
    """Integer keys; new ones from the store's sequence."""

    sql_types = ("int", "bigint", "smallint", "integer", "serial", "bigserial")

    def normalize(self, key: Any) -> int:
        if isinstance(key, bool) or not isinstance(key, int):
            raise OidKindError("int", f"{key!r} is not an integer")
        return key

    def encode(self, key: Any) -> bytes:
        value: int = key if type(key) is int else self.normalize(key)
        return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)

    def decode(self, data: bytes) -> int:
        return int.from_bytes(data, "big", signed=True)

    def new_key(self, sequence: Callable[[], int]) -> int:
        return sequence()

    def from_sql(self, value: Any) -> int:
        return value if type(value) is int else self.normalize(value)


class UUIDKind(OidKind):
    """UUID keys (stored as text, or PostgreSQL's ``uuid``); new ones random."""

    sql_types = ("uuid",)

    def normalize(self, key: Any) -> uuid.UUID:
        if isinstance(key, uuid.UUID):
            return key
        if isinstance(key, str):
            try:
                return uuid.UUID(key)
            except ValueError:
                pass
        raise OidKindError("uuid", f"{key!r} is not a UUID")

    def encode(self, key: Any) -> bytes:
        return (key if type(key) is uuid.UUID else self.normalize(key)).bytes

    def decode(self, data: bytes) -> uuid.UUID:
        return uuid.UUID(bytes=data)

    def new_key(self, sequence: Callable[[], int]) -> uuid.UUID:
        return uuid.uuid4()

    def to_sql(self, key: Any) -> str:
        return str(self.normalize(key))


class UidKind(OidKind):
    """Text keys; new ones random hexadecimal text."""

    sql_types: tuple[str, ...] = ("text", "varchar", "character", "char", "clob", "string",
                                  "nvarchar")

    def normalize(self, key: Any) -> str:
        if not isinstance(key, str):
            raise OidKindError("uid", f"{key!r} is not text")
        return key

    def encode(self, key: Any) -> bytes:
        text: str = key if type(key) is str and type(self) is UidKind else self.normalize(key)
        return text.encode("utf-8", "surrogatepass")

    def decode(self, data: bytes) -> str:
        return data.decode("utf-8", "surrogatepass")

    def new_key(self, sequence: Callable[[], int]) -> str:
        return uuid.uuid4().hex


_SPECIAL = set(',+"\\<>;=')
_AVA = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)\s*=", re.ASCII)


def _escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in _SPECIAL or ch == "\x00" or (i == 0 and ch in " #") \
                or (i == len(value) - 1 and ch == " "):
            out.append("\\00" if ch == "\x00" else "\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _split_value(text: str, pos: int) -> tuple[str, int]:
    """The unescaped attribute value starting at ``pos`` and where it ends."""
    n = len(text)
    while pos < n and text[pos] == " ":
        pos += 1
    if pos < n and text[pos] == "#":  # hex form: kept as written (lower case)
        end = pos + 1
        while end < n and text[end] not in ",+;":
            end += 1
        return text[pos:end].strip().lower(), end
    raw = bytearray()
    trailing = 0  # unescaped spaces at the end, dropped
    while pos < n and text[pos] not in ",+;":
        ch = text[pos]
        if ch == "\\":
            pair = text[pos + 1:pos + 3]
            if re.fullmatch(r"[0-9A-Fa-f]{2}", pair):
                raw.append(int(pair, 16))
                pos += 3
            elif pos + 1 < n:
                raw += text[pos + 1].encode("utf-8")
                pos += 2
            else:
                raise OidKindError("dn", f"{text!r} ends with a lone backslash")
            trailing = 0
            continue
        if ch == '"':
            raise OidKindError("dn", f"{text!r}: unescaped quote")
        raw += ch.encode("utf-8")
        trailing = trailing + 1 if ch == " " else 0
        pos += 1
    if trailing:
        del raw[-trailing:]
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError:
        raise OidKindError("dn", f"{text!r}: escaped bytes are not UTF-8") from None


def normalize_dn(text: str) -> str:
    """``text`` as RFC 4514 writes a DN: ``cn=A\\, B,ou=People,dc=example,dc=org``."""
    if not isinstance(text, str):
        raise OidKindError("dn", f"{text!r} is not text")
    rdns: list[str] = []
    avas: list[str] = []
    pos, n = 0, len(text)
    if not text.strip():
        return ""
    while True:
        m = _AVA.match(text, pos)
        if m is None:
            raise OidKindError("dn", f"{text!r} is not a distinguished name")
        value, pos = _split_value(text, m.end())
        avas.append(f"{m.group(1).lower()}={value if value.startswith('#') else _escape(value)}")
        if pos >= n:
            rdns.append("+".join(sorted(avas)))
            break
        sep = text[pos]
        pos += 1
        if sep != "+":
            rdns.append("+".join(sorted(avas)))
            avas = []
    return ",".join(rdns)


class DNKind(UidKind):
    """LDAP distinguished names, normalised (RFC 4514); no new keys."""

    sql_types = ()

    def normalize(self, key: Any) -> str:
        return normalize_dn(key)

    def new_key(self, sequence: Callable[[], int]) -> str:
        raise OidKindError("dn", "makes no new keys: pass key= (a DN) to store.new")


class OidKinds:
    """The registry of oid kinds by name (:data:`oid_kinds`)."""

    def __init__(self) -> None:
        self._kinds: dict[str, OidKind] = {}
        self._lock = threading.Lock()

    def register(self, name: str, kind: OidKind) -> OidKind:
        """Register ``kind`` under ``name`` (replacing an earlier one); returns it."""
        if not isinstance(name, str) or not name or "\x00" in name:
            raise OidKindError(str(name), "a kind needs a non-empty name without NUL")
        for method in ("encode", "decode", "normalize", "new_key"):
            if not callable(getattr(kind, method, None)):
                raise OidKindError(name, f"{kind!r} has no {method}() method")
        with self._lock:
            self._kinds[name] = kind
        return kind

    def unregister(self, name: str) -> None:
        """Forget the kind ``name`` (the built-in ones too)."""
        with self._lock:
            self._kinds.pop(name, None)

    def __getitem__(self, name: str) -> OidKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise OidKindError(name, "no such oid kind (see pclasses.oid_kinds)") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._kinds.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._kinds))

    def __len__(self) -> int:
        return len(self._kinds)

    def oid(self, name: str, key: Any) -> bytes:
        """The oid bytes of ``key`` of kind ``name`` (the kind's name, NUL, the key)."""
        kind = self[name]
        return name.encode("utf-8") + SEP + kind.encode(kind.normalize(key))

    def key(self, oid: bytes) -> tuple[str, Any]:
        """``(kind name, key)`` of an oid made by :meth:`oid`."""
        raw, sep, data = oid.partition(SEP)
        if not sep:
            raise OidKindError(repr(oid), "not an oid of a key kind")
        name = raw.decode("utf-8")
        return name, self[name].decode(data)

    def infer(self, sql_type: str) -> str:
        """The name of the kind a key column of ``sql_type`` gets by default."""
        text = (sql_type or "").strip().lower()
        for name, kind in self._kinds.items():
            if any(text.startswith(t) for t in getattr(kind, "sql_types", ())):
                return name
        return "uid"


#: The process-wide registry of oid kinds.
oid_kinds = OidKinds()
oid_kinds.register("int", IntKind())
oid_kinds.register("uuid", UUIDKind())
oid_kinds.register("uid", UidKind())
oid_kinds.register("dn", DNKind())
