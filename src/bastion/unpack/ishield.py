"""InstallShield installers: the files a ``setup.exe`` carries, in the two layouts ClamAV reads.

**MSI-based** (``ISHIELD-MSI``): ``InstallShield\\0``, then a 32-byte header (u32 file count, then
24 zero bytes from offset 8 on), then per file a 312-byte block (its name, NUL-terminated in 260
bytes; at 264 the u64 size of its data) and the data: zlib, obfuscated byte by byte (nibbles
swapped, then XORed with the name XORed with ``EC CA 79 F8``, the key index wrapping at 1024).

**Older** installers keep their files in the executable's overlay, each as four NUL-terminated
strings (name, path, version, decimal size) and the bytes.  As in clamscan 1.4.6, the list ends
before a file whose bytes reach the end of the data (checked: clamscan does not extract it).  Files
named ``data1.hdr`` and ``data<N>.cab`` are *InstallShield cabinets*: the header (magic ``ISc(``)
lists every file with its size, compressed size, cabinet number and offset in that cabinet; a
file's data is a run of chunks, each a u16 length and a raw-deflate stream of its own.  The
cabinets' files are extracted, then the header and cabinets themselves are scanned as they are
(as ClamAV does).

Limits: ``max_files`` files, ``max_filesize`` and the ratio bound per file (a compressed size above
``max_filesize`` is skipped, as in ClamAV), every read checked against the data.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from bastion.unpack.base import LimitExceeded, UnpackLimits
from bastion.unpack.bounded import STEP, DecodeError, decompress_capped, pull, raw_deflate

MSI_MAGIC = b"InstallShield\x00"
# ClamAV's type signature for ISHIELD-MSI: the magic, 292 bytes, then these at 306 and 322
_MSI_TAIL_A = bytes.fromhex("0600000000000000")
_MSI_TAIL_B = bytes.fromhex("0000000001")
_MSI_HEADER = 32
_MSI_BLOCK = 312
_MSI_NAME = 0x104
_MSI_KEY = bytes([0xEC, 0xCA, 0x79, 0xF8])
_SWAP = bytes(((c >> 4) | (c << 4)) & 0xFF for c in range(256))
_KEY_PERIOD = 1024

CAB_MAGIC = b"ISc("
_STRING_MAX = 2048       # each overlay string must end within this many bytes (as in ClamAV)
_OBJECTS_SIZE = 0x4A     # the file table's header, past the data offset
_FILE_ITEM = 87          # one file-table entry
_FLAG_INTERNAL = 4       # the file is inside a cabinet (0: beside it on the disk)


def is_msi_at(data: bytes, pos: int) -> bool:
    """Whether ClamAV's ISHIELD-MSI type signature holds at ``pos`` (where ``MSI_MAGIC`` starts)."""
    return (data.startswith(MSI_MAGIC, pos) and data.startswith(_MSI_TAIL_A, pos + 306)
            and data.startswith(_MSI_TAIL_B, pos + 322))


def _u16(data: bytes | memoryview, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 2], "little")


def _u32(data: bytes | memoryview, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 4], "little")


def _u64(data: bytes | memoryview, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 8], "little")


def _xor(data: bytes, pattern: bytes) -> bytes:
    """``data`` XORed with ``pattern`` (at least as long)."""
    n = len(data)
    return (int.from_bytes(data, "little") ^ int.from_bytes(pattern[:n], "little")).to_bytes(n, "little")


def msi_members(data: bytes, pos: int, limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    """The files of the MSI-based InstallShield data at ``pos`` (where ``MSI_MAGIC`` starts)."""
    pos += len(MSI_MAGIC)
    header = data[pos:pos + _MSI_HEADER]
    if len(header) < _MSI_HEADER or any(header[8:]):
        return  # not the layout ClamAV reads: nothing to extract
    count = _u32(header, 0)
    pos += _MSI_HEADER
    for number in range(count):
        if number >= limits.max_files:
            yield LimitExceeded("max-files", f"InstallShield: more than {limits.max_files} files")
            return
        block = data[pos:pos + _MSI_BLOCK]
        if len(block) < _MSI_BLOCK:
            yield LimitExceeded("broken", "InstallShield: file block truncated")
            return
        pos += _MSI_BLOCK
        name_bytes = block[:_MSI_NAME - 1].split(b"\0", 1)[0]
        csize = _u64(block, 0x10C)
        if not name_bytes:
            return
        name = name_bytes.decode("latin-1")
        if pos + csize > len(data):
            yield LimitExceeded("broken", f"InstallShield {name}: data runs past the end")
            return
        start, pos = pos, pos + csize
        if csize > limits.max_filesize:
            yield LimitExceeded("max-filesize", f"InstallShield {name}: larger than {limits.max_filesize} bytes")
            continue
        yield from _msi_file(name, name_bytes, memoryview(data)[start:pos], limits)


def _msi_file(name: str, name_bytes: bytes, packed: memoryview,
              limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    key = bytes(c ^ _MSI_KEY[i & 3] for i, c in enumerate(name_bytes))
    period = bytes(key[i % len(key)] for i in range(_KEY_PERIOD))
    chunk_size = _KEY_PERIOD * 256  # a multiple of the key period, so each chunk starts at key index 0
    pattern = period * (chunk_size // _KEY_PERIOD)
    cap = min(limits.max_filesize, limits.growth_cap(len(packed)))
    dec = zlib.decompressobj()
    out = bytearray()
    try:
        for at in range(0, len(packed), chunk_size):
            clear = _xor(bytes(packed[at:at + chunk_size]).translate(_SWAP), pattern)
            for piece in pull(dec, clear, STEP, final=at + chunk_size >= len(packed)):
                out += piece
                if len(out) > cap:
                    yield limits.growth_problem(name, len(out), limits.growth_cap(len(packed))) or \
                        LimitExceeded("max-filesize", f"InstallShield {name}: larger than {limits.max_filesize}")
                    return
            if dec.eof:
                break
    except DecodeError as exc:
        yield LimitExceeded("broken", f"InstallShield {name}: {exc}")
    if out:
        yield name, bytes(out)


# ------------------------------------------------------------------------------------- overlay files
@dataclass(frozen=True, slots=True)
class _Stored:
    """One file of an installer's overlay: its name and where its bytes lie in the data."""

    name: str
    start: int
    size: int


def overlay_members(data: bytes, pos: int, limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    """The files of an older InstallShield installer whose overlay starts at ``pos``, and the files of
    its InstallShield cabinets.  Nothing when the overlay does not hold that layout."""
    header: _Stored | None = None
    cabinets: dict[int, _Stored] = {}
    count = 0
    while True:
        strings = []
        at = pos
        for _ in range(4):
            end = data.find(b"\0", at, at + _STRING_MAX)
            if end < 0:
                break
            strings.append(data[at:end])
            at = end + 1
        if len(strings) < 4:
            break
        size_text = strings[3]
        if not size_text or not size_text.isdigit() or len(size_text) > 19:
            break
        size = int(size_text)
        if at + size >= len(data):  # ClamAV stops at a file that ends at the end of the data too
            break
        count += 1
        if count > limits.max_files:
            yield LimitExceeded("max-files", f"InstallShield: more than {limits.max_files} files")
            return
        name = strings[0].decode("latin-1")
        entry = _Stored(name, at, size)
        pos = at + size
        lower = name.lower()
        if lower == "data1.hdr" and header is None:
            header = entry
            continue
        if lower.startswith("data") and lower.endswith(".cab") and lower[4:-4].isdigit():
            number = int(lower[4:-4])
            if 0 < number < 65536 and number not in cabinets:
                cabinets[number] = entry
                continue
        if size > limits.max_filesize:
            yield LimitExceeded("max-filesize", f"InstallShield {name}: larger than {limits.max_filesize} bytes")
        elif size:
            yield name, data[at:at + size]
    if header is None and not cabinets:
        return
    if header is not None and header.size and cabinets:
        yield from cabinet_files(data, header, cabinets, limits)
    for stored in ([header] if header is not None else []) + list(cabinets.values()):
        if stored.size > limits.max_filesize:
            yield LimitExceeded("max-filesize", f"InstallShield {stored.name}: larger than {limits.max_filesize} bytes")
        elif stored.size:
            yield stored.name, data[stored.start:stored.start + stored.size]


def _cstring(data: bytes, pos: int, end: int) -> str:
    """The NUL-terminated string at ``pos``, if it ends before ``end``; else empty."""
    if not 0 <= pos < end:
        return ""
    stop = data.find(b"\0", pos, end)
    return data[pos:stop].decode("latin-1") if stop >= 0 else ""


def cabinet_files(data: bytes, header: _Stored, cabinets: dict[int, _Stored],
                  limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    """The files an InstallShield cabinet header (``data1.hdr``) lists inside the cabinets."""
    base, hdr_end = header.start, header.start + header.size
    if data[base:base + 4] != CAB_MAGIC:
        yield LimitExceeded("broken", "InstallShield data1.hdr: bad magic")
        return
    data_off = _u32(data, base + 12)
    objects = base + data_off
    if data_off < 20 or objects + _OBJECTS_SIZE > hdr_end:
        yield LimitExceeded("broken", "InstallShield data1.hdr: file table out of bounds")
        return
    dirs = objects + _u32(data, objects + 0x0C)
    files_count = _u32(data, objects + 0x28)
    item = dirs + _u32(data, objects + 0x2C)
    extracted = 0
    for _ in range(files_count):
        if item + _FILE_ITEM > hdr_end or item < base:
            yield LimitExceeded("broken", "InstallShield data1.hdr: file entry out of bounds")
            return
        entry = data[item:item + _FILE_ITEM]
        item += _FILE_ITEM
        flags, size, csize, stream_off = _u16(entry, 0), _u64(entry, 2), _u64(entry, 10), _u64(entry, 18)
        if flags != _FLAG_INTERNAL or not size or entry[84] & 1:  # external, empty, or a duplicate
            continue
        file_name = _cstring(data, dirs + _u32(entry, 58), hdr_end)
        dir_slot = dirs + 4 * _u16(entry, 62)
        dir_name = _cstring(data, dirs + _u32(data, dir_slot), hdr_end) if dir_slot + 4 <= hdr_end else ""
        parts = (dir_name.replace("\\", "/").strip("/"), file_name.replace("\\", "/").strip("/"))
        name = "/".join(p for p in parts if p) or f"file{extracted}"
        if csize > limits.max_filesize:
            yield LimitExceeded("max-filesize", f"InstallShield {name}: larger than {limits.max_filesize} bytes")
            continue
        cabinet = cabinets.get(_u16(entry, 85))
        if cabinet is None or stream_off + csize > cabinet.size:
            yield LimitExceeded("broken", f"InstallShield {name}: not in its cabinet")
            continue
        extracted += 1
        if extracted > limits.max_files:
            yield LimitExceeded("max-files", f"InstallShield: more than {limits.max_files} files")
            return
        start = cabinet.start + stream_off
        yield from _cabinet_file(f"data{_u16(entry, 85)}.cab!{name}", memoryview(data)[start:start + csize], limits)


def _cabinet_file(name: str, packed: memoryview, limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    """One file of an InstallShield cabinet: u16-length chunks, each raw deflate on its own."""
    cap = min(limits.max_filesize, limits.growth_cap(len(packed)))
    out = bytearray()
    pos = 0
    while pos + 2 <= len(packed):
        length = _u16(packed, pos)
        pos += 2
        if not length:
            continue
        if pos + length > len(packed):
            yield LimitExceeded("broken", f"InstallShield {name}: chunk runs past the file")
            break
        try:
            piece, more = decompress_capped(raw_deflate(), packed[pos:pos + length], cap - len(out))
        except DecodeError as exc:
            yield LimitExceeded("broken", f"InstallShield {name}: {exc}")
            out += exc.partial
            break
        out += piece
        pos += length
        if more:
            yield limits.growth_problem(name, cap + 1, limits.growth_cap(len(packed))) or \
                LimitExceeded("max-filesize", f"InstallShield {name}: larger than {limits.max_filesize} bytes")
            return
    if out:
        yield name, bytes(out)
