"""A small LZX compressor for tests, written from the same public description as the decoder
(``src/bastion/unpack/lzx.py``), and builders of CAB and CHM files around its output.

It is not the decoder's mirror image: its streams are checked by libarchive (which reads LZX
cabinets) in ``tests/test_lzx.py``, so a stream it makes is known-good LZX independently of
Bastion's decoder.  It makes every kind of block (verbatim, aligned offset, uncompressed), uses the
repeated-offset queue, all three pretree run codes, E8 translation, blocks spanning frames, and
resets every ``reset_frames`` frames (CHM).  Matches come from a greedy hash search; compression
ratio is not a goal.
"""

from __future__ import annotations

import bisect
import heapq
import struct
from dataclasses import dataclass, field

from bastion.unpack.lzx import (
    ALIGNED,
    ALIGNED_ELEMENTS,
    EXTRA_BITS,
    FRAME,
    LENGTH_ELEMENTS,
    POSITION_BASE,
    UNCOMPRESSED,
    VERBATIM,
    position_slots,
)


class BitWriter:
    """16-bit little-endian words, filled most significant bit first."""

    #: how many times an uncompressed block's padding was a whole word (its header ended aligned)
    aligned_pads = 0

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def write(self, value: int, bits: int) -> None:
        assert 0 <= value < (1 << bits) or bits == 0
        self.acc = (self.acc << bits) | value
        self.n += bits
        while self.n >= 16:
            self.n -= 16
            self.out += ((self.acc >> self.n) & 0xFFFF).to_bytes(2, "little")
        self.acc &= (1 << self.n) - 1

    def align(self) -> None:
        if self.n:
            self.write(0, 16 - self.n)

    def pad_1_to_16(self) -> None:
        if self.n == 0:
            BitWriter.aligned_pads += 1
        self.write(0, 16 - self.n)

    def raw(self, data: bytes) -> None:
        assert self.n == 0
        self.out += data

    def tell(self) -> int:
        assert self.n == 0
        return len(self.out)


def huffman_lengths(freqs: list[int], limit: int) -> list[int]:
    """Code lengths (at most ``limit``) for these symbol frequencies."""
    lengths = [0] * len(freqs)
    used = [i for i, f in enumerate(freqs) if f]
    if not used:
        return lengths
    if len(used) == 1:  # a complete code of two 1-bit codes: libarchive rejects incomplete trees
        lengths[used[0]] = lengths[1 if used[0] == 0 else 0] = 1
        return lengths
    weights = list(freqs)
    while True:
        heap = [(weights[i], i, (i,)) for i in used]
        heapq.heapify(heap)
        depth = dict.fromkeys(used, 0)
        tie = len(freqs)
        while len(heap) > 1:
            w1, _, a = heapq.heappop(heap)
            w2, _, b = heapq.heappop(heap)
            for s in a + b:
                depth[s] += 1
            tie += 1
            heapq.heappush(heap, (w1 + w2, tie, a + b))
        if max(depth.values()) <= limit:
            for s, d in depth.items():
                lengths[s] = d
            return lengths
        weights = [(w >> 1) | 1 if w else 0 for w in weights]


def canonical_codes(lengths: list[int]) -> list[int]:
    codes = [0] * len(lengths)
    code = 0
    for n in range(1, max(lengths, default=0) + 1):
        for sym, length in enumerate(lengths):
            if length == n:
                codes[sym] = code
                code += 1
        code <<= 1
    return codes


def pretree_codes(old: list[int], new: list[int]) -> list[tuple[int, int, int]]:
    """(code, extra value, extra bits) for sending ``new`` lengths as deltas against ``old``,
    using zero runs (17, 18) and same-value runs (19) where they fit."""
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < len(new):
        run = 1
        while i + run < len(new) and new[i + run] == new[i]:
            run += 1
        if new[i] == 0 and run >= 20:
            take = min(run, 51)
            out.append((18, take - 20, 5))
            i += take
        elif new[i] == 0 and run >= 4:
            take = min(run, 19)
            out.append((17, take - 4, 4))
            i += take
        elif run >= 4:
            take = min(run, 5)
            out.append((19, take - 4, 1))
            out.append(((old[i] - new[i]) % 17, 0, 0))
            i += take
        else:
            out.append(((old[i] - new[i]) % 17, 0, 0))
            i += 1
    return out


def write_lengths(w: BitWriter, old: list[int], new: list[int]) -> None:
    codes = pretree_codes(old, new)
    freqs = [0] * 20
    for code, _, _ in codes:
        freqs[code] += 1
    pre = huffman_lengths(freqs, 15)
    for n in pre:
        w.write(n, 4)
    pcodes = canonical_codes(pre)
    for code, value, bits in codes:
        w.write(pcodes[code], pre[code])
        if bits:
            w.write(value, bits)


@dataclass
class Stream:
    """A compressed stream and the compressed offset at which each 32 KiB frame starts."""

    data: bytes
    frame_offsets: list[int] = field(default_factory=list)


def e8_encode(data: bytes, size: int) -> bytes:
    """The encoder's half of E8 translation: relative CALL targets made absolute, frame by frame."""
    out = bytearray(data)
    for start in range(0, len(out), FRAME):
        end = min(start + FRAME, len(out)) - 10
        i = start
        while i < end:
            if out[i] == 0xE8:
                rel = int.from_bytes(out[i + 1:i + 5], "little", signed=True)
                cur = i
                if -cur <= rel < size - cur:
                    out[i + 1:i + 5] = ((rel + cur) & 0xFFFFFFFF).to_bytes(4, "little")
                elif size - cur <= rel < size:
                    out[i + 1:i + 5] = ((rel - size) & 0xFFFFFFFF).to_bytes(4, "little")
                i += 5
            else:
                i += 1
    return bytes(out)


def _tokens(data: bytes, start: int, end: int, wsize: int, frame_end_of) -> list[tuple[int, int]]:
    """Greedy LZ77 over data[start:end]: (literal byte, 0) or (offset, length)."""
    table: dict[bytes, int] = {}
    toks: list[tuple[int, int]] = []
    i = start
    while i < end:
        key = data[i:i + 3]
        cand = table.get(key, -1)
        table[key] = i
        limit = min(end, frame_end_of(i), i + 257)
        if cand >= 0 and 0 < i - cand <= wsize - 3 and limit - i >= 3:
            n = 0
            while i + n < limit and data[cand + n] == data[i + n]:
                n += 1
            if n >= 3:
                toks.append((i - cand, n))
                for k in range(i + 1, min(i + n, end - 2)):
                    table[data[k:k + 3]] = k
                i += n
                continue
        toks.append((data[i], 0))
        i += 1
    return toks


def compress(data: bytes, window_bits: int = 16, *, block_size: int = 20000,
              kinds: tuple[int, ...] = (VERBATIM, ALIGNED, UNCOMPRESSED), reset_frames: int = 0,
              e8_size: int = 0, empty_length_tree: bool = False) -> Stream:
    """LZX-compress ``data``: blocks of ``block_size`` bytes (even), their types taken in turn from
    ``kinds``, a reset every ``reset_frames`` frames (0: never), E8 translation when ``e8_size`` is set.
    A block with no long match sends an empty length tree only if ``empty_length_tree``."""
    src = e8_encode(data, e8_size) if e8_size else data
    enc = _Encoder(src, window_bits, block_size, kinds, e8_size, empty_length_tree)
    interval = reset_frames * FRAME if reset_frames else len(src) + FRAME
    for seg_start in range(0, max(len(src), 1), interval):
        enc.segment(seg_start, min(seg_start + interval, len(src)))
    enc.w.align()
    return Stream(bytes(enc.w.out), enc.frame_offsets)


class _Encoder:
    def __init__(self, src: bytes, window_bits: int, block_size: int, kinds: tuple[int, ...], e8_size: int,
                 empty_length_tree: bool) -> None:
        self.src = src
        self.wsize = 1 << window_bits
        self.main_elements = 256 + 8 * position_slots(window_bits)
        self.block_size = block_size
        self.kinds = kinds
        self.kind_no = 0
        self.e8_size = e8_size
        self.empty_length_tree = empty_length_tree
        self.w = BitWriter()
        self.frame_offsets: list[int] = []

    def frame_boundary(self, out_pos: int, raw_mode: bool) -> None:
        """Called when the output reaches a multiple of 32 KiB: realign (not inside an uncompressed
        block) and note where the next frame starts."""
        if out_pos >= len(self.src) or out_pos % FRAME:
            return
        if not raw_mode:
            self.w.align()
        self.frame_offsets.append(len(self.w.out))

    def segment(self, start: int, end: int) -> None:
        """One stretch between resets: the stream header, then blocks."""
        w = self.w
        w.align()
        if start == 0:
            self.frame_offsets.append(0)  # later segments: noted by the frame that ended the last one
        w.write(1 if self.e8_size else 0, 1)
        if self.e8_size:
            w.write(self.e8_size >> 16, 16)
            w.write(self.e8_size & 0xFFFF, 16)
        self.r = [1, 1, 1]
        self.main_old = [0] * self.main_elements
        self.len_old = [0] * LENGTH_ELEMENTS
        pos = start
        while pos < end:
            block_end = min(pos + self.block_size, end)
            kind = self.kinds[self.kind_no % len(self.kinds)]
            self.kind_no += 1
            w.write(kind, 3)
            w.write(block_end - pos, 24)
            if kind == UNCOMPRESSED:
                self.uncompressed(pos, block_end)
            else:
                self.compressed(kind, pos, block_end)
            pos = block_end

    def uncompressed(self, pos: int, end: int) -> None:
        w = self.w
        w.pad_1_to_16()
        for v in self.r:
            w.raw(v.to_bytes(4, "little"))
        while pos < end:
            piece_end = min(end, (pos // FRAME + 1) * FRAME)
            w.raw(self.src[pos:piece_end])
            pos = piece_end
            self.frame_boundary(pos, raw_mode=True)
        if len(w.out) & 1:
            w.raw(b"\0")

    def compressed(self, kind: int, pos: int, end: int) -> None:
        w, r = self.w, self.r
        toks = _tokens(self.src, pos, end, self.wsize, lambda i: (i // FRAME + 1) * FRAME)
        coded: list[tuple[int, int, int, int]] = []  # main symbol, length symbol, verbatim bits, slot
        main_f = [0] * self.main_elements
        len_f = [0] * LENGTH_ELEMENTS
        al_f = [0] * ALIGNED_ELEMENTS
        for a, n in toks:
            if n == 0:
                coded.append((a, -1, 0, -1))
                main_f[a] += 1
                continue
            off = a
            if off == r[0]:
                slot = 0
            elif off == r[1]:
                slot = 1
                r[0], r[1] = r[1], r[0]
            elif off == r[2]:
                slot = 2
                r[0], r[2] = r[2], r[0]
            else:
                slot = bisect.bisect_right(POSITION_BASE, off + 2) - 1
                r[0], r[1], r[2] = off, r[0], r[1]
            header = min(n - 2, 7)
            sym = 256 + (slot << 3 | header)
            lsym = n - 2 - 7 if header == 7 else -1
            verbatim = off + 2 - POSITION_BASE[slot] if slot > 2 else 0
            coded.append((sym, lsym, verbatim, slot))
            main_f[sym] += 1
            if lsym >= 0:
                len_f[lsym] += 1
            if kind == ALIGNED and slot > 2 and EXTRA_BITS[slot] >= 3:
                al_f[verbatim & 7] += 1
        if not any(len_f) and not self.empty_length_tree:
            len_f[0] = len_f[1] = 1  # libarchive rejects an empty length tree (libmspack accepts it)
        main_len = huffman_lengths(main_f, 16)
        len_len = huffman_lengths(len_f, 16)
        al_len: list[int] = []
        al_codes: list[int] = []
        if kind == ALIGNED:
            al_len = huffman_lengths(al_f, 7)
            for v in al_len:
                w.write(v, 3)
            al_codes = canonical_codes(al_len)
        write_lengths(w, self.main_old[:256], main_len[:256])
        write_lengths(w, self.main_old[256:], main_len[256:])
        write_lengths(w, self.len_old, len_len)
        self.main_old, self.len_old = main_len, len_len
        mcodes, lcodes = canonical_codes(main_len), canonical_codes(len_len)
        out_pos = pos
        for (sym, lsym, verbatim, slot), (_, n) in zip(coded, toks, strict=True):
            w.write(mcodes[sym], main_len[sym])
            if lsym >= 0:
                w.write(lcodes[lsym], len_len[lsym])
            if slot > 2:
                eb = EXTRA_BITS[slot]
                if kind == ALIGNED and eb >= 3:
                    w.write(verbatim >> 3, eb - 3)
                    w.write(al_codes[verbatim & 7], al_len[verbatim & 7])
                else:
                    w.write(verbatim, eb)
            out_pos += n or 1
            self.frame_boundary(out_pos, raw_mode=False)


def cab_of(stream: Stream, length: int, window_bits: int, name: str = "data.bin") -> bytes:
    """A cabinet holding one file, LZX-compressed as ``stream`` (one CFDATA block per frame)."""
    offsets = stream.frame_offsets + [len(stream.data)]
    blocks = []
    for k in range(len(stream.frame_offsets)):
        comp = stream.data[offsets[k]:offsets[k + 1]]
        blocks.append(struct.pack("<IHH", 0, len(comp), min(FRAME, length - k * FRAME)) + comp)
    files = struct.pack("<IIHHHH", length, 0, 0, 0x5A21, 0, 0x20) + name.encode() + b"\0"
    header_len, folder_len = 36, 8
    data_start = header_len + folder_len + len(files)
    body = b"".join(blocks)
    header = b"MSCF" + struct.pack("<IIIIIBBHHHHH", 0, data_start + len(body), 0, header_len + folder_len, 0,
                                   3, 1, 1, 1, 0, 0x1234, 0)
    folder = struct.pack("<IHH", data_start, len(blocks), 3 | window_bits << 8)
    return header + folder + files + body


def encint(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


RESET_TABLE = ("::DataSpace/Storage/MSCompressed/Transform/{7FC28940-9D31-11D0-9B27-00A0C91E9C7C}/"
               "InstanceData/ResetTable")


def chm_of(stored: dict[str, bytes], compressed: dict[str, bytes], *, window_bits: int = 16,
           reset_frames: int = 2, chunk_size: int = 4096, e8_size: int = 0, block_size: int = 20000,
           kinds: tuple[int, ...] = (VERBATIM, ALIGNED, UNCOMPRESSED)) -> bytes:
    """A version-3 CHM with ``stored`` files in section 0 and ``compressed`` ones in section 1."""
    sec1 = b"".join(compressed.values())
    stream = compress(sec1, window_bits, block_size=block_size, kinds=kinds, reset_frames=reset_frames,
                      e8_size=e8_size)
    control = struct.pack("<I4sIIIII", 6, b"LZXC", 2, reset_frames, (1 << window_bits) // FRAME, 1, 0)
    table = struct.pack("<IIIIQQQ", 2, len(stream.frame_offsets), 8, 0x28, len(sec1), len(stream.data), FRAME)
    table += b"".join(struct.pack("<Q", o) for o in stream.frame_offsets)
    system = {
        "::DataSpace/Storage/MSCompressed/Content": stream.data,
        "::DataSpace/Storage/MSCompressed/ControlData": control,
        "::DataSpace/Storage/MSCompressed/SpanInfo": struct.pack("<Q", len(sec1)),
        RESET_TABLE: table,
    }
    entries: list[tuple[str, int, int, int]] = [("/", 0, 0, 0)]
    section0 = bytearray()
    for name, body in {**stored, **system}.items():
        entries.append((name, 0, len(section0), len(body)))
        section0 += body
    pos = 0
    for name, body in compressed.items():
        if name.endswith("/"):  # a directory: an empty entry
            entries.append((name, 0, 0, 0))
            continue
        entries.append((name, 1, pos, len(body)))
        pos += len(body)
    chunks: list[bytearray] = []
    current = bytearray()
    for name, sec, off, length in entries:
        item = encint(len(name.encode())) + name.encode() + encint(sec) + encint(off) + encint(length)
        if 0x14 + len(current) + len(item) > chunk_size:
            chunks.append(current)
            current = bytearray()
        current += item
    chunks.append(current)
    directory = bytearray()
    for k, body in enumerate(chunks):
        nxt = k + 1 if k + 1 < len(chunks) else -1
        head = b"PMGL" + struct.pack("<IIii", chunk_size - 0x14 - len(body), 0, k - 1, nxt)
        directory += head + body + b"\0" * (chunk_size - 0x14 - len(body))
    itsp = b"ITSP" + struct.pack("<IIIIIIiIIiII", 1, 0x54, 10, chunk_size, 2, 1, -1, 0, len(chunks) - 1, -1,
                                 len(chunks), 0x409)
    itsp += b"\0" * 16 + struct.pack("<Iiii", 0x54, -1, -1, -1)
    assert len(itsp) == 0x54
    dir_off = 0x60 + 0x18
    dir_len = len(itsp) + len(directory)
    content_off = dir_off + dir_len
    itsf = b"ITSF" + struct.pack("<IIIII", 3, 0x60, 1, 0, 0x409) + b"\0" * 32
    itsf += struct.pack("<QQQQQ", 0x60, 0x18, dir_off, dir_len, content_off)
    assert len(itsf) == 0x60
    sec0_header = struct.pack("<IIQQ", 0x1FE, 0, content_off + len(section0), 0)
    return itsf + sec0_header + itsp + bytes(directory) + bytes(section0)
