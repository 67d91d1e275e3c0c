"""A small aPLib encoder for tests: greedy matching that uses every item kind of the format (literal,
the 4-bit single byte and zero byte, the short match, gamma-coded matches and the repeat distance),
so that round trips through :func:`bastion.unpack.packers.aplib.decompress` cover the decoder."""

from __future__ import annotations


class BitWriter:
    """aPLib's output: a tag byte is reserved where the first of its 8 bits is needed; literal and
    offset bytes are appended in between."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.tag_at = 0
        self.left = 0

    def bit(self, value: int) -> None:
        if not self.left:
            self.tag_at = len(self.out)
            self.out.append(0)
            self.left = 8
        self.left -= 1
        if value:
            self.out[self.tag_at] |= 1 << self.left

    def bits(self, *values: int) -> None:
        for value in values:
            self.bit(value)

    def byte(self, value: int) -> None:
        self.out.append(value)

    def gamma(self, value: int) -> None:
        assert value >= 2
        top = value.bit_length() - 1
        for i in range(top - 1, -1, -1):
            self.bit((value >> i) & 1)
            self.bit(1 if i else 0)


def _adjust(dist: int) -> int:
    return (dist >= 32000) + (dist >= 1280) + 2 * (dist < 128)


def compress(data: bytes, window: int = 1 << 17, max_tries: int = 64) -> bytes:
    """``data`` (at least one byte) as an aPLib stream."""
    w = BitWriter()
    w.byte(data[0])
    heads: dict[bytes, list[int]] = {}
    last_literal, rep = True, 0
    i = 1

    def remember(at: int) -> None:
        heads.setdefault(data[at:at + 3], []).append(at)

    def run(src: int) -> int:
        n = 0
        while i + n < len(data) and data[src + n] == data[i + n]:
            n += 1
        return n

    remember(0)
    while i < len(data):
        best_len, best_dist = 0, 0
        for start in reversed(heads.get(data[i:i + 3], [])[-max_tries:]):
            if i - start > window:
                break
            n = run(start)
            if n > best_len:
                best_len, best_dist = n, i - start
        rep_len = run(i - rep) if rep and last_literal else 0
        if rep_len >= 2 and rep_len + 1 >= best_len:
            w.bits(1, 0)
            w.gamma(2)
            w.gamma(rep_len)
            length = rep_len
            last_literal = False
        elif best_len >= 2 + _adjust(best_dist) and not (best_dist < 128 and best_len <= 3):
            w.bits(1, 0)
            w.gamma((best_dist >> 8) + (3 if last_literal else 2))
            w.byte(best_dist & 0xFF)
            w.gamma(best_len - _adjust(best_dist))
            length, rep, last_literal = best_len, best_dist, False
        elif best_len >= 2 and best_dist < 128:
            length = min(best_len, 3)
            w.bits(1, 1, 0)
            w.byte((best_dist << 1) | (length - 2))
            rep, last_literal = best_dist, False
        else:
            near = next((d for d in range(1, min(15, i) + 1) if data[i - d] == data[i]), 0)
            if data[i] == 0 or near:
                w.bits(1, 1, 1)
                dist = 0 if data[i] == 0 else near
                w.bits((dist >> 3) & 1, (dist >> 2) & 1, (dist >> 1) & 1, dist & 1)
            else:
                w.bit(0)
                w.byte(data[i])
            length, last_literal = 1, True
        for at in range(i, i + length):
            remember(at)
        i += length
    w.bits(1, 1, 0)
    w.byte(0)
    return bytes(w.out)
