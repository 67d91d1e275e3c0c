"""The two Linux interfaces the watcher uses, through ctypes (no package wraps both, and each is a
handful of calls):

* **fanotify** with permission events (``FAN_OPEN_PERM``): the kernel holds each ``open`` of a
  watched file until the watcher answers allow or deny.  Needs CAP_SYS_ADMIN.
* **inotify**: notification only (``IN_CLOSE_WRITE``, ``IN_MOVED_TO``, ``IN_CREATE`` for new
  directories), for any user.

Both are used with inode marks on the watched directories (``FAN_EVENT_ON_CHILD``), never a
whole mount, so the rest of the machine is untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

# fanotify (linux/fanotify.h)
FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_CONTENT = 0x04
FAN_UNLIMITED_QUEUE = 0x10
FAN_MARK_ADD = 0x01
FAN_CLOSE_WRITE = 0x08
FAN_OPEN_PERM = 0x10000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_Q_OVERFLOW = 0x4000
_FAN_META = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_FAN_RESPONSE = struct.Struct("=iI")
AT_FDCWD = -100

# inotify (sys/inotify.h)
IN_CLOSE_WRITE = 0x08
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_IN_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len

_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


@dataclass(frozen=True, slots=True)
class FanEvent:
    mask: int
    fd: int     # an open, read-only descriptor of the file (the watcher closes it), or -1
    pid: int    # the process that opened or wrote it

    @property
    def permission(self) -> bool:
        return bool(self.mask & FAN_OPEN_PERM)


class Fanotify:
    """A fanotify group for permission (open) and close-write events on marked directories."""

    def __init__(self) -> None:
        # An unlimited queue: when a bounded one overflows, the kernel *allows* the permission events it
        # could not queue without telling anyone (seen here: a burst of 10,000 writes let infected
        # files be read).  Held opens bound it; notification events are read at once.
        flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE
        self.fd = _check(_libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE), "fanotify_init")

    def watch_directory(self, path: str) -> None:
        mask = FAN_OPEN_PERM | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD
        _check(_libc.fanotify_mark(self.fd, FAN_MARK_ADD, mask, AT_FDCWD, os.fsencode(path)), f"fanotify_mark {path}")

    def read(self) -> Iterator[FanEvent]:
        """The events of one read (blocks until there is at least one)."""
        buf = os.read(self.fd, 64 * 1024)
        at = 0
        while at + _FAN_META.size <= len(buf):
            length, _vers, _res, meta_len, mask, fd, pid = _FAN_META.unpack_from(buf, at)
            if length < _FAN_META.size:
                break
            yield FanEvent(mask, fd, pid)
            at += length

    def respond(self, fd: int, allow: bool) -> None:
        try:
            os.write(self.fd, _FAN_RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY))
        except OSError:
            pass  # the event was already answered (or the opener went away)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class InEvent:
    path: str
    mask: int

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & IN_ISDIR)


class Inotify:
    """inotify watches on directories: written-and-closed files, files moved in, new directories."""

    MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF

    def __init__(self, mask: int | None = None) -> None:
        if mask is not None:
            self.MASK = mask
        self.fd = _check(_libc.inotify_init1(IN_CLOEXEC), "inotify_init1")
        self.dirs: dict[int, str] = {}

    def watch_directory(self, path: str) -> None:
        wd = _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), self.MASK), f"inotify_add_watch {path}")
        self.dirs[wd] = path

    def read(self) -> Iterator[InEvent]:
        """The events of one read (blocks until there is at least one).  ``IN_Q_OVERFLOW`` comes out
        as an event with an empty path: the caller must rescan, events were dropped."""
        buf = os.read(self.fd, 256 * 1024)
        at = 0
        while at + _IN_EVENT.size <= len(buf):
            wd, mask, _cookie, length = _IN_EVENT.unpack_from(buf, at)
            name = buf[at + _IN_EVENT.size: at + _IN_EVENT.size + length].rstrip(b"\0")
            at += _IN_EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                yield InEvent("", mask)
                continue
            if mask & IN_IGNORED:
                self.dirs.pop(wd, None)
                continue
            base = self.dirs.get(wd)
            if base is None:
                continue
            yield InEvent(os.path.join(base, os.fsdecode(name)) if name else base, mask)

    def close(self) -> None:
        os.close(self.fd)
