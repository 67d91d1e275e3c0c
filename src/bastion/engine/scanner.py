"""The engine: bytes plus a file type in, verdicts with evidence out.

``Engine(db, options).scan_file(path)`` / ``.scan_bytes(data, name)`` never raise for a bad object:
unreadable files, vanished files and exceeded limits come back inside the :class:`ScanResult`.
One ``Engine`` is shared by all worker threads; the per-thread state (Hyperscan scratch, read
buffer) lives in a ``threading.local``.

Order of work for one object, as ClamAV does it: body signatures on the raw bytes (type-specific
signatures first, then generic ones, each by offset), then on the normalized text for text/HTML
objects, then whole-object hashes; then the allow lists (``.fp``/``.sfp``) can clear the object.
Without ``allmatch`` the scan stops at the first detection.
"""

from __future__ import annotations

import errno as errno_mod
import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

import hyperscan

from bastion.database.bodymatcher import BodyEntry
from bastion.database.compiled import Database
from bastion.engine.filetype import NORMALIZED_TARGET, detect_type, target_matches
from bastion.engine.normalize import normalize_text
from bastion.engine.verdict import Detection, Evidence, ScanResult
from bastion.formats.executable import ExecutableInfo, parse_executable
from bastion.signatures.model import HashKind, HashPurpose
from bastion.signatures.offsets import EXECUTABLE_ANCHORS, Anchor

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Limits use clamscan's names and defaults (``--max-filesize``, ``--max-scansize``)."""

    allmatch: bool = False
    max_filesize: int = 100 * MiB
    max_scansize: int = 400 * MiB
    want_sha256: bool = False


_HASHERS: dict[HashKind, Callable[..., hashlib._Hash]] = {
    HashKind.MD5: lambda: hashlib.md5(usedforsecurity=False),
    HashKind.SHA1: lambda: hashlib.sha1(usedforsecurity=False),
    HashKind.SHA256: hashlib.sha256,
}
# A buffer grown for one huge file is dropped afterwards, so idle workers stay small.
_KEEP_BUFFER = 8 * MiB


class _Hits:
    """Collects Hyperscan pattern ids for one scan (SINGLEMATCH: each id at most once)."""

    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.ids: list[int] = []

    def __call__(self, pattern_id: int, start: int, end: int, flags: int, context: object) -> None:
        self.ids.append(pattern_id)


class Engine:
    """Scans objects against one loaded :class:`Database`."""

    def __init__(self, db: Database, options: ScanOptions | None = None) -> None:
        self.db = db
        self.options = options or ScanOptions()
        self._local = threading.local()
        self._regex_cache: dict[int, re.Pattern[bytes]] = {}
        detect = [(k, t) for (k, p), t in db.hash_tables.items() if p is HashPurpose.DETECT and len(t)]
        allow = [(k, t) for (k, p), t in db.hash_tables.items() if p is HashPurpose.ALLOW and len(t)]
        order = {HashKind.MD5: 0, HashKind.SHA1: 1, HashKind.SHA256: 2}
        self._detect_tables = sorted(detect, key=lambda kt: order[kt[0]])
        self._allow_tables = sorted(allow, key=lambda kt: order[kt[0]])

    # ----------------------------------------------------------------- per-thread state
    def _scratch(self, which: str) -> hyperscan.Scratch:
        local = self._local
        scratch = getattr(local, which, None)
        if scratch is None:
            db = self.db.bodies.raw if which == "raw" else self.db.bodies.normalized
            scratch = hyperscan.Scratch(db)
            setattr(local, which, scratch)
        return scratch

    def _buffer(self, size: int) -> bytearray:
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < size:
            buf = bytearray(max(size, 64 * 1024))
            self._local.buf = buf
        return buf

    def _release_buffer(self) -> None:
        buf = getattr(self._local, "buf", None)
        if buf is not None and len(buf) > _KEEP_BUFFER:
            self._local.buf = None

    # ----------------------------------------------------------------- public API
    def scan_file(self, path: str) -> ScanResult:
        """Scan one regular file.  Errors (missing, unreadable, not a regular file) are returned."""
        result = ScanResult(name=path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno == errno_mod.ELOOP:  # a symlink: follow it, but only to a regular file
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                except OSError as exc2:
                    return self._error(result, exc2)
            else:
                return self._error(result, exc)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                result.error = "Not a regular file"
                return result
            size = st.st_size
            result.size = size
            if size > self.options.max_filesize:
                result.skipped = "max-filesize"
                return result
            buf = self._buffer(size)
            view = memoryview(buf)
            got = 0
            with os.fdopen(fd, "rb", buffering=0, closefd=True) as fh:
                fd = -1
                while got < size:
                    n = fh.readinto(view[got:size])
                    if not n:
                        break  # the file shrank while we read it: scan what is there
                    got += n
            data = view[:got]
            try:
                self._scan(data, result)
            finally:
                data.release()
                view.release()
                self._release_buffer()
            return result
        except OSError as exc:
            return self._error(result, exc)
        finally:
            if fd >= 0:
                os.close(fd)

    def scan_bytes(self, data: bytes | bytearray | memoryview, name: str = "stdin") -> ScanResult:
        result = ScanResult(name=name, size=len(data))
        if len(data) > self.options.max_filesize:
            result.skipped = "max-filesize"
            return result
        self._scan(memoryview(data), result)
        return result

    @staticmethod
    def _error(result: ScanResult, exc: OSError) -> ScanResult:
        result.error = exc.strerror or str(exc)
        result.errno = exc.errno
        return result

    # ----------------------------------------------------------------- the scan
    def _scan(self, data: memoryview, result: ScanResult) -> None:
        opts = self.options
        size = len(data)
        result.size = size
        ftype = detect_type(data)
        result.file_type = ftype
        body_view = data[: opts.max_scansize] if size > opts.max_scansize else data
        result.bytes_scanned = len(body_view)
        found = result.detections
        exe_cache: list[ExecutableInfo | None] = []

        def exe() -> ExecutableInfo | None:
            if not exe_cache:
                exe_cache.append(parse_executable(data) if ftype in ("CL_TYPE_MSEXE", "CL_TYPE_ELF",
                                                                      "CL_TYPE_MACHO") else None)
            return exe_cache[0]

        self._match_bodies(body_view, ftype, None, exe, found, normalized=False)
        norm_target = NORMALIZED_TARGET.get(ftype)
        if norm_target is not None and (opts.allmatch or not found):
            normalized = normalize_text(body_view)
            self._match_bodies(memoryview(normalized), ftype, norm_target, exe, found, normalized=True)
        digests: dict[HashKind, bytes] = {}
        if opts.allmatch or not found:
            for kind, table in self._detect_tables:
                if not table.may_hold_size(size):
                    continue
                digest = self._digest(kind, data, digests)
                for hit in table.lookup(digest, size):
                    found.append(Detection(hit.name, Evidence(
                        kind=f"hash.{kind.value}", source=self.db.sources[hit.source_index].path,
                        line=hit.line, db_version=self.db.version)))
                    if not opts.allmatch:
                        break
                if found and not opts.allmatch:
                    break
        if found and self._allow_tables:
            for kind, table in self._allow_tables:
                if not table.may_hold_size(size):
                    continue
                hits = table.lookup(self._digest(kind, data, digests), size)
                if hits:
                    source = self.db.sources[hits[0].source_index].path
                    result.allowed_by = f"{source}:{hits[0].line}"
                    found.clear()
                    break
        if opts.want_sha256:
            result.sha256 = self._digest(HashKind.SHA256, data, digests).hex()

    @staticmethod
    def _digest(kind: HashKind, data: memoryview, cache: dict[HashKind, bytes]) -> bytes:
        digest = cache.get(kind)
        if digest is None:
            h = _HASHERS[kind]()
            h.update(data)
            digest = cache[kind] = h.digest()
        return digest

    def _match_bodies(self, data: memoryview, ftype: str, norm_target: int | None,
                      exe: Callable[[], ExecutableInfo | None], found: list[Detection], normalized: bool) -> None:
        bodies = self.db.bodies
        hits = _Hits()
        if bodies.raw is not None and len(data):
            bodies.raw.scan(data, match_event_handler=hits, scratch=self._scratch("raw"))
        if normalized and bodies.normalized is not None and len(data):
            bodies.normalized.scan(data, match_event_handler=hits, scratch=self._scratch("normalized"))
        if not hits.ids:
            return
        confirmed: list[tuple[int, int, int]] = []  # (generic?, offset, id)
        for sid in hits.ids:
            entry = bodies.entry(sid)
            target = entry.target
            if normalized:
                if target not in (0, norm_target):
                    continue
            elif target in (3, 7) or not target_matches(target, ftype):
                continue
            start = self._confirm(sid, entry, data, exe)
            if start is not None:
                confirmed.append((1 if target == 0 else 0, start, sid))
        confirmed.sort()
        for _, start, sid in confirmed:
            entry = bodies.entry(sid)
            found.append(Detection(entry.name, Evidence(
                kind="body", source=self.db.sources[entry.source_index].path, line=entry.line,
                db_version=self.db.version, offsets=(start,), normalized=normalized, pattern=entry.pattern)))
            if not self.options.allmatch:
                return

    def _regex(self, sid: int, entry: BodyEntry) -> re.Pattern[bytes]:
        rx = self._regex_cache.get(sid)
        if rx is None:
            rx = self._regex_cache[sid] = re.compile(entry.regex, re.DOTALL)
        return rx

    def _confirm(self, sid: int, entry: BodyEntry, data: memoryview,
                 exe: Callable[[], ExecutableInfo | None]) -> int | None:
        """The start offset of the first match that satisfies the signature's offset, or None."""
        rx = self._regex(sid, entry)
        anchor = Anchor(entry.anchor)
        size = len(data)
        if anchor is Anchor.ANY:
            m = rx.search(data)
            return m.start() if m else None
        lo: int
        hi: int
        if anchor is Anchor.ABSOLUTE:
            lo = entry.value
            hi = lo + entry.maxshift
        elif anchor is Anchor.EOF:
            lo = size - entry.value
            hi = lo + entry.maxshift
        elif anchor in EXECUTABLE_ANCHORS:
            info = exe()
            if info is None:
                return None
            if anchor is Anchor.ENTRY_POINT:
                if info.entry_point is None:
                    return None
                lo = info.entry_point + entry.value
                hi = lo + entry.maxshift
            elif not info.sections:
                return None
            elif anchor is Anchor.LAST_SECTION:
                lo = info.sections[-1].raw_offset + entry.value
                hi = lo + entry.maxshift
            elif entry.section >= len(info.sections):
                return None
            elif anchor is Anchor.SECTION:
                lo = info.sections[entry.section].raw_offset + entry.value
                hi = lo + entry.maxshift
            else:  # SECTION_ENTIRE
                sec = info.sections[entry.section]
                lo, hi = sec.raw_offset, sec.raw_offset + sec.raw_size
        else:  # VI is matched against PE version info: not available yet, never matches
            return None
        if lo < 0:
            lo = 0
        if lo > hi or lo >= size:
            return None
        m = rx.match(data, lo) if lo == hi else rx.search(data, lo)
        if m is None or m.start() > hi:
            return None
        return m.start()
