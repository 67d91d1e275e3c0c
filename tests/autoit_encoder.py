"""A small AutoIt block writer for tests: the layout described in ``src/bastion/unpack/autoit.py``,
the keystreams of ``autoit_crypt.py`` and a greedy compressor for the EA05/EA06 bit stream.

Its output is checked against clamscan in ``tests/test_autoit.py`` (clamscan finds and scans the files
it packs), so a block it makes is known-good independently of Bastion's reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bastion.unpack.autoit import EA05, EA06, SCRIPT_TYPE, SIGNATURE, Layout
from bastion.unpack.autoit_crypt import xor


class BitWriter:
    """Bits most significant first, in 16-bit big-endian words."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def put(self, value: int, n: int) -> None:
        for i in range(n - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.count += 1
            if self.count == 16:
                self.out += self.acc.to_bytes(2, "big")
                self.acc = self.count = 0

    def finish(self) -> bytes:
        if self.count:
            self.put(0, 16 - self.count)
        return bytes(self.out)


def put_length(bits: BitWriter, length: int) -> None:
    """A match length (3 or more) in the nested all-ones code."""
    rest = length - 3
    for width, top in ((2, 3), (3, 7), (5, 31)):
        if rest < top:
            bits.put(rest, width)
            return
        bits.put(top, width)
        rest -= top
    while rest >= 255:
        bits.put(255, 8)
        rest -= 255
    bits.put(rest, 8)


def compress(data: bytes, layout: Layout, declared: int | None = None) -> bytes:
    """``data`` as a ``layout`` stream (magic, big-endian size, bits): greedy matches of 3 bytes or
    more found through a table of the last position of each 3-byte string."""
    bits = BitWriter()
    match = layout.match_flag
    last: dict[bytes, int] = {}
    i = 0
    while i < len(data):
        key = data[i:i + 3]
        j = last.get(key)
        length = 0
        if j is not None and len(key) == 3 and i - j < 0x8000:
            while i + length < len(data) and data[j + length] == data[i + length] and length < 5000:
                length += 1
        if length >= 3:
            bits.put(match, 1)
            bits.put(i - j, 15)
            put_length(bits, length)
            for k in range(i, i + length):
                last[data[k:k + 3]] = k
            i += length
        else:
            bits.put(1 - match, 1)
            bits.put(data[i], 8)
            last[key] = i
            i += 1
    size = len(data) if declared is None else declared
    return layout.stream_magic + size.to_bytes(4, "big") + bits.finish()


@dataclass
class Entry:
    """One file of a block: its content, type string and original path; ``stored`` keeps it
    uncompressed (an empty one is always stored: a compressed size of 0); ``raw_stream`` replaces the
    compressed stream (before encryption)."""

    content: bytes
    kind: str = "FILE"
    path: str = "C:\\payload.bin"
    stored: bool = False
    raw_stream: bytes | None = None


def _string(layout: Layout, text: str, key: int, seed: int) -> bytes:
    encoded = text.encode("utf-16-le") if layout is EA06 else text.encode("latin-1")
    count = len(text)
    return struct.pack("<I", count ^ key) + xor(encoded, layout.keystream(count + seed, len(encoded)))


def block(entries: list[Entry], layout: Layout = EA06, trailer: bool = True) -> bytes:
    """An AutoIt block: the signature, 16 bytes, the entries and (``trailer``) an end marker."""
    sixteen = bytes(range(16))
    out = bytearray(SIGNATURE + layout.stream_magic[-1:] + sixteen)
    seed = layout.data_seed + (sum(sixteen) if layout is EA05 else 0)
    for e in entries:
        if e.stored or (not e.content and e.raw_stream is None):
            stream = e.content
        else:
            stream = e.raw_stream if e.raw_stream is not None else compress(e.content, layout)
        out += struct.pack("<I", layout.file_magic)
        out += _string(layout, e.kind, layout.type_key, layout.type_seed)
        # the path's keystream seed is not read by the unpacker (EA05 0xF25E, EA06 0xF479)
        out += _string(layout, e.path, layout.path_key, 0xF25E if layout is EA05 else 0xF479)
        out += bytes([0 if e.stored else 1])
        out += struct.pack("<III", len(stream) ^ layout.size_key, len(e.content) ^ layout.size_key,
                           0x12345678 ^ layout.checksum_key)
        out += b"\0" * 16
        out += xor(stream, layout.keystream(seed, len(stream)))
    if trailer:
        out += b"AU3!EA0" + layout.stream_magic[-1:]
    return bytes(out)


# ------------------------------------------------------------------------------- EA06 script tokens
def tok_line() -> bytes:
    return b"\x7f"


def tok_keyword(n: int) -> bytes:
    return b"\x00" + struct.pack("<I", n)


def tok_function(n: int) -> bytes:
    return b"\x01" + struct.pack("<I", n)


def tok_int(v: int) -> bytes:
    return b"\x05" + struct.pack("<I", v)


def tok_int64(v: int) -> bytes:
    return b"\x10" + struct.pack("<Q", v)


def tok_double(v: float) -> bytes:
    return b"\x20" + struct.pack("<d", v)


def tok_text(op: int, text: str | bytes) -> bytes:
    """A string-like token (0x30-0x37): UTF-16 characters XORed with the count."""
    raw = text.encode("utf-16-le") if isinstance(text, str) else text
    count = len(raw) // 2
    key = bytes((count & 0xFF, (count >> 8) & 0xFF)) * count
    return bytes([op]) + struct.pack("<I", count) + xor(raw, key)


def tok_op(op: str) -> bytes:
    from bastion.unpack.autoit_tokens import OPERATORS

    return bytes([0x40 + OPERATORS.index(op.encode())])


def script(lines: list[bytes]) -> bytes:
    """A token stream of ``lines`` (each a run of tokens; the line end is added)."""
    return struct.pack("<I", len(lines)) + b"".join(line + tok_line() for line in lines)


SCRIPT = SCRIPT_TYPE.decode()
