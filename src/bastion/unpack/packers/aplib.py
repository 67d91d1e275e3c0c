"""aPLib, the LZ77 format of Jørgen Ibsen's compression library, decoded into a bounded buffer.

Used by packers that compress with aPLib (PESpin, FSG, among others; ClamAV's ``cli_unfsg``).
Written from the public description of the format:

* The stream starts with one literal byte.
* Then tagged items.  Tag bits come from a bit buffer refilled with a whole byte (read most
  significant bit first) when its 8 bits are used up; literal bytes and offset bytes are read from
  the same position in between.
* ``0`` and a byte: a literal.
* ``111`` and 4 bits: a single byte copied from that distance back, or a zero byte when the
  distance is 0.
* ``110`` and a byte ``b``: a match of length 2 + (b & 1) at distance b >> 1, which becomes the
  repeat distance; a distance of 0 ends the stream.
* ``10`` and an Elias-gamma number ``g`` (a leading 1, then pairs of value bit and "more" bit):
  when the previous item was a literal (or a ``111`` byte), ``g`` 2 means "repeat distance", else
  ``g`` - 3 are the high bits of the distance; otherwise ``g`` 1 ... likewise with ``g`` - 2.
  A repeat takes its length from a second gamma number.  Otherwise a byte gives the low 8 bits of
  the distance, a gamma number the length, which grows by 1 for distances of 1280 and more, by
  another 1 for 32000 and more, and by 2 for distances below 128; the distance becomes the repeat
  distance.

The decoder never writes past the buffer the caller sized (a packer's declared section size) and
never reads before its start: both are damage (:class:`AplibError`).  A gamma-coded distance of 0
(no encoder makes one) writes zero bytes, as ClamAV's decoder does in its zero-filled buffer.
Every item consumes input, so decoding ends after at most eight items per input byte.  ClamAV's
decoder also refuses a tag byte that is the last byte of the input; this one reads it (a
difference only for damaged input).
"""

from __future__ import annotations

from bastion.unpack.packers.pe import copy_match


class AplibError(ValueError):
    """The stream is damaged: truncated, a match before the output's start or past its end."""


def decompress(src: bytes | bytearray | memoryview, size: int) -> tuple[bytes, int]:
    """``(output, consumed)``: the stream in ``src`` decoded up to its end marker, at most ``size``
    bytes (an item that would write more raises :class:`AplibError`), and how many input bytes it
    took (the end marker included)."""
    data = bytes(src)
    end = len(data)
    if size <= 0 or not end:
        raise AplibError("aPLib: empty input or output")
    out = bytearray(size)
    out[0] = data[0]
    o, pos = 1, 1
    tag, bits = 0, 0
    last_literal = True  # the previous item was a literal (or a "111" byte)
    rep = 0

    def bit() -> int:
        nonlocal tag, bits, pos
        if not bits:
            if pos >= end:
                raise AplibError("aPLib: input ends inside a tag")
            tag, bits = data[pos], 8
            pos += 1
        bits -= 1
        return (tag >> bits) & 1

    def gamma() -> int:
        value = 1
        while True:
            value = (value << 1) | bit()
            if not bit():
                return value
            if value > size:  # no length or distance may exceed the output
                raise AplibError("aPLib: number larger than the output")

    def byte() -> int:
        nonlocal pos
        if pos >= end:
            raise AplibError("aPLib: input ends inside an item")
        pos += 1
        return data[pos - 1]

    while True:
        if not bit():  # 0: literal
            if o >= size:
                raise AplibError("aPLib: output larger than declared")
            out[o] = byte()
            o += 1
            last_literal = True
            continue
        if bit():
            if bit():  # 111: one byte from a 4-bit distance, or a zero byte
                dist = (bit() << 3) | (bit() << 2) | (bit() << 1) | bit()
                if o >= size or dist > o:
                    raise AplibError("aPLib: short copy outside the output")
                out[o] = out[o - dist] if dist else 0
                o += 1
                last_literal = True
                continue
            b = byte()  # 110: short match
            dist, length = b >> 1, 2 + (b & 1)
            if not dist:
                return bytes(out[:o]), pos
            rep = dist
        else:  # 10: gamma-coded match
            high = gamma() - (3 if last_literal else 2)
            if high < 0:  # the repeat distance
                dist = rep
                length = gamma()
            else:
                dist = (high << 8) | byte()
                length = gamma()
                if dist >= 32000:
                    length += 1
                if dist >= 1280:
                    length += 1
                if dist < 128:
                    length += 2
                rep = dist
        if dist > o or o + length > size:
            raise AplibError(f"aPLib: match (distance {dist}, length {length}) outside the output")
        if dist:
            copy_match(out, o, o - dist, length)
        # distance 0 copies the not yet written (zero) bytes onto themselves, as in ClamAV
        o += length
        last_literal = False
