"""The aPLib-style LZ scheme of MEW (and FSG): one compressed chunk decoded in place in a memory image.

Format (learnt from ClamAV's ``unmew`` in libclamav/packlibs.c; the code here is Bastion's own): the
first byte is copied as is, then tag bits (read from a byte taken when the previous eight are used
up, most significant bit first) select

* ``0``: a literal byte, copied from the source;
* ``111`` and four bits: a one-byte match at that distance (distance 0: a zero byte);
* ``110`` and a byte: its upper seven bits are the distance (0 ends the chunk), its low bit + 2 the
  length;
* ``10`` and an Elias-gamma number ``n`` (pairs of value bit and "more" bit after a leading 1):
  when ``n`` minus 2 (minus 1 after a match) is 0, the previous distance again with a gamma length;
  otherwise that value - 1 is the distance's high part and a source byte its low 8 bits, followed by
  a gamma length that grows by 1 for distances >= 0x500 and 0x7d00 and by 2 for distances <= 0x7f.

Matches may not reach before the chunk's first output byte nor past the output limit; a tag byte
may not be the source's last byte (both as ClamAV checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.unpack.packers.pe import copy_match

MAX_GAMMA = 1 << 32


@dataclass(slots=True)
class Chunk:
    """Where a decoded chunk ended: ``src`` just past its end marker, ``dst`` just past its output."""

    src: int
    dst: int


class _Bits:
    """The tag-bit reader: ``tag`` holds the unread bits of the current tag byte above a sentinel 1."""

    __slots__ = ("buf", "pos", "end", "tag")

    def __init__(self, buf: bytearray, pos: int, end: int) -> None:
        self.buf, self.pos, self.end, self.tag = buf, pos, end, 0x80

    def bit(self) -> int:
        tag = self.tag
        if not tag & 0x7F:  # only the sentinel is left: take the next tag byte
            if self.pos >= self.end - 1:
                raise ValueError("compressed data runs out")
            byte = self.buf[self.pos]
            self.pos += 1
            self.tag = (byte << 1 | 1) & 0xFF
            return byte >> 7
        self.tag = tag << 1 & 0xFF
        return tag >> 7 & 1

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("compressed data runs out")
        self.pos += 1
        return self.buf[self.pos - 1]

    def gamma(self) -> int:
        value = 1
        while True:
            value = value * 2 + self.bit()
            if value >= MAX_GAMMA:
                raise ValueError("number out of range")
            if not self.bit():
                return value


def decode(buf: bytearray, src: int, src_end: int, dst: int, dst_end: int) -> Chunk:
    """Decode the chunk at ``buf[src:src_end]`` into ``buf[dst:dst_end]`` (the same buffer, as in
    memory).  Raises ValueError for data that runs out or reaches outside those bounds; the output
    is therefore at most ``dst_end - dst`` bytes, whatever the data says."""
    if not (0 <= src < src_end <= len(buf) and 0 <= dst < dst_end <= len(buf)):
        raise ValueError("chunk outside the image")
    bits = _Bits(buf, src, src_end)
    start = dst
    buf[dst] = bits.byte()
    dst += 1
    after_literal = 1  # ClamAV's "lostbit": the gamma offset code is one shorter after a match
    last = 0
    while True:
        if not bits.bit():
            if dst >= dst_end:
                raise ValueError("output overflows the image")
            buf[dst] = bits.byte()
            dst += 1
            after_literal = 1
            continue
        if bits.bit():
            if bits.bit():  # 111: a short match of one byte
                distance = 1
                for _ in range(4):
                    distance = distance * 2 + bits.bit()
                distance &= 0xF
                after_literal = 1
                if not distance:
                    if dst >= dst_end:
                        raise ValueError("output overflows the image")
                    buf[dst] = 0
                    dst += 1
                    continue
                length = 1
            else:  # 110: distance and length in one byte
                byte = bits.byte()
                distance, length = byte >> 1, 2 + (byte & 1)
                if not distance:
                    return Chunk(bits.pos, dst)
                last = distance
                after_literal = 0
        else:  # 10: a gamma-coded match
            high = bits.gamma() - 1 - after_literal
            if not high:
                distance, length = last, bits.gamma()
            else:
                distance = bits.byte() + ((high - 1) << 8)
                length = bits.gamma()
                length += (distance >= 0x7D00) + (distance >= 0x500) + 2 * (distance <= 0x7F)
                last = distance
            after_literal = 0
        if dst + length > dst_end or dst - distance < start:
            raise ValueError("match outside the output")
        if distance:
            copy_match(buf, dst, dst - distance, length)
        dst += length  # a distance of 0 copies each byte onto itself


class AplibError(ValueError):
    """The stream is damaged: truncated, a match before the output's start or past its end."""


def decompress(src: bytes | bytearray | memoryview, size: int) -> tuple[bytes, int]:
    """``(output, consumed)``: one stream decoded into a fresh buffer (PESpin's sections) up to its end
    marker, at most ``size`` bytes, and how many input bytes it took (the end marker included)."""
    data = bytes(src)
    if size <= 0 or not data:
        raise AplibError("aPLib: empty input or output")
    buf = bytearray(data) + bytearray(size)
    try:
        chunk = decode(buf, 0, len(data), len(data), len(data) + size)
    except ValueError as exc:
        raise AplibError(f"aPLib: {exc}") from None
    return bytes(buf[len(data):chunk.dst]), chunk.src
