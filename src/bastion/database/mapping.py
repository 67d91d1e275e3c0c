"""Read-only access to compiled-database columns without mapping them into the process.

Large columns (digests, sizes, names, body-signature records) are read with ``os.pread`` on demand:
the pages stay in the kernel's page cache, shared by every process and worker, and never count in
a scanner's resident memory.  Measured first with ``mmap``: on ext4 with large folios, each lookup
mapped up to 2 MiB of the table, and a 1 GiB scan ended with 100 MB of database resident
(bench/README.md, peak RSS).  Small index columns are read into memory once.
"""

from __future__ import annotations

import os
import threading
import weakref
from array import array
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar


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
    """A small column read into memory, shared with every other holder in this process of an array
    read from the same file (:func:`load_shared`): treat it as read-only."""
    def read(fh: BinaryIO) -> array:
        values = array(code)
        values.frombytes(fh.read())
        return values

    return load_shared(path, f"array:{code}", read)


# What has been loaded from compiled-database files in this process, by the file (device, inode,
# size, mtime) and how it was read.  A reload that only adds a layer (database/layered.py) opens
# the layers below through hard links to the files the database being served was loaded from, so
# their in-memory parts (Hyperscan databases, small columns) are shared instead of read again: the
# new database costs only its new layer.  Measured on the benchmark database (bench/README.md,
# daemon reload after an update-like edit): loading the new database beside the old one held
# 50 MiB more without this, ~1 MiB with it.  Compiled files are never rewritten in place (a
# compile publishes new files), so a file's identity names its content.
_SHARED: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()
T = TypeVar("T")


def load_shared(path: str, kind: str, read: Callable[[BinaryIO], T]) -> T:
    """``read(file)`` of the file at ``path``, or what an earlier call for the same file and
    ``kind`` returned while that is still held somewhere.  The result must take weak references."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = (kind, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _SHARED_LOCK:
            found = _SHARED.get(key)
            if found is None:
                found = read(fh)
                _SHARED[key] = found
            return found
