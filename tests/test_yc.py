"""yoda's Crypter: clamav-testfiles' clam-yc.exe recognised as ClamAV recognises it, its two
polymorphic layers read as data (bytecrypt) and the UPX file inside handed on, and hostile files
(decryptors outside the whitelist, damaged, truncated, huge sizes)."""

from __future__ import annotations

import random
import struct
import time

from bastion.formats.executable import Section
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.packers import yc
from bastion.unpack.packers.bytecrypt import translate
from bastion.unpack.packers.pe import read_pe32
from tests.test_clamscan_parity import TESTFILES
from tests.test_pe_packers import clamav_testfile, unpack_all

# clamscan 1.4.6 --debug on clam-yc.exe: "yC: offset: 0, length: b6b", the file cut at 0xc00
OFFSET, ECX, KEPT = 0, 0xB6B, 0xC00
OK = {"broken", "unsupported", "max-filesize", "max-ratio"}


def _limits(items: list[ChildObject | LimitExceeded]) -> list[str]:
    return [i.limit for i in items if isinstance(i, LimitExceeded)]


def test_testfile_decrypted_and_upx_inside() -> None:
    data = clamav_testfile("clam-yc.exe")
    pe = read_pe32(data)
    assert pe is not None and yc.detect(pe) == (OFFSET, ECX)
    items = unpack_all(data)
    assert [type(i) for i in items] == [ChildObject] and items[0].name == "yc-unpacked"
    out = bytes(items[0].data)
    assert len(out) == KEPT
    inner = read_pe32(out)
    assert inner is not None and len(inner.sections) == len(pe.sections) - 1
    pe_at = struct.unpack_from("<I", out, 0x3C)[0]
    assert out[pe_at + 0x18 + 0x68:pe_at + 0x18 + 0x70] == bytes(8)
    # the UPX unpacker takes it from there, and clam.exe's code is inside
    again = unpack_all(out)
    assert [i.name for i in again if isinstance(i, ChildObject)] == ["upx-unpacked"]
    assert (TESTFILES / "clam.exe").read_bytes()[0x1F8:0x220] in bytes(again[0].data)


def _set_layer1(data: bytearray, at: int, raw: bytes) -> None:
    """Make the bytes layer 1 gives at yC-section offset ``at`` ``raw`` (the transform is a
    bijection for each counter value: its table is inverted)."""
    pe = read_pe32(bytes(data))
    assert pe is not None
    base = pe.sections[-1].raw_offset + OFFSET
    program = translate(data[base + 0x93:base + 0x93 + 0x33], 0x30)
    for k, value in enumerate(raw):
        i = at + k - 0xC6
        data[base + at + k] = program.table(ECX - i).index(value)


def test_hostile_decryptors() -> None:
    data = clamav_testfile("clam-yc.exe")
    pe = read_pe32(data)
    assert pe is not None
    first = pe.entry + 0x33  # layer 1's decryptor, entry + 0x33 = yC section + 0x93
    for raw in (b"\x88\x06", b"\xe8\x00\x00\x00\x00", b"\xeb\xfe", b"\xeb\x7f", b"\xcd\x80", b"\xff\xd0"):
        bad = bytearray(data)
        bad[first + 4:first + 4 + len(raw)] = raw
        assert _limits(unpack_all(bytes(bad))) == ["unsupported"], raw
    for raw in (b"\x88\x06", b"\xc3", b"\x02\xc3"):  # layer 2's decryptor, under layer 1
        bad = bytearray(data)
        _set_layer1(bad, 0x457 + 2, raw)
        assert _limits(unpack_all(bytes(bad))) == ["unsupported"], raw
    # the loop's end (stosb; loop) or the length check gone: not yC
    for at, value in ((0x63, 0x90), (0x14, 0x00)):
        bad = bytearray(data)
        bad[pe.entry + at] ^= value or 0xFF
        bad_pe = read_pe32(bytes(bad))
        assert bad_pe is not None and yc.detect(bad_pe) is None


def test_hostile_files() -> None:
    data = clamav_testfile("clam-yc.exe")
    pe = read_pe32(data)
    assert pe is not None
    pe_at = struct.unpack_from("<I", data, 0x3C)[0]
    table = pe_at + 0x18 + struct.unpack_from("<H", data, pe_at + 0x14)[0]
    # huge SizeOfRawData in every section header: clipped to the file, never read past it
    bad = bytearray(data)
    for j in range(len(pe.sections)):
        struct.pack_into("<I", bad, table + 0x28 * j + 0x10, 0xFFFF_FFF0)
    for item in unpack_all(bytes(bad)):
        assert isinstance(item, ChildObject) and len(item.data) <= len(data) or item.limit in OK
    # over max-filesize
    assert _limits(unpack_all(data, UnpackLimits(max_filesize=len(data) - 1))) == ["max-filesize"]
    # truncated anywhere and random damage: never an exception; a yC child is never larger than the
    # file (a file that is no longer yC may still be UPX's)
    start = time.monotonic()
    rng = random.Random(4)
    cases = [data[:n] for n in range(0, len(data), 97)]
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(rng.randrange(1, 20)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        cases.append(bytes(bad))
    for case in cases:
        for item in unpack_all(case):
            if isinstance(item, ChildObject):
                assert item.name != "yc-unpacked" or len(item.data) <= len(case)
            else:
                assert item.limit in OK, item
    assert time.monotonic() - start < 60


def _variant_pe(stub: bytes, size: int = 0x4000) -> yc.PackedPe:
    sections = (Section(0x400, 0x200, 0x1000, 0x1000), Section(0x600, 0x3000, 0x2000, 0x3000))
    return yc.PackedPe(bytes(size), 0x400000, 0x2060, 0x660, sections, stub)


def test_detect_variants() -> None:
    a = 0x401000
    modified = bytearray(0x100)  # yC 1.x/modified: offset -0x18, ecx the immediate of mov ecx
    modified[:9] = bytes.fromhex("60e8000000005d81ed")
    struct.pack_into("<IBIH I", modified, 9, a, 0xB9, 0x900, 0xBD8D, a + 0x48)
    modified[0x18:0x1B] = b"\x8b\xf7\xac"
    modified[0x4B:0x4E] = b"\xaa\xe2\xcc"
    assert yc.detect(_variant_pe(bytes(modified))) == (-0x18, 0x900)
    variant = bytearray(0x100)  # yC 1.3 variant: offset 0x10, ecx the difference of two immediates
    variant[:9] = bytes.fromhex("558bec83ec40535657")
    variant[0x17:0x1F] = bytes.fromhex("e8000000005d81ed")
    struct.pack_into("<IBI", variant, 0x1F, a, 0xB9, a + 0x1A00)
    struct.pack_into("<I", variant, 0x2A, a + 0x100)
    struct.pack_into("<I", variant, 0x32, a + 0x5A)
    variant[0x73:0x76] = b"\xaa\xe2\xcc"
    assert yc.detect(_variant_pe(bytes(variant))) == (0x10, 0x1900)
    # the layer out of the file, a length out of (0x800, 0x2000), the entry elsewhere: not yC
    assert yc.detect(_variant_pe(bytes(variant), 0x600 + 0xC6 + 0x1900)) is None
    struct.pack_into("<I", variant, 0x2A, a - 0x800)
    assert yc.detect(_variant_pe(bytes(variant))) is None
    moved = _variant_pe(bytes(modified))
    assert yc.detect(yc.PackedPe(moved.data, moved.image_base, 0x2061, 0x661, moved.sections, moved.stub)) is None
