"""Compact whole-file hash tables: sorted fixed-width columns on disk.

One table per (hash kind, purpose).  Each column is one flat file of fixed-width values, sorted by
digest: ``digests`` (16/20/32 bytes a row), ``sizes`` (int64, -1 = any size), ``sources`` (uint16),
``lines`` (uint32), and the names as one blob with uint64 offsets.  A 1M-entry MD5 table costs
16 + 8 + 2 + 4 + 8 bytes a row plus the names on disk, and almost nothing in memory: the large
columns are read with ``pread`` (database/mapping.py says why not mmap); only three small indexes
are loaded:

* ``prefix``: for each value of a digest's first two bytes, where its rows start (65,537 uint32),
  so a lookup reads one small run of digests instead of binary-searching the whole column;
* ``small_sizes``: a bitmap of the sizes below 4 MiB that occur, and ``large_sizes``: the larger
  ones, sorted; a file whose size occurs nowhere is not even hashed.

Plain ``array`` instead of numpy: the start-up benchmark (bench/README.md, warm start) showed
importing numpy alone cost a third of Bastion's warm start.
"""

from __future__ import annotations

import bisect
import os
from array import array
from dataclasses import dataclass
from itertools import accumulate

from bastion.database.mapping import Blob, Column, load_array
from bastion.signatures.model import ANY_SIZE, HashColumns

# column -> array type code
_COLUMNS = {"sizes": "q", "sources": "H", "lines": "I", "name_offsets": "Q", "large_sizes": "q", "prefix": "I",
            "small_sizes": "B"}
_IN_MEMORY = ("large_sizes", "prefix", "small_sizes")
# sizes below this are looked up in a bitmap (512 KiB), larger ones in a sorted array
SMALL_SIZE_LIMIT = 1 << 22


@dataclass(frozen=True, slots=True)
class HashHit:
    name: str
    source_index: int
    line: int


class _FixedWidth:
    """A read-only sequence view of fixed-width records, for :mod:`bisect`."""

    __slots__ = ("buf", "width", "count")

    def __init__(self, buf: bytes, width: int) -> None:
        self.buf = buf
        self.width = width
        self.count = len(buf) // width

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> bytes:
        w = self.width
        return self.buf[i * w:(i + 1) * w]


class HashTable:
    """Sorted digests with their sizes and evidence.  Immutable once built.

    Columns are either in memory (``array``, when just built) or on disk (:class:`Column`, when
    loaded); both answer ``len``, indexing and ``items(start, stop)``.
    """

    def __init__(self, width: int, digests: Column | _InMemory, columns: dict[str, Column | _InMemory | array],
                 names: Blob | _InMemoryBlob) -> None:
        self.width = width
        self.digests = digests
        self.sizes = columns["sizes"]
        self.sources = columns["sources"]
        self.lines = columns["lines"]
        self.name_offsets = columns["name_offsets"]
        self.large_sizes = columns["large_sizes"]
        self.prefix = columns["prefix"]
        self.small_sizes = columns["small_sizes"]
        self.names = names
        self.any_size = len(self.large_sizes) > 0 and self.large_sizes[0] == ANY_SIZE

    def __len__(self) -> int:
        return len(self.digests)

    @classmethod
    def build(cls, cols: HashColumns, width: int) -> HashTable:
        order = sorted(range(len(cols)), key=cols.digest)
        sizes = array("q", [cols.sizes[i] for i in order])
        names = bytearray()
        offsets = array("Q", [0])
        for i in order:
            names += cols.name_bytes(i)
            offsets.append(len(names))
        distinct = set(sizes)
        small = bytearray(SMALL_SIZE_LIMIT // 8)
        for size in distinct:
            if 0 <= size < SMALL_SIZE_LIMIT:
                small[size >> 3] |= 1 << (size & 7)
        blob = cols.digest_blob
        sorted_digests = bytearray()
        prefix = array("I", bytes(4 * 65537))
        for i in order:
            at = i * width
            sorted_digests += blob[at:at + width]
            prefix[((blob[at] << 8) | blob[at + 1]) + 1] += 1
        prefix = array("I", accumulate(prefix))
        columns: dict[str, _InMemory | array] = {
            "sizes": _InMemory(sizes),
            "sources": _InMemory(array("H", [cols.source_index[i] for i in order])),
            "lines": _InMemory(array("I", [cols.lines[i] for i in order])),
            "name_offsets": _InMemory(offsets),
            "large_sizes": array("q", sorted(s for s in distinct if not 0 <= s < SMALL_SIZE_LIMIT)),
            "prefix": prefix,
            "small_sizes": array("B", small),
        }
        return cls(width, _InMemory(bytes(sorted_digests), width), columns, _InMemoryBlob(bytes(names)))

    def save(self, directory: str, stem: str) -> None:
        def write(name: str, data: bytes) -> None:
            with open(os.path.join(directory, f"{stem}.{name}"), "wb") as fh:
                fh.write(data)

        write("digests", self.digests.items(0, len(self.digests)))
        for name in _COLUMNS:
            col = getattr(self, name)
            write(name, col.tobytes() if isinstance(col, array) else col.items(0, len(col)))
        write("names", self.names.read(0, self.name_offsets[len(self.name_offsets) - 1]))

    @classmethod
    def load(cls, directory: str, stem: str, width: int) -> HashTable:
        path = os.path.join(directory, stem)
        columns: dict[str, Column | _InMemory | array] = {
            name: load_array(f"{path}.{name}", code) if name in _IN_MEMORY else Column(f"{path}.{name}", code)
            for name, code in _COLUMNS.items()
        }
        return cls(width, Column(f"{path}.digests", "B", width), columns, Blob(f"{path}.names"))

    def may_hold_size(self, size: int) -> bool:
        """Cheap test before hashing a file: is there any row for this size (or a ``*`` row)?"""
        if self.any_size:
            return True
        if 0 <= size < SMALL_SIZE_LIMIT:
            return bool(self.small_sizes[size >> 3] & (1 << (size & 7)))
        sizes = self.large_sizes
        i = bisect.bisect_left(sizes, size)  # type: ignore[arg-type]
        return i < len(sizes) and sizes[i] == size

    def lookup(self, digest: bytes, size: int) -> list[HashHit]:
        """Every row whose digest equals ``digest`` and whose size is ``size`` or ``*``."""
        bucket = (digest[0] << 8) | digest[1]
        start, end = self.prefix[bucket], self.prefix[bucket + 1]
        if start == end:
            return []
        run = _FixedWidth(self.digests.items(start, end), self.width)
        i = bisect.bisect_left(run, digest)  # type: ignore[arg-type]
        hits: list[HashHit] = []
        while i < len(run) and run[i] == digest:
            row = start + i
            if self.sizes[row] in (size, ANY_SIZE):
                hits.append(self.hit(row))
            i += 1
        return hits

    def hit(self, row: int) -> HashHit:
        start, end = self.name_offsets[row], self.name_offsets[row + 1]
        return HashHit(self.names.read(start, end).decode("utf-8"), self.sources[row], self.lines[row])


class _InMemory:
    """A just-built column: the same interface as :class:`Column`, over bytes or an array."""

    __slots__ = ("values", "width")

    def __init__(self, values: array | bytes, width: int = 0) -> None:
        self.values = values
        self.width = width  # for raw fixed-width bytes (digests); 0 for arrays

    def __len__(self) -> int:
        return len(self.values) // self.width if self.width else len(self.values)

    def __getitem__(self, i: int) -> int:
        return self.values[i]  # type: ignore[return-value]

    def items(self, start: int, stop: int) -> bytes:
        if self.width:
            return bytes(self.values[start * self.width:stop * self.width])
        assert isinstance(self.values, array)
        return self.values[start:stop].tobytes()


class _InMemoryBlob:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]
