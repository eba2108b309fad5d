"""Text from the data made safe to show: one line, nothing a browser interprets.

:func:`clean` writes every character that is not printable (control and
format characters, line separators, lone surrogates) as a Python escape, as
the command line does; :func:`h` then escapes it for HTML (``<``, ``&``,
quotes), so a class name or a key can never open a tag or an attribute.
"""

from __future__ import annotations

from html import escape

from ..text import printable

__all__ = ["clean", "h"]

#: ``value`` as one printable line: the command line's escaping.
clean = printable


def h(value: object) -> str:
    """``value`` cleaned and escaped for HTML text and quoted attributes."""
    return escape(clean(value), quote=True)
