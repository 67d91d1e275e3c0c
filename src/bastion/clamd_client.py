"""A small client of the clamd protocol (Bastion's daemon or ClamAV's clamd) on a unix socket, for
front ends that share a running daemon's loaded database instead of loading their own
(``bastion watch --daemon SOCKET``, as clamonacc uses clamd).

``scan_fd`` passes an open file descriptor (``zFILDES`` with SCM_RIGHTS), so the daemon reads the
very file that was opened, with no copy and no path race; ``ping`` checks the daemon answers.
"""

from __future__ import annotations

import array
import socket

FOUND_SUFFIX = " FOUND"


class ClamdError(Exception):
    """No answer, or an ERROR line, from the daemon."""


def _ask(path: str, payload: bytes, fds: list[int] | None = None, timeout: float = 30.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(payload)
            if fds is not None:
                s.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
            out = b""
            while not out.endswith(b"\0"):
                data = s.recv(4096)
                if not data:
                    break
                out += data
        except OSError as exc:
            raise ClamdError(f"{path}: {exc}") from None
    return out.rstrip(b"\0").decode("utf-8", "replace")


def ping(path: str, timeout: float = 5.0) -> bool:
    try:
        return _ask(path, b"zPING\0", timeout=timeout) == "PONG"
    except ClamdError:
        return False


def scan_fd(path: str, fd: int, timeout: float = 30.0) -> list[str]:
    """The signature names the daemon reports for the open file ``fd`` (empty: clean)."""
    reply = _ask(path, b"zFILDES\0", [fd], timeout)
    if reply.endswith(" ERROR") or ": " not in reply:
        raise ClamdError(reply or "no reply")
    verdict = reply.split(": ", 1)[1]
    if verdict == "OK":
        return []
    if verdict.endswith(FOUND_SUFFIX):
        return [verdict[: -len(FOUND_SUFFIX)]]
    raise ClamdError(reply)


def peer_pid(path: str) -> int | None:
    """The pid of the process that listens on the socket (SO_PEERCRED): the daemon, or the supervisor
    of its worker processes."""
    import struct

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid or None
