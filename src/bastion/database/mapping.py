"""Read-only memory maps of compiled-database files."""

from __future__ import annotations

import mmap
import os


def map_readonly(path: str) -> memoryview:
    """Map ``path`` read-only (an empty file gives an empty view: mmap refuses length 0)."""
    if os.path.getsize(path) == 0:
        return memoryview(b"")
    with open(path, "rb") as fh:
        return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
