"""Compiled AutoIt scripts: the files an AutoIt v3 executable carries (its script and ``FileInstall``
payloads).

Looked for in every PE where ClamAV 1.4.6 looks: wherever its built-in ``AUTOIT`` embedded-type
signature holds (``filetypes_int.h``: 16 fixed bytes, then ``AU3!EA05`` or ``AU3!EA06``).  The
version byte (``5`` or ``6``) picks the layout; all integers are little-endian and XORed with a fixed
key per field (``Layout``):

=======  ===========================================================================================
offset   from the signature
=======  ===========================================================================================
0        the signature (24 bytes)
24       16 bytes (EA05: their byte sum is part of the file data key; EA06: unused)
40       entries, while the next one starts with the file magic:
=======  ===========================================================================================

An entry is: the file magic (u32), a *type* string (u32 length, then the bytes: EA05 counts bytes,
EA06 UTF-16 characters), the original *path* string (the same way), a compression byte (1:
compressed), the compressed size, the declared decompressed size and a checksum (u32 each), 16 bytes
of file times, then the data, encrypted (:mod:`bastion.unpack.autoit_crypt`) and, when compressed,
an ``EA05``/``EA06`` stream (:mod:`bastion.unpack.autoit_lzss`).  In EA06 the type
``>>>AUTOIT SCRIPT<<<`` marks the script, a token stream that is turned back into text
(:mod:`bastion.unpack.autoit_tokens`), as ClamAV scans it.

Children are named as clamscan names the files it extracts: ``app.exe!autoit.001``,
``app.exe!autoit.002`` (EA06 numbers an entry once its size is read, so a damaged one leaves a gap, as
in ClamAV; a second AutoIt block in the same file: ``app.exe!autoit1/autoit.001``).  Entries ClamAV
skips are skipped: empty ones, a compressed one with a wrong stream magic, and any whose data is
shorter than 4 bytes.  The walk ends at the first entry that does not start with the magic (the
normal end: a trailer follows) or that runs past the end of the file (reported "broken", the files
before it kept).  Limits: ``max_filesize`` on the compressed and on the declared size, the ratio
bound while decompressing, and at most ``max_files`` entries (empty ones count too, so a block of
millions of empty entries is cut short; ClamAV counts only the files it scans).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from itertools import islice

from bastion.unpack.autoit_crypt import lame_keystream, mt_keystream, xor
from bastion.unpack.autoit_lzss import declared_size, expand
from bastion.unpack.autoit_tokens import detokenize, narrow
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, as_bytes, find_all, register

SIGNATURE = bytes.fromhex("a3484bbe986c4aa9994c530a86d6487d") + b"AU3!EA0"
HEADER = len(SIGNATURE) + 1 + 16
MAX_HITS = 32
SCRIPT_TYPE = b">>>AUTOIT SCRIPT<<<"
_M32 = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class Layout:
    """One version's field keys: the XOR key of each u32 field, the keystream seeds, and what a
    string length counts (1: bytes, 2: UTF-16 characters)."""

    name: str
    file_magic: int
    type_key: int
    type_seed: int
    path_key: int
    size_key: int
    checksum_key: int
    data_seed: int
    stream_magic: bytes
    match_flag: int
    char_size: int
    keystream: Callable[[int, int], bytes]


EA05 = Layout("EA05", 0xCEB06DFF, 0x29BC, 0xA25E, 0x29AC, 0x45AA, 0xC3D2, 0x22AF, b"EA05", 1, 1, mt_keystream)
EA06 = Layout("EA06", 0x52CA436B, 0xADBC, 0xB33F, 0xF820, 0x87BC, 0xA685, 0x2477, b"EA06", 0, 2, lame_keystream)


def _u32(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 4], "little")


def autoit_members(data: bytes, offset: int,
                   limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    """The files of the AutoIt block whose signature starts at ``offset``: (name, bytes) pairs, and a
    :class:`LimitExceeded` for each file that could not be had or damage that ended the walk."""
    version = data[offset + len(SIGNATURE):offset + len(SIGNATURE) + 1]
    layout = {b"5": EA05, b"6": EA06}.get(version)
    if layout is None or data[offset:offset + len(SIGNATURE)] != SIGNATURE:
        return
    end = len(data)
    pos = offset + HEADER
    if pos > end:
        yield LimitExceeded("broken", f"AutoIt {layout.name}: header cut short")
        return
    data_seed = layout.data_seed
    if layout is EA05:
        data_seed += sum(data[pos - 16:pos])
    unit = layout.char_size
    number = 0   # the file number in the child's name
    entries = 0

    def cut(what: str) -> LimitExceeded:
        return LimitExceeded("broken", f"AutoIt {layout.name}: {what} runs past the end of the file")

    while True:
        if pos + 8 > end:
            yield cut(f"entry {entries + 1}")
            return
        if _u32(data, pos) != layout.file_magic:
            return  # the normal end
        entries += 1
        if entries > limits.max_files:
            yield LimitExceeded("max-files", f"AutoIt {layout.name}: more than {limits.max_files} entries")
            return
        length = (_u32(data, pos + 4) ^ layout.type_key) * unit & _M32
        if length >= 0x8000_0000:
            yield LimitExceeded("broken", f"AutoIt {layout.name}: entry {entries}: bad type length")
            return
        pos += 8
        script = False
        if layout is EA06 and length == 2 * len(SCRIPT_TYPE):
            if pos + length > end:
                yield cut(f"entry {entries}")
                return
            kind = bytearray(xor(data[pos:pos + length], layout.keystream(length // 2 + layout.type_seed, length)))
            narrow(kind)
            script = kind.startswith(SCRIPT_TYPE)
        pos += length
        if pos + 4 > end:
            yield cut(f"entry {entries}")
            return
        length = (_u32(data, pos) ^ layout.path_key) * unit & _M32
        if length >= 0x8000_0000:
            yield LimitExceeded("broken", f"AutoIt {layout.name}: entry {entries}: bad path length")
            return
        pos += 4 + length
        if pos + 13 > end:
            yield cut(f"entry {entries}")
            return
        compressed = data[pos] == 1
        csize = _u32(data, pos + 1) ^ layout.size_key
        if csize >= 0x8000_0000:
            yield LimitExceeded("broken", f"AutoIt {layout.name}: entry {entries}: bad size")
            return
        pos += 13 + 16
        if not csize:
            continue
        if csize > limits.max_filesize:
            yield LimitExceeded("max-filesize", f"AutoIt {layout.name} entry {entries}: "
                                f"larger than {limits.max_filesize} bytes")
            pos += csize
            continue
        if compressed and csize < 4:
            continue  # ClamAV reads the next entry from here, without skipping the data
        if layout is EA06:
            number += 1
        if pos + csize > end:
            yield cut(f"entry {entries}'s data")
            return
        raw = xor(data[pos:pos + csize], layout.keystream(data_seed, csize))
        pos += csize
        name = f"autoit.{number + (1 if layout is EA05 else 0):03d}"
        if compressed:
            content = yield from _expanded(raw, layout, name, limits)
            if content is None:
                continue
        else:
            content = raw
        if len(content) < 4:
            continue
        if layout is EA05:
            number += 1
        if script:
            text = detokenize(content, limits.max_filesize)
            if text.problem == "too large":
                yield LimitExceeded("max-filesize", f"AutoIt {name}: script text larger than "
                                    f"{limits.max_filesize} bytes")
                continue
            if text.problem:
                yield LimitExceeded("broken", f"AutoIt {name}: script: {text.problem}")
            content = text.data
        yield name, content


def _expanded(raw: bytes, layout: Layout, name: str,
              limits: UnpackLimits) -> Generator[LimitExceeded, None, bytes | None]:
    """Decompress one entry's decrypted data; yields the problems and returns the bytes,
    or None when the entry is skipped."""
    if raw[:4] != layout.stream_magic:
        yield LimitExceeded("broken", f"AutoIt {name}: not an {layout.name} stream")
        return None
    size = declared_size(raw)
    if size > limits.max_filesize:
        yield LimitExceeded("max-filesize", f"AutoIt {name}: larger than {limits.max_filesize} bytes")
        return None
    cap = limits.growth_cap(len(raw))
    result = expand(raw, size, layout.match_flag, stop_at=cap + 1)
    if len(result.data) > cap:
        yield LimitExceeded("max-ratio", f"AutoIt {name}: compression ratio above {limits.max_ratio}")
        return None
    if result.problem:
        yield LimitExceeded("broken", f"AutoIt {name}: {result.problem}")
    return result.data


def _hits(data: bytes) -> Iterator[int]:
    """Where ClamAV's AUTOIT type signature holds (EA05 or EA06 after it), the first MAX_HITS."""
    end = len(SIGNATURE)
    return islice((pos for pos in find_all(data, SIGNATURE) if data[pos + end:pos + end + 1] in (b"5", b"6")),
                  MAX_HITS)


class AutoItUnpacker:
    handles = frozenset({"CL_TYPE_MSEXE"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = as_bytes(data)
        for block, pos in enumerate(_hits(raw)):
            prefix = f"autoit{block}/" if block else ""
            for item in autoit_members(raw, pos, limits):
                if isinstance(item, LimitExceeded):
                    yield item
                else:
                    yield ChildObject(item[1], item[0], f"{container_path}!{prefix}{item[0]}")


register(AutoItUnpacker())
