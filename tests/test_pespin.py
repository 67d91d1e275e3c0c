"""PESpin 1.1: clamav-testfiles' clam-pespin.exe recognised, its layers decrypted (checked against
the values clamscan 1.4.6 --debug prints) and unpacked to clam.exe's code, the data steps on made
sections, and hostile files (damaged or non-whitelisted poly snippets among them)."""

from __future__ import annotations

import random
import time

import pytest

from bastion.formats.executable import Section
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.packers import pespin
from bastion.unpack.packers.pe import PackedPe, PackerError, read_pe32
from tests.aplib_encoder import compress
from tests.test_clamscan_parity import TESTFILES
from tests.test_pe_packers import clamav_testfile, unpack_all

# clamscan 1.4.6 --debug on clam-pespin.exe: "Key8 is 91", "Key is 47b3f060, Len is 5a0",
# "Key32 is 3523a0f5 - XORbitmap is b", "Key is 43a806db, Len is 180", "Compression bitmap is 8"
# "POLYbitmap is b"
KEY8, KEY2, KEY32, XOR_BITMAP, KEY5, COMPRESS_BITMAP = 0x91, 0x47B3F060, 0x3523A0F5, 0xB, 0x43A806DB, 0x8
POLY_BITMAP = 0xB


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "little")


def test_testfile_layers_match_clamav() -> None:
    data = clamav_testfile("clam-pespin.exe")
    pe = read_pe32(data)
    assert pe is not None and pespin.detect(pe)
    spin = pespin.decrypt_stub(pe, "t.exe")
    assert spin is not None
    assert data[pe.entry + 0xDC] == KEY8
    assert _u32(spin.stub, spin.ep + 0x26EB) == KEY2
    assert _u32(spin.stub, spin.ep + 0x650) == KEY5
    assert (spin.xor_bitmap, spin.compress_bitmap, spin.resources_rva) == (XOR_BITMAP, COMPRESS_BITMAP, 0)
    assert pespin.section_key(pe, spin) == KEY32
    # step 6 read as data: "POLYbitmap is b"; then decompressed and rebuilt around clam.exe's code
    layers = pespin.undo_layers(pe, spin, "t.exe")
    assert _u32(layers, pe.sections[-1].raw_offset + spin.ep + 0x6F1) == POLY_BITMAP
    items = unpack_all(data)
    assert [type(i) for i in items] == [ChildObject] and items[0].name == "pespin-unpacked"
    child = bytes(items[0].data)
    assert read_pe32(child) is not None
    exe = (TESTFILES / "clam.exe").read_bytes()
    assert exe[0x1F8:0x220] in child and exe[0x400:] in child


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


def _patch_decrypted_bytes(data: bytearray, at: int, raw: bytes) -> None:
    """Make the bytes decrypt_stub gives at entry offset ``at`` (under its XOR layers) ``raw``."""
    pe = read_pe32(bytes(data))
    assert pe is not None
    spin = pespin.decrypt_stub(pe, "t")
    assert spin is not None
    last = pe.sections[-1]
    now = spin.stub[spin.ep + at:spin.ep + at + len(raw)]
    base = last.raw_offset + spin.ep + at
    data[base:base + len(raw)] = bytes(a ^ b ^ c for a, b, c in zip(data[base:base + len(raw)], now, raw,
                                                                    strict=True))


def _patch_decrypted(data: bytearray, at: int, value: int) -> None:
    """Set the u32 that decrypt_stub reads at stub offset ``at`` (under layer 2) to ``value``."""
    _patch_decrypted_bytes(data, at, value.to_bytes(4, "little"))


def test_hostile_pespin_files() -> None:
    data = clamav_testfile("clam-pespin.exe")
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
    # the poly snippet at + 0x28ec (step 6): a memory write, a call, no stosb after it, a jump back
    # onto itself, a jump out of it: "unsupported", nothing run
    for at, raw in ((0, b"\x88\x06"), (0x16, b"\xe8\0\0\0\0"), (0x24, b"\x90"), (0x13, b"\xeb\xfe"),
                    (0, b"\xeb\x7f")):
        bad = bytearray(data)
        _patch_decrypted_bytes(bad, 0x28EC + at, raw)
        items = unpack_all(bytes(bad))
        assert [i.limit for i in items if isinstance(i, LimitExceeded)] == ["unsupported"], (at, items)
    # a changed constant is still a whitelisted snippet: it decodes the sections to garbage, which
    # does not decompress ("broken") or, at worst, gives a child without clam.exe's code
    bad = bytearray(data)
    _patch_decrypted_bytes(bad, 0x28EC + 3, b"\x00")  # add al, 0xc3 -> add al, 0
    for item in unpack_all(bytes(bad)):
        assert isinstance(item, LimitExceeded) and item.limit in ok or \
            (TESTFILES / "clam.exe").read_bytes()[0x1F8:0x220] not in bytes(item.data)
    # truncated anywhere and random damage: never an exception; a child only for a file whose
    # damage left the layers whole (outside the checksummed bytes), and then a PE
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
            if isinstance(item, ChildObject):
                assert read_pe32(bytes(item.data)) is not None
            else:
                assert item.limit in ok, item
    assert time.monotonic() - start < 60


def test_huge_poly_sections_are_bounded() -> None:
    # a section that says it is larger than the file: refused before any byte is transformed
    data = bytearray(0x800)
    with pytest.raises(PackerError) as err:
        pespin.run_snippet(data, 0, 0x100, 0x7FFF_FFFF, "t")
    assert err.value.kind == "unsupported"  # all zeros: "add [eax], al" is outside the whitelist
    data[:0x25] = bytes.fromhex("90" * 0x24 + "aa")
    with pytest.raises(PackerError) as err:
        pespin.run_snippet(data, 0, 0x100, 0x7FFF_FFFF, "t")
    assert err.value.kind == "broken"
    with pytest.raises(PackerError) as err:  # a range over its own snippet
        pespin.run_snippet(data, 0x10, 0, 0x100, "t")
    assert err.value.kind == "unsupported"
    start = time.monotonic()
    big = bytearray(4 << 20)
    big[:0x25] = bytes.fromhex("02c1" * 0x12 + "aa")
    pespin.run_snippet(big, 0, 0x100, len(big) - 0x100, "t")
    assert time.monotonic() - start < 5
