"""Download progress bars: shown on stderr when it is a terminal, nothing otherwise (logs, pipes,
timers stay clean).  Used by every updater source that downloads: ClamAV mirrors and signed feeds."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar for one download of ``total`` bytes (None: unknown); yields ``advance(n_bytes)``."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    # on stderr: stdout carries the command's report (and rich's default console is stdout)
    with Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, advance=n)
