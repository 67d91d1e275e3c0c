"""PESpin 1.1: clamav-testfiles' clam-pespin.exe recognised and its data layers decrypted (checked
against the values clamscan 1.4.6 --debug prints), the data steps after the per-file x86 layer on
made sections, and hostile files."""

from __future__ import annotations

import random
import time

import pytest

from bastion.formats.executable import Section
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.packers import pespin
from bastion.unpack.packers.pe import PackedPe, PackerError, read_pe32
from bastion.unpack.pe_packers import PePackerUnpacker
from tests.aplib_encoder import compress
from tests.test_clamscan_parity import TESTFILES

# clamscan 1.4.6 --debug on clam-pespin.exe: "Key8 is 91", "Key is 47b3f060, Len is 5a0",
# "Key32 is 3523a0f5 - XORbitmap is b", "Key is 43a806db, Len is 180", "Compression bitmap is 8"
KEY8, KEY2, KEY32, XOR_BITMAP, KEY5, COMPRESS_BITMAP = 0x91, 0x47B3F060, 0x3523A0F5, 0xB, 0x43A806DB, 0x8


def _testfile() -> bytes:
    if not (TESTFILES / "clam-pespin.exe").exists():
        pytest.skip("clamav-testfiles is not installed")
    return (TESTFILES / "clam-pespin.exe").read_bytes()


def unpack_all(data: bytes, limits: UnpackLimits | None = None) -> list[ChildObject | LimitExceeded]:
    return list(PePackerUnpacker().children(data, "t.exe", limits or UnpackLimits()))


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "little")


def test_testfile_layers_match_clamav() -> None:
    data = _testfile()
    pe = read_pe32(data)
    assert pe is not None and pespin.detect(pe)
    spin = pespin.decrypt_stub(pe, "t.exe")
    assert spin is not None
    assert data[pe.entry + 0xDC] == KEY8
    assert _u32(spin.stub, spin.ep + 0x26EB) == KEY2
    assert _u32(spin.stub, spin.ep + 0x650) == KEY5
    assert (spin.xor_bitmap, spin.compress_bitmap, spin.resources_rva) == (XOR_BITMAP, COMPRESS_BITMAP, 0)
    assert pespin.section_key(pe, spin) == KEY32
    # recognised, and reported: step 6 (the per-file x86 snippet) is not interpreted
    items = unpack_all(data)
    assert [type(i) for i in items] == [LimitExceeded] and items[0].limit == "unsupported"
    assert "x86" in items[0].detail


def test_lfsr_and_checksum() -> None:
    data = bytearray(random.Random(1).randbytes(300))
    before = bytes(data)
    pespin.lfsr_xor(data, 10, 200, 0x12345678, 0xED43AF31, False)
    assert data[:10] == before[:10] and data[210:] == before[210:] and data != before
    pespin.lfsr_xor(data, 10, 200, 0x12345678, 0xED43AF31, False)
    assert data == before
    assert pespin.checksum(b"") == 0xFFFFFFFF
    assert pespin.checksum(b"a") != pespin.checksum(b"b")


def _fake_pe(data: bytes, sections: list[Section]) -> PackedPe:
    return PackedPe(data, 0x400000, sections[-1].virtual_address, sections[-1].raw_offset,
                    tuple(sections), b"")


def test_grow_and_rebuild_sections() -> None:
    rng = random.Random(5)
    code = (rng.randbytes(40) * 110)[:0x1000]
    resources_head, resources_tail = b"RSRC" * 64, b"icon" * 500
    packed_code, packed_tail = compress(code), compress(resources_tail)
    plain = rng.randbytes(0x200)
    data = bytearray(0x400)
    sections = []
    for body, vsize in ((packed_code, 0x1000), (plain, 0x1000), (resources_head + packed_tail, 0x1000),
                        (bytes(0x200), 0x1000)):
        sections.append(Section(len(data), len(body), 0x1000 * (len(sections) + 1), vsize))
        data += body
    pe = _fake_pe(bytes(data), sections)
    grown = pespin.grow_sections(bytes(data), pe, 0b1, 0x3000 + len(resources_head), UnpackLimits(), "t")
    assert [(rva, vsize) for rva, vsize, _ in grown] == [(0x1000, 0x1000), (0x2000, 0x1000), (0x3000, 0x1000)]
    assert grown[0][2] == code and grown[1][2] == plain
    assert grown[2][2] == (resources_head + resources_tail).ljust(0x1000, b"\0")
    rebuilt = pespin.rebuild_sections(grown)
    again = read_pe32(rebuilt)
    assert again is not None and len(again.sections) == 3 and code in rebuilt
    # damage in a compressed section is "broken"; a resource tail that does not decode is kept
    with pytest.raises(PackerError) as err:
        pespin.grow_sections(bytes(data), pe, 0b101, 0, UnpackLimits(), "t")
    assert err.value.kind == "broken"
    kept = pespin.grow_sections(bytes(data), pe, 0b1, 0x3002, UnpackLimits(), "t")
    assert kept[2][2] == bytes(data[sections[2].raw_offset:sections[2].raw_offset + sections[2].raw_size])
    # declared sizes over the limits are refused before anything is decoded
    huge = [Section(s.raw_offset, s.raw_size, s.virtual_address, 0x7FFF_0000) for s in sections]
    with pytest.raises(PackerError) as err:
        pespin.grow_sections(bytes(data), _fake_pe(bytes(data), huge), 0b1, 0, UnpackLimits(), "t")
    assert err.value.kind in ("max-filesize", "max-ratio")


def test_xor_sections_bounds() -> None:
    data = bytearray(0x800)
    sections = [Section(0x400, 0x200, 0x1000, 0x1000), Section(0x600, 0, 0x2000, 0x1000),
                Section(0x600, 0x200, 0x3000, 0x1000)]
    pe = _fake_pe(bytes(data), sections)
    pespin.xor_sections(data, pe, 0b1, 0x1234, "t")
    assert any(data[0x400:0x600]) and not any(data[0x600:])
    with pytest.raises(PackerError):  # a section with no raw data cannot be XOR'd (ClamAV: gives up)
        pespin.xor_sections(data, pe, 0b10, 0x1234, "t")


def _patch_decrypted(data: bytearray, at: int, value: int) -> None:
    """Set the u32 that decrypt_stub reads at stub offset ``at`` (under layer 2) to ``value``."""
    pe = read_pe32(bytes(data))
    assert pe is not None
    spin = pespin.decrypt_stub(pe, "t")
    assert spin is not None
    last = pe.sections[-1]
    delta = (_u32(spin.stub, spin.ep + at) ^ value).to_bytes(4, "little")
    base = last.raw_offset + spin.ep + at
    data[base:base + 4] = bytes(a ^ b for a, b in zip(data[base:base + 4], delta, strict=True))


def test_hostile_pespin_files() -> None:
    data = _testfile()
    pe = read_pe32(data)
    assert pe is not None
    ok = {"broken", "unsupported", "max-filesize", "max-ratio"}
    # a missing version marker: not PESpin 1.1, nothing reported
    for at in (0xDB, 0xE0, 0xE1):
        bad = bytearray(data)
        bad[pe.entry + at] ^= 0xFF
        assert unpack_all(bytes(bad)) == []
    # the checksum length out of the file: broken
    bad = bytearray(data)
    _patch_decrypted(bad, 0x429, len(data) + 5)
    items = unpack_all(bytes(bad))
    assert [i.limit for i in items if isinstance(i, LimitExceeded)] == ["broken"]
    # the file over max-filesize
    items = unpack_all(data, UnpackLimits(max_filesize=len(data) - 1))
    assert [i.limit for i in items if isinstance(i, LimitExceeded)] == ["max-filesize"]
    # truncated anywhere and random damage: never an exception, never a child
    start = time.monotonic()
    rng = random.Random(11)
    cases = [data[:n] for n in range(0, len(data), 509)]
    for _ in range(150):
        bad = bytearray(data)
        for _ in range(rng.randrange(1, 30)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        cases.append(bytes(bad))
    for case in cases:
        for item in unpack_all(case):
            assert isinstance(item, LimitExceeded) and item.limit in ok, item
    assert time.monotonic() - start < 60
