"""Turn command-line targets into the objects to scan, the way clamscan walks them.

Rules (checked against clamscan 1.4.6 in tests/test_clamscan_parity.py):

* a target given on the command line is followed if it is a symlink; inside a walk, symlinks are
  reported as ``Symbolic link`` and not followed (clamscan's ``--follow-*-symlinks=1`` default);
* a directory target is walked one level deep without ``-r``, fully with ``-r``; each directory
  walked counts as scanned;
* FIFOs, sockets and devices named on the command line get ``Not supported file type``; met inside
  a walk they are skipped;
* ``--exclude``/``--include`` regexes test file paths, ``--exclude-dir``/``--include-dir`` directory
  paths (``re.search``); excluded objects are reported as ``Excluded``;
* entries are visited in sorted order (clamscan uses directory order), so output is deterministic;
* a directory is never entered twice (bind mounts, loops), so the walk always ends.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum


class Kind(Enum):
    FILE = "file"                # scan it
    DIRECTORY = "directory"      # a directory was walked (counted)
    EXCLUDED = "excluded"        # matched an exclude / missed an include
    SYMLINK = "symlink"          # a symlink met inside a walk, not followed
    UNSUPPORTED = "unsupported"  # FIFO, socket or device named on the command line
    MISSING = "missing"          # cannot be accessed at all
    ERROR = "error"              # a directory that cannot be read


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    path: str
    detail: str = ""


@dataclass(slots=True)
class WalkOptions:
    recursive: bool = False
    exclude: list[re.Pattern[str]] = field(default_factory=list)
    exclude_dir: list[re.Pattern[str]] = field(default_factory=list)
    include: list[re.Pattern[str]] = field(default_factory=list)
    include_dir: list[re.Pattern[str]] = field(default_factory=list)
    cross_fs: bool = True


def _file_excluded(path: str, opts: WalkOptions) -> bool:
    if any(rx.search(path) for rx in opts.exclude):
        return True
    return bool(opts.include) and not any(rx.search(path) for rx in opts.include)


def _dir_excluded(path: str, opts: WalkOptions) -> bool:
    if any(rx.search(path) for rx in opts.exclude_dir):
        return True
    return bool(opts.include_dir) and not any(rx.search(path) for rx in opts.include_dir)


def _clean(target: str) -> str:
    stripped = target.rstrip("/")
    return stripped or "/"


def walk(targets: list[str], opts: WalkOptions) -> Iterator[Entry]:
    """Yield an :class:`Entry` per object met, in a deterministic order."""
    seen_dirs: set[tuple[int, int]] = set()
    for raw in targets:
        target = _clean(raw)
        try:
            st = os.stat(target)
        except OSError as exc:
            yield Entry(Kind.MISSING, target, exc.strerror or str(exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            if _dir_excluded(target, opts):
                yield Entry(Kind.EXCLUDED, target)
                continue
            yield from _walk_dir(target, st, opts, seen_dirs, depth_ok=True)
        elif stat.S_ISREG(st.st_mode):
            yield Entry(Kind.EXCLUDED if _file_excluded(target, opts) else Kind.FILE, target)
        else:
            yield Entry(Kind.UNSUPPORTED, target, "Not supported file type")


def _walk_dir(top: str, top_st: os.stat_result, opts: WalkOptions, seen: set[tuple[int, int]],
              depth_ok: bool) -> Iterator[Entry]:
    key = (top_st.st_dev, top_st.st_ino)
    if key in seen:
        return
    seen.add(key)
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield Entry(Kind.ERROR, top, exc.strerror or str(exc))
        return
    yield Entry(Kind.DIRECTORY, top)
    prefix = top if top.endswith("/") else top + "/"
    for entry in entries:
        path = prefix + entry.name
        try:
            if entry.is_symlink():
                yield Entry(Kind.SYMLINK, path, "Symbolic link")
                continue
            if entry.is_dir(follow_symlinks=False):
                if not opts.recursive:
                    continue
                if _dir_excluded(path, opts):
                    yield Entry(Kind.EXCLUDED, path)
                    continue
                sub_st = entry.stat(follow_symlinks=False)
                if not opts.cross_fs and sub_st.st_dev != top_st.st_dev:
                    continue
                yield from _walk_dir(path, sub_st, opts, seen, depth_ok)
            elif entry.is_file(follow_symlinks=False):
                yield Entry(Kind.EXCLUDED if _file_excluded(path, opts) else Kind.FILE, path)
            # FIFOs, sockets and devices inside a walk are skipped, as clamscan does
        except OSError as exc:
            yield Entry(Kind.MISSING, path, exc.strerror or str(exc))
