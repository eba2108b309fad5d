"""Event objects published with ``zope.event.notify``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Hooks zope.component's dispatch into zope.event, so handlers registered
# with ``zope.component.provideHandler`` receive these events.
import zope.component.event  # noqa: F401
from zope.interface import implementer

from .interfaces import IClassReattachedEvent

__all__ = ["ClassReattached"]


@implementer(IClassReattachedEvent)
@dataclass
class ClassReattached:
    """Broken objects of ``module.name`` are instances of ``cls`` again."""

    module: str
    name: str
    cls: Any
    count: int
