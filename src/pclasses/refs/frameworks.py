"""zope.container's and OFS's move and remove events, honoured.

Applications on those frameworks keep their containers: a subscriber on
``zope.event`` (installed with :mod:`pclasses.refs`, idle until one of those
packages is imported) gives their containment events the meaning of
:func:`~pclasses.refs.containment.remove` and
:func:`~pclasses.refs.containment.move`:

* OFS sends ``IObjectWillBeRemovedEvent`` / ``IObjectWillBeMovedEvent``
  before it changes anything (``manage_delObjects``, ``manage_renameObject``,
  cut and paste): a removal that would leave an always-mode reference
  dangling raises :class:`~pclasses.ReferentialIntegrityError` there, and
  a move sends the vetoable :class:`~pclasses.KeyChanged`, before the
  change.
* zope.container sends ``IObjectRemovedEvent`` after a ``BTreeContainer``
  has dropped the item (a ``SampleContainer`` before): when the removal is
  refused the item is put back (``_setitemf``, which also restores the
  container's length) before the error is raised, so the container is as
  it was and the transaction stays usable.
* ``IObjectMovedEvent`` (a move or a rename, e.g. zope.copypastemove's
  ``ObjectMover``, or assigning an object placed elsewhere into a
  container): the reference ids at and under the old key get the new
  key, so references follow, in every mode.
* ``IObjectAddedEvent``: what connections cached for the key is dropped.

Containers that are not located (no key) are none of our business: their
events are ignored.  Nothing here imports zope.container or OFS.
"""

from __future__ import annotations

import sys
from typing import Any

import zope.event

from ..errors import UnlocatedError
from .containment import announced, child_key, container_key, placed, rekeyed, removed
from .events import KeyChanged, notify, own_subscriber

__all__ = ["handle", "install", "uninstall"]

# ``announced``: ids of objects whose removal or move was checked before it
# happened (OFS's will-be events, pclasses.remove); the after-event then
# only does the bookkeeping, or nothing.
_announced = announced


def _key(parent: Any, name: Any) -> tuple[Any, str] | None:
    if parent is None or not isinstance(name, str) or not name:
        return None
    try:
        jar, key = container_key(parent)  # (wrapped: OFS locates through it)
    except (UnlocatedError, KeyError, AttributeError):
        return None
    if jar is None:
        return None
    return jar, child_key(key, name)


def _base(obj: Any) -> Any:
    """The object without its acquisition wrapper (OFS)."""
    return getattr(obj, "aq_base", obj)


def handle(event: Any) -> None:
    """The ``zope.event`` subscriber (see the module docstring)."""
    # (getattr: the modules may be half imported when their own import
    # sends an event)
    moved = getattr(sys.modules.get("zope.lifecycleevent.interfaces"), "IObjectMovedEvent", None)
    if moved is None:
        return
    will = getattr(sys.modules.get("OFS.interfaces"), "IObjectWillBeMovedEvent", None)
    if will is not None and will.providedBy(event):
        _before(event)
    elif moved.providedBy(event):
        _after(event)


def _before(event: Any) -> None:
    if _announced.get(id(_base(event.object))) == "pclasses":
        return
    old = _key(event.oldParent, event.oldName)
    if old is None:
        return
    jar, old_key = old
    new = _key(event.newParent, event.newName)
    if new is None and event.newParent is None:
        removed(jar, old_key)  # raises before OFS changes anything
        _announced[id(_base(event.object))] = old_key
    elif new is not None and new[1] != old_key:
        notify(KeyChanged(old_key, new[1], _base(event.object)))  # a veto raises here
        _announced[id(_base(event.object))] = old_key


def _after(event: Any) -> None:
    obj = _base(event.object)
    if _announced.get(id(obj)) == "pclasses":
        return
    announced = _announced.pop(id(obj), None)
    old = _key(event.oldParent, event.oldName)
    new = _key(event.newParent, event.newName)
    if old is None:
        if new is not None:
            placed(*new)
        return
    jar, old_key = old
    if new is None:
        if event.newParent is None:
            _removed_after(event, jar, old_key, check=announced is None)
        return
    if new[1] == old_key:
        return
    if announced is None:
        notify(KeyChanged(old_key, new[1], obj))
    rekeyed(jar, old_key, new[1])


def _removed_after(event: Any, jar: Any, key: str, check: bool) -> None:
    try:
        removed(jar, key, check=check)
    except Exception:
        container, name, obj = _base(event.oldParent), event.oldName, event.object
        restore = getattr(container, "_setitemf", None)
        if restore is not None and name not in container:
            restore(name, obj)  # a BTreeContainer drops the item before its event
        raise


def install() -> None:
    """Subscribe :func:`handle` to ``zope.event`` (once)."""
    if handle not in zope.event.subscribers:
        zope.event.subscribers.append(handle)
    own_subscriber[0] = handle


def uninstall() -> None:
    if handle in zope.event.subscribers:
        zope.event.subscribers.remove(handle)
