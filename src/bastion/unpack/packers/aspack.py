"""ASPack 2.x-packed executables: blocks of the image decoded from ASPack's LZ + Huffman scheme.

Recognised as ClamAV 1.4 recognises them: the entry point's code starts
``60 e8 03 00 00 00 e9 eb`` and holds ``68 00 00 00 00 c3`` (push <original entry>; ret) at + 0x3b9
(2.12), + 0x41f (2.2x) or + 0x42b (2.42); the version fixes where the stub keeps its tables (offsets
from the entry point - 1, the start of ASPack's code, in :data:`VERSIONS`).

The image holds the file's headers and every section's raw data at its RVA.  The block list
(2.12: u32 RVA, u32 size; later: 12-byte records) ends with an RVA of 0; each block is decoded in
place into as many bytes as its size.  The stub keeps three constant tables: 28 length bases, 28
length extra-bit counts and 58 distance extra-bit counts (whose powers of two, summed, give the
58 distance bases).

A block's data is read most significant bit first.  It starts with Huffman code lengths (one bit
"keep the previous lengths as the base", 19 four-bit lengths of a pre-code, then 757 lengths coded
with it as deltas (mod 16) from the previous table or as runs), which make four canonical codes of
at most 15 bits: 721 main symbols, 28 length symbols, 8 aligned-distance symbols.  A main symbol
below 256 is a literal; 720 reads new code lengths; otherwise it is 256 + 8 × distance slot +
(length - 2), where length 9 means "a length symbol follows" (base + extra bits).  The distance is
the slot's base plus its extra bits (the last 3 from the aligned code when that code is not flat),
or one of the three previous distances for the values 0 to 2 (LZX's scheme).

After the first block, ``e8``/``e9`` operands that start with the stub's marker byte are turned
back from ASPack's call filter.  The image is made a file whose sections map it as is
(:func:`~bastion.unpack.packers.rebuild.image_as_file`), ASPack's two sections dropped when they are
the last ones, and the entry point is the original one kept in the stub.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass

from bastion.unpack.base import UnpackLimits
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, copy_match, map_image
from bastion.unpack.packers.rebuild import image_as_file

STUB_START = bytes.fromhex("60e803000000e9eb")
PUSH_RET = bytes.fromhex("6800000000c3")
MAX_BLOCKS = 4096
SIZES = (721, 28, 8, 19)  # symbols of the main, length, aligned and pre-code
PEEK = 15  # the longest code


@dataclass(frozen=True, slots=True)
class Version:
    """Where one ASPack version's stub keeps things, as offsets from its start."""

    name: str
    marker: int     # push <entry>; ret (from the entry point)
    blocks: int     # the block list
    tables: int     # length bases (28), length extra bits (28), distance extra bits (58)
    filter: int     # the call filter's marker byte
    entry: int      # the original entry point's RVA
    record: int     # bytes per block record


VERSIONS = (
    Version("2.12", 0x3B9, 0x57C, 0x6D6, 0x148, 0x39B, 8),
    Version("2.2x", 0x41F, 0x5D8, 0x732, 0x13A, 0x401, 12),
    Version("2.42", 0x42B, 0x5E4, 0x73E, 0x148, 0x40D, 12),
)


class _Bits:
    """MSB-first bits of one block's data; reading past its end yields zeros for 0x10e bytes (as
    ASPack's stub reads into its zero-padded buffer), then fails."""

    __slots__ = ("data", "pos", "limit")

    def __init__(self, data: bytes) -> None:
        self.data = data + bytes(0x10E + 4)
        self.pos = 0  # in bits
        self.limit = 8 * (len(data) + 0x10E)

    def peek(self, n: int) -> int:
        """The next ``n`` (<= 24) bits, not consumed."""
        if self.pos + n > self.limit + 7:
            raise ValueError("compressed data ends early")
        at = self.pos >> 3
        word = int.from_bytes(self.data[at:at + 4], "big")
        return word >> (32 - n - (self.pos & 7)) & ((1 << n) - 1)

    def bits(self, n: int) -> int:
        if n > 24:
            raise ValueError("bit count out of range")
        if not n:
            return 0
        value = self.peek(n)
        self.pos += n
        return value


class _Code:
    """A canonical Huffman code as ASPack builds it (codes of one length are consecutive, shorter
    codes first): ``limit[L]`` is the first 15-bit prefix past the codes of length L, ``first[L]``
    the index in ``ordered`` (the symbols by code) of length L's first code.  ASPack counts the
    unused symbols at the front of ``ordered``, and so does this class, so that a code ASPack
    rejects (an index outside the symbols) is rejected here too."""

    __slots__ = ("limit", "first", "ordered")

    def __init__(self, lengths: bytes | bytearray | list[int]) -> None:
        size = len(lengths)
        counts = [0] * 18
        for n in lengths:
            if n > 17:
                raise ValueError("code length out of range")
            counts[n] += 1
        limit = [0] * 16
        first = [0] * 18
        total = 0
        for length in range(1, 16):
            total += counts[length] << (PEEK - length)
            if total > 1 << PEEK:
                raise ValueError("over-subscribed code")
            limit[length] = total
            first[length] = counts[length - 1] + first[length - 1]
        if total != 1 << PEEK:
            raise ValueError("incomplete code")
        ordered = [0] * size
        at = list(first)
        for symbol, n in enumerate(lengths):
            if n:
                if at[n] >= size:
                    raise ValueError("code length out of range")
                ordered[at[n]] = symbol
                at[n] += 1
        self.limit, self.first, self.ordered = limit, first, ordered

    def read(self, bits: _Bits) -> int:
        prefix = bits.peek(PEEK)
        length = bisect_right(self.limit, prefix, 1)
        index = ((prefix - self.limit[length - 1]) >> (PEEK - length)) + self.first[length]
        if index >= len(self.ordered):
            raise ValueError("bad Huffman code")
        bits.pos += length
        return self.ordered[index]


class _Decoder:
    """One block's decoder: the codes in force and the previous code lengths (the base for the
    deltas; ASPack starts every block from zeros)."""

    def __init__(self, data: bytes, tables: bytes) -> None:
        self.bits = _Bits(data)
        self.tables = tables
        self.previous = bytearray(757)
        self.codes: list[_Code] = []
        self.aligned = False
        bases, total = [], 0
        for k in range(58):
            bases.append(total)
            total += 1 << tables[0x38 + k]
        self.bases = bases

    def read_codes(self) -> None:
        bits = self.bits
        if not bits.bits(1):
            self.previous = bytearray(757)
        pre = _Code([bits.bits(4) for _ in range(19)])
        lengths = bytearray(757)
        last = 0
        n = 0
        while n < 757:
            symbol = pre.read(bits)
            if symbol < 16:
                last = lengths[n] = (self.previous[n] + symbol) & 0xF
                n += 1
                continue
            if symbol == 16:
                run, value = 3 + bits.bits(2), last
            else:
                run, value = (3 + bits.bits(3)) if symbol == 17 else (11 + bits.bits(7)), 0
            run = min(run, 757 - n)
            lengths[n:n + run] = bytes([value]) * run
            n += run
            last = value
        self.codes = [_Code(lengths[:721]), _Code(lengths[721:749]), _Code(lengths[749:757])]
        self.aligned = any(x != 3 for x in lengths[749:757])
        self.previous = lengths

    def decode(self, out: bytearray, start: int, size: int) -> None:
        """Decode ``size`` bytes into ``out`` from ``start`` on."""
        bits, tables = self.bits, self.tables
        self.read_codes()
        recent = [0, 0, 0]
        pos, end = start, start + size
        while pos < end:
            symbol = self.codes[0].read(bits)
            if symbol < 256:
                out[pos] = symbol
                pos += 1
                continue
            if symbol >= 720:
                self.read_codes()
                continue
            slot, length = (symbol - 256) >> 3, ((symbol - 256) & 7) + 2
            if length == 9:
                extra = self.codes[1].read(bits)
                length += tables[extra] + bits.bits(tables[extra + 0x1C])
            value = self.bases[slot]
            extra = tables[0x38 + slot]
            if not self.aligned or extra < 3:
                value += bits.bits(extra)
            else:
                value += bits.bits(extra - 3) * 8 + self.codes[2].read(bits)
            if value < 3:
                distance = recent[value]
                recent[value] = recent[0]
                recent[0] = distance
            else:
                distance = value - 3
                recent[1:3] = recent[0:2]
                recent[0] = distance
            distance += 1
            if distance > pos - start or length > end - pos:
                raise ValueError("match outside the block")
            copy_match(out, pos, pos - distance, length)
            pos += length


def _version(pe: PackedPe) -> Version | None:
    data, entry = pe.data, pe.entry
    if not pe.stub.startswith(STUB_START):
        return None
    for version in VERSIONS:
        if data[entry + version.marker:entry + version.marker + 6] == PUSH_RET:
            return version
    return None


def unpack(pe: PackedPe, limits: UnpackLimits, name: str) -> Unpacked | None:
    """The ASPack-packed program as a PE file; None when ``pe`` is not ASPack's."""
    version = _version(pe)
    if version is None:
        return None
    image, _ = map_image(pe, limits, name, headers=True)
    stub = pe.entry_rva - 1
    tables = bytes(image[stub + version.tables:stub + version.tables + 0x38 + 58])
    if len(tables) < 0x38 + 58:
        raise PackerError("broken", f"{name}: ASPack stub cut short")
    marker = image[stub + version.filter] if stub + version.filter < len(image) else None
    record = stub + version.blocks
    filtered = False
    budget = 2 * len(image)  # blocks do not overlap in ASPack's output: a list that repeats is stopped
    for _ in range(MAX_BLOCKS):
        if record + 8 > len(image):
            raise PackerError("broken", f"{name}: ASPack block list runs out of the image")
        rva, size = struct.unpack_from("<II", image, record)
        if not rva:
            break
        if not size or rva + size > len(image):
            raise PackerError("broken", f"{name}: ASPack block outside the image")
        budget -= size
        if budget < 0:
            raise PackerError("broken", f"{name}: ASPack blocks decode to more than twice the image")
        try:
            _Decoder(bytes(image[rva:rva + size]), tables).decode(image, rva, size)
        except (ValueError, IndexError) as exc:
            raise PackerError("broken", f"{name}: ASPack data: {exc}") from None
        if not filtered and size > 7:
            filtered = True
            _unfilter(image, rva, size, marker)
        record += version.record
    else:
        raise PackerError("broken", f"{name}: more than {MAX_BLOCKS} ASPack blocks")
    secs = pe.sections
    kept = len(secs) - 2 if len(secs) > 2 and stub == secs[-2].virtual_address and not secs[-1].raw_size \
        else len(secs)
    entry = int.from_bytes(image[stub + version.entry:stub + version.entry + 4], "little")
    sections = [(s.virtual_address, s.virtual_size) for s in secs[:kept]]
    dropped = sum(s.virtual_size for s in secs[kept:])
    del image[max(rva + vsize for rva, vsize in sections):]  # ASPack's sections are not kept
    return Unpacked(image_as_file(image, sections, entry, drop=len(secs) - kept, dropped_size=dropped), 0,
                    f"aspack-{version.name}", is_file=True)


def _unfilter(image: bytearray, start: int, size: int, marker: int | None) -> None:
    """Undo ASPack's call filter on the first block: an ``e8``/``e9`` whose operand starts with the
    marker byte holds the target shifted up a byte, made relative to the block here."""
    i = 0
    while i < size - 6:
        at = start + i
        if image[at] in (0xE8, 0xE9) and image[at + 1] == marker:
            target = int.from_bytes(image[at + 1:at + 5], "little") >> 8
            image[at + 1:at + 5] = ((target - i) & 0xFFFF_FFFF).to_bytes(4, "little")
            i += 4
        i += 1
