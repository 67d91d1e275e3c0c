"""The clamd-compatible server: sockets, connections, commands, and database reloads.

One thread accepts on every listening socket; each connection is served by a worker of a pool of
``MaxThreads`` threads sharing one :class:`Engine`.  At most ``MaxQueue`` connections are accepted
and not yet finished; past that the accept loop waits and new clients queue in the kernel's backlog
(``MaxConnectionQueueLength``), as with clamd.  ``MULTISCAN`` spreads a directory's files over a
second pool of ``MaxThreads`` threads.

``RELOAD``, SIGUSR2 and a change of the database directory (checked every ``SelfCheck`` seconds)
compile the new database in a short-lived child process, then load it beside the old one and swap
one reference: scans in flight finish on the old engine, new ones get the new one, and a database
that fails to load leaves the old one serving.  With ``ConcurrentDatabaseReload no`` the daemon
instead holds new scans back for the moment of the load (the compile is already done), lets the
scans in flight finish and drops the old database first, so only one is ever in memory.
Replies follow clamd 1.4 byte for byte (see ``/work/shared/docs/clamd-protocol.md``); what is not
done yet is listed in the README.
"""

from __future__ import annotations

import array
import ctypes
import errno
import gc
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from bastion import CLAMAV_COMPAT_VERSION, events
from bastion.daemon.config import DaemonConfig
from bastion.daemon.protocol import ADVERTISED, MAX_COMMAND, Command, error, found, parse, split_command
from bastion.database.compiled import Database, is_cached, open_database
from bastion.engine import Engine, ScanOptions, ScanResult

_LOG_TIME_FORMAT = "%a %b %d %H:%M:%S %Y"
# imported now: after ``User`` drops privileges the interpreter's own files may be out of reach
try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: freed memory is reused, only not returned
    _malloc_trim = None
RELOAD_NICE = 10

SESSION_COMMANDS = frozenset({"SCAN", "INSTREAM", "FILDES", "VERSION", "VERSIONCOMMANDS", "PING", "STATS", "END"})


class _Closed(Exception):
    """The client went away or timed out: stop serving this connection."""


class Connection:
    """A client socket with its read buffer and any file descriptors it passed (SCM_RIGHTS).

    The buffer is a ``bytearray`` read from ``pos`` on and compacted only when more is read, so a
    stream of small INSTREAM chunks costs one copy per byte, not one per chunk (measured with
    bench/run_daemon_bench.py: slicing a ``bytes`` buffer per chunk was a quarter of the daemon's CPU).
    """

    READ_SIZE = 256 * 1024

    def __init__(self, sock: socket.socket, unix: bool) -> None:
        self.sock = sock
        self.unix = unix
        self.buf = bytearray()
        self.pos = 0
        self.fds: list[int] = []

    def fill(self, timeout: float, with_fds: bool = True) -> None:
        if timeout <= 0:
            raise TimeoutError
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        self.sock.settimeout(timeout)
        if self.unix and with_fds:
            data, ancdata, _, _ = self.sock.recvmsg(self.READ_SIZE, socket.CMSG_SPACE(16 * 4))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self.fds.extend(fds)
        else:
            data = self.sock.recv(self.READ_SIZE)
        if not data:
            raise _Closed
        self.buf += data

    def command(self, timeout: float) -> Command:
        deadline = time.monotonic() + timeout
        just_read = False
        while True:
            got = split_command(bytes(self.buf[self.pos:]), legacy_allowed=just_read)
            if got is not None:
                raw, term, rest, prefixed = got
                self.buf, self.pos = bytearray(rest), 0
                return parse(raw, term, prefixed)
            if len(self.buf) - self.pos > MAX_COMMAND:
                raise _Closed
            self.fill(deadline - time.monotonic())
            just_read = True

    def exact(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) - self.pos < n:
            self.fill(deadline - time.monotonic(), with_fds=False)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def read_into(self, dest: bytearray, n: int, timeout: float) -> None:
        """Append the next ``n`` bytes of the stream to ``dest``."""
        deadline = time.monotonic() + timeout
        while n:
            if self.pos >= len(self.buf):
                self.fill(deadline - time.monotonic(), with_fds=False)
            take = min(n, len(self.buf) - self.pos)
            dest += memoryview(self.buf)[self.pos:self.pos + take]
            self.pos += take
            n -= take

    def send(self, line: str, terminator: bytes) -> None:
        try:
            self.sock.sendall(line.encode("utf-8", "surrogateescape") + terminator)
        except OSError:
            raise _Closed from None

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        try:
            self.sock.close()
        except OSError:
            pass


class _Gate:
    """Counts the scans in flight on the current engines; ``closed()`` holds new ones back until
    every one in flight has finished (for a reload that frees the old database first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inflight = 0
        self._closed = False

    def __enter__(self) -> None:
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._inflight += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def close_and_drain(self) -> None:
        with self._cond:
            self._closed = True
            while self._inflight:
                self._cond.wait()

    def open(self) -> None:
        with self._cond:
            self._closed = False
            self._cond.notify_all()


class DaemonLog:
    """What the daemon says: start-up, reloads and failures go to stderr and ``LogFile``; scan
    results (FOUND and errors, clean ones with ``LogClean``) only to ``LogFile``, as clamd logs them.
    ``LogTime`` puts clamd's time stamp in front.  The file is opened before privileges are dropped."""

    def __init__(self, cfg: DaemonConfig, echo: Callable[[str], None] | None = None) -> None:
        self._echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
        self._time = cfg.log_time
        self._lock = threading.Lock()
        self._file = open(cfg.log_file, "a", encoding="utf-8", errors="replace") if cfg.log_file else None  # noqa: SIM115

    def _write(self, text: str) -> None:
        if self._file is None:
            return
        stamp = f"{time.strftime(_LOG_TIME_FORMAT)} -> " if self._time else ""
        with self._lock:
            self._file.write(f"{stamp}{text}\n")
            self._file.flush()

    def __call__(self, text: str) -> None:
        self._echo(text)
        self._write(text)

    def scan(self, text: str) -> None:
        self._write(text)


class Daemon:
    def __init__(self, cfg: DaemonConfig, log: DaemonLog) -> None:
        self.cfg = cfg
        self.log = log
        self._paths = [cfg.database_directory] if cfg.database_directory else None
        try:
            _ensure_compiled(self._paths, cfg.detect_pua)
        except CompileFailed:
            pass  # the load that follows fails the same way, and the start-up reports it
        self.engine, self.allmatch_engine = self._engines(open_database(self._paths, pua=cfg.detect_pua))
        self.started = time.time()
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()
        self._gate = _Gate()
        self._listeners: list[tuple[socket.socket, bool]] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._queue_slots = threading.BoundedSemaphore(max(1, cfg.max_queue))
        self._exclude = [re.compile(p) for p in cfg.exclude_path]
        self._db_fingerprint = self._fingerprint()
        self._multiscan_pool = ThreadPoolExecutor(max_workers=max(1, cfg.max_threads),
                                                  thread_name_prefix="bastion-multiscan")
        # set in a worker process of daemon/supervisor.py: RELOAD and SHUTDOWN go to the supervisor
        self.supervisor_pid: int | None = None

    def become_worker(self, supervisor_pid: int, threads: int, queue: int) -> None:
        """This process is one of several that accept on the same sockets (see daemon/supervisor.py)."""
        self.supervisor_pid = supervisor_pid
        self.cfg = replace(self.cfg, max_threads=threads, max_queue=queue, self_check=0)
        self._queue_slots = threading.BoundedSemaphore(max(1, queue))
        self._multiscan_pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="bastion-multiscan")
        for s, _ in self._listeners:
            s.setblocking(False)  # several processes wait on one socket: a lost race must not block

    # ------------------------------------------------------------------ database
    def _engines(self, db: Database) -> tuple[Engine, Engine]:
        """The engine for every command and the one for ALLMATCHSCAN: one database, swapped together."""
        return Engine(db, self._options(False)), Engine(db, self._options(True))

    def _options(self, allmatch: bool) -> ScanOptions:
        c = self.cfg
        return ScanOptions(allmatch=allmatch, max_filesize=c.max_file_size, max_scansize=c.max_scan_size,
                           max_files=c.max_files, max_recursion=c.max_recursion,
                           alert_broken=c.alert_broken_executables, alert_encrypted=c.alert_encrypted,
                           alert_exceeds_max=c.alert_exceeds_max, max_htmlnormalize=c.max_html_normalize,
                           max_embeddedpe=c.max_embedded_pe)

    def reload(self, wait: bool = False) -> None:
        """Compile the new database in a child, load it and swap; the old keeps serving if this fails."""
        if self.supervisor_pid is not None:
            os.kill(self.supervisor_pid, signal.SIGUSR2)
            return
        if not self._reload_lock.acquire(blocking=False):
            return  # a reload is already running

        def work() -> None:
            try:
                self.prepare_reload()
                if self.cfg.concurrent_database_reload:
                    self.engine, self.allmatch_engine = self._engines(open_database(self._paths,
                                                                                    pua=self.cfg.detect_pua))
                else:
                    self._reload_in_place()
                self.log(f"Database correctly reloaded ({self.engine.db.signature_count} signatures)")
                _reload_event(self.engine.db, None)
            except Exception as exc:  # a bad database must never take the daemon down
                self.log(f"Database reload failed, still serving the previous database: {exc}")
                _reload_event(self.engine.db, exc)
            finally:
                self._reload_lock.release()

        if wait:
            work()
        else:
            threading.Thread(target=work, name="bastion-reload", daemon=True).start()

    def prepare_reload(self, fork: bool = False) -> None:
        """What every reload does first: note the database directory as it is now (SelfCheck), and
        compile it in a child unless that was done already (`bastion db`): then the reload only loads.
        ``fork``: the child is a fork of this process (the single-threaded supervisor's way).  Raises
        :class:`CompileFailed` when the new database does not compile: the reload stops there, so the
        serving process never compiles it itself (a whole compile's memory, for an error)."""
        self._db_fingerprint = self._fingerprint()
        how = _ensure_compiled(self._paths, self.cfg.detect_pua, RELOAD_NICE, on_top_of=self.engine.db.path,
                               fork=fork)
        if how:
            self.log(f"Database compiled {how}")

    def database_changed(self) -> bool:
        """SelfCheck: has the database directory changed since the last (re)load?"""
        return self._fingerprint() != self._db_fingerprint

    def replace_freed(self) -> Exception | None:
        """Free the old database, then load the new one (already compiled, so this takes as long as
        reading it), so that only one is ever in memory; if the new one fails to load, the old one is
        read back from its cache directory.  Returns that failure, or None."""
        old_path = self.engine.db.path
        self.engine = self.allmatch_engine = None  # type: ignore[assignment]
        release_memory()
        failure = None
        try:
            db = open_database(self._paths, pua=self.cfg.detect_pua)
        except Exception as exc:
            failure = exc
            db = Database.load(old_path) if old_path else open_database(self._paths, pua=self.cfg.detect_pua)
        self.engine, self.allmatch_engine = self._engines(db)
        return failure

    def _reload_in_place(self) -> None:
        """ConcurrentDatabaseReload no: drain the scans in flight, then :meth:`replace_freed`."""
        self._gate.close_and_drain()
        try:
            failure = self.replace_freed()
        finally:
            self._gate.open()
        if failure is not None:
            raise failure

    def _fingerprint(self) -> tuple:
        """Names, sizes and modification times under the database directory: what SelfCheck compares."""
        root = self.cfg.database_directory
        if not root:
            return ()
        seen = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                seen.append((dirpath, name, st.st_size, st.st_mtime_ns))
        return tuple(seen)

    def _self_check(self) -> None:
        """clamd's SelfCheck: every so often, reload if the database directory changed."""
        while not self._stop.wait(self.cfg.self_check):
            if self.database_changed():
                self.log("SelfCheck: Database modification detected. Forcing reload.")
                self.reload(wait=True)

    def version(self) -> str:
        db: Database = self.engine.db
        daily = next((c for c in db.report.containers if c.get("name") == "daily"), None)
        if daily is None:
            return f"ClamAV {CLAMAV_COMPAT_VERSION}"
        return f"ClamAV {CLAMAV_COMPAT_VERSION}/{daily['version']}/{time.ctime(float(daily.get('unix_time') or 0))}"

    # ------------------------------------------------------------------ sockets
    def listen(self) -> None:
        cfg = self.cfg
        if cfg.local_socket:
            path = cfg.local_socket
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)  # FixStaleSocket (clamd's default)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            os.chmod(path, cfg.local_socket_mode)
            if cfg.local_socket_group:
                import grp

                os.chown(path, -1, grp.getgrnam(cfg.local_socket_group).gr_gid)
            s.listen(cfg.max_connection_queue_length)
            self._listeners.append((s, True))
        if cfg.tcp_socket is not None:
            for addr in cfg.tcp_addrs or ["127.0.0.1"]:
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, cfg.tcp_socket))
                s.listen(cfg.max_connection_queue_length)
                self._listeners.append((s, False))

    def drop_privileges(self) -> None:
        """clamd's ``User``: once the sockets are bound and the log is open, run as that user."""
        name = self.cfg.user
        if not name or os.geteuid() != 0:
            return
        import pwd

        entry = pwd.getpwnam(name)
        os.initgroups(name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    def serve_forever(self) -> None:
        pool = ThreadPoolExecutor(max_workers=max(2, self.cfg.max_threads), thread_name_prefix="bastion-clamd")
        if self.cfg.self_check > 0 and self.cfg.database_directory:
            threading.Thread(target=self._self_check, name="bastion-selfcheck", daemon=True).start()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([s for s, _ in self._listeners], [], [], 0.5)
                for s in ready:
                    # MaxQueue: with every slot taken, leave new clients in the kernel's backlog
                    while not self._queue_slots.acquire(timeout=0.5):
                        if self._stop.is_set():
                            return
                    unix = next(u for ls, u in self._listeners if ls is s)
                    try:
                        conn, _ = s.accept()
                    except OSError:  # another worker process took it, or the client left
                        self._queue_slots.release()
                        continue
                    conn.setblocking(True)
                    pool.submit(self._serve_connection, Connection(conn, unix))
        finally:
            for s, _ in self._listeners:
                s.close()
            if self.supervisor_pid is None:
                self.remove_socket_file()
            # a worker retiring after a reload lets its connections finish; a lone daemon stops now
            pool.shutdown(wait=self.supervisor_pid is not None, cancel_futures=self.supervisor_pid is None)
            self._multiscan_pool.shutdown(wait=False, cancel_futures=True)

    def remove_socket_file(self) -> None:
        if self.cfg.local_socket and os.path.exists(self.cfg.local_socket):
            try:
                os.unlink(self.cfg.local_socket)
            except OSError:
                pass

    def shutdown(self) -> None:
        if self.supervisor_pid is not None and threading.current_thread() is not threading.main_thread():
            os.kill(self.supervisor_pid, signal.SIGTERM)  # the SHUTDOWN command: every worker stops
            return
        self._stop.set()

    # ------------------------------------------------------------------ one connection
    def _serve_connection(self, conn: Connection) -> None:
        with self._busy_lock:
            self._busy += 1
        try:
            cmd = conn.command(self.cfg.command_read_timeout)
            if cmd.name == "IDSESSION":
                self._session(conn)
            else:
                if conn.buf and cmd.name in ("SCAN", "CONTSCAN", "MULTISCAN", "ALLMATCHSCAN"):
                    conn.send("Error processing command. ERROR", cmd.terminator)
                for line in self._execute(cmd, conn):
                    conn.send(line, cmd.terminator)
        except TimeoutError:
            try:
                conn.sock.sendall(b"COMMAND READ TIMED OUT\n")
            except OSError:
                pass
        except (_Closed, OSError):
            pass
        finally:
            conn.close()
            with self._busy_lock:
                self._busy -= 1
            self._queue_slots.release()

    def _session(self, conn: Connection) -> None:
        number = 0
        while True:
            cmd = conn.command(self.cfg.read_timeout)
            number += 1
            if not cmd.prefixed:
                conn.send(f"{number}: Only nCMDS\\n and zCMDS\\0 are accepted inside IDSESSION. ERROR", b"\n")
                conn.send(f"{number}: Error processing command. ERROR", b"\n")
                return
            if cmd.name == "END":
                return
            if cmd.name not in SESSION_COMMANDS:
                conn.send(f"{number}: Command invalid inside IDSESSION. ERROR", cmd.terminator)
                return
            lines = self._execute(cmd, conn)
            for line in lines:
                conn.send(f"{number}: {line}", cmd.terminator)

    def _execute(self, cmd: Command, conn: Connection) -> list[str]:
        name = cmd.name
        if name == "PING":
            return ["PONG"]
        if name == "VERSION":
            return [self.version()]
        if name == "VERSIONCOMMANDS":
            return [f"{self.version()}| COMMANDS: {ADVERTISED}"]
        if name == "RELOAD":
            self.reload()
            return ["RELOADING"]
        if name in ("SHUTDOWN", "QUIT"):
            self.shutdown()
            return []
        if name in ("DETSTATS", "DETSTATSCLEAR"):
            return []
        if name == "STATS":
            return [self._stats()]
        if name == "INSTREAM":
            return [self._instream(conn)]
        if name == "FILDES":
            return [self._fildes(conn)]
        if name in ("SCAN", "CONTSCAN", "MULTISCAN", "ALLMATCHSCAN"):
            return self._path_scan(name, cmd.arg)
        return ["UNKNOWN COMMAND"]

    # ------------------------------------------------------------------ commands
    def _stats(self) -> str:
        live = self._busy
        idle = max(0, self.cfg.max_threads - live)
        return (f"POOLS: 1\n\nSTATE: VALID PRIMARY\nTHREADS: live {live}  idle {idle} max {self.cfg.max_threads} "
                f"idle-timeout {int(self.cfg.idle_timeout)}\nQUEUE: 0 items\n\tSTATS 0.000000 \n\n"
                "MEMSTATS: heap N/A mmap N/A used N/A free N/A releasable N/A pools 1 pools_used N/A "
                "pools_total N/A\nEND")

    def _verdict(self, tag: str, result: ScanResult, allmatch: bool = False) -> list[str]:
        if result.detections:
            names = [d.name for d in result.detections] if allmatch else [result.detections[0].name]
            lines = [found(tag, n) for n in names]
        elif result.error:
            lines = [error(tag, "Access denied." if result.errno == errno.EACCES else result.error)]
        else:
            if self.cfg.log_clean:
                self.log.scan(f"{tag}: OK")
            return [f"{tag}: OK"]
        for line in lines:
            self.log.scan(line)
        if result.detections:
            events.record_detections(tag, result, "bastion daemon", sync=False, limit=len(lines))
        else:
            events.record("scan-error", lines[0], sync=False, outcome="failure", path=tag, process="bastion daemon")
        return lines

    def _instream(self, conn: Connection) -> str:
        quota = self.cfg.stream_max_length
        data = bytearray()
        while True:
            length = int.from_bytes(conn.exact(4, self.cfg.read_timeout), "big")
            if length == 0:
                break
            if length > quota - len(data):
                return "INSTREAM size limit exceeded. ERROR"
            conn.read_into(data, length, self.cfg.read_timeout)
        with self._gate:
            result = self.engine.scan_bytes(data, "stream")
        return self._verdict("stream", result)[0]

    def _fildes(self, conn: Connection) -> str:
        if not conn.unix:
            return "No file descriptor received. ERROR"
        deadline = time.monotonic() + self.cfg.read_timeout
        while not conn.fds:
            try:
                conn.fill(deadline - time.monotonic())
            except TimeoutError:
                return "No file descriptor received. ERROR"
        fd = conn.fds.pop(0)
        try:
            tag = f"fd[{fd}]"
            import stat as stat_mod

            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                return error(tag, "Not a regular file")
            with self._gate:
                result = self.engine.scan_file(f"/proc/self/fd/{fd}")
            return self._verdict(tag, result)[0]
        finally:
            os.close(fd)

    def _excluded(self, path: str) -> bool:
        return any(rx.search(path) for rx in self._exclude)

    def _path_scan(self, name: str, arg: str) -> list[str]:
        path = arg.rstrip("/") or "/"
        if not os.path.lexists(path):
            return [error(path, "File path check failure: No such file or directory.")]
        if self._excluded(path):
            return [f"{path}: Excluded"]
        if os.path.islink(path):
            return [f"{path}: OK"]  # not followed unless Follow*Symlinks, yet OK (clamd 1.4.6)
        allmatch = name == "ALLMATCHSCAN"
        if allmatch and not self.cfg.allow_all_match_scan:
            return [error(path, "ALLMATCHSCAN command disabled by clamd configuration.")]
        stop_at_first = name in ("SCAN", "ALLMATCHSCAN")
        with self._gate:
            engine = self.allmatch_engine if allmatch else self.engine
            return self._walk_and_scan(path, engine, allmatch, stop_at_first, parallel=name == "MULTISCAN")

    def _walk_and_scan(self, path: str, engine: Engine, allmatch: bool, stop_at_first: bool,
                       parallel: bool) -> list[str]:
        """SCAN/CONTSCAN/ALLMATCHSCAN walk in order; MULTISCAN hands each directory's files to the
        multiscan pool and collects their replies in the order the files were listed."""
        lines: list[str] = []
        counts = {"items": 0, "infected": 0, "errors": 0}

        def record(p: str, result: ScanResult) -> bool:
            if result.detections:
                counts["infected"] += 1
                lines.extend(self._verdict(p, result, allmatch))
                return stop_at_first
            if result.error:
                counts["errors"] += 1
                lines.extend(self._verdict(p, result))
            return False

        def scan_one(p: str) -> bool:
            counts["items"] += 1
            return record(p, engine.scan_file(p))

        def walk(d: str, depth: int) -> bool:
            counts["items"] += 1
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                counts["errors"] += 1
                lines.append(error(d, "Access denied." if exc.errno == errno.EACCES else str(exc.strerror)))
                return False
            files = [e.path for e in entries if e.is_file(follow_symlinks=False) and not self._excluded(e.path)]
            dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
            if parallel and len(files) > 1:
                counts["items"] += len(files)
                for p, result in zip(files, self._multiscan_pool.map(engine.scan_file, files), strict=True):
                    record(p, result)
            else:
                for p in files:
                    if scan_one(p):
                        return True
            if depth < self.cfg.max_directory_recursion:
                for e in dirs:
                    if not self._excluded(e.path) and walk(e.path, depth + 1):
                        return True
            return False

        if os.path.isdir(path):
            walk(path, 0)
        elif os.path.isfile(path):
            scan_one(path)
        else:
            return [error(path, "Not supported file type")]
        if not counts["infected"] and counts["errors"] < counts["items"]:
            lines.append(f"{path}: OK")
        return lines


def release_memory() -> None:
    """Collect the old database's objects and give the freed heap back to the system (glibc's
    malloc_trim), so that the new database does not stack on memory the old one left behind."""
    gc.unfreeze()  # the old database's objects were frozen before the workers were forked
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _reload_event(db: Database, failure: Exception | None) -> None:
    """The event for a reload: the database now serving, and why a new one was refused."""
    if failure is None:
        events.record("database-reload", f"database reloaded: {db.signature_count} signatures",
                      process="bastion daemon", db_version=db.version, signatures=db.signature_count)
    else:
        events.record("database-reload", f"database reload failed, still serving {db.version[:12]}: {failure}",
                      outcome="failure", process="bastion daemon", db_version=db.version)


class CompileFailed(Exception):
    """The new database did not compile, in the child that compiled it; the message is the child's
    error (for a bad signature line: its file and line)."""


# the compile child's last line when it fails
_FAILED = "compile failed: "


def _ensure_compiled(paths: list[str] | None, pua: bool, nice: int = 0, on_top_of: str | None = None,
                     fork: bool = False) -> str:
    """Compile the database in a child process (:func:`_compile_in_child`, or :func:`_compile_in_fork`)
    unless the cache holds it; returns how it was compiled ('' when it was not), raises
    :class:`CompileFailed` when it does not compile."""
    if is_cached(paths, pua=pua):
        return ""
    if fork:
        return _compile_in_fork(paths, pua, nice, on_top_of)
    return _compile_in_child(paths, pua, nice, on_top_of)


def _compile_in_fork(paths: list[str] | None, pua: bool, nice: int, on_top_of: str | None) -> str:
    """:func:`_compile_in_child` in a fork of this process instead of a new interpreter: the fork shares
    the interpreter and modules already in memory, so a layer's compile costs only what it builds
    (bench/README.md, daemon reload after an update-like edit: a new interpreter alone was ~20 MiB of
    the 1.2x headroom).  Only for a single-threaded process (the supervisor): a fork of a threaded one
    could inherit a lock held by another thread.  Returns the child's one line on how it compiled."""
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compile, say how, and leave without running any of the parent's code
        code = 1
        try:
            os.close(readable)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            os.nice(nice)
            from bastion.database.compiled import compile_into_cache

            os.write(writable, compile_into_cache(paths, pua=pua, on_top_of=on_top_of).encode())
            code = 0
        except Exception as exc:  # noqa: BLE001 - said to the parent, which reports it
            os.write(writable, f"\n{_FAILED}{str(exc).replace(chr(10), ' ')}".encode(errors="replace"))
        finally:
            os._exit(code)
    os.close(writable)
    with os.fdopen(readable, "rb") as fh:
        said = fh.read()  # until the child exits
    _pid, status = os.waitpid(pid, 0)
    return _outcome(said.decode(errors="replace"), os.waitstatus_to_exitcode(status))


def _outcome(said: str, code: int) -> str:
    """How a compile child compiled, from what it said and its exit code; raises CompileFailed."""
    last = said.strip().splitlines()[-1] if said.strip() else ""
    if code == 0:
        return last
    if last.startswith(_FAILED):
        raise CompileFailed(last[len(_FAILED):])
    raise CompileFailed(f"the compile child exited with code {code}")


def _compile_in_child(paths: list[str] | None, pua: bool, nice: int = 0, on_top_of: str | None = None) -> str:
    """Fill the compiled-database cache from a short-lived child process, so that the daemon itself only
    ever *loads* a compiled database: compiling 1.25M signatures peaks at ~700 MiB, which a long-lived
    process would keep (measured with bench/run_daemon_bench.py: 530 MiB PSS when the daemon compiled,
    about 90 MiB when it loaded).  A database that does not compile raises :class:`CompileFailed` with
    the child's error.  A reload compiles with ``nice`` 10 (RELOAD_NICE), so that
    scans in progress keep the CPU: a reload under full load takes longer, live traffic does not.

    ``on_top_of``: the compiled database being served.  A reload compiles only the signature files
    that changed since, as a layer on top of it (database/delta.py): the bound on a reload's memory
    (bench/README.md) holds because the child compiles a few files, not all of them.  Returns the
    child's one line on how it compiled ("as a layer: ...", "whole (why)")."""
    import subprocess

    import bastion

    root = os.path.dirname(os.path.dirname(os.path.abspath(bastion.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = (f"import os, sys\nos.nice({int(nice)})\nfrom bastion.database.compiled import compile_into_cache\n"
            "try:\n"
            "    print(compile_into_cache(sys.argv[3:] or None, pua=sys.argv[1] == '1',\n"
            "                             on_top_of=sys.argv[2] or None))\n"
            "except Exception as exc:\n"
            f"    print({_FAILED!r} + str(exc).replace(chr(10), ' '))\n"
            "    sys.exit(1)\n")
    done = subprocess.run([sys.executable, "-c", code, "1" if pua else "0", on_top_of or "", *(paths or [])],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False, text=True)
    return _outcome(done.stdout, done.returncode)
