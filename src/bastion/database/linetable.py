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

import json
import os
from array import array
from collections.abc import Iterable, Iterator

RECORD = 16
_CHUNK = 4096  # records read at a time when a run is streamed


def sorted_run(records: bytes | bytearray, alerts: array | dict[int, int] | None) -> Iterator[bytes]:
    """A source's table from :func:`~bastion.signatures.textdb.line_records` and its per-line alert
    counts, sorted.  Bucketed by the digest's first two bytes first (a counting sort into one
    bytearray), then each small bucket sorted: sorting a 1M-line file's records as one list of
    bytes held ~50 MiB more at a whole compile's peak (measured on the benchmark database)."""
    size = len(records)
    starts = array("I", bytes(4 * 65537))
    for at in range(0, size, 12):
        starts[((records[at] << 8) | records[at + 1]) + 1] += 1
    for b in range(1, 65537):
        starts[b] += starts[b - 1]
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


def write_tables(directory: str, runs: Iterable[tuple[int, Iterable[bytes]]]) -> None:
    """Write ``lines.table``/``lines.index`` from (source index, sorted records) runs."""
    index: dict[str, list[int]] = {}
    at = 0
    with open(os.path.join(directory, "lines.table"), "wb") as fh:
        for source, records in runs:
            count = total = 0
            for rec in records:
                fh.write(rec)
                count += 1
                total += int.from_bytes(rec[12:16], "big")
            index[str(source)] = [at, count, total]
            at += count
    with open(os.path.join(directory, "lines.index"), "w", encoding="utf-8") as fh:
        json.dump(index, fh, sort_keys=True)


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
        self._max_line = 0

    def close(self) -> None:
        self._file.close()

    def read(self, start: int, stop: int) -> bytes:
        """Records ``start`` to ``stop`` of the run, as bytes."""
        return os.pread(self._file.fileno(), (stop - start) * RECORD, (self.first + start) * RECORD)

    def records(self) -> Iterator[tuple[int, bytes]]:
        """(position, record) for every record, in order."""
        for start in range(0, self.count, _CHUNK):
            chunk = self.read(start, min(self.count, start + _CHUNK))
            for i in range(0, len(chunk), RECORD):
                yield start + i // RECORD, chunk[i:i + RECORD]

    def max_line(self) -> int:
        """The highest line number in the run."""
        self._bucket_starts()
        return self._max_line

    def _bucket_starts(self) -> array:
        if self._prefix is None:
            counts = array("I", bytes(4 * 65537))
            top = 0
            for _pos, rec in self.records():
                counts[((rec[0] << 8) | rec[1]) + 1] += 1
                top = max(top, int.from_bytes(rec[8:12], "big"))
            self._max_line = top
            for i in range(1, 65537):
                counts[i] += counts[i - 1]
            self._prefix = counts
        return self._prefix

    def bucket(self, digest: bytes) -> tuple[int, bytes]:
        """(position of its first record, the records) of the run sharing ``digest``'s first two bytes."""
        prefix = self._bucket_starts()
        b = (digest[0] << 8) | digest[1]
        start, stop = prefix[b], prefix[b + 1]
        return start, self.read(start, stop) if stop > start else b""
