"""Text from the data made safe to show: one line, nothing a browser interprets.

:func:`clean` writes every character that is not printable (control and
format characters, line separators, lone surrogates) as a Python escape, as
the command line does; :func:`h` then escapes it for HTML (``<``, ``&``,
quotes), so a class name or a key can never open a tag or an attribute.
"""

from __future__ import annotations

from html import escape

__all__ = ["clean", "h"]

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean(value: object) -> str:
    """``value`` as one printable line (non-printable characters escaped)."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100
                       else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def h(value: object) -> str:
    """``value`` cleaned and escaped for HTML text and quoted attributes."""
    return escape(clean(value), quote=True)
