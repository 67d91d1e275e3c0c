"""What a scan returns: detections with their evidence, errors and limits as data.

Every front end renders these; none of them looks inside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a signature fired.

    ``kind``: ``hash.md5`` / ``hash.sha1`` / ``hash.sha256`` (whole-object hash), ``body`` (byte
    pattern) or ``logical`` (an ``.ldb`` signature: ``pattern`` is its whole line, ``offsets`` the first
    match of each subsignature that matched, ``subsig_counts`` how often each subsignature matched)
    or ``yara`` (a YARA rule: ``offsets`` are its strings' match offsets, ``meta`` the rest).
    ``source`` and ``line`` locate the signature's text; ``offsets`` are start offsets of
    the match in the scanned buffer (``normalized`` tells whether that buffer was the normalized
    text of the object rather than its bytes); ``pattern`` is the signature as written.
    """

    kind: str
    source: str
    line: int
    db_version: str
    offsets: tuple[int, ...] = ()
    normalized: bool = False
    pattern: str = ""
    container_path: str = ""
    subsig_counts: tuple[int, ...] = ()
    # kind "yara": (("namespace", str), ("tags", (str, ...)), ("metadata", ((key, value), ...)),
    # ("strings", ((identifier, (offset, ...)), ...)))
    meta: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class Detection:
    name: str
    evidence: Evidence


@dataclass(slots=True)
class ScanResult:
    """The outcome for one scanned object.

    ``error`` is set (and ``errno`` when the OS gave one) when the object could not be scanned;
    ``skipped`` names the limit that made the engine leave the object unscanned (as clamscan does
    for files over --max-filesize); ``limits`` maps every limit that cut the scan short, and every
    member an unpacker could not open (``encrypted``, ``unsupported``, ``broken``), to a detail.
    Detections found inside containers carry the member's ``container_path`` in their evidence.
    """

    name: str
    size: int = 0
    file_type: str = ""
    detections: list[Detection] = field(default_factory=list)
    sha256: str | None = None
    error: str | None = None
    errno: int | None = None
    skipped: str | None = None
    bytes_scanned: int = 0
    allowed_by: str | None = None
    limits: dict[str, str] = field(default_factory=dict)

    @property
    def infected(self) -> bool:
        return bool(self.detections)

    @property
    def verdict(self) -> str:
        if self.detections:
            return "infected"
        if self.error:
            return "error"
        return "clean"
