"""On-access scanning with a real watcher process: inotify always (scan after write, bursts of
10,000 files, debouncing), fanotify where this machine allows it (opens of infected files denied,
the writer never held longer than the fail-open timeout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bastion.watch.watcher import _fanotify_available
from tests.helpers import EICAR, bastion_env, write


class WatchProcess:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.mode_line = proc.stderr.readline() if proc.stderr else ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait(self, predicate: Callable[[list[dict]], bool], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not predicate(list(self.lines)):
            assert time.monotonic() < deadline, f"watcher did not report in time: {self.lines[-5:]}"
            assert self.proc.poll() is None, "the watcher exited"
            time.sleep(0.05)

    def of(self, kind: str) -> list[str]:
        return [x["path"] for x in list(self.lines) if x["type"] == kind]


@contextmanager
def watching(tmp: Path, *args: str, env: dict[str, str] | None = None,
             prefix: list[str] | None = None) -> Iterator[WatchProcess]:
    (tmp / "w").mkdir(exist_ok=True)
    full_env = {**bastion_env(tmp / "cache"), **(env or {})}
    command = [sys.executable, "-m", "bastion.cli.main", "watch", str(tmp / "w"), "--json", "-v", *args]
    proc = subprocess.Popen([*(prefix or []), *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    watcher = WatchProcess(proc)
    try:
        watcher.wait(lambda lines: any(x["type"] == "ready" for x in lines))
        yield watcher
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def burst(root: Path, n: int, infected_every: int) -> tuple[list[Path], float]:
    """Write ``n`` files as fast as possible; returns the infected ones and the slowest single write."""
    infected, slowest = [], 0.0
    for i in range(n):
        path = root / f"d{i % 20}" / f"f{i:05d}.txt"
        path.parent.mkdir(exist_ok=True)
        bad = i % infected_every == 7
        t0 = time.perf_counter()
        path.write_bytes(EICAR if bad else b"clean file %d\n" % i)
        slowest = max(slowest, time.perf_counter() - t0)
        if bad:
            infected.append(path)
    return infected, slowest


def test_inotify_scans_after_write_and_survives_a_burst(tmp_path: Path) -> None:
    with watching(tmp_path, "--mode", "inotify") as w:
        assert "mode inotify" in w.mode_line
        victim = write(tmp_path / "w" / "eicar.com", EICAR)
        w.wait(lambda lines: str(victim) in [x["path"] for x in lines if x["type"] == "infected"])
        assert victim.read_bytes() == EICAR  # report-only: nothing is changed without being asked
        (tmp_path / "w" / "new" / "deeper").mkdir(parents=True)  # directories made later are watched
        late = write(tmp_path / "w" / "new" / "deeper" / "late.com", EICAR)
        w.wait(lambda lines: str(late) in [x["path"] for x in lines if x["type"] == "infected"])

        infected, slowest = burst(tmp_path / "w", 10_000, 1000)
        w.wait(lambda lines: len({x["path"] for x in lines if x["type"] in ("clean", "infected")}) >= 10_002,
               seconds=240)
        found = w.of("infected")
        assert sorted(found) == sorted(map(str, [victim, late, *infected]))  # each once, none lost
        assert slowest < 1.0
    events = [json.loads(x) for x in (tmp_path / "cache" / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"]["action"] == "detection" and e["process"]["name"] == "bastion watch" for e in events) == 12


def test_debounce_scans_a_file_rewritten_in_a_burst_once(tmp_path: Path) -> None:
    with watching(tmp_path, "--mode", "inotify") as w:
        path = tmp_path / "w" / "log.txt"
        for i in range(50):
            path.write_bytes(b"line %d\n" % i)
        path.write_bytes(EICAR)
        w.wait(lambda lines: str(path) in [x["path"] for x in lines if x["type"] == "infected"])
        time.sleep(0.5)
        assert w.of("clean").count(str(path)) <= 2 and w.of("infected") == [str(path)]


def test_move_to_quarantine_on_access(tmp_path: Path) -> None:
    with watching(tmp_path, "--mode", "inotify", "--move-to-quarantine") as w:
        victim = write(tmp_path / "w" / "dropper.exe", EICAR)
        w.wait(lambda lines: str(victim) in w.of("quarantined"))
        assert not victim.exists()
    listed = subprocess.run([sys.executable, "-m", "bastion.cli.main", "quarantine", "list", "--json"],
                            capture_output=True, text=True, env=bastion_env(tmp_path / "cache"), timeout=60)
    assert json.loads(listed.stdout)["original_path"] == str(victim)


fanotify_ok, fanotify_why = _fanotify_available()
needs_fanotify = pytest.mark.skipif(not fanotify_ok, reason=fanotify_why)


@needs_fanotify
def test_fanotify_blocks_opens_of_infected_files(tmp_path: Path) -> None:
    with watching(tmp_path, "--mode", "fanotify") as w:
        assert "mode fanotify" in w.mode_line
        victim = write(tmp_path / "w" / "eicar.com", EICAR)
        clean = write(tmp_path / "w" / "ok.txt", b"fine\n")
        w.wait(lambda lines: str(victim) in w.of("infected"))
        reader = subprocess.run(["cat", str(victim)], capture_output=True, timeout=30)
        assert reader.returncode != 0 and b"Operation not permitted" in reader.stderr
        assert subprocess.run(["cat", str(clean)], capture_output=True, timeout=30).stdout == b"fine\n"
        # a burst of writes: every open waits for the watcher, none longer than the fail-open timeout
        infected, slowest = burst(tmp_path / "w", 10_000, 1000)
        assert slowest < 5.0, slowest
        for path in infected:
            with pytest.raises(PermissionError):
                path.read_bytes()
        w.wait(lambda lines: set(map(str, infected)) <= set(w.of("infected")), seconds=120)


@needs_fanotify
def test_fanotify_fails_open_after_the_timeout(tmp_path: Path) -> None:
    victim = write(tmp_path / "w" / "eicar.com", EICAR)  # there before the watcher: not scanned yet
    env = {"BASTION_FAULT_SCAN_DELAY": "4"}  # every scan takes 4 s, past the 0.5 s timeout
    with watching(tmp_path, "--mode", "fanotify", "--timeout", "0.5", env=env) as w:
        t0 = time.perf_counter()
        assert victim.read_bytes() == EICAR  # allowed: the watcher never holds an open past its timeout
        assert time.perf_counter() - t0 < 2.0
        w.wait(lambda lines: any(x["type"] == "timeout" for x in lines))
        w.wait(lambda lines: str(victim) in w.of("infected"), seconds=30)  # still found and reported


def test_watch_says_when_fanotify_is_refused(tmp_path: Path) -> None:
    # where fanotify works (root with CAP_SYS_ADMIN), take that capability away from the watcher:
    # auto mode must fall back to inotify, say why, and still find what is written
    prefix = ["setpriv", "--bounding-set=-sys_admin"] if os.geteuid() == 0 and fanotify_ok else []
    with watching(tmp_path, prefix=prefix) as w:
        assert "mode inotify" in w.mode_line and "fanotify is not available here" in w.mode_line
        victim = write(tmp_path / "w" / "eicar.com", EICAR)
        w.wait(lambda lines: str(victim) in w.of("infected"))


@pytest.mark.parametrize("mode", ["inotify", "fanotify"])
def test_daemon_mode_scans_through_a_running_daemon(tmp_path: Path, mode: str) -> None:
    if mode == "fanotify" and not fanotify_ok:
        pytest.skip(fanotify_why)
    from tests.test_daemon import wait_for

    write(tmp_path / "db" / "d.ndb", "Watch.Daemon.Only:0:*:" + b"only the daemon knows".hex() + "\n")
    conf = write(tmp_path / "clamd.conf", f"LocalSocket {tmp_path}/d.sock\nDatabaseDirectory {tmp_path}/db\n"
                                         "Foreground yes\n")
    daemon = subprocess.Popen([sys.executable, "-m", "bastion.daemon.main", "-c", str(conf)],
                              env=bastion_env(tmp_path / "dcache"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(str(tmp_path / "d.sock"), daemon)
        with watching(tmp_path, "--mode", mode, "--daemon", str(tmp_path / "d.sock")) as w:
            assert "scanning through the daemon" in w.mode_line
            victim = write(tmp_path / "w" / "x.txt", b"this is something only the daemon knows\n")
            w.wait(lambda lines: str(victim) in w.of("infected"))
            hit = next(x for x in w.lines if x["type"] == "infected")
            assert hit["detections"] == ["Watch.Daemon.Only.UNOFFICIAL"]  # the daemon's database, not built-in
            if mode == "fanotify":
                with pytest.raises(PermissionError):
                    victim.read_bytes()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


@needs_fanotify
def test_fanotify_allow_lists() -> None:
    import shutil as sh
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="bastion-watch-allow-", dir="/tmp"))  # reachable by nobody
    os.chmod(tmp_path, 0o755)
    victim = write(tmp_path / "w" / "eicar.com", EICAR)
    os.chmod(tmp_path / "w", 0o755)
    os.chmod(victim, 0o644)
    cat = os.path.realpath(sh.which("cat") or "/bin/cat")
    with watching(tmp_path, "--mode", "fanotify", "--allow-program", cat, "--allow-uid", "65534") as w:
        with pytest.raises(PermissionError):
            victim.read_bytes()  # this test process: held and denied
        assert subprocess.run([cat, str(victim)], capture_output=True, timeout=30).stdout == EICAR  # allowed program
        as_nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "head", "-c", "4",
                                    str(victim)], capture_output=True, timeout=30)
        assert as_nobody.stdout == EICAR[:4], as_nobody.stderr  # allowed user
        assert w.proc.poll() is None
    sh.rmtree(tmp_path, ignore_errors=True)
