"""NSIS (Nullsoft Scriptable Install System) installers: the data an NSIS stub executable carries.

Layout, all little-endian, from the *first header* (found by its signature ``EF BE AD DE`` +
``NullsoftInst``, 4 bytes into it, anywhere in an executable):

====  ==============================================================================
0     u32 flags
4     u32 0xDEADBEEF, then the 12 bytes ``NullsoftInst``
20    u32 size of the (decompressed) script header
24    u32 archive size: from the first header to the end of the data, a CRC32 included
28    the data
====  ==============================================================================

The data is either *non-solid*: blocks of a u32 length (high bit set: compressed) and that many
bytes, the script header first, then each file, maybe a CRC32 last; or *solid*: one compressed
stream holding, for the header and each file in turn, a u32 length and the bytes.  Which one is
guessed as ClamAV guesses it: the data is solid when its first block length runs past the archive
(or a later one does and the file is not truncated).

Compression, from the first bytes of a stream: ``1`` is NSIS's header-less bzip2 (not decoded here:
reported "unsupported"), ``0x5D`` an LZMA properties byte (5 bytes of properties, then raw LZMA1),
anything else raw deflate.

Members are named as clamscan names them: ``headers``, ``content.001``, ``content.002``, ...  (the
file names are in the script, which is not interpreted.)  Limits: ``max_filesize`` and the ratio
bound per member, ``max_files`` members, the ratio bound on the whole of a solid stream.
"""

from __future__ import annotations

from collections.abc import Iterator

from bastion.unpack.base import LimitExceeded, UnpackLimits
from bastion.unpack.bounded import DecodeError, Decompressor, decompress_capped, lzma_props, pull, raw_deflate

SIGNATURE = b"\xef\xbe\xad\xdeNullsoftInst"
FIRST_HEADER = 28


def _u32(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 4], "little")


def _decompressor(head: bytes) -> tuple[Decompressor, int]:
    """The decompressor for a stream starting with ``head``, and how many bytes of it to skip.
    Raises ValueError for bzip2 and bad LZMA properties."""
    if head[:1] == b"1":
        raise ValueError("NSIS bzip2 compression is not supported")
    if head[:1] == b"\x5d":
        return lzma_props(head[:5]), 5
    return raw_deflate(), 0


def _member_name(number: int) -> str:
    return "headers" if number == 0 else f"content.{number:03d}"


def _is_solid(data: bytes, start: int, end: int, truncated: bool) -> bool:
    pos = start
    blocks = 0
    while end - pos > 4:  # the last 4 bytes may be the CRC
        size = _u32(data, pos) & 0x7FFF_FFFF
        if pos + 4 + size > end:
            return blocks == 0 or not truncated
        pos += 4 + size
        blocks += 1
    return False


def nsis_members(data: bytes, offset: int,
                 limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    """The members of the NSIS data whose first header starts at ``offset``: (name, bytes) pairs,
    and a :class:`LimitExceeded` for each member that could not be had."""
    if offset < 0 or len(data) < offset + FIRST_HEADER or data[offset + 4:offset + 20] != SIGNATURE:
        yield LimitExceeded("broken", "NSIS: no first header")
        return
    archive_size = _u32(data, offset + 24)
    truncated = len(data) - offset < archive_size
    end = len(data) if truncated else offset + archive_size
    if end - offset < FIRST_HEADER:
        yield LimitExceeded("broken", "NSIS: archive size smaller than its header")
        return
    start = offset + FIRST_HEADER
    if truncated:
        yield LimitExceeded("broken", "NSIS: archive truncated")
    if _is_solid(data, start, end, truncated):
        yield from _solid(data, start, end, limits)
    else:
        yield from _blocks(data, start, end, limits)


def _blocks(data: bytes, pos: int, end: int, limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    number = 0
    while pos + 4 <= end and end - pos != 4:  # the last 4 bytes are the CRC
        word = _u32(data, pos)
        size = word & 0x7FFF_FFFF
        pos += 4
        if pos + size > end:
            yield LimitExceeded("broken", f"NSIS: block {number} runs past the archive")
            return
        block = data[pos:pos + size]
        pos += size
        name = _member_name(number)
        number += 1
        if number > limits.max_files:
            yield LimitExceeded("max-files", f"NSIS: more than {limits.max_files} members")
            return
        if not size:
            continue
        if word == size:  # stored
            if size > limits.max_filesize:
                yield LimitExceeded("max-filesize", f"NSIS {name}: larger than {limits.max_filesize} bytes")
            else:
                yield name, block
            continue
        try:
            dec, skip = _decompressor(block)
        except ValueError as exc:
            yield LimitExceeded("unsupported" if "bzip2" in str(exc) else "broken", f"NSIS {name}: {exc}")
            continue
        cap = min(limits.max_filesize, limits.growth_cap(size))
        try:
            out, more = decompress_capped(dec, block[skip:], cap)
        except DecodeError as exc:
            out, more = exc.partial, False
            yield LimitExceeded("broken", f"NSIS {name}: {exc}")
        if more:
            yield limits.growth_problem(name, cap + 1, limits.growth_cap(size)) or \
                LimitExceeded("max-filesize", f"NSIS {name}: larger than {limits.max_filesize} bytes")
            continue
        if out:
            yield name, out


def _solid(data: bytes, start: int, end: int, limits: UnpackLimits) -> Iterator[tuple[str, bytes] | LimitExceeded]:
    stream = data[start:end]
    try:
        dec, skip = _decompressor(stream)
    except ValueError as exc:
        yield LimitExceeded("unsupported" if "bzip2" in str(exc) else "broken", f"NSIS solid data: {exc}")
        return
    total_cap = limits.growth_cap(len(stream))
    buf = bytearray()
    produced = 0
    number = 0
    need = -1       # length of the member being read, -1 while its length is being read
    discard = 0     # bytes of an oversized member still to drop
    try:
        for chunk in pull(dec, memoryview(stream)[skip:]):
            produced += len(chunk)
            if produced > total_cap:
                yield LimitExceeded("max-ratio", f"NSIS solid data: compression ratio above {limits.max_ratio}")
                return
            if discard:
                dropped = min(discard, len(chunk))
                discard -= dropped
                chunk = chunk[dropped:]
            buf += chunk
            while True:
                if need < 0:
                    if len(buf) < 4:
                        break
                    need = _u32(buf, 0)
                    del buf[:4]
                    name = _member_name(number)
                    number += 1
                    if number > limits.max_files:
                        yield LimitExceeded("max-files", f"NSIS: more than {limits.max_files} members")
                        return
                    if need > limits.max_filesize:
                        yield LimitExceeded("max-filesize", f"NSIS {name}: larger than {limits.max_filesize} bytes")
                        dropped = min(need, len(buf))
                        del buf[:dropped]
                        discard, need = need - dropped, -1
                        if discard:
                            break
                        continue
                if len(buf) < need:
                    break
                if need:
                    yield _member_name(number - 1), bytes(buf[:need])
                del buf[:need]
                need = -1
    except DecodeError as exc:
        yield LimitExceeded("broken", f"NSIS solid data: {exc}")
    if need > 0 and buf:  # the stream ended inside a member: what there is of it
        yield LimitExceeded("broken", f"NSIS {_member_name(number - 1)}: truncated")
        yield _member_name(number - 1), bytes(buf)
