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
