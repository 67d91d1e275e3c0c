"""Upack 0.39-packed executables (its three-section form): the program decoded from Upack's LZMA
stream (:mod:`bastion.unpack.packers.lzma_variant`), with its call filter undone.

Recognised as ClamAV 1.4 recognises them (libclamav/pe.c, upack.c): a PE32 whose optional header
is 0x148 bytes, three sections, and entry point code ``mov esi, <VA above the first section>``
followed by ``lodsd; push eax`` (0.39) or ``push [esi]`` (a later build ClamAV calls 0297729).  The
image (the three sections' virtual sizes, from the first section's RVA on) holds the file from
offset 0 up to the first section's raw end both at its start and at the third section's RVA, and
the second section's raw data at its RVA.

Everything else is read from the stub's bytes at fixed places, as ClamAV does - nothing is run:
a chain of jumps from the entry point leads to the LZMA set-up (the ``mov ch, <n>`` that gives the
probability count, the ``shr ebp, <n>`` that gives the literal context bits, the ``cmp al, <n>``
that marks filtered calls) and ESI points at a table that the stub copies to its work area: the
stream's VA, the output's start and end VAs and the count of filtered calls.

The output is one section at the first section's RVA, from the image's start to the output's end
(as ClamAV rebuilds it), in a PE of Bastion's layout
(:func:`~bastion.unpack.packers.rebuild.sections_as_file`) whose entry point is the original one
read from ESI's table (ClamAV writes it image-relative).
"""

from __future__ import annotations

import re
import struct

from bastion.unpack.base import UnpackLimits
from bastion.unpack.packers import lzma_variant
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, size_check
from bastion.unpack.packers.rebuild import sections_as_file

MASK = 0xFFFF_FFFF
MIN_STUB = 168  # ClamAV reads at least this much at the entry point before trying Upack
V399, V0297729 = "0.39", "0297729"
# Where ClamAV expects the probability array: after six u32s of range coder and rep state, the
# literal probabilities start 0x1008 bytes after the array's base and take 0x300 u32s a context.
PROBS_START, LITERALS_AT, LITERAL_CONTEXT = 0x18, 0x1008, 0x300 * 4


class _Image:
    """The Upack image as the stub sees it, with checked little-endian reads at image offsets."""

    __slots__ = ("buf", "name")

    def __init__(self, buf: bytearray, name: str) -> None:
        self.buf, self.name = buf, name

    def broken(self, why: str) -> PackerError:
        return PackerError("broken", f"{self.name}: Upack: {why}")

    def need(self, at: int, size: int) -> None:
        if not (at >= 0 and at + size <= len(self.buf)):
            raise self.broken("stub data outside the image")

    def byte(self, at: int) -> int:
        self.need(at, 1)
        return self.buf[at]

    def sbyte(self, at: int) -> int:
        value = self.byte(at)
        return value - 256 if value >= 128 else value

    def u32(self, at: int) -> int:
        self.need(at, 4)
        return int.from_bytes(self.buf[at:at + 4], "little")

    def s32(self, at: int) -> int:
        value = self.u32(at)
        return value - (1 << 32) if value >= 1 << 31 else value

    def expect(self, at: int, value: int, what: str) -> None:
        if self.byte(at) != value:
            raise self.broken(f"no {what} where the stub should have it")


def unpack(pe: PackedPe, limits: UnpackLimits, name: str) -> Unpacked | None:
    """The Upack-packed program as a rebuilt PE file; None when ``pe`` is not Upack's."""
    version = _version(pe)
    if version is None:
        return None
    secs = pe.sections
    raws = _raw_extents(pe.data, len(secs))
    if raws is None:
        return None
    (raw0, rsz0), (raw1, rsz1) = raws[0], raws[1]
    dsize = secs[0].virtual_size + secs[1].virtual_size + secs[2].virtual_size
    ssize = rsz0 + raw0
    size_check(limits, name, max(dsize, ssize, rsz1), len(pe.data))
    base0 = secs[0].virtual_address
    at1, at2 = secs[1].virtual_address - base0, secs[2].virtual_address - base0
    if not (at1 >= 0 and at1 + rsz1 <= dsize and at2 >= 0 and at2 + ssize <= dsize and ssize <= dsize):
        return None  # ClamAV: "probably malformed pe-header", on to the next unpacker
    if ssize > len(pe.data) or raw1 + rsz1 > len(pe.data):
        return None
    buf = bytearray(dsize)
    buf[:ssize] = pe.data[:ssize]
    buf[at2:at2 + ssize] = buf[:ssize]
    buf[at1:at1 + rsz1] = pe.data[raw1:raw1 + rsz1]
    image = _Image(buf, name)
    vma = pe.image_base + base0
    entry_va, out_start, out_end = _decode(image, pe, version, vma)
    size = out_end - out_start
    if size > dsize:
        raise image.broken("output larger than the image")
    pieces = [(base0, size, bytes(buf[:size]))]
    entry = (entry_va - pe.image_base) & MASK
    return Unpacked(sections_as_file(pieces, pe.image_base, entry), 0, f"upack-{version}", is_file=True)


def _version(pe: PackedPe) -> str | None:
    data, stub = pe.data, pe.stub
    lfanew = int.from_bytes(data[0x3C:0x40], "little")
    if len(pe.sections) != 3 or len(stub) < MIN_STUB or data[lfanew + 20:lfanew + 22] != b"\x48\x01":
        return None
    lowest = min(s.virtual_address for s in pe.sections)
    esi = (int.from_bytes(stub[1:5], "little") - pe.image_base) & MASK
    if stub[0] != 0xBE or esi <= lowest:
        return None
    if stub[5:7] == b"\xad\x50":
        return V399
    if stub[5:7] == b"\xff\x36":
        return V0297729
    return None


def _raw_extents(data: bytes, count: int) -> list[tuple[int, int]] | None:
    """Each section's PointerToRawData and SizeOfRawData as the header gives them (not aligned),
    the size clipped to the file as ClamAV clips it."""
    lfanew = int.from_bytes(data[0x3C:0x40], "little")
    table = lfanew + 24 + int.from_bytes(data[lfanew + 20:lfanew + 22], "little")
    if table + 40 * count > len(data):
        return None
    out = []
    for i in range(count):
        size, raw = struct.unpack_from("<II", data, table + 40 * i + 16)
        if raw >= len(data):
            size = 0
        elif raw + size > len(data):
            size = len(data) - raw
        out.append((raw, size))
    return out


def _decode(image: _Image, pe: PackedPe, version: str, vma: int) -> tuple[int, int, int]:
    """Follow the stub to its LZMA parameters, decode the stream and undo the call filter:
    (original entry VA, output start, output end) as image offsets for the output."""
    buf, ep = image.buf, pe.entry
    esi = (int.from_bytes(pe.stub[1:5], "little") - vma) & MASK
    entry_va = image.u32(esi)
    if version == V399:
        image.expect(ep + 0xA, 0xEB, "first jmp")
        code = image.sbyte(ep + 0xB) + ep + 0xC
        image.expect(code + 0x1A, 0xEB, "second jmp")
        mov_ch = code + 0x1B + image.byte(code + 0x1B) + 1 + 0xA
        long_jmp = 8
    else:
        image.expect(ep + 7, 0xE9, "jmp")
        code = image.s32(ep + 8) + ep + 0xC
        mov_ch = code + 0x25
        long_jmp = 10
    image.expect(mov_ch, 0xB5, "mov ch")
    count = image.byte(mov_ch + 1) * 0x100
    image.expect(mov_ch + 1 + long_jmp, 0xE9, "jmp to the decoder")
    head = image.s32(mov_ch + 1 + long_jmp + 1)
    head += code + (image.sbyte(code + 0x1B) + 0x1C + 0x18 if version == V399 else 0x35)
    jecxz, near_jmp, shr_at = head + 43, 8, 24
    if image.byte(jecxz - 1) != 0xE3:
        jecxz, near_jmp, shr_at = head + 46, 7, 26
        image.expect(jecxz - 1, 0xE3, "jecxz")
    after = jecxz + image.byte(jecxz) + 1
    image.expect(after + near_jmp, 0xE9, "jmp to the call filter")
    cmp_al = after + image.s32(after + near_jmp + 1) + near_jmp + 5 + 27 + (2 if version == V0297729 else 0)
    image.expect(head + shr_at, 0xC1, "shr ebp")
    image.expect(head + shr_at + 1, 0xED, "shr ebp")
    shift = image.byte(head + shr_at + 2)
    if not 2 <= shift <= 8:
        raise image.broken(f"literal context shift {shift} out of range")

    if version == V0297729:
        image.expect(code + 6, 0xBE, "mov esi")
        image.expect(code + 11, 0xBF, "mov edi")
        table_va = image.u32(code + 7)
        if not pe.image_base <= table_va <= vma:
            raise image.broken("table outside the image")
        work, table, words = image.u32(code + 12) - vma, table_va - pe.image_base, 0x16
        image.need(work, 0x58 + 24 + 4 * count)
        image.need(table, 0x58 + 0x64 + 4)
    else:
        image.expect(code + 7, 0xBE, "mov esi")
        work, table, words = image.u32(esi + 8) - vma, image.u32(code + 8) - vma, 0x27
        image.need(work, 0x9C + 24 + 4 * count)
        image.need(table, 0x9C + 0x34 + 4)
    for _ in range(words):  # the stub's rep movsd, one u32 at a time (the areas may overlap)
        buf[work:work + 4] = buf[table:table + 4]
        work, table = work + 4, table + 4
    calls = image.u32(table + 4)
    stream = image.u32(work - 4) - vma
    probs_end = PROBS_START + 4 * count
    if probs_end < LITERALS_AT + LITERAL_CONTEXT * ((0xFF >> shift) + 1):
        raise image.broken("the stub leaves LZMA probabilities uninitialised")
    if version == V0297729:
        out, out_end, calls = vma - pe.image_base, image.u32(table + 0x64) - vma, image.u32(table + 0x40)
    else:
        out, out_end = image.u32(table + 0xC) - vma, image.u32(table + 0x34) - vma
    if not 0 <= out <= out_end <= len(buf) or not 0 <= stream < len(buf):
        raise image.broken("output or stream outside the image")
    try:
        decoded = lzma_variant.decode(memoryview(buf)[stream:], out_end - out, 8 - shift, 0, 0, primed=False)
    except ValueError as exc:
        raise image.broken(str(exc)) from None
    buf[out:out_end] = decoded
    _restore_calls(image, out, calls, image.byte(cmp_al))
    return entry_va, out, out_end


def _restore_calls(image: _Image, at: int, count: int, marker: int) -> None:
    """Upack's call filter undone: ``count`` ``e8``/``e9`` whose next byte is ``marker`` are followed
    by a big-endian 24-bit absolute target, made relative again.  Fewer of them before the image
    ends is damage (ClamAV gives up then too)."""
    buf = image.buf
    call = re.compile(b"[\xe8\xe9]" + re.escape(bytes([marker])))  # a scan that skips others
    pos = at
    while count:
        found = call.search(buf, pos)
        if found is None or found.start() + 5 > len(buf):
            raise image.broken("fewer filtered calls than the stub says")
        k = found.start() + 1
        target = int.from_bytes(buf[k + 1:k + 4], "big")
        buf[k:k + 4] = ((target - (k + 4 - at)) & MASK).to_bytes(4, "little")
        pos = k + 4
        count -= 1
