"""Executable headers the engine needs: entry point and sections of PE, ELF and Mach-O files.

Body-signature offsets ``EP+n``, ``Sx+n``, ``SL+n`` and ``SEx`` are resolved against what this
module returns.  Offsets are file offsets, converted from virtual addresses the way ClamAV does
(``cli_rawaddr``): the section (PE, Mach-O) or PT_LOAD segment (ELF) that holds the address maps it
to the file.  Parsing is bounded: every read is checked against the data, the number of sections is
capped, and hostile or truncated headers give ``None`` (not an executable we can use) or a result
with ``entry_point=None``, never an exception.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

# ClamAV refuses PE files with more than 96 sections; other formats are capped for bounded work.
MAX_PE_SECTIONS = 96
MAX_SECTIONS = 4096
MAX_LOAD_COMMANDS = 4096


@dataclass(frozen=True, slots=True)
class Section:
    raw_offset: int       # file offset of the section's raw data
    raw_size: int         # size of its raw data in the file
    virtual_address: int  # RVA (PE) / address (ELF, Mach-O)
    virtual_size: int


@dataclass(frozen=True, slots=True)
class ExecutableInfo:
    kind: str                 # "pe", "elf" or "macho"
    entry_point: int | None   # file offset of the entry point, None if it maps nowhere in the file
    sections: tuple[Section, ...]


Buffer = bytes | bytearray | memoryview | mmap.mmap


class _Reader:
    """Bounds-checked little/big-endian reads; any out-of-range read raises ``_Truncated``."""

    __slots__ = ("data", "size", "end")

    def __init__(self, data: Buffer, end: str = "<") -> None:
        self.data = data
        self.size = len(data)
        self.end = end

    def unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        fmt = self.end + fmt
        if offset < 0 or offset + struct.calcsize(fmt) > self.size:
            raise _Truncated
        return struct.unpack_from(fmt, self.data, offset)

    def u16(self, offset: int) -> int:
        return self.unpack("H", offset)[0]

    def u32(self, offset: int) -> int:
        return self.unpack("I", offset)[0]


class _Truncated(Exception):
    pass


def parse_executable(data: Buffer) -> ExecutableInfo | None:
    """Entry point and sections of a PE, ELF or thin Mach-O file; None for anything else.

    Mach-O universal (fat) binaries return None: their members are separate objects, which the
    unpackers will hand to the engine one by one.
    """
    head = bytes(data[:4])
    try:
        if head[:2] == b"MZ":
            return _parse_pe(data)
        if head == b"\x7fELF":
            return _parse_elf(data)
        if head in (b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe"):
            return _parse_macho(data)
    except (_Truncated, struct.error, ValueError, OverflowError):
        return None
    return None


def _align_down(value: int, alignment: int) -> int:
    return (value // alignment) * alignment if alignment else value


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment if alignment else value


def _map_address(address: int, sections: tuple[Section, ...], size: int) -> int | None:
    for sec in sections:
        if sec.raw_size and sec.virtual_address <= address < sec.virtual_address + sec.raw_size:
            raw = sec.raw_offset + (address - sec.virtual_address)
            return raw if raw < size else None
    return None


def _parse_pe(data: Buffer) -> ExecutableInfo | None:
    r = _Reader(data)
    pe_offset = r.u32(0x3C)
    if r.unpack("4s", pe_offset)[0] != b"PE\0\0":
        return None
    _machine, nsections, _ts, _sym, _nsym, opt_size, _chars = r.unpack("HHIIIHH", pe_offset + 4)
    opt = pe_offset + 24
    magic = r.u16(opt)
    if magic not in (0x10B, 0x20B):
        return None
    entry_rva = r.u32(opt + 16)
    section_alignment = r.u32(opt + 32)
    file_alignment = r.u32(opt + 36)
    headers_size = r.u32(opt + 60)
    if nsections == 0 or nsections > MAX_PE_SECTIONS:
        return None
    # ClamAV aligns raw offsets and sizes to the file alignment when it is a sane power of two
    falign = file_alignment if file_alignment >= 0x200 and not file_alignment & (file_alignment - 1) else 0
    salign = section_alignment if section_alignment and not section_alignment & (section_alignment - 1) else 0
    table = opt + opt_size
    sections: list[Section] = []
    for i in range(nsections):
        vsize, vaddr, raw_size, raw_ptr = r.unpack("IIII", table + i * 40 + 8)
        raw = _align_down(raw_ptr, falign)
        rsz = _align_up(raw_size, falign) if raw_size else 0
        if raw >= r.size:
            rsz = 0
        elif raw + rsz > r.size:
            rsz = r.size - raw
        sections.append(Section(raw, rsz, _align_down(vaddr, salign), vsize))
    secs = tuple(sections)
    if entry_rva < headers_size or not secs:
        entry: int | None = entry_rva if entry_rva < r.size else None
    else:
        entry = _map_address(entry_rva, secs, r.size)
    return ExecutableInfo("pe", entry, secs)


def _parse_elf(data: Buffer) -> ExecutableInfo | None:
    r0 = _Reader(data)
    ei_class, ei_data = r0.unpack("BB", 4)
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        return None
    r = _Reader(data, "<" if ei_data == 1 else ">")
    if ei_class == 1:
        entry, phoff, shoff = r.unpack("III", 24)
        phentsize, phnum, shentsize, shnum = r.unpack("HHHH", 42)
        ph_fmt, ph_min = "IIIIII", 24      # type offset vaddr paddr filesz memsz
        sh_fmt, sh_min = "IIIIII", 24      # name type flags addr offset size
    else:
        entry, phoff, shoff = r.unpack("QQQ", 24)
        phentsize, phnum, shentsize, shnum = r.unpack("HHHH", 54)
        ph_fmt, ph_min = "IIQQQQQ", 48     # type flags offset vaddr paddr filesz memsz
        sh_fmt, sh_min = "IIQQQQ", 40      # name type flags addr offset size
    segments: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    if phoff and phentsize >= ph_min:
        for i in range(min(phnum, MAX_SECTIONS)):
            try:
                fields = r.unpack(ph_fmt, phoff + i * phentsize)
            except _Truncated:
                break
            if ei_class == 1:
                p_type, p_offset, p_vaddr, _p, p_filesz, _m = fields
            else:
                p_type, _f, p_offset, p_vaddr, _p, p_filesz, _m = fields
            if p_type == 1:  # PT_LOAD
                segments.append((p_vaddr, p_offset, p_filesz))
    sections: list[Section] = []
    if shoff and shentsize >= sh_min:
        for i in range(min(shnum, MAX_SECTIONS)):
            try:
                _name, _type, _flags, addr, offset, size = r.unpack(sh_fmt, shoff + i * shentsize)
            except _Truncated:
                break
            sections.append(Section(offset, size, addr, size))
    entry_offset: int | None = None
    for vaddr, offset, filesz in segments:
        if vaddr <= entry < vaddr + filesz:
            raw = entry - vaddr + offset
            entry_offset = raw if raw < r.size else None
            break
    return ExecutableInfo("elf", entry_offset, tuple(sections))


_LC_SEGMENT, _LC_SEGMENT_64, _LC_UNIXTHREAD, _LC_MAIN = 0x1, 0x19, 0x5, 0x80000028
# Where the program counter sits in LC_UNIXTHREAD state, by CPU type: (word size, index).
_THREAD_PC = {7: (4, 10), 0x01000007: (8, 16), 12: (4, 15), 0x0100000C: (8, 32), 18: (4, 0), 0x01000012: (8, 0)}


def _parse_macho(data: Buffer) -> ExecutableInfo | None:
    magic = bytes(data[:4])
    is64 = magic in (b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe")
    r = _Reader(data, ">" if magic[0] == 0xFE else "<")
    cputype, _sub, _ftype, ncmds, _sizeofcmds, _flags = r.unpack("IIIIII", 4)
    cmd_offset = 32 if is64 else 28
    sections: list[Section] = []
    entry_off: int | None = None
    pc: int | None = None
    for _ in range(min(ncmds, MAX_LOAD_COMMANDS)):
        cmd, cmdsize = r.unpack("II", cmd_offset)
        if cmdsize < 8:
            break
        if cmd in (_LC_SEGMENT, _LC_SEGMENT_64):
            seg64 = cmd == _LC_SEGMENT_64
            nsects = r.u32(cmd_offset + (64 if seg64 else 48))
            sect = cmd_offset + (72 if seg64 else 56)
            for _i in range(min(nsects, MAX_SECTIONS - len(sections))):
                if seg64:
                    addr, size, offset = r.unpack("QQI", sect + 32)
                    sect += 80
                else:
                    addr, size, offset = r.unpack("III", sect + 32)
                    sect += 68
                sections.append(Section(offset, size, addr, size))
        elif cmd == _LC_MAIN:
            entry_off = r.unpack("Q", cmd_offset + 8)[0]
        elif cmd == _LC_UNIXTHREAD and cputype in _THREAD_PC:
            word, index = _THREAD_PC[cputype]
            pc = r.unpack("Q" if word == 8 else "I", cmd_offset + 16 + index * word)[0]
        cmd_offset += cmdsize
    secs = tuple(sections)
    entry: int | None = None
    if entry_off is not None:
        entry = entry_off if entry_off < r.size else None
    elif pc is not None:
        entry = _map_address(pc, secs, r.size)
    return ExecutableInfo("macho", entry, secs)
