"""Reading a file through a memory map without holding its pages.

Pages of a file read through a memory map count in the process's resident
memory until they are unmapped, so every reader of a FileStorage (the
scans, the tree loader, the ``pclasses-zeo`` server) gives them back now
and then with :func:`drop_pages`.
"""

from __future__ import annotations

import mmap
from typing import Any

__all__ = ["DROP_BYTES", "PAGE_SPAN", "drop_pages"]

#: A memory map's pages are given back after about this many bytes read
#: through it (see :func:`drop_pages`), each record counted with
#: :data:`PAGE_SPAN` more: a fault maps the pages around the one asked
#: for (the kernel's fault-around, 64 KiB), so records read out of file
#: order hold far more pages than their bytes.
DROP_BYTES = 32 << 20
PAGE_SPAN = 64 << 10


def drop_pages(mm: Any) -> None:
    """Give back the pages of the file map ``mm`` the process has touched.

    Pages of a file read through a memory map count in the process's
    resident memory until unmapped: a scan of a 3 GB FileStorage would
    otherwise peak at 3 GB.  The pages stay in the page cache, so reading
    them again costs a minor fault, not a disk read.
    """
    advise = getattr(mm, "madvise", None)
    flag = getattr(mmap, "MADV_DONTNEED", None)
    if advise is not None and flag is not None:
        try:
            advise(flag)
        except (OSError, ValueError):  # a closed map, or a platform without it
            pass
