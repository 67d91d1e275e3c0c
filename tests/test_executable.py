"""PE / ELF / Mach-O header parsing for EP and section offsets, including hostile headers."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from bastion.formats.executable import parse_executable


def make_pe(entry_rva: int = 0x1010, plus: bool = False) -> bytes:
    """A minimal PE: one .text section at RVA 0x1000, raw 0x200..0x400."""
    opt_size = 240 if plus else 224
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x14C, 1, 0, 0, 0, opt_size, 0x102)
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B if plus else 0x10B)
    struct.pack_into("<I", opt, 16, entry_rva)
    struct.pack_into("<II", opt, 32, 0x1000, 0x200)  # section / file alignment
    struct.pack_into("<I", opt, 60, 0x200)            # SizeOfHeaders
    section = b".text\0\0\0" + struct.pack("<IIII", 0x180, 0x1000, 0x200, 0x200) + bytes(16)
    head = bytes(dos) + coff + bytes(opt) + section
    body = bytes(range(256)) * 2
    return head + bytes(0x200 - len(head)) + body


def make_elf64(entry: int = 0x401008) -> bytes:
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QQQ", ehdr, 24, entry, 64, 64 + 56)
    struct.pack_into("<HHHH", ehdr, 54, 56, 1, 64, 2)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0x401000, 0x401000, 0x100, 0x100, 0x1000)
    null_sh = bytes(64)
    text_sh = struct.pack("<IIQQQQIIQQ", 1, 1, 6, 0x401000, 0x1000, 0x100, 0, 0, 16, 0)
    data = bytes(ehdr) + phdr + null_sh + text_sh
    return data + bytes(0x1000 - len(data)) + bytes(range(256))


def test_pe32_and_pe32plus() -> None:
    for plus in (False, True):
        info = parse_executable(make_pe(plus=plus))
        assert info is not None and info.kind == "pe"
        assert info.entry_point == 0x210
        assert [(s.raw_offset, s.raw_size, s.virtual_address) for s in info.sections] == [(0x200, 0x200, 0x1000)]


def test_pe_entry_outside_sections() -> None:
    info = parse_executable(make_pe(entry_rva=0x9000))
    assert info is not None and info.entry_point is None


def test_elf64_entry_through_pt_load_and_sections_with_null_section() -> None:
    info = parse_executable(make_elf64())
    assert info is not None and info.kind == "elf"
    assert info.entry_point == 0x1008
    assert [s.raw_offset for s in info.sections] == [0, 0x1000]  # index 0 is the NULL section, as in ClamAV


@pytest.mark.parametrize("path", ["/bin/ls", "/usr/share/clamav-testfiles/clam.exe"])
def test_real_binaries(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} not installed")
    info = parse_executable(Path(path).read_bytes())
    assert info is not None and info.entry_point is not None and info.sections


def test_macho64_lc_main_entry_is_zero_as_in_clamav() -> None:
    # checked with clamscan 1.4.6: for LC_MAIN (and non-PowerPC thread states) ClamAV's entry point is 0
    header = struct.pack("<IIIIIIII", 0xFEEDFACF, 0x01000007, 3, 2, 2, 0, 0, 0)
    seg = struct.pack("<II16sQQQQIIII", 0x19, 72 + 80, b"__TEXT", 0x100000000, 0x2000, 0, 0x2000, 7, 5, 1, 0)
    sect = struct.pack("<16s16sQQIIIIIIII", b"__text", b"__TEXT", 0x100000f00, 0x80, 0xf00, 4, 0, 0, 0, 0, 0, 0)
    main = struct.pack("<IIQQ", 0x80000028, 24, 0xf10, 0)
    data = header + seg + sect + main
    data += bytes(0x1000 - len(data))
    info = parse_executable(data)
    assert info is not None and info.kind == "macho"
    assert info.entry_point == 0 and info.sections[0].raw_offset == 0xf00


def test_truncated_and_corrupted_headers_never_raise() -> None:
    started = time.monotonic()
    for sample in (make_pe(), make_pe(plus=True), make_elf64()):
        for cut in range(len(sample[:700])):
            parse_executable(sample[:cut])
        for pos in range(0, 400):
            for value in (0x00, 0xFF, 0x7F):
                mutated = bytearray(sample)
                mutated[pos] = value
                parse_executable(bytes(mutated))
    for _ in range(2000):
        parse_executable(b"MZ" + os.urandom(300))
        parse_executable(b"\x7fELF" + os.urandom(300))
    assert time.monotonic() - started < 30
