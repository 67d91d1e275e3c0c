"""Petite 2.x-packed executables: the program's sections are decoded from Petite's own LZ scheme.

Recognised as ClamAV 1.4 recognises them: the entry point's code starts ``mov eax, <address>``
(``b8`` and a u32) where the address is the image base plus the RVA of the last section (Petite
2.2, "version 2") or of the second to last one (2.1, "version 1"; the last section is then left out
of the image).  Level-0 files (the u32 at entry point + 0x80 is ``0x163c988d``) store the data
uncompressed in a way ClamAV does not handle either, and are left alone.

The image holds every section's raw data at its RVA.  A list of 32-bit records starts in the
packer's section at + 0x1b8 (version 2) or + 0x178 (version 1):

* ``0``: the end of the list;
* bit 31 set: a move of ``n`` (the low 31 bits) dwords ending at source RVA ``s`` to the block
  ending at destination RVA ``d`` (the next two u32); ``d`` + 4 is the "bottom" that bounds the
  virtual size of the sections decoded after it;
* otherwise: the source RVA, then the decoded size and the destination RVA of one original section.

A section's data is its first byte as is, then a bit stream (bytes read most significant bit first
when a bit is needed, literal bytes read in between): ``0`` and a literal byte XOR'd with the low
byte of the count of bytes still to produce; ``1`` and a match, whose distance is an Elias-gamma-like
number (pairs of value bit and "more" bit) followed by 5, 7 or 8 further bits (by the section's size)
- or the previous distance when the number is 2 - and whose length is two bits, or when they are 0
another gamma-like number + 2, plus 1 to 3 for a far distance.

The last section decoded holds Petite's own code at its end when ClamAV's marker is found there; it
is cut off, as ClamAV does.  The original entry point (which Petite encrypts) is not recovered: the
rebuilt file's entry point is the first section's RVA, ClamAV's fallback as well.  The sections are
rebuilt into a PE of Bastion's layout (:func:`~bastion.unpack.packers.rebuild.sections_as_file`).
"""

from __future__ import annotations

import struct

from bastion.unpack.base import UnpackLimits
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, copy_match, map_image
from bastion.unpack.packers.rebuild import sections_as_file

LEVEL0 = 0x163C988D
MAX_SECTIONS = 96  # ClamAV's bound on the section records
MAX_RECORDS = 4096
# The Petite code at the end of the last section decoded: marker u32s at end - GROWN + 0x54 (or SKEW
# bytes earlier when the original had relocations); GROWN bytes (+ SKEW) are cut.  By version.
GROWN = {2: 0x355, 1: 0x323}
SKEW = {2: 0x35, 1: 0x34}
MARKER = (0x645EC033, 0x1B8B188B)
RECORDS_AT = {2: 0x1B8, 1: 0x178}


class _Stream:
    """Petite's bit stream over the image: bits from bytes read when needed (MSB first), with
    literal bytes read from the same position in between."""

    __slots__ = ("image", "pos", "byte", "left")

    def __init__(self, image: bytearray, pos: int) -> None:
        self.image, self.pos, self.byte, self.left = image, pos, 0, 0

    def next_byte(self) -> int:
        if not 0 <= self.pos < len(self.image):
            raise ValueError("compressed data runs out of the image")
        self.pos += 1
        return self.image[self.pos - 1]

    def bit(self) -> int:
        if not self.left:
            self.byte, self.left = self.next_byte(), 8
        self.left -= 1
        return self.byte >> self.left & 1

    def gamma(self, value: int) -> int:
        """``value`` followed by (bit, more) pairs until "more" is 0."""
        while True:
            value = value * 2 + self.bit()
            if value >= 1 << 31:
                raise ValueError("number out of range")
            if not self.bit():
                return value


def decode_section(image: bytearray, src: int, dst: int, size: int) -> int:
    """Decode ``size`` bytes from ``src`` into ``dst`` (both offsets in ``image``, which is both the
    source and destination, as in memory); the end of the output.  Raises ValueError for data that
    reads or writes outside the image or would produce more than ``size`` bytes."""
    end = dst + size
    if not size:
        return dst
    if not (0 <= src < len(image) and dst >= 0 and end <= len(image)):
        raise ValueError("section outside the image")
    if size < 0x10000:
        near, far, extra = -0x3A0, -0x3FA0, 5
    elif size < 0x40000:
        near, far, extra = -0x680, -0x7E80, 7
    else:
        near, far, extra = -0x500, -0x7D00, 8
    stream = _Stream(image, src + 1)
    image[dst] = image[src]
    out = dst + 1
    distance = 0
    while out < end:
        if not stream.bit():
            image[out] = stream.next_byte() ^ ((end - out) & 0xFF)
            out += 1
            continue
        number = stream.gamma(1) - 3
        length = 0
        if number >= 0:
            for _ in range(extra):
                number = number * 2 + stream.bit()
            distance = ~number
            length = 1 + (distance < near) + (distance < far)
        # else (the number was 2): the previous distance again
        count = stream.bit() * 2 + stream.bit()
        if not count:
            count = stream.gamma(1) + 2
        length += count
        start = out + distance
        if start < 0 or distance >= 0 or out + length > end:
            raise ValueError("match outside the section")
        copy_match(image, out, start, length)
        out += length
    return out


def unpack(pe: PackedPe, limits: UnpackLimits, name: str) -> Unpacked | None:
    """The Petite-packed program as a rebuilt PE file; None when ``pe`` is not Petite's."""
    version = _version(pe)
    if version is None:
        return None
    count = len(pe.sections) - (1 if version == 1 else 0)
    image, base = map_image(pe, limits, name, count)
    sections = _decode_all(pe, image, base, version, count, name)
    sections.sort()
    pieces: list[tuple[int, int, bytes]] = []
    for i, (rva, raw_size, vsize) in enumerate(sections):
        if i + 1 < len(sections):
            vsize = sections[i + 1][0] - rva
        start = rva - base
        data = bytes(image[start:start + raw_size]) if start >= 0 and start + raw_size <= len(image) else b""
        pieces.append((rva, max(vsize, len(data)), data))
    entry = pieces[0][0]
    return Unpacked(sections_as_file(pieces, pe.image_base, entry), 0, f"petite-v2.{version}", is_file=True)


def _version(pe: PackedPe) -> int | None:
    stub, secs = pe.stub, pe.sections
    if len(stub) < 200 or stub[0] != 0xB8 or len(secs) < 1:
        return None
    target = int.from_bytes(stub[1:5], "little")
    if target == (secs[-1].virtual_address + pe.image_base) & 0xFFFF_FFFF:
        version = 2
    elif len(secs) >= 2 and target == (secs[-2].virtual_address + pe.image_base) & 0xFFFF_FFFF:
        version = 1
    else:
        return None
    if int.from_bytes(stub[0x80:0x84], "little") == LEVEL0:
        return None
    return version


def _decode_all(pe: PackedPe, image: bytearray, base: int, version: int, count: int,
                name: str) -> list[tuple[int, int, int]]:
    """Follow the record list; the decoded sections as (RVA, raw size, virtual size)."""
    def broken(why: str) -> PackerError:
        return PackerError("broken", f"{name}: Petite: {why}")

    def u32(rva: int) -> int:
        at = rva - base
        if not 0 <= at <= len(image) - 4:
            raise broken("records run out of the image")
        return int.from_bytes(image[at:at + 4], "little")

    packed_secs = pe.sections[:count]
    record = pe.sections[count - 1].virtual_address + RECORDS_AT[version]
    out: list[tuple[int, int, int]] = []
    bottom = 0
    seen_data = 0  # decoded sections since the last move: the first one after a move is not widened
    for _ in range(MAX_RECORDS):
        head = u32(record)
        if not head:
            break
        if head & 0x8000_0000:
            dwords = head & 0x7FFF_FFFF
            source, dest = u32(record + 4), u32(record + 8)
            bottom = dest + 4
            src, dst = source - (dwords - 1) * 4 - base, dest - (dwords - 1) * 4 - base
            if dwords == 0 or min(src, dst) < 0 or max(src, dst) + 4 * dwords > len(image):
                raise broken("moved block outside the image")
            image[dst:dst + 4 * dwords] = image[src:src + 4 * dwords]
            record += 12
            seen_data = 0
            continue
        size, rva = u32(record + 4), u32(record + 8)
        record += 16
        if len(out) >= MAX_SECTIONS:
            raise broken(f"more than {MAX_SECTIONS} sections")
        vsize = bottom - rva if 0 < bottom - rva < 1 << 31 else size
        if not size:
            out.append((rva, 0, vsize))
            continue
        holder = next((s for s in packed_secs if s.virtual_address <= rva
                       and rva + vsize <= s.virtual_address + s.virtual_size), None)
        if holder is None:
            raise broken("section outside the packed sections")
        start_rva, raw_size = rva, size
        if not seen_data:  # the section may start with data Petite left uncompressed (an icon)
            start_rva, raw_size = holder.virtual_address, rva - holder.virtual_address + size
        try:
            end = decode_section(image, head - base, rva - base, size)
        except ValueError as exc:
            raise broken(str(exc)) from None
        raw_size -= _petite_code(image, end, raw_size, version)
        out.append((start_rva, raw_size, vsize))
        seen_data += 1
    else:
        raise broken(f"more than {MAX_RECORDS} records")
    if not out:
        raise broken("no sections")
    return out


def _petite_code(image: bytearray, end: int, raw_size: int, version: int) -> int:
    """How many bytes of Petite's own code end a decoded section (0 when its marker is not there)."""
    grown = GROWN[version]
    for skew in (0, SKEW[version]):
        at = end - grown + 5 + 0x4F - skew
        if raw_size > grown + skew and 0 <= at <= len(image) - 8 \
                and struct.unpack_from("<II", image, at) == MARKER:
            return grown + skew
    return 0
