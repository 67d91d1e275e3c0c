"""Which executables clamscan calls broken (``--alert-broken``: ``Heuristics.Broken.Executable``).

ClamAV 1.4 raises the alert when its PE scanner parses the headers in strict mode
(``cli_scanpe`` with ``CLI_PEHEADER_OPT_STRICT_ON_PE_ERRORS`` and ``..._REMOVE_MISSING_SECTIONS``) and
the parse fails as malformed, and when its ELF scanner (``cli_scanelf``) meets one of a few header
faults.  :func:`broken_executable` checks the same conditions and says which one it found; the
conditions were read from ClamAV's ``pe.c``/``elf.c`` and are held against clamscan 1.4.6 by
``tests/test_broken_executable.py``.  Only the alert lives here: offsets for ``EP+n``/``Sx+n`` come
from the lenient parse in :mod:`bastion.formats.executable`, as in ClamAV.

Not broken (clamscan says nothing): a file too short to hold a PE file header at ``e_lfanew``, an
``e_lfanew`` of 0, no ``PE\\0\\0`` signature (an NE/LE file), data directories that cannot be read,
more than 2048 ELF sections, a truncated ELF file header.  Mach-O checks are not covered yet.

Never raises on hostile input; reads only through bounds checks and does work bounded by the size of
the data (a section table must lie in the data before it is walked).
"""

from __future__ import annotations

import struct

# ClamAV's alignment arithmetic and header sizes, shared with the lenient parse
from bastion.formats.executable import _OPT32_SIZE, _OPT64_SIZE, _align_down, _align_up32

__all__ = ["broken_executable"]



def broken_executable(data: bytes | bytearray | memoryview) -> str | None:
    """The reason clamscan would report ``Heuristics.Broken.Executable`` for this PE or ELF file, or
    None (not broken, or not a PE/ELF file at all)."""
    buf = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    try:
        if bytes(buf[:2]) in (b"MZ", b"ZM"):
            return _pe(buf)
        if bytes(buf[:4]) == b"\x7fELF":
            return _elf(buf)
    except (struct.error, ValueError, OverflowError):
        return None
    return None


def _read(buf: memoryview, fmt: str, offset: int) -> tuple[int, ...] | None:
    """``struct.unpack_from`` that answers None when the bytes are not all there."""
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(buf):
        return None
    return struct.unpack_from(fmt, buf, offset)


def _pe(buf: memoryview) -> str | None:  # noqa: C901, PLR0911, PLR0912 - one check per ClamAV condition
    size = len(buf)
    got = _read(buf, "<I", 0x3C)
    if got is None:
        return "the DOS header is truncated before e_lfanew"
    (lfanew,) = got
    header = _read(buf, "<4sHHIIIHH", lfanew) if lfanew else None
    if header is None or header[0] != b"PE\0\0":
        return None  # not a PE file for ClamAV
    _sig, _machine, nsections, _ts, _symtab, _nsyms, opt_size, _chars = header
    if nsections == 0:
        return "NumberOfSections is 0"
    if opt_size < _OPT32_SIZE:
        return "SizeOfOptionalHeader is smaller than a PE32 optional header"
    opt = lfanew + 24
    if _read(buf, f"{_OPT32_SIZE}s", opt) is None:
        return "the optional header is truncated"
    (magic,) = struct.unpack_from("<H", buf, opt)
    if magic == 0x20B:
        if opt_size < _OPT64_SIZE:
            return "SizeOfOptionalHeader is too small for PE32+"
        if _read(buf, f"{_OPT64_SIZE}s", opt) is None:
            return "the PE32+ optional header is truncated"
        stored, (ndirs,) = _OPT64_SIZE, struct.unpack_from("<I", buf, opt + 108)
    else:
        stored, (ndirs,) = _OPT32_SIZE, struct.unpack_from("<I", buf, opt + 92)
    (entry_rva,) = struct.unpack_from("<I", buf, opt + 16)
    salign, falign = struct.unpack_from("<II", buf, opt + 32)
    (headers_size,) = struct.unpack_from("<I", buf, opt + 60)
    (subsystem,) = struct.unpack_from("<H", buf, opt + 68)
    native = subsystem == 1
    if not native and (not salign or salign % 0x1000):
        return f"SectionAlignment 0x{salign:x} is not a multiple of 0x1000"
    if not native and (not falign or falign % 0x200):
        return f"FileAlignment 0x{falign:x} is not a multiple of 0x200"
    dirs_size = 8 * min(ndirs, 16)
    if opt_size < stored + dirs_size:
        return "SizeOfOptionalHeader does not cover the data directories"
    if _read(buf, f"{dirs_size}s", opt + stored) is None:
        return None  # ClamAV gives up on the header here without calling it broken
    table = opt + opt_size
    if table + 40 * nsections > size:
        return "the section table runs past the end of the file"
    headers = [struct.unpack_from("<IIII", buf, table + 40 * i + 8) for i in range(nsections)]
    if falign != 0x200:  # ClamAV's "file alignment fallback mode"
        for _vsize, _va, raw_size, raw_ptr in headers:
            if falign and raw_size and raw_ptr % falign and not raw_ptr % 0x200:
                falign = 0x200
                break
    headers_end = _align_up32(headers_size, salign)
    kept: list[tuple[int, int, int, int]] = []  # (rva, aligned vsize, raw, raw size) of kept sections
    previous: tuple[int, int] | None = None     # (unaligned rva, aligned vsize) of the one before
    count = nsections
    for index, (vsize, va, raw_size, raw_ptr) in enumerate(headers):
        rva, vsz = _align_down(va, salign), _align_up32(vsize, salign)
        raw, rsz, usize = _align_down(raw_ptr, falign), _align_up32(raw_size, falign), raw_size
        if rsz:
            if raw >= size or raw_ptr >= size:
                if count == 1:
                    return f"its only section (#{index}) starts beyond the end of the file"
                count -= 1
                continue  # ClamAV drops the section and checks the next one against the one before
            if raw + rsz > size:
                rsz = size - raw
            if raw_ptr + usize > size:
                usize = size - raw_ptr
        if not vsz and rsz:
            vsz = _align_up32(usize, salign)
        if not salign or va % salign:
            return f"section #{index}'s VirtualAddress 0x{va:x} is not aligned to 0x{salign:x}"
        if va >> 31 or vsize >> 31 or (rsz and raw_ptr >> 31) or usize >> 31:
            return f"section #{index} has values with the sign bit set"
        if previous is None:
            if va != headers_end:
                return "the first section does not start right after the headers"
        elif va - previous[0] != previous[1]:
            return f"section #{index} is out of order, overlapping or not contiguous"
        previous = (va, vsz)
        kept.append((rva, vsz, raw, rsz))
    if entry_rva < headers_end:
        if entry_rva >= size:
            return "the entry point lies beyond the end of the file"
        return None
    if not any(rsz and rva <= entry_rva < rva + rsz for rva, _vsz, _raw, rsz in kept):
        return "the entry point maps to no section"
    return None


def _elf(buf: memoryview) -> str | None:
    if len(buf) < 52:
        return None  # ClamAV cannot read the header: not an ELF file for it
    ei_class, ei_data = buf[4], buf[5]
    if ei_class not in (1, 2):
        return f"unknown ELF class {ei_class}"
    order = "<" if ei_data == 1 else ">"
    if ei_class == 1:
        ph_size, sh_size, word = 32, 40, "I"
        entry, phoff, shoff = struct.unpack_from(order + "III", buf, 24)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", buf, 42)
    else:
        if len(buf) < 64:
            return None
        ph_size, sh_size, word = 56, 64, "Q"
        entry, phoff, shoff = struct.unpack_from(order + "QQQ", buf, 24)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", buf, 54)
    if phnum > 128:
        return f"{phnum} program headers (more than 128)"
    if phnum and entry:
        if phentsize != ph_size:
            return f"program header size {phentsize}, not {ph_size}"
        if phoff + phnum * ph_size > len(buf):
            return "the program header table runs past the end of the file"
        fmt = order + ("IIIIII" if ei_class == 1 else "IIQQQQQ")
        for i in range(phnum):
            fields = struct.unpack_from(fmt, buf, phoff + i * ph_size)
            p_vaddr, p_memsz = (fields[2], fields[5]) if ei_class == 1 else (fields[3], fields[6])
            if p_vaddr <= entry < p_vaddr + p_memsz:
                break
        else:
            return "the entry point lies in no segment"
    if shnum > 2048:
        return None  # ClamAV skips the sections then, without an alert
    if shentsize != sh_size:
        return f"section header size {shentsize}, not {sh_size}"
    del word
    if shoff + shnum * sh_size > len(buf):
        return "the section header table runs past the end of the file"
    return None
