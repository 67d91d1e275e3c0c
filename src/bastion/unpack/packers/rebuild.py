"""A PE file rebuilt from an unpacked memory image: Bastion's own layout, not ClamAV's.

Packers keep the original program's PE header (from ``PE\\0\\0`` through the section table) inside
the compressed data.  :func:`rebuild` looks for it in the image and lays the file out as that header
describes: each section's raw data (``SizeOfRawData`` bytes, taken from the image at the section's
RVA) at its ``PointerToRawData``, then a DOS header (``MZ``, ``e_lfanew``) and the header itself on
top, at the offset the packed file used for its own header when it fits below the first section,
else at 0x40.  The header is kept byte for byte, so signatures on it (a section table) still match;
for a plain original the file is the original up to its DOS stub, overlay and checksum.

Returns None when no plausible header is in the image, or when the layout would be larger than
``max_size`` or than ``GROWTH`` times the image (hostile raw pointers): the caller scans the image.
"""

from __future__ import annotations

import struct

from bastion.unpack.packers.pe import Unpacked

MAX_CANDIDATES = 32
MAX_SECTIONS = 96
GROWTH = 4  # a rebuilt file may be this many times the image (plus 64 KiB)


def find_header(image: bytes) -> int | None:
    """The offset in ``image`` of the first ``PE\\0\\0`` that starts a plausible i386/AMD64 header
    whose section table lies inside the image."""
    at = image.find(b"PE\0\0")
    tried = 0
    while at >= 0 and tried < MAX_CANDIDATES:
        tried += 1
        if at + 24 <= len(image):
            machine, nsec, _t, _s, _n, opt_size, _c = struct.unpack_from("<HHIIIHH", image, at + 4)
            if machine in (0x14C, 0x8664) and 0 < nsec <= MAX_SECTIONS and 96 <= opt_size <= 0x400 \
                    and at + 24 + opt_size + 40 * nsec <= len(image):
                return at
        at = image.find(b"PE\0\0", at + 1)
    return None


def rebuild(unpacked: Unpacked, max_size: int, dos_at: int = 0x40) -> bytes | None:
    """The rebuilt file (see the module docstring), or None."""
    image, base = unpacked.image, unpacked.base_rva
    at = find_header(image)
    if at is None:
        return None
    nsec, opt_size = struct.unpack_from("<H", image, at + 6)[0], struct.unpack_from("<H", image, at + 20)[0]
    header = image[at:at + 24 + opt_size + 40 * nsec]
    table = 24 + opt_size
    budget = min(max_size, GROWTH * len(image) + 0x10000)
    placed: list[tuple[int, bytes]] = []
    end = 0
    first_raw = None
    for i in range(nsec):
        _vsize, va, raw_size, raw_ptr = struct.unpack_from("<IIII", header, table + 40 * i + 8)
        if not raw_size:
            continue
        first_raw = raw_ptr if first_raw is None else min(first_raw, raw_ptr)
        start = va - base
        piece = image[start:start + raw_size] if 0 <= start < len(image) else b""
        end = max(end, raw_ptr + raw_size)
        if end > budget:
            return None
        placed.append((raw_ptr, piece))
    lfanew = dos_at if first_raw is None or dos_at + len(header) <= first_raw or dos_at < 0x40 else 0x40
    lfanew = max(lfanew, 0x40)
    end = max(end, lfanew + len(header))
    if end > budget:
        return None
    out = bytearray(end)
    for raw_ptr, piece in placed:
        out[raw_ptr:raw_ptr + len(piece)] = piece
    out[0:2] = b"MZ"
    out[0x3C:0x40] = lfanew.to_bytes(4, "little")
    out[lfanew:lfanew + len(header)] = header
    return bytes(out)


def image_as_file(image: bytearray, sections: list[tuple[int, int]], entry_rva: int | None = None,
                  drop: int = 0, dropped_size: int = 0) -> bytes:
    """A memory image that starts with its own headers (RVA 0), made a PE file that maps it back
    as is: every section's raw data is its virtual range (``PointerToRawData`` = RVA,
    ``SizeOfRawData`` = virtual size, from ``sections``: (RVA, virtual size) of the sections kept).
    The packer's own ``drop`` trailing sections are removed from the table and their virtual size
    ``dropped_size`` from SizeOfImage, and the entry point is set when given.  ``image`` is changed
    in place; header fields outside it are left alone.  (For clam-wwpack.exe the result is the file
    clamscan 1.4.6 rebuilds, byte for byte: the layout is what the packed headers dictate.)"""
    e_lfanew = int.from_bytes(image[0x3C:0x40], "little")
    coff = e_lfanew + 4
    if e_lfanew < 0x40 or coff + 20 > len(image):
        return bytes(image)
    opt_size = int.from_bytes(image[coff + 16:coff + 18], "little")
    opt = coff + 20
    table = opt + opt_size
    total = int.from_bytes(image[coff + 2:coff + 4], "little")
    kept = len(sections)
    image[coff + 2:coff + 4] = kept.to_bytes(2, "little")
    if entry_rva is not None and opt + 20 <= len(image):
        image[opt + 16:opt + 20] = (entry_rva & 0xFFFF_FFFF).to_bytes(4, "little")
    for i, (rva, vsize) in enumerate(sections):
        at = table + 40 * i
        if at + 40 > len(image):
            break
        struct.pack_into("<IIII", image, at + 8, vsize, rva, vsize, rva)
    for i in range(kept, min(total, kept + drop)):
        at = table + 40 * i
        if at + 40 <= len(image):
            image[at:at + 40] = bytes(40)
    if drop and opt + 60 <= len(image):
        size_of_image = int.from_bytes(image[opt + 56:opt + 60], "little")
        image[opt + 56:opt + 60] = ((size_of_image - dropped_size) & 0xFFFF_FFFF).to_bytes(4, "little")
    return bytes(image)


FILE_ALIGN = 0x200
SECTION_ALIGN = 0x1000


def sections_as_file(sections: list[tuple[int, int, bytes]], image_base: int, entry_rva: int,
                     names: list[bytes] | None = None) -> bytes:
    """A PE32 file of Bastion's own layout for a program whose headers the packer did not keep:
    ``sections`` are (RVA, virtual size, raw data) in RVA order, laid out from file offset 0x400 on
    at 0x200 alignment after a minimal DOS header (``e_lfanew`` 0x40), the COFF and optional
    headers (no data directories filled in) and the section table.  Names default to
    ``.bst0``, ``.bst1``, ..."""
    nsec = len(sections)
    head_size = _align(0x40 + 24 + 224 + 40 * nsec, FILE_ALIGN)
    table = bytearray()
    raw_at = head_size
    body = bytearray()
    for i, (rva, vsize, data) in enumerate(sections):
        raw_size = _align(len(data), FILE_ALIGN)
        name = (names[i] if names else f".bst{i}".encode())[:8].ljust(8, b"\0")
        table += name + struct.pack("<IIIIIIHHI", vsize, rva, raw_size, raw_at if raw_size else 0,
                                    0, 0, 0, 0, 0xE0000060)
        body += data + bytes(raw_size - len(data))
        raw_at += raw_size
    end = max([rva + vsize for rva, vsize, _ in sections] + [SECTION_ALIGN])
    opt = bytearray(224)
    struct.pack_into("<HBB", opt, 0, 0x10B, 0, 0)
    struct.pack_into("<I", opt, 16, entry_rva & 0xFFFF_FFFF)
    struct.pack_into("<III", opt, 28, image_base & 0xFFFF_FFFF, SECTION_ALIGN, FILE_ALIGN)
    struct.pack_into("<HH", opt, 40, 4, 0)
    struct.pack_into("<HH", opt, 48, 4, 0)
    struct.pack_into("<II", opt, 56, _align(end, SECTION_ALIGN), head_size)
    struct.pack_into("<H", opt, 68, 2)
    struct.pack_into("<IIII", opt, 72, 0x100000, 0x1000, 0x100000, 0x1000)
    struct.pack_into("<I", opt, 92, 16)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x14C, nsec, 0, 0, 0, 224, 0x10F)
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    dos[0x3C:0x40] = (0x40).to_bytes(4, "little")
    head = bytes(dos) + coff + bytes(opt) + bytes(table)
    return head + bytes(head_size - len(head)) + bytes(body)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to
