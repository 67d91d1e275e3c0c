"""ClamAV ``.cdiff`` incremental updates: reading and verifying a cdiff, and running its script.

A cdiff ``<db>-<version>.cdiff`` is ``ClamAV-Diff:<version>:<script length>:`` + gzip(script) + ``:`` +
a signature (ClamAV's legacy base-64 text, at most 350 characters) over the SHA-256 of everything
before that last ``:``: RSASSA-PSS with ClamAV's cdiff key (:data:`bastion.signatures.cvd.CDIFF_KEY`).
The signature is checked before anything is decompressed, and the script is decompressed with a cap.

The script edits the unpacked container (``COPYING``, ``<db>.info``, the database files) in a
folder, one command a line (``#`` lines are comments)::

    OPEN name                       start editing one file (one at a time)
    ADD line                        append ``line`` (everything after the first space) at CLOSE
    DEL n prefix                    drop original line n, which must start with prefix
    XCHG n prefix new line          replace original line n (must start with prefix) by ``new line``
    CLOSE                           write the edits: DEL/XCHG in one pass, then the ADDs
    MOVE src dst n1 p1 n2 p2        move lines n1..n2 (starting with p1, p2) of src to the end of dst
    UNLINK name                     delete a file (none open)

Behaviour follows ClamAV 1.4's (checked against ``sigtool --run-cdiff`` in tests/test_cdiff.py): line
numbers are the original file's; a later DEL/XCHG of the same line replaces an earlier one; ADD
creates a missing file; editing a file whose last line has no newline fails; names are ASCII
letters, digits and dots only.  Stricter than ClamAV, on purpose: a script that ends with a file
still open, a blank line, ``ADD`` with nothing after it, or names ``.``/``..`` are refused (ClamAV
drops the pending edits or aborts), so a damaged script is never half-applied silently.  Any
failure raises :class:`CdiffError`; the caller then throws the work folder away.
"""

from __future__ import annotations

import os
import re
import tempfile
import zlib
from dataclasses import dataclass

from bastion.signatures import cvd

MAX_SCRIPT_BYTES = 256 * 1024 * 1024
MAX_DSIG_CHARS = 350
_NAME = re.compile(r"[A-Za-z0-9.]+")
_HEADER = re.compile(rb"ClamAV-Diff:(\d{1,10}):(\d{1,10}):")


class CdiffError(ValueError):
    """A cdiff refused (bad header, signature, version) or a script that cannot be applied."""


@dataclass(frozen=True, slots=True)
class Cdiff:
    """A verified cdiff: the database version it produces and its update script (raw bytes)."""

    version: int
    script: bytes


def read_cdiff(data: bytes, expected_version: int | None = None, key: cvd.PublicKey | None = None) -> Cdiff:
    """Verify a ``.cdiff`` (signature, then the version it claims) and return its script."""
    key = key or cvd.CDIFF_KEY
    header = _HEADER.match(data)
    if header is None:
        raise CdiffError("not a cdiff (no ClamAV-Diff:<version>:<length>: header)")
    end = data.rfind(b":")
    dsig = data[end + 1:]
    if end < header.end() or not dsig or len(dsig) > MAX_DSIG_CHARS:
        raise CdiffError("no digital signature at the end (truncated?)")
    try:
        if not cvd.verify_pss_signature(data[:end], dsig.decode("ascii"), key):
            raise CdiffError("digital signature does not verify with ClamAV's cdiff key")
    except (UnicodeDecodeError, cvd.ContainerError):
        raise CdiffError("digital signature is not in ClamAV's format") from None
    version, length = int(header.group(1)), int(header.group(2))
    if expected_version is not None and version != expected_version:
        raise CdiffError(f"claims version {version}, expected {expected_version}")
    if length > MAX_SCRIPT_BYTES:
        raise CdiffError(f"script of {length} bytes is over the {MAX_SCRIPT_BYTES}-byte limit")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        script = inflater.decompress(data[header.end():end], length + 1)
    except zlib.error as exc:
        raise CdiffError(f"compressed script is damaged: {exc}") from None
    if len(script) != length or not inflater.eof:
        raise CdiffError(f"script is not the {length} bytes its header says")
    return Cdiff(version, script)


@dataclass
class _Open:
    """The file being edited: DEL/XCHG by original line number (the last edit of a line wins), ADDs."""

    name: str
    edits: dict[int, tuple[str, bytes, bytes]]  # line -> ("DEL"|"XCHG", prefix, new line)
    adds: list[bytes]


def apply_script(script: bytes, folder: str) -> None:
    """Run an update script on the files in ``folder``; :class:`CdiffError` (with the script line)
    when a command is unknown, malformed or does not match the files."""
    current: _Open | None = None
    lines = script.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # after the final newline
    for number, raw in enumerate(lines, 1):
        if raw.startswith(b"#"):
            continue
        try:
            current = _command(raw, current, folder)
        except CdiffError as exc:
            raise CdiffError(f"script line {number} ({_show(raw)}): {exc}") from None
        except OSError as exc:
            raise CdiffError(f"script line {number} ({_show(raw)}): {exc.strerror or exc}") from None
    if current is not None:
        raise CdiffError(f"script ends with {current.name} still open (no CLOSE)")


def _show(raw: bytes) -> str:
    text = raw.decode("latin-1")
    return text if len(text) <= 60 else text[:57] + "..."


def _command(raw: bytes, current: _Open | None, folder: str) -> _Open | None:
    """One script line; returns the file open after it."""
    match = re.search(rb"\s", raw)
    cmd, data = (raw[:match.start()], raw[match.end():]) if match else (raw, None)
    if cmd == b"OPEN":
        if current is not None:
            raise CdiffError(f"{current.name} is still open")
        return _Open(_name(data), {}, [])
    if cmd in (b"ADD", b"DEL", b"XCHG", b"CLOSE") and current is None:
        raise CdiffError(f"{cmd.decode()} with no file open")
    if cmd in (b"MOVE", b"UNLINK") and current is not None:
        raise CdiffError(f"{current.name} is still open")
    if cmd == b"ADD" and current is not None:
        if data is None:
            raise CdiffError("ADD without a line")
        current.adds.append(data)
    elif cmd == b"DEL" and current is not None:
        fields = (data or b"").split()
        if len(fields) < 2:
            raise CdiffError("DEL needs a line number and the line's beginning")
        current.edits[_number(fields[0])] = ("DEL", fields[1], b"")
    elif cmd == b"XCHG" and current is not None:
        fields = re.split(rb"\s", data or b"", maxsplit=2)
        if len(fields) < 3:
            raise CdiffError("XCHG needs a line number, the line's beginning and the new line")
        current.edits[_number(fields[0])] = ("XCHG", fields[1], fields[2])
    elif cmd == b"CLOSE" and current is not None:
        _close(current, folder)
        return None
    elif cmd == b"MOVE":
        fields = (data or b"").split()
        if len(fields) < 6:
            raise CdiffError("MOVE needs src dst start prefix end prefix")
        _move(folder, _name(fields[0]), _name(fields[1]), _number(fields[2]), fields[3], _number(fields[4]),
              fields[5])
    elif cmd == b"UNLINK":
        os.unlink(os.path.join(folder, _name(data)))
    else:
        raise CdiffError(f"unknown command {_show(cmd)!r}")
    return current


def _name(data: bytes | None) -> str:
    text = (data or b"").decode("latin-1")
    if not _NAME.fullmatch(text) or set(text) == {"."}:
        raise CdiffError(f"bad database file name {text!r} (letters, digits and dots only)")
    return text


def _number(field: bytes) -> int:
    if not field.isdigit() or len(field) > 12:
        raise CdiffError(f"bad line number {field.decode('latin-1')!r}")
    return int(field)


def _lines(path: str) -> tuple[list[bytes], bool]:
    """A file's lines without their newlines, and whether its last line ended with one."""
    with open(path, "rb") as fh:
        data = fh.read()
    return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"), data.endswith(b"\n") or not data


def _replace(folder: str, name: str, lines: list[bytes]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".cdiff-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            for line in lines:
                fh.write(line + b"\n")
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _close(current: _Open, folder: str) -> None:
    path = os.path.join(folder, current.name)
    if current.edits:
        lines, final_newline = _lines(path)
        if not final_newline:
            raise CdiffError(f"{current.name} has no final newline")
        out = []
        for number, line in enumerate(lines, 1):
            edit = current.edits.pop(number, None)
            if edit is None:
                out.append(line)
                continue
            kind, prefix, new = edit
            if not line.startswith(prefix):
                raise CdiffError(f"{kind} {current.name} line {number} does not start with {_show(prefix)!r}")
            if kind == "XCHG":
                out.append(new)
        if current.edits:
            missing = ", ".join(str(n) for n in sorted(current.edits))
            raise CdiffError(f"{current.name} has no line {missing}")
        _replace(folder, current.name, out)
    if current.adds:
        with open(path, "ab") as fh:
            for line in current.adds:
                fh.write(line + b"\n")


def _move(folder: str, src: str, dst: str, start: int, start_prefix: bytes, end: int, end_prefix: bytes) -> None:
    if not os.path.isfile(os.path.join(folder, dst)):
        raise CdiffError(f"MOVE into {dst}, which does not exist")
    if src == dst:
        raise CdiffError("MOVE within one file")
    if not 0 < start < end:
        raise CdiffError(f"MOVE of lines {start}..{end}: the first must be before the last")
    lines, _ = _lines(os.path.join(folder, src))
    if end > len(lines):
        raise CdiffError(f"{src} has no line {end}")
    if not lines[start - 1].startswith(start_prefix) or not lines[end - 1].startswith(end_prefix):
        raise CdiffError(f"MOVE {src} lines {start}..{end} do not start as the script says")
    moved = lines[start - 1:end]
    _replace(folder, src, lines[:start - 1] + lines[end:])
    with open(os.path.join(folder, dst), "ab") as fh:
        for line in moved:
            fh.write(line + b"\n")
