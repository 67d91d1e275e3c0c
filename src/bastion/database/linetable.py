"""Line tables: the lines each source of a compiled database was compiled from.

A reload compiles only what changed (database/delta.py), and for a changed file that means its
changed *lines*: a daily update replaces a few hundred lines of files holding hundreds of thousands.
For that, every compiled database keeps, for each source it compiled, one record per signature line:

    digest (8 bytes: BLAKE2b of the line as the parser read it, CR stripped)
    line   (uint32, big-endian: records sort by digest, then line)
    alerts (uint32, big-endian: the signatures that can alert this line gave; 0 for an allow-list
            or file-type line, for a line skipped by functionality level or an ignore list)

Each source's records are sorted by digest; files::

    lines.table    the records of every source, one run after another
    lines.index    JSON {source index: [first record, record count, alerts in all]}

A run is read with ``pread`` and found into through a 64K-bucket prefix of the digest (like the
hash tables): comparing a changed 1M-line file costs a few seconds and little memory.
"""

from __future__ import annotations

import bisect
import json
import os
import sys
from array import array
from collections.abc import Iterable, Iterator

RECORD = 16
_CHUNK = 4096  # records read or counted at a time


def sorted_run(records: bytes | bytearray, alerts: array | dict[int, int] | None) -> Iterator[bytes]:
    """A source's table from :func:`~bastion.signatures.textdb.line_records` and its per-line alert
    counts, sorted.  Bucketed by the digest's first two bytes first (a counting sort into one
    bytearray), then each small bucket sorted: sorting a 1M-line file's records as one list of
    bytes held ~50 MiB more at a whole compile's peak (measured on the benchmark database)."""
    size = len(records)
    step = _CHUNK * 12
    starts = _bucket_starts(records[at:at + step] for at in range(0, size, step))
    placed = bytearray(size)
    free = array("I", starts)
    for at in range(0, size, 12):
        b = (records[at] << 8) | records[at + 1]
        to = free[b] * 12
        placed[to:to + 12] = records[at:at + 12]
        free[b] += 1
    for b in range(65536):
        first, stop = starts[b], starts[b + 1]
        if first == stop:
            continue
        for row in sorted(bytes(placed[i * 12:i * 12 + 12]) for i in range(first, stop)):
            line = int.from_bytes(row[8:12], "big")
            if isinstance(alerts, dict):
                n = alerts.get(line, 0)
            else:
                n = alerts[line] if alerts is not None and line < len(alerts) else 0
            yield row + n.to_bytes(4, "big")


def _bucket_starts(chunks: Iterable[bytes], width: int = 12) -> array:
    """Where each of the 65,536 buckets (a record's first two bytes) starts, for records of ``width``
    bytes given a chunk at a time: element ``b`` is the number of records in buckets below ``b``
    (65,537 elements).  The keys are picked out with slices and counted from an array, not record by
    record from the bytes: 2x faster on a 1M-line run."""
    starts = array("I", bytes(4 * 65537))
    for chunk in chunks:
        keys = bytearray(2 * (len(chunk) // width))
        keys[0::2], keys[1::2] = chunk[0::width], chunk[1::width]
        words = array("H", keys)
        if sys.byteorder == "little":
            words.byteswap()
        for key in words:
            starts[key + 1] += 1
    for b in range(1, 65537):
        starts[b] += starts[b - 1]
    return starts


def write_tables(directory: str, runs: Iterable[tuple[int, Iterable[bytes]]]) -> None:
    """Write ``lines.table``/``lines.index`` from (source index, sorted records) runs; a run is given
    as pieces of one or more whole records."""
    index: dict[str, list[int]] = {}
    at = 0
    with open(os.path.join(directory, "lines.table"), "wb") as fh:
        for source, pieces in runs:
            count = total = 0
            for piece in pieces:
                fh.write(piece)
                count += len(piece) // RECORD
                total += _alerts_in(piece)
            index[str(source)] = [at, count, total]
            at += count
    with open(os.path.join(directory, "lines.index"), "w", encoding="utf-8") as fh:
        json.dump(index, fh, sort_keys=True)


def _alerts_in(records: bytes) -> int:
    """The alerts fields of whole records, summed."""
    if len(records) == RECORD:
        return int.from_bytes(records[12:16], "big")
    words = array("I", records)
    if sys.byteorder == "little":
        words.byteswap()
    return sum(words[3::4])


def read_index(directory: str) -> dict[int, tuple[int, int, int]]:
    try:
        with open(os.path.join(directory, "lines.index"), encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError):
        return {}
    return {int(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in raw.items()}


class LineRun:
    """One source's sorted records in a ``lines.table``, read with ``pread``."""

    def __init__(self, directory: str, first: int, count: int) -> None:
        self._file = open(os.path.join(directory, "lines.table"), "rb", buffering=0)  # noqa: SIM115
        self.first = first
        self.count = count
        self._prefix: array | None = None

    def close(self) -> None:
        self._file.close()

    def read(self, start: int, stop: int) -> bytes:
        """Records ``start`` to ``stop`` of the run, as bytes."""
        return os.pread(self._file.fileno(), (stop - start) * RECORD, (self.first + start) * RECORD)

    def _bucket_starts(self) -> array:
        if self._prefix is None:
            self._prefix = _bucket_starts((self.read(start, min(self.count, start + _CHUNK))
                                           for start in range(0, self.count, _CHUNK)), RECORD)
        return self._prefix

    def bucket(self, digest: bytes) -> tuple[int, bytes]:
        """(position of its first record, the records) of the run sharing ``digest``'s first two bytes."""
        prefix = self._prefix if self._prefix is not None else self._bucket_starts()
        b = (digest[0] << 8) | digest[1]
        start, stop = prefix[b], prefix[b + 1]
        if stop <= start:
            return start, b""
        return start, os.pread(self._file.fileno(), (stop - start) * RECORD, (self.first + start) * RECORD)


class LineMap:
    """Where the lines of a source's earlier version are in its current version: runs of consecutive
    lines kept together, each ``(first old line, first new line, lines)``, sorted by old line; a line
    in no run is gone.  A daily update removes and adds a few hundred lines of a 1M-line file, so its
    map is a few thousand runs (one array of 4 bytes a line held 5 MiB of a reload's headroom on the
    benchmark database).  Stored as the runs' uint32 triples, native byte order (``remap.<source>``)."""

    __slots__ = ("runs", "_starts")

    def __init__(self, runs: array | None = None) -> None:
        self.runs = runs if runs is not None else array("I")
        self._starts: array | None = None

    def __len__(self) -> int:
        """Runs in the map."""
        return len(self.runs) // 3

    def __bool__(self) -> bool:
        return bool(self.runs)

    def add(self, old: int, new: int) -> None:
        """Old line ``old`` is line ``new`` now (called with ``new`` increasing)."""
        runs = self.runs
        if runs and runs[-3] + runs[-1] == old and runs[-2] + runs[-1] == new:
            runs[-1] += 1
        else:
            runs.extend((old, new, 1))

    def finish(self) -> LineMap:
        """Sorted by old line (after the last :meth:`add`)."""
        runs = self.runs
        if any(runs[i] < runs[i - 3] for i in range(3, len(runs), 3)):
            triples = sorted(zip(runs[0::3], runs[1::3], runs[2::3], strict=True))
            self.runs = array("I", (v for t in triples for v in t))
        self._starts = None
        return self

    def __getitem__(self, old: int) -> int:
        """The line old line ``old`` is on now; 0 when it is gone."""
        if self._starts is None:
            self._starts = self.runs[0::3]
        k = bisect.bisect_right(self._starts, old) - 1
        if k < 0:
            return 0
        first, new, count = self.runs[3 * k:3 * k + 3]
        return new + old - first if old < first + count else 0

    def then(self, later: LineMap) -> LineMap:
        """This map followed by ``later`` (from this map's old lines to ``later``'s new ones)."""
        out = LineMap()
        starts = later.runs[0::3]
        lr = later.runs
        for i in range(0, len(self.runs), 3):
            old, mid, count = self.runs[i:i + 3]
            end = mid + count
            k = max(0, bisect.bisect_right(starts, mid) - 1)
            while k < len(starts) and starts[k] < end:
                first, new, n = lr[3 * k:3 * k + 3]
                lo, hi = max(mid, first), min(end, first + n)
                if lo < hi:
                    out.runs.extend((old + lo - mid, new + lo - first, hi - lo))
                k += 1
        return out.finish()

    def save(self, path: str) -> None:
        with open(path, "wb") as fh:
            self.runs.tofile(fh)

    @classmethod
    def load(cls, path: str) -> LineMap:
        runs = array("I")
        with open(path, "rb") as fh:
            runs.frombytes(fh.read())
        return cls(runs)
