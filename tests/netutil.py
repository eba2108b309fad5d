"""Loopback helpers for tests that start servers (ZEO, PostgreSQL).

A module of its own, not ``conftest``: ``tests/`` and ``proptests/`` both
have a ``conftest.py``, so ``from conftest import ...`` finds whichever
directory comes first on ``sys.path`` when both are collected.
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "accepts"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def accepts(address: tuple[str, int]) -> bool:
    """Whether something accepts connections at ``address``."""
    try:
        with socket.create_connection(address, timeout=0.2):
            return True
    except OSError:
        return False
