"""Symbian installation packages (CL_TYPE_SIS), the EPOC format before Symbian OS 9.

Layout (little-endian), as documented by Alexander Thoukydides' SIS file format notes and read by
libclamav's sis.c: four UIDs (the third is 0x10000419; the second 0x1000006D for EPOC release 3-5
or 0x10003A12 for release 6), then a header with the counts of languages and files, option flags
(0x0001 Unicode names, 0x0008 files not compressed) and pointers to the languages and the file
records.  File records follow one another from the files pointer, each a 32-bit record type:

* 0, a file, and 1, a file per language: file type, details, source name length and pointer,
  destination name length and pointer, then a length and a pointer per copy (one for a simple file,
  one per language for type 1), a release 6 package adds the original lengths, a MIME type length
  and pointer;
* 2, options: a count, then a name length and pointer per option and language;
* 3 and 4, #IF and #ELSEIF: the size of the condition, then the condition;
* 5 and 6, #ELSE and #ENDIF: nothing more.

Each file's data is a zlib stream unless the package says it is not compressed; type 4 files
("does not exist yet") have none.  Members are named by their source name, as clamscan does.
Symbian 9 packages (first UID 0x10201A7A) are a different format: reported "unsupported".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

UID3 = 0x10000419
UID2_RELEASE6 = 0x10003A12
UID1_SIS9 = 0x10201A7A
HEADER_SIZE = 84  # the UIDs and the header up to the last release 6 field: no record starts before it
NOT_COMPRESSED = 0x0008
UNICODE = 0x0001
FILE, LANGUAGE_FILE, OPTIONS, IF, ELSEIF, ELSE, ENDIF = range(7)
NULL_FILE = 4
MAX_LANGUAGES = 100
_STEP = 64 * 1024  # zlib output per step while limits are checked


class _Truncated(Exception):
    pass


def _u32s(data: bytes, pos: int, count: int) -> tuple[int, ...]:
    if pos + 4 * count > len(data) or pos < 0:
        raise _Truncated
    return struct.unpack_from(f"<{count}I", data, pos)


def _name(data: bytes, pointer: int, length: int, unicode: bool) -> str:
    raw = data[pointer:pointer + min(length, 1024)]
    return raw.decode("utf-16-le" if unicode else "cp1252", "replace").replace("\x00", "")


def _inflate(packed: bytes, cap: int) -> tuple[bytes, str | None]:
    """A zlib stream decoded to at most ``cap`` + 1 bytes, and what was wrong with it, if anything."""
    inflater = zlib.decompressobj()
    out = bytearray()
    try:
        out += inflater.decompress(packed, _STEP)
        while inflater.unconsumed_tail and len(out) <= cap:
            out += inflater.decompress(inflater.unconsumed_tail, _STEP)
    except zlib.error as exc:
        return bytes(out), f"damaged zlib data ({exc})"
    if not inflater.eof and len(out) <= cap:
        return bytes(out), "truncated zlib data"
    return bytes(out), None


class SisUnpacker:
    handles = frozenset({"CL_TYPE_SIS"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        blob = bytes(data)
        try:
            yield from self._files(blob, container_path, limits)
        except _Truncated:
            yield LimitExceeded("broken", f"{container_path}: a SIS record reaches past the end")

    def _files(self, blob: bytes, container_path: str,
               limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        uid1, uid2, uid3, _ = _u32s(blob, 0, 4)
        if uid3 != UID3:
            what = "Symbian 9 packages are" if uid1 == UID1_SIS9 else "this SIS variant is"
            yield LimitExceeded("unsupported", f"{container_path}: {what} not unpacked")
            return
        languages, files = struct.unpack_from("<2H", blob, 18) if len(blob) >= 22 else (0, 0)
        (flags,) = struct.unpack_from("<H", blob, 36) if len(blob) >= 38 else (0,)
        (pointer,) = _u32s(blob, 52, 1)
        if not 0 < languages < MAX_LANGUAGES or pointer < HEADER_SIZE:
            yield LimitExceeded("broken", f"{container_path}: not a readable SIS header")
            return
        release6 = uid2 == UID2_RELEASE6
        compressed = not flags & NOT_COMPRESSED
        unicode = bool(flags & UNICODE)
        pos = pointer
        count = 0
        for _ in range(files):
            (kind,) = _u32s(blob, pos, 1)
            pos += 4
            if kind in (FILE, LANGUAGE_FILE):
                ftype, _details, src_len, src_ptr, _dst_len, _dst_ptr = _u32s(blob, pos, 6)
                pos += 24
                copies = 1 if kind == FILE else languages
                lengths = _u32s(blob, pos, copies)
                pointers = _u32s(blob, pos + 4 * copies, copies)
                pos += 8 * copies
                if release6:
                    pos += 4 * copies + 8  # original lengths, MIME type length and pointer
                if ftype == NULL_FILE:
                    continue
                name = _name(blob, src_ptr, src_len, unicode) or f"file{count + 1}"
                for length, at in zip(lengths, pointers, strict=True):
                    if not length:
                        continue
                    count += 1
                    if count > limits.max_files:
                        yield LimitExceeded("max-files", f"more than {limits.max_files} members")
                        return
                    yield from _member(blob, at, length, compressed, name, container_path, limits)
            elif kind == OPTIONS:
                (options,) = _u32s(blob, pos, 1)
                pos += 4 + 8 * options * languages
            elif kind in (IF, ELSEIF):
                (size,) = _u32s(blob, pos, 1)
                pos += 4 + size
            elif kind not in (ELSE, ENDIF):
                yield LimitExceeded("broken", f"{container_path}: an unknown SIS record type {kind}")
                return


def _member(blob: bytes, at: int, length: int, compressed: bool, name: str, container_path: str,
            limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
    if at < HEADER_SIZE or at + length > len(blob):
        yield LimitExceeded("broken", f"{name}: its data lies outside the package")
        return
    packed = blob[at:at + length]
    problem = None
    ratio_cap = limits.growth_cap(len(packed))
    if compressed:
        out, problem = _inflate(packed, min(limits.max_filesize, ratio_cap))
    else:
        out = packed
    limit = limits.growth_problem(name, len(out), ratio_cap)
    if limit is not None:
        yield limit
        return
    if problem is not None:
        yield LimitExceeded("broken", f"{name}: {problem}")
    if out or problem is None:
        yield ChildObject(out, name, f"{container_path}!{name}")


register(SisUnpacker())
