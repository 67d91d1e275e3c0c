"""On-access scanning: watch directory trees and scan files as they are opened or written.

Two modes, said at start-up (``Watcher.mode`` and ``Watcher.why``):

* ``fanotify`` (root with CAP_SYS_ADMIN): every open of a file in a watched directory waits for the
  watcher's answer.  A file whose content is infected is denied (``--no-block`` only reports); a file
  is scanned once per content (cache keyed by device, inode, size, mtime and ctime); an empty file,
  one larger than ``max_filesize``, an open by the watcher itself or by an allow-listed program is
  allowed at once; and any open still unanswered after ``timeout`` seconds is allowed (fail-open,
  so the machine never hangs on the watcher).  Written files are scanned again when closed.
* ``inotify`` (anyone): files are scanned after they are written and closed or moved in; a
  detection is reported, nothing is blocked.  Events are debounced per path and deduplicated; a
  kernel queue overflow triggers a rescan of the trees, so no write goes unscanned.

Directories created later are watched too: inotify reports them and they are marked at once (in
fanotify mode as well, as clamonacc's dynamic directory determination does; a rescan of the trees
every ten seconds is the safety net), and files that landed in them before the mark are scanned then.  The
fanotify queue is unlimited: a bounded one that overflows makes the kernel allow the opens it
could not queue, silently.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bastion.engine import Engine, ScanResult
from bastion.watch import kernel

# fanotify mode: how often the whole tree is walked for directories inotify did not report (each
# walk reads every directory of the watched trees, so not often: inotify reports new ones at once)
DIRECTORY_RESCAN_SECONDS = 10.0

Report = Callable[[str, str, ScanResult | None], None]  # (what, path, result); what: see Watcher._report


@dataclass
class WatchOptions:
    paths: list[str]
    mode: str = "auto"                # auto | fanotify | inotify
    block: bool = True                # fanotify: deny opens of infected files
    timeout: float = 5.0              # fanotify: allow an open not answered by then
    debounce: float = 0.2             # inotify: quiet time before a written file is scanned
    max_filesize: int = 5 * 1024 * 1024   # clamonacc's OnAccessMaxFileSize default
    allow_programs: list[str] = field(default_factory=list)  # executable paths never held (fanotify)
    allow_uids: list[int] = field(default_factory=list)      # users whose opens are never held (fanotify)
    threads: int = 4
    daemon_socket: str | None = None  # scan through this clamd-protocol daemon instead of a local engine


class VerdictCache:
    """What each file content was found to be, keyed by (device, inode, size, mtime, ctime)."""

    def __init__(self, size: int = 100_000) -> None:
        self._data: OrderedDict[tuple, tuple[str, ...]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    @staticmethod
    def key(st: os.stat_result) -> tuple:
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def get(self, key: tuple) -> tuple[str, ...] | None:
        with self._lock:
            found = self._data.get(key)
            if found is not None:
                self._data.move_to_end(key)
            return found

    def put(self, key: tuple, names: tuple[str, ...]) -> None:
        with self._lock:
            self._data[key] = names
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


def _fanotify_available() -> tuple[bool, str]:
    try:
        kernel.Fanotify().close()
        return True, "fanotify permission events (opens of infected files are blocked)"
    except OSError as exc:
        return False, f"fanotify is not available here ({exc.strerror}); inotify: files are scanned after writing"


class Watcher:
    def __init__(self, engine: Engine | None, opts: WatchOptions, report: Report) -> None:
        self.engine = engine
        self.opts = opts
        self.report = report
        self.cache = VerdictCache()
        self.stop = threading.Event()
        self.scanned = 0
        self._count_lock = threading.Lock()
        self.roots = [os.path.abspath(p) for p in opts.paths]
        if opts.mode == "inotify":
            self.mode, self.why = "inotify", "inotify (asked for): files are scanned after writing"
        else:
            ok, why = _fanotify_available()
            if not ok and opts.mode == "fanotify":
                raise OSError(why)
            self.mode, self.why = ("fanotify" if ok else "inotify"), why
        self._own_pid = os.getpid()
        # fault injection for the tests: make every scan this slow (to prove the fail-open timeout)
        self._delay = float(os.environ.get("BASTION_FAULT_SCAN_DELAY", "0") or 0)
        self._allowed_exes = {os.path.realpath(p) for p in opts.allow_programs}
        # daemon mode: the daemon (and its worker processes) opens the files it is handed; holding
        # those opens would have the watcher wait on itself
        self._allowed_pids: set[int] = set()
        if opts.daemon_socket:
            from bastion import clamd_client

            pid = clamd_client.peer_pid(opts.daemon_socket)
            if pid:
                self._allowed_pids.add(pid)

    # ------------------------------------------------------------------ scanning
    def _scan_fd(self, fd: int, path: str) -> tuple[str, ...] | None:
        """Scan an open file; None when it was not scanned (empty, too large, unreadable)."""
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_size > self.opts.max_filesize:
            return None
        key = VerdictCache.key(st)
        known = self.cache.get(key)
        if known is not None:
            return known
        if self._delay:
            time.sleep(self._delay)
        if self.opts.daemon_socket:
            result = self._scan_by_daemon(fd, path, st.st_size)
            if result is None:
                return None
        else:
            try:
                data = os.pread(fd, st.st_size, 0)
            except OSError:
                return None
            assert self.engine is not None, "a watcher without a daemon socket needs an engine"
            result = self.engine.scan_bytes(data, path)
        names = tuple(d.name for d in result.detections)
        self.cache.put(key, names)
        with self._count_lock:
            self.scanned += 1
        self.report("infected" if names else "clean", path, result)
        return names

    def _scan_by_daemon(self, fd: int, path: str, size: int) -> ScanResult | None:
        """Daemon mode: the running daemon scans the open file (FILDES); None if it cannot answer."""
        from bastion import clamd_client
        from bastion.engine.verdict import Detection, Evidence

        socket_path = self.opts.daemon_socket or ""
        try:
            names = clamd_client.scan_fd(socket_path, fd)
        except clamd_client.ClamdError:
            self.report("error", path, None)
            return None
        result = ScanResult(name=path, size=size)
        result.detections = [Detection(n, Evidence("daemon", socket_path, 0, "")) for n in names]
        return result

    def _scan_path(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return
        try:
            self._scan_fd(fd, path)
        finally:
            os.close(fd)

    def _dirs(self) -> list[str]:
        out = []
        for root in self.roots:
            for dirpath, _dirnames, _files in os.walk(root):
                out.append(dirpath)
        return out

    def _files(self) -> list[str]:
        return [os.path.join(d, f) for root in self.roots for d, _, files in os.walk(root) for f in files]

    # ------------------------------------------------------------------ fanotify
    def _run_fanotify(self) -> None:
        fan = kernel.Fanotify()
        marked: set[str] = set()

        mark_lock = threading.Lock()

        def mark_new_dirs(first: bool = False) -> None:
            with mark_lock:
                mark_dirs(self._dirs(), first)

        def mark_dirs(dirs: list[str], first: bool) -> None:
            for d in dirs:
                if d not in marked:
                    try:
                        fan.watch_directory(d)
                        marked.add(d)
                    except FileNotFoundError:
                        continue  # removed meanwhile
                    except OSError:
                        self.report("error", d, None)
                        continue
                    if not first:  # files written before the mark: scan them now
                        for name in os.listdir(d):
                            background.submit(self._scan_path, os.path.join(d, name))

        # opens waiting for an answer never queue behind scans of written files: two pools
        held = ThreadPoolExecutor(max_workers=self.opts.threads, thread_name_prefix="bastion-watch-open")
        background = ThreadPoolExecutor(max_workers=max(1, self.opts.threads // 2),
                                        thread_name_prefix="bastion-watch-written")
        mark_new_dirs(first=True)
        pending: dict[int, list] = {}  # event fd -> [deadline, answered]
        lock = threading.Lock()

        def answer(fd: int, allow: bool) -> None:
            with lock:
                entry = pending.pop(fd, None)
                if entry is not None and not entry[1]:
                    fan.respond(fd, allow)

        def handle(ev: kernel.FanEvent) -> None:
            try:
                path = os.readlink(f"/proc/self/fd/{ev.fd}")
            except OSError:
                path = f"fd:{ev.fd}"
            try:
                names = self._scan_fd(ev.fd, path)
                if ev.permission:
                    infected = bool(names)
                    if infected and self.opts.block:
                        self.report("blocked", path, None)
                    answer(ev.fd, not (infected and self.opts.block))
            except Exception:  # never leave an open hanging on a bug: allow it
                if ev.permission:
                    answer(ev.fd, True)
            finally:
                os.close(ev.fd)

        def fail_open() -> None:
            while not self.stop.wait(0.05):
                now = time.monotonic()
                with lock:
                    for fd, entry in pending.items():
                        if not entry[1] and now >= entry[0]:
                            fan.respond(fd, True)
                            entry[1] = True
                            self.report("timeout", f"fd:{fd}", None)

        def rescan_dirs() -> None:  # the safety net for directories inotify did not tell about
            while not self.stop.wait(DIRECTORY_RESCAN_SECONDS):
                mark_new_dirs()

        def follow_new_dirs() -> None:
            """Mark a new directory the moment inotify reports it (clamonacc calls this dynamic directory
            determination): the window in which its files' opens are not held is that short."""
            ino = kernel.Inotify(kernel.IN_CREATE | kernel.IN_MOVED_TO | kernel.IN_DELETE_SELF)
            for d in list(marked):
                with contextlib.suppress(OSError):
                    ino.watch_directory(d)
            while not self.stop.is_set():
                for ev in ino.read():
                    if not ev.path:
                        mark_new_dirs()
                    elif ev.is_dir:
                        found = [d for d, _, _ in os.walk(ev.path)]
                        with mark_lock:
                            mark_dirs(found, False)
                        for d in found:
                            with contextlib.suppress(OSError):
                                ino.watch_directory(d)

        threading.Thread(target=fail_open, daemon=True, name="bastion-watch-failopen").start()
        threading.Thread(target=rescan_dirs, daemon=True, name="bastion-watch-dirs").start()
        threading.Thread(target=follow_new_dirs, daemon=True, name="bastion-watch-newdirs").start()
        self.report("ready", ", ".join(self.roots), None)
        try:
            while not self.stop.is_set():
                for ev in fan.read():
                    if ev.fd < 0:
                        if ev.mask & kernel.FAN_Q_OVERFLOW:
                            self.report("overflow", ", ".join(self.roots), None)
                        continue
                    if ev.pid == self._own_pid or self._allowed(ev.pid):
                        if ev.permission:
                            fan.respond(ev.fd, True)
                        os.close(ev.fd)
                        continue
                    if ev.permission:
                        with lock:
                            pending[ev.fd] = [time.monotonic() + self.opts.timeout, False]
                        held.submit(handle, ev)
                    else:
                        background.submit(handle, ev)
        finally:
            held.shutdown(wait=True)  # answers every open still held
            background.shutdown(wait=False, cancel_futures=True)
            fan.close()

    def _allowed(self, pid: int) -> bool:
        if pid <= 1:  # the kernel's own and init's opens are never held
            return True
        if self.opts.allow_uids:
            try:
                if os.stat(f"/proc/{pid}").st_uid in self.opts.allow_uids:
                    return True
            except OSError:
                pass
        if self._allowed_pids:
            ancestor = pid
            for _ in range(3):  # the daemon, its workers, their unpacking sandboxes
                if ancestor in self._allowed_pids:
                    return True
                ancestor = _parent(ancestor)
                if ancestor <= 1:
                    break
        if not self._allowed_exes:
            return False
        try:
            return os.path.realpath(f"/proc/{pid}/exe") in self._allowed_exes
        except OSError:
            return False

    # ------------------------------------------------------------------ inotify
    def _run_inotify(self) -> None:
        ino = kernel.Inotify()
        for d in self._dirs():
            ino.watch_directory(d)
        due: dict[str, float] = {}      # path -> time of its last write event
        lock = threading.Lock()
        work: queue.SimpleQueue[str | None] = queue.SimpleQueue()

        def dispatcher() -> None:  # debounce: a path is scanned once it has been quiet for `debounce`
            while not self.stop.wait(self.opts.debounce / 2):
                now = time.monotonic()
                with lock:
                    ready = [p for p, t in due.items() if now - t >= self.opts.debounce]
                    for p in ready:
                        del due[p]
                for p in ready:
                    work.put(p)

        def scanner() -> None:
            while (path := work.get()) is not None:
                self._scan_path(path)

        threads = [threading.Thread(target=scanner, daemon=True) for _ in range(self.opts.threads)]
        for t in [*threads, threading.Thread(target=dispatcher, daemon=True)]:
            t.start()
        self.report("ready", ", ".join(self.roots), None)
        try:
            while not self.stop.is_set():
                for ev in ino.read():
                    if not ev.path:  # the kernel dropped events: look at everything again
                        self.report("overflow", ", ".join(self.roots), None)
                        files = self._files()
                        with lock:
                            for p in files:
                                due[p] = 0.0
                        continue
                    if ev.is_dir and ev.mask & (kernel.IN_CREATE | kernel.IN_MOVED_TO):
                        for d, _, files in os.walk(ev.path):  # files may have landed before the watch
                            try:
                                ino.watch_directory(d)
                            except OSError:
                                continue
                            with lock:
                                for f in files:
                                    due[os.path.join(d, f)] = time.monotonic()
                        continue
                    if ev.mask & (kernel.IN_CLOSE_WRITE | kernel.IN_MOVED_TO):
                        with lock:
                            due[ev.path] = time.monotonic()
        finally:
            for _ in threads:
                work.put(None)
            ino.close()

    def run(self) -> None:
        if self.mode == "fanotify":
            self._run_fanotify()
        else:
            self._run_inotify()


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat_line = fh.read()
    except OSError:
        return 0
    return int(stat_line[stat_line.rindex(b")") + 2:].split()[1])
