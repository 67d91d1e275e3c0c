"""LZX decompression (as used by CHM's MSCompressed section and by CAB), written from Microsoft's
public descriptions: [MS-PATCH] "LZX DELTA Compression and Decompression" and the Cabinet SDK's LZX
notes, without the DELTA extensions (no reference data, 24-bit block sizes).

The bitstream is a sequence of little-endian 16-bit words read most significant bit first.  After a
reset the stream starts with one bit saying whether E8 call translation is on (then 32 bits of
translation size).  Blocks follow: 3 bits of type (1 verbatim, 2 aligned offset, 3 uncompressed)
and 24 bits of uncompressed size.  Verbatim and aligned blocks carry a main tree (256 literals plus
8 length headers per position slot) and a length tree (249 elements), both sent as deltas against
the previous block's code lengths through a 20-symbol pretree; aligned blocks first send an 8-symbol
tree of 3-bit lengths for the low three bits of large offsets.  Match offsets use three repeated
offsets (R0..R2, all 1 after a reset).  Output comes in 32 KiB frames; after each frame the input
is realigned to 16 bits, and E8 translation (x86 CALL targets made relative again) is applied to a
copy of the frame, the window keeps the untranslated bytes.

Speed (measured): about 10 MB/s of output on text-like data (4 MB compressed to 39%), 7 MB/s on
incompressible data (all literals) and 250 MB/s on long repeats: best of 3 runs of ``decode`` over
streams made by ``tests/lzx_encoder.py`` from ``tests/test_lzx.py``'s ``text_like(4_000_000)``,
``noise(1_000_000)`` and a repeated sentence, CPython 3.11 on the project's shared 2-core build
machine (``test_throughput`` there keeps a loose floor).  The hot loop keeps every piece of state
in locals, decodes Huffman codes with one lookup in a table indexed by the next ``maxlen`` bits, and
copies matches by slicing a linear ``bytearray`` that is trimmed to the window at frame boundaries.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator

FRAME = 32768
MIN_WINDOW_BITS, MAX_WINDOW_BITS = 15, 21
NUM_CHARS = 256
LENGTH_ELEMENTS = 249
PRETREE_ELEMENTS = 20
ALIGNED_ELEMENTS = 8
VERBATIM, ALIGNED, UNCOMPRESSED = 1, 2, 3
# Output frames after which E8 translation stops (the first 1 GiB of output)
E8_FRAMES = 32768

# Per position slot: how many verbatim bits follow, and the offset the slot starts at
EXTRA_BITS: list[int] = [0, 0, 0, 0] + [min((s - 2) >> 1, 17) for s in range(4, 50)]
POSITION_BASE: list[int] = [0]
for _s in range(49):
    POSITION_BASE.append(POSITION_BASE[-1] + (1 << EXTRA_BITS[_s]))

# A Huffman table entry is ``symbol << 5 | code length``; a hole (a bit pattern no code covers) of
# the main tree decodes as this symbol, whose position slot is out of range (so the hot loop needs
# no test for it); holes of the other trees are 0 and are tested for where they are decoded.
_MAIN_HOLE = (0xFFFFF << 5)
_PAD_WORDS = 32


class LzxError(ValueError):
    """The stream is damaged (a bad tree, a match out of the window, truncated input...)."""


def position_slots(window_bits: int) -> int:
    """Position slots for a window of 2**window_bits bytes (2 per bit up to 19; 42 and 50 for 20, 21)."""
    return {20: 42, 21: 50}.get(window_bits, 2 * window_bits)


def build_table(lengths: list[int] | array, hole: int = 0) -> tuple[list[int], int]:
    """A lookup table for the canonical Huffman code with these code lengths: indexed by the next
    ``bits`` bits of input, it gives ``symbol << 5 | length``.  Returns (table, bits); an empty code
    gives ([], 0).  An over-subscribed code is an error; an incomplete one leaves ``hole`` entries."""
    maxlen = max(lengths, default=0)
    if maxlen == 0:
        return [], 0
    if maxlen > 16:
        raise LzxError("Huffman code longer than 16 bits")
    size = 1 << maxlen
    by_length: list[list[int]] = [[] for _ in range(maxlen + 1)]
    for sym, n in enumerate(lengths):
        if n:
            by_length[n].append(sym)
    if sum(len(by_length[n]) << (maxlen - n) for n in range(1, maxlen + 1)) > size:
        raise LzxError("over-subscribed Huffman tree")
    table = [hole] * size
    pos = 0
    for n in range(1, maxlen + 1):
        span = 1 << (maxlen - n)
        for sym in by_length[n]:
            table[pos:pos + span] = [sym << 5 | n] * span
            pos += span
    return table, maxlen


class _Bits:
    """The input: 16-bit words (``words``, padded with zero words), the index of the next word, and
    a bit buffer (``buf``, whose low ``n`` bits are the next bits of the stream)."""

    __slots__ = ("raw", "words", "real_bytes", "wi", "buf", "n")

    def __init__(self, data: bytes | memoryview) -> None:
        raw = self.raw = bytes(data)
        self.real_bytes = len(raw)
        if len(raw) & 1:
            raw += b"\0"
        words = array("H", raw)
        if sys.byteorder == "big":
            words.byteswap()
        words.extend([0] * _PAD_WORDS)
        self.words = words
        self.wi = 0
        self.buf = 0
        self.n = 0

    def fill(self) -> None:
        """Load 32 more bits (the hot loop in :func:`decode` does the same inline)."""
        w = self.wi
        self.buf = ((self.buf & ((1 << self.n) - 1)) << 32) | (self.words[w] << 16) | self.words[w + 1]
        self.wi = w + 2
        self.n += 32

    def read(self, count: int) -> int:
        if self.n < count:
            self.fill()
        self.n -= count
        return (self.buf >> self.n) & ((1 << count) - 1)

    def symbol(self, table: list[int], bits: int, what: str) -> int:
        if not bits:
            raise LzxError(f"{what}: empty Huffman tree used")
        if self.n < bits:
            self.fill()
        e = table[(self.buf >> (self.n - bits)) & ((1 << bits) - 1)]
        if not e & 31:
            raise LzxError(f"{what}: invalid Huffman code")
        self.n -= e & 31
        return e >> 5

    def align(self) -> None:
        """Skip to the next 16-bit boundary."""
        self.n -= self.n & 15

    def pad_1_to_16(self) -> None:
        """Skip the padding before an uncompressed block's data: to the next 16-bit boundary, or a
        whole word when already on one."""
        if self.n & 15:
            self.n -= self.n & 15
        elif self.n:
            self.n -= 16
        else:
            self.wi += 1

    def byte_position(self) -> int:
        """Where the next unread byte is (only meaningful when aligned)."""
        return 2 * self.wi - (self.n >> 3)

    def seek_bytes(self, position: int) -> None:
        """Continue reading bits at this (even) byte position."""
        self.wi = position >> 1
        self.buf = 0
        self.n = 0

    def consumed_bits(self) -> int:
        return 16 * self.wi - self.n

    def check_overrun(self) -> None:
        if self.consumed_bits() > 8 * self.real_bytes:
            raise LzxError("compressed data is truncated")


def _read_lengths(bits: _Bits, lens: list[int], first: int, last: int) -> None:
    """Update ``lens[first:last]`` from pretree-coded deltas."""
    pre = [bits.read(4) for _ in range(PRETREE_ELEMENTS)]
    table, tb = build_table(pre)
    i = first
    while i < last:
        code = bits.symbol(table, tb, "pretree")
        if code == 17:
            run = 4 + bits.read(4)
            lens[i:min(i + run, last)] = [0] * (min(i + run, last) - i)
            i += run
        elif code == 18:
            run = 20 + bits.read(5)
            lens[i:min(i + run, last)] = [0] * (min(i + run, last) - i)
            i += run
        elif code == 19:
            run = 4 + bits.read(1)
            code = bits.symbol(table, tb, "pretree")
            if code > 16:
                raise LzxError("pretree: bad code after a run")
            value = (lens[i] - code + 17) % 17
            lens[i:min(i + run, last)] = [value] * (min(i + run, last) - i)
            i += run
        else:
            lens[i] = (lens[i] - code + 17) % 17
            i += 1


def _e8_translate(frame: bytearray, start: int, size: int) -> None:
    """Undo the encoder's E8 translation in one output frame that begins at output offset ``start``."""
    end = len(frame) - 10
    i = frame.find(0xE8, 0, end) if end > 0 else -1
    while i >= 0:
        value = int.from_bytes(frame[i + 1:i + 5], "little", signed=True)
        cur = start + i
        if -cur <= value < size:
            value = value - cur if value >= 0 else value + size
            frame[i + 1:i + 5] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        i = frame.find(0xE8, i + 5, end) if i + 5 < end else -1


def decode(data: bytes | memoryview, window_bits: int, out_length: int, reset_frames: int = 0) -> Iterator[bytes]:
    """Decompress an LZX stream into ``out_length`` bytes, yielded frame by frame (32 KiB each, the
    last one shorter).  ``reset_frames``: the decoder state is reset (and a new stream header read)
    every that many frames (CHM's reset interval); 0 for never (CAB).  Raises :class:`LzxError` on
    damaged input, after yielding the frames decoded before the damage."""
    if not MIN_WINDOW_BITS <= window_bits <= MAX_WINDOW_BITS:
        raise LzxError(f"window size 2^{window_bits} is not 2^15..2^21")
    wsize = 1 << window_bits
    main_elements = NUM_CHARS + 8 * position_slots(window_bits)
    bits = _Bits(data)
    words = bits.words
    extra = EXTRA_BITS
    pbase = POSITION_BASE
    win = bytearray()
    append = win.append
    base = 0  # output offset of win[0]
    produced = 0  # output bytes yielded so far
    frame_no = 0
    r0 = r1 = r2 = 1
    main_lens = [0] * main_elements
    len_lens = [0] * LENGTH_ELEMENTS
    mtab: list[int] = []
    mbits = 0
    ltab: list[int] = []
    lbits = 0
    atab: list[int] = []
    abits = 0
    block_type = 0
    remaining = 0  # bytes of the current block still to decode
    raw_pos = -1  # inside an uncompressed block: the byte position of its next byte
    raw = bits.raw
    e8_size = 0
    try:
        while produced < out_length:
            if frame_no == 0 or (reset_frames and frame_no % reset_frames == 0):
                if remaining:
                    raise LzxError(f"{remaining} bytes of a block left at a reset point")
                r0 = r1 = r2 = 1
                main_lens = [0] * main_elements
                len_lens = [0] * LENGTH_ELEMENTS
                block_type = 0
                e8_size = (bits.read(16) << 16 | bits.read(16)) if bits.read(1) else 0
            frame_end = min(produced + FRAME, out_length)
            while len(win) + base < frame_end:
                if not remaining:
                    block_type = bits.read(3)
                    remaining = bits.read(24)
                    if block_type == ALIGNED:
                        atab, abits = build_table([bits.read(3) for _ in range(ALIGNED_ELEMENTS)])
                    if block_type in (VERBATIM, ALIGNED):
                        _read_lengths(bits, main_lens, 0, NUM_CHARS)
                        _read_lengths(bits, main_lens, NUM_CHARS, main_elements)
                        mtab, mbits = build_table(main_lens, _MAIN_HOLE)
                        if not mbits:
                            raise LzxError("empty main tree")
                        _read_lengths(bits, len_lens, 0, LENGTH_ELEMENTS)
                        ltab, lbits = build_table(len_lens)
                    elif block_type == UNCOMPRESSED:
                        # 1 to 16 bits of padding up to the next 16-bit boundary, then R0..R2
                        bits.pad_1_to_16()
                        pos = bits.byte_position()
                        if pos + 12 > bits.real_bytes:
                            raise LzxError("uncompressed block header is truncated")
                        r0, r1, r2 = (int.from_bytes(raw[p:p + 4], "little") for p in (pos, pos + 4, pos + 8))
                        raw_pos = pos + 12
                    else:
                        raise LzxError(f"invalid block type {block_type}")
                    if not remaining:
                        if raw_pos >= 0:
                            bits.seek_bytes(raw_pos)
                            raw_pos = -1
                        continue
                run = min(remaining, frame_end - base - len(win))
                if block_type == UNCOMPRESSED:
                    if raw_pos + run > bits.real_bytes:
                        raise LzxError("uncompressed block is truncated")
                    win += raw[raw_pos:raw_pos + run]
                    raw_pos += run
                    remaining -= run
                    if not remaining:  # back to the bitstream, after a padding byte if the size is odd
                        bits.seek_bytes(raw_pos + (raw_pos & 1))
                        raw_pos = -1
                    continue
                # verbatim or aligned: the hot loop, on locals
                is_aligned = block_type == ALIGNED
                wi, buf, n = bits.wi, bits.buf, bits.n
                mmask = (1 << mbits) - 1
                lmask = (1 << lbits) - 1
                amask = (1 << abits) - 1
                start = len(win)
                target = start + run
                wl = start
                while wl < target:
                    if n < 17:
                        buf = ((buf & ((1 << n) - 1)) << 32) | (words[wi] << 16) | words[wi + 1]
                        wi += 2
                        n += 32
                    e = mtab[(buf >> (n - mbits)) & mmask]
                    n -= e & 31
                    sym = e >> 5
                    if sym < 256:
                        append(sym)
                        wl += 1
                        continue
                    sym -= 256
                    mlen = sym & 7
                    if mlen == 7:
                        if n < 17:
                            buf = ((buf & ((1 << n) - 1)) << 32) | (words[wi] << 16) | words[wi + 1]
                            wi += 2
                            n += 32
                        e = ltab[(buf >> (n - lbits)) & lmask] if lbits else 0
                        if not e & 31:
                            raise LzxError("bad match length code")
                        n -= e & 31
                        mlen += e >> 5
                    mlen += 2
                    slot = sym >> 3
                    if slot > 2:
                        eb = extra[slot]
                        if n < 17:
                            buf = ((buf & ((1 << n) - 1)) << 32) | (words[wi] << 16) | words[wi + 1]
                            wi += 2
                            n += 32
                        if is_aligned and eb >= 3:
                            n -= eb - 3
                            off = pbase[slot] + (((buf >> n) & ((1 << (eb - 3)) - 1)) << 3)
                            if n < 17:
                                buf = ((buf & ((1 << n) - 1)) << 32) | (words[wi] << 16) | words[wi + 1]
                                wi += 2
                                n += 32
                            e = atab[(buf >> (n - abits)) & amask] if abits else 0
                            if not e & 31:
                                raise LzxError("bad aligned offset code")
                            n -= e & 31
                            off += (e >> 5) - 2
                        else:
                            n -= eb
                            off = pbase[slot] + ((buf >> n) & ((1 << eb) - 1)) - 2
                        r2 = r1
                        r1 = r0
                        r0 = off
                    elif slot == 0:
                        off = r0
                    elif slot == 1:
                        off = r1
                        r1 = r0
                        r0 = off
                    else:
                        off = r2
                        r2 = r0
                        r0 = off
                    if not 0 < off <= wl:
                        raise LzxError("match offset outside the window")
                    src = wl - off
                    if mlen <= off:
                        win += win[src:src + mlen]
                    else:
                        win += (win[src:wl] * (mlen // off + 1))[:mlen]
                    wl += mlen
                bits.wi, bits.buf, bits.n = wi, buf, n
                remaining -= wl - start
                if remaining < 0:
                    raise LzxError("a match runs past the end of its block")
            if raw_pos < 0:
                bits.align()
                bits.check_overrun()
            frame = bytearray(win[produced - base:frame_end - base])
            if e8_size and frame_no < E8_FRAMES:
                _e8_translate(frame, produced, e8_size)
            yield bytes(frame)
            produced = frame_end
            frame_no += 1
            if len(win) > 2 * wsize + 2 * FRAME:
                cut = len(win) - wsize - FRAME
                del win[:cut]
                base += cut
    except IndexError as exc:  # a main-tree hole's symbol, or reading past the padding
        raise LzxError("damaged compressed data") from exc
