"""Methods stored as source text with a database-resident class.

``method(source)`` takes the source of one function.  The source is checked
when the method is defined (a syntax error names line and column), stored
with the class, and compiled again whenever the class is loaded.  Source
that fails then leaves a method that raises :class:`BrokenMethodError`
naming the class and method when called; every other method still works.
"""

from __future__ import annotations

import ast
import builtins
from typing import Any

from .errors import BrokenMethodError, MethodSourceError

__all__ = ["method", "SourceMethod", "MethodSourceError", "BrokenMethodError"]


def _parse(source: str) -> str:
    """The name of the single function defined by ``source``."""
    if not isinstance(source, str):
        raise MethodSourceError(f"method source must be a string, not {type(source).__name__}")
    try:
        tree = ast.parse(source, "<method source>", "exec")
    except SyntaxError as exc:
        raise MethodSourceError(exc.msg, exc.lineno, exc.offset, exc.text) from None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(tree.body) != 1 or len(defs) != 1:
        raise MethodSourceError("the source must define exactly one function and nothing else",
                                1, 1)
    return defs[0].name


def _compile(source: str, name: str) -> Any:
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "pclasses.methods.source"}
    code = compile(source, f"<pclasses method {name}>", "exec")
    exec(code, namespace)  # noqa: S102 - the whole point: code kept in the database
    return namespace[name]


class SourceMethod:
    """A function kept as source text; a descriptor like a plain function."""

    __slots__ = ("source", "name", "_func", "_error")

    def __init__(self, source: str) -> None:
        self.name = _parse(source)
        self.source = source
        self._func: Any = None
        self._error: str | None = None
        try:
            self._func = _compile(source, self.name)
        except Exception as exc:
            raise MethodSourceError(f"defining {self.name}() failed: "
                                    f"{type(exc).__name__}: {exc}") from None

    def __getstate__(self) -> dict[str, str]:
        return {"source": self.source, "name": self.name}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.source = state["source"]
        self.name = state.get("name") or "<unknown>"
        self._func = None
        self._error = None
        try:
            self.name = _parse(self.source)
            self._func = _compile(self.source, self.name)
        except Exception as exc:  # MethodSourceError, errors raised by the def itself
            self._error = f"{type(exc).__name__}: {exc}"

    def __get__(self, inst: Any, owner: type | None = None) -> Any:
        if self._error is not None:
            return _broken(owner, self.name, self._error).__get__(inst, owner)
        if inst is None:
            return self._func
        return self._func.__get__(inst, owner)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceMethod) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    @property
    def broken(self) -> str | None:
        """Why the source failed when its class loaded, or ``None``."""
        return self._error

    def __repr__(self) -> str:
        state = f" broken: {self._error}" if self._error else ""
        return f"<SourceMethod {self.name}(){state}>"


def _broken(owner: type | None, name: str, error: str) -> Any:
    cls = getattr(owner, "__name__", "?")

    def broken_method(*args: Any, **kw: Any) -> Any:
        raise BrokenMethodError(name, cls, error)

    broken_method.__name__ = name
    return broken_method


def method(source: str) -> SourceMethod:
    """A method defined by the source text of one function, for a persistent class."""
    return SourceMethod(source)
