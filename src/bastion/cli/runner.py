"""Scan a stream of walk entries on N worker threads, yielding results in input order.

The engine releases the GIL in its heavy parts (Hyperscan, hashlib, file reads), so threads share
one loaded database with no copy per worker.  At most ``jobs * 4`` files are in flight, so memory
stays bounded however long the walk is.  (A plain thread pool rather than ``concurrent.futures``:
importing that and ``logging`` cost 7 ms of a 110 ms warm start, bench/README.md.)
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from queue import SimpleQueue

from bastion.cli.walker import Entry, Kind
from bastion.engine import Engine, ScanResult


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Job:
    __slots__ = ("entry", "result", "done")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.result: ScanResult | None = None
        self.done = threading.Event()


def _worker(engine: Engine, jobs: SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.result = engine.scan_file(job.entry.path)
        finally:
            job.done.set()


def scan_entries(engine: Engine, entries: Iterable[Entry], jobs: int) -> Iterator[tuple[Entry, ScanResult | None]]:
    """Yield ``(entry, result)``; ``result`` is None for entries that are not files to scan."""
    if jobs <= 1:
        for entry in entries:
            yield entry, engine.scan_file(entry.path) if entry.kind is Kind.FILE else None
        return
    queue: SimpleQueue[_Job | None] = SimpleQueue()
    workers = [threading.Thread(target=_worker, args=(engine, queue), name=f"bastion-scan-{i}", daemon=True)
               for i in range(jobs)]
    for w in workers:
        w.start()
    window = jobs * 4
    pending: deque[_Job] = deque()
    try:
        for entry in entries:
            job = _Job(entry)
            if entry.kind is Kind.FILE:
                queue.put(job)
            else:
                job.done.set()
            pending.append(job)
            while len(pending) > window or (pending and pending[0].done.is_set()):
                head = pending.popleft()
                head.done.wait()
                yield head.entry, head.result
        while pending:
            head = pending.popleft()
            head.done.wait()
            yield head.entry, head.result
    finally:
        for _ in workers:
            queue.put(None)
