"""Starting the daemon: sockets, pid file, privileges, then one serving process (server.py) or a
supervisor with worker processes (supervisor.py); and what is said when it stops."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from bastion.daemon.config import DaemonConfig
from bastion.daemon.server import Daemon, DaemonLog
from bastion.daemon.supervisor import Supervisor
from bastion.database.atomic import write_file_atomically


def run_daemon(cfg: DaemonConfig, echo: Callable[[str], None] | None = None) -> int:
    log = DaemonLog(cfg, echo)
    daemon = Daemon(cfg, log)
    daemon.listen()
    if cfg.pid_file:
        write_file_atomically(cfg.pid_file, f"{os.getpid()}\n".encode())
    daemon.drop_privileges()
    if cfg.workers > 1:
        where = ", ".join(f"unix {cfg.local_socket}" if unix else f"tcp {s.getsockname()}"
                          for s, unix in daemon._listeners)
        log(f"Bastion clamd-compatible daemon ready: {daemon.engine.db.signature_count} signatures; {where}; "
            f"{cfg.workers} worker processes")
        Supervisor(daemon, log).run()
        return _stopped(cfg, log)
    signal.signal(signal.SIGUSR2, lambda *_: daemon.reload())
    signal.signal(signal.SIGTERM, lambda *_: daemon.shutdown())
    signal.signal(signal.SIGINT, lambda *_: daemon.shutdown())
    where = ", ".join(f"unix {cfg.local_socket}" if unix else f"tcp {s.getsockname()}" for s, unix in daemon._listeners)
    log(f"Bastion clamd-compatible daemon ready: {daemon.engine.db.signature_count} signatures; {where}")
    daemon.serve_forever()
    return _stopped(cfg, log)


def _stopped(cfg: DaemonConfig, log: DaemonLog) -> int:
    log("Bastion daemon stopped")
    if cfg.pid_file:
        try:
            os.unlink(cfg.pid_file)
        except OSError:
            pass  # e.g. in a root-owned directory after User dropped privileges
    return 0
