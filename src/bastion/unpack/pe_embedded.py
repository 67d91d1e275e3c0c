"""PE files inside a PE file, found as ClamAV 1.4 finds them: wherever its ``PE`` type signature
(``4d5a{60-300}50450000``: ``MZ``, then ``PE\\0\\0`` 60 to 300 bytes after it) starts past the
first byte, and ClamAV's PE parser accepts the headers there, the bytes from there to the end of
the file are scanned as an executable (``setup.exe!pe@6112``).  As in ClamAV, only when that rest
is at most ``MAX_EMBEDDED_PE`` bytes (clamscan's ``--max-embeddedpe`` default), and a file is looked
at only at its first ``MAX_HITS`` such places.
"""

from __future__ import annotations

from collections.abc import Iterator

from bastion.formats.executable import parse_executable
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register
from bastion.unpack.pe_installers import _as_bytes

MAX_EMBEDDED_PE = 40 * 1024 * 1024
MAX_HITS = 32
GAP_MIN, GAP_MAX = 60, 300


def embedded_offsets(data: bytes) -> Iterator[int]:
    """Offsets (> 0) where an embedded PE that ClamAV would scan starts."""
    hits = 0
    pos = data.find(b"MZ", 1)
    while pos > 0 and hits < MAX_HITS:
        if len(data) - pos <= MAX_EMBEDDED_PE:
            sig = data.find(b"PE\0\0", pos + 2 + GAP_MIN, pos + 2 + GAP_MAX + 4)
            if sig >= 0:
                info = parse_executable(memoryview(data)[pos:])
                if info is not None and info.entry_point is not None:
                    hits += 1
                    yield pos
        pos = data.find(b"MZ", pos + 1)


class EmbeddedPeUnpacker:
    handles = frozenset({"CL_TYPE_MSEXE"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = _as_bytes(data)
        for pos in embedded_offsets(raw):
            if len(raw) - pos > limits.max_filesize:
                yield LimitExceeded("max-filesize", f"{container_path}: embedded PE at {pos} larger than "
                                                    f"{limits.max_filesize} bytes")
                continue
            name = f"pe@{pos}"
            yield ChildObject(raw[pos:], name, f"{container_path}!{name}")


register(EmbeddedPeUnpacker())
