"""What the PE packer unpackers share: the packed file's headers, the unpacked image, the errors.

:func:`read_pe32` reads the few header fields the unpackers need beside ClamAV's view of the sections
(from :func:`bastion.formats.executable.parse_executable`): the image base and the entry point RVA.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bastion.formats.executable import Section, parse_executable
from bastion.unpack.base import UnpackLimits

# How much of the code at the entry point the detectors look at
STUB_SIZE = 0x400


class PackerError(Exception):
    """A packed file that cannot be unpacked: ``kind`` is ``broken`` or a limit name
    (``max-filesize``, ``max-ratio``), as in :class:`~bastion.unpack.base.LimitExceeded`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PackedPe:
    """A PE32 file as the packer detectors see it.

    ``sections`` are ClamAV's (aligned and clipped, see :mod:`bastion.formats.executable`);
    ``entry`` is the entry point's file offset and ``stub`` the bytes from there (at most
    ``STUB_SIZE``), the packer's decompression code."""

    data: bytes
    image_base: int
    entry_rva: int
    entry: int
    sections: tuple[Section, ...]
    stub: bytes

    def section_data(self, index: int) -> bytes:
        sec = self.sections[index]
        return self.data[sec.raw_offset:sec.raw_offset + sec.raw_size]

    def offset_of_rva(self, rva: int) -> int | None:
        """The file offset of ``rva`` through the section whose raw data holds it, or None."""
        for sec in self.sections:
            if sec.raw_size and sec.virtual_address <= rva < sec.virtual_address + sec.raw_size:
                return rva - sec.virtual_address + sec.raw_offset
        return None


@dataclass(frozen=True, slots=True)
class Unpacked:
    """A packed program's memory image as the packer's stub would have restored it: ``image`` holds
    the bytes from RVA ``base_rva`` on; ``method`` names packer and algorithm (``upx-nrv2b``).
    ``is_file``: the packer module already made ``image`` a PE file (the image with its own headers,
    see :func:`bastion.unpack.packers.rebuild.image_as_file`)."""

    image: bytes
    base_rva: int
    method: str
    is_file: bool = False


def read_pe32(data: bytes) -> PackedPe | None:
    """The packer-relevant view of a PE32 (i386) file; None for anything else or a PE whose entry
    point ClamAV cannot map."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        return None
    info = parse_executable(data)
    if info is None or info.kind != "pe" or info.entry_point is None:
        return None
    (e_lfanew,) = struct.unpack_from("<I", data, 0x3C)
    opt = e_lfanew + 24
    if opt + 32 > len(data) or data[opt:opt + 2] == b"\x0b\x02":
        return None
    entry_rva, = struct.unpack_from("<I", data, opt + 16)
    image_base, = struct.unpack_from("<I", data, opt + 28)
    stub = data[info.entry_point:info.entry_point + STUB_SIZE]
    return PackedPe(data, image_base, entry_rva, info.entry_point, info.sections, stub)


def size_check(limits: UnpackLimits, name: str, size: int, packed_size: int) -> int:
    """The most bytes an image of declared ``size`` may decode to: raises :class:`PackerError` when
    the declared size already breaks ``max-filesize`` or the ratio bound."""
    cap = limits.growth_cap(packed_size)
    problem = limits.growth_problem(name, size, cap)
    if problem is not None:
        raise PackerError(problem.limit, problem.detail)
    return size


def limit_error(limits: UnpackLimits, name: str, size: int, packed_size: int) -> PackerError:
    """The error for an image that grew past ``size`` bytes while decoding."""
    problem = limits.growth_problem(name, size + 1, limits.growth_cap(packed_size))
    if problem is None:
        return PackerError("broken", f"{name}: decodes to more than its declared {size} bytes")
    return PackerError(problem.limit, problem.detail)


def map_image(pe: PackedPe, limits: UnpackLimits, name: str, count: int | None = None,
              headers: bool = False) -> tuple[bytearray, int]:
    """The packed file's memory image as a packer's stub finds it: ``(image, base)``, where
    ``image[0]`` is RVA ``base`` (the lowest section RVA, or 0 with ``headers``: the file's headers,
    up to the first section's raw data, are then at RVA 0) and the image ends at the highest section
    end; each of the first ``count`` sections (all by default) holds its raw data at its RVA.
    Raises :class:`PackerError` when the image breaks a limit."""
    secs = pe.sections if count is None else pe.sections[:count]
    if not secs:
        raise PackerError("broken", f"{name}: no sections")
    base = 0 if headers else min(s.virtual_address for s in pe.sections)
    end = max(s.virtual_address + max(s.virtual_size, s.raw_size) for s in pe.sections)
    size_check(limits, name, end - base, len(pe.data))
    image = bytearray(end - base)
    if headers:
        head = min([s.raw_offset for s in pe.sections if s.raw_size] + [len(image), len(pe.data)])
        image[:head] = pe.data[:head]
    for sec in secs:
        if sec.raw_size:
            at = sec.virtual_address - base
            image[at:at + sec.raw_size] = pe.data[sec.raw_offset:sec.raw_offset + sec.raw_size]
    return image, base


def copy_match(image: bytearray, out: int, start: int, length: int) -> None:
    """Copy ``length`` bytes from ``start`` to ``out`` (``start < out``) byte by byte as an LZ
    decoder does, overlapping runs included, but in slices (a long run costs no Python loop)."""
    period = out - start
    if period >= length:
        image[out:out + length] = image[start:start + length]
    else:
        pattern = bytes(image[start:out])
        image[out:out + length] = (pattern * (length // period + 1))[:length]
