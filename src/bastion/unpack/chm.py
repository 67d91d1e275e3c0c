"""CHM (Microsoft Compiled HTML Help, ``ITSF``): the files it holds, as clamscan scans them.

Layout (all integers little-endian):

* ITSF header: version (2 or 3), the offset and length of the directory (at 0x48, 0x50, 64-bit)
  and, in version 3, the offset of content section 0 (at 0x58; in version 2 it follows the
  directory).
* Directory: an ITSP header (its length at 8, the chunk size at 0x10, the first and last listing
  chunk at 0x20 and 0x24, the number of chunks at 0x2C), then the chunks.  A PMGL listing chunk
  holds, from 0x14 up to its free space (counted at 4 from the chunk's end), entries of: ENCINT
  name length, UTF-8 name, ENCINT section, ENCINT offset, ENCINT length.  ENCINT is 7 bits a byte,
  most significant first, the high bit set on every byte but the last.
* Section 0 holds its files uncompressed at the content offset plus their offset.  Section 1
  (MSCompressed) is the LZX stream stored as the section-0 file
  ``::DataSpace/Storage/MSCompressed/Content``; its ``ControlData`` (``LZXC``, version, reset
  interval, window size; in version 2 both in units of 32 KiB) and its ``ResetTable`` (version,
  entry count, entry size, table offset, uncompressed length, compressed length, block length,
  then the compressed offset of every 32 KiB frame) say how to decode it.  Files of section 1 are
  at their offset in the decoded stream.

Members are named by their path in the CHM (``/clam.exe.txt``), as clamscan's debug output shows
them (``CDBNAME:CL_TYPE_MSCHM:...``); like clamscan (libmspack), the files whose name starts with
``::`` (the storage's own metadata) and directory entries are not scanned.  Listing chunks are read
in order from the first to the last, never by following their links, so a linked loop cannot hang
the reader.  Section 1 is decoded lazily, only as far as the members read so far need.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register
from bastion.unpack.lzx import FRAME, LzxError, decode

MAGIC = b"ITSF"
CONTENT = "::DataSpace/Storage/MSCompressed/Content"
CONTROL = "::DataSpace/Storage/MSCompressed/ControlData"
SPANINFO = "::DataSpace/Storage/MSCompressed/SpanInfo"
RESET_TABLE = ("::DataSpace/Storage/MSCompressed/Transform/{7FC28940-9D31-11D0-9B27-00A0C91E9C7C}/"
               "InstanceData/ResetTable")
_SECTION1_FILES = frozenset({CONTENT, CONTROL, SPANINFO, RESET_TABLE})
# Bounds on the directory: larger values are treated as damage, not read
MAX_CHUNK_SIZE = 1 << 20
MAX_DIRECTORY = 64 << 20


class ChmError(ValueError):
    """The CHM's headers or directory are damaged."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry: the file's path, its section (0 stored, 1 LZX) and where it lies in it."""

    name: str
    section: int
    offset: int
    length: int


def _u32(data: bytes, pos: int) -> int:
    if pos + 4 > len(data):
        raise ChmError("header is truncated")
    return int.from_bytes(data[pos:pos + 4], "little")


def _u64(data: bytes, pos: int) -> int:
    if pos + 8 > len(data):
        raise ChmError("header is truncated")
    return int.from_bytes(data[pos:pos + 8], "little")


def _encint(chunk: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for _ in range(9):  # 63 bits at most
        if pos >= end:
            raise ChmError("directory entry is truncated")
        b = chunk[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos
    raise ChmError("directory entry has an over-long number")


def read_directory(data: bytes, max_members: int = 1 << 62) -> tuple[list[Entry], int, list[str]]:
    """The entries of every listing chunk, in order, the offset of content section 0, and the
    problems met (a damaged chunk is skipped, the others are still read).  Kept: the ``::`` entries
    section 1 needs and at most ``max_members`` of the entries clamscan scans (memory stays bounded
    however many a directory lists)."""
    if not data.startswith(MAGIC):
        raise ChmError("not an ITSF file")
    version = _u32(data, 4)
    header_len = _u32(data, 8)
    dir_off, dir_len = _u64(data, 0x48), _u64(data, 0x50)
    content_off = _u64(data, 0x58) if version >= 3 and header_len >= 0x60 else dir_off + dir_len
    if dir_off + 0x54 > len(data):
        raise ChmError("directory lies beyond the end of the file")
    if data[dir_off:dir_off + 4] != b"ITSP":
        raise ChmError("no ITSP directory header")
    itsp_len = _u32(data, dir_off + 8)
    chunk_size = _u32(data, dir_off + 0x10)
    first, last = _u32(data, dir_off + 0x20), _u32(data, dir_off + 0x24)
    count = _u32(data, dir_off + 0x2C)
    if not 0x20 <= chunk_size <= MAX_CHUNK_SIZE or chunk_size * count > MAX_DIRECTORY:
        raise ChmError(f"implausible directory (chunk size {chunk_size}, {count} chunks)")
    problems: list[str] = []
    if first > last or last >= count:
        problems.append(f"listing chunks {first}..{last} out of 0..{count - 1}")
        if first >= count:
            return [], content_off, problems
        last = min(max(first, last), count - 1)
    entries: list[Entry] = []
    kept = 0
    start = dir_off + itsp_len
    for number in range(first, last + 1):
        chunk = data[start + number * chunk_size:start + (number + 1) * chunk_size]
        if len(chunk) < chunk_size:
            problems.append(f"listing chunk {number} is truncated")
            break
        if not chunk.startswith(b"PMGL"):
            continue  # an index chunk (PMGI), or damage: nothing to list
        end = chunk_size - int.from_bytes(chunk[4:8], "little")
        pos = 0x14
        try:
            while pos < end:
                name_len, pos = _encint(chunk, pos, end)
                if name_len == 0 or pos + name_len > end:
                    raise ChmError("directory entry name is truncated")
                name = chunk[pos:pos + name_len].decode("utf-8", "replace")
                pos += name_len
                section, pos = _encint(chunk, pos, end)
                offset, pos = _encint(chunk, pos, end)
                length, pos = _encint(chunk, pos, end)
                entry = Entry(name, section, offset, length)
                if name in _SECTION1_FILES or (scanned(entry) and kept < max_members):
                    kept += not name.startswith("::")
                    entries.append(entry)
        except ChmError as exc:
            problems.append(f"listing chunk {number}: {exc}")
    return entries, content_off, problems


def scanned(entry: Entry) -> bool:
    """Whether clamscan scans this entry: not the storage's ``::`` files, not directories."""
    if entry.name.startswith("::"):
        return False
    return not (entry.offset == 0 and entry.length == 0 and entry.name.endswith("/"))


class _Section1:
    """Section 1 decoded on demand: ``out`` holds the stream decoded so far, ``frames`` yields the
    rest; ``problem`` is set once decoding failed (what was decoded before stays usable)."""

    def __init__(self, compressed: bytes, window_bits: int, reset_frames: int, length: int) -> None:
        self.out = bytearray()
        self.frames: Iterator[bytes] | None = decode(compressed, window_bits, length, reset_frames)
        self.problem = ""

    def upto(self, end: int) -> bool:
        """Decode until ``end`` bytes are available; False if the stream fails or ends first."""
        while len(self.out) < end and self.frames is not None:
            try:
                self.out += next(self.frames)
            except StopIteration:
                self.frames = None
            except LzxError as exc:
                self.problem = f"MSCompressed section: {exc} (after {len(self.out)} bytes)"
                self.frames = None
        return len(self.out) >= end


def _control(entries: dict[str, Entry], stored: bytes) -> tuple[int, int]:
    """Window bits and reset interval in frames from ControlData."""
    ctl = entries.get(CONTROL)
    if ctl is None or ctl.section != 0:
        raise ChmError("no ControlData for the MSCompressed section")
    raw = stored[ctl.offset:ctl.offset + ctl.length]
    if len(raw) < 0x18 or raw[4:8] != b"LZXC":
        raise ChmError("ControlData is not LZXC")
    version, reset, window = _u32(raw, 8), _u32(raw, 12), _u32(raw, 16)
    if version == 2:
        reset, window = reset * FRAME, window * FRAME
    if window not in {1 << b for b in range(15, 22)}:
        raise ChmError(f"LZX window size {window} is not 2^15..2^21")
    if reset % FRAME:
        raise ChmError(f"LZX reset interval {reset} is not a multiple of 32 KiB")
    return window.bit_length() - 1, reset // FRAME


def _declared_length(entries: dict[str, Entry], stored: bytes, content_len: int) -> tuple[int | None, str]:
    """The decoded length the ResetTable (or SpanInfo) declares, and a problem with the table."""
    table = entries.get(RESET_TABLE)
    if table is not None and table.section == 0:
        raw = stored[table.offset:table.offset + table.length]
        if len(raw) < 0x28:
            return None, "ResetTable is truncated"
        count, size, at = _u32(raw, 4), _u32(raw, 8), _u32(raw, 12)
        length = _u64(raw, 0x10)
        if size != 8 or at + count * size > len(raw):
            return length, "ResetTable entries lie outside it"
        offsets = [_u64(raw, at + 8 * i) for i in range(count)]
        if any(b < a for a, b in zip(offsets, offsets[1:], strict=False)) or (offsets and offsets[-1] > content_len):
            return length, "ResetTable points outside the compressed data"
        return length, ""
    span = entries.get(SPANINFO)
    if span is not None and span.section == 0 and span.length >= 8:
        return _u64(stored[span.offset:span.offset + 8].ljust(8, b"\0"), 0), ""
    return None, ""


class ChmUnpacker:
    handles = frozenset({"CL_TYPE_MSCHM"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = bytes(data)
        try:
            # one member more than max-files: enough to report that the limit was reached
            entries, content_off, problems = read_directory(raw, limits.max_files + 1)
        except ChmError as exc:
            yield LimitExceeded("broken", f"CHM: {exc}")
            return
        for problem in problems:
            yield LimitExceeded("broken", f"CHM: {problem}")
        stored = raw[content_off:] if content_off < len(raw) else b""
        by_name = {e.name: e for e in entries}
        section1: _Section1 | None = None
        cap = 0
        count = 0
        for entry in entries:
            if not scanned(entry):
                continue
            name = entry.name
            if entry.section > 1:
                yield LimitExceeded("broken", f"{name}: unknown CHM section {entry.section}")
                continue
            if entry.length > limits.max_filesize:
                yield LimitExceeded("max-filesize", f"{name}: larger than {limits.max_filesize} bytes")
                continue
            count += 1
            if count > limits.max_files:
                yield LimitExceeded("max-files", f"more than {limits.max_files} CHM members")
                return
            end = entry.offset + entry.length
            if entry.section == 0:
                if end > len(stored):
                    yield LimitExceeded("broken", f"{name}: lies beyond the end of the CHM")
                    continue
                body = stored[entry.offset:end]
            else:
                if section1 is None:
                    try:
                        section1, cap, problem = self._open_section1(by_name, stored, limits)
                    except ChmError as exc:
                        yield LimitExceeded("broken", f"CHM: {exc}")
                        section1, cap = _Section1(b"", 15, 0, 0), 0
                        section1.frames = None
                        problem = ""
                    if problem:
                        yield LimitExceeded("broken", f"CHM: {problem}")
                if end > cap:
                    kind = "max-ratio" if cap < limits.max_scansize else "max-scansize"
                    yield LimitExceeded(kind, f"{name}: beyond the {cap} bytes the MSCompressed section may decode to")
                    continue
                if not section1.upto(end):
                    if section1.problem:
                        yield LimitExceeded("broken", f"CHM: {section1.problem}")
                        section1.problem = ""
                    else:
                        yield LimitExceeded("broken", f"{name}: beyond the end of the MSCompressed section")
                    continue
                body = bytes(section1.out[entry.offset:end])
            yield ChildObject(body, name, f"{container_path}!{name}")

    @staticmethod
    def _open_section1(by_name: dict[str, Entry], stored: bytes,
                       limits: UnpackLimits) -> tuple[_Section1, int, str]:
        """The lazy decoder for section 1, the most it may decode to, and a problem to report."""
        content = by_name.get(CONTENT)
        if content is None or content.section != 0:
            raise ChmError("no Content for the MSCompressed section")
        compressed = stored[content.offset:content.offset + content.length]
        problem = "" if len(compressed) == content.length else "MSCompressed content is truncated"
        window_bits, reset_frames = _control(by_name, stored)
        declared, table_problem = _declared_length(by_name, stored, len(compressed))
        problem = problem or table_problem
        cap = min(limits.growth_cap(len(compressed)), limits.max_scansize)
        needed = max((e.offset + e.length for e in by_name.values()
                      if e.section == 1 and scanned(e) and e.length <= limits.max_filesize), default=0)
        length = min(needed, cap) if declared is None else min(needed, cap, declared)
        return _Section1(compressed, window_bits, reset_frames, length), cap, problem


register(ChmUnpacker())
