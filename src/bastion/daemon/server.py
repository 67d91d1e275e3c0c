"""The clamd-compatible server: sockets, connections, commands, and database reloads.

One thread accepts on every listening socket; each connection is served by a worker of a pool of
``MaxThreads`` threads sharing one :class:`Engine`.  ``RELOAD`` (and SIGUSR2) builds a new database
and engine in a background thread and swaps one reference: scans in flight finish on the old engine,
new ones get the new one, and a database that fails to load leaves the old one serving.
Replies follow clamd 1.4 byte for byte (see ``/work/shared/docs/clamd-protocol.md``); what is not
done yet is listed in the README.
"""

from __future__ import annotations

import array
import errno
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

from bastion import CLAMAV_COMPAT_VERSION
from bastion.daemon.config import DaemonConfig
from bastion.daemon.protocol import ADVERTISED, MAX_COMMAND, Command, error, found, parse, split_command
from bastion.database.compiled import Database, open_database
from bastion.engine import Engine, ScanOptions, ScanResult

SESSION_COMMANDS = frozenset({"SCAN", "INSTREAM", "FILDES", "VERSION", "VERSIONCOMMANDS", "PING", "STATS", "END"})


class _Closed(Exception):
    """The client went away or timed out: stop serving this connection."""


class Connection:
    """A client socket with its read buffer and any file descriptors it passed (SCM_RIGHTS)."""

    def __init__(self, sock: socket.socket, unix: bool) -> None:
        self.sock = sock
        self.unix = unix
        self.buf = b""
        self.fds: list[int] = []

    def fill(self, timeout: float) -> None:
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            raise TimeoutError
        if self.unix:
            data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self.fds.extend(fds)
        else:
            data = self.sock.recv(65536)
        if not data:
            raise _Closed
        self.buf += data

    def command(self, timeout: float) -> Command:
        deadline = time.monotonic() + timeout
        just_read = False
        while True:
            got = split_command(self.buf, legacy_allowed=just_read)
            if got is not None:
                raw, term, self.buf, prefixed = got
                return parse(raw, term, prefixed)
            if len(self.buf) > MAX_COMMAND:
                raise _Closed
            self.fill(deadline - time.monotonic())
            just_read = True

    def exact(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            self.fill(deadline - time.monotonic())
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

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


class Daemon:
    def __init__(self, cfg: DaemonConfig, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.log = log
        self.engine = self._load()
        self.started = time.time()
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()
        self._listeners: list[tuple[socket.socket, bool]] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._exclude = [re.compile(p) for p in cfg.exclude_path]

    # ------------------------------------------------------------------ database
    def _load(self) -> Engine:
        paths = [self.cfg.database_directory] if self.cfg.database_directory else None
        _compile_in_child(paths, self.cfg.detect_pua)
        db = open_database(paths, pua=self.cfg.detect_pua)
        return Engine(db, self._options(False))

    def _options(self, allmatch: bool) -> ScanOptions:
        c = self.cfg
        return ScanOptions(allmatch=allmatch, max_filesize=c.max_file_size, max_scansize=c.max_scan_size,
                           max_files=c.max_files, max_recursion=c.max_recursion)

    def reload(self) -> None:
        """Build the new engine beside the old one, then swap; the old keeps serving if this fails."""
        if not self._reload_lock.acquire(blocking=False):
            return  # a reload is already running

        def work() -> None:
            try:
                engine = self._load()
                self.engine = engine
                self.log(f"Database reloaded: {engine.db.signature_count} signatures")
            except Exception as exc:  # a bad database must never take the daemon down
                self.log(f"Database reload failed, still serving the previous database: {exc}")
            finally:
                self._reload_lock.release()

        threading.Thread(target=work, name="bastion-reload", daemon=True).start()

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

    def serve_forever(self) -> None:
        pool = ThreadPoolExecutor(max_workers=max(2, self.cfg.max_threads), thread_name_prefix="bastion-clamd")
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([s for s, _ in self._listeners], [], [], 0.5)
                for s in ready:
                    unix = next(u for ls, u in self._listeners if ls is s)
                    try:
                        conn, _ = s.accept()
                    except OSError:
                        continue
                    pool.submit(self._serve_connection, Connection(conn, unix))
        finally:
            for s, _ in self._listeners:
                s.close()
            if self.cfg.local_socket and os.path.exists(self.cfg.local_socket):
                os.unlink(self.cfg.local_socket)
            pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
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
            return [found(tag, n) for n in names]
        if result.error:
            return [error(tag, "Access denied." if result.errno == errno.EACCES else result.error)]
        return [f"{tag}: OK"]

    def _instream(self, conn: Connection) -> str:
        quota = self.cfg.stream_max_length
        data = bytearray()
        while True:
            length = int.from_bytes(conn.exact(4, self.cfg.read_timeout), "big")
            if length == 0:
                break
            if length > quota - len(data):
                return "INSTREAM size limit exceeded. ERROR"
            data += conn.exact(length, self.cfg.read_timeout)
        return self._verdict("stream", self.engine.scan_bytes(bytes(data), "stream"))[0]

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
            return self._verdict(tag, self.engine.scan_file(f"/proc/self/fd/{fd}"))[0]
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
        engine = self.engine if not allmatch else Engine(self.engine.db, self._options(True))
        lines: list[str] = []
        counts = {"items": 0, "infected": 0, "errors": 0}

        def scan_one(p: str) -> bool:
            counts["items"] += 1
            result = engine.scan_file(p)
            if result.detections:
                counts["infected"] += 1
                lines.extend(self._verdict(p, result, allmatch))
                return stop_at_first
            if result.error:
                counts["errors"] += 1
                lines.extend(self._verdict(p, result))
            return False

        def walk(d: str, depth: int) -> bool:
            counts["items"] += 1
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                counts["errors"] += 1
                lines.append(error(d, "Access denied." if exc.errno == errno.EACCES else str(exc.strerror)))
                return False
            files = [e for e in entries if e.is_file(follow_symlinks=False)]
            dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
            for e in files:
                if self._excluded(e.path):
                    continue
                if scan_one(e.path):
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


def _compile_in_child(paths: list[str] | None, pua: bool) -> None:
    """Fill the compiled-database cache from a short-lived child process, so that the daemon itself only
    ever *loads* a compiled database: compiling 1.25M signatures peaks at ~700 MiB, which a long-lived
    process would keep (measured with bench/run_daemon_bench.py: 530 MiB PSS when the daemon compiled,
    about 90 MiB when it loaded).  A database that does not compile fails again, with its error, in
    the daemon's own load that follows."""
    import subprocess

    import bastion

    root = os.path.dirname(os.path.dirname(os.path.abspath(bastion.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys\nfrom bastion.database.compiled import open_database\n"
            "open_database(sys.argv[2:] or None, pua=sys.argv[1] == '1')\n")
    subprocess.run([sys.executable, "-c", code, "1" if pua else "0", *(paths or [])], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def run_daemon(cfg: DaemonConfig, log: Callable[[str], None] | None = None) -> int:
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    daemon = Daemon(cfg, log)
    daemon.listen()
    if cfg.pid_file:
        with open(cfg.pid_file, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
    signal.signal(signal.SIGUSR2, lambda *_: daemon.reload())
    signal.signal(signal.SIGTERM, lambda *_: daemon.shutdown())
    signal.signal(signal.SIGINT, lambda *_: daemon.shutdown())
    where = ", ".join(f"unix {cfg.local_socket}" if unix else f"tcp {s.getsockname()}" for s, unix in daemon._listeners)
    log(f"Bastion clamd-compatible daemon ready: {daemon.engine.db.signature_count} signatures; {where}")
    daemon.serve_forever()
    if cfg.pid_file and os.path.exists(cfg.pid_file):
        os.unlink(cfg.pid_file)
    return 0
