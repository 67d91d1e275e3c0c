"""Executable headers the engine needs: entry point and sections of PE, ELF and Mach-O files.

Body-signature offsets ``EP+n``, ``EP-n``, ``Sx+n``, ``SL+n`` and ``SEx`` are resolved against what
:func:`parse_executable` returns.  Every offset is a *file* offset computed the way ClamAV 1.4 computes
it (``cli_peheader``, ``cli_elfheader`` and ``cli_machoheader``, checked against clamscan 1.4.6), quirks
included, because signatures are written against ClamAV:

PE
    Raw offsets are aligned down and raw sizes up to FileAlignment (falling back to 0x200 when a
    section's PointerToRawData is 0x200-aligned but not FileAlignment-aligned), virtual addresses are
    aligned to SectionAlignment, and raw sizes are clipped to the file (a section starting beyond the
    end gets size 0).  The entry point RVA is used as is when it lies in the headers (below
    SizeOfHeaders rounded up to SectionAlignment) and inside the file; otherwise the *last* section
    whose raw data holds it maps it.  There is no cap on the number of sections (clamscan resolves
    ``S99`` in a 100-section file): the table must lie inside the data, which bounds the work.
ELF
    Sections are all section headers in index order, the NULL section and ``SHT_NOBITS`` ones included,
    with ``sh_size`` as their raw size (clamscan matches ``SEx`` inside ``.bss``'s ``sh_size``).  The
    entry point maps through the first program header of *any* type whose ``[p_vaddr, p_vaddr +
    p_memsz)`` holds it; an ``e_entry`` of 0 or a file without program headers gives entry point 0.
    More than 128 program headers or 256 section headers, or an entry size other than the standard
    one, make ClamAV reject the file.
Mach-O
    Sections of the ``LC_SEGMENT``/``LC_SEGMENT_64`` commands matching the file's word size, raw size
    = size rounded up to the section alignment.  ClamAV takes an entry point only from the PowerPC
    ``LC_THREAD``/``LC_UNIXTHREAD`` state: for every other CPU (x86, x86-64, ARM, ARM64) and for
    ``LC_MAIN`` the entry point is file offset **0** (clamscan matches ``EP+0`` there).  A PowerPC
    entry address maps through the first section holding it, or stays the address itself when the file
    has no sections.  Universal (fat) binaries return None: ClamAV resolves no executable offset on the
    container, only on the member objects, which unpacking hands over one by one.

ClamAV keeps offsets and sizes in 32-bit fields; values from 64-bit headers are truncated the same way.

Results, for any input (parsing never raises on hostile or truncated data, reads only through bounds
checks, allocates nothing according to declared counts, and ends after a number of steps bounded by
the size of the data):

* ``None``: not a PE, ELF or thin Mach-O file, or headers that ClamAV rejects (truncated headers
  included; there is no partial result, since ClamAV resolves no offset for such a file).
* ``ExecutableInfo(kind, None, ())``: the headers parse but the entry point maps to no file offset.
  ClamAV rejects the whole header then, so no section is reported either and no offset resolves.
* Otherwise the entry point and all sections.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ExecutableInfo", "Section", "parse_executable"]

_M32 = 0xFFFF_FFFF
_M64 = 0xFFFF_FFFF_FFFF_FFFF

# ELF limits above which ClamAV's cli_elfheader gives up on the file
ELF_MAX_PROGRAM_HEADERS = 128
ELF_MAX_SECTIONS = 256
# Mach-O limits above which ClamAV's cli_scanmacho gives up on the file
MACHO_MAX_LOAD_COMMANDS = 1024
MACHO_MAX_SECTIONS_PER_SEGMENT = 255


@dataclass(frozen=True, slots=True)
class Section:
    """One section as ClamAV sees it; offsets and sizes after ClamAV's alignment and clipping."""

    raw_offset: int       # file offset of the section's raw data
    raw_size: int         # size of its raw data in the file (PE: clipped to the file; ELF: sh_size)
    virtual_address: int  # RVA (PE, aligned to SectionAlignment) / sh_addr (ELF) / addr (Mach-O)
    virtual_size: int     # virtual size (PE: aligned); ELF: sh_size; Mach-O: size


@dataclass(frozen=True, slots=True)
class ExecutableInfo:
    """What body-signature offsets need from an executable: its entry point and its sections."""

    kind: str                 # "pe", "elf" or "macho"
    entry_point: int | None   # FILE offset of the entry point (ClamAV semantics, see the module
    #                           docstring); None when it maps nowhere, and then ``sections`` is empty
    sections: tuple[Section, ...]


class _Reject(Exception):
    """ClamAV would not accept these headers (also raised for every read past the end of the data)."""


class _Unmapped(Exception):
    """The headers parse, but the entry point maps to no file offset."""


@functools.cache
def _struct(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


class _Reader:
    """Bounds-checked reads of fixed layouts from a flat byte buffer in one byte order."""

    __slots__ = ("buf", "size", "order")

    def __init__(self, buf: memoryview, order: str) -> None:
        self.buf = buf
        self.size = len(buf)
        self.order = order

    def read(self, fmt: str, offset: int) -> tuple[int, ...]:
        st = _struct(self.order + fmt)
        if offset < 0 or offset + st.size > self.size:
            raise _Reject
        return st.unpack_from(self.buf, offset)

    def need(self, offset: int, length: int) -> None:
        """Reject unless ``length`` bytes at ``offset`` lie inside the data."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise _Reject


def parse_executable(data: bytes | bytearray | memoryview | mmap.mmap) -> ExecutableInfo | None:
    """Entry point and sections of a PE, ELF or thin Mach-O file, as ClamAV computes them.

    Returns None for anything that is not a PE/ELF/Mach-O file ClamAV would accept (universal Mach-O
    binaries included), and ``ExecutableInfo(kind, None, ())`` when the headers parse but the entry
    point maps to no file offset.  Never raises on hostile or truncated input; see the module docstring
    for the exact semantics.
    """
    with memoryview(data) as view:
        if view.ndim == 1 and view.format == "B" and view.c_contiguous:
            return _dispatch(view)
        if not view.c_contiguous:  # an unusual view: read a flat copy
            with memoryview(view.tobytes()) as flat:
                return _dispatch(flat)
        with view.cast("B") as flat:
            return _dispatch(flat)


def _dispatch(buf: memoryview) -> ExecutableInfo | None:
    head = bytes(buf[:4])
    parser: Callable[[memoryview], ExecutableInfo]
    if head[:2] == b"MZ":
        kind, parser = "pe", _parse_pe
    elif head == b"\x7fELF":
        kind, parser = "elf", _parse_elf
    elif head in _MACHO_MAGICS:
        kind, parser = "macho", _parse_macho
    else:
        return None
    try:
        return parser(buf)
    except _Unmapped:
        return ExecutableInfo(kind, None, ())
    except (_Reject, struct.error, OverflowError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------- PE
def _align_down(value: int, alignment: int) -> int:
    """ClamAV's PEALIGN: round down to a multiple of ``alignment`` (0: unchanged)."""
    return value // alignment * alignment if alignment else value


def _align_up32(value: int, alignment: int) -> int:
    """ClamAV's PESALIGN in 32-bit arithmetic: round up to a multiple of ``alignment`` (0: unchanged)."""
    if not alignment:
        return value
    return (value // alignment + (value % alignment != 0)) * alignment & _M32


def _contained(total: int, start: int, length: int) -> bool:
    """ClamAV's CLI_ISCONTAINED_0_TO: ``[start, start + length)`` is a non-empty part of ``[0, total)``."""
    return total > 0 and length > 0 and length <= total and start + length <= total and start < total


# Offsets inside the optional header (the same in PE32 and PE32+ for the fields used here)
_OPT_ENTRY, _OPT_SALIGN, _OPT_HEADERS = 16, 32, 60
_OPT32_SIZE, _OPT64_SIZE = 96, 112          # without the data directories
_OPT32_NDIRS, _OPT64_NDIRS = 92, 108
_PE_SECTION_HEADER = 40


def _parse_pe(buf: memoryview) -> ExecutableInfo:
    r = _Reader(buf, "<")
    size = r.size
    (e_lfanew,) = r.read("I", 0x3C)
    if not e_lfanew:
        raise _Reject
    signature, _machine, nsections, _ts, _symtab, _nsyms, opt_size, _chars = r.read("4sHHIIIHH", e_lfanew)
    if signature != b"PE\0\0" or nsections == 0 or opt_size < _OPT32_SIZE:
        raise _Reject
    opt = e_lfanew + 24
    r.need(opt, _OPT32_SIZE)
    (magic,) = r.read("H", opt)
    if magic == 0x20B:  # PE32+; ClamAV reads any other magic as PE32
        if opt_size < _OPT64_SIZE:
            raise _Reject
        r.need(opt, _OPT64_SIZE)
        stored, (ndirs,) = _OPT64_SIZE, r.read("I", opt + _OPT64_NDIRS)
    else:
        stored, (ndirs,) = _OPT32_SIZE, r.read("I", opt + _OPT32_NDIRS)
    (entry_rva,) = r.read("I", opt + _OPT_ENTRY)
    salign, falign = r.read("II", opt + _OPT_SALIGN)
    (headers_size,) = r.read("I", opt + _OPT_HEADERS)
    dirs_size = 8 * min(ndirs, 16)
    if opt_size < stored + dirs_size:
        raise _Reject
    r.need(opt + stored, dirs_size)
    table = opt + opt_size
    r.need(table, nsections * _PE_SECTION_HEADER)  # the whole table, so the loops below are bounded
    headers = [r.read("IIII", table + i * _PE_SECTION_HEADER + 8) for i in range(nsections)]
    headers_end = _align_up32(headers_size, salign)

    if falign and falign != 0x200:  # "file alignment fallback mode"
        for _vsize, _va, raw_size, raw_ptr in headers:
            if raw_size and raw_ptr % falign and not raw_ptr % 0x200:
                falign = 0x200
                break

    sections: list[Section] = []
    for vsize, va, raw_size, raw_ptr in headers:
        rva = _align_down(va, salign)
        vsz = _align_up32(vsize, salign)
        raw = _align_down(raw_ptr, falign)
        rsz = _align_up32(raw_size, falign)
        usize = raw_size
        if rsz:
            if raw >= size or raw_ptr >= size:  # starts beyond the end of the file
                rsz = usize = 0
            else:
                if not _contained(size, raw, rsz):
                    rsz = size - raw
                if not _contained(size, raw_ptr, usize):
                    usize = size - raw_ptr
        if not vsz and rsz:
            vsz = _align_up32(usize, salign)
        if va >> 31 or vsize >> 31 or (rsz and raw_ptr >> 31) or usize >> 31:
            raise _Reject  # "PE values with sign bit set"
        sections.append(Section(raw, rsz, rva, vsz))

    if entry_rva < headers_end:  # entry point in the headers: the RVA is the file offset
        if entry_rva >= size:
            raise _Unmapped
        entry = entry_rva
    else:
        for sec in reversed(sections):  # ClamAV searches from the last section
            if sec.raw_size and sec.virtual_address <= entry_rva < sec.virtual_address + sec.raw_size:
                entry = entry_rva - sec.virtual_address + sec.raw_offset
                break
        else:
            raise _Unmapped
    return ExecutableInfo("pe", entry, tuple(sections))


# ------------------------------------------------------------------------------------------------ ELF
def _parse_elf(buf: memoryview) -> ExecutableInfo:
    r0 = _Reader(buf, "<")
    r0.need(0, 52)  # ClamAV first reads a whole ELF32 header, whatever the class
    ei_class, ei_data = r0.read("BB", 4)
    if ei_class not in (1, 2):
        raise _Reject
    r = _Reader(buf, "<" if ei_data == 1 else ">")  # ClamAV: anything but 1 is big-endian
    if ei_class == 1:
        word, mask, ph_size, sh_size = "I", _M32, 32, 40
        entry, phoff, shoff = r.read("III", 24)
        phentsize, phnum, shentsize, shnum = r.read("HHHH", 42)
    else:
        word, mask, ph_size, sh_size = "Q", _M64, 56, 64
        entry, phoff, shoff = r.read("QQQ", 24)
        phentsize, phnum, shentsize, shnum = r.read("HHHH", 54)
        r.need(0, 64)

    if phnum > ELF_MAX_PROGRAM_HEADERS:
        raise _Reject
    entry_offset = 0  # ClamAV's value when there is no entry address or no program header
    if phnum and entry:
        if phentsize != ph_size:
            raise _Reject
        segments: list[tuple[int, int, int]] = []  # (p_vaddr, p_memsz, p_offset)
        for i in range(phnum):
            at = (phoff + i * ph_size) & mask
            r.need(at, ph_size)
            if ei_class == 1:
                _type, p_offset, p_vaddr, _paddr, _filesz, p_memsz = r.read("IIIIII", at)
            else:
                _type, _flags, p_offset, p_vaddr, _paddr, _filesz, p_memsz = r.read("IIQQQQQ", at)
            segments.append((p_vaddr, p_memsz, p_offset))
        for p_vaddr, p_memsz, p_offset in segments:  # the first segment of any type holding the entry
            if p_vaddr <= entry < (p_vaddr + p_memsz) & mask:
                entry_offset = (entry - p_vaddr + p_offset) & mask & _M32
                break
        else:
            raise _Unmapped

    if shnum > ELF_MAX_SECTIONS or shentsize != sh_size:
        raise _Reject
    fmt = "II" + word * 4  # sh_name sh_type sh_flags sh_addr sh_offset sh_size
    sections: list[Section] = []
    for i in range(shnum):
        at = (shoff + i * sh_size) & mask
        r.need(at, sh_size)
        _name, _type, _flags, addr, offset, length = r.read(fmt, at)
        sections.append(Section(offset & _M32, length & _M32, addr & _M32, length & _M32))
    return ExecutableInfo("elf", entry_offset, tuple(sections))


# --------------------------------------------------------------------------------------------- Mach-O
# magic bytes -> (byte order, 64-bit)
_MACHO_MAGICS = {
    b"\xce\xfa\xed\xfe": ("<", False),
    b"\xcf\xfa\xed\xfe": ("<", True),
    b"\xfe\xed\xfa\xce": (">", False),
    b"\xfe\xed\xfa\xcf": (">", True),
}
_LC_SEGMENT, _LC_SEGMENT_64, _LC_THREAD, _LC_UNIXTHREAD = 0x1, 0x19, 0x4, 0x5
# Thread states ClamAV reads, by CPU type: (size of ClamAV's C struct on LP64 hosts, format of the
# program counter at its start or None).  x86 is read but its eip never used; other CPUs are skipped.
_THREAD_STATES: dict[int, tuple[int, str | None]] = {
    7: (64, None),             # i386: 16 32-bit registers
    18: (160, "I"),            # PowerPC: srr0 first of 40 32-bit words
    0x01000012: (312, "Q"),    # PowerPC 64: srr0 first; the C struct is padded to 312 bytes
}


def _parse_macho(buf: memoryview) -> ExecutableInfo:
    order, is64 = _MACHO_MAGICS[bytes(buf[:4])]
    r = _Reader(buf, order)
    cputype, _subtype, _filetype, ncmds, _sizeofcmds, _flags = r.read("IIIIII", 4)
    if not ncmds or ncmds > MACHO_MAX_LOAD_COMMANDS:
        raise _Reject
    thread = _THREAD_STATES.get(cputype)
    seg_cmd, seg_size, sect_size = (_LC_SEGMENT_64, 64, 80) if is64 else (_LC_SEGMENT, 48, 68)
    at = 32 if is64 else 28
    sections: list[Section] = []
    address = 0
    for _ in range(ncmds):  # ``at`` only moves forward: every iteration reads at least 8 new bytes
        cmd, cmdsize = r.read("II", at)
        at += 8
        if cmd == seg_cmd:
            # ClamAV walks segment commands by their structure sizes, not by cmdsize
            r.need(at, seg_size)
            (nsects,) = r.read("I", at + seg_size - 8)
            at += seg_size
            if nsects > MACHO_MAX_SECTIONS_PER_SEGMENT:
                raise _Reject
            for _j in range(nsects):
                r.need(at, sect_size)
                addr, length, offset, align = r.read("QQII" if is64 else "IIII", at + 32)
                at += sect_size
                if align >= 32:
                    raise _Reject
                alignment = 1 << align
                rsz = (length + alignment - 1) // alignment * alignment  # size rounded up to the alignment
                if rsz > _M32:  # ClamAV 1.4.6 rejects sizes that do not fit its 32-bit fields
                    raise _Reject
                sections.append(Section(offset, rsz, addr & _M32, length))
        elif thread is not None and cmd in (_LC_THREAD, _LC_UNIXTHREAD):
            at += 8  # flavor, count
            state_size, pc_fmt = thread
            r.need(at, state_size)
            if pc_fmt is not None:
                address = r.read(pc_fmt, at)[0] & _M32
            at += state_size
        elif cmdsize > 8:
            at += cmdsize - 8

    entry = address
    if address and sections:
        for sec in sections:  # the first section whose virtual range holds the address
            if sec.virtual_address <= address < (sec.virtual_address + sec.virtual_size) & _M32:
                entry = (address - sec.virtual_address + sec.raw_offset) & _M32
                break
        else:
            raise _Unmapped
    return ExecutableInfo("macho", entry, tuple(sections))
