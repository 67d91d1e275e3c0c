"""Zip members in the methods libarchive cannot decode: implode (6) and deflate64 (9).

libarchive reads every zip (unpack/libarchive_reader.py); when it reports a member's method as
unsupported, the reader asks :class:`ZipFallback` for that member.  This module finds it in the
central directory (APPNOTE.TXT 4.3.12-4.3.16, zip64 extra field 4.5.3), or by walking the local
headers (4.3.7) when a truncated zip has none, and decodes it: implode with Bastion's own decoder
(unpack/implode.py), deflate64 with the ``inflate64`` package (LGPL-2.1-or-later, zlib's infback9
made into a Python module; it runs only in the sandboxed unpacker process, like libarchive).

Limits hold while decoding: a member never grows past ``max_filesize`` or its ratio cap (the
decoders are told the cap; deflate64 is fed its input in small pieces, as ``Inflater.inflate`` has
no output bound).  Damage is reported ("broken"), with what decoded before it still scanned.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, checked_member
from bastion.unpack.implode import Damaged, explode

IMPLODE = 6
DEFLATE64 = 9
METHODS = frozenset({IMPLODE, DEFLATE64})
_EOCD = b"PK\x05\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
# deflate64 input per Inflater.inflate call: one call can produce at most ~16,000 times its input
# (a 65,538-byte match costs about 32 bits), so 256 bytes in keeps each step under 5 MB out
_D64_STEP = 256


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One central directory record: the member's name and what is needed to find and decode its
    data (``header_offset`` is where its local header starts in the data as given)."""

    name: str
    flags: int
    method: int
    crc: int
    packed_size: int
    size: int
    header_offset: int


def _zip64_sizes(extra: bytes, size: int, packed: int, offset: int) -> tuple[int, int, int]:
    """The 64-bit values of the zip64 extra field (0x0001) for the fields that are 0xFFFFFFFF."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + length]
        if tag == 1:
            values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            wanted = [size == 0xFFFFFFFF, packed == 0xFFFFFFFF, offset == 0xFFFFFFFF]
            out = [size, packed, offset]
            for i, want in enumerate(wanted):
                if want and values:
                    out[i] = values.pop(0)
            return out[0], out[1], out[2]
        pos += 4 + length
    return size, packed, offset


def central_directory(data: bytes) -> list[ZipEntry]:
    """Every record of the central directory; raises ``ValueError`` when there is none to read."""
    at = data.rfind(_EOCD, max(0, len(data) - 65557))
    if at < 0 or at + 22 > len(data):
        raise ValueError("no end of central directory record")
    count, cd_size, cd_offset = struct.unpack_from("<HII", data, at + 10)
    # bytes before the archive (a self-extractor's stub) shift every offset by the same amount
    bias = max(0, at - cd_size - cd_offset)
    pos = cd_offset + bias
    entries: list[ZipEntry] = []
    while data[pos:pos + 4] == _CENTRAL and pos + 46 <= len(data):
        (flags, method, crc, packed, size, name_len, extra_len, comment_len,
         offset) = struct.unpack_from("<2H4x3I3H8xI", data, pos + 8)
        raw_name = data[pos + 46:pos + 46 + name_len]
        extra = data[pos + 46 + name_len:pos + 46 + name_len + extra_len]
        size, packed, offset = _zip64_sizes(extra, size, packed, offset)
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        entries.append(ZipEntry(name, flags, method, crc, packed, size, offset + bias))
        pos += 46 + name_len + extra_len + comment_len
        if len(entries) >= max(count, 1) and count != 0xFFFF:
            break
    return entries


def local_headers(data: bytes) -> list[ZipEntry]:
    """The members found by walking local headers from the start, for a zip whose central directory
    is missing (cut short): sizes from the local header, or up to the end when they are deferred to a
    data descriptor (flag bit 3)."""
    entries: list[ZipEntry] = []
    pos = 0
    while data[pos:pos + 4] == _LOCAL and pos + 30 <= len(data):
        flags, method, crc, packed, size, name_len, extra_len = struct.unpack_from("<2H4x3I2H", data, pos + 6)
        raw_name = data[pos + 30:pos + 30 + name_len]
        extra = data[pos + 30 + name_len:pos + 30 + name_len + extra_len]
        size, packed, _ = _zip64_sizes(extra, size, packed, 0)
        start = pos + 30 + name_len + extra_len
        if flags & 8:
            packed, size = len(data) - start, 0xFFFFFFFF
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        entries.append(ZipEntry(name, flags, method, crc, packed, size, pos))
        pos = start + packed
    return entries


def _inflate64(packed: bytes, cap: int) -> tuple[bytes, str | None]:
    """Deflate64 data decoded up to ``cap`` + 1 bytes, and what went wrong, if anything."""
    try:
        import inflate64
    except ImportError as exc:
        return b"", f"deflate64 needs the inflate64 package: {exc}"
    inflater = inflate64.Inflater()
    out = bytearray()
    view = memoryview(packed)
    try:
        for i in range(0, len(view), _D64_STEP):
            out += inflater.inflate(bytes(view[i:i + _D64_STEP]))
            if len(out) > cap or inflater.eof:
                break
    except ValueError as exc:  # inflate64's report of bad data
        return bytes(out), f"deflate64 data is damaged ({exc})"
    if len(out) <= cap and not inflater.eof:
        return bytes(out), "deflate64 data is truncated"
    return bytes(out), None


def decode_member(data: bytes, entry: ZipEntry, container_path: str,
                  limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
    """The member ``entry`` of the zip ``data``, decoded within ``limits``: a child, and a report
    of what stopped or damaged it (a damaged member yields what decoded before the damage too)."""
    name = entry.name.lstrip("/") or "member"
    if entry.flags & 1:
        yield LimitExceeded("encrypted", f"{name}: encrypted")
        return
    at = entry.header_offset
    if data[at:at + 4] != _LOCAL or at + 30 > len(data):
        yield LimitExceeded("broken", f"{name}: no local header where the central directory says")
        return
    name_len, extra_len = struct.unpack_from("<HH", data, at + 26)
    start = at + 30 + name_len + extra_len
    packed = data[start:start + entry.packed_size]
    cap = min(limits.max_filesize, limits.growth_cap(len(packed)))
    want = min(entry.size, cap + 1)
    problem: str | None = None
    if entry.method == IMPLODE:
        try:
            out = explode(packed, entry.flags, want)
        except Damaged as exc:
            out, problem = exc.partial, f"imploded data is damaged ({exc})"
    else:
        out, problem = _inflate64(packed, cap)
        out = out[:want]
    if len(out) > cap:
        limit = limits.growth_problem(name, len(out), limits.growth_cap(len(packed)))
        if limit is not None:
            yield limit
            return
    if problem is None and len(packed) < entry.packed_size:
        problem = "truncated"
    yield from checked_member(out, problem, entry.size, entry.crc, name, container_path)


class ZipFallback:
    """The central directory of one zip, read once, handing out its implode/deflate64 members as
    libarchive reports them unsupported (matched by name, else in order)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        try:
            entries = central_directory(data)
        except (ValueError, struct.error):
            entries = local_headers(data)
        self.pending = [e for e in entries if e.method in METHODS]

    def take(self, name: str, method: int) -> ZipEntry | None:
        """The next undecoded member in ``method`` named ``name`` (libarchive's name for it), else
        the next one in that method (names that libarchive decoded differently)."""
        candidates = [i for i, e in enumerate(self.pending) if e.method == method]
        for i in candidates:
            if (self.pending[i].name.lstrip("/") or "member") == name:
                return self.pending.pop(i)
        return self.pending.pop(candidates[0]) if candidates else None
