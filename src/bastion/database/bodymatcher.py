"""Compiled body-signature matcher state: Hyperscan databases plus what is needed to confirm a hit.

Matcher choice (bench/matchers.py, results in bench/README.md): Hyperscan compiles ClamAV's wildcard
syntax directly (nibbles, ranges, alternations become regex classes and bounded repeats), scans
at several GB/s, serializes its compiled state (load in milliseconds) and releases the GIL while
scanning, so threads share one database.  Aho-Corasick libraries only handle literals and need a
verification pass for every wildcard pattern.

Each pattern is compiled in the best mode Hyperscan accepts:

* ``exact``: its prefilter regex as is (a superset only where the pattern uses zero-width tokens);
* ``prefilter``: with ``HS_FLAG_PREFILTER`` (Hyperscan may widen it, never narrow it);
* ``literal``: its longest literal run (ClamAV requires every signature to have one).

In every mode the engine confirms the hit with the exact Python regex, so no signature is dropped and
none can match more than it should.  There are two databases: ``raw`` for signatures matched against
the object's bytes, and ``normalized`` for target types 3 (HTML) and 7 (ASCII text), which ClamAV
matches against normalized text.
"""

from __future__ import annotations

import marshal
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import hyperscan

from bastion.database.mapping import Blob, Column, load_shared
from bastion.signatures.model import BodySignature
from bastion.signatures.offsets import Anchor, Offset

NORMALIZED_TARGETS = frozenset({3, 7})
_BASE_FLAGS = hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_SINGLEMATCH


@dataclass(frozen=True, slots=True)
class BodyEntry:
    """What the engine needs about one body signature at scan time (compact, picklable)."""

    name: str
    target: int
    anchor: str
    value: int
    section: int
    maxshift: int
    regex: bytes
    pattern: str
    source_index: int
    line: int
    mode: str
    max_length: int  # -1: unbounded
    lsig: int = -1     # >= 0: a content subsignature of logical signature ``lsig`` (it only nominates)
    subsig: int = -1

    @property
    def offset(self) -> Offset:
        return Offset(Anchor(self.anchor), self.value, self.section, self.maxshift)


def _try_compile(expressions: Sequence[bytes], ids: Sequence[int], flags: Sequence[int]) -> hyperscan.Database | None:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
    try:
        db.compile(expressions=list(expressions), ids=list(ids), elements=len(expressions), flags=list(flags))
    except hyperscan.error:
        return None
    return db


def _compile_group(bodies: list[BodySignature], members: list[int],
                   id_offset: int = 0) -> tuple[bytes | None, dict[int, str]]:
    """Compile ``members`` (indexes into ``bodies``); returns (serialized DB, mode per member).
    Hyperscan reports member ``i`` as pattern id ``i + id_offset`` (a layer's ids follow the layers
    below it: database/layered.py)."""
    if not members:
        return None, {}
    from bastion.signatures.hexpattern import literal_regex  # compile time only
    # caseless subsignatures (.ldb ``::i``) get Hyperscan's inline caseless flag in every mode
    def caseless(i: int, expr: bytes) -> bytes:
        return b"(?i)" + expr if bodies[i].caseless else expr

    exprs = {i: caseless(i, bodies[i].prefilter) for i in members}
    flags = dict.fromkeys(members, _BASE_FLAGS)
    modes = dict.fromkeys(members, "exact")
    for i in members:
        if not bodies[i].prefilter_exact:
            modes[i] = "superset"

    def ids(group: list[int]) -> list[int]:
        return [i + id_offset for i in group] if id_offset else group

    def find_bad(group: list[int]) -> list[int]:
        if _try_compile([exprs[i] for i in group], ids(group), [flags[i] for i in group]) is not None:
            return []
        if len(group) == 1:
            return group
        mid = len(group) // 2
        return find_bad(group[:mid]) + find_bad(group[mid:])

    db = _try_compile([exprs[i] for i in members], ids(members), [flags[i] for i in members])
    if db is None:
        for i in find_bad(members):
            flags[i] = _BASE_FLAGS | hyperscan.HS_FLAG_PREFILTER
            modes[i] = "prefilter"
            if _try_compile([exprs[i]], ids([i]), [flags[i]]) is None:
                exprs[i] = caseless(i, literal_regex(bodies[i].longest_literal))
                flags[i] = _BASE_FLAGS
                modes[i] = "literal"
        db = _try_compile([exprs[i] for i in members], ids(members), [flags[i] for i in members])
        if db is None:
            raise RuntimeError("Hyperscan refused the body-signature database after fallbacks")
    return hyperscan.dumpb(db), modes


def _deserialize(blob: bytes | None) -> hyperscan.Database | None:
    """A streaming Hyperscan database, with the scratch python-hyperscan's Stream.close() insists on
    using (it cannot be given one per thread; the engine serializes closes)."""
    if not blob:
        return None
    db = hyperscan.loadb(blob, hyperscan.HS_MODE_STREAM)
    db.scratch = hyperscan.Scratch(db)
    return db


class _Loaded:
    """A deserialized Hyperscan database, shared by file through mapping.load_shared
    (hyperscan.Database itself takes no weak references)."""

    __slots__ = ("db", "__weakref__")

    def __init__(self, db: hyperscan.Database | None) -> None:
        self.db = db


def _load_file(path: str) -> _Loaded:
    """The Hyperscan database in ``path`` (none when there is no such file), shared with any other
    matcher of this process loaded from the same file (a layered database's lower layers)."""
    if not os.path.exists(path):
        return _Loaded(None)
    return load_shared(path, "hyperscan", lambda fh: _Loaded(_deserialize(fh.read())))


class BodyMatcher:
    """The compiled body signatures: two Hyperscan databases and one entry per signature.

    Entries are stored as one marshal record each, behind an offsets index, and decoded only when a
    signature fires: opening a 50,000-signature database then costs a few milliseconds.
    """

    def __init__(self, index: Column | array, records: Blob | bytes, raw: bytes | None,
                 normalized: bytes | None, modes: dict[str, int], keep_blobs: bool = False) -> None:
        self.index = index
        self.records = records
        # the serialized databases are kept only to be saved; a loaded database drops them (25 MB)
        self.raw_blob = raw if keep_blobs else None
        self.normalized_blob = normalized if keep_blobs else None
        self.modes = modes
        self.raw = _deserialize(raw)
        self.normalized = _deserialize(normalized)
        self._decoded: dict[int, BodyEntry] = {}
        self._held: tuple[_Loaded, ...] = ()

    def __len__(self) -> int:
        """Entries, including the content subsignatures of logical signatures."""
        return max(0, len(self.index) - 1)

    def entry(self, sid: int) -> BodyEntry:
        found = self._decoded.get(sid)
        if found is None:
            # plain tuples of str/int/bytes: marshal never loads code from data
            start, end = self.index[sid], self.index[sid + 1]
            records = self.records
            row = marshal.loads(records[start:end] if isinstance(records, bytes) else records.read(start, end))
            found = self._decoded[sid] = BodyEntry(*row)
        return found

    def entries(self) -> list[BodyEntry]:
        return [self.entry(i) for i in range(len(self))]

    @property
    def raw_dbs(self) -> list[hyperscan.Database]:
        """The Hyperscan databases for raw bytes (one; a layered database has one per layer)."""
        return [self.raw] if self.raw is not None else []

    @property
    def normalized_dbs(self) -> list[hyperscan.Database]:
        return [self.normalized] if self.normalized is not None else []

    @classmethod
    def build(cls, bodies: list[BodySignature], id_offset: int = 0, lsig_offset: int = 0) -> BodyMatcher:
        """``id_offset``/``lsig_offset``: where this matcher's signature ids and logical signature ids
        start (non-zero for a layer compiled on top of others: database/layered.py)."""
        raw_ids = [i for i, b in enumerate(bodies) if b.target not in NORMALIZED_TARGETS]
        norm_ids = [i for i, b in enumerate(bodies) if b.target in NORMALIZED_TARGETS]
        raw, raw_modes = _compile_group(bodies, raw_ids, id_offset)
        norm, norm_modes = _compile_group(bodies, norm_ids, id_offset)
        modes = raw_modes | norm_modes
        index = array("Q", [0])
        chunks: list[bytes] = []
        total = 0
        counts: dict[str, int] = {}
        for i, b in enumerate(bodies):
            rec = marshal.dumps((b.name, b.target, b.offset.anchor.value, b.offset.value, b.offset.section,
                                 b.offset.maxshift, b.regex, b.pattern, b.source_index, b.line, modes[i],
                                 -1 if b.max_length is None else b.max_length,
                                 b.lsig + lsig_offset if b.lsig >= 0 else -1, b.subsig))
            chunks.append(rec)
            total += len(rec)
            index.append(total)
            counts[modes[i]] = counts.get(modes[i], 0) + 1
        return cls(index, b"".join(chunks), raw, norm, counts, keep_blobs=True)

    def save(self, directory: str) -> None:
        for stem, blob in (("raw", self.raw_blob), ("normalized", self.normalized_blob)):
            if blob:
                with open(os.path.join(directory, f"{stem}.hs"), "wb") as fh:
                    fh.write(blob)
        assert isinstance(self.index, array) and isinstance(self.records, bytes), "only a built matcher is saved"
        with open(os.path.join(directory, "bodies.index"), "wb") as fh:
            fh.write(self.index.tobytes())
        with open(os.path.join(directory, "bodies.records"), "wb") as fh:
            fh.write(self.records)

    @classmethod
    def load(cls, directory: str, modes: dict[str, int]) -> BodyMatcher:
        raw, normalized = (_load_file(os.path.join(directory, f"{stem}.hs")) for stem in ("raw", "normalized"))
        index = Column(os.path.join(directory, "bodies.index"), "Q")
        records = Blob(os.path.join(directory, "bodies.records"))
        matcher = cls(index, records, None, None, modes)
        matcher.raw, matcher.normalized = raw.db, normalized.db
        matcher._held = (raw, normalized)  # keeps them shared (mapping.load_shared) while this matcher lives
        return matcher

    def mode_counts(self) -> dict[str, int]:
        return dict(self.modes)

