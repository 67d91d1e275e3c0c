"""The clamd protocol's words: reading one command, and the reply lines clamd 1.4 writes.

Framing (clamd's ``get_cmd``/``parse_command``): ``zCMD[ arg]\\0`` (replies end in NUL),
``nCMD[ arg]\\n`` (replies end in LF), or the legacy unprefixed ``CMD[ arg][\\n]`` (LF; not accepted for
VERSIONCOMMANDS, END, STATS, IDSESSION, INSTREAM, ALLMATCHSCAN).  Names match by prefix over clamd's
table, the argument starting one byte after the name.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS_WITH_ARG = ("CONTSCAN", "MULTISCAN", "ALLMATCHSCAN", "SCAN")
COMMANDS = ("VERSIONCOMMANDS", "VERSION", "PING", "RELOAD", "SHUTDOWN", "QUIT", "INSTREAM", "FILDES", "STATS",
            "IDSESSION", "END", "DETSTATSCLEAR", "DETSTATS")
PREFIXED_ONLY = frozenset({"VERSIONCOMMANDS", "END", "STATS", "IDSESSION", "INSTREAM", "ALLMATCHSCAN"})
ADVERTISED = ("SCAN QUIT RELOAD PING CONTSCAN VERSIONCOMMANDS VERSION END SHUTDOWN MULTISCAN FILDES STATS "
              "IDSESSION INSTREAM DETSTATSCLEAR DETSTATS ALLMATCHSCAN")
MAX_COMMAND = 4104  # PATH_MAX + 8, as clamd


@dataclass(frozen=True, slots=True)
class Command:
    name: str          # "" for an unknown command
    arg: str
    terminator: bytes  # b"\0" or b"\n"
    prefixed: bool


def split_command(buf: bytes, legacy_allowed: bool = True) -> tuple[bytes, bytes, bytes, bool] | None:
    """(raw command, reply terminator, rest of the buffer, prefixed?) once a whole command is in
    ``buf``, else None.  A legacy command also ends where a read ended (``legacy_allowed``)."""
    if not buf:
        return None
    if buf[:1] == b"z":
        end = buf.find(b"\0")
        return (buf[1:end], b"\0", buf[end + 1:], True) if end >= 0 else None
    if buf[:1] == b"n":
        end = buf.find(b"\n")
        return (buf[1:end].rstrip(b"\r\n"), b"\n", buf[end + 1:], True) if end >= 0 else None
    end = buf.find(b"\n")
    if end >= 0:
        return buf[:end].rstrip(b"\r\n"), b"\n", buf[end + 1:], False
    return (buf.rstrip(b"\r\n"), b"\n", b"", False) if legacy_allowed else None


def parse(raw: bytes, terminator: bytes, prefixed: bool) -> Command:
    text = raw.decode("utf-8", "surrogateescape")
    for name in COMMANDS_WITH_ARG:
        if text.startswith(name) and len(text) > len(name) + 1:
            if name in PREFIXED_ONLY and not prefixed:
                break
            return Command(name, text[len(name) + 1:], terminator, prefixed)
    for name in COMMANDS:
        if text == name:
            if name in PREFIXED_ONLY and not prefixed:
                break
            return Command(name, "", terminator, prefixed)
    return Command("", text, terminator, prefixed)


def found(tag: str, name: str) -> str:
    return f"{tag}: {name} FOUND"


def error(tag: str, message: str) -> str:
    return f"{tag}: {message} ERROR" if tag else f"{message} ERROR"
