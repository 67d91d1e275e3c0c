"""A small NRV2B/NRV2D/NRV2E compressor for tests (32-bit little-endian control words, as UPX uses
them), written from the same description as the decoders in ``src/bastion/unpack/packers/nrv.py``.

Greedy matches from a hash of 3-byte prefixes; it uses literals, new offsets short and long (beyond
the 0xd00/0x500 bonus), the repeated offset, short and gamma-coded lengths.  Compression ratio is not
a goal.  ``match`` lets a test append a raw match token (a bomb: a huge length at offset 1).
Its output is checked against real UPX streams indirectly: the fixtures in ``tests/data/upx`` are
decoded by the same decoders.
"""

from __future__ import annotations


class NrvWriter:
    """Interleaves bytes with control bits packed MSB first into 32-bit words reserved in place."""

    def __init__(self, variant: str) -> None:
        assert variant in ("nrv2b", "nrv2d", "nrv2e")
        self.variant = variant
        self.out = bytearray()
        self.word_at = -1
        self.word = 0
        self.nbits = 0
        self.last_offset = 1

    def bit(self, b: int) -> None:
        if self.nbits == 0:
            self.word_at = len(self.out)
            self.out += bytes(4)
            self.word = 0
        self.word |= (b & 1) << (31 - self.nbits)
        self.nbits += 1
        self.out[self.word_at:self.word_at + 4] = self.word.to_bytes(4, "little")
        if self.nbits == 32:
            self.nbits = 0

    def byte(self, value: int) -> None:
        self.out.append(value)

    def gamma(self, value: int) -> None:
        """NRV2B's number code (also its lengths, and NRV2D/E's lengths): data bit, stop bit."""
        assert value >= 2
        digits = bin(value)[3:]
        for i, digit in enumerate(digits):
            self.bit(int(digit))
            self.bit(1 if i == len(digits) - 1 else 0)

    def gamma_de(self, value: int) -> None:
        """NRV2D/E's offset code: groups (bit, stop) or (bit, 0, bit) built backwards from the value."""
        assert value >= 2
        groups: list[tuple[int, ...]] = [(value & 1, 1)]
        m = value >> 1
        while m != 1:
            b2 = m & 1
            prev = (m >> 1) + 1
            groups.append((prev & 1, 0, b2))
            m = prev >> 1
        for group in reversed(groups):
            for b in group:
                self.bit(b)

    def literal(self, value: int) -> None:
        self.bit(1)
        self.byte(value)

    def match(self, offset: int, length: int) -> None:
        """Copy ``length`` bytes from ``offset`` back."""
        self.bit(0)
        long_bonus = offset > (0xD00 if self.variant == "nrv2b" else 0x500)
        code = length - 1 - long_bonus
        assert code >= 1, "match too short"
        if self.variant == "nrv2b":
            if offset == self.last_offset:
                self.gamma(2)
            else:
                raw = offset - 1
                self.gamma((raw >> 8) + 3)
                self.byte(raw & 0xFF)
            if code <= 3:
                self.bit(code >> 1)
                self.bit(code & 1)
            else:
                self.bit(0)
                self.bit(0)
                self.gamma(code - 2)
        else:
            first = self._first_length_bit(code)
            if offset == self.last_offset:
                self.gamma_de(2)
                self.bit(first)
            else:
                raw = (offset - 1) << 1 | (first ^ 1)
                self.gamma_de((raw >> 8) + 3)
                self.byte(raw & 0xFF)
            if self.variant == "nrv2d":
                if code <= 3:
                    self.bit(code & 1)
                else:
                    self.bit(0)
                    self.gamma(code - 2)
            elif code <= 2:
                self.bit(code - 1)
            elif code <= 4:
                self.bit(1)
                self.bit(code - 3)
            else:
                self.bit(0)
                self.gamma(code - 3)
        self.last_offset = offset

    def _first_length_bit(self, code: int) -> int:
        """NRV2D/E: the length bit carried in the offset byte (or sent after a repeated offset)."""
        if self.variant == "nrv2d":
            return code >> 1 if code <= 3 else 0
        return 1 if code <= 2 else 0

    def end(self) -> bytes:
        self.bit(0)
        if self.variant == "nrv2b":
            self.gamma(0x1000002)
        else:
            self.gamma_de(0x1000002)
        self.byte(0xFF)
        return bytes(self.out)


def compress(data: bytes, variant: str, window: int = 0x20000, max_len: int = 2048) -> bytes:
    """``data`` as one NRV stream of ``variant``, ending with the end marker."""
    w = NrvWriter(variant)
    heads: dict[bytes, int] = {}
    i = 0
    while i < len(data):
        key = data[i:i + 3]
        best_len, best_off = 0, 0
        j = heads.get(key) if len(key) == 3 else None
        if j is not None and i - j <= window:
            length = 0
            while i + length < len(data) and length < max_len and data[j + length] == data[i + length]:
                length += 1
            best_len, best_off = length, i - j
        if len(key) == 3:
            heads[key] = i
        if best_len >= 4:
            w.match(best_off, best_len)
            for k in range(i + 1, min(i + best_len, len(data) - 2)):
                heads[data[k:k + 3]] = k
            i += best_len
        else:
            w.literal(data[i])
            i += 1
    return w.end()
