"""The clamd-compatible daemon, as real processes on loopback: Bastion's and Debian's clamd answer the
same bytes, real clients (clamdscan, the PyPI ``clamd``, ``pyclamd``, ``clamav-client`` and ``aioclamd``
clients) work unchanged, hostile clients get clamd's answer or a closed connection, and RELOAD swaps
the database.  The client and hostile-client tests run against both daemons (the ``server`` fixture),
so Bastion is held to what the real clamd does."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import bastion_env, write

PAYLOAD = b"xx daemonpayloadword yy\n"
NDB = "Daemon.Test.Body:0:*:" + b"daemonpayloadword".hex() + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(path: str | tuple[str, int], payload: bytes, timeout: float = 5.0) -> bytes:
    family = socket.AF_UNIX if isinstance(path, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(payload)
        out = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                out += data
        except TimeoutError:
            out += b"<timeout>"
        return out


def wait_for(sock: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if ask(sock, b"zPING\0", 2) == b"PONG\0":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("daemon did not answer PING")


def conf(root: Path, name: str, tcp: int | None = None, extra: str = "") -> Path:
    lines = [f"LocalSocket {root}/{name}.sock", f"DatabaseDirectory {root}/db", "StreamMaxLength 1M",
             "Foreground yes", "CommandReadTimeout 2", "ReadTimeout 3", "MaxThreads 8"]
    if tcp:
        lines += [f"TCPSocket {tcp}", "TCPAddr 127.0.0.1"]
    return write(root / f"{name}.conf", "\n".join(lines) + "\n" + extra)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("daemon")
    write(root / "db" / "t.ndb", NDB)
    write(root / "files" / "inf.txt", PAYLOAD)
    write(root / "files" / "clean.txt", b"clean text here\n")
    write(root / "files" / "sub" / "deep.txt", PAYLOAD)
    return root


@pytest.fixture(scope="module")
def bastion(tree: Path) -> Iterator[dict]:
    port = free_port()
    cfg = conf(tree, "bastion", tcp=port)
    proc = subprocess.Popen([sys.executable, "-m", "bastion.daemon.main", "-c", str(cfg)], env=bastion_env(tree / "c"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(str(tree / "bastion.sock"), proc)
        yield {"sock": str(tree / "bastion.sock"), "tcp": ("127.0.0.1", port), "proc": proc, "conf": cfg}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def real_clamd(tree: Path) -> Iterator[dict]:
    exe = shutil.which("clamd") or ("/usr/sbin/clamd" if os.path.exists("/usr/sbin/clamd") else None)
    if exe is None:
        pytest.skip("Debian's clamd is not installed (apt-get install clamav-daemon)")
    port = free_port()
    cfg = conf(tree, "clamd", tcp=port)
    proc = subprocess.Popen([exe, "-c", str(cfg), "-F"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_for(str(tree / "clamd.sock"), proc)
        except RuntimeError as exc:
            pytest.skip(f"Debian's clamd did not start here: {exc}")
        yield {"sock": str(tree / "clamd.sock"), "tcp": ("127.0.0.1", port), "proc": proc, "conf": cfg}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def clamd(real_clamd: dict) -> str:
    return real_clamd["sock"]


@pytest.fixture(params=["bastion", "clamd"])
def server(request: pytest.FixtureRequest) -> dict:
    """The same client and hostile-client tests run against Bastion's daemon and Debian's clamd."""
    return request.getfixturevalue("bastion" if request.param == "bastion" else "real_clamd")


def probes(tree: Path) -> list[bytes]:
    f = tree / "files"
    return [
        b"zPING\0", b"nPING\n", b"PING", b"zFOO\0", b"nVERSIONCOMMANDS\n", b"VERSIONCOMMANDS\n", b"zPING\n\0",
        f"zSCAN {f}/inf.txt\0".encode(), f"zSCAN {f}/nope\0".encode(), f"nSCAN {f}/clean.txt\n".encode(),
        f"zSCANX{f}/clean.txt\0".encode(), f"nCONTSCAN {f}/clean.txt\n".encode(),
        f"zALLMATCHSCAN {f}/inf.txt\0".encode(),
        b"zINSTREAM\0" + len(PAYLOAD).to_bytes(4, "big") + PAYLOAD + bytes(4),
        b"zINSTREAM\0" + (5).to_bytes(4, "big") + b"clean" + bytes(4),
        b"nINSTREAM\n" + (2 * 1024 * 1024).to_bytes(4, "big"),
        b"zEND\0", b"STATS\n", b"nSCAN\n", b"zIDSESSION\0zPING\0" + f"zSCAN {f}/inf.txt\0".encode() + b"zEND\0",
        b"zIDSESSION\0" + f"zCONTSCAN {f}\0".encode(),
        b"zDETSTATS\0",
    ]


def test_same_bytes_as_clamd(tree: Path, bastion: dict, clamd: str) -> None:
    for payload in probes(tree):
        assert ask(bastion["sock"], payload) == ask(clamd, payload), payload


def test_directory_scans_match_clamd(tree: Path, bastion: dict, clamd: str) -> None:
    f = tree / "files"
    for cmd in ("CONTSCAN", "MULTISCAN", "SCAN"):
        ours = sorted(ask(bastion["sock"], f"z{cmd} {f}\0".encode()).split(b"\0"))
        theirs = sorted(ask(clamd, f"z{cmd} {f}\0".encode()).split(b"\0"))
        if cmd == "SCAN":  # stops at the first infected file: which one depends on directory order
            assert len(ours) == len(theirs) and all(b"FOUND" in x for x in ours if x), (ours, theirs)
        else:
            assert ours == theirs, cmd


def test_tcp_and_python_clients(tree: Path, server: dict) -> None:
    bastion = server
    import clamd as clamd_client
    import pyclamd

    f = tree / "files"
    for client in (clamd_client.ClamdUnixSocket(bastion["sock"]), clamd_client.ClamdNetworkSocket(*bastion["tcp"])):
        assert client.ping() == "PONG"
        assert client.version().startswith("ClamAV 1.4.6")
        assert client.scan(f"{f}/inf.txt") == {f"{f}/inf.txt": ("FOUND", "Daemon.Test.Body.UNOFFICIAL")}
        assert client.instream(io.BytesIO(PAYLOAD)) == {"stream": ("FOUND", "Daemon.Test.Body.UNOFFICIAL")}
        assert client.instream(io.BytesIO(b"clean bytes")) == {"stream": ("OK", None)}
        found = client.contscan(str(f))
        assert set(found) == {f"{f}/inf.txt", f"{f}/sub/deep.txt"}
        assert client.stats().startswith("POOLS: 1")
    py = pyclamd.ClamdUnixSocket(bastion["sock"])
    assert py.ping()
    assert py.scan_stream(PAYLOAD) == {"stream": ("FOUND", "Daemon.Test.Body.UNOFFICIAL")}
    assert py.scan_file(f"{f}/clean.txt") is None


def test_clamav_client_and_aioclamd(tree: Path, server: dict) -> None:
    bastion = server
    import asyncio

    import aioclamd
    from clamav_client import clamd as cc

    f = tree / "files"
    client = cc.ClamdUnixSocket(bastion["sock"])
    assert client.ping() == "PONG"
    assert client.instream(io.BytesIO(PAYLOAD)) == {"stream": ("FOUND", "Daemon.Test.Body.UNOFFICIAL")}
    assert client.scan(f"{f}/clean.txt") == {f"{f}/clean.txt": ("OK", None)}

    async def talk() -> tuple:
        a = aioclamd.ClamdAsyncClient(*bastion["tcp"], timeout=10)
        return await a.ping(), await a.instream(io.BytesIO(PAYLOAD)), await a.version()

    pong, streamed, version = asyncio.run(talk())
    assert pong == "PONG" and streamed == {"stream": ("FOUND", "Daemon.Test.Body.UNOFFICIAL")}
    assert version.startswith("ClamAV 1.4.6")


@pytest.mark.parametrize("mode", ["", "--stream", "--fdpass", "--multiscan", "--allmatch"])
def test_clamdscan(tree: Path, server: dict, mode: str) -> None:
    bastion = server
    exe = shutil.which("clamdscan")
    if exe is None:
        pytest.skip("clamdscan is not installed (apt-get install clamdscan)")
    r = subprocess.run([exe, f"--config-file={bastion['conf']}", *([mode] if mode else []), "--no-summary",
                        str(tree / "files")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    found = sorted({line for line in r.stdout.splitlines() if line.endswith("FOUND")})  # -z: one line per alert
    assert found == [f"{tree}/files/inf.txt: Daemon.Test.Body.UNOFFICIAL FOUND",
                     f"{tree}/files/sub/deep.txt: Daemon.Test.Body.UNOFFICIAL FOUND"]


def test_hostile_clients(tree: Path, server: dict) -> None:
    sock = server["sock"]
    assert ask(sock, os.urandom(3000) + b"\n") in (b"UNKNOWN COMMAND\n", b"")
    assert ask(sock, b"zINSTREAM\0" + b"\xff\xff\xff\xff") == b"INSTREAM size limit exceeded. ERROR\0"
    # a client that stops sending: CommandReadTimeout (2 s here) closes it with clamd's line
    assert ask(sock, b"zPI", timeout=10) == b"COMMAND READ TIMED OUT\n"
    # a stream that stops in the middle: ReadTimeout closes it, with the same line (clamd 1.4.6 too)
    assert ask(sock, b"zINSTREAM\0" + (100).to_bytes(4, "big") + b"abc", timeout=10) == b"COMMAND READ TIMED OUT\n"
    # a flood of connections, half of them idle: everyone else is still served
    idle = [socket.socket(socket.AF_UNIX) for _ in range(30)]
    for s in idle:
        s.connect(sock)
    try:
        answers: list[bytes] = []
        threads = [threading.Thread(target=lambda: answers.append(ask(sock, b"zPING\0", 20))) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers.count(b"PONG\0") == 40
    finally:
        for s in idle:
            s.close()
    assert ask(sock, b"zPING\0") == b"PONG\0"


def test_reload_swaps_the_database_and_survives_a_bad_one(tree: Path, bastion: dict) -> None:
    sock = bastion["sock"]
    extra = tree / "db" / "z.ndb"
    probe = b"zINSTREAM\0" + (len(b"reloadword!!")).to_bytes(4, "big") + b"reloadword!!" + bytes(4)
    assert ask(sock, probe) == b"stream: OK\0"
    write(extra, "Daemon.Test.Reloaded:0:*:" + b"reloadword".hex() + "\n")
    try:
        assert ask(sock, b"zRELOAD\0") == b"RELOADING\0"
        deadline = time.monotonic() + 30
        while ask(sock, probe) != b"stream: Daemon.Test.Reloaded.UNOFFICIAL FOUND\0":
            assert time.monotonic() < deadline, "the reload never took effect"
            time.sleep(0.2)
        write(extra, "Broken:0:*:zz\n")  # does not load: the previous database keeps serving
        assert ask(sock, b"nRELOAD\n") == b"RELOADING\n"
        time.sleep(2)
        assert ask(sock, probe) == b"stream: Daemon.Test.Reloaded.UNOFFICIAL FOUND\0"
        assert bastion["proc"].poll() is None
    finally:
        extra.unlink()
        ask(sock, b"zRELOAD\0")


def test_config_errors_and_warnings(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.conf", "Example\nLocalSocket /tmp/x.sock\n")
    r = subprocess.run([sys.executable, "-m", "bastion.daemon.main", "-c", str(cfg)], capture_output=True, text=True,
                       env=bastion_env(tmp_path / "c"), timeout=30)
    assert r.returncode == 1 and f"{cfg}:1:" in r.stderr and "Example" in r.stderr
    cfg = write(tmp_path / "d.conf", "TCPAddr 127.0.0.1\nNoSuchOption 1\n")
    r = subprocess.run([sys.executable, "-m", "bastion.daemon.main", "-c", str(cfg)], capture_output=True, text=True,
                       env=bastion_env(tmp_path / "c"), timeout=30)
    assert r.returncode == 1 and f"{cfg}:2: unknown option 'NoSuchOption'" in r.stderr
