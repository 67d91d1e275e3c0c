"""ASPack 2.x: clamav-testfiles' clam-aspack.exe unpacked and rebuilt, the Huffman code builder,
and hostile packed files."""

from __future__ import annotations

import hashlib
import random
import struct
import time

import pytest

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.packers.aspack import _Bits, _Code
from bastion.unpack.packers.pe import read_pe32
from tests.test_pe_packers import clamav_testfile, unpack_all

BLOCKS = 0xC00 + 0x57C  # clam-aspack.exe: the stub's file offset + ASPack 2.12's block list
TABLE = 0xC8 + 24 + 224  # its section table
# sha256 of the four sections' data as ClamAV 1.4.6 rebuilds them (its --leave-temps output)
SECTION_SHA256 = "92ca1c268866d9fcb722ecf5a74b110bb36fbf3ec3d84813582bd61b5ced622c"


def test_testfile_unpacks_like_clamav() -> None:
    (child,) = unpack_all(clamav_testfile("clam-aspack.exe"))
    assert isinstance(child, ChildObject) and child.name == "aspack-unpacked"
    assert child.container_path == "t.exe!aspack-unpacked"
    pe = read_pe32(child.data)
    assert pe is not None and pe.entry_rva == 0x1020  # the original entry point, from the stub
    assert [s.virtual_address for s in pe.sections] == [0x1000, 0x2000, 0x3000, 0x4000]  # ASPack's gone
    data = b"".join(child.data[s.raw_offset:s.raw_offset + 0x1000] for s in pe.sections)
    assert hashlib.sha256(data).hexdigest() == SECTION_SHA256
    # clam.exe lies at the end of the last section, where clamscan finds it as an embedded PE
    assert child.data.endswith(clamav_testfile("clam.exe"))


def test_code_builder() -> None:
    code = _Code([1, 2, 3, 3])  # 0, 10, 110, 111
    bits = _Bits(bytes([0b01011011, 0b10000000]))
    assert [code.read(bits) for _ in range(4)] == [0, 1, 2, 3]
    code = _Code([0, 2, 0, 1, 2])  # unused symbols in between: 3 -> 0, 1 -> 10, 4 -> 11
    bits = _Bits(bytes([0b01011000]))
    assert [code.read(bits) for _ in range(3)] == [3, 1, 4]
    for bad in ([1, 1, 1], [1, 2], [0, 0], [18, 1, 1], [2] * 3):
        with pytest.raises(ValueError):
            _Code(bad)
    bits = _Bits(b"\xff")
    with pytest.raises(ValueError):  # past the data and ASPack's zero padding
        for _ in range(0x200):
            bits.bits(24)


def test_hostile_aspack_files() -> None:
    packed = clamav_testfile("clam-aspack.exe")
    big = bytearray(packed)
    struct.pack_into("<I", big, TABLE + 4 * 40 + 8, 0x7FFF_0000)  # ASPack's section's vsize
    (item,) = unpack_all(bytes(big))
    assert isinstance(item, LimitExceeded) and item.limit in ("max-filesize", "max-ratio"), item
    (item,) = unpack_all(packed, UnpackLimits(max_filesize=8192))
    assert isinstance(item, LimitExceeded) and item.limit == "max-filesize"
    huge = bytearray(packed)
    struct.pack_into("<I", huge, BLOCKS + 4, 0x7FFF_FFFF)  # a block of 2 GB
    (item,) = unpack_all(bytes(huge))
    assert isinstance(item, LimitExceeded) and item.limit == "broken"
    loop = bytearray(packed)
    for k in range(3):  # the last block again and again, to the end of the section
        struct.pack_into("<II", loop, BLOCKS + 8 * k, 0x4000, 0x1000)
    for k in range(3, 0x80):
        struct.pack_into("<II", loop, BLOCKS + 8 * k, 0x1000, 0x1000)
    start = time.monotonic()
    (item,) = unpack_all(bytes(loop))
    assert isinstance(item, LimitExceeded) and item.limit == "broken"
    assert time.monotonic() - start < 10
    rnd = random.Random(5)
    start = time.monotonic()
    for _ in range(120):
        junk = bytearray(packed)
        for _ in range(rnd.randint(1, 6)):
            junk[0x600 + rnd.randrange(0x600)] = rnd.randrange(256)  # compressed blocks
        if rnd.random() < 0.3:
            junk[BLOCKS + rnd.randrange(0x20)] = rnd.randrange(256)
        if rnd.random() < 0.2:
            junk[0xC00 + 0x6D6 + rnd.randrange(0x72)] = rnd.randrange(256)  # the stub's tables
        for candidate in (bytes(junk), packed[:rnd.randrange(len(packed))]):
            for got in unpack_all(candidate):
                assert isinstance(got, ChildObject) or got.limit in ("broken", "max-filesize", "max-ratio"), got
    assert time.monotonic() - start < 60
