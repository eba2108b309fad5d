"""The drawing of databases and the references between them, as inline SVG.

Databases sit on a circle (one alone sits in the middle); each pair of
databases with references gets an arrow labelled with the count, red and
dashed when some of them dangle (with the dangling count); references
within one database that dangle are a badge on its box; a database that
is referred to but not part of the report (unknown or unavailable) is a
dashed red box.  Every text goes through :func:`html.escape`.
"""

from __future__ import annotations

import math
from html import escape

from .text import clean

__all__ = ["draw"]

_W = 880
_BOX_W = 180
_BOX_H = 52
_MAX_NODES = 40


def draw(nodes: list[tuple[str, int]], links: list[tuple[str, str, int, int, bool]]) -> str:
    """An ``<svg>`` of ``nodes`` (``(name, records)``) and ``links``
    (``(source, target, count, dangling, target_missing)``)."""
    names = [n for n, _ in nodes][:_MAX_NODES]
    records = dict(nodes)
    for _source, target, _count, _dangling, missing in links:
        if missing and target not in names and len(names) < _MAX_NODES:
            names.append(target)
    missing_names = {t for _s, t, _c, _d, m in links if m}
    n = len(names)
    radius = 0 if n <= 1 else max(100, min(280, 45 * n))
    height: float = 2 * radius + _BOX_H + 90
    cx, cy = _W / 2, radius + _BOX_H / 2 + 40
    pos: dict[str, tuple[float, float]] = {}
    for i, name in enumerate(names):
        angle = -math.pi / 2 + 2 * math.pi * i / max(n, 1)
        pos[name] = (cx + radius * math.cos(angle) * 1.25, cy + radius * math.sin(angle))
    if pos:  # fit the height to the nodes (a circle of three leaves its bottom empty)
        top = min(y for _, y in pos.values())
        bottom = max(y for _, y in pos.values())
        shift = _BOX_H / 2 + 40 - top
        pos = {k: (x, y + shift) for k, (x, y) in pos.items()}
        height = bottom - top + _BOX_H + 80
    self_dangling = {s: d for s, t, _c, d, _m in links if s == t and d}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="db-drawing" role="img" '
        f'viewBox="0 0 {_W} {height:.0f}" width="100%" '
        f'aria-label="databases and the references between them">',
        "<defs>"
        '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" '
        'fill="#555"/></marker>'
        '<marker id="arrow-bad" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" '
        'fill="#c62828"/></marker></defs>',
    ]
    for source, target, count, dangling, _missing in links:
        if source == target or source not in pos or target not in pos:
            continue
        parts.append(_edge(pos[source], pos[target], count, dangling,
                           bidirectional=any(s == target and t == source
                                             for s, t, *_ in links)))
    for name in names:
        x, y = pos[name]
        missing = name in missing_names and name not in records
        cls = "node missing" if missing else "node"
        sub = ("not in the report" if missing
               else f"{records.get(name, 0):,} records")
        parts.append(
            f'<g class="{cls}" data-db="{escape(clean(name))}">'
            f'<rect x="{x - _BOX_W / 2:.1f}" y="{y - _BOX_H / 2:.1f}" width="{_BOX_W}" '
            f'height="{_BOX_H}" rx="8"/>'
            f'<text x="{x:.1f}" y="{y - 4:.1f}" class="name">{escape(_short(name))}</text>'
            f'<text x="{x:.1f}" y="{y + 14:.1f}" class="sub">{escape(sub)}</text></g>')
        if self_dangling.get(name):
            parts.append(
                f'<g class="badge"><circle cx="{x + _BOX_W / 2:.1f}" '
                f'cy="{y - _BOX_H / 2:.1f}" r="13"/><text x="{x + _BOX_W / 2:.1f}" '
                f'y="{y - _BOX_H / 2 + 4:.1f}">{self_dangling[name]}</text>'
                f'<title>{self_dangling[name]} dangling reference(s) within '
                f'{escape(clean(name))}</title></g>')
    if not names:
        parts.append(f'<text x="{cx}" y="{cy}" class="sub">no databases</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(name: str, width: int = 22) -> str:
    text = clean(name)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _edge(a: tuple[float, float], b: tuple[float, float], count: int, dangling: int,
          bidirectional: bool) -> str:
    (x1, y1), (x2, y2) = a, b
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy) or 1.0
    ux, uy = dx / length, dy / length
    # Leave the boxes: shorten by how far the line runs inside each box.
    inset = min(abs(_BOX_W / 2 / ux) if ux else math.inf,
                abs(_BOX_H / 2 / uy) if uy else math.inf) + 4
    sx, sy = x1 + ux * inset, y1 + uy * inset
    ex, ey = x2 - ux * inset, y2 - uy * inset
    # Two arrows between the same pair bend to opposite sides.
    bend = 40 if bidirectional else 0
    mx, my = (sx + ex) / 2 - uy * bend, (sy + ey) / 2 + ux * bend
    bad = dangling > 0
    label = f"{count:,}" + (f" ({dangling:,} dangling)" if bad else "")
    cls = "edge dangling" if bad else "edge"
    marker = "arrow-bad" if bad else "arrow"
    return (f'<g class="{cls}"><path d="M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} '
            f'{ex:.1f},{ey:.1f}" marker-end="url(#{marker})"/>'
            f'<text x="{mx:.1f}" y="{my - 6:.1f}">{escape(label)}</text></g>')
