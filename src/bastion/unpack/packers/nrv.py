"""The NRV2B, NRV2D and NRV2E decompressors of the UCL library, in the 32-bit little-endian
bit-buffer form UPX uses for Windows executables; written from the published description of the
algorithms (UCL's documentation and its format notes), not from UCL's or ClamAV's code.

The stream interleaves whole bytes (literals and the low byte of match offsets) with control bits.
Control bits come from 32-bit little-endian words, most significant bit first; a new word is read
from the current input position when the previous one is used up.  A decoded stream is a sequence of:

* literal: a 1 bit, then the byte, copied to the output;
* match: a 0 bit, then a variable-length "gamma" number for the high part of the offset; the value 2
  reuses the previous offset, otherwise ``(high - 3) * 256 + next byte`` is the offset (minus one),
  and the value ``0xffffffff`` ends the stream; then the match length, in two bits or a gamma number.
  Long offsets make a match one byte longer (beyond 0xd00 for NRV2B, 0x500 for NRV2D/E).

The three variants differ only in how the offset's gamma number is read and how the length is coded
(NRV2D/E use the low bit of the offset byte as the first length bit).

Every decoder stops at ``limit`` bytes of output (raising :class:`OutputLimit` with what it has),
rejects matches that reach before the start of the output, numbers that cannot be valid, and input
that ends before the end marker (:class:`DecodeError` with the output decoded before the damage).
Time is linear in the input: every step consumes at least one bit, a long match is one slice.

Speed (measured): about 4 MB/s of output on text-like data and 6 MB/s on incompressible data (all
literals), each variant alike: best of 3 runs over 1 MB streams made by ``tests/nrv_encoder.py``,
CPython 3.11 on the project's shared 2-core build machine.  UPX-packed programs are rarely above a
few MB, so the bit reader stays a small class rather than code inlined into each variant.
"""

from __future__ import annotations

from collections.abc import Callable

from bastion.unpack.bounded import DecodeError

# The high part of an offset never exceeds this in a valid stream: (0x1000002 - 3) * 256 + 255 is the
# end marker 0xffffffff, anything above would be an offset beyond 4 GiB
_MAX_HIGH = 0x1000002
END_MARKER = 0xFFFF_FFFF


class OutputLimit(Exception):
    """The output would grow past the caller's limit; ``partial`` is what was decoded before."""

    def __init__(self, partial: bytes) -> None:
        super().__init__("output limit reached")
        self.partial = partial


class _Bits:
    """The input: whole bytes and the 32-bit control words, read from one position."""

    __slots__ = ("src", "pos", "word", "left")

    def __init__(self, src: bytes | memoryview, pos: int) -> None:
        self.src = src
        self.pos = pos
        self.word = 0
        self.left = 0

    def bit(self) -> int:
        if not self.left:
            pos = self.pos
            if pos + 4 > len(self.src):
                raise EOFError
            self.word = int.from_bytes(self.src[pos:pos + 4], "little")
            self.pos = pos + 4
            self.left = 32
        self.left -= 1
        return (self.word >> self.left) & 1

    def byte(self) -> int:
        pos = self.pos
        if pos >= len(self.src):
            raise EOFError
        self.pos = pos + 1
        return self.src[pos]

    def gamma(self, value: int, cap: int) -> int:
        """``value`` extended by (data bit, stop bit) pairs until a stop bit of 1; ValueError once
        it is above ``cap``."""
        bit = self.bit
        while True:
            value = value * 2 + bit()
            if bit():
                return value
            if value > cap:
                raise ValueError("number too large")


def _copy_match(out: bytearray, offset: int, length: int, limit: int) -> None:
    if offset > len(out) or offset <= 0:
        raise ValueError(f"match reaches {offset} bytes back, only {len(out)} decoded")
    if len(out) + length > limit:
        raise OverflowError
    start = len(out) - offset
    if offset >= length:
        out += out[start:start + length]
    else:  # the match overlaps its own output: the last ``offset`` bytes repeat
        pattern = bytes(out[start:])
        out += (pattern * (length // offset + 1))[:length]


def _run(step: Callable[[_Bits, bytearray, list[int], int], bool], src: bytes | memoryview, pos: int,
         limit: int) -> tuple[bytes, int]:
    out = bytearray()
    bits = _Bits(src, pos)
    state = [1]  # the last offset
    try:
        while step(bits, out, state, limit):
            pass
    except EOFError:
        raise DecodeError("compressed data ends before its end marker", bytes(out)) from None
    except OverflowError:
        raise OutputLimit(bytes(out[:limit])) from None
    except ValueError as exc:
        raise DecodeError(f"corrupt compressed data: {exc}", bytes(out)) from None
    return bytes(out), bits.pos


def _literals(bits: _Bits, out: bytearray, limit: int) -> None:
    """Copy literal bytes while the control bit is 1."""
    bit, byte = bits.bit, bits.byte
    while bit():
        if len(out) >= limit:
            raise OverflowError
        out.append(byte())


def _long_length(bits: _Bits, limit: int) -> int:
    """A length sent as a gamma number (its value; each variant adds its own bias).  A length above
    the output limit is a bomb, not damage: OverflowError."""
    try:
        return bits.gamma(1, limit)
    except ValueError:
        raise OverflowError from None


def _step_2b(bits: _Bits, out: bytearray, state: list[int], limit: int) -> bool:
    _literals(bits, out, limit)
    bit = bits.bit
    high = bits.gamma(1, _MAX_HIGH)
    if high == 2:
        offset = state[0]
    else:
        offset = (high - 3) * 256 + bits.byte()
        if offset == END_MARKER:
            return False
        offset += 1
        state[0] = offset
    length = bit() * 2 + bit()
    if not length:
        length = _long_length(bits, limit) + 2
    length += 1 + (offset > 0xD00)
    _copy_match(out, offset, length, limit)
    return True


def _offset_2de(bits: _Bits, state: list[int]) -> tuple[int, int] | None:
    """NRV2D/E: the offset and the first length bit; None at the end marker."""
    bit = bits.bit
    high = 1
    while True:  # gamma with a different continuation: (bit, stop?) and one more bit if not stopped
        high = high * 2 + bit()
        if bit():
            break
        high = (high - 1) * 2 + bit()
        if high > _MAX_HIGH:
            raise ValueError("number too large")
    if high == 2:
        return state[0], bit()
    offset = (high - 3) * 256 + bits.byte()
    if offset == END_MARKER:
        return None
    first = (offset & 1) ^ 1
    offset = (offset >> 1) + 1
    state[0] = offset
    return offset, first


def _step_2d(bits: _Bits, out: bytearray, state: list[int], limit: int) -> bool:
    _literals(bits, out, limit)
    found = _offset_2de(bits, state)
    if found is None:
        return False
    offset, length = found
    length = length * 2 + bits.bit()
    if not length:
        length = _long_length(bits, limit) + 2
    length += 1 + (offset > 0x500)
    _copy_match(out, offset, length, limit)
    return True


def _step_2e(bits: _Bits, out: bytearray, state: list[int], limit: int) -> bool:
    _literals(bits, out, limit)
    found = _offset_2de(bits, state)
    if found is None:
        return False
    offset, length = found
    bit = bits.bit
    if length:
        length = 1 + bit()
    elif bit():
        length = 3 + bit()
    else:
        length = _long_length(bits, limit) + 3
    length += 1 + (offset > 0x500)
    _copy_match(out, offset, length, limit)
    return True


def nrv2b(src: bytes | memoryview, pos: int, limit: int) -> tuple[bytes, int]:
    """Decode an NRV2B stream starting at ``src[pos]``: the output and the input position after the
    end marker.  Raises :class:`OutputLimit` past ``limit`` bytes, :class:`DecodeError` if damaged."""
    return _run(_step_2b, src, pos, limit)


def nrv2d(src: bytes | memoryview, pos: int, limit: int) -> tuple[bytes, int]:
    """As :func:`nrv2b`, for NRV2D."""
    return _run(_step_2d, src, pos, limit)


def nrv2e(src: bytes | memoryview, pos: int, limit: int) -> tuple[bytes, int]:
    """As :func:`nrv2b`, for NRV2E."""
    return _run(_step_2e, src, pos, limit)


DECODERS: dict[str, Callable[[bytes | memoryview, int, int], tuple[bytes, int]]] = {
    "nrv2b": nrv2b, "nrv2d": nrv2d, "nrv2e": nrv2e,
}
