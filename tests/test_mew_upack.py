"""MEW 11 SE and Upack: clamav-testfiles' clam-mew.exe and clam-upack.exe unpacked and rebuilt
(section bytes compared with ClamAV 1.4.6's rebuild), the aPLib and LZMA decoders on made streams,
and hostile packed files."""

from __future__ import annotations

import hashlib
import io
import lzma
import random
import struct
import time
import zipfile

import pytest

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.packers import aplib, lzma_variant, mew
from bastion.unpack.packers.pe import read_pe32
from tests.test_pe_packers import clamav_testfile, unpack_all

# sha256 of the sections' raw data as ClamAV 1.4.6 rebuilds them (its --leave-temps output)
MEW_SHA256 = "cabe062f7bbfc17586973730f55d667b1a00505240d62f0d68eb9ae4011055ed"
UPACK_SHA256 = "14081697d2d05f26e18800e524ccff5188ae5a92c386046200a7bf3629bc22f5"
BROKEN_OR_LIMIT = ("broken", "max-filesize", "max-ratio")


def _check_child(child: ChildObject | LimitExceeded, packer: str, sections: list[tuple[int, int]],
                 sha256: str, entry: int) -> None:
    assert isinstance(child, ChildObject) and child.name == f"{packer}-unpacked", child
    assert child.container_path == f"t.exe!{packer}-unpacked"
    pe = read_pe32(child.data)
    assert pe is not None and pe.entry_rva == entry
    assert [(s.virtual_address, s.raw_size) for s in pe.sections] == sections
    body = b"".join(child.data[s.raw_offset:s.raw_offset + s.raw_size] for s in pe.sections)
    assert hashlib.sha256(body).hexdigest() == sha256
    archive = zipfile.ZipFile(io.BytesIO(child.data[child.data.find(b"PK\3\4"):]))
    assert archive.read("clam.exe") == clamav_testfile("clam.exe")


def test_mew_testfile_unpacks_like_clamav() -> None:
    (child,) = unpack_all(clamav_testfile("clam-mew.exe"))
    _check_child(child, "mew", [(0x1000 * i, 0x1000) for i in range(1, 6)], MEW_SHA256, 0x1020)


def test_upack_testfile_unpacks_like_clamav() -> None:
    (child,) = unpack_all(clamav_testfile("clam-upack.exe"))
    # ClamAV writes the entry point image-relative (0x20); Bastion keeps the real RVA
    _check_child(child, "upack", [(0x1000, 0x4200)], UPACK_SHA256, 0x1020)


class AplibWriter:
    """MEW's aPLib stream: a tag byte reserved where the first of its 8 bits is needed."""

    def __init__(self, first: int) -> None:
        self.out = bytearray([first])
        self.at, self.left = -1, 0

    def bit(self, value: int) -> None:
        if not self.left:
            self.out.append(0)
            self.at, self.left = len(self.out) - 1, 8
        self.left -= 1
        self.out[self.at] |= value << self.left

    def literal(self, value: int) -> None:
        self.bit(0)
        self.out.append(value)

    def short_match(self, distance: int, three: bool) -> None:
        """``110``: distance < 128 and length 2 or 3 in one byte."""
        for b in (1, 1, 0):
            self.bit(b)
        self.out.append(distance << 1 | three)

    def gamma(self, value: int) -> None:
        bits = bin(value)[3:]
        for i, b in enumerate(bits):
            self.bit(int(b))
            self.bit(int(i + 1 < len(bits)))

    def match(self, distance: int, length: int) -> None:
        """``10``: a gamma-coded match after a literal; 0x80 <= distance < 0x500."""
        self.bit(1)
        self.bit(0)
        self.gamma((distance >> 8) + 3)
        self.out.append(distance & 0xFF)
        self.gamma(length)

    def end(self) -> bytes:
        self.short_match(0, False)
        return bytes(self.out) + b"\0"  # a tag byte may not be the data's last byte


def test_aplib_on_made_streams() -> None:
    w = AplibWriter(ord("a"))
    for c in b"bcdefgh":
        w.literal(c)
    w.short_match(8, True)  # "abc"
    w.literal(ord("!"))
    text = b"abcdefghabc!"
    for c in bytes(range(0x90)):
        w.literal(c)
    text += bytes(range(0x90))
    w.match(0x90, 300)  # a long overlapping run
    text += (bytes(range(0x90)) * 3)[:300]
    data = w.end()
    buf = bytearray(4096)
    buf[2048:2048 + len(data)] = data
    end = aplib.decode(buf, 2048, 2048 + len(data), 0, 2048)
    assert bytes(buf[:end.dst]) == text and end.src == 2048 + len(data) - 1


def test_aplib_bomb_and_damage() -> None:
    w = AplibWriter(0x41)
    for _ in range(0x80):
        w.literal(0x41)
    w.match(0x80, (1 << 31) - 1)  # two gigabytes of "A" in a few bytes
    data = w.end()
    buf = bytearray(1 << 16)
    buf[-len(data):] = data
    start = time.monotonic()
    with pytest.raises(ValueError, match="outside"):
        aplib.decode(buf, len(buf) - len(data), len(buf), 0, 0x8000)
    assert time.monotonic() - start < 1
    w = AplibWriter(0x41)
    w.short_match(5, False)  # reaches before the output
    data = w.end()
    with pytest.raises(ValueError, match="outside"):
        aplib.decode(bytearray(data) + bytearray(64), 0, len(data), len(data), len(data) + 64)
    with pytest.raises(ValueError, match="runs out"):  # no end marker
        aplib.decode(bytearray(b"\x41\x00\x42") + bytearray(64), 0, 3, 3, 67)
    with pytest.raises(ValueError):
        aplib.decode(bytearray(16), 8, 40, 0, 8)  # source outside the buffer


def _raw_lzma(data: bytes, lc: int, pb: int) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW,
                         filters=[{"id": lzma.FILTER_LZMA1, "lc": lc, "lp": 0, "pb": pb}])


def test_lzma_variant_parameters_and_bounds() -> None:
    text = b"MEW and Upack " * 500
    stream = _raw_lzma(text, 4, 2)
    assert lzma_variant.decode(stream, len(text), 4, 0, 2) == text
    assert lzma_variant.decode(b"\x5a" + stream[1:], 100, 4, 0, 2) == text[:100]  # byte 0 ignored
    up = _raw_lzma(text, 3, 0)
    assert lzma_variant.decode(up[1:], len(text), 3, 0, 0, primed=False) == text
    with pytest.raises(ValueError, match="ends after"):
        lzma_variant.decode(stream[:len(stream) // 2], len(text), 4, 0, 2)
    with pytest.raises(ValueError, match="not supported"):  # Upack's shr ebp, 2: lc=6
        lzma_variant.decode(up, 10, 6, 0, 0)
    with pytest.raises(ValueError, match="damaged|ends after"):
        lzma_variant.decode(bytes(stream[:5]) + bytes(64 * [0xFF]), len(text), 4, 0, 2)
    bomb = _raw_lzma(bytes(50_000_000), 4, 2)  # 50 MB of zeros in a few KB: only ``size`` comes out
    start = time.monotonic()
    assert len(lzma_variant.decode(bomb, 4096, 4, 0, 2)) == 4096
    assert time.monotonic() - start < 1


def test_mew_lzma_chunks_and_calls() -> None:
    """MEW's LZMA form after the aPLib chunks: chunk headers, the call filter of the special form."""
    vma = 0x401000
    code = bytes([0x90, 0xE8]) + (0x1234).to_bytes(4, "big") + b"\x90" * 10
    stream = _raw_lzma(code, 4, 2)
    buf = bytearray(0x10000)
    at = 0x100
    header = struct.pack("<III", len(code), vma + 0x2000, len(stream)) + b"\x5d"
    buf[at:at + 8] = struct.pack("<II", len(code), vma + 0x8000)  # special: call count, probabilities
    buf[at + 8:at + 8 + 13 + len(stream)] = header + stream
    mew._lzma_chunks(buf, at, vma, special=True)
    assert buf[0x2000:0x2000 + 2] == b"\x90\xe8"
    assert int.from_bytes(buf[0x2002:0x2006], "little") == 0x1234 - 2
    assert bytes(buf[0x2006:0x2000 + len(code)]) == code[6:]
    plain = bytearray(0x10000)
    chunks = struct.pack("<I", vma + 0x8000)
    for dest, text in ((0x1000, b"first " * 40), (0x3000, b"second " * 40)):
        s = _raw_lzma(text, 4, 2)
        chunks += struct.pack("<III", len(text), vma + dest, len(s)) + b"\x5d" + s
    plain[at:at + len(chunks)] = chunks
    mew._lzma_chunks(plain, at, vma, special=False)
    assert plain[0x1000:0x1000 + 240] == b"first " * 40 and plain[0x3000:0x3000 + 280] == b"second " * 40
    huge = bytearray(plain)
    struct.pack_into("<I", huge, at + 4, 0x7FFF_FFFF)  # a chunk larger than the image
    with pytest.raises(ValueError, match="outside"):
        mew._lzma_chunks(huge, at, vma, special=False)


@pytest.mark.parametrize(("name", "stub_area"), [("clam-mew.exe", (0x154, 0x200)),
                                                 ("clam-upack.exe", (0x18, 0x200))])
def test_hostile_files(name: str, stub_area: tuple[int, int]) -> None:
    packed = clamav_testfile(name)
    pe = read_pe32(packed)
    assert pe is not None
    lfanew = int.from_bytes(packed[0x3C:0x40], "little")
    table = lfanew + 24 + int.from_bytes(packed[lfanew + 20:lfanew + 22], "little")
    big = bytearray(packed)
    struct.pack_into("<I", big, table + 8, 0x7FFF_0000)  # the first section's virtual size
    (item,) = unpack_all(bytes(big))
    assert isinstance(item, LimitExceeded) and item.limit in ("max-filesize", "max-ratio"), item
    (item,) = unpack_all(packed, UnpackLimits(max_filesize=8192))
    assert isinstance(item, LimitExceeded) and item.limit == "max-filesize"
    rnd = random.Random(7)
    kinds: set[str] = set()
    start = time.monotonic()
    for _ in range(150):
        junk = bytearray(packed)
        for _ in range(rnd.randint(1, 6)):
            if rnd.random() < 0.3:
                junk[rnd.randrange(*stub_area)] = rnd.randrange(256)
            else:
                junk[0x200 + rnd.randrange(len(packed) - 0x200)] = rnd.randrange(256)
        for candidate in (bytes(junk), packed[:rnd.randrange(len(packed))]):
            for got in unpack_all(candidate):
                assert isinstance(got, ChildObject) or got.limit in BROKEN_OR_LIMIT, got
                kinds.add(type(got).__name__)
    assert time.monotonic() - start < 30
    assert kinds == {"ChildObject", "LimitExceeded"}  # the damage reached the decoders
