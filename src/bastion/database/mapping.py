"""Read-only access to compiled-database columns without mapping them into the process.

Large columns (digests, sizes, names, body-signature records) are read with ``os.pread`` on demand:
the pages stay in the kernel's page cache, shared by every process and worker, and never count in
a scanner's resident memory.  Measured first with ``mmap``: on ext4 with large folios, each lookup
mapped up to 2 MiB of the table, and a 1 GiB scan ended with 100 MB of database resident
(bench/README.md, peak RSS).  Small index columns are read into memory once.
"""

from __future__ import annotations

import os
from array import array


class Column:
    """A file of fixed-width items (an ``array`` type code), read item by item with ``pread``."""

    __slots__ = ("_file", "code", "itemsize", "count")

    def __init__(self, path: str, code: str, width: int | None = None) -> None:
        """``width`` overrides the item size for raw fixed-width records (then ``code`` is ``"B"``)."""
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - lives as long as the database
        self.code = code
        self.itemsize = width or array(code).itemsize
        self.count = os.fstat(self._file.fileno()).st_size // self.itemsize

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return array(self.code, os.pread(self._file.fileno(), self.itemsize, i * self.itemsize))[0]

    def items(self, start: int, stop: int) -> bytes:
        """The raw bytes of items ``start`` to ``stop`` (exclusive)."""
        size = self.itemsize
        return os.pread(self._file.fileno(), (stop - start) * size, start * size)


class Blob:
    """A file of variable-length records addressed by byte ranges, read with ``pread``."""

    __slots__ = ("_file",)

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - lives as long as the database

    def read(self, start: int, end: int) -> bytes:
        return os.pread(self._file.fileno(), end - start, start)


def load_array(path: str, code: str) -> array:
    """A small column read into memory."""
    values = array(code)
    with open(path, "rb") as fh:
        values.frombytes(fh.read())
    return values
