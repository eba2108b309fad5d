"""Interfaces of the events pclasses publishes through ``zope.event``.

Subscribers registered with ``zope.component`` (``@adapter(IClassReattachedEvent)``
and ``provideHandler``) receive them, since zope.component dispatches
zope.event notifications by interface.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IClassReattachedEvent", "ICrossDatabaseReferenceEvent"]


class IClassReattachedEvent(Interface):  # type: ignore[misc]  # zope.interface is untyped
    """Broken objects of a class were turned back into instances of it."""

    module = Attribute("The module name the records use")
    name = Attribute("The class name the records use")
    cls = Attribute("The class the objects are now instances of")
    count = Attribute("How many objects were reattached")


class ICrossDatabaseReferenceEvent(Interface):  # type: ignore[misc]  # zope.interface is untyped
    """An object about to be stored holds a reference into another database.

    Published (when the source database's ``check_xrefs`` is on) for every
    cross-database reference of every object a commit stores; a subscriber
    vetoes by raising, which aborts the commit in every database.
    """

    source = Attribute("The persistent object whose record holds the reference "
                       "(even when the reference sits in a non-persistent sub-object)")
    target = Attribute("The referenced object (never activated by the check)")
    source_database = Attribute("Name of the source object's database (str)")
    target_database = Attribute("Name of the target object's database (str)")
