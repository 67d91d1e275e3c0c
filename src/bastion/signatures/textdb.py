"""What every ClamAV text database shares: line splitting, comments, FL gating, ignores, names."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from bastion import FUNCTIONALITY_LEVEL
from bastion.signatures.errors import SignatureError

UNOFFICIAL = ".UNOFFICIAL"


def iter_signature_lines(path: str, data: bytes) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for every non-comment line.

    As in ClamAV: trailing CR/LF is stripped, ``#`` lines are comments, a blank line is malformed,
    and a file without any line is an error.
    """
    if not data:
        raise SignatureError(path, 0, "empty database file")
    # one line at a time: splitting a 60 MiB hash list at once held a string per line (~150 MiB more
    # at the compile's peak, measured on the benchmark database), where a line alive at a time is enough
    end = len(data)
    if data.endswith(b"\n"):
        end -= 1
    start, number = 0, 0
    while start <= end:
        stop = data.find(b"\n", start, end)
        if stop < 0:
            stop = end
        number += 1
        line = data[start:stop].decode("latin-1")
        start = stop + 1
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            raise SignatureError(path, number, "empty line")
        if line[0] == "#":
            continue
        yield number, line


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
