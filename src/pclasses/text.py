"""One line of text from the data, safe to show on a terminal or in a page.

Names read from records or files (classes, keys, databases) pass through
:func:`printable` before the command line prints them or the report page
escapes them for HTML: a hostile name can neither drive a terminal nor break
a line.
"""

from __future__ import annotations

__all__ = ["printable"]

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: object) -> str:
    """``value`` as one line of text that is safe on a terminal.

    Every character that is not printable (control characters, hence
    escape sequences; format characters such as bidirectional overrides;
    line separators; lone surrogates) is written as a Python escape
    (``\\x1b``, ``\\u202e``), so one value is one line and the terminal
    interprets nothing.
    """
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
