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
    ".ign": ("ignore", False), ".ign2": ("ignore", False),
}
# Formats ClamAV reads that Bastion does not read yet: reported by name at load.
NOT_YET_SUPPORTED = frozenset({
    ".idb", ".cbc", ".crb",
    ".pwdb", ".cvd", ".cld", ".cud", ".cat",
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
    """The installed database directory if it holds anything, else the built-in one.

    Returns ``(paths, official)``: the built-in database is Bastion's own, so its names carry no
    ``.UNOFFICIAL`` suffix.
    """
    installed = os.environ.get(DEFAULT_DB_DIR_ENV, DEFAULT_DB_DIR)
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
    return Discovery(candidates, skipped)


def _digest_or_error(path: str, digest: Digester) -> str:
    try:
        return digest(path)
    except OSError as exc:
        raise SignatureError(path, 0, f"cannot read: {exc.strerror}") from None


def parse_sources(discovery: Discovery, yara_strict: bool = False) -> SignatureSet:
    """Parse every candidate into one model.  Raises :class:`SignatureError` on the first bad line."""
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

    sigset = SignatureSet()
    sigset.report.skipped_files.extend(discovery.skipped)
    for cand in discovery.candidates:
        try:
            with open(cand.path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise SignatureError(cand.path, 0, f"cannot read: {exc.strerror}") from None
        index = sigset.add_source(cand.path, cand.sha256, cand.official)
        if cand.role == "hash":
            parse_hash_db(cand.path, data, sigset, index, cand.official, HashPurpose.DETECT)
        elif cand.role == "section":
            parse_hash_db(cand.path, data, sigset, index, cand.official, HashPurpose.SECTION)
        elif cand.role == "imports":
            parse_hash_db(cand.path, data, sigset, index, cand.official, HashPurpose.IMPORTS)
        elif cand.role == "allow":
            parse_hash_db(cand.path, data, sigset, index, cand.official, HashPurpose.ALLOW)
        elif cand.role == "ndb":
            parse_ndb(cand.path, data, sigset, index, cand.official)
        elif cand.role == "ldb":
            parse_ldb(cand.path, data, sigset, index, cand.official)
        elif cand.role == "cdb":
            parse_cdb(cand.path, data, sigset, index, cand.official)
        elif cand.role in ("pdb", "wdb", "gdb"):
            parse_phishing(cand.path, data, sigset, cand.role)
        elif cand.role == "cfg":
            parse_cfg(cand.path, data, sigset)
        elif cand.role == "info":
            parse_info(cand.path, data, sigset)
        elif cand.role == "yara":
            parse_yara(cand.path, data, sigset, index, cand.official, strict=yara_strict)
        elif cand.role == "ftm":
            parse_ftm(cand.path, data, sigset, index)
        elif cand.role == "ignore":
            parse_ignore(cand.path, data, sigset)
        sigset.report.loaded_files.append(cand.path)
    return sigset
