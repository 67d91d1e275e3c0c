"""Compact whole-file hash tables: sorted fixed-width arrays, memory-mapped.

One table per (hash kind, purpose).  A row is ``digest, size, name, source index, line``, each column
a numpy array saved as ``.npy`` and opened with ``mmap_mode='r'``: a 1M-entry MD5 table costs about
16 + 8 + 4 + 2 + 4 bytes per row plus the names blob (tens of MB, shared between all workers through
the page cache), and opening it costs milliseconds.  Lookups are binary searches (``searchsorted``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from bastion.signatures.model import ANY_SIZE, HashColumns

_FILES = ("digests", "sizes", "name_offsets", "sources", "lines", "distinct_sizes")


@dataclass(frozen=True, slots=True)
class HashHit:
    name: str
    source_index: int
    line: int


class HashTable:
    """Sorted digests with their sizes and evidence.  Immutable once built."""

    def __init__(self, digests: np.ndarray, sizes: np.ndarray, names_blob: bytes | memoryview,
                 name_offsets: np.ndarray, sources: np.ndarray, lines: np.ndarray,
                 distinct_sizes: np.ndarray) -> None:
        self.digests = digests
        self.sizes = sizes
        self.names_blob = names_blob
        self.name_offsets = name_offsets
        self.sources = sources
        self.lines = lines
        self.distinct_sizes = distinct_sizes
        self.any_size = bool(len(distinct_sizes)) and int(distinct_sizes[0]) == ANY_SIZE

    def __len__(self) -> int:
        return len(self.digests)

    @classmethod
    def build(cls, cols: HashColumns, digest_size: int) -> HashTable:
        digests = np.array(cols.digests, dtype=f"S{digest_size}")
        order = np.argsort(digests, kind="stable")
        digests = digests[order]
        sizes = np.frombuffer(cols.sizes, dtype=np.int64)[order] if len(cols) else np.zeros(0, np.int64)
        sources = np.frombuffer(cols.source_index, dtype=np.uint16)[order] if len(cols) else np.zeros(0, np.uint16)
        lines = np.frombuffer(cols.lines, dtype=np.uint32)[order] if len(cols) else np.zeros(0, np.uint32)
        encoded = [cols.names[i].encode("utf-8") for i in order.tolist()]
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.uint64, count=len(encoded))
        name_offsets = np.zeros(len(encoded) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=name_offsets[1:])
        return cls(digests, sizes, b"".join(encoded), name_offsets, sources, lines, np.unique(sizes))

    def save(self, directory: str, stem: str) -> None:
        for name in _FILES:
            np.save(os.path.join(directory, f"{stem}.{name}.npy"), getattr(self, name), allow_pickle=False)
        with open(os.path.join(directory, f"{stem}.names"), "wb") as fh:
            fh.write(self.names_blob)

    @classmethod
    def load(cls, directory: str, stem: str) -> HashTable:
        arrays = {name: np.load(os.path.join(directory, f"{stem}.{name}.npy"), mmap_mode="r", allow_pickle=False)
                  for name in _FILES}
        names_path = os.path.join(directory, f"{stem}.names")
        if os.path.getsize(names_path):
            blob: bytes | memoryview = memoryview(np.memmap(names_path, dtype=np.uint8, mode="r"))
        else:
            blob = b""
        return cls(arrays["digests"], arrays["sizes"], blob, arrays["name_offsets"], arrays["sources"],
                   arrays["lines"], arrays["distinct_sizes"])

    def may_hold_size(self, size: int) -> bool:
        """Cheap test before hashing a file: is there any row for this size (or a ``*`` row)?"""
        if self.any_size:
            return True
        sizes = self.distinct_sizes
        i = int(np.searchsorted(sizes, size))
        return i < len(sizes) and int(sizes[i]) == size

    def lookup(self, digest: bytes, size: int) -> list[HashHit]:
        """Every row whose digest equals ``digest`` and whose size is ``size`` or ``*``."""
        digests = self.digests
        n = len(digests)
        i = int(np.searchsorted(digests, digest))
        # numpy returns fixed-width bytes with trailing NULs stripped; strip ours the same way
        key = digest.rstrip(b"\0")
        hits: list[HashHit] = []
        while i < n and digests[i] == key:
            row_size = int(self.sizes[i])
            if row_size in (size, ANY_SIZE):
                hits.append(self.hit(i))
            i += 1
        return hits

    def hit(self, row: int) -> HashHit:
        start, end = int(self.name_offsets[row]), int(self.name_offsets[row + 1])
        name = bytes(self.names_blob[start:end]).decode("utf-8")
        return HashHit(name, int(self.sources[row]), int(self.lines[row]))
