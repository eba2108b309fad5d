"""Interfaces of the events pclasses publishes through ``zope.event``.

Subscribers registered with ``zope.component`` (``@adapter(IClassReattachedEvent)``
and ``provideHandler``) receive them, since zope.component dispatches
zope.event notifications by interface.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IClassReattachedEvent"]


class IClassReattachedEvent(Interface):
    """Broken objects of a class were turned back into instances of it."""

    module = Attribute("The module name the records use")
    name = Attribute("The class name the records use")
    cls = Attribute("The class the objects are now instances of")
    count = Attribute("How many objects were reattached")
