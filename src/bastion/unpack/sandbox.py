"""Run native archive parsers (libarchive) in a separate worker process.

Why: an archive is hostile input, and libarchive is C.  The test corpus found a corrupted cabinet
that makes libarchive 3.6.2 crash with a segmentation fault; in the scanning process that would take
down the whole scan or the daemon.  In a worker it costs one restart.

Workers (``python -m bastion.unpack.sandbox``) are started on demand and reused: each scanning thread
keeps a few idle ones.  A request holds its worker until its last member has been scanned, so an
archive inside an archive gets a second worker (nesting needs one per level, only while it lasts).  It
may not create or grow any file (``RLIMIT_FSIZE`` 0: members exist only in memory), may use at most
four times ``max_filesize`` plus a margin of memory (``RLIMIT_AS``), dumps no core and runs in a
directory that no longer exists.  The parent gives each request the scan's remaining time; a worker
that overruns it, dies or answers garbage is killed and replaced, and the request reports ``broken``
or ``max-scantime``.

Protocol on the worker's stdin/stdout (all integers little-endian):

* request: ``u32 n`` + JSON ``{"path": str, "limits": {...}}`` of n bytes, ``u64 m`` + m bytes of data;
* replies, one per member: ``b"C"`` ``u32`` name length, name (UTF-8), ``u64`` size, bytes; or
  ``b"L"`` ``u32`` length, JSON ``{"limit", "detail"}``; then ``b"E"`` ends the request.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits

_MiB = 1024 * 1024
MEMORY_MARGIN = 512 * _MiB
DEFAULT_TIMEOUT = 120.0
# idle workers kept per thread (deeper nesting starts more, and stops them afterwards)
KEEP_IDLE = 2

_local = threading.local()
_all_workers: list[subprocess.Popen[bytes]] = []
_all_lock = threading.Lock()


class _WorkerFailed(Exception):
    pass


def _package_root() -> str:
    import bastion

    return os.path.dirname(os.path.dirname(os.path.abspath(bastion.__file__)))


def _start_worker() -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = _package_root() + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "bastion.unpack.sandbox"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            cwd=tempfile.gettempdir(), close_fds=True)
    with _all_lock:
        _all_workers.append(proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.kill()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        pass
    with _all_lock:
        if proc in _all_workers:
            _all_workers.remove(proc)


@atexit.register
def _stop_all() -> None:
    with _all_lock:
        workers = list(_all_workers)
    for proc in workers:
        _stop(proc)


def _read_exact(fd: int, n: int, deadline: float) -> bytes:
    out = bytearray()
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, min(n - len(out), 1 << 20))
        if not chunk:
            raise _WorkerFailed("the unpacker process ended")
        out += chunk
    return bytes(out)


def run_sandboxed(data: bytes | memoryview, container_path: str, limits: UnpackLimits,
                  timeout: float = DEFAULT_TIMEOUT) -> Iterator[ChildObject | LimitExceeded]:
    """The members of an archive, read by libarchive in this thread's worker process."""
    idle: list[subprocess.Popen[bytes]] = _local.__dict__.setdefault("idle", [])
    proc = None
    while idle and proc is None:
        proc = idle.pop()
        if proc.poll() is not None:
            _stop(proc)
            proc = None
    if proc is None:
        proc = _start_worker()
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + timeout
    finished = False
    try:
        params = json.dumps({"path": container_path, "limits": asdict(limits)}).encode()
        try:
            proc.stdin.write(struct.pack("<I", len(params)) + params + struct.pack("<Q", len(data)))
            proc.stdin.write(data)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerFailed("the unpacker process is gone") from None
        fd = proc.stdout.fileno()
        max_member = limits.max_filesize + 1
        while True:
            kind = _read_exact(fd, 1, deadline)
            if kind == b"E":
                finished = True
                return
            if kind == b"C":
                (name_len,) = struct.unpack("<I", _read_exact(fd, 4, deadline))
                name = _read_exact(fd, name_len, deadline).decode("utf-8", "surrogateescape") if name_len else ""
                (size,) = struct.unpack("<Q", _read_exact(fd, 8, deadline))
                if name_len > 65536 or size > max_member:
                    raise _WorkerFailed("the unpacker process sent an impossible record")
                yield ChildObject(_read_exact(fd, size, deadline), name, f"{container_path}!{name}")
            elif kind == b"L":
                (size,) = struct.unpack("<I", _read_exact(fd, 4, deadline))
                if size > 65536:
                    raise _WorkerFailed("the unpacker process sent an impossible record")
                item = json.loads(_read_exact(fd, size, deadline))
                yield LimitExceeded(str(item["limit"]), str(item["detail"]))
            else:
                raise _WorkerFailed("the unpacker process sent garbage")
    except TimeoutError:
        yield LimitExceeded("max-scantime", f"{container_path}: unpacking took longer than {timeout:g} s")
    except _WorkerFailed as exc:
        yield LimitExceeded("broken", f"{container_path}: {exc} (the archive crashed the archive reader)")
    finally:
        if finished and len(idle) < KEEP_IDLE:
            idle.append(proc)
        else:
            # stopped early (a detection, a limit) or failed: the worker may still be writing; replace it
            _stop(proc)


# ------------------------------------------------------------------------------ the worker process
def _limit_worker(memory: int) -> None:
    import resource

    empty = tempfile.mkdtemp(prefix="bastion-unpack-")
    os.chdir(empty)
    os.rmdir(empty)  # nothing can be created under a removed directory
    for what, value in ((resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, memory)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass


def _serve() -> None:
    from bastion.unpack.libarchive_reader import read_archive

    stdin = sys.stdin.buffer
    out = sys.stdout.buffer
    limited = False
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        params = json.loads(stdin.read(struct.unpack("<I", head)[0]))
        size = struct.unpack("<Q", stdin.read(8))[0]
        data = stdin.read(size)
        limits = UnpackLimits(**params["limits"])
        if not limited:
            # the archive (at most max_filesize) twice, one member growing to max_filesize, libarchive
            _limit_worker(4 * limits.max_filesize + MEMORY_MARGIN)
            limited = True
        for item in read_archive(data, params["path"], limits):
            if isinstance(item, ChildObject):
                name = item.name.encode("utf-8", "surrogateescape")[:65536]
                out.write(b"C" + struct.pack("<I", len(name)) + name + struct.pack("<Q", len(item.data)))
                out.write(item.data)
            else:
                text = json.dumps({"limit": item.limit, "detail": item.detail[:4096]}).encode()
                out.write(b"L" + struct.pack("<I", len(text)) + text)
        out.write(b"E")
        out.flush()


if __name__ == "__main__":
    _serve()
