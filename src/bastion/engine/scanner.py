"""The engine: bytes plus a file type in, verdicts with evidence out.

``Engine(db, options).scan_file(path)`` / ``.scan_bytes(data, name)`` never raise for a bad object:
unreadable files, vanished files and exceeded limits come back inside the :class:`ScanResult`.
One ``Engine`` is shared by all worker threads; the per-thread state (Hyperscan scratch, read
buffer) lives in a ``threading.local``.

One pass, in chunks: each chunk goes to the whole-file hashers and to Hyperscan *streams* (raw bytes;
for text and HTML also the normalized text), so a worker holds at most one chunk of a large file,
never the whole file.  Small files are read whole and kept.  Hyperscan only nominates signatures;
when it does, the exact regex confirms the hit and finds its offset on the whole object (a large file
is read again for that, which only happens for files that probably match).

Order of the verdicts, as ClamAV gives them: body signatures on the raw bytes (type-specific
signatures first, then generic ones, each by offset), then on the normalized text for text/HTML
objects, then whole-object hashes; then the allow lists (``.fp``/``.sfp``) can clear the object.
Without ``allmatch`` only the first detection is kept.
"""

from __future__ import annotations

import errno as errno_mod
import hashlib
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO

import hyperscan

from bastion.database.bodymatcher import BodyEntry
from bastion.database.compiled import Database
from bastion.engine.filetype import NORMALIZED_TARGET, TEXT_PROBE, FileTyper, detect_type, target_matches
from bastion.engine.logical import LogicalEvaluator, ObjectFacts
from bastion.engine.normalize import HtmlNormalizer, TextNormalizer, normalize_html, normalize_text
from bastion.engine.offsets import resolve_window
from bastion.engine.verdict import Detection, Evidence, ScanResult
from bastion.signatures.model import HashKind, HashPurpose
from bastion.signatures.offsets import Anchor
from bastion.unpack.base import ChildObject, LimitExceeded, Unpacker, UnpackLimits
from bastion.unpack.embedded import NO_RECOGNITION, EmbeddedObjects, Spotter
from bastion.unpack.registry import unpacker_for

if TYPE_CHECKING:
    from bastion.formats.executable import ExecutableInfo

MiB = 1024 * 1024
# Files up to this size are read in one go and kept for confirming hits; larger ones are streamed.
WHOLE_FILE_LIMIT = 2 * MiB
READ_CHUNK = 1 * MiB
# Objects of this many bytes or fewer are not scanned (ClamAV's minimum, checked with clamscan 1.4.6).
TOO_SMALL = 5
_EXECUTABLE_TYPES = frozenset({"CL_TYPE_MSEXE", "CL_TYPE_ELF", "CL_TYPE_MACHO"})
# Types ClamAV matches only through their normalized form: no raw body scan, no whole-file hashes
# (clamscan 1.4.6 on HTML, tests/test_clamscan_parity.py).
_NORMALIZED_ONLY = frozenset({"CL_TYPE_HTML"})


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Limits use clamscan's names and defaults (``--max-filesize``, ``--max-scansize``, ``--max-files``,
    ``--max-recursion``, ``--max-scantime`` in seconds); ``max_ratio`` is Bastion's decompression-ratio
    bound.  ``scan_archives`` opens containers (clamscan ``--scan-archive``, on by default); the
    ``alert_*`` switches raise clamscan's ``Heuristics.*`` verdicts."""

    allmatch: bool = False
    max_filesize: int = 100 * MiB
    max_scansize: int = 400 * MiB
    want_sha256: bool = False
    max_files: int = 10_000
    max_recursion: int = 17
    max_scantime: float = 120.0
    max_ratio: int = 250
    scan_archives: bool = True
    alert_exceeds_max: bool = False
    alert_encrypted: bool = False
    alert_broken: bool = False  # clamscan --alert-broken: Heuristics.Broken.Executable (formats/broken.py)
    # clamscan --max-htmlnormalize: a larger HTML file is neither normalized nor unpacked (and so, as
    # HTML is matched only through its normalized form, only its hashes can match)
    max_htmlnormalize: int = 40 * MiB
    # clamscan --max-embeddedpe: an executable embedded in another is scanned up to this size
    max_embeddedpe: int = 40 * MiB


# Heuristics.* names clamscan 1.4.6 prints for an exceeded limit (checked with --alert-exceeds-max)
LIMIT_ALERTS = {
    "max-files": "Heuristics.Limits.Exceeded.MaxFiles",
    "max-recursion": "Heuristics.Limits.Exceeded.MaxRecursion",
    "max-filesize": "Heuristics.Limits.Exceeded.MaxFileSize",
    "max-scansize": "Heuristics.Limits.Exceeded.MaxScanSize",
    "max-scantime": "Heuristics.Limits.Exceeded.MaxScanTime",
    "max-ratio": "Heuristics.Limits.Exceeded.MaxRatio",  # Bastion's own limit
}
ENCRYPTED_ALERTS = {"CL_TYPE_ZIP": "Heuristics.Encrypted.Zip", "CL_TYPE_RAR": "Heuristics.Encrypted.RAR",
                    "CL_TYPE_7Z": "Heuristics.Encrypted.7Zip"}
# Containers whose encrypted members clamscan 1.4.6 skips without an alert, even with
# --alert-encrypted (checked with a garbled `arj a -g` archive: tests/test_unpack_formats.py)
ENCRYPTED_SILENT = frozenset({"CL_TYPE_ARJ"})


@dataclass(slots=True)
class _Budget:
    """Shared by every object of one scan tree: members scanned, bytes scanned, the deadline."""

    files: int = 0
    bytes: int = 0
    deadline: float = 0.0


@dataclass(frozen=True, slots=True)
class _Context:
    """Where an object sits: its depth, its container path, the types of the containers above it."""

    budget: _Budget
    depth: int = 0
    path: str = ""
    parents: tuple[str, ...] = ()


_HASHERS: dict[HashKind, Callable[[], hashlib._Hash]] = {
    HashKind.MD5: lambda: hashlib.md5(usedforsecurity=False),
    HashKind.SHA1: lambda: hashlib.sha1(usedforsecurity=False),
    HashKind.SHA256: hashlib.sha256,
}
_KIND_ORDER = {HashKind.MD5: 0, HashKind.SHA1: 1, HashKind.SHA256: 2}


def _digest(kind: HashKind, data: memoryview) -> bytes:
    h = _HASHERS[kind]()
    h.update(data)
    return h.digest()


class _Hits:
    """Collects Hyperscan pattern ids for one stream, with where each first match ended
    (SINGLEMATCH: each id is reported at most once)."""

    __slots__ = ("ids", "ends")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.ends: dict[int, int] = {}

    def __call__(self, pattern_id: int, start: int, end: int, flags: int, context: object) -> None:
        self.ids.append(pattern_id)
        self.ends[pattern_id] = end


class _Source:
    """Where the scanned bytes can be had again to confirm a hit: kept in memory (small objects),
    or read back from the file (``read`` a window, or the ``whole`` file, read once and then kept for
    every later step of the same scan: confirmation, YARA, unpacking)."""

    __slots__ = ("kept", "path", "size", "limit", "_read_back")

    def __init__(self, size: int, kept: memoryview | None = None, path: str = "", limit: int = 0) -> None:
        self.kept = kept
        self.path = path
        self.size = size
        self.limit = limit
        self._read_back: bytes | None = None

    def read(self, start: int, end: int) -> bytes | memoryview:
        if self.kept is not None:
            return self.kept[start:end]
        with open(self.path, "rb", buffering=0) as fh:
            return os.pread(fh.fileno(), max(0, end - start), start)

    def whole(self) -> bytes | memoryview:
        if self.kept is not None:
            return self.kept
        if self._read_back is None:
            with open(self.path, "rb") as fh:
                self._read_back = fh.read(self.limit)
        return self._read_back


_WINDOW_ANCHORS = frozenset({Anchor.ANY.value, Anchor.ABSOLUTE.value, Anchor.EOF.value})


_CLOSE_LOCK = threading.Lock()


class _Streams:
    """The Hyperscan streams of one scan: raw bytes, and for text the normalized text twice
    (generic signatures from the raw database, text/HTML signatures from the normalized one).

    Each of ``raw``, ``norm_generic`` and ``norm`` is a list: one stream per Hyperscan database
    (a layered database, database/layered.py, has one per layer; their pattern ids do not overlap,
    so the streams of one view share one :class:`_Hits`)."""

    def __init__(self, engine: Engine, normalized: bool) -> None:
        bodies = engine.db.bodies
        self.raw_hits, self.norm_generic_hits, self.norm_hits = _Hits(), _Hits(), _Hits()
        self._open: list[tuple[object, hyperscan.Scratch, _Hits]] = []
        # a scratch is busy only during one scan call, so one per thread and database serves every stream
        self.raw: list[tuple] = []
        self.norm_generic: list[tuple] = []
        self.norm: list[tuple] = []
        for i, db in enumerate(bodies.raw_dbs):
            self.raw.append(self._start(db, engine._scratch("raw", i), self.raw_hits))
            if normalized:
                self.norm_generic.append(self._start(db, engine._scratch("raw", i), self.norm_generic_hits))
        if normalized:
            for i, db in enumerate(bodies.normalized_dbs):
                self.norm.append(self._start(db, engine._scratch("normalized", i), self.norm_hits))

    def _start(self, db: hyperscan.Database, scratch: hyperscan.Scratch, hits: _Hits) -> tuple:
        stream = db.stream(match_event_handler=hits)
        stream.__enter__()  # python-hyperscan opens the Hyperscan stream here
        entry = (stream, scratch, hits)
        self._open.append(entry)
        return entry

    @staticmethod
    def feed(targets: list[tuple], data: bytes | memoryview) -> None:
        if len(data):
            for stream, scratch, hits in targets:
                stream.scan(data, scratch=scratch, match_event_handler=hits)

    def close(self) -> None:
        # python-hyperscan's Stream.close() cannot take a scratch argument: it always uses the
        # database's own scratch (see BodyMatcher), so closes are serialized by one lock.
        with _CLOSE_LOCK:
            for stream, _scratch, hits in self._open:
                stream.close(match_event_handler=hits)
        self._open.clear()


class _Views:
    """The object's bytes and normalized text, read or computed once and only when a check needs them,
    and the executable facts for EP/section offsets; plus which logical signatures were nominated."""

    def __init__(self, source: _Source, max_scansize: int, ftype: str) -> None:
        self.source = source
        self.max_scansize = max_scansize
        self.ftype = ftype
        self.raw_nominated: dict[int, set[int]] = {}
        self.norm_nominated: dict[int, set[int]] = {}
        self.has_norm = False
        self._raw: memoryview | None = None
        self._norm: memoryview | None = None
        self._exe: list[ExecutableInfo | None] = []

    def raw(self) -> memoryview:
        if self._raw is None:
            data = memoryview(self.source.whole())
            self._raw = data[: self.max_scansize] if len(data) > self.max_scansize else data
        return self._raw

    @property
    def norm(self) -> Callable[[], memoryview] | None:
        return self._norm_view if self.has_norm else None

    def _norm_view(self) -> memoryview:
        if self._norm is None:
            norm = normalize_html if self.ftype == "CL_TYPE_HTML" else normalize_text
            self._norm = memoryview(norm(self.raw()))
        return self._norm

    def exe(self) -> ExecutableInfo | None:
        if not self._exe:
            from bastion.formats.executable import parse_executable  # only for EP/section offsets

            self._exe.append(parse_executable(self.raw()) if self.ftype in _EXECUTABLE_TYPES else None)
        return self._exe[0]


class Engine:
    """Scans objects against one loaded :class:`Database`."""

    def __init__(self, db: Database, options: ScanOptions | None = None) -> None:
        self.db = db
        self.options = options or ScanOptions()
        self._local = threading.local()
        self._regex_cache: dict[int, re.Pattern[bytes]] = {}
        self._logical = LogicalEvaluator(db.logical) if len(db.logical) else None
        self._type = FileTyper(db.filetypes)
        self._yara = db.yara
        self._cdb_regex: dict[str, re.Pattern[str]] = {}
        tables = db.hash_tables.items()
        self._detect_tables = sorted(((k, t) for (k, p), t in tables if p is HashPurpose.DETECT and len(t)),
                                     key=lambda kt: _KIND_ORDER[kt[0]])
        self._section_tables = sorted(((k, t) for (k, p), t in tables if p is HashPurpose.SECTION and len(t)),
                                      key=lambda kt: _KIND_ORDER[kt[0]])
        self._import_tables = sorted(((k, t) for (k, p), t in tables if p is HashPurpose.IMPORTS and len(t)),
                                     key=lambda kt: _KIND_ORDER[kt[0]])
        self._allow_tables = sorted(((k, t) for (k, p), t in tables if p is HashPurpose.ALLOW and len(t)),
                                    key=lambda kt: _KIND_ORDER[kt[0]])

    # ----------------------------------------------------------------- per-thread state
    def _scratch(self, which: str, index: int = 0) -> hyperscan.Scratch:
        """This thread's scratch for the ``index``-th raw or normalized Hyperscan database."""
        local = self._local
        name = f"{which}{index}"
        scratch = getattr(local, name, None)
        if scratch is None:
            bodies = self.db.bodies
            db = (bodies.normalized_dbs if which == "normalized" else bodies.raw_dbs)[index]
            scratch = hyperscan.Scratch(db)
            setattr(local, name, scratch)
        return scratch

    def _buffer(self) -> memoryview:
        """This thread's read buffer: room for one whole small file or one chunk of a large one."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(max(WHOLE_FILE_LIMIT, READ_CHUNK)))
        return buf

    # ----------------------------------------------------------------- public API
    def scan_file(self, path: str) -> ScanResult:
        """Scan one regular file.  Errors (missing, unreadable, not a regular file) are returned."""
        result = ScanResult(name=path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno != errno_mod.ELOOP:
                return self._error(result, exc)
            try:  # a symlink: follow it, but only to a regular file (checked below)
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc2:
                return self._error(result, exc2)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                result.error = "Not a regular file"
                return result
            with os.fdopen(fd, "rb", buffering=0) as fh:
                result.size = st.st_size
                if st.st_size > self.options.max_filesize:
                    result.skipped = "max-filesize"
                    self._limit(result, "max-filesize")
                    return result
                if st.st_size <= WHOLE_FILE_LIMIT:
                    buf = self._buffer()
                    got = _read_into(fh, buf[:WHOLE_FILE_LIMIT])
                    data = buf[:got]
                    self._scan([data], got, result, _Source(got, kept=data), self._root_context())
                else:
                    self._scan(_read_chunks(fh, self._buffer()[:READ_CHUNK]), st.st_size, result,
                               _Source(st.st_size, path=path, limit=self.options.max_filesize),
                               self._root_context())
            return result
        except OSError as exc:
            return self._error(result, exc)

    def scan_bytes(self, data: bytes | bytearray | memoryview, name: str = "stdin") -> ScanResult:
        result = ScanResult(name=name, size=len(data))
        if len(data) > self.options.max_filesize:
            result.skipped = "max-filesize"
            self._limit(result, "max-filesize")
            return result
        view = memoryview(data)
        chunks = (view[i:i + READ_CHUNK] for i in range(0, len(view), READ_CHUNK))
        self._scan(chunks, len(view), result, _Source(len(view), kept=view), self._root_context())
        return result

    def _root_context(self) -> _Context:
        return _Context(_Budget(deadline=time.monotonic() + self.options.max_scantime))

    def _limit(self, result: ScanResult, limit: str, detail: str = "") -> None:
        """Record an exceeded limit (once per name); with ``alert_exceeds_max`` it is also a verdict."""
        if limit in result.limits:
            return
        result.limits[limit] = detail
        name = LIMIT_ALERTS.get(limit)
        if name and self.options.alert_exceeds_max:
            result.detections.append(Detection(name, Evidence(kind="heuristic", source="limits", line=0,
                                                              db_version=self.db.version, pattern=detail)))

    @staticmethod
    def _error(result: ScanResult, exc: OSError) -> ScanResult:
        result.error = exc.strerror or str(exc)
        result.errno = exc.errno
        return result

    # ----------------------------------------------------------------- the scan
    def _hash_plan(self, size: int) -> list[HashKind]:
        kinds = {k for k, t in self._detect_tables if t.may_hold_size(size)}
        kinds |= {k for k, t in self._allow_tables if t.may_hold_size(size)}
        if self.options.want_sha256:
            kinds.add(HashKind.SHA256)
        return sorted(kinds, key=_KIND_ORDER.__getitem__)

    def _scan(self, chunks: Iterator[memoryview] | list[memoryview], expected_size: int, result: ScanResult,
              source: _Source, ctx: _Context) -> None:
        """One pass over the chunks: hashes and Hyperscan streams; then confirm, look up, allow."""
        opts = self.options
        if 0 < expected_size <= TOO_SMALL:
            # clamscan skips these ("File too small") and reports them clean; so do we
            result.size = expected_size
            result.file_type = detect_type(b"")
            return
        hashers = {k: _HASHERS[k]() for k in self._hash_plan(expected_size)}
        opened: list[_Streams] = []
        spotter = Spotter() if opts.scan_archives else None
        try:
            size = self._feed(chunks, hashers, opened, result, expected_size, spotter)
        finally:
            for streams in opened:
                streams.close()
        ftype = result.file_type
        result.size = size
        result.bytes_scanned = min(size, opts.max_scansize)
        found = result.detections
        views: _Views | None = None
        if opened:
            source.size = size
            views = self._confirm_bodies(opened[0], ftype, source, found)
        digests = {k: h.digest() for k, h in hashers.items()}
        if (opts.allmatch or not found) and ftype not in _NORMALIZED_ONLY:
            for kind, table in self._detect_tables:
                digest = digests.get(kind)
                if digest is None:
                    continue
                for hit in table.lookup(digest, size):
                    found.append(Detection(hit.name, Evidence(
                        kind=f"hash.{kind.value}", source=self.db.sources[hit.source_index].path,
                        line=hit.line, db_version=self.db.version)))
                    if not opts.allmatch:
                        break
                if found and not opts.allmatch:
                    break
        if self._section_tables and views is not None and ftype == "CL_TYPE_MSEXE" and (opts.allmatch or not found):
            self._match_sections(views, found)
        if self._import_tables and views is not None and ftype == "CL_TYPE_MSEXE" and (opts.allmatch or not found):
            self._match_imports(views, found)
        if self._logical is not None and views is not None and (opts.allmatch or not found):
            facts = ObjectFacts(size, ftype, ctx.parents[-1] if ctx.parents else "CL_TYPE_ANY", ctx.parents)
            self._evaluate_logical(views, facts, found)
        if opts.alert_broken and ftype in _EXECUTABLE_TYPES and (opts.allmatch or not found):
            self._broken(memoryview(source.whole()), result)
        if self._yara is not None and size and (opts.allmatch or not found):
            self._match_yara(memoryview(source.whole())[: opts.max_scansize], ftype, result, ctx)
        if opts.scan_archives and size and (opts.allmatch or not found) \
                and not (ftype == "CL_TYPE_HTML" and size > opts.max_htmlnormalize):
            unpacker = unpacker_for(ftype)
            if unpacker is not None:
                self._scan_children(unpacker, memoryview(source.whole()), ftype, result, ctx)
        if spotter is not None and spotter.seen and size and (opts.allmatch or not found) \
                and ftype not in NO_RECOGNITION:
            embedded = EmbeddedObjects(ftype, opts.max_embeddedpe)
            self._scan_children(embedded, memoryview(source.whole()), ftype, result, ctx)
        if found:
            self._apply_allow_lists(result, digests, size)
        if opts.want_sha256:
            result.sha256 = digests[HashKind.SHA256].hex()

    def _feed(self, chunks: Iterator[memoryview] | list[memoryview], hashers: dict[HashKind, hashlib._Hash],
              opened: list[_Streams], result: ScanResult, expected_size: int = 0,
              spotter: Spotter | None = None) -> int:
        """Hash every chunk and stream it (and its normalized text) through Hyperscan; return the size.
        ``spotter`` looks at the raw bytes for embedded files (unpack/embedded.py)."""
        limit = self.options.max_scansize
        streams: _Streams | None = None
        normalizer: TextNormalizer | HtmlNormalizer | None = None
        raw_scan = True
        size = 0
        for chunk in chunks:
            if streams is None:
                ftype = result.file_type = self._type(chunk[:TEXT_PROBE])
                normalizer = (HtmlNormalizer() if ftype == "CL_TYPE_HTML" else TextNormalizer()) \
                    if ftype in NORMALIZED_TARGET else None
                if ftype == "CL_TYPE_HTML" and expected_size > self.options.max_htmlnormalize:
                    normalizer = None  # clamscan: "exiting (file larger than MaxHTMLNormalize)"
                raw_scan = ftype not in _NORMALIZED_ONLY
                if ftype in NO_RECOGNITION:
                    spotter = None
                streams = _Streams(self, normalized=normalizer is not None)
                opened.append(streams)
            for h in hashers.values():
                h.update(chunk)
            if spotter is not None and size < self.options.max_filesize:
                spotter.feed(chunk)
            if size < limit:
                part = chunk[: limit - size]
                if raw_scan:
                    streams.feed(streams.raw, part)
                if normalizer is not None:
                    text = normalizer.feed(part)
                    streams.feed(streams.norm_generic, text)
                    streams.feed(streams.norm, text)
            size += len(chunk)
        if normalizer is not None and streams is not None:
            text = normalizer.finish()
            streams.feed(streams.norm_generic, text)
            streams.feed(streams.norm, text)
        if streams is None:
            result.file_type = detect_type(b"")
        return size

    def _scan_children(self, unpacker: Unpacker, data: memoryview, ftype: str, result: ScanResult,
                       ctx: _Context) -> None:
        """Scan every member of a container through the whole engine, within the scan's limits."""
        opts = self.options
        deeper = ctx.depth + (1 if unpacker.counts_as_level else 0)
        # compression layers do not count as levels (as in clamscan), but a gzip of a gzip of ... is
        # still bounded: at most as many compression layers again as levels
        budget = ctx.budget
        limits = UnpackLimits(max_files=opts.max_files, max_recursion=opts.max_recursion,
                              max_scansize=opts.max_scansize, max_filesize=opts.max_filesize, max_ratio=opts.max_ratio)
        path = ctx.path or result.name
        found = result.detections
        children = unpacker.children(data, path, limits)
        if deeper >= opts.max_recursion or len(ctx.parents) >= 2 * opts.max_recursion:
            # only an object that has members is too deep (every executable is looked into for an
            # installer, and most hold none)
            if any(isinstance(c, ChildObject) for c in children):
                self._limit(result, "max-recursion", f"{path}: nested deeper than {opts.max_recursion}")
            close = getattr(children, "close", None)
            if close is not None:
                close()
            return
        position = 0
        try:
            for child in children:
                if isinstance(child, LimitExceeded):
                    self._problem(result, child.limit, child.detail, ftype)
                    continue
                if time.monotonic() > budget.deadline:
                    self._limit(result, "max-scantime", f"{path}: scan took longer than {opts.max_scantime:g} s")
                    return
                budget.files += 1
                if budget.files > opts.max_files:
                    self._limit(result, "max-files", f"{path}: more than {opts.max_files} members scanned")
                    return
                if budget.bytes + len(child.data) > opts.max_scansize:
                    self._limit(result, "max-scansize", f"{path}: more than {opts.max_scansize} bytes scanned")
                    return
                budget.bytes += len(child.data)
                position += 1
                if self.db.container_rules and self._match_container_rules(ftype, len(data), child, position, found) \
                        and not opts.allmatch:
                    return
                sub = ScanResult(name=child.container_path, size=len(child.data))
                view = memoryview(child.data)
                chunks = (view[i:i + READ_CHUNK] for i in range(0, len(view), READ_CHUNK))
                sub_ctx = _Context(budget, deeper, child.container_path, (*ctx.parents, ftype))
                self._scan(chunks, len(view), sub, _Source(len(view), kept=view), sub_ctx)
                for det in sub.detections:
                    ev = det.evidence
                    found.append(Detection(det.name, ev if ev.container_path else
                                           replace(ev, container_path=child.container_path)))
                for limit, detail in sub.limits.items():
                    result.limits.setdefault(limit, detail)
                if found and not opts.allmatch:
                    return
        finally:
            close = getattr(children, "close", None)
            if close is not None:
                close()

    def _match_container_rules(self, ftype: str, container_size: int, child: ChildObject, position: int,
                               found: list[Detection]) -> bool:
        """``.cdb``: rules on what a container holds (type and size of the container, member name, size
        and position).  The compressed size of a member is not known here: a rule that names one never
        matches (README)."""
        hit = False
        for rule in self.db.container_rules:
            if rule.container_type is not None and rule.container_type != ftype:
                continue
            if rule.size_in_container is not None or rule.encrypted:
                continue
            size_range = rule.container_size
            if size_range is not None and not size_range[0] <= container_size <= size_range[1]:
                continue
            if rule.real_size is not None and not rule.real_size[0] <= len(child.data) <= rule.real_size[1]:
                continue
            if rule.position is not None and not rule.position[0] <= position <= rule.position[1]:
                continue
            if rule.name_regex is not None:
                rx = self._cdb_regex.get(rule.name_regex)
                if rx is None:
                    rx = self._cdb_regex[rule.name_regex] = re.compile(rule.name_regex)
                if not rx.search(child.name):
                    continue
            found.append(Detection(rule.name, Evidence(
                kind="container", source=self.db.sources[rule.source_index].path, line=rule.line,
                db_version=self.db.version, container_path=child.container_path, pattern=child.name)))
            hit = True
            if not self.options.allmatch:
                return True
        return hit

    def _problem(self, result: ScanResult, kind: str, detail: str, ftype: str) -> None:
        """A member the unpacker could not hand over: a limit, encryption, or damage."""
        if kind in LIMIT_ALERTS:
            self._limit(result, kind, detail)
            return
        result.limits.setdefault(kind, detail)
        if kind != "encrypted" or not self.options.alert_encrypted or ftype in ENCRYPTED_SILENT:
            return
        name = ENCRYPTED_ALERTS.get(ftype, "Heuristics.Encrypted.Archive")
        if not any(d.name == name for d in result.detections):
            result.detections.append(Detection(name, Evidence(kind="heuristic", source=kind, line=0,
                                                              db_version=self.db.version, pattern=detail)))

    def _broken(self, data: memoryview, result: ScanResult) -> None:
        """--alert-broken: a PE or ELF file whose headers clamscan calls broken is a verdict."""
        from bastion.formats.broken import broken_executable

        reason = broken_executable(data)
        if reason is not None:
            result.detections.append(Detection("Heuristics.Broken.Executable", Evidence(
                kind="heuristic", source="broken-executable", line=0, db_version=self.db.version, pattern=reason)))

    def _apply_allow_lists(self, result: ScanResult, digests: dict[HashKind, bytes], size: int) -> None:
        for kind, table in self._allow_tables:
            digest = digests.get(kind)
            if digest is None:
                continue
            hits = table.lookup(digest, size)
            if hits:
                result.allowed_by = f"{self.db.sources[hits[0].source_index].path}:{hits[0].line}"
                result.detections.clear()
                return

    def _candidates(self, ids: list[int], ftype: str, norm_target: int | None,
                    nominated: dict[int, set[int]]) -> list[int]:
        """Signatures Hyperscan nominated whose target type fits the object (raw or normalized view).

        Content subsignatures of logical signatures go to ``nominated`` (lsig -> subsig indexes).
        """
        bodies = self.db.bodies
        keep = []
        for sid in ids:
            entry = bodies.entry(sid)
            target = entry.target
            if norm_target is None:
                fits = target not in (3, 7) and target_matches(target, ftype)
            else:
                fits = target in (0, norm_target)
            if not fits:
                continue
            if entry.lsig >= 0:
                nominated.setdefault(entry.lsig, set()).add(entry.subsig)
            else:
                keep.append(sid)
        return keep

    def _always(self, ftype: str, norm_target: int | None, nominated: dict[int, set[int]]) -> None:
        """Logical signatures that can hold without any content match are evaluated on every object."""
        for lsig in self.db.logical.always:
            target = self.db.logical.record(lsig)[1]
            fits = (target not in (3, 7) and target_matches(target, ftype)) if norm_target is None \
                else target in (0, norm_target)
            if fits:
                nominated.setdefault(lsig, set())

    def _match_sections(self, views: _Views, found: list[Detection]) -> None:
        """``.mdb``/``.msb``: the hash of each PE section's raw data, with its size."""
        info = views.exe()
        if info is None or info.kind != "pe":
            return
        data = views.raw()
        for index, section in enumerate(info.sections):
            if section.raw_size <= 0 or section.raw_offset >= len(data):
                continue
            raw = data[section.raw_offset:section.raw_offset + section.raw_size]
            for kind, table in self._section_tables:
                if not table.may_hold_size(len(raw)):
                    continue
                for hit in table.lookup(_digest(kind, raw), len(raw)):
                    found.append(Detection(hit.name, Evidence(
                        kind=f"section.{kind.value}", source=self.db.sources[hit.source_index].path, line=hit.line,
                        db_version=self.db.version, offsets=(section.raw_offset,), pattern=f"section {index}")))
                    if not self.options.allmatch:
                        return

    def _yara_scanner(self) -> object:
        scanner = getattr(self._local, "yara", None)
        if scanner is None:
            import yara_x

            assert self._yara is not None
            scanner = self._local.yara = yara_x.Scanner(self._yara.rules())
            scanner.set_timeout(max(1, int(self.options.max_scantime)))
        return scanner

    def _match_yara(self, data: memoryview, ftype: str, result: ScanResult, ctx: _Context) -> None:
        """YARA rules (yara-x) with the external variables of this object (signatures/yara.py)."""
        found = result.detections
        name = result.name
        from bastion.signatures.yara import yara_externals

        assert self._yara is not None
        scanner = self._yara_scanner()
        for key, value in yara_externals(name, ftype, inside=bool(ctx.parents)).items():
            scanner.set_global(key, value)  # type: ignore[attr-defined]
        try:
            results = scanner.scan(bytes(data))  # type: ignore[attr-defined]
        except Exception as exc:  # yara_x.TimeoutError / ScanError: reported, never fatal
            limit = "max-scantime" if "imeout" in type(exc).__name__ else "yara-error"
            result.limits.setdefault(limit, f"YARA: {exc}")
            return
        for rule in results.matching_rules:
            source_index, line = self._yara.source_of(rule.namespace, rule.identifier)
            source = self.db.sources[source_index]
            strings = tuple((p.identifier, tuple(m.offset for m in p.matches)) for p in rule.patterns if p.matches)
            offsets = tuple(sorted({o for _, offs in strings for o in offs}))[:64]
            printed = f"YARA.{rule.identifier}" + ("" if source.official else ".UNOFFICIAL")
            found.append(Detection(printed, Evidence(
                kind="yara", source=source.path, line=line, db_version=self.db.version, offsets=offsets,
                pattern=f"rule {rule.identifier}", meta=(("namespace", rule.namespace), ("tags", tuple(rule.tags)),
                                                       ("metadata", tuple(rule.metadata)), ("strings", strings)))))
            if not self.options.allmatch:
                return

    def _match_imports(self, views: _Views, found: list[Detection]) -> None:
        """``.imp``: the hash of the PE import table text (:mod:`bastion.formats.pe_imports`)."""
        info = views.exe()
        if info is None:
            return
        from bastion.formats.pe_imports import import_text

        text = import_text(views.raw(), info)
        if text is None:
            return
        raw = memoryview(text.encode("latin-1"))
        for kind, table in self._import_tables:
            for hit in table.lookup(_digest(kind, raw), len(raw)):
                found.append(Detection(hit.name, Evidence(
                    kind=f"imports.{kind.value}", source=self.db.sources[hit.source_index].path, line=hit.line,
                    db_version=self.db.version, pattern=text)))
                if not self.options.allmatch:
                    return

    def _evaluate_logical(self, views: _Views, facts: ObjectFacts, found: list[Detection]) -> None:
        """Logical signatures on the raw bytes, then on the normalized text (each name once)."""
        assert self._logical is not None
        seen: set[int] = set()
        for nominated, data, normalized in ((views.raw_nominated, views.raw, False),
                                            (views.norm_nominated, views.norm, True)):
            if not nominated or data is None:
                continue
            for lsig in sorted(nominated):
                if lsig in seen:
                    continue
                match = self._logical.evaluate(lsig, data(), facts, nominated[lsig], views.exe)
                if match is None:
                    continue
                seen.add(lsig)
                record = self.db.logical.record(lsig)
                found.append(Detection(record[0], Evidence(
                    kind="logical", source=self.db.sources[record[6]].path, line=record[7],
                    db_version=self.db.version, offsets=tuple(o for o in match.first_offsets if o >= 0),
                    normalized=normalized, pattern=record[8], subsig_counts=match.counts)))
                if not self.options.allmatch:
                    return

    def _confirm_bodies(self, streams: _Streams, ftype: str, source: _Source, found: list[Detection]) -> _Views:
        norm_target = NORMALIZED_TARGET.get(ftype)
        views = _Views(source, self.options.max_scansize, ftype)
        raw_ids = self._candidates(streams.raw_hits.ids, ftype, None, views.raw_nominated)
        norm_ids = self._candidates(streams.norm_generic_hits.ids + streams.norm_hits.ids, ftype, norm_target,
                                    views.norm_nominated) if norm_target is not None else []
        if self._logical is not None:
            if ftype not in _NORMALIZED_ONLY:
                self._always(ftype, None, views.raw_nominated)
            if norm_target is not None:
                self._always(ftype, norm_target, views.norm_nominated)
        if ftype in _NORMALIZED_ONLY:
            views.raw_nominated.clear()
        if norm_target is not None:
            views.has_norm = True
        if not raw_ids and not norm_ids:
            return views
        confirmed: list[tuple[int, int, int]] = []  # (generic?, offset, id)
        if source.kept is None:  # a streamed file: confirm what we can from small windows
            raw_ids = self._confirm_in_windows(raw_ids, streams.raw_hits.ends, source, confirmed)
        if raw_ids or norm_ids:
            confirmed += self._confirm_all(raw_ids, views.raw(), views.exe)
        self._report_bodies(confirmed, found, normalized=False)
        if norm_ids and (self.options.allmatch or not found):
            self._report_bodies(self._confirm_all(norm_ids, views.norm(), views.exe), found, normalized=True)
        return views

    def _confirm_in_windows(self, ids: list[int], ends: dict[int, int], source: _Source,
                            confirmed: list[tuple[int, int, int]]) -> list[int]:
        """Confirm bounded, exactly-compiled signatures by reading only the bytes a match can occupy.

        For ``*`` offsets the window ends where Hyperscan saw the first match end, so the offset
        reported is that match's start.  Returns the ids that need the whole object instead.
        """
        rest = []
        limit = min(source.size, self.options.max_scansize)
        for sid in ids:
            entry = self.db.bodies.entry(sid)
            anchor = entry.anchor
            if entry.mode != "exact" or entry.max_length < 0 or anchor not in _WINDOW_ANCHORS:
                rest.append(sid)
                continue
            if anchor == Anchor.ANY.value:
                end = ends[sid]
                lo = hi = max(0, end - entry.max_length)
                hi = end
            else:
                lo = entry.value if anchor == Anchor.ABSOLUTE.value else source.size - entry.value
                hi = lo + entry.maxshift
                end = min(hi + entry.max_length, limit)
            if lo < 0 or lo >= limit:
                continue
            window = source.read(lo, end)
            m = self._regex(sid, entry).search(window)
            if m is not None and (anchor == Anchor.ANY.value or m.start() <= hi - lo):
                confirmed.append((1 if entry.target == 0 else 0, lo + m.start(), sid))
        return rest

    def _confirm_all(self, ids: list[int], data: memoryview,
                     exe: Callable[[], ExecutableInfo | None]) -> list[tuple[int, int, int]]:
        confirmed = []
        for sid in ids:
            entry = self.db.bodies.entry(sid)
            start = self._confirm(sid, entry, data, exe)
            if start is not None:
                confirmed.append((1 if entry.target == 0 else 0, start, sid))
        return confirmed

    def _report_bodies(self, confirmed: list[tuple[int, int, int]], found: list[Detection], normalized: bool) -> None:
        confirmed.sort()
        for _, start, sid in confirmed:
            entry = self.db.bodies.entry(sid)
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
        window = resolve_window(entry.offset, size, exe)
        if window is None:
            return None
        lo, hi = window
        m = rx.match(data, lo) if lo == hi else rx.search(data, lo)
        if m is None or m.start() > hi:
            return None
        return m.start()


def _read_into(fh: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``fh``; fewer bytes if the file is shorter (or shrank while we read)."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _read_chunks(fh: BinaryIO, buf: memoryview) -> Iterator[memoryview]:
    """The file's content, one reused buffer-full at a time."""
    while True:
        n = _read_into(fh, buf)
        if n:
            yield buf[:n]
        if n < len(buf):
            return

