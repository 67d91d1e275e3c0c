"""Running the daemon as a service: bastion.toml, LocalSocketGroup/User/LogFile, SelfCheck reloads,
ConcurrentDatabaseReload no, MaxQueue under a flood of connections, MULTISCAN in parallel, and the
shipped systemd unit.  Each test starts its own real daemon on a unix socket."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bastion.daemon.config import ConfigError, DaemonConfig, parse_bastion_toml, parse_clamd_conf
from tests.helpers import REPO, bastion_env, write
from tests.test_daemon import ask, wait_for

WORD = b"daemonopsword"
NDB = "Daemon.Ops.Body:0:*:" + WORD.hex() + "\n"


def instream(data: bytes) -> bytes:
    return b"zINSTREAM\0" + len(data).to_bytes(4, "big") + data + bytes(4)


@contextmanager
def daemon(root: Path, config_text: str, name: str = "bastion.conf", workers: int = 2) -> Iterator[subprocess.Popen]:
    write(root / "db" / "t.ndb", NDB)
    cfg = write(root / name, config_text)
    proc = subprocess.Popen([sys.executable, "-m", "bastion.daemon.main", "-c", str(cfg), "--workers", str(workers)],
                            env=bastion_env(root / "cache"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(str(root / "d.sock"), proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the worker processes of the daemon's supervisor)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(entry))
    return [pid, *kids]


def wait_for_workers(proc: subprocess.Popen, count: int = 2) -> list[int]:
    """The worker processes, once all ``count`` are forked (the socket answers after the first)."""
    deadline = time.monotonic() + 20
    while len(workers := process_tree(proc.pid)[1:]) != count:
        assert time.monotonic() < deadline, f"workers: {workers}"
        time.sleep(0.1)
    return workers


def count_in_tree(pid: int, what: str) -> int:
    """Open descriptors (``fd``) or threads (``task``) of the daemon's processes together."""
    total = 0
    for p in process_tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/{what}"))
        except OSError:
            pass
    return total


def base_conf(root: Path, extra: str = "") -> str:
    return (f"LocalSocket {root}/d.sock\nDatabaseDirectory {root}/db\nCommandReadTimeout 2\nReadTimeout 3\n"
            f"Foreground yes\n{extra}")


def test_bastion_toml_means_the_same_as_clamd_conf(tmp_path: Path) -> None:
    conf = parse_clamd_conf("c.conf", """LocalSocket /run/b.sock
LocalSocketMode 660
LocalSocketGroup nogroup
TCPSocket 3310
TCPAddr 127.0.0.1
TCPAddr ::1
MaxThreads 4
StreamMaxLength 25M
MaxScanSize 1G
ExcludePath ^/proc/
DetectPUA yes
ConcurrentDatabaseReload no
SelfCheck 30
ScanPDF yes
""")
    toml = parse_bastion_toml("b.toml", """[daemon]
local_socket = "/run/b.sock"
local_socket_mode = "660"
local_socket_group = "nogroup"
tcp_socket = 3310
tcp_addr = ["127.0.0.1", "::1"]
max_threads = 4
stream_max_length = "25M"
max_scan_size = 1073741824
exclude_path = ["^/proc/"]
detect_pua = true
concurrent_database_reload = false
self_check = 30
scan_pdf = true
""")
    assert toml == conf
    assert conf.local_socket_mode == 0o660 and conf.stream_max_length == 25 * 1024 * 1024
    assert conf.tcp_addrs == ["127.0.0.1", "::1"] and conf.ignored == ["ScanPDF"]
    assert DaemonConfig().self_check == 600  # clamd's default
    with pytest.raises(ConfigError, match=r"b.toml:3: \[daemon\]: unknown key 'max_thread'"):
        parse_bastion_toml("b.toml", '[daemon]\nlocal_socket = "/x"\nmax_thread = 4\n')
    with pytest.raises(ConfigError, match=r"b.toml:2: \[daemon\]: StreamMaxLength: bad size"):
        parse_bastion_toml("b.toml", '[daemon]\nstream_max_length = "lots"\nlocal_socket = "/x"\n')
    with pytest.raises(ConfigError, match=r"b.toml:2: not valid TOML"):
        parse_bastion_toml("b.toml", "[daemon]\nmax_threads = = 4\n")


def test_daemon_runs_from_bastion_toml(tmp_path: Path) -> None:
    text = (f'[daemon]\nlocal_socket = "{tmp_path}/d.sock"\ndatabase_directory = "{tmp_path}/db"\n'
            f'stream_max_length = "1K"\nforeground = true\n')
    with daemon(tmp_path, text, "bastion.toml"):
        sock = str(tmp_path / "d.sock")
        assert ask(sock, instream(b"a " + WORD + b" b")) == b"stream: Daemon.Ops.Body.UNOFFICIAL FOUND\0"
        assert ask(sock, instream(b"x" * 2000)) == b"INSTREAM size limit exceeded. ERROR\0"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges (User) needs root")
def test_user_group_and_log_file(tmp_path: Path) -> None:
    log = tmp_path / "clamd.log"
    extra = f"LocalSocketGroup nogroup\nLocalSocketMode 660\nUser nobody\nLogFile {log}\nLogTime yes\nLogClean yes\n"
    with daemon(tmp_path, base_conf(tmp_path, extra)) as proc:
        sock = str(tmp_path / "d.sock")
        st = os.stat(sock)
        assert st.st_gid == 65534 and st.st_mode & 0o777 == 0o660
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(r"^Uid:\s+65534\s", status, re.M), status
        assert ask(sock, instream(WORD)) == b"stream: Daemon.Ops.Body.UNOFFICIAL FOUND\0"
        assert ask(sock, instream(b"clean")) == b"stream: OK\0"
        text = log.read_text()
    stamp = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} -> "
    assert re.search(stamp + r"stream: Daemon.Ops.Body.UNOFFICIAL FOUND$", text, re.M), text
    assert re.search(stamp + r"stream: OK$", text, re.M), text
    assert "daemon ready" in text


@pytest.mark.parametrize(("concurrent", "workers"), [("yes", 1), ("no", 1), ("yes", 2), ("no", 2)])
def test_self_check_reloads_a_changed_database_while_serving(tmp_path: Path, concurrent: str, workers: int) -> None:
    extra = f"SelfCheck 1\nConcurrentDatabaseReload {concurrent}\nMaxThreads 4\nLogFile {tmp_path}/d.log\n"
    with daemon(tmp_path, base_conf(tmp_path, extra), workers=workers):
        sock = str(tmp_path / "d.sock")
        probe = instream(b"new selfcheckword here")
        assert ask(sock, probe) == b"stream: OK\0"
        stop = threading.Event()
        replies: list[bytes] = []

        def client() -> None:  # keeps scanning while the database changes under it
            while not stop.is_set():
                replies.append(ask(sock, instream(b"a " + WORD), timeout=20))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            write(tmp_path / "db" / "new.ndb", "Daemon.Ops.New:0:*:" + b"selfcheckword".hex() + "\n")
            deadline = time.monotonic() + 60
            while ask(sock, probe) != b"stream: Daemon.Ops.New.UNOFFICIAL FOUND\0":
                assert time.monotonic() < deadline, "the changed database was never loaded"
                time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert replies and set(replies) == {b"stream: Daemon.Ops.Body.UNOFFICIAL FOUND\0"}
    # only the added file was compiled, as a layer on top of the database being served (delta.py)
    assert "Database compiled as a layer: 1 sources compiled (0 of them line by line), 0 removed, 2 layers" in \
        (tmp_path / "d.log").read_text()
    logged = [json.loads(line) for line in (tmp_path / "cache" / "events.jsonl").read_text().splitlines()]
    actions = {e["event"]["action"] for e in logged}
    assert {"detection", "database-reload"} <= actions, actions
    reload_event = next(e for e in logged if e["event"]["action"] == "database-reload")
    assert reload_event["event"]["outcome"] == "success" and reload_event["bastion"]["signatures"] >= 2


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_that_does_not_compile_is_refused_by_its_compile_child(tmp_path: Path, workers: int) -> None:
    """A bad line in a changed file: the compile child (a fork of the supervisor, or a new interpreter
    beside the threads of a one-process daemon) says why, the serving process does not compile the
    database itself, and the old database keeps serving."""
    extra = f"SelfCheck 1\nLogFile {tmp_path}/d.log\n"
    with daemon(tmp_path, base_conf(tmp_path, extra), workers=workers) as proc:
        sock = str(tmp_path / "d.sock")
        bad = write(tmp_path / "db" / "bad.ndb",
                    "Daemon.Ops.Fine:0:*:" + b"finefine".hex() + "\nDaemon.Ops.Bad:0:*:zz\n")
        deadline = time.monotonic() + 60
        while "Database reload failed" not in (tmp_path / "d.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "d.log").read_text()
            time.sleep(0.3)
        text = (tmp_path / "d.log").read_text()
        assert f"Database reload failed, still serving the previous database: {bad}:2:" in text, text
        assert ask(sock, instream(b"a " + WORD)) == b"stream: Daemon.Ops.Body.UNOFFICIAL FOUND\0"
        assert ask(sock, instream(b"finefine")) == b"stream: OK\0"
        assert proc.poll() is None


def test_compile_children_report_a_bad_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.daemon.server import CompileFailed, _ensure_compiled

    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    bad = write(tmp_path / "db" / "x.hdb", "44d88612fea8a8f36de82e1278abb02f:68:Ok.Sig\nnot-a-hash-line\n")
    for fork in (False, True):
        with pytest.raises(CompileFailed, match=f"{re.escape(str(bad))}:2:"):
            _ensure_compiled([str(tmp_path / "db")], False, fork=fork)


def test_flood_past_the_queue_keeps_serving(tmp_path: Path) -> None:
    extra = "MaxThreads 2\nMaxQueue 4\nMaxConnectionQueueLength 8\nCommandReadTimeout 1\n"
    with daemon(tmp_path, base_conf(tmp_path, extra)) as proc:
        sock = str(tmp_path / "d.sock")
        wait_for_workers(proc)
        fds_before, settle = -1, time.monotonic() + 20
        while fds_before != (fds_before := count_in_tree(proc.pid, "fd")) and time.monotonic() < settle:
            time.sleep(0.3)  # until the workers have opened all they open at start-up
        flood = []
        for _ in range(200):  # clients that connect and say nothing: far past queue and backlog
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(sock)
            except (BlockingIOError, ConnectionRefusedError, OSError):
                pass
            flood.append(s)
        try:
            time.sleep(0.5)
            fds_during = count_in_tree(proc.pid, "fd")
            # MaxQueue 4, shared out among the worker processes (rounded up: one more each at most)
            workers = len(process_tree(proc.pid)) - 1
            assert fds_during <= fds_before + 4 + workers, "the daemon accepted past MaxQueue"
            deadline = time.monotonic() + 60
            answer = b""
            while answer != b"PONG\0" and time.monotonic() < deadline:
                try:
                    answer = ask(sock, b"zPING\0", 5)
                except OSError:
                    time.sleep(0.2)
            assert answer == b"PONG\0", "a real client was never served during the flood"
        finally:
            for s in flood:
                s.close()
        assert ask(sock, b"zPING\0") == b"PONG\0"
        assert proc.poll() is None


def test_worker_processes_are_restarted_and_stop_together(tmp_path: Path) -> None:
    with daemon(tmp_path, base_conf(tmp_path), workers=2) as proc:
        sock = str(tmp_path / "d.sock")
        workers = wait_for_workers(proc)
        os.kill(workers[0], 9)  # a worker that crashes is replaced; the others keep serving
        assert ask(sock, instream(WORD)) == b"stream: Daemon.Ops.Body.UNOFFICIAL FOUND\0"
        deadline = time.monotonic() + 20
        while len(process_tree(proc.pid)) - 1 != 2 or workers[0] in process_tree(proc.pid):
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.2)
        assert ask(sock, b"zSHUTDOWN\0") == b""  # SHUTDOWN from any worker stops them all
        proc.wait(timeout=30)
        assert not any(os.path.exists(f"/proc/{w}") and Path(f"/proc/{w}/stat").read_text().split()[2] != "Z"
                       for w in process_tree(proc.pid)[1:])
        assert not (tmp_path / "d.sock").exists()


def test_multiscan_scans_in_parallel_with_the_same_replies(tmp_path: Path) -> None:
    files = tmp_path / "files"
    for i in range(24):
        write(files / f"f{i:02d}.txt", (WORD if i % 3 == 0 else b"clean") + b" %d" % i)
    with daemon(tmp_path, base_conf(tmp_path, "MaxThreads 4\n"), workers=1) as proc:
        sock = str(tmp_path / "d.sock")
        cont = ask(sock, f"zCONTSCAN {files}\0".encode()).split(b"\0")
        threads_before = count_in_tree(proc.pid, "task")
        multi = ask(sock, f"zMULTISCAN {files}\0".encode()).split(b"\0")
        threads_after = count_in_tree(proc.pid, "task")
        assert sorted(multi) == sorted(cont)
        assert len([x for x in multi if x.endswith(b"FOUND")]) == 8
        assert threads_after - threads_before >= 2, "MULTISCAN scanned on one thread"


@pytest.mark.parametrize(("name", "options"), [
    ("bastion-clamd.service", ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=",
                               "RuntimeDirectory=bastion", "ExecReload=/bin/kill -USR2 $MAINPID")),
    ("bastion-watch.service", ("NoNewPrivileges=yes", "ProtectSystem=strict", "CAP_SYS_ADMIN", "--timeout")),
])
def test_systemd_unit_is_valid_and_sandboxed(name: str, options: tuple[str, ...]) -> None:
    unit = REPO / "packaging" / "systemd" / name
    text = unit.read_text()
    for option in options:
        assert option in text, option
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    r = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in r.stderr.splitlines()
                if str(unit.name) in line and "Command" not in line and "executable" not in line.lower()]
    assert not problems, r.stderr


def test_heuristic_switches_of_clamd_conf(tmp_path: Path) -> None:
    """AlertBrokenExecutables and AlertExceedsMax act as clamd's do (no longer "ignored")."""
    import struct

    from tests.test_executable import make_pe

    broken = bytearray(make_pe())
    struct.pack_into("<H", broken, 0x40 + 6, 0)  # NumberOfSections 0
    conf = base_conf(tmp_path, "AlertBrokenExecutables yes\nAlertExceedsMax yes\nMaxFileSize 100K\nLogVerbose yes\n")
    with daemon(tmp_path, conf, workers=1) as proc:
        sock = str(tmp_path / "d.sock")
        assert ask(sock, instream(bytes(broken))) == b"stream: Heuristics.Broken.Executable FOUND\0"
        assert ask(sock, instream(make_pe())) == b"stream: OK\0"
        assert ask(sock, instream(bytes(200_000))) == b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0"
        proc.terminate()
        warnings = proc.communicate(timeout=20)[1]
        assert "LogVerbose" in warnings and "AlertBrokenExecutables" not in warnings, warnings
