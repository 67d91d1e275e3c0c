"""yoda's Crypter (yC) 1.x-encrypted executables: the sections decrypted, the file restored as the
packer's stub would leave it on disk (another packer, UPX for instance, may be inside; the result
is scanned again, so that packer's unpacker takes it from there).

Recognised as ClamAV 1.4 recognises them (pe.c): more than one section, the entry point at the
last section's RVA + 0x60, and one of three entry codes (yC 1.3, a 1.3 variant, "1.x/modified"),
each giving a layer length ``ecx`` (from two of the stub's immediates, which must agree: their
difference is checked) and an ``offset`` of the stub in its section (0, 0x10, -0x18); then
0x800 < ``ecx`` < 0x2000, the stub's loop end ``stosb; loop`` (aa e2 cc) at entry + 0x63 +
``offset``, and the layer inside the file.

yc.c's two layers (``yc`` = the last section's file offset + ``offset``):

1. ``ecx`` bytes at ``yc`` + 0xc6 (the rest of the stub), transformed by the 0x30-byte snippet at
   ``yc`` + 0x93, CL counting down from ``ecx``;
2. each section but the last, unless it has no raw data or its name starts with ``rsrc``,
   ``.rsr``, ``relo``, ``.rel``, ``.eda``, ``.rda``, ``.ida``, ``.tls`` or ``yC``: its raw bytes
   (SizeOfRawData, clipped to the file and to the file less the yC section), transformed by the
   snippet at ``yc`` + 0x457 (+ 0x3ea for the "1.x/modified" variant), decrypted by layer 1,
   CL counting down from the section's SizeOfRawData.

Then the file is cut before the yC section's raw data, its section count lowered by one, its
import directory entry zeroed, its entry point set to the u32 at ``yc`` + 0xa0f and its
SizeOfImage lowered by the yC section's virtual size, as ClamAV does.

The snippets are polymorphic code generated per file; ClamAV runs them on every byte with a small
x86 interpreter.  Bastion never does: :mod:`bastion.unpack.packers.bytecrypt` reads them as data
(a closed whitelist of byte operations, translated once, then applied); a snippet outside it makes
the file "unsupported".  Where ClamAV's interpreter departs from the processor (it reads any
``fe`` as ``dec al`` and takes ``d2 c8`` as three bytes), Bastion follows the processor.
"""

from __future__ import annotations

import struct

from bastion.unpack.base import UnpackLimits
from bastion.unpack.packers.bytecrypt import Program, SnippetError, apply, translate
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, size_check

SNIPPET_LEN = 0x30
SKIPPED_NAMES = (b"rsrc", b".rsr", b"relo", b".rel", b".eda", b".rda", b".ida", b".tls")


def _u32(data: bytes | bytearray, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "little")


def _sub(*terms: int) -> int:
    """ClamAV's unsigned 32-bit arithmetic: the first term minus the others (mod 2**32)."""
    return (terms[0] - sum(terms[1:])) % 2**32


def detect(pe: PackedPe) -> tuple[int, int] | None:
    """pe.c's test for yC: (``offset``, ``ecx``) for a yC file, else None."""
    if len(pe.sections) < 2 or pe.entry_rva != pe.sections[-1].virtual_address + 0x60:
        return None
    ep = pe.stub
    ecx, offset = 0, 0
    if ep[:15] == bytes.fromhex("558bec535657 60 e800000000 5d81ed") \
            and ep[0x26:0x33] == bytes.fromhex("8d3a8bf733c0eb0490eb01c2ac") and ep[0x13:0x14] == b"\xb9" \
            and ep[0x18:0x1A] == b"\x81\xe9" and ep[0x1E:0x22] == bytes.fromhex("8bd581c2"):  # yC 1.3
        offset = 0
        if (0x6C - _u32(ep, 0xF) + _u32(ep, 0x22)) % 2**32 == 0xC6:
            ecx = _sub(_u32(ep, 0x14), _u32(ep, 0x1A))
    if not ecx and ep[:9] == bytes.fromhex("558bec83ec40535657") \
            and ep[0x17:0x1F] == bytes.fromhex("e8000000005d81ed") and ep[0x23:0x24] == b"\xb9":
        offset = 0x10  # yC 1.3 variant
        if (0x6C - _u32(ep, 0x1F) + _u32(ep, 0x32)) % 2**32 == 0xC6:
            ecx = _sub(_u32(ep, 0x24), _u32(ep, 0x2A))
    if not ecx and ep[:9] == bytes.fromhex("60e8000000005d81ed") and ep[0xD:0xE] == b"\xb9" \
            and ep[0x12:0x14] == b"\x8d\xbd" and ep[0x18:0x1B] == b"\x8b\xf7\xac":
        offset = -0x18  # yC 1.x/modified
        if (0x66 - _u32(ep, 0x9) + _u32(ep, 0x14)) % 2**32 == 0xAE:
            ecx = _u32(ep, 0xE)
    if not 0x800 < ecx < 0x2000 or ep[0x63 + offset:0x66 + offset] != b"\xaa\xe2\xcc":
        return None
    if len(pe.data) < pe.sections[-1].raw_offset + 0xC6 + ecx + offset:
        return None
    return offset, ecx


def _program(data: bytearray, at: int, name: str) -> Program:
    try:
        return translate(data[at:at + SNIPPET_LEN + 3], SNIPPET_LEN)
    except SnippetError as exc:
        raise PackerError("unsupported", f"{name}: yC decryptor at {at:#x}: {exc}") from None


def _headers(data: bytes, count: int, name: str) -> tuple[int, int, list[tuple[bytes, int, int]]]:
    """The PE header's offset, the section table's and each section's (name, PointerToRawData,
    SizeOfRawData)."""
    pe_at = _u32(data, 0x3C)
    table = pe_at + 0x18 + struct.unpack_from("<H", data, pe_at + 0x14)[0]
    if table + 0x28 * count > len(data) or struct.unpack_from("<H", data, pe_at + 6)[0] != count:
        raise PackerError("broken", f"{name}: yC: the section table is not ClamAV's sections")
    rows = [(data[at:at + 8], _u32(data, at + 0x14), _u32(data, at + 0x10))
            for at in range(table, table + 0x28 * count, 0x28)]
    return pe_at, table, rows


def unpack(pe: PackedPe, limits: UnpackLimits, name: str) -> Unpacked | None:
    """None unless ``pe`` is yC-encrypted; then the decrypted file (``is_file``), or "broken",
    "unsupported" (a decryptor outside bytecrypt's whitelist) or a limit."""
    found = detect(pe)
    if found is None:
        return None
    offset, ecx = found
    size_check(limits, name, len(pe.data), len(pe.data))
    data = bytearray(pe.data)
    fsize = len(data)
    pe_at, _, rows = _headers(pe.data, len(pe.sections), name)
    last = pe.sections[-1]
    yc = last.raw_offset + offset
    program = _program(data, yc + 0x93, name)
    apply(program, data, yc + 0xC6, ecx, ecx)  # layer 1 (in the file: detect checked it)
    _, uraw, ursz = rows[-1]
    if last.raw_size and uraw + ursz > fsize:
        ursz = max(0, fsize - uraw)
    kept = fsize - ursz
    snippet = yc + (0x3EA if offset == -0x18 else 0x457)
    program = _program(data, snippet, name)
    for j, sec in enumerate(pe.sections[:-1]):  # layer 2
        sec_name, uraw_j, ursz_j = rows[j]
        if not sec.raw_offset or not sec.raw_size or sec_name[:4] in SKIPPED_NAMES or sec_name[:2] == b"yC":
            continue
        if uraw_j + ursz_j > fsize:
            ursz_j = max(0, fsize - uraw_j)
        if sec.raw_offset > kept:
            raise PackerError("broken", f"{name}: yC: section {j} lies after the yC section")
        length = min(ursz_j, kept - sec.raw_offset)
        if sec.raw_offset + length > fsize:
            raise PackerError("broken", f"{name}: yC: section {j} runs out of the file")
        if sec.raw_offset < snippet + SNIPPET_LEN + 3 and snippet < sec.raw_offset + length:
            raise PackerError("unsupported", f"{name}: yC: section {j} covers its own decryptor")
        apply(program, data, sec.raw_offset, length, ursz_j)
    opt = pe_at + 0x18
    if yc + 0xA13 > fsize or opt + 0x70 > fsize:
        raise PackerError("broken", f"{name}: yC: the original entry point is out of the file")
    struct.pack_into("<H", data, pe_at + 6, len(pe.sections) - 1)
    data[opt + 0x68:opt + 0x70] = bytes(8)
    data[opt + 0x10:opt + 0x14] = data[yc + 0xA0F:yc + 0xA13]
    struct.pack_into("<I", data, opt + 0x38, _sub(_u32(data, opt + 0x38), last.virtual_size))
    return Unpacked(bytes(data[:kept]), 0, "yc", is_file=True)
