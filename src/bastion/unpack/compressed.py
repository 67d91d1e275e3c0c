"""Single-stream compression layers: gzip, bzip2, xz/lzma (Python's zlib, bz2 and lzma modules).

Each yields one child, the decompressed stream, read in bounded steps: output stops at
``max_filesize + 1`` bytes (then :class:`LimitExceeded` "max-filesize") and at ``max_ratio`` times the
compressed size (then "max-ratio"), so a decompression bomb costs at most that much memory and time.
A truncated or corrupt stream yields what decompressed cleanly and a "broken" notice.

As in clamscan 1.4.6, a compression layer does not count as a level of recursion (clam.tar.gz is
found with ``--max-recursion=2`` but not 1; tests/test_unpack.py).
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

STEP = 256 * 1024


def _member_name(data: bytes | memoryview, container_path: str, suffixes: tuple[str, ...]) -> str:
    """gzip's stored file name, else the container's name without its compression suffix."""
    head = bytes(data[:1024])
    if head[:2] == b"\x1f\x8b" and len(head) > 10 and head[3] & 0x08:
        start = 10
        if head[3] & 0x04 and len(head) > 12:
            start += 2 + int.from_bytes(head[10:12], "little")
        end = head.find(b"\0", start)
        if end > start:
            return head[start:end].decode("latin-1").replace("/", "_")
    last = container_path.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
    for suffix in suffixes:
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            return last[: -len(suffix)]
    return "data"


class _Stream:
    """One compressed stream in, its decompressed bytes out, in bounded steps."""

    handles: frozenset[str] = frozenset()
    counts_as_level = False
    suffixes: tuple[str, ...] = ()

    def _decompressor(self) -> object:
        raise NotImplementedError

    @staticmethod
    def _pump(dec: object, chunk: memoryview | bytes, room: int) -> tuple[bytes, bool]:
        """Decompress ``chunk`` giving at most ``room`` bytes; returns (output, more output pending)."""
        if hasattr(dec, "unconsumed_tail"):  # zlib
            out = dec.decompress(chunk, room) if room else b""  # type: ignore[attr-defined]
            return out, bool(dec.unconsumed_tail) and not dec.eof  # type: ignore[attr-defined]
        out = dec.decompress(chunk, room)  # type: ignore[attr-defined]
        return out, not dec.eof and not dec.needs_input  # type: ignore[attr-defined]

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        cap = limits.max_filesize
        ratio_cap = limits.growth_cap(len(data))
        out = bytearray()
        view = memoryview(data)
        problem: LimitExceeded | None = None
        dec = self._decompressor()
        pos = 0
        try:
            while not getattr(dec, "eof", False) and problem is None:
                if pos >= len(view):
                    problem = LimitExceeded("broken", "truncated compressed stream")
                    break
                chunk: memoryview | bytes = view[pos:pos + STEP]
                pos += len(chunk)
                while True:
                    piece, pending = self._pump(dec, chunk, cap + 1 - len(out))
                    out += piece
                    problem = limits.growth_problem("decompressed data", len(out), ratio_cap)
                    if problem is not None:
                        break
                    if not pending:
                        break
                    chunk = getattr(dec, "unconsumed_tail", b"")
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
            problem = LimitExceeded("broken", f"corrupt compressed stream: {exc}")
        name = _member_name(data, container_path, self.suffixes)
        if (problem is None or problem.limit == "broken") and out:
            yield ChildObject(bytes(out), name, f"{container_path}!{name}")
        if problem is not None:
            yield problem


def gzip_body_offset(head: bytes) -> int:
    """Where the deflate data of a gzip member starts (after its optional fields), or -1."""
    if len(head) < 10 or head[:3] != b"\x1f\x8b\x08":
        return -1
    flags = head[3]
    pos = 10
    if flags & 0x04:  # FEXTRA
        if len(head) < pos + 2:
            return -1
        pos += 2 + int.from_bytes(head[pos:pos + 2], "little")
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = head.find(b"\0", pos)
            if end < 0:
                return -1
            pos = end + 1
    if flags & 0x02:  # FHCRC
        pos += 2
    return pos if pos <= len(head) else -1


class GzipUnpacker(_Stream):
    """gzip, read as raw deflate after its header: like clamscan, a wrong CRC or length in the
    trailer (or a missing trailer) does not hide the data."""

    handles = frozenset({"CL_TYPE_GZ"})
    suffixes = (".gz", ".tgz", ".z")

    def _decompressor(self) -> object:
        return zlib.decompressobj(-zlib.MAX_WBITS)

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        start = gzip_body_offset(bytes(data[:65536]))
        if start < 0:
            yield LimitExceeded("broken", "not a gzip header")
            return
        for item in super().children(memoryview(data)[start:], container_path, limits):
            if isinstance(item, ChildObject):
                name = _member_name(data, container_path, self.suffixes)
                item = ChildObject(item.data, name, f"{container_path}!{name}")
            yield item


class Bzip2Unpacker(_Stream):
    handles = frozenset({"CL_TYPE_BZ"})
    suffixes = (".bz2", ".tbz2", ".tbz")

    def _decompressor(self) -> object:
        return bz2.BZ2Decompressor()


class XzUnpacker(_Stream):
    handles = frozenset({"CL_TYPE_XZ"})
    suffixes = (".xz", ".txz", ".lzma")

    def _decompressor(self) -> object:
        return lzma.LZMADecompressor()


for _plugin in (GzipUnpacker(), Bzip2Unpacker(), XzUnpacker()):
    register(_plugin)
