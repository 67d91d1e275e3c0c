"""Find signature sources and parse them into one :class:`SignatureSet`.

``-d`` takes a file or a directory, like clamscan.  A directory is read the way ClamAV reads one
(not recursive; ``.ign``/``.ign2`` first so they apply to everything after them, then the rest by
name).  Files whose format is unknown or not supported yet are listed in the report with a reason,
never skipped silently.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from bastion.signatures.errors import SignatureError
from bastion.signatures.model import HashPurpose, SignatureSet
from bastion.signatures.textdb import ChangedLines, line_records

# extension -> (parser role, needs --detect-pua)
SUPPORTED: dict[str, tuple[str, bool]] = {
    ".hdb": ("hash", False), ".hsb": ("hash", False),
    ".hdu": ("hash", True), ".hsu": ("hash", True),
    ".fp": ("allow", False), ".sfp": ("allow", False),
    ".ndb": ("ndb", False), ".ndu": ("ndb", True),
    ".ldb": ("ldb", False), ".ldu": ("ldb", True),
    ".mdb": ("section", False), ".msb": ("section", False),
    ".mdu": ("section", True), ".msu": ("section", True),
    ".imp": ("imports", False),
    ".ftm": ("ftm", False),
    ".cdb": ("cdb", False),
    ".pdb": ("pdb", False), ".wdb": ("wdb", False), ".gdb": ("gdb", False),
    ".cfg": ("cfg", False), ".info": ("info", False),
    ".yar": ("yara", False), ".yara": ("yara", False),
    ".cvd": ("container", False), ".cld": ("container", False), ".cud": ("container", False),
    ".ign": ("ignore", False), ".ign2": ("ignore", False),
}
# Formats ClamAV reads that Bastion does not read yet: reported by name at load.
NOT_YET_SUPPORTED = frozenset({
    ".idb", ".cbc", ".crb",
    ".pwdb", ".cat",
    ".db", ".sdb", ".zmd", ".rmd", ".ioc",
})
NEVER_A_DATABASE = frozenset({".sign", ".cdiff", ".dat", ".txt", ".md"})

# Where an installed database lives when no -d is given; the built-in one is used if it is empty.
DEFAULT_DB_DIR_ENV = "BASTION_DB_DIR"
DEFAULT_DB_DIR = "/var/lib/bastion/db"


@dataclass(frozen=True, slots=True)
class SourceCandidate:
    """A file chosen to be loaded, with its content digest (part of the compiled-DB cache key)."""

    path: str
    role: str
    official: bool
    sha256: str


@dataclass(slots=True)
class Discovery:
    candidates: list[SourceCandidate]
    skipped: list[tuple[str, str]]


def extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def file_digest(path: str) -> str:
    """SHA-256 of a file's content, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _classify(path: str, pua: bool, explicit: bool) -> tuple[str | None, str]:
    ext = extension(path)
    if ext in SUPPORTED:
        role, needs_pua = SUPPORTED[ext]
        if needs_pua and not pua:
            return None, "PUA database: loaded only with --detect-pua"
        return role, ""
    if ext in NOT_YET_SUPPORTED:
        return None, f"{ext} databases are not supported yet"
    if ext in NEVER_A_DATABASE and not explicit:
        return None, "not a signature database"
    return None, "unknown database format"


def builtin_database_dir() -> str:
    """The default database shipped inside the package (EICAR and Bastion's test signatures)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin")


def default_database_paths() -> tuple[list[str], bool]:
    """``$BASTION_DB_DIR``; else the active version of `bastion db` (its store's ``active``), else
    /var/lib/bastion/db, if it holds anything; else the built-in database.

    Returns ``(paths, official)``: the built-in database is Bastion's own, so its names carry no
    ``.UNOFFICIAL`` suffix.
    """
    from bastion.paths import active_database

    explicit = os.environ.get(DEFAULT_DB_DIR_ENV)
    for installed in ([explicit] if explicit else [active_database(), DEFAULT_DB_DIR]):
        if os.path.isdir(installed) and any(not n.startswith(".") for n in os.listdir(installed)):
            return [installed], False
    return [builtin_database_dir()], True


Digester = Callable[[str], str]


def _rule_files(given: str) -> list[str]:
    """``--rules``: a YARA file, or every ``.yar``/``.yara`` file under a directory (recursively,
    sorted: public rule sets are trees)."""
    if os.path.isfile(given):
        return [given]
    if not os.path.isdir(given):
        raise SignatureError(given, 0, "no such file or directory")
    found = []
    for root, dirs, files in os.walk(given):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if extension(f) in (".yar", ".yara")]
    return found


def discover(paths: list[str], pua: bool = False, official: bool = False,
             digest: Digester | None = None, rules: list[str] | None = None) -> Discovery:
    """Resolve ``-d`` arguments into the ordered list of files to load.

    A path that does not exist, or a single file of an unknown format, is an error (as in clamscan).
    ``digest`` computes a file's content digest (default :func:`file_digest`; the database layer
    passes a memoized one).  ``rules`` are YARA files or rule trees added on top (``--rules``).
    """
    digest = digest or file_digest
    candidates: list[SourceCandidate] = []
    skipped: list[tuple[str, str]] = []
    for given in paths:
        if os.path.isdir(given):
            try:
                names = sorted(n for n in os.listdir(given) if not n.startswith("."))
            except OSError as exc:
                raise SignatureError(given, 0, f"cannot read database directory: {exc.strerror}") from None
            ordered = [n for n in names if extension(n) in (".ign", ".ign2")]
            ordered += [n for n in names if extension(n) not in (".ign", ".ign2")]
            for name in ordered:
                full = os.path.join(given, name)
                if not os.path.isfile(full):
                    continue
                role, why = _classify(full, pua, explicit=False)
                if role is None:
                    skipped.append((full, why))
                    continue
                candidates.append(SourceCandidate(full, role, official, _digest_or_error(full, digest)))
        elif os.path.isfile(given):
            role, why = _classify(given, pua, explicit=True)
            if role is None:
                if why.startswith("PUA"):
                    skipped.append((given, why))
                    continue
                raise SignatureError(given, 0, why)
            candidates.append(SourceCandidate(given, role, official, _digest_or_error(given, digest)))
        else:
            raise SignatureError(given, 0, "no such file or directory")
    # as in ClamAV, an ignore list applies to what loads after it: first in a directory, but a
    # separate -d only to the -d arguments that follow it
    for given in rules or []:
        for full in _rule_files(given):
            candidates.append(SourceCandidate(full, "yara", False, _digest_or_error(full, digest)))
    return Discovery(_newest_containers(candidates, skipped), skipped)


def _container_version(path: str) -> int:
    try:
        with open(path, "rb") as fh:
            fields = fh.read(512).decode("latin-1").split(":")
        return int(fields[2]) if fields[0] == "ClamAV-VDB" and len(fields) > 2 else -1
    except (OSError, ValueError):
        return -1


def _newest_containers(candidates: list[SourceCandidate], skipped: list[tuple[str, str]]) -> list[SourceCandidate]:
    """As in ClamAV, when one directory holds the same database as .cvd and .cld (or .cud), only the
    newest version (from the header) is loaded."""
    best: dict[tuple[str, str], tuple[int, SourceCandidate]] = {}
    for c in candidates:
        if c.role == "container":
            key = (os.path.dirname(c.path), os.path.splitext(os.path.basename(c.path))[0])
            version = _container_version(c.path)
            if key not in best or version > best[key][0]:
                best[key] = (version, c)
    keep = {id(c) for _, c in best.values()}
    out = []
    for c in candidates:
        if c.role == "container" and id(c) not in keep:
            skipped.append((c.path, "an older version of a container that is also present in a newer version"))
            continue
        out.append(c)
    return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _digest_or_error(path: str, digest: Digester) -> str:
    try:
        return digest(path)
    except OSError as exc:
        raise SignatureError(path, 0, f"cannot read: {exc.strerror}") from None


# reuse(path, sha256, role, size, data or None) for a layer (database/delta.py): True when that file
# (or container member) is compiled already in the database below, so it is not parsed again;
# ChangedLines: parse only those (the lines its version below did not have); False: parse it whole
Reuse = Callable[[str, str, str, int, bytes | None], bool | ChangedLines]


def _load_container(cand: SourceCandidate, sigset: SignatureSet, parsers: dict, pua: bool,
                    reuse: Reuse | None) -> None:
    """Verify a .cvd/.cld/.cud and load its members; a refused container is reported, not fatal."""
    from bastion.signatures.cvd import ContainerError, open_container

    try:
        container = open_container(cand.path)
    except (ContainerError, OSError) as exc:
        sigset.report.skipped_files.append((cand.path, f"container refused: {exc}"))
        return
    official = container.kind in ("cvd", "cld")
    h = container.header
    sigset.report.containers.append({
        "path": cand.path, "name": h.name, "kind": container.kind, "version": h.version, "signatures": h.signatures,
        "functionality_level": h.functionality_level, "builder": h.builder, "build_time": h.build_time,
        "unix_time": h.unix_time,
        "verification": container.verification})
    for name, data in sorted(container.members, key=lambda m: (extension(m[0]) not in (".ign", ".ign2"), m[0])):
        member_path = f"{cand.path}:{name}"
        if name == "COPYING" or extension(name) == ".info":
            continue
        role, why = _classify(name, pua, explicit=False)
        if role is None or role in ("container", "yara"):
            sigset.report.skipped_files.append((member_path, why or "not loaded from a container"))
            continue
        sha256 = hashlib.sha256(data).hexdigest()
        reused = reuse(member_path, sha256, role, len(data), data) if reuse is not None else False
        if reused is True:
            if role == "ignore":  # an ignore list applies to the new files too
                parsers[role](member_path, data, -1, official)
            continue
        text = reused if isinstance(reused, ChangedLines) else data
        index = sigset.add_source(member_path, sha256, official)
        parsers[role](member_path, text, index, official)
        sigset.line_records[index] = line_records(text)
        sigset.report.loaded_files.append(member_path)


def parse_sources(discovery: Discovery, yara_strict: bool = False, pua: bool = False, *,
                  sigset: SignatureSet | None = None, reuse: Reuse | None = None) -> SignatureSet:
    """Parse every candidate into one model.  Raises :class:`SignatureError` on the first bad line.

    For a layer (database/delta.py): ``sigset`` already lists the sources below it, so new source
    indexes follow theirs, and ``reuse`` says which files need no parsing (ignore lists are read
    again all the same: they apply to what is parsed)."""
    # the parsers are imported here: a start that finds its database in the cache never needs them
    from bastion.signatures.cdb import parse_cdb
    from bastion.signatures.dconf import parse_cfg, parse_info
    from bastion.signatures.ftm import parse_ftm
    from bastion.signatures.hashdb import parse_hash_db
    from bastion.signatures.ignore import parse_ignore
    from bastion.signatures.ldb import parse_ldb
    from bastion.signatures.ndb import parse_ndb
    from bastion.signatures.phishing import parse_phishing
    from bastion.signatures.yara import parse_yara

    sigset = sigset if sigset is not None else SignatureSet()
    sigset.report.skipped_files.extend(discovery.skipped)
    parsers = {"hash": lambda p, d, i, o: parse_hash_db(p, d, sigset, i, o, HashPurpose.DETECT),
               "allow": lambda p, d, i, o: parse_hash_db(p, d, sigset, i, o, HashPurpose.ALLOW),
               "section": lambda p, d, i, o: parse_hash_db(p, d, sigset, i, o, HashPurpose.SECTION),
               "imports": lambda p, d, i, o: parse_hash_db(p, d, sigset, i, o, HashPurpose.IMPORTS),
               "ndb": lambda p, d, i, o: parse_ndb(p, d, sigset, i, o),
               "ldb": lambda p, d, i, o: parse_ldb(p, d, sigset, i, o),
               "cdb": lambda p, d, i, o: parse_cdb(p, d, sigset, i, o),
               "pdb": lambda p, d, i, o: parse_phishing(p, d, sigset, "pdb"),
               "wdb": lambda p, d, i, o: parse_phishing(p, d, sigset, "wdb"),
               "gdb": lambda p, d, i, o: parse_phishing(p, d, sigset, "gdb"),
               "cfg": lambda p, d, i, o: parse_cfg(p, d, sigset),
               "info": lambda p, d, i, o: parse_info(p, d, sigset),
               "yara": lambda p, d, i, o: parse_yara(p, d, sigset, i, o, strict=yara_strict),
               "ftm": lambda p, d, i, o: parse_ftm(p, d, sigset, i),
               "ignore": lambda p, d, i, o: parse_ignore(p, d, sigset)}
    for cand in discovery.candidates:
        reused = reuse(cand.path, cand.sha256, cand.role, _size(cand.path), None) if reuse is not None else False
        if cand.role == "container":
            if reused is False:
                _load_container(cand, sigset, parsers, pua, reuse)
            continue
        if reused is True and cand.role != "ignore":
            continue
        if isinstance(reused, ChangedLines):  # only the lines that changed (database/delta.py)
            data: bytes | ChangedLines = reused
        else:
            try:
                with open(cand.path, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                raise SignatureError(cand.path, 0, f"cannot read: {exc.strerror}") from None
        if reused is True:
            parsers["ignore"](cand.path, data, -1, cand.official)
            continue
        index = sigset.add_source(cand.path, cand.sha256, cand.official)
        parsers[cand.role](cand.path, data, index, cand.official)
        sigset.line_records[index] = line_records(data)
        sigset.report.loaded_files.append(cand.path)
    return sigset
