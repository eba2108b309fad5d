"""A database's health on one self-contained HTML page (``pclasses report``).

* :mod:`.collect`: :class:`ReportData` from the library's own tools
  (census, broken inventory with root paths, reference check, cross-database
  references, intrinsic-reference verification) and the repair commands;
* :mod:`.render`: the page, from the same document ``--json`` prints;
* :mod:`.svg`: the drawing of databases and references;
* :mod:`.text`: data made safe to show.
"""

from __future__ import annotations

from .collect import LIMITS, ReportData, Suggestion, collect, report_target
from .render import render

__all__ = ["LIMITS", "ReportData", "Suggestion", "collect", "render", "report_target"]
