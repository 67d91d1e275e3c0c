"""What every ClamAV text database shares: line splitting, comments, FL gating, ignores, names."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from bastion import FUNCTIONALITY_LEVEL
from bastion.signatures.errors import SignatureError

UNOFFICIAL = ".UNOFFICIAL"


# text is split into lines a chunk at a time: splitting a 60 MiB hash list at once held a string per
# line (~150 MiB more at the compile's peak, measured on the benchmark database)
_LINE_CHUNK = 1 << 20


def physical_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Every line of the text the chunks make up, as ClamAV reads a database: split at LF, a
    trailing CR stripped, a final LF ending the last line (not starting an empty one)."""
    carry = b""
    for chunk in chunks:
        if not chunk:
            continue
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith(b"\r") else line
    if carry:
        yield carry[:-1] if carry.endswith(b"\r") else carry


def chunks_of(data: bytes, size: int = _LINE_CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


@dataclass(slots=True)
class ChangedLines:
    """Stands in for a source's text when only some of its lines are to be parsed (a layer compiled
    on top of the source's previous version: database/delta.py): those lines, on their own line
    numbers, in order.  Parsers read it through :func:`iter_signature_lines` like the text itself."""

    lines: list[tuple[int, bytes]] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(line) + 1 for _n, line in self.lines)


def numbered_lines(data: bytes | ChangedLines) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every physical line of ``data`` (of a :class:`ChangedLines`, its lines)."""
    if isinstance(data, ChangedLines):
        return iter(data.lines)
    return enumerate(physical_lines(chunks_of(data)), start=1)


def iter_signature_lines(path: str, data: bytes | ChangedLines) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for every non-comment line.

    As in ClamAV: trailing CR/LF is stripped, ``#`` lines are comments, a blank line is malformed,
    and a file without any line is an error.
    """
    if not isinstance(data, ChangedLines) and not data:
        raise SignatureError(path, 0, "empty database file")
    for number, raw in numbered_lines(data):
        if not raw:
            raise SignatureError(path, number, "empty line")
        if raw[0] != 0x23:  # '#': a comment
            yield number, raw.decode("latin-1")


def line_digest(line: bytes) -> bytes:
    """What identifies a signature line in a compiled database's line table (database/linetable.py)."""
    return hashlib.blake2b(line, digest_size=8).digest()


def line_records(data: bytes | ChangedLines) -> bytearray:
    """12 bytes a signature line (digest, line number big-endian), in line order: the line table of
    a source is built from these (database/linetable.py)."""
    out = bytearray()
    for number, line in numbered_lines(data):
        if line[:1] != b"#":
            out += line_digest(line)
            out += number.to_bytes(4, "big")
    return out


def flevel_field(path: str, number: int, text: str, what: str) -> int:
    """A min/max functionality-level field; empty counts as 0 (so an empty max never loads)."""
    if text == "":
        return 0
    if not text.isdigit():
        raise SignatureError(path, number, f"bad {what} functionality level {text!r}")
    return int(text)


def flevel_allows(minimum: int, maximum: int | None) -> bool:
    """``min <= FL <= max``, max inclusive; ``maximum`` None means the field was absent."""
    if minimum > FUNCTIONALITY_LEVEL:
        return False
    return maximum is None or maximum >= FUNCTIONALITY_LEVEL


def flevel_fields_allow(path: str, number: int, fields: list[str], first: int) -> bool:
    """The optional ``minFL[:maxFL]`` fields at ``fields[first:]`` of a line, parsed (bad ones raise
    :class:`SignatureError` naming the line) and held against Bastion's functionality level."""
    minimum = flevel_field(path, number, fields[first], "minimum") if len(fields) > first else 0
    maximum = flevel_field(path, number, fields[first + 1], "maximum") if len(fields) > first + 1 else None
    return flevel_allows(minimum, maximum)


def is_ignored(ignores: dict[str, set[str]], name: str, line: str) -> bool:
    """``.ign``/``.ign2``: exact bare name, optionally only while md5(full DB line) matches."""
    wanted = ignores.get(name)
    if not wanted:
        return False
    if "" in wanted:
        return True
    return hashlib.md5(line.encode("latin-1"), usedforsecurity=False).hexdigest() in wanted


def printed_name(name: str, official: bool) -> str:
    """The name as alerts show it: ClamAV suffixes names from unofficial sources."""
    return name if official else name + UNOFFICIAL
