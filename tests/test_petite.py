"""Petite 2.x: clamav-testfiles' clam-petite.exe unpacked and rebuilt, the decoder on hand-made
streams, and hostile packed files."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import time
import zipfile

import pytest

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.packers.pe import read_pe32
from bastion.unpack.packers.petite import decode_section
from tests.test_pe_packers import clamav_testfile, unpack_all

RECORDS = 0x400 + 0x1B8  # clam-petite.exe: the packer's section's file offset + 0x1b8
# sha256 of the three decoded sections as ClamAV 1.4.6 rebuilds them (its --leave-temps output)
SECTION_SHA256 = "532f9bcae215e69c0bfbc12da5144362e9ecde8890b6342c7b9dc5f3160e163a"


class StreamWriter:
    """Petite's bit stream: a byte for the next 8 bits is reserved where the first of them is
    needed; literal bytes go in between."""

    def __init__(self, first: int) -> None:
        self.out = bytearray([first])
        self.at = -1
        self.left = 0

    def bit(self, value: int) -> None:
        if not self.left:
            self.out.append(0)
            self.at, self.left = len(self.out) - 1, 8
        self.left -= 1
        self.out[self.at] |= value << self.left

    def gamma(self, value: int) -> None:
        """A number >= 2 as (bit, more) pairs after its leading 1."""
        bits = bin(value)[3:]
        for i, b in enumerate(bits):
            self.bit(int(b))
            self.bit(int(i + 1 < len(bits)))

    def literal(self, value: int, remaining: int) -> None:
        self.bit(0)
        self.out.append(value ^ (remaining & 0xFF))

    def match(self, distance: int, length: int, extra: int = 5) -> None:
        """A match ``distance`` back (a small one: no far-distance bonus) of ``length`` >= 5."""
        self.bit(1)
        number = distance - 1
        self.gamma((number >> extra) + 3)
        for k in range(extra - 1, -1, -1):
            self.bit(number >> k & 1)
        self.bit(0)
        self.bit(0)
        self.gamma(length - 1 - 2)


def test_testfile_unpacks_like_clamav() -> None:
    (child,) = unpack_all(clamav_testfile("clam-petite.exe"))
    assert isinstance(child, ChildObject) and child.name == "petite-unpacked"
    assert child.container_path == "t.exe!petite-unpacked"
    pe = read_pe32(child.data)
    assert pe is not None
    assert [(s.virtual_address, s.virtual_size) for s in pe.sections] == \
        [(0x1000, 0x1000), (0x2000, 0x2000), (0x4000, 0x1000)]
    sizes = (0xF7, 0x123, 0xFFC)  # the raw sizes ClamAV's rebuild gives the sections
    data = b"".join(child.data[s.raw_offset:s.raw_offset + n] for s, n in zip(pe.sections, sizes, strict=True))
    assert hashlib.sha256(data).hexdigest() == SECTION_SHA256
    # the program carries clam.exe in a zip: what clamscan reports the hash on
    archive = zipfile.ZipFile(io.BytesIO(child.data[child.data.find(b"PK\3\4"):]))
    assert archive.read("clam.exe") == clamav_testfile("clam.exe")


def test_decoder_on_made_streams() -> None:
    w = StreamWriter(ord("a"))
    text = b"abcdefgh"
    for i, c in enumerate(text[1:]):
        w.literal(c, 1000 - 1 - i)
    w.match(8, 992)
    image = bytearray(4096)
    image[2048:2048 + len(w.out)] = w.out
    assert decode_section(image, 2048, 0, 1000) == 1000
    assert bytes(image[:1000]) == (text * 125)[:1000]


def test_decoder_bomb_and_damage() -> None:
    w = StreamWriter(0x41)
    w.match(1, 1 << 30)  # a gigabyte of "A" in a few bytes: more than the section's size
    image = bytearray(1 << 16)
    image[-len(w.out):] = w.out
    start = time.monotonic()
    with pytest.raises(ValueError, match="outside"):
        decode_section(image, len(image) - len(w.out), 0, 0x8000)
    assert time.monotonic() - start < 1
    w = StreamWriter(0x41)
    w.match(5, 10)  # reaches before the section
    image = bytearray(64)
    image[32:32 + len(w.out)] = w.out
    with pytest.raises(ValueError):
        decode_section(image, 32, 0, 11)
    with pytest.raises(ValueError, match="runs out"):  # the data ends before the section is full
        decode_section(bytearray(8) + b"\x41\x00\x01\x02", 8, 0, 8)
    with pytest.raises(ValueError):
        decode_section(bytearray(16), 0, 8, 100)  # a section larger than the image


def test_hostile_petite_files() -> None:
    packed = clamav_testfile("clam-petite.exe")
    big = bytearray(packed)
    struct.pack_into("<I", big, 0xF0 + 24 + 224 + 3 * 40 + 8, 0x7FFF_0000)  # the last section's vsize
    (item,) = unpack_all(bytes(big))
    assert isinstance(item, LimitExceeded) and item.limit in ("max-filesize", "max-ratio"), item
    (item,) = unpack_all(packed, UnpackLimits(max_filesize=8192))
    assert isinstance(item, LimitExceeded) and item.limit == "max-filesize"
    huge = bytearray(packed)
    struct.pack_into("<I", huge, RECORDS + 4, 0x7FFF_FFFF)  # a section of 2 GB
    (item,) = unpack_all(bytes(huge))
    assert isinstance(item, LimitExceeded) and item.limit == "broken"
    endless = bytearray(packed)
    struct.pack_into("<III", endless, RECORDS, 0x8000_0001, 0x5000 + 0x1B8 + 12, 0x5000 + 0x1B8)
    (item,) = unpack_all(bytes(endless))  # a move that rewrites its own record: bounded
    assert isinstance(item, (LimitExceeded, ChildObject))
    rnd = random.Random(11)
    start = time.monotonic()
    for _ in range(150):
        junk = bytearray(packed)
        for _ in range(rnd.randint(1, 6)):
            junk[0x800 + rnd.randrange(0x800)] = rnd.randrange(256)  # the compressed sections
        if rnd.random() < 0.3:
            junk[RECORDS + rnd.randrange(0x50)] = rnd.randrange(256)
        for candidate in (bytes(junk), packed[:rnd.randrange(len(packed))]):
            for got in unpack_all(candidate):
                assert isinstance(got, ChildObject) or got.limit in ("broken", "max-filesize", "max-ratio"), got
    assert time.monotonic() - start < 30
