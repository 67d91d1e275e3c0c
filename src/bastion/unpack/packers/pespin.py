"""PESpin 1.1-protected executables: recognised, every layer decrypted, the sections decompressed and
rebuilt into a PE.

Recognised as ClamAV 1.4 recognises them (pe.c): more than one section, the entry point in the last
section (PESpin's) more than 0x321b bytes before the end of its raw data, the code at entry + 4
``call $+5; mov ebx, [esp]; add ebx, ...``; then spin.c's markers in the stub: ``mov ebx, <key8>``
at entry + 0xdb, ``mov ecx, 0x11fe`` at + 0xe0, and after the layers that hide them 0x5a0 at
+ 0x26f0, 0x180 at + 0x644 and 0x1a1 at + 0x28dd.  A file without them is not PESpin 1.1 (left to
the other packers, as ClamAV does).

ClamAV's steps (offsets from the entry point in PESpin's section):

1. 0x11fe bytes at + 0x1fe5 XOR'd, from the last one down, with key8, key8 - 1, ... (mod 256);
2. 0x5a0 bytes at + 0x2d5 XOR'd with the low byte of an LFSR (:func:`lfsr_xor`: shift right, then
   XOR 0x8c328834 when the bit shifted out was 1) seeded with the u32 at + 0x26eb;
3. the section key: the u32 at + 0x3217 minus :func:`checksum` of the packed file's first
   (file size - the u32 at + 0x429) bytes;
4. each section whose bit is set in the u32 at + 0x3207 XOR'd with an LFSR (0xed43af31 when the
   bit shifted out was 0) seeded with the section key;
5. 0x180 bytes at + 0x28d3 XOR'd with an LFSR (0xed43af32 on a 1 bit) seeded with the u32 at
   + 0x650;
6. the "poly" layer: 0x1a1 bytes at + 0x6d4, then each section whose bit is set in the u32 at
   + 0x6f1 (inside those 0x1a1 bytes), transformed byte by byte by a 0x24-byte snippet of x86
   code that the packer generated for this file (at + 0x28ec, inside step 5's bytes, and at
   + 0x755, inside step 6's): add, sub or xor of AL with a constant or with CL (the count of bytes
   left), rol/ror, inc/dec, padded with nop, clc, stc and short jumps.  ClamAV runs the snippet
   on every byte with a small x86 interpreter (``exec86``);
7. each section whose bit is set in the u32 at + 0x3061 aPLib-decompressed to its virtual size,
   the resources (from the RVA in the u32 at + 0x2fee to the end of their section, when that
   section is not compressed already) likewise, and the sections rebuilt into a PE.

Step 6 is read as data, never run: :mod:`bastion.unpack.packers.bytecrypt` translates each snippet
(which must be 0x24 bytes of its whitelist followed by the ``stosb`` byte 0xaa, as ClamAV requires)
into a list of byte operations once and applies it to the bytes, with CL counting down from the
length of the range (0x1a1 or the section's raw size); a snippet outside the whitelist makes the
file "unsupported".  For clam-pespin.exe the poly bitmap is 0xb, the three sections the XOR layer
covers, the compressed one among them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.unpack.base import UnpackLimits
from bastion.unpack.packers.aplib import AplibError, decompress
from bastion.unpack.packers.bytecrypt import SnippetError, apply, translate
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, size_check
from bastion.unpack.packers.rebuild import sections_as_file

ENTRY_CODE = bytes.fromhex("e8000000008b1c2483c3")  # at entry + 4
STUB_END = 0x3217 + 4  # the last stub byte ClamAV reads, from the entry point
KEY8_LEN = 0x11FE
LAYER2_LEN = 0x5A0
LAYER5_LEN = 0x180
POLY1_LEN = 0x1A1
POLY_CODE_LEN = 0x24  # the poly snippets' length, then stosb (0xaa)
IMAGE_BASE = 0x400000  # ClamAV rebuilds every PESpin file at this base, entry point 0x1000


@dataclass(frozen=True, slots=True)
class SpinStub:
    """PESpin's section after steps 1, 2 and 5: ``stub`` its raw data decrypted, ``ep`` the entry
    point's offset in it; the values read from it: the XOR, poly and compression bitmaps (bit j:
    section j), the resources' RVA (0: none), the stored section key before the checksum and the
    length of the file the checksum covers."""

    stub: bytes
    ep: int
    xor_bitmap: int
    poly_bitmap_encrypted: int  # still under step 6
    compress_bitmap: int
    resources_rva: int
    stored_key: int
    checksum_len: int


def _u32(data: bytes | bytearray, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "little")


def detect(pe: PackedPe) -> bool:
    """pe.c's test for PESpin 1.1 (on ClamAV's section view)."""
    if len(pe.sections) < 2:
        return False
    last = pe.sections[-1]
    end = last.virtual_address + last.raw_size
    # ClamAV's unsigned arithmetic: "0x3217 - 4 <= end" and "vep < end - 0x3217 - 4" (mod 2**32)
    return (last.virtual_address <= pe.entry_rva and end >= 0x3213
            and pe.entry_rva < (end - 0x321B) % 2**32 and pe.stub[4:14] == ENTRY_CODE)


def lfsr_xor(data: bytearray, start: int, length: int, key: int, poly: int, on_one: bool) -> None:
    """XOR ``length`` bytes of ``data`` from ``start`` with PESpin's key stream: before each byte the
    32-bit ``key`` shifts right and takes ``poly`` when the bit shifted out is 1 (``on_one``) or 0;
    its low byte is the stream byte."""
    stream = bytearray(length)
    want = 1 if on_one else 0
    for i in range(length):
        bit = key & 1
        key >>= 1
        if bit == want:
            key ^= poly
        stream[i] = key & 0xFF
    piece = int.from_bytes(data[start:start + length], "little") ^ int.from_bytes(stream, "little")
    data[start:start + length] = piece.to_bytes(length, "little")


def checksum(data: bytes | bytearray) -> int:
    """PESpin's checksum over ``data`` (step 3): per byte, the byte enters a 32-bit word that then
    goes through four rounds of add, xor and rotate with a second word; the second word is the sum."""
    a = b = 0xFFFFFFFF
    for byte in data:
        a = ((a ^ (byte << 8)) >> 3) & 0x1FFFFFFF
        for _ in range(4):
            a = ((a ^ ((b >> 8) & 0xFF)) + 0x7801A108) & 0xFFFFFFFF
            a ^= b
            r = b & 31
            a = ((a >> r) | (a << (32 - r))) & 0xFFFFFFFF if r else a
            a, b = b, a
    return b


def decrypt_stub(pe: PackedPe, name: str) -> SpinStub | None:
    """Steps 1, 2 and 5 on a copy of PESpin's section, with ClamAV's checks: None when a version
    marker is missing (not PESpin 1.1); :class:`PackerError` ("broken") when a length is out of
    bounds."""
    last = pe.sections[-1]
    stub = bytearray(pe.data[last.raw_offset:last.raw_offset + last.raw_size])
    ep = pe.entry_rva - last.virtual_address
    if ep + STUB_END > len(stub):
        raise PackerError("broken", f"{name}: PESpin: the stub is cut short")
    if stub[ep + 0xDB] != 0xBB or stub[ep + 0xE0] != 0xB9 or _u32(stub, ep + 0xE1) != KEY8_LEN:
        return None
    key8 = stub[ep + 0xDC]
    top = ep + 0x1FE5 + KEY8_LEN - 1
    for i in range(KEY8_LEN):  # step 1
        stub[top - i] ^= (key8 - i) & 0xFF
    if _u32(stub, ep + 0x26F0) != LAYER2_LEN:
        return None
    lfsr_xor(stub, ep + 0x2D5, LAYER2_LEN, _u32(stub, ep + 0x26EB), 0x8C328834, True)  # step 2
    checksum_len = (len(pe.data) - _u32(stub, ep + 0x429)) % 2**32
    if checksum_len >= len(pe.data):
        raise PackerError("broken", f"{name}: PESpin: checksum length out of the file")
    if _u32(stub, ep + 0x644) != LAYER5_LEN:
        return None
    lfsr_xor(stub, ep + 0x28D3, LAYER5_LEN, _u32(stub, ep + 0x650), 0xED43AF32, True)  # step 5
    if _u32(stub, ep + 0x28DD) != POLY1_LEN:
        return None
    return SpinStub(bytes(stub), ep, _u32(stub, ep + 0x3207), _u32(stub, ep + 0x6F1),
                    _u32(stub, ep + 0x3061), _u32(stub, ep + 0x2FEE), _u32(stub, ep + 0x3217),
                    checksum_len)


def section_key(pe: PackedPe, spin: SpinStub) -> int:
    """Step 3: the key of the section XOR layer (the packed file as it is on disk is summed)."""
    return (spin.stored_key - checksum(pe.data[:spin.checksum_len])) % 2**32


def xor_sections(data: bytearray, pe: PackedPe, bitmap: int, key: int, name: str) -> None:
    """Step 4 on ``data`` (the packed file, PESpin's section already decrypted): each of the
    program's sections (all but the last) whose bit is set in ``bitmap``, with the stream restarted
    from ``key`` for each."""
    for j, sec in enumerate(pe.sections[:-1]):
        if bitmap >> j & 1:
            if not sec.raw_size or sec.raw_offset + sec.raw_size > len(data):
                raise PackerError("broken", f"{name}: PESpin: section {j} is out of the file")
            lfsr_xor(data, sec.raw_offset, sec.raw_size, key, 0xED43AF31, False)


def grow_sections(data: bytes, pe: PackedPe, bitmap: int, resources_rva: int,
                  limits: UnpackLimits, name: str) -> list[tuple[int, int, bytes]]:
    """Step 7's decompression on ``data`` (the packed file with every layer undone): the program's
    sections as (RVA, virtual size, data), compressed ones (bit set in ``bitmap``) at their virtual
    size, and the resources' compressed tail grown (when it fails, kept as it is, as ClamAV
    does).  The sizes are checked against the limits before decoding."""
    secs = pe.sections[:-1]
    grown = sum(s.virtual_size for j, s in enumerate(secs) if bitmap >> j & 1)
    size_check(limits, name, grown, len(data))
    out: list[tuple[int, int, bytes]] = []
    for j, sec in enumerate(secs):
        raw = data[sec.raw_offset:sec.raw_offset + sec.raw_size]
        if bitmap >> j & 1:
            try:
                plain, _ = decompress(raw, sec.virtual_size)
            except AplibError as exc:
                raise PackerError("broken", f"{name}: PESpin section {j}: {exc}") from None
            raw = plain.ljust(sec.virtual_size, b"\0")
        elif resources_rva and 0 < resources_rva - sec.virtual_address <= sec.raw_size \
                and resources_rva - sec.virtual_address < sec.virtual_size:
            keep = resources_rva - sec.virtual_address
            size_check(limits, name, grown + sec.virtual_size, len(data))
            try:
                tail, _ = decompress(raw[keep:], sec.virtual_size - keep)
                raw = (raw[:keep] + tail).ljust(sec.virtual_size, b"\0")
            except AplibError:
                pass  # ClamAV: "failed to grow resources, continuing anyway"
        out.append((sec.virtual_address, sec.virtual_size, raw))
    return out


def rebuild_sections(sections: list[tuple[int, int, bytes]]) -> bytes:
    """Step 7's PE: the sections in Bastion's layout at ClamAV's base and entry point."""
    return sections_as_file(sections, IMAGE_BASE, 0x1000)


def run_snippet(data: bytearray, snippet_at: int, start: int, length: int, name: str) -> None:
    """Step 6 on one range: the snippet at ``snippet_at`` in ``data`` translated (0x24 bytes and the
    0xaa after them) and applied to ``length`` bytes from ``start``, CL counting down from
    ``length``.  "unsupported" for a snippet outside the whitelist, "broken" for a range out of
    ``data``."""
    code = data[snippet_at:snippet_at + POLY_CODE_LEN + 1]
    try:
        program = translate(code, POLY_CODE_LEN)
    except SnippetError as exc:
        raise PackerError("unsupported", f"{name}: PESpin poly snippet: {exc}") from None
    if program.end != POLY_CODE_LEN or len(code) <= POLY_CODE_LEN or code[POLY_CODE_LEN] != 0xAA:
        raise PackerError("unsupported", f"{name}: PESpin poly snippet does not end at +0x24 with stosb")
    if start < 0 or start + length > len(data):
        raise PackerError("broken", f"{name}: PESpin: poly range out of the file")
    if start < snippet_at + POLY_CODE_LEN + 1 and snippet_at < start + length:
        raise PackerError("unsupported", f"{name}: PESpin: a poly range covers its own snippet")
    apply(program, data, start, length, length)


def undo_layers(pe: PackedPe, spin: SpinStub, name: str) -> bytearray:
    """Steps 3, 4 and 6 on a copy of the packed file with PESpin's section replaced by ``spin``'s
    decrypted one, in ClamAV's order and on the same buffer."""
    last = pe.sections[-1]
    data = bytearray(pe.data)
    data[last.raw_offset:last.raw_offset + len(spin.stub)] = spin.stub
    xor_sections(data, pe, spin.xor_bitmap, section_key(pe, spin), name)  # steps 3 and 4
    ep = last.raw_offset + spin.ep
    run_snippet(data, ep + 0x28EC, ep + 0x6D4, POLY1_LEN, name)  # step 6, the stub's 0x1a1 bytes
    bitmap = _u32(data, ep + 0x6F1)
    for j, sec in enumerate(pe.sections[:-1]):
        if bitmap >> j & 1 and sec.raw_size:
            run_snippet(data, ep + 0x755, sec.raw_offset, sec.raw_size, name)
    return data


def unpack(pe: PackedPe, limits: UnpackLimits, name: str) -> Unpacked | None:
    """None unless ``pe`` is PESpin 1.1; then its program rebuilt into a PE, or "broken",
    "unsupported" (a snippet outside bytecrypt's whitelist) or a limit."""
    if not detect(pe):
        return None
    size_check(limits, name, len(pe.data), len(pe.data))  # ClamAV's CLI_UNPSIZELIMITS(fsize)
    spin = decrypt_stub(pe, name)
    if spin is None:
        return None
    data = undo_layers(pe, spin, name)
    ep = pe.sections[-1].raw_offset + spin.ep
    sections = grow_sections(bytes(data), pe, _u32(data, ep + 0x3061), _u32(data, ep + 0x2FEE), limits, name)
    return Unpacked(rebuild_sections(sections), 0, "pespin-aplib", is_file=True)
