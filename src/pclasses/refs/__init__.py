"""Intrinsic references with integrity: foreign keys for ZODB objects.

One module per concept, from the bottom up:

* :mod:`~pclasses.refs.trees`: registry BTrees that merge identical inserts;
* :mod:`~pclasses.refs.registry`: the per-database reference registry;
* :mod:`~pclasses.refs.location`: keys, the key root, locators;
* :mod:`~pclasses.refs.events`: the events sent through zope.event;
* :mod:`~pclasses.refs.integrity`: links, modes, checks (commit hooks);
* :mod:`~pclasses.refs.descriptor`: ``Ref`` and ``RefSet``;
* :mod:`~pclasses.refs.containment`: ``place``/``remove``/``move``/``rename``;
* :mod:`~pclasses.refs.folder`: ``Folder``;
* :mod:`~pclasses.refs.keys`: ``rekey`` and ``replace_target``;
* :mod:`~pclasses.refs.modes`: ``set_ref_mode``;
* :mod:`~pclasses.refs.introspect`: ``referrers``/``is_referenced``/``references``;
* :mod:`~pclasses.refs.frameworks`: zope.container's and OFS's events honoured;
* :mod:`~pclasses.refs.verify`: verification and repair from the records.

See ``docs/references.md`` and design/decisions.md (D19).
"""

from __future__ import annotations

from .containment import move, place, remove, rename
from .descriptor import Ref, RefSet
from .events import KeyChanged, ReferenceAdded, ReferenceRemoved, RefModeChanged, TargetReplaced
from .folder import Folder
from .frameworks import install as _install_framework_events
from .introspect import Referrer, is_referenced, references, referrers
from .keys import rekey, replace_target
from .location import key_of, register_locator, resolve, unregister_locator
from .modes import ModeChange, set_ref_mode
from .registry import RefRegistry, registry_of

__all__ = [
    "Ref", "RefSet", "Folder", "place", "remove", "move", "rename", "rekey", "replace_target",
    "set_ref_mode", "ModeChange", "referrers", "is_referenced", "references", "Referrer",
    "ReferenceAdded", "ReferenceRemoved", "KeyChanged", "TargetReplaced", "RefModeChanged",
    "key_of", "resolve", "register_locator", "unregister_locator", "RefRegistry", "registry_of",
]

_install_framework_events()
