"""Opening databases the way ZODB users already name them.

A *target* is one of:

* a FileStorage path (``Data.fs``);
* a ZConfig file (``.conf``) holding ``<zodb>`` sections (several named ones
  form a multi-database; the first is returned) or a single storage section
  such as ``<filestorage>``, ``<clientstorage>`` or ``<relstorage>``;
  ``file.conf#NAME`` opens only the ``<zodb NAME>`` database (or the storage
  section named NAME) of the file;
* a zodburi URI (``file://``, ``memory://``, ``zeo://``, ``zconfig://``,
  RelStorage's ``postgres://`` and any scheme an installed package
  registers in ``zodburi.resolvers``).

``read_only=True`` opens every form read-only: a ZEO client read-only, a
RelStorage without creating its schema, in the history mode the database
has, so a role with only ``SELECT`` on its tables can read it
(:mod:`pclasses.storages.relstorage`).  A database without a root object
(or without RelStorage's tables) opened read-only is an error.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import ZODB

from .errors import StorageOpenError
from .registry import ClassRegistry

__all__ = ["open", "open_storage", "target_kind", "find_blob_dir"]

_ZODB_SECTION = re.compile(r"^\s*<zodb(\s|>)", re.MULTILINE | re.IGNORECASE)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


_ZCONFIG_SUFFIXES = (".conf", ".cfg", ".zcml.conf")


def target_kind(target: str | os.PathLike[str]) -> str:
    """``"uri"``, ``"zconfig"`` or ``"filestorage"``."""
    text = os.fspath(target)
    if _URI.match(text):
        return "uri"
    if text.endswith(_ZCONFIG_SUFFIXES):
        return "zconfig"
    base, sep, section = text.rpartition("#")
    if sep and section and base.endswith(_ZCONFIG_SUFFIXES):
        return "zconfig"
    return "filestorage"


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if name == "LockError":
        return (f"the storage is locked by another process ({text})" if text
                else "the storage is locked")
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if name == "ReadOnlyError":
        return "the database is empty (no root object) and was opened read-only"
    if "out of shared memory" in text or "max_locks_per_transaction" in text:
        return (f"{name}: PostgreSQL's lock table is full (raise max_locks_per_transaction "
                "or use smaller batches)")
    return f"{name}: {text}" if text else name


def open(  # noqa: A001 - mirrors ZODB's own ``ZODB.DB`` / ``open`` habit
    target: str | os.PathLike[str],
    registry: ClassRegistry | None = None,
    *,
    read_only: bool = False,
    create: bool = True,
    blob_dir: str | os.PathLike[str] | None = None,
    **db_kwargs: Any,
) -> ZODB.DB:
    """Open a database with a :class:`ClassRegistry` installed as its class factory.

    ``registry`` defaults to a new registry.  ``read_only`` opens storages
    read-only (a read-only FileStorage takes no lock, so it can be read
    while an application runs); ``create=False`` refuses to create a
    FileStorage that does not exist yet.  ``check_xrefs=True`` switches the
    cross-database reference seat belt on for every database of the target
    (or give the names of the databases to switch; see
    :mod:`pclasses.xrefs`).  ``blob_dir`` goes to a FileStorage (a path
    target); without it, an existing FileStorage gets the blob directory
    found where users keep it (:func:`find_blob_dir`).  Other keyword
    arguments go to ``ZODB.DB``.  Raises
    :class:`~pclasses.errors.StorageOpenError` for a missing, locked or
    corrupt storage or a target that cannot be read.
    """
    if registry is None:
        registry = ClassRegistry()
    check = db_kwargs.pop("check_xrefs", False)
    text = os.fspath(target)
    kind = target_kind(text)
    try:
        if blob_dir is not None and kind != "filestorage":
            raise StorageOpenError(text, f"a blob directory goes with a FileStorage path; a "
                                         f"{kind} target names its own")
        if kind == "uri":
            db = _open_uri(text, read_only, create, db_kwargs)
        elif kind == "zconfig":
            db = _open_zconfig(text, read_only, create, db_kwargs)
        else:
            if blob_dir is None and os.path.exists(text):
                blob_dir = find_blob_dir(text)
            storage = _filestorage(text, read_only, create, blob_dir)
            try:
                db = ZODB.DB(storage, **db_kwargs)
            except BaseException:
                storage.close()
                raise
    except StorageOpenError as exc:
        if exc.target == text:
            raise
        raise StorageOpenError(text, exc.reason) from exc
    except Exception as exc:
        raise StorageOpenError(text, _reason(exc)) from exc
    registry.install(db)
    if check:
        from .xrefs import check_xrefs

        names = None if check is True else list(check)
        if names is None:
            names = list(getattr(db, "databases", None) or {db.database_name: db})
        check_xrefs(db, True, names)
    return db


def open_storage(target: str | os.PathLike[str], *, read_only: bool = True) -> Any:
    """Open just the storage of a target (no ``ZODB.DB``); for record scans.

    A ZConfig file with several databases opens the first one's storage.
    """
    text = os.fspath(target)
    kind = target_kind(text)
    try:
        if kind == "filestorage":
            return _filestorage(text, read_only, create=False)
        db = open(text, read_only=read_only, create=False)
        return db.storage
    except StorageOpenError:
        raise
    except Exception as exc:
        raise StorageOpenError(text, _reason(exc)) from exc


def find_blob_dir(path: str | os.PathLike[str]) -> str | None:
    """The blob directory of the FileStorage at ``path``, where users lay
    it out: ``Data.fs.blobs`` or ``Data.blobs`` beside the file, ``blobs``
    or ``blobstorage`` in its directory, or ``blobstorage`` beside that
    directory (Plone's ``var/filestorage/Data.fs`` + ``var/blobstorage``).
    Only a directory ZODB made (it holds a ``.layout`` file) counts;
    ``None`` when there is none."""
    p = Path(path).absolute()
    here = p.parent
    for candidate in (Path(str(p) + ".blobs"), p.with_suffix(".blobs"), here / "blobs",
                      here / "blobstorage", here.parent / "blobstorage"):
        if (candidate / ".layout").is_file():
            return str(candidate)
    return None


def _filestorage(path: str, read_only: bool, create: bool,
                 blob_dir: str | os.PathLike[str] | None = None) -> Any:
    from ZODB.FileStorage import FileStorage

    _check_file(path, read_only, create)
    p = Path(path)
    if p.exists() and p.stat().st_size >= 4:
        with p.open("rb") as f:
            magic = f.read(4)
        if magic != b"FS21" and magic != b"FS30":
            raise StorageOpenError(path, f"not a FileStorage file (magic {magic!r})")
    try:
        if blob_dir is not None:
            return FileStorage(path, read_only=read_only, blob_dir=os.fspath(blob_dir))
        return FileStorage(path, read_only=read_only)
    except Exception as exc:
        raise StorageOpenError(path, _reason(exc)) from exc


def _with_query(uri: str, key: str, value: str) -> str:
    if re.search(rf"[?&]{re.escape(key)}=", uri):
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}{key}={value}"


def _open_uri(uri: str, read_only: bool, create: bool, db_kwargs: dict[str, Any]) -> ZODB.DB:
    import zodburi

    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        path = os.path.normpath(uri.split("file://", 1)[1].split("?", 1)[0])
        _check_file(path, read_only, create)
        if read_only:
            uri = _with_query(uri, "read_only", "1")
    elif scheme in ("zeo",) and read_only:
        uri = _with_query(uri, "read_only", "true")
    elif scheme == "zconfig":
        path, _sep, section = uri.split("://", 1)[1].partition("#")
        path = path.split("?", 1)[0]
        return _open_zconfig(f"{path}#{section}" if section else path, read_only, create,
                             db_kwargs)
    from .storages import relstorage as rs

    resolver = _resolver(scheme)
    if resolver is not None and rs.is_relstorage_uri_resolver(resolver):
        storage, unused = rs.open_uri(uri, resolver, read_only=read_only)
        try:
            return ZODB.DB(storage, **{**_db_keywords(uri, unused), **db_kwargs})
        except BaseException:
            storage.close()
            raise
    try:
        factory, dbkw = zodburi.resolve_uri(uri)
    except zodburi.NoResolverForScheme as exc:
        raise StorageOpenError(uri, f"unknown URI scheme {scheme!r}") from exc
    except KeyError as exc:
        raise StorageOpenError(uri, str(exc.args[0]) if exc.args else "bad URI") from exc
    storage = factory()
    try:
        return ZODB.DB(storage, **{**dbkw, **db_kwargs})
    except BaseException:
        storage.close()
        raise


def _resolver(scheme: str) -> Any:
    """The zodburi resolver installed for ``scheme``, or ``None``."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="zodburi.resolvers"):
        if ep.name == scheme:
            return ep.load()
    return None


def _db_keywords(uri: str, unused: dict[str, Any]) -> dict[str, Any]:
    """``ZODB.DB`` keywords from a URI's leftover query arguments, read the
    way zodburi reads them (``database_name``, ``connection_cache_size``...)."""
    import zodburi

    try:
        return dict(zodburi._get_dbkw(dict(unused)))
    except KeyError as exc:
        raise StorageOpenError(uri, f"unknown URI arguments {exc}") from exc


def _split_section(path: str) -> tuple[str, str | None]:
    base, sep, section = path.rpartition("#")
    if sep and section and base.endswith(_ZCONFIG_SUFFIXES):
        return base, section
    return path, None


def _open_zconfig(
    path: str, read_only: bool, create: bool, db_kwargs: dict[str, Any]
) -> ZODB.DB:
    import ZConfig
    import ZODB.config

    target = path
    path, section = _split_section(path)
    p = Path(path)
    if not p.exists():
        raise StorageOpenError(path, "no such file")
    text = p.read_text()
    url = p.resolve().as_uri()
    if _ZODB_SECTION.search(text):
        config, _handler = ZConfig.loadConfig(ZODB.config.getDbSchema(), url)
        factories = config.database
        if section is not None:
            factories = [f for f in factories if f.name == section]
            if not factories:
                names = ", ".join(repr(f.name) for f in config.database)
                raise StorageOpenError(target, f"no <zodb {section}> section (there are "
                                               f"{names})")
        for factory in factories:
            _adjust_storage(factory.config.storage, read_only, create, target)
            for name, value in db_kwargs.items():
                if not hasattr(factory.config, name):
                    raise StorageOpenError(path, f"keyword {name!r} cannot be set on a "
                                           "<zodb> section")
                setattr(factory.config, name, value)
        return ZODB.config.databaseFromConfig(factories)
    if section is not None:
        schema = ZConfig.loadSchemaFile(io.StringIO(_STORAGES_SCHEMA))
        config, _handler = ZConfig.loadConfig(schema, url)
        chosen = [s for s in config.storages if s.name == section]
        if not chosen:
            names = ", ".join(repr(s.name) for s in config.storages)
            raise StorageOpenError(target, f"no storage section named {section!r} (there "
                                           f"are {names})")
        factory = chosen[0]
    else:
        config, _handler = ZConfig.loadConfig(ZODB.config.getStorageSchema(), url)
        factory = config.storage
    _adjust_storage(factory, read_only, create, target)
    storage = factory.open()
    try:
        return ZODB.DB(storage, **db_kwargs)
    except BaseException:
        storage.close()
        raise


_STORAGES_SCHEMA = """<schema>
  <import package="ZODB"/>
  <multisection type="ZODB.storage" name="*" attribute="storages"/>
</schema>
"""


def _adjust_storage(factory: Any, read_only: bool, create: bool, target: str = "") -> None:
    """Apply ``read_only`` / ``create=False`` to a ZConfig storage section."""
    cfg = getattr(factory, "config", None)
    if cfg is None:
        return
    from .storages import relstorage as rs

    if rs.patch_zconfig_factory(factory, read_only=read_only, target=target):
        return
    file_path = getattr(cfg, "path", None)
    if isinstance(file_path, str) and getattr(factory, "name", None) != "zeo":
        _check_file(file_path, read_only, create)
    if read_only and hasattr(cfg, "read_only"):
        cfg.read_only = True
    for inner in ("base", "changes", "storage"):  # demostorage, wrappers
        sub = getattr(cfg, inner, None)
        if sub is not None and hasattr(sub, "config"):
            _adjust_storage(sub, read_only, create, target)


def _check_file(path: str, read_only: bool, create: bool) -> None:
    p = Path(path)
    if not p.exists():
        if read_only or not create:
            raise StorageOpenError(path, "no such file")
    elif p.is_dir():
        raise StorageOpenError(path, "is a directory, not a FileStorage file")
    elif read_only and p.stat().st_size == 0:
        raise StorageOpenError(path, "empty file, not a FileStorage file")
