"""Small helpers shared by the test modules (no fixtures: those live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CANARY = b"BASTION-TEST-CANARY-7f3a9c1e"


def bastion_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["BASTION_CACHE_DIR"] = str(cache_dir)
    env["BASTION_DB_DIR"] = str(cache_dir / "no-installed-db")
    env["BASTION_EVENTS_FILE"] = str(cache_dir / "events.jsonl")
    env["BASTION_SCHEDULES_FILE"] = str(cache_dir / "schedules.json")
    env["BASTION_DB_STORE"] = env.get("BASTION_DB_STORE") or str(cache_dir / "store")
    env["BASTION_QUARANTINE_DIR"] = env.get("BASTION_QUARANTINE_DIR") or str(cache_dir / "quarantine")
    return env


def run_clamscan_clone(args: list[str], cache_dir: Path, stdin: bytes | None = None,
                       timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``bastion-clamscan`` as a real process."""
    return subprocess.run([sys.executable, "-m", "bastion.cli.clamscan", *args], input=stdin and stdin.decode(),
                          capture_output=True, text=True, env=bastion_env(cache_dir), timeout=timeout)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def run_with_stderr_on_a_terminal(cmd: list[str], env: dict[str, str],
                                  timeout: float = 180) -> tuple[int, str, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal (80x24) and stdout on a pipe, as a user at a
    terminal would see it.  Returns (exit status, stdout, what the terminal received)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                piece = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not piece:
                break
            screen += piece
        elif proc.poll() is not None:
            break
    os.close(master)
    stdout = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    return proc.returncode, stdout.decode(errors="replace"), screen.decode(errors="replace")
