"""Compact whole-file hash tables: sorted fixed-width arrays, memory-mapped.

One table per (hash kind, purpose).  Each column is one flat file of fixed-width values, sorted by
digest: ``digests`` (16/20/32 bytes a row), ``sizes`` (int64, -1 = any size), ``sources`` (uint16),
``lines`` (uint32), and the names as one blob with uint64 offsets.  Opening a table maps the files
(milliseconds, whatever their size); the pages are shared by every worker through the page cache.
A 1M-entry MD5 table costs 16 + 8 + 2 + 4 + 8 bytes a row plus the names: tens of MB, not hundreds.
Lookups are binary searches over the mapped digests.

Plain ``mmap`` + ``memoryview.cast`` instead of numpy: the start-up benchmark (bench/README.md,
warm start) showed importing numpy alone cost a third of Bastion's warm start.
"""

from __future__ import annotations

import bisect
import os
from array import array
from dataclasses import dataclass
from itertools import accumulate

from bastion.database.mapping import map_readonly
from bastion.signatures.model import ANY_SIZE, HashColumns

_COLUMNS = {"sizes": "q", "sources": "H", "lines": "I", "name_offsets": "Q", "distinct_sizes": "q"}


@dataclass(frozen=True, slots=True)
class HashHit:
    name: str
    source_index: int
    line: int


class _FixedWidth:
    """A read-only sequence view of fixed-width records, for :mod:`bisect`."""

    __slots__ = ("buf", "width", "count")

    def __init__(self, buf: memoryview | bytes, width: int) -> None:
        self.buf = buf
        self.width = width
        self.count = len(buf) // width

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> bytes:
        w = self.width
        return bytes(self.buf[i * w:(i + 1) * w])


class HashTable:
    """Sorted digests with their sizes and evidence.  Immutable once built."""

    def __init__(self, width: int, digests: memoryview | bytes, columns: dict[str, memoryview],
                 names_blob: memoryview | bytes) -> None:
        self.width = width
        self.digests = _FixedWidth(digests, width)
        self.sizes = columns["sizes"]
        self.sources = columns["sources"]
        self.lines = columns["lines"]
        self.name_offsets = columns["name_offsets"]
        self.distinct_sizes = columns["distinct_sizes"]
        self.names_blob = names_blob
        self.any_size = len(self.distinct_sizes) > 0 and self.distinct_sizes[0] == ANY_SIZE

    def __len__(self) -> int:
        return len(self.digests)

    @classmethod
    def build(cls, cols: HashColumns, width: int) -> HashTable:
        digests = cols.digests
        order = sorted(range(len(digests)), key=digests.__getitem__)
        sizes = array("q", [cols.sizes[i] for i in order])
        encoded = [cols.names[i].encode("utf-8") for i in order]
        offsets = array("Q", [0])
        offsets.extend(accumulate(map(len, encoded)))
        columns = {
            "sizes": memoryview(sizes),
            "sources": memoryview(array("H", [cols.source_index[i] for i in order])),
            "lines": memoryview(array("I", [cols.lines[i] for i in order])),
            "name_offsets": memoryview(offsets),
            "distinct_sizes": memoryview(array("q", sorted(set(sizes)))),
        }
        return cls(width, b"".join([digests[i] for i in order]), columns, b"".join(encoded))

    def save(self, directory: str, stem: str) -> None:
        with open(os.path.join(directory, f"{stem}.digests"), "wb") as fh:
            fh.write(self.digests.buf)
        for name in _COLUMNS:
            with open(os.path.join(directory, f"{stem}.{name}"), "wb") as fh:
                fh.write(getattr(self, name))
        with open(os.path.join(directory, f"{stem}.names"), "wb") as fh:
            fh.write(self.names_blob)

    @classmethod
    def load(cls, directory: str, stem: str, width: int) -> HashTable:
        columns = {name: map_readonly(os.path.join(directory, f"{stem}.{name}")).cast(code)
                   for name, code in _COLUMNS.items()}
        return cls(width, map_readonly(os.path.join(directory, f"{stem}.digests")), columns,
                   map_readonly(os.path.join(directory, f"{stem}.names")))

    def may_hold_size(self, size: int) -> bool:
        """Cheap test before hashing a file: is there any row for this size (or a ``*`` row)?"""
        if self.any_size:
            return True
        sizes = self.distinct_sizes
        i = bisect.bisect_left(sizes, size)  # type: ignore[arg-type]
        return i < len(sizes) and sizes[i] == size

    def lookup(self, digest: bytes, size: int) -> list[HashHit]:
        """Every row whose digest equals ``digest`` and whose size is ``size`` or ``*``."""
        digests = self.digests
        i = bisect.bisect_left(digests, digest)  # type: ignore[arg-type]
        hits: list[HashHit] = []
        while i < len(digests) and digests[i] == digest:
            if self.sizes[i] in (size, ANY_SIZE):
                hits.append(self.hit(i))
            i += 1
        return hits

    def hit(self, row: int) -> HashHit:
        start, end = self.name_offsets[row], self.name_offsets[row + 1]
        return HashHit(bytes(self.names_blob[start:end]).decode("utf-8"), self.sources[row], self.lines[row])
