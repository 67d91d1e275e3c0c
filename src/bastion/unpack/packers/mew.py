"""MEW 11 SE-packed executables: the program decoded from MEW's aPLib chunks and, when MEW used it,
its LZMA stream.

Recognised as ClamAV 1.4 recognises them (libclamav/pe.c): a section without raw data followed by
one with raw data (ClamAV's "empty section found"), the entry point's code a ``jmp`` (``e9``) to RVA
0x154 or 0x158 (MEW's loader in the PE header, read at that file offset), whose ``mov esi, <VA>``
points into the second section's data.  The image is the empty section's virtual size followed by
the second section (its raw data at the start), from the first section's RVA on.

At ESI: a u32, the original entry point's VA, the VA the first chunk decodes to; then aPLib chunks
(:mod:`bastion.unpack.packers.aplib`), each followed by the VA of the next one's output, 0 after
the last.  When the loader's code holds a ``call`` at + 0x7b, the chunks only unpacked MEW's LZMA
decoder and its data follows the last chunk (:func:`_lzma_chunks`).

The image is rebuilt into a PE of Bastion's layout (:func:`~bastion.unpack.packers.rebuild.sections_as_file`)
with ClamAV's sections: one per aPLib chunk, each ending at its output's end rounded up to 4 KiB
(the whole empty section for the LZMA form).
"""

from __future__ import annotations

import re
import struct

from bastion.unpack.base import UnpackLimits
from bastion.unpack.packers import aplib, lzma_variant
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, size_check
from bastion.unpack.packers.rebuild import sections_as_file

LOADER_RVAS = (0x154, 0x158)  # Win9x compatibility set / not set
LOADER_SIZE = 0xB0
PAGE = 0x1000
MASK = 0xFFFF_FFFF
MAX_CHUNKS = 4096
MEW_LC, MEW_LP, MEW_PB = 4, 0, 2
CALL = re.compile(b"[\xe8\xe9]")
PROBS_SIZE = 0x6E6C  # the bytes MEW's LZMA probability array takes (ClamAV checks they fit)


def unpack(pe: PackedPe, limits: UnpackLimits, name: str) -> Unpacked | None:
    """The MEW-packed program as a rebuilt PE file; None when ``pe`` is not MEW's."""
    found = _layout(pe)
    if found is None:
        return None
    empty, offdiff, lzma_proc = found

    def broken(why: str) -> PackerError:
        return PackerError("broken", f"{name}: MEW: {why}")

    secs = pe.sections
    packed = secs[empty + 1]
    ssize, dsize = packed.virtual_size, secs[empty].virtual_size
    size_check(limits, name, ssize + dsize, len(pe.data))
    if packed.raw_size < offdiff + 12 or packed.raw_size > ssize:
        return None  # ClamAV: "size mismatch", on to the next unpacker
    buf = bytearray(ssize + dsize)
    buf[dsize:dsize + packed.raw_size] = pe.data[packed.raw_offset:packed.raw_offset + packed.raw_size]
    vadd = secs[0].virtual_address
    vma = pe.image_base + vadd
    if vma > MASK:
        raise broken("image base + RVA overflows")
    head = dsize + offdiff
    entry_va, first_va = struct.unpack_from("<II", buf, head + 4)
    try:
        ends, last_src = _aplib_chunks(buf, head + 12, ssize - 12 - offdiff, first_va, vma)
    except ValueError as exc:
        raise broken(str(exc)) from None
    if lzma_proc is None:
        pieces = []
        raw = 0
        for i, end in enumerate(ends):
            aligned = -(-end // PAGE) * PAGE
            if i and aligned < raw:
                raise broken("chunks out of order")
            size = aligned - raw
            if raw + size > dsize:
                raise broken("a chunk decodes past the empty section")
            pieces.append((vadd + raw, size, bytes(buf[raw:raw + size])))
            raw = aligned
    else:
        if lzma_proc + 8 >= len(buf) or last_src + 4 + 29 > len(buf):
            raise broken("LZMA set-up data outside the image")
        try:
            _lzma_chunks(buf, last_src + 4, vma, buf[lzma_proc + 8] == 0x50)
        except ValueError as exc:
            raise broken(str(exc)) from None
        pieces = [(vadd, dsize, bytes(buf[:dsize]))]
    entry = (entry_va - pe.image_base) & MASK
    return Unpacked(sections_as_file(pieces, pe.image_base, entry), 0,
                    "mew-lzma" if lzma_proc is not None else "mew-aplib", is_file=True)


def _layout(pe: PackedPe) -> tuple[int, int, int | None] | None:
    """ClamAV's MEW checks: (index of the empty section, ESI's offset in the next one, the LZMA
    decoder's offset in the image or None), or None when ``pe`` is not MEW's."""
    secs = pe.sections
    empty = next((i for i in range(len(secs) - 1) if not secs[i].raw_size and secs[i].virtual_size
                  and secs[i + 1].raw_size and secs[i + 1].virtual_size), None)
    if empty is None or len(pe.stub) < 16 or pe.stub[0] != 0xE9:
        return None
    loader = (pe.entry_rva + int.from_bytes(pe.stub[1:5], "little") + 5) & MASK
    if loader not in LOADER_RVAS or loader + LOADER_SIZE > len(pe.data):
        return None
    code = pe.data[loader:loader + LOADER_SIZE]
    nxt = secs[empty + 1]
    esi = (int.from_bytes(code[1:5], "little") - pe.image_base) & MASK
    # ClamAV bounds ESI by the section's raw *offset* (sic); kept for the same verdicts
    if not nxt.virtual_address < esi < nxt.virtual_address + nxt.raw_offset - 4:
        return None
    offdiff = esi - nxt.virtual_address
    if offdiff >= nxt.virtual_size + secs[empty].virtual_size:
        return None
    lzma_proc = None
    if code[0x7B] == 0xE8:
        target = (int.from_bytes(code[0x7C:0x80], "little") + loader + 0x80) & MASK
        second = secs[1] if len(secs) > 1 else secs[0]
        if not second.virtual_address <= target <= second.virtual_address + second.virtual_size - 4:
            return None
        lzma_proc = (target - secs[0].virtual_address) & MASK
    return empty, offdiff, lzma_proc


def _aplib_chunks(buf: bytearray, src: int, src_left: int, first_va: int, vma: int) -> tuple[list[int], int]:
    """Decode the chain of aPLib chunks from ``src`` (``src_left`` bytes of data), the first one to
    ``first_va``: (each chunk's output end, the end of the last chunk's data, where its zero "next
    VA" is).  Output offsets are VA - ``vma``; all of it stays inside ``buf``."""
    total = len(buf)
    ends: list[int] = []
    produced = 0
    va = first_va
    for _ in range(MAX_CHUNKS):
        dst = va - vma
        if src_left <= 0 or not 0 <= dst < total or src + src_left > total:
            raise ValueError("chunk outside the image")
        chunk = aplib.decode(buf, src, src + src_left, dst, total)
        produced += chunk.dst - dst
        if produced > total:
            raise ValueError("the chunks decode to more than the image")
        if chunk.src + 4 > total:
            raise ValueError("chunk list runs out of the image")
        ends.append(chunk.dst)
        (va,) = struct.unpack_from("<I", buf, chunk.src)
        src_left -= chunk.src + 4 - src
        src = chunk.src + 4
        if not va:
            return ends, chunk.src
    raise ValueError(f"more than {MAX_CHUNKS} chunks")


def _lzma_chunks(buf: bytearray, at: int, vma: int, special: bool) -> None:
    """Decode MEW's LZMA data at ``at`` into ``buf``.  ``special`` (the decoder starts ``push eax``):
    a u32 count of bytes whose x86 calls are to be restored comes first and one chunk follows;
    otherwise chunks follow until a zero u32.  Before the chunks, the VA of the decoder's
    probability array (not written here: it is the stub's work memory).  A chunk: u32 output size,
    u32 output VA, u32 stream size, a byte, the stream."""
    total = len(buf)
    calls = 0
    if special:
        (calls,) = struct.unpack_from("<I", buf, at)
        at += 4
    probs = struct.unpack_from("<I", buf, at)[0] - vma
    if not 0 <= probs <= total - PROBS_SIZE:
        raise ValueError("LZMA probability array outside the image")
    at += 4
    produced = 0
    for _ in range(MAX_CHUNKS):
        if at + (12 if special else 16) > total:
            raise ValueError("LZMA chunk header outside the image")
        size, dest_va, packed = struct.unpack_from("<III", buf, at)
        if not special and not size:
            return
        stream = at + 13
        at = stream + packed
        if not size:
            continue
        dest = dest_va - vma
        produced += size
        if not 0 <= dest <= total - size or produced > total:
            raise ValueError("LZMA output outside the image")
        out = lzma_variant.decode(memoryview(buf)[stream:], size, MEW_LC, MEW_LP, MEW_PB, end_marker=True)
        buf[dest:dest + len(out)] = out
        if special:
            _restore_calls(buf, dest, calls)
            return
    raise ValueError(f"more than {MAX_CHUNKS} LZMA chunks")


def _restore_calls(buf: bytearray, at: int, count: int) -> None:
    """MEW's call filter undone over ``count`` bytes from ``at``: each ``e8``/``e9`` is followed by
    a big-endian absolute target, made relative again (as ClamAV does; nothing when the range does
    not fit)."""
    if count < 5 or at + count > len(buf):
        return
    end = at + count - 5
    found = CALL.search(buf, at, end)
    while found is not None:
        k = found.start()
        target = int.from_bytes(buf[k + 1:k + 5], "big")
        buf[k + 1:k + 5] = ((target - (k - at) - 1) & MASK).to_bytes(4, "little")
        found = CALL.search(buf, k + 5, end)
