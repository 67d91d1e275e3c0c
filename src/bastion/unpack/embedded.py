"""Files embedded in other files: self-extracting archives, PDFs and executables found inside an object.

ClamAV (1.4, ``scanraw``) looks for the magic of a few formats anywhere in an object but its first
byte, and opens what it finds there (its built-in file-type table, "type 1" entries with offset ``*``):

============  =====================================  =========================================
magic          what ClamAV does with it               unless the outer object is
============  =====================================  =========================================
``PK\\3\\4``      one zip member, the one whose local     a zip
               header starts there
``MSCF\\0\\0\\0\\0``  a cabinet from there to the end          a cabinet
``Rar!\\x1a\\7\\0``  a RAR archive from there                 a RAR archive
``\\x60\\xea`` +9  an ARJ archive from there (the 9 bytes    an ARJ archive
               end in a host OS byte 0-2 and 2)
``MZ``...``PE``  an executable from there to the end, at   anything but an executable or an OLE2
               most ``--max-embeddedpe`` bytes, when      file (the first one that parses only:
               its headers parse                          what follows is found inside it)
============  =====================================  =========================================

ClamAV's file-type table also finds ``%PDF-`` (and HTML, ...) past the first byte, but its matcher
hands over as embedded files only the self-extracting types and executables, so a PDF inside
another file is not opened (checked with clamscan 1.4.6).  No recognition at all inside gzip, old
cpio, zip, tar, HTML or the self-extracting types themselves (ClamAV's list).  An embedded
archive's *members* are handed over (its bytes are part of the outer object and were scanned with
it); an embedded executable is handed over whole, as ClamAV scans it as a file of its own.
Children are named ``@OFFSET`` (``setup.exe!@3544``), an archive's members ``@OFFSET!member``.

:class:`Spotter` tells, while the object streams through the scanner, whether any magic occurs past
its first byte, so that only those objects are read whole and looked at here.
"""

from __future__ import annotations

import re
import struct
import threading
import zlib
from collections.abc import Iterator
from itertools import islice

import hyperscan

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, as_bytes, find_all

MiB = 1024 * 1024
# clamscan --max-embeddedpe, clamd.conf MaxEmbeddedPE
DEFAULT_MAX_EMBEDDEDPE = 40 * MiB

# the types inside which ClamAV 1.4 does no file-type recognition (HTML: no raw scan at all)
NO_RECOGNITION = frozenset({
    "CL_TYPE_GZ", "CL_TYPE_CPIO_OLD", "CL_TYPE_ZIP", "CL_TYPE_ZIPSFX", "CL_TYPE_ARJSFX", "CL_TYPE_RARSFX",
    "CL_TYPE_EGGSFX", "CL_TYPE_CABSFX", "CL_TYPE_7ZSFX", "CL_TYPE_OLD_TAR", "CL_TYPE_POSIX_TAR", "CL_TYPE_HTML",
    "CL_TYPE_IGNORED", "CL_TYPE_PART_ANY",
})
# outer types in which an embedded executable is looked for (ZIP never gets here: see above)
_PE_HOSTS = frozenset({"CL_TYPE_MSEXE", "CL_TYPE_MSOLE2"})

# ARJ's two magic bytes alone occur every 64 KiB in random data: the whole pattern is looked for
_ARJ = re.compile(rb"\x60\xea[\x00-\xff]{7}[\x00-\x02]\x02")
_LONGEST = 11
# how many places of each kind are looked at in one object, at most (a file full of "PK\3\4")
MAX_PLACES = 64


# The spotter's patterns for Hyperscan (block mode; with their lengths, to tell where a match starts).
# Chosen by measurement: bytes.find of each magic over every chunk (with the copy it needs) ran at
# ~370 MiB/s on random data, about the scanner's own speed; Hyperscan runs at several GiB/s.
_SPOT_PATTERNS = ((rb"PK\x03\x04", 4), (rb"MSCF\x00\x00\x00\x00", 8), (rb"Rar!\x1a\x07\x00", 7),
                  (rb"PE\x00\x00", 4), (rb"\x60\xea.{7}[\x00-\x02]\x02", 11))
_spot_db: hyperscan.Database | None = None
_spot_lock = threading.Lock()
_spot_local = threading.local()


def _spot_matcher() -> tuple[hyperscan.Database, hyperscan.Scratch]:
    global _spot_db
    if _spot_db is None:
        with _spot_lock:
            if _spot_db is None:
                db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
                db.compile(expressions=[p for p, _ in _SPOT_PATTERNS], ids=list(range(len(_SPOT_PATTERNS))),
                           elements=len(_SPOT_PATTERNS),
                           flags=[hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_SINGLEMATCH] * len(_SPOT_PATTERNS))
                _spot_db = db
    scratch = getattr(_spot_local, "scratch", None)
    if scratch is None:
        scratch = _spot_local.scratch = hyperscan.Scratch(_spot_db)
    return _spot_db, scratch


class Spotter:
    """Fed the chunks of an object in order: whether any embedded-file magic occurs past offset 0."""

    __slots__ = ("seen", "_tail", "_fed")

    def __init__(self) -> None:
        self.seen = False
        self._tail = b""
        self._fed = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        if self.seen or not len(chunk):
            return
        db, scratch = _spot_matcher()
        first_chunk = self._fed == 0

        def found(pattern: int, _start: int, end: int, _flags: int, _context: object) -> bool:
            if first_chunk and end - _SPOT_PATTERNS[pattern][1] == 0:
                return False  # the object's own first byte does not count
            self.seen = True
            return True

        try:
            if self._tail:  # a magic across the boundary between the last chunk and this one
                db.scan(self._tail + bytes(chunk[:_LONGEST - 1]), match_event_handler=found, scratch=scratch)
            if not self.seen:
                db.scan(chunk, match_event_handler=found, scratch=scratch)
        except hyperscan.ScanTerminated:  # found() stopped it: one magic is enough
            pass
        self._fed += len(chunk)
        self._tail = bytes(chunk[-(_LONGEST - 1):])


def _places(data: bytes, magic: bytes) -> list[int]:
    """Where ``magic`` starts past the object's first byte, the first MAX_PLACES."""
    return list(islice(find_all(data, magic, 1), MAX_PLACES))


def _pe_places(data: bytes) -> list[int]:
    """Offsets (> 0) where ``MZ``, 60 to 300 bytes, then ``PE\\0\\0`` start."""
    found: set[int] = set()
    for pe in _places(data, b"PE\0\0"):
        at = data.find(b"MZ", max(1, pe - 302), pe - 61)
        while 0 < at <= pe - 62 and len(found) < MAX_PLACES:
            found.add(at)
            at = data.find(b"MZ", at + 1, pe - 61)
    return sorted(found)


class EmbeddedObjects:
    """The unpacker of what is embedded in one object of type ``outer`` (see the module docstring)."""

    counts_as_level = True

    def __init__(self, outer: str, max_embeddedpe: int = DEFAULT_MAX_EMBEDDEDPE) -> None:
        self.outer = outer
        self.handles = frozenset({outer})
        self.max_embeddedpe = max_embeddedpe

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        if self.outer in NO_RECOGNITION:
            return
        blob = as_bytes(data)
        found: list[tuple[int, str]] = []
        if self.outer != "CL_TYPE_ZIP":
            found += [(at, "zip") for at in _places(blob, b"PK\x03\x04")]
        if self.outer != "CL_TYPE_MSCAB":
            found += [(at, "cab") for at in _places(blob, b"MSCF\0\0\0\0")]
        if self.outer != "CL_TYPE_RAR":
            found += [(at, "rar") for at in _places(blob, b"Rar!\x1a\x07\x00")]
        if self.outer != "CL_TYPE_ARJ":
            found += [(m.start(), "arj") for m in islice(_ARJ.finditer(blob, 1), MAX_PLACES)]
        if self.outer in _PE_HOSTS:
            found += [(at, "pe") for at in _pe_places(blob)]
        for at, kind in sorted(found):
            if kind == "pe":
                child = self._executable(blob, at, container_path)
                if child is not None:
                    if len(child.data) > limits.max_filesize:
                        yield LimitExceeded("max-filesize", f"{child.name}: larger than {limits.max_filesize} bytes")
                    else:
                        yield child
                    return  # what follows it is found inside it (as ClamAV stops here too)
            elif kind == "zip":
                yield from _zip_member(blob, at, container_path, limits)
            else:
                yield from _members(blob[at:], kind, f"{container_path}!@{at}", limits)

    def _executable(self, blob: bytes, at: int, container_path: str) -> ChildObject | None:
        from bastion.formats.executable import parse_executable

        if len(blob) - at > self.max_embeddedpe:
            return None  # clamscan: "MaxEmbeddedPE exceeded"
        info = parse_executable(memoryview(blob)[at:])
        if info is None or info.kind != "pe" or info.entry_point is None:
            return None
        return ChildObject(blob[at:], f"@{at}", f"{container_path}!@{at}")


_TYPES = {"cab": "CL_TYPE_MSCAB", "rar": "CL_TYPE_RAR", "arj": "CL_TYPE_ARJ"}


def _members(region: bytes, kind: str, path: str, limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
    """The members of an archive or document embedded from ``region``'s start, by its own unpacker."""
    from bastion.unpack.registry import unpacker_for

    unpacker = unpacker_for(_TYPES[kind])
    if unpacker is None:
        return
    for item in unpacker.children(region, path, limits):
        if isinstance(item, LimitExceeded) and item.limit == "broken":
            continue  # a magic that is not really the start of an archive: not worth a report
        yield item


_LOCAL = struct.Struct("<4sHHHHHIIIHH")


def _zip_member(blob: bytes, at: int, container_path: str,
                limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
    """The one zip member whose local header starts at ``at`` (stored or deflated), within limits."""
    if at + _LOCAL.size > len(blob):
        return
    _sig, _version, flags, method, _time, _date, crc, packed_size, size, name_len, extra_len = \
        _LOCAL.unpack_from(blob, at)
    start = at + _LOCAL.size + name_len + extra_len
    if start > len(blob) or method not in (0, 8):
        return
    name = blob[at + _LOCAL.size:at + _LOCAL.size + name_len].decode("utf-8", "replace").lstrip("/") or "member"
    label = f"@{at}!{name}"
    if flags & 1:
        yield LimitExceeded("encrypted", f"{label}: encrypted")
        return
    if method == 0:
        if flags & 8 and not packed_size:
            return  # a stored member of unknown length: nothing to go by
        out = blob[start:start + packed_size]
    else:
        packed = blob[start:start + packed_size] if packed_size and not flags & 8 else blob[start:]
        cap = limits.growth_cap(packed_size or len(packed))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            out = inflater.decompress(packed, min(limits.max_filesize, cap) + 1)
        except zlib.error:
            return  # not really a zip member
        problem = limits.growth_problem(label, len(out), cap)
        if problem is not None:
            yield problem
            return
    if not out:
        return
    yield ChildObject(out, label, f"{container_path}!{label}")
    del crc, size
