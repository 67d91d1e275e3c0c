"""UPX-packed Windows executables (PE32, i386): the compressed image is decoded, never run.

Recognised as ClamAV 1.4 recognises them (``cli_scanpe``): a section with no raw data but a virtual
size (UPX0, where the stub decompresses to) followed by one with both (UPX1, the compressed data
and the stub); section names do not matter.  The destination is at most both sections' virtual
size.  The algorithm is told by the stub's code: 13 bytes at entry point + 0x69 (or + 0x71) taken
from ClamAV's NRV2B/NRV2D/NRV2E decompressor patterns, or the LZMA stub's ``mov dword [ebx],
<properties>`` (found anywhere in the stub: UPX 4's stub moved it, ClamAV 1.4 misses it).  The
compressed data starts where the stub's ``pusha; mov esi, <address>`` points (UPX 4 puts a 21-byte
header first); as ClamAV does, an unrecognised stub is tried with each NRV decoder.

UPX's LZMA data starts with two bytes of its own (``(lc + lp) << 3 | pb``, ``lp << 4 | lc``) and
then a raw LZMA1 stream without end marker, decoded with Python's lzma module up to the output size
the stub pushes.

The image is returned as decoded: UPX's call/jump filter (x86 ``E8``/``E9`` targets made absolute
before compression) is not undone, so code bytes of a filtered section differ from the original.
"""

from __future__ import annotations

import re

from bastion.unpack.base import UnpackLimits
from bastion.unpack.bounded import DecodeError, decompress_capped, lzma_props
from bastion.unpack.packers.nrv import DECODERS, OutputLimit
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, limit_error, size_check

# ClamAV's byte patterns of UPX's NRV decompressors (libclamav/pe.c): the stub's 13 bytes at entry
# point + 0x69 or + 0x71 lie inside one of them
PATTERNS = {
    "nrv2b": bytes.fromhex("11db11c901db75078b1e83eefc11db11c911c975204101db"),
    "nrv2d": bytes.fromhex("83f0ff7478d1f889c5eb0b01db75078b1e83eefc11db11c9"),
    "nrv2e": bytes.fromhex("eb5231c983e80372 11c1e0088a064683f0ff7475d1f889c5".replace(" ", "")),
}
# The LZMA stub: push <unpacked size>; push edi; add ebx, 4; push ebx; push <packed size>; push esi;
# add ebx, 4; push ebx; push eax; mov dword [ebx], <lc | lp << 8 | pb << 16>
_LZMA_CALL = re.compile(rb"\x68(.{4})\x57\x83\xc3\x04\x53\x68.{4}\x56\x83\xc3\x04\x53\x50\xc7\x03(.{4})", re.S)
_LZMA_PROPS = re.compile(rb"\x83\xc3\x04\x53\x50\xc7\x03(.{4})", re.S)
# UPX 4 writes a 21-byte header before the compressed data; ClamAV also tries this skew
UPX4_SKEW = 0x15


def packed_sections(pe: PackedPe) -> int | None:
    """ClamAV's test for UPX, FSG and MEW: the index of the first section with a virtual size but no
    raw data that is followed by a section with both, or None."""
    secs = pe.sections
    for i in range(len(secs) - 1):
        if not secs[i].raw_size and secs[i].virtual_size and secs[i + 1].raw_size and secs[i + 1].virtual_size:
            return i
    return None


def identify(stub: bytes) -> str | None:
    """The decompressor UPX's stub holds: ``nrv2b``, ``nrv2d``, ``nrv2e``, ``lzma`` or None."""
    for at in (0x69, 0x71):
        window = stub[at:at + 13]
        if len(window) == 13:
            for method, pattern in PATTERNS.items():
                if window in pattern:
                    return method
    if _LZMA_PROPS.search(stub):
        return "lzma"
    return None


def _skew(pe: PackedPe, upx1_rva: int, ssize: int) -> int:
    """How far into UPX1 the stub's ``pusha; mov esi, <address>`` puts the compressed data (0 when
    the stub does not start so, or points outside the first 4 KiB as ClamAV requires)."""
    if pe.stub[:2] != b"\x60\xbe" or len(pe.stub) < 6:
        return 0
    skew = (int.from_bytes(pe.stub[2:6], "little") - pe.image_base - upx1_rva) & 0xFFFF_FFFF
    return skew if 0 < skew <= 0xFFF and skew < ssize else 0


def unpack(pe: PackedPe, limits: UnpackLimits, name: str) -> Unpacked | None:
    """The UPX-packed program's image, from UPX0's RVA on; None when ``pe`` does not look UPX-packed
    (then nothing was decoded, or no decoder got through the data of an unrecognised stub)."""
    i = packed_sections(pe)
    if i is None:
        return None
    upx0, upx1 = pe.sections[i], pe.sections[i + 1]
    src = pe.section_data(i + 1)
    ssize, dsize = len(src), upx0.virtual_size + upx1.virtual_size
    if ssize <= 0x19 or dsize <= ssize:
        return None
    method = identify(pe.stub)
    size_check(limits, name, dsize, ssize)
    skew = _skew(pe, upx1.virtual_address, ssize)
    if method == "lzma":
        return Unpacked(_lzma(pe.stub, src, skew, dsize, limits, name, ssize), upx0.virtual_address, "upx-lzma")
    starts = list(dict.fromkeys((skew, 0, UPX4_SKEW)))
    methods = [method] if method else list(DECODERS)
    failure = ""
    for candidate in methods:
        for start in starts:
            try:
                image, _end = DECODERS[candidate](src, start, dsize)
            except OutputLimit:
                failure = f"{name}: UPX {candidate} data decodes to more than {dsize} bytes"
                continue
            except DecodeError as exc:
                failure = f"{name}: UPX {candidate} data: {exc}"
                continue
            return Unpacked(image, upx0.virtual_address, f"upx-{candidate}")
    if method is None:
        return None  # an empty section, but nothing UPX could have made
    if failure.endswith(f"{dsize} bytes"):
        raise limit_error(limits, name, dsize, ssize)
    raise PackerError("broken", failure)


def _lzma(stub: bytes, src: bytes, skew: int, dsize: int, limits: UnpackLimits, name: str, ssize: int) -> bytes:
    call = _LZMA_CALL.search(stub)
    if call is not None:
        out_size, raw_props = int.from_bytes(call.group(1), "little"), call.group(2)
    else:
        found = _LZMA_PROPS.search(stub)
        assert found is not None  # identify() found it
        out_size, raw_props = dsize, found.group(1)
    if out_size > dsize:
        raise PackerError("broken", f"{name}: UPX LZMA stub declares {out_size} bytes, more than the "
                                    f"{dsize} its sections hold")
    lc, lp, pb = raw_props[0], raw_props[1], raw_props[2]
    if lc > 8 or lp > 4 or pb > 4:
        raise PackerError("broken", f"{name}: UPX LZMA properties out of range")
    data = src[skew:]
    if data[:2] == bytes((((lc + lp) << 3 | pb) & 0xFF, (lp << 4 | lc) & 0xFF)):
        data = data[2:]  # UPX's own copy of the properties
    props = bytes(((pb * 5 + lp) * 9 + lc,)) + max(out_size, 4096).to_bytes(4, "little")
    try:
        image, more = decompress_capped(lzma_props(props), data, out_size)
    except ValueError as exc:  # DecodeError, or properties liblzma rejects
        partial = getattr(exc, "partial", b"")
        raise PackerError("broken", f"{name}: UPX LZMA data: {exc} after {len(partial)} bytes") from None
    if len(image) < out_size and not more:
        raise PackerError("broken", f"{name}: UPX LZMA data ends after {len(image)} of {out_size} bytes")
    del limits, ssize  # the declared size was checked against them before decoding
    return image
