"""The signature model: what every parser produces and the database compiler consumes.

Parsers (one module per source format) append to one :class:`SignatureSet`.  The model is plain
data; it knows nothing about matchers.  Hash signatures are kept column-wise (one list per field,
not one object per signature) because a real database holds millions of them.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from enum import Enum

from bastion.signatures.offsets import Offset


class HashKind(str, Enum):
    """Whole-file hash families, told apart by digest length as ClamAV does."""

    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"

    @classmethod
    def from_hex_length(cls, length: int) -> HashKind | None:
        return {32: cls.MD5, 40: cls.SHA1, 64: cls.SHA256}.get(length)

    @property
    def digest_size(self) -> int:
        return {HashKind.MD5: 16, HashKind.SHA1: 20, HashKind.SHA256: 32}[self]


class HashPurpose(str, Enum):
    """Detect (``.hdb``/``.hsb``), allow-list (``.fp``/``.sfp``), PE section (``.mdb``/``.msb``) or
    PE import table (``.imp``)."""

    DETECT = "detect"
    ALLOW = "allow"
    SECTION = "section"
    IMPORTS = "imports"


# A hash signature whose size field is ``*`` matches a file of any size.
ANY_SIZE = -1


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One signature file that went into the model.

    ``official`` is true only for sources shipped inside a signed container or with Bastion itself;
    names from every other source get ClamAV's ``.UNOFFICIAL`` suffix.
    """

    path: str
    sha256: str
    official: bool


@dataclass(slots=True)
class HashColumns:
    """All hash signatures of one (kind, purpose), column-wise, with no Python object per row.

    Row ``i`` is: ``digest(i)`` (raw bytes, ``width`` each, packed in ``digest_blob``), ``sizes[i]``
    (bytes, or :data:`ANY_SIZE`), ``name(i)`` (the printed name, UTF-8 in ``name_blob`` up to
    ``name_ends[i]``), ``source_index[i]`` (into :attr:`SignatureSet.sources`) and ``lines[i]``
    (1-based line in that source).  Packed so that parsing 1.2M hash lines holds ~75 MiB instead of
    ~250 MiB of per-line objects (measured on the benchmark database: the daemon's reload compile).
    """

    width: int = 0
    digest_blob: bytearray = field(default_factory=bytearray)
    sizes: array = field(default_factory=lambda: array("q"))
    name_blob: bytearray = field(default_factory=bytearray)
    name_ends: array = field(default_factory=lambda: array("Q"))
    source_index: array = field(default_factory=lambda: array("H"))
    lines: array = field(default_factory=lambda: array("I"))

    def __len__(self) -> int:
        return len(self.sizes)

    def append(self, digest: bytes, size: int, name: str, source_index: int, line: int) -> None:
        if not self.width:
            self.width = len(digest)
        self.digest_blob += digest
        self.sizes.append(size)
        self.name_blob += name.encode("utf-8")
        self.name_ends.append(len(self.name_blob))
        self.source_index.append(source_index)
        self.lines.append(line)

    def digest(self, i: int) -> bytes:
        return bytes(self.digest_blob[i * self.width:(i + 1) * self.width])

    @property
    def names(self) -> list[str]:
        """Every row's name (for inspection and tests; the compiler reads the blob)."""
        return [self.name_bytes(i).decode("utf-8") for i in range(len(self))]

    def name_bytes(self, i: int) -> bytes:
        return bytes(self.name_blob[self.name_ends[i - 1] if i else 0:self.name_ends[i]])


@dataclass(frozen=True, slots=True)
class BodySignature:
    """One extended (body) signature, ``.ndb`` style.

    ``pattern`` is the hex signature text as written; ``regex`` and ``prefilter`` are its two
    translations made by :mod:`bastion.signatures.hexpattern` (exact Python regex, and a
    Hyperscan-compatible superset).
    """

    name: str
    target: int
    offset: Offset
    pattern: str
    regex: bytes
    prefilter: bytes
    prefilter_exact: bool
    longest_literal: bytes
    max_length: int | None
    source_index: int
    line: int
    # set for the content subsignatures of a logical signature: they only nominate it (see ldb.py)
    lsig: int = -1
    subsig: int = -1
    caseless: bool = False


@dataclass(frozen=True, slots=True)
class MacroMember:
    """An ``.ndb`` signature with offset ``$n$``: a member of macro group n, used by ``.ldb`` macros."""

    group: int
    name: str
    pattern: str
    regex: bytes
    source_index: int
    line: int


# ---------------------------------------------------------------- logical signatures (.ldb)
@dataclass(frozen=True, slots=True)
class ContentSubsig:
    """``[offset:]HEX[::modifiers]``.  ``regex`` is the exact pattern with every modifier applied
    (nocase, wide, ascii+wide, fullword); it counts the matches that satisfy ``offset``."""

    offset: Offset
    pattern: str
    modifiers: str
    regex: bytes


@dataclass(frozen=True, slots=True)
class PcreSubsig:
    """``[offset:]Trigger/regex/[flags]``: run (PCRE2) only when ``trigger`` (an expression over
    earlier subsignatures, :mod:`bastion.signatures.logic`) holds."""

    offset: Offset
    trigger: tuple
    trigger_text: str
    regex: bytes
    flags: str


@dataclass(frozen=True, slots=True)
class ByteCompareSubsig:
    """``N(<<off|>>off#[h|d|a|i][l|b][e]len#OPval[,OPval])``: read ``length`` bytes at ``offset``
    (signed) from the start of subsignature ``ref``'s first match and compare them."""

    ref: int
    offset: int
    base: str          # h (hex text), d (decimal text), a (auto), i (raw binary)
    little: bool
    exact: bool
    length: int
    comparisons: tuple  # ((op, value), ...) with op in "<>="


@dataclass(frozen=True, slots=True)
class MacroSubsig:
    """``${min-max}group$``: a member of the ``.ndb`` macro group starts ``min..max`` bytes after the
    start of the previous subsignature's match."""

    low: int
    high: int
    group: int


@dataclass(frozen=True, slots=True)
class FuzzyImageSubsig:
    """``fuzzy_img#hash[#distance]``: image fuzzy hash (parsed; never matches, see README)."""

    digest: str
    distance: int


Subsig = ContentSubsig | PcreSubsig | ByteCompareSubsig | MacroSubsig | FuzzyImageSubsig


@dataclass(frozen=True, slots=True)
class TargetConditions:
    """The target description block besides ``Engine`` and ``Target``; ranges are inclusive
    ``(low, high)`` or None when absent."""

    file_size: tuple[int, int] | None = None
    entry_point: tuple[int, int] | None = None
    sections: tuple[int, int] | None = None
    container: str | None = None
    intermediates: tuple[str, ...] = ()
    icon_groups: tuple[str, ...] = ()
    handler_type: str | None = None


@dataclass(frozen=True, slots=True)
class LogicalSignature:
    """One ``.ldb`` line: a logical ``expression`` over ``subsigs`` for objects of type ``target``."""

    name: str
    target: int
    conditions: TargetConditions
    expression: tuple
    expression_text: str
    subsigs: tuple[Subsig, ...]
    source_index: int
    line: int
    text: str


@dataclass(frozen=True, slots=True)
class FileTypeMagic:
    """One ``.ftm`` line: objects whose first bytes carry ``magic`` at ``offset`` (-1: anywhere, for
    magictype 1 where ``magic`` is a regex) and that the built-in typing calls ``rtype`` (or
    ``CL_TYPE_ANY``) are of type ``ftype``."""

    kind: int
    offset: int
    magic: bytes
    text: str
    name: str
    rtype: str
    ftype: str
    source_index: int
    line: int


@dataclass(frozen=True, slots=True)
class ContainerRule:
    """One ``.cdb`` line; None fields match anything; ranges are inclusive ``(low, high)``."""

    name: str
    container_type: str | None
    container_size: tuple[int, int] | None
    name_regex: str | None
    size_in_container: tuple[int, int] | None
    real_size: tuple[int, int] | None
    encrypted: bool | None
    position: tuple[int, int] | None
    source_index: int
    line: int


@dataclass(frozen=True, slots=True)
class YaraSource:
    """One YARA rule file that yara-x accepted: its text, compiled later into one namespace."""

    path: str
    text: str
    source_index: int
    official: bool
    namespace: str


@dataclass(slots=True)
class LoadReport:
    """What happened while loading, for ``--debug``, ``bastion scan`` and the summary.

    Nothing is skipped silently: each file that was not loaded is listed with its reason, and
    signatures left out by design (functionality level, target type, ``.ign2``) are counted.
    """

    loaded_files: list[str] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    skipped_by_flevel: int = 0
    skipped_by_target: int = 0
    ignored_by_name: int = 0
    macro_members: int = 0
    # logical signatures left out because their target description names something unknown
    skipped_by_condition: int = 0
    # lines parsed and validated that Bastion does not act on yet, by kind (phishing, ...)
    not_enforced: dict[str, int] = field(default_factory=dict)
    # YARA files yara-x rejected (path, line, reason): left out, the rest loaded
    yara_errors: list[tuple[str, int, str]] = field(default_factory=list)
    # .cvd/.cld/.cud containers loaded: their header fields and how they were verified
    containers: list[dict[str, object]] = field(default_factory=list)


@dataclass(slots=True)
class SignatureSet:
    """The parsed form of every signature source: input to the database compiler."""

    sources: list[SourceFile] = field(default_factory=list)
    hashes: dict[tuple[HashKind, HashPurpose], HashColumns] = field(default_factory=dict)
    bodies: list[BodySignature] = field(default_factory=list)
    logical: list[LogicalSignature] = field(default_factory=list)
    macros: list[MacroMember] = field(default_factory=list)
    filetypes: list[FileTypeMagic] = field(default_factory=list)
    container_rules: list[ContainerRule] = field(default_factory=list)
    yara: list[YaraSource] = field(default_factory=list)
    # .ign/.ign2 entries: bare name -> set of md5 hex of the full DB line ('' = any line)
    ignores: dict[str, set[str]] = field(default_factory=dict)
    report: LoadReport = field(default_factory=LoadReport)
    # per source index: its lines' digests and numbers (database/linetable.py), 12 bytes a line
    line_records: dict[int, bytearray] = field(default_factory=dict)

    def hash_columns(self, kind: HashKind, purpose: HashPurpose) -> HashColumns:
        key = (kind, purpose)
        cols = self.hashes.get(key)
        if cols is None:
            cols = self.hashes[key] = HashColumns()
        return cols

    def add_source(self, path: str, sha256: str, official: bool) -> int:
        self.sources.append(SourceFile(path, sha256, official))
        if len(self.sources) > 0xFFFF:
            raise ValueError("more than 65535 signature files")
        return len(self.sources) - 1

    @property
    def signature_count(self) -> int:
        """Signatures that can raise an alert (allow-list entries are not counted, as in ClamAV)."""
        detect = sum(len(c) for (_, p), c in self.hashes.items() if p is not HashPurpose.ALLOW)
        return detect + sum(1 for b in self.bodies if b.lsig < 0) + len(self.logical) + len(self.container_rules)
