"""PKWARE's implode (zip compression method 6), decoded as APPNOTE.TXT section 5.3 describes it.

An imploded member starts with two or three Shannon-Fano trees (literals if general purpose flag
bit 2 is set, then lengths, then distances), each sent as run-length coded bit lengths.  The rest is
an LSB-first bit stream of tokens: ``1`` + a literal (through the literal tree, or 8 raw bits), or
``0`` + the low 6 (4 KiB dictionary) or 7 (8 KiB dictionary, flag bit 1) distance bits raw, the high
6 through the distance tree, then a length through the length tree (63 takes 8 more raw bits), plus
a minimum of 3 with a literal tree, else 2.  A distance reaching before the first byte reads zeros,
as PKWARE's and Info-ZIP's decoders do.

Written from the specification for Bastion.  Throughput, measured by decoding 2 MiB of mixed text
and random bytes imploded by the test encoder (tests/test_unpack_formats.py) with ``time.perf_counter``
on the development machine: about 8.5 MB/s of output on one core, with two trees or three.  Members
are bounded by the caller's ``size`` (its limits), so the time is too.
"""

from __future__ import annotations


class Damaged(Exception):
    """The compressed data is malformed or cut short; ``partial`` holds what decoded before."""

    def __init__(self, reason: str, partial: bytes = b"") -> None:
        super().__init__(reason)
        self.partial = partial


def _read_lengths(src: bytes, pos: int, count: int) -> tuple[list[int], int]:
    """One tree description (APPNOTE 5.3.4): a byte giving the number of bytes that follow, minus
    one; each byte holds a bit length minus one (low nibble) and a repeat count minus one (high)."""
    if pos >= len(src):
        raise Damaged("truncated before its Shannon-Fano trees")
    n = src[pos] + 1
    pos += 1
    if pos + n > len(src):
        raise Damaged("truncated inside its Shannon-Fano trees")
    lengths: list[int] = []
    for b in src[pos:pos + n]:
        lengths += [(b & 15) + 1] * ((b >> 4) + 1)
    if len(lengths) != count:
        raise Damaged(f"a Shannon-Fano tree with {len(lengths)} codes instead of {count}")
    return lengths, pos + n


def _table(lengths: list[int]) -> tuple[list[int], int]:
    """A lookup table for one tree: indexed by the next ``bits`` bits of the stream (LSB first), each
    entry ``symbol << 5 | code length``; -1 where no code starts (an incomplete tree).

    The codes are assigned as APPNOTE 5.3.5 says: bit lengths sorted ascending (stable), codes counted
    up from 0 starting at the longest, each 16-bit code left-aligned; the stream sends them bit
    reversed."""
    if sum(1 << (16 - n) for n in lengths) > 1 << 16:
        raise Damaged("an over-subscribed Shannon-Fano tree")
    bits = max(lengths)
    table = [-1] * (1 << bits)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    code = increment = last = 0
    for symbol in reversed(order):
        code += increment
        length = lengths[symbol]
        if length != last:
            last = length
            increment = 1 << (16 - length)
        value = code >> (16 - length)
        reversed_code = int(f"{value:0{length}b}"[::-1], 2)
        table[reversed_code::1 << length] = [symbol << 5 | length] * (1 << (bits - length))
    return table, bits


def explode(src: bytes, flags: int, size: int) -> bytes:
    """Decode an imploded member to ``size`` bytes (the caller bounds ``size`` by its limits).

    ``flags`` is the member's general purpose bit flag.  Raises :class:`Damaged` for malformed or
    truncated data, with the bytes decoded so far."""
    big_window = bool(flags & 2)
    pos = 0
    literal_table: list[int] | None = None
    literal_bits = 0
    if flags & 4:
        lengths, pos = _read_lengths(src, pos, 256)
        literal_table, literal_bits = _table(lengths)
    lengths, pos = _read_lengths(src, pos, 64)
    length_table, length_bits = _table(lengths)
    lengths, pos = _read_lengths(src, pos, 64)
    dist_table, dist_bits = _table(lengths)
    min_match = 3 if literal_table is not None else 2
    low_bits = 7 if big_window else 6
    low_mask = (1 << low_bits) - 1
    literal_mask = (1 << literal_bits) - 1
    length_mask = (1 << length_bits) - 1
    dist_mask = (1 << dist_bits) - 1

    end = len(src)
    data = src + bytes(8)  # reads past the end see zeros; the overrun is checked at each refill
    out = bytearray()
    acc = 0
    have = 0
    while len(out) < size:
        if have < 48:  # the longest token: 1 + 7 + 16 + 16 + 8 bits
            if pos > end and pos * 8 - have > end * 8:
                raise Damaged("truncated", bytes(out))
            acc |= int.from_bytes(data[pos:pos + 6], "little") << have
            pos += 6
            have += 48
        if acc & 1:
            if literal_table is None:
                out.append((acc >> 1) & 0xFF)
                acc >>= 9
                have -= 9
            else:
                acc >>= 1
                entry = literal_table[acc & literal_mask]
                if entry < 0:
                    raise Damaged("a code outside the literal tree", bytes(out))
                n = entry & 31
                out.append(entry >> 5)
                acc >>= n
                have -= 1 + n
            continue
        acc >>= 1
        distance = acc & low_mask
        acc >>= low_bits
        entry = dist_table[acc & dist_mask]
        if entry < 0:
            raise Damaged("a code outside the distance tree", bytes(out))
        n = entry & 31
        distance |= (entry >> 5) << low_bits
        acc >>= n
        have -= 1 + low_bits + n
        entry = length_table[acc & length_mask]
        if entry < 0:
            raise Damaged("a code outside the length tree", bytes(out))
        n = entry & 31
        acc >>= n
        have -= n
        length = entry >> 5
        if length == 63:
            length += acc & 0xFF
            acc >>= 8
            have -= 8
        length += min_match
        start = len(out) - distance - 1
        if start < 0:  # before the first byte: zeros
            zeros = min(-start, length)
            out += bytes(zeros)
            length -= zeros
            start = len(out) - distance - 1
        if length <= 0:
            continue
        if distance + 1 >= length:
            out += out[start:start + length]
        else:
            piece = out[start:]
            out += (piece * (length // len(piece) + 1))[:length]
    if pos * 8 - have > end * 8:
        raise Damaged("truncated", bytes(out[:size]))
    return bytes(out[:size])
