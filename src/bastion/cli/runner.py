"""Scan a stream of walk entries on N worker threads, yielding results in input order.

The engine releases the GIL in its heavy parts (Hyperscan, hashlib, file reads), so threads share
one loaded database with no copy per worker.  At most ``jobs * 4`` files are in flight, so memory
stays bounded however long the walk is.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from bastion.cli.walker import Entry, Kind
from bastion.engine import Engine, ScanResult


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def scan_entries(engine: Engine, entries: Iterable[Entry], jobs: int) -> Iterator[tuple[Entry, ScanResult | None]]:
    """Yield ``(entry, result)``; ``result`` is None for entries that are not files to scan."""
    if jobs <= 1:
        for entry in entries:
            yield entry, engine.scan_file(entry.path) if entry.kind is Kind.FILE else None
        return
    window = jobs * 4
    pending: deque[tuple[Entry, Future[ScanResult] | None]] = deque()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="bastion-scan") as pool:
        for entry in entries:
            fut = pool.submit(engine.scan_file, entry.path) if entry.kind is Kind.FILE else None
            pending.append((entry, fut))
            while len(pending) > window or (pending and pending[0][1] is None):
                head, hfut = pending.popleft()
                yield head, hfut.result() if hfut is not None else None
        while pending:
            head, hfut = pending.popleft()
            yield head, hfut.result() if hfut is not None else None
