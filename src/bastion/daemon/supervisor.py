"""Several serving processes on the same sockets, and the process that keeps them.

Python runs one thread at a time, so one process serves at most about one core of requests
(bench/run_daemon_bench.py: 1.14 cores busy, whatever MaxThreads).  The supervisor loads the
database, binds the sockets and forks ``workers`` processes that each accept and serve with their
share of MaxThreads; the database pages are shared copy-on-write (the Hyperscan database is never
written while scanning, so it stays one copy), which keeps the memory cost of a worker at its own
interpreter and buffers.

The supervisor is single-threaded and never serves.  It restarts a worker that dies, turns
SIGUSR2, a RELOAD (workers forward it as SIGUSR2) and SelfCheck into a reload, and SIGTERM/SIGINT
(or SHUTDOWN) into a stop.  A reload compiles the new database in a short-lived fork (a layer on top
of the one served when only some files changed: database/delta.py); then, with
ConcurrentDatabaseReload yes (the default), it loads the new database, forks new workers and lets
the old ones finish their connections and exit; with ``no`` it first lets the old workers finish,
frees the old database and then loads the new one, so only one is ever in memory.  A database that
fails to load leaves the old one (and, in the first mode, the old workers) serving.
"""

from __future__ import annotations

import gc
import os
import signal
import time

from bastion.daemon.server import CompileFailed, Daemon, DaemonLog, _reload_event, release_memory
from bastion.database.compiled import open_database

# a worker that dies sooner than this after its start is restarted only after this long (no fork storm)
RESPAWN_BACKOFF = 1.0
STOP_GRACE = 10.0


class Supervisor:
    def __init__(self, daemon: Daemon, log: DaemonLog) -> None:
        self.daemon = daemon
        self.log = log
        self.count = max(1, daemon.cfg.workers)
        total_threads, total_queue = daemon.cfg.max_threads, daemon.cfg.max_queue
        self.threads = max(1, -(-total_threads // self.count))
        self.queue = max(1, -(-total_queue // self.count))
        self.workers: dict[int, float] = {}   # serving: pid -> start time
        self.retiring: set[int] = set()       # finishing their connections after a reload
        self._reload = False
        self._stop = False

    # ------------------------------------------------------------------ processes
    def _spawn(self) -> None:
        # garbage is collected and the heap trimmed first, so that workers do not inherit (and keep,
        # frozen) what the supervisor frees later; everything it holds then goes into the collector's
        # permanent generation: a worker's collections never write to those objects, so their pages
        # stay shared instead of being copied into every worker
        release_memory()
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, lambda *_: self.daemon._stop.set())
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGUSR2, signal.SIG_IGN)
                self.daemon.become_worker(os.getppid(), self.threads, self.queue)
                self.daemon.serve_forever()
            except BaseException:  # noqa: BLE001 - a worker must never return into the supervisor's code
                code = 1
            finally:
                os._exit(code)
        self.workers[pid] = time.monotonic()

    def _reap(self) -> None:
        for pid in [*self.workers, *self.retiring]:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            self.retiring.discard(pid)
            started = self.workers.pop(pid, None)
            if started is None or self._stop:
                continue
            self.log(f"Worker {pid} exited ({_describe(status)}); starting another")
            if time.monotonic() - started < RESPAWN_BACKOFF:
                time.sleep(RESPAWN_BACKOFF)
            self._spawn()

    def _retire_all(self) -> set[int]:
        old = set(self.workers)
        for pid in old:
            _signal(pid, signal.SIGTERM)
        self.retiring |= old
        self.workers.clear()
        return old

    def _wait_for(self, pids: set[int], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while pids & self.retiring and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in pids & self.retiring:
            _signal(pid, signal.SIGKILL)
        while pids & self.retiring:
            self._reap()
            time.sleep(0.05)

    # ------------------------------------------------------------------ reload
    def reload(self) -> None:
        d = self.daemon
        try:
            d.prepare_reload(fork=True)
        except CompileFailed as exc:  # the old database and workers keep serving
            self.log(f"Database reload failed, still serving the previous database: {exc}")
            _reload_event(d.engine.db, exc)
            return
        if d.cfg.concurrent_database_reload:
            try:
                db = open_database(d._paths, pua=d.cfg.detect_pua)
            except Exception as exc:  # the old database and workers keep serving
                self.log(f"Database reload failed, still serving the previous database: {exc}")
                _reload_event(d.engine.db, exc)
                return
            d.engine, d.allmatch_engine = d._engines(db)
            self._retire_all()
            for _ in range(self.count):
                self._spawn()
        else:
            self._wait_for(self._retire_all(), d.cfg.read_timeout + STOP_GRACE)
            failure = d.replace_freed()
            for _ in range(self.count):
                self._spawn()
            if failure is not None:
                self.log(f"Database reload failed, still serving the previous database: {failure}")
                _reload_event(d.engine.db, failure)
                return
        release_memory()
        self.log(f"Database correctly reloaded ({d.engine.db.signature_count} signatures)")
        _reload_event(d.engine.db, None)

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        def want_reload(*_: object) -> None:
            self._reload = True

        def want_stop(*_: object) -> None:
            self._stop = True

        signal.signal(signal.SIGUSR2, want_reload)
        signal.signal(signal.SIGTERM, want_stop)
        signal.signal(signal.SIGINT, want_stop)
        for _ in range(self.count):
            self._spawn()
        next_check = time.monotonic() + self.daemon.cfg.self_check
        try:
            while not self._stop:
                time.sleep(0.2)
                self._reap()
                check = self.daemon.cfg.self_check > 0 and bool(self.daemon.cfg.database_directory)
                if check and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.daemon.cfg.self_check
                    if self.daemon.database_changed():
                        self.log("SelfCheck: Database modification detected. Forcing reload.")
                        self._reload = True
                if self._reload and not self._stop:
                    self._reload = False
                    try:
                        self.reload()
                    except Exception as exc:  # never let a reload take the supervisor down
                        self.log(f"Database reload failed: {exc}")
        finally:
            self._wait_for(self._retire_all(), STOP_GRACE)
            for s, _ in self.daemon._listeners:
                s.close()
            self.daemon.remove_socket_file()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"status {status}"
