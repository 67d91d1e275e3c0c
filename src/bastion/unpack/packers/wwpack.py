"""WWPack32-packed executables: the compressed blocks are decoded in place in the program's image.

Recognised as ClamAV 1.4 recognises them: more than one section, the entry point at the start of the
last section (the packer's), whose code starts ``53 55 8b e8 33 db eb`` and holds
``e8 00 00 00 00 58 2d 6d 00 00 00 50 60 33 c9 50 58 50 50`` at + 0x68.

The image is the file's headers (up to the first section's raw data) and every section but the
packer's, mapped at its RVA.  From offset 0x2a1 of the packer's section, 17-byte records describe
the blocks: u32 distance back from the packer's RVA to the block's destination, u32 (unused), u32
size of the compressed data in dwords, u32 end of the block relative to its destination, u8 "another
record follows".  A block's compressed data is the last ``4 * dwords`` bytes before that end + 4;
it is decoded into the image from the destination on (after being copied out).

The bit stream is the same interleaving as UPX's (32-bit little-endian words, most significant bit
first; literal bytes in between).  Tokens: 0 and a literal byte; ``11`` and a two-byte match whose
distance takes 5, 6, 8 or 9 bits (2 bits choose; ``0x1ff`` in 9 bits ends the block); ``00``, ``01``
or ``10`` then a match whose distance takes 3 bits of class and 5 to 15 bits, and whose length is
3 or 4 for ``01``/``10``, or a variable-length code for ``00``.

Afterwards the image is made a file (:func:`~bastion.unpack.packers.rebuild.image_as_file`): the
packer's section is dropped and the entry point is the one the packer kept at + 0x295.
"""

from __future__ import annotations

import struct

from bastion.unpack.base import UnpackLimits
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, size_check
from bastion.unpack.packers.rebuild import image_as_file

STUB_START = bytes.fromhex("53558be833dbeb")
STUB_AT_68 = bytes.fromhex("e800000000582d6d0000005060 33c9 50585050".replace(" ", ""))
RECORDS_AT = 0x2A1
ENTRY_AT = 0x295
MAX_BLOCKS = 4096


class _Bits:
    """MSB-first bits from 32-bit little-endian words, with whole bytes read in between.  A word is
    loaded as soon as the previous one is used up (before any byte that follows), as WWPack's
    decompressor does; running out of words is an error only when another bit is needed."""

    __slots__ = ("src", "pos", "word", "left")

    def __init__(self, src: bytes) -> None:
        self.src, self.pos, self.word, self.left = src, 0, 0, 0
        self._load()

    def _load(self) -> None:
        if self.pos + 4 <= len(self.src):
            self.word = int.from_bytes(self.src[self.pos:self.pos + 4], "little")
            self.pos += 4
            self.left = 32

    def bits(self, n: int) -> int:
        value = 0
        while n:
            if not self.left:
                raise EOFError
            take = min(n, self.left)
            self.left -= take
            value = value << take | (self.word >> self.left) & ((1 << take) - 1)
            n -= take
            if not self.left:
                self._load()
        return value

    def byte(self) -> int:
        if self.pos >= len(self.src):
            raise EOFError
        self.pos += 1
        return self.src[self.pos - 1]


def decode_block(image: bytearray, dest: int, packed: bytes) -> int:
    """Decode one block into ``image`` from ``dest`` on; the end of the output.  Raises ValueError
    for a match outside the image, EOFError when the data ends before the end code."""
    bits = _Bits(packed)
    out = dest
    size = len(image)
    while True:
        if not bits.bits(1):
            if out >= size:
                raise ValueError("output runs past the image")
            image[out] = bits.byte()
            out += 1
            continue
        kind = bits.bits(2)
        if kind == 3:  # two bytes from a short distance
            width = bits.bits(2)
            shift, bias = (width + 5, 31) if width < 2 else (width + 6, 31 + 0x80)
            value = bits.bits(shift)
            if value == 0x1FF:
                return out
            distance, length = (1 << shift) - bias + value, 2
        else:
            cls = bits.bits(3)
            if cls < 6:
                width = {0: 5, 1: 6, 2: 7, 5: 12}.get(cls)
                if width is None:
                    width = (8 if cls == 3 else 10) + bits.bits(1)
                distance = bits.bits(width) + (1 << width) - 31
            elif cls == 6:
                distance = bits.bits(14) + 0x1FE1
            else:
                distance = bits.bits(15) + 0x5FE1
            length = kind + 2 if kind else _length(bits)
        start = out - distance
        if start < 0 or out + length > size:
            raise ValueError("match outside the image")
        if distance >= length:
            image[out:out + length] = image[start:start + length]
        else:
            for k in range(length):
                image[out + k] = image[start + k]
        out += length


def _length(bits: _Bits) -> int:
    if not bits.bits(1):
        return bits.bits(1) + 5
    value = bits.bits(3)
    if value:
        return value + 6
    value = bits.bits(4)
    if value:
        return value + 13
    count, base = 4, 0x0D
    while True:
        if count == 7:
            count, base = 0x0E, 0
            break
        base = ((base + 2) << 1) - 1
        count += 1
        if bits.bits(1):
            break
    return bits.bits(count) + base


def unpack(pe: PackedPe, limits: UnpackLimits, name: str) -> Unpacked | None:
    """The WWPack32-packed program as a PE file; None when ``pe`` is not WWPack32's."""
    secs = pe.sections
    last = secs[-1] if len(secs) > 1 else None
    if last is None or pe.entry_rva != last.virtual_address or not pe.stub.startswith(STUB_START) \
            or pe.stub[0x68:0x68 + len(STUB_AT_68)] != STUB_AT_68:
        return None
    head = min(s.raw_offset for s in secs)
    size = max(s.virtual_address + s.virtual_size for s in secs[:-1])
    if not head or not size or head > size:
        return None
    packer = pe.section_data(len(secs) - 1)
    size_check(limits, name, size, len(pe.data))
    image = bytearray(size)
    image[:head] = pe.data[:head]
    for sec in secs[:-1]:
        if sec.raw_size:
            if sec.virtual_address + sec.raw_size > size:
                raise PackerError("broken", f"{name}: WWPack32 section outside the image")
            image[sec.virtual_address:sec.virtual_address + sec.raw_size] = \
                pe.data[sec.raw_offset:sec.raw_offset + sec.raw_size]
    at = RECORDS_AT
    for _ in range(MAX_BLOCKS):
        if at + 17 > len(packer):
            raise PackerError("broken", f"{name}: WWPack32 block records run past its section")
        back, _unused, dwords, end = struct.unpack_from("<IIII", packer, at)
        more = packer[at + 16]
        at += 17
        dest = (last.virtual_address - back) & 0xFFFF_FFFF
        packed_at = dest + end + 4 - 4 * dwords
        if not dwords or packed_at < 0 or packed_at + 4 * dwords > size:
            raise PackerError("broken", f"{name}: WWPack32 compressed data outside the image")
        packed = bytes(image[packed_at:packed_at + 4 * dwords])
        image[packed_at:packed_at + 4 * dwords] = b"\xff" * (4 * dwords)
        try:
            decode_block(image, dest, packed)
        except (ValueError, EOFError) as exc:
            raise PackerError("broken", f"{name}: WWPack32 data: {exc or 'ends before its end code'}") from None
        if not more:
            break
    else:
        raise PackerError("broken", f"{name}: more than {MAX_BLOCKS} WWPack32 blocks")
    if len(packer) < ENTRY_AT + 4:
        raise PackerError("broken", f"{name}: WWPack32 section too short")
    entry = int.from_bytes(packer[ENTRY_AT:ENTRY_AT + 4], "little") + last.virtual_address + 0x299
    kept = [(s.virtual_address, s.virtual_size) for s in secs[:-1]]
    return Unpacked(image_as_file(image, kept, entry, drop=1, dropped_size=last.virtual_size), 0, "wwpack",
                    is_file=True)
