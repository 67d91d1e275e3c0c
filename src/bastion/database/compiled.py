"""The compiled database: what the engine scans with.  Built once, cached on disk, loaded by mmap.

Layout of one cached database (a directory named after its cache key)::

    manifest.json                 format version, key, sources with digests, counts, load report
    <kind>-<purpose>.*            hash tables (database/hashtable.py), memory-mapped
    raw.hs / normalized.hs        serialized Hyperscan databases (database/bodymatcher.py)
    bodies.index / .records       per body signature: name, target, offset, exact regex, source
    logical.*                     logical signatures (database/logicmatcher.py)
    filetypes.marshal             .ftm file type magic (plain tuples)
    containers.marshal            .cdb container metadata rules (plain tuples)
    yara.rules / yara.index.json  YARA rules compiled by yara-x (database/yararules.py)

A layered database (a daemon's reload compiled only what changed: database/delta.py) holds such
directories as ``layer0/``, ``layer1/``... under one manifest (database/layered.py).

The cache key is a digest of Bastion's version, the functionality level, the options that change
what loads (PUA) and every input file's path, role and SHA-256, so editing a signature file, adding
one or upgrading Bastion compiles a new database; anything else reuses the cached one.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

import hyperscan

from bastion import FUNCTIONALITY_LEVEL, __version__
from bastion.database.bodymatcher import BodyMatcher
from bastion.database.hashtable import HashTable
from bastion.database.linetable import sorted_run, write_tables
from bastion.database.logicmatcher import LogicMatcher
from bastion.database.yararules import YaraRules
from bastion.signatures.errors import SignatureError
from bastion.signatures.loader import Discovery, default_database_paths, discover, file_digest, parse_sources
from bastion.signatures.model import ContainerRule, FileTypeMagic, HashKind, HashPurpose, LoadReport, SignatureSet

FORMAT_VERSION = 9
CACHE_DIR_ENV = "BASTION_CACHE_DIR"
# below this many signatures a compile counts alerts per line in dicts (a layer's), else in arrays
SPARSE_ALERTS = 50_000
# Compiled databases kept in the cache besides the one in use (oldest are removed).
CACHE_KEEP = 4


@dataclass(frozen=True, slots=True)
class SourceInfo:
    path: str
    sha256: str
    official: bool


@dataclass(slots=True)
class Database:
    """A loaded, immutable signature database shared by every worker of a process.

    ``version`` is the cache key: the digest of everything that went into it.
    """

    version: str
    sources: list[SourceInfo]
    hash_tables: dict[tuple[HashKind, HashPurpose], HashTable]
    bodies: BodyMatcher
    logical: LogicMatcher
    report: LoadReport
    # body signatures that alert on their own (the rest of ``bodies`` are .ldb content subsignatures)
    body_signatures: int = 0
    filetypes: list[FileTypeMagic] = field(default_factory=list)
    container_rules: list[ContainerRule] = field(default_factory=list)
    yara: YaraRules | None = None
    path: str | None = None
    load_seconds: float = 0.0
    from_cache: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    # compiled with --detect-pua (a layer is only ever compiled on top of a database with the same)
    pua: bool = False
    # signatures that can alert, per source index: what a layer on top subtracts for a dead source
    source_counts: dict[int, int] = field(default_factory=dict)
    # a layered database (database/layered.py): source indexes no longer current (a file removed, or
    # the older version of a changed file, whose lines still in use are remapped), and its count
    dead_sources: frozenset[int] = frozenset()
    counted: int | None = None
    # the files it was compiled from: [path, role, sha256] (a layer on top reuses unchanged containers)
    inputs: list[list[str]] = field(default_factory=list)
    # only while compiling: each source's line digests and per-line alert counts (lines.table)
    line_records: dict[int, bytearray] = field(default_factory=dict, repr=False)
    line_alerts: dict[int, array | dict[int, int]] = field(default_factory=dict, repr=False)

    @property
    def live_sources(self) -> list[SourceInfo]:
        """The sources in use (``sources`` is indexed by source index, tombstoned ones included)."""
        dead = self.dead_sources
        return [s for i, s in enumerate(self.sources) if i not in dead] if dead else self.sources

    @property
    def signature_count(self) -> int:
        """Signatures that can alert (``Known viruses`` in clamscan's summary)."""
        if self.counted is not None:
            return self.counted
        hashes = sum(len(t) for (_, p), t in self.hash_tables.items() if p is not HashPurpose.ALLOW)
        return (hashes + self.body_signatures + len(self.logical) + len(self.container_rules)
                + (self.yara.count if self.yara else 0))

    def table(self, kind: HashKind, purpose: HashPurpose) -> HashTable | None:
        return self.hash_tables.get((kind, purpose))

    @classmethod
    def compile(cls, sigset: SignatureSet, version: str, body_offset: int = 0, lsig_offset: int = 0,
                pua: bool = False) -> Database:
        """Compile a parsed signature set.  Its hash columns are consumed (emptied once their tables
        are built), so that they are not held while Hyperscan compiles: the peak of a compile is
        what a daemon's reload costs.  The offsets are for a layer compiled on top of another
        database (database/delta.py): its body and logical signature ids follow those below it."""
        alerts = _line_alerts(sigset)
        counts = {source: sum(per_line.values() if isinstance(per_line, dict) else per_line)
                  for source, per_line in alerts.items()}
        tables = {
            key: HashTable.build(cols, key[0].digest_size) for key, cols in sigset.hashes.items() if len(cols)
        }
        sigset.hashes.clear()
        return cls(
            pua=pua,
            source_counts=counts,
            version=version,
            sources=[SourceInfo(s.path, s.sha256, s.official) for s in sigset.sources],
            hash_tables=tables,
            bodies=BodyMatcher.build(sigset.bodies, body_offset, lsig_offset),
            logical=LogicMatcher.build(sigset.logical, sigset.macros, lsig_offset),
            report=sigset.report,
            body_signatures=sum(1 for b in sigset.bodies if b.lsig < 0),
            filetypes=list(sigset.filetypes),
            container_rules=list(sigset.container_rules),
            yara=YaraRules.build(sigset.yara),
            line_records=sigset.line_records,
            line_alerts=alerts,
        )

    def save(self, directory: str, line_runs: dict[int, Iterable[bytes]] | None = None) -> None:
        """Write a compiled database into ``directory``.  ``line_runs``: ready line-table runs for
        some sources (a layer's changed files, database/delta.py); the others are built from
        ``line_records``."""
        runs = line_runs or {}
        write_tables(directory, ((source, runs[source] if source in runs else
                                  sorted_run(records, self.line_alerts.get(source)))
                                 for source, records in sorted(self.line_records.items())))
        for (kind, purpose), table in self.hash_tables.items():
            table.save(directory, f"{kind.value}-{purpose.value}")
        self.bodies.save(directory)
        self.logical.save(directory)
        with open(os.path.join(directory, "filetypes.marshal"), "wb") as fh:
            fh.write(marshal.dumps([(m.kind, m.offset, m.magic, m.text, m.name, m.rtype, m.ftype, m.source_index,
                                     m.line) for m in self.filetypes]))
        if self.yara is not None:
            self.yara.save(directory)
        with open(os.path.join(directory, "containers.marshal"), "wb") as fh:
            fh.write(marshal.dumps([(r.name, r.container_type, r.container_size, r.name_regex, r.size_in_container,
                                     r.real_size, r.encrypted, r.position, r.source_index, r.line)
                                    for r in self.container_rules]))
        manifest = {
            "format": FORMAT_VERSION,
            "bastion": __version__,
            "toolchain": toolchain(),
            "version": self.version,
            "pua": self.pua,
            "inputs": self.inputs,
            "signature_count": self.signature_count,
            "source_counts": sorted(self.source_counts.items()),
            "sources": [[s.path, s.sha256, s.official] for s in self.sources],
            "hash_tables": [[k.value, p.value, len(t)] for (k, p), t in self.hash_tables.items()],
            "body_signatures": self.body_signatures,
            "logical_signatures": len(self.logical),
            "body_modes": self.bodies.mode_counts(),
            "report": report_to_json(self.report),
        }
        with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)

    @classmethod
    def load(cls, directory: str) -> Database:
        manifest = read_manifest(directory)
        if "layers" in manifest:
            from bastion.database.layered import load_layered

            return load_layered(directory, manifest)
        tables = {
            (HashKind(k), HashPurpose(p)): HashTable.load(directory, f"{k}-{p}", HashKind(k).digest_size)
            for k, p, _ in manifest["hash_tables"]
        }
        report = report_from_json(manifest["report"])
        with open(os.path.join(directory, "filetypes.marshal"), "rb") as fh:
            filetypes = [FileTypeMagic(*row) for row in marshal.loads(fh.read())]
        with open(os.path.join(directory, "containers.marshal"), "rb") as fh:
            container_rules = [ContainerRule(*row) for row in marshal.loads(fh.read())]
        return cls(
            version=manifest["version"],
            sources=[SourceInfo(p, d, o) for p, d, o in manifest["sources"]],
            hash_tables=tables,
            bodies=BodyMatcher.load(directory, manifest["body_modes"]),
            logical=LogicMatcher.load(directory),
            report=report,
            body_signatures=manifest["body_signatures"],
            filetypes=filetypes,
            container_rules=container_rules,
            yara=YaraRules.load(directory),
            path=directory,
            from_cache=True,
            pua=bool(manifest.get("pua")),
            source_counts={int(i): int(n) for i, n in manifest.get("source_counts", [])},
        )


def read_manifest(directory: str) -> dict:
    """A compiled database's manifest.json, checked for this format version."""
    with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError("compiled database has another format version")
    return manifest


def report_to_json(report: LoadReport) -> dict:
    return {
        "loaded_files": report.loaded_files,
        "skipped_files": report.skipped_files,
        "skipped_by_flevel": report.skipped_by_flevel,
        "skipped_by_target": report.skipped_by_target,
        "ignored_by_name": report.ignored_by_name,
        "macro_members": report.macro_members,
        "skipped_by_condition": report.skipped_by_condition,
        "not_enforced": report.not_enforced,
        "yara_errors": report.yara_errors,
        "containers": report.containers,
    }


def report_from_json(rep: dict) -> LoadReport:
    return LoadReport(
        loaded_files=rep["loaded_files"],
        skipped_files=[tuple(x) for x in rep["skipped_files"]],
        skipped_by_flevel=rep["skipped_by_flevel"],
        skipped_by_target=rep["skipped_by_target"],
        ignored_by_name=rep["ignored_by_name"],
        macro_members=rep["macro_members"],
        skipped_by_condition=rep["skipped_by_condition"],
        not_enforced=rep["not_enforced"],
        yara_errors=[tuple(e) for e in rep["yara_errors"]],
        containers=rep["containers"],
    )


def _line_alerts(sigset: SignatureSet) -> dict[int, array | dict[int, int]]:
    """Per source index, per line: the signatures that can alert that line gave (YARA rules are
    counted as a whole, not here).  Their sums are ``source_counts``; with each line's digest they
    make the source's line table (database/linetable.py).  An array per source, indexed by line; a
    dict for a layer's few new lines, which can sit anywhere in a 1M-line file (4 MiB as an array)."""
    alerts: dict[int, array | dict[int, int]] = {}
    sparse = sum(len(cols) for cols in sigset.hashes.values()) + len(sigset.bodies) < SPARSE_ALERTS

    def bump(pairs: Iterable[tuple[int, int]]) -> None:
        for source, line in pairs:
            per_line = alerts.get(source)
            if per_line is None:
                per_line = alerts[source] = {} if sparse else array("I")
            if isinstance(per_line, dict):
                per_line[line] = per_line.get(line, 0) + 1
                continue
            if line >= len(per_line):
                per_line.frombytes(bytes(4 * (line + 1 - len(per_line) + 1024)))
            per_line[line] += 1

    for (_, purpose), cols in sigset.hashes.items():
        if purpose is not HashPurpose.ALLOW:
            bump(zip(cols.source_index, cols.lines, strict=True))
    bump((b.source_index, b.line) for b in sigset.bodies if b.lsig < 0)
    bump((sig.source_index, sig.line) for sig in sigset.logical)
    bump((r.source_index, r.line) for r in sigset.container_rules)
    return alerts


def _remove_tree(path: str) -> None:
    import shutil  # only on the rare paths that need it: keeps it off the warm start

    shutil.rmtree(path, ignore_errors=True)


def cache_dir() -> str:
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bastion", "db")


def toolchain() -> str:
    """The libraries whose output is stored in a compiled database, with their versions: part of what
    "the same inputs" means for a byte-identical compiled database.

    The Hyperscan inside python-hyperscan 0.9.1's wheel (Vectorscan 5.4.12) is built for a generic
    x86-64 target: it compiles the same bytes whatever CPU it runs on (no AVX2/AVX-512 variants; the
    database info says ``Features:`` empty).  tests/test_dbstore.py checks the compiled digest under
    qemu's Nehalem and Haswell CPU models against the host's (AMD EPYC, AVX-512 here).  That is why
    pyproject.toml pins hyperscan and yara-x exactly: another release may compile other bytes."""
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "absent"

    return f"python-hyperscan {hyperscan.__version__}, yara-x {of('yara-x')}"


def cache_key(discovery: Discovery, pua: bool) -> str:
    h = hashlib.sha256()
    # hyperscan's version too: a database serialized by another Hyperscan release does not load
    h.update(f"bastion {__version__} format {FORMAT_VERSION} fl {FUNCTIONALITY_LEVEL} pua {pua} "
             f"hyperscan {hyperscan.__version__}\n".encode())
    # real paths: a database reached through a link (the store's "active") is the one staged and
    # compiled under its own name, so the daemon's reload of an activated version only loads it
    for c in discovery.candidates:
        h.update(f"{os.path.realpath(c.path)}\0{c.role}\0{c.official}\0{c.sha256}\n".encode())
    for path, why in discovery.skipped:
        h.update(f"skipped {os.path.abspath(path)}\0{why}\n".encode())
    return h.hexdigest()


def _prune_cache(root: str, keep: str) -> None:
    try:
        entries = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".") and e.name != keep]
    except OSError:
        return
    entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    for old in entries[CACHE_KEEP:]:
        _remove_tree(old.path)


class DigestMemo:
    """Content digests of signature files, remembered by (path, size, mtime_ns, inode, ctime_ns).

    Like git's index: a file whose stat is unchanged is not read again on the next start, so a warm
    start costs no hashing of a 70 MB database.  A changed file is always hashed.
    """

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, "digests.json")
        self.changed = False
        try:
            with open(self.path, encoding="utf-8") as fh:
                self.known: dict[str, list[object]] = json.load(fh)
        except (OSError, ValueError):
            self.known = {}

    def __call__(self, path: str) -> str:
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        full = os.path.abspath(path)
        entry = self.known.get(full)
        if isinstance(entry, list) and entry[:4] == stamp:
            return str(entry[4])
        digest = file_digest(path)
        self.known[full] = [*stamp, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.known, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache only costs speed


def compiled_digest(directory: str) -> str:
    """SHA-256 over the compiled database's files (names and contents), its manifest left out: the
    manifest names the input paths, everything else depends only on the inputs, Bastion's version
    and :func:`toolchain` (the same inputs give the same digest in any folder, on any x86-64 CPU)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name == "manifest.json":
            continue
        with open(os.path.join(directory, name), "rb") as fh:
            h.update(f"{name}\0{hashlib.sha256(fh.read()).hexdigest()}\n".encode())
    return h.hexdigest()


def _locate(paths: list[str] | None, pua: bool, use_cache: bool, rules: list[str]) -> tuple[Discovery, str]:
    """The sources the paths name (or the default database's) and where their compiled database
    lives in the cache (whether or not it is there)."""
    official = False
    if not paths:
        paths, official = default_database_paths()
    root = cache_dir()
    memo = DigestMemo(root) if use_cache else None
    discovery = discover(list(paths), pua=pua, official=official, digest=memo, rules=rules)
    if memo is not None:
        memo.save()
    return discovery, os.path.join(root, cache_key(discovery, pua))


def is_cached(paths: list[str] | None, *, pua: bool = False) -> bool:
    """Whether the database for these paths is compiled already (so opening it only loads it)."""
    try:
        _discovery, final = _locate(paths, pua, True, [])
    except SignatureError:
        return False
    return os.path.isfile(os.path.join(final, "manifest.json"))


def open_database(paths: list[str] | None = None, *, pua: bool = False, use_cache: bool = True,
                  rules: list[str] | None = None, yara_strict: bool = False,
                  on_top_of: str | None = None) -> Database:
    """Load the database for ``-d`` paths (or the default one), compiling it only if not cached.

    ``rules`` adds YARA files or rule trees (``bastion scan --rules``).  ``on_top_of``: a compiled
    database directory (the one a daemon serves): only the sources changed since it was compiled
    are compiled, as a layer on top of it (database/delta.py), when that means the same; how it
    was done is in ``extra["compiled"]``.  Raises
    :class:`bastion.signatures.errors.SignatureError` for a bad source: no partial database is ever
    returned or cached (a YARA file yara-x rejects is left out and reported, unless ``yara_strict``).
    """
    db = _open_database(paths, pua, use_cache, rules or [], yara_strict, on_top_of)
    if yara_strict and db.report.yara_errors:
        path, line, reason = db.report.yara_errors[0]
        raise SignatureError(path, line, f"YARA: {reason}")
    return db


def compile_into_cache(paths: list[str] | None, *, pua: bool = False, on_top_of: str | None = None) -> str:
    """Make sure the cache holds the database for ``paths``, loading nothing that is not needed (a
    daemon's compile child: a layer is published, not loaded).  Returns how it was compiled, ''
    when the cache held it already."""
    discovery, final = _locate(paths, pua, True, [])
    if os.path.isfile(os.path.join(final, "manifest.json")):
        return ""
    how, _db = _compile(discovery, final, pua, True, False, on_top_of, load=False)
    return how


def _open_database(paths: list[str] | None, pua: bool, use_cache: bool, rules: list[str],
                   yara_strict: bool, on_top_of: str | None = None) -> Database:
    started = time.perf_counter()
    discovery, final = _locate(paths, pua, use_cache, rules)
    if use_cache and os.path.isfile(os.path.join(final, "manifest.json")):
        try:
            db = Database.load(final)
            db.load_seconds = time.perf_counter() - started
            db.extra["compiled"] = "already compiled"
            return db
        except (OSError, ValueError, KeyError, EOFError, TypeError):
            _remove_tree(final)  # a damaged cache entry is rebuilt
    how, loaded = _compile(discovery, final, pua, use_cache, yara_strict, on_top_of, load=True)
    assert loaded is not None
    loaded.load_seconds = time.perf_counter() - started
    loaded.extra["compiled"] = how
    return loaded


def _compile(discovery: Discovery, final: str, pua: bool, use_cache: bool, yara_strict: bool,
             on_top_of: str | None, load: bool) -> tuple[str, Database | None]:
    """Compile into the cache (a layer on top of ``on_top_of`` when that means the same, else whole):
    (how, the database, loaded only if ``load`` or compiled whole)."""
    root, key = os.path.split(final)
    whole_because = ""
    if on_top_of and use_cache:
        from bastion.database.delta import WholeCompile, compile_delta

        try:
            how = compile_delta(discovery, final, on_top_of, pua)
        except (WholeCompile, OSError) as why:  # OSError: a cache it cannot write
            whole_because = str(why)
        else:
            _prune_cache(root, key)
            return how, Database.load(final) if load else None
    sigset = parse_sources(discovery, yara_strict=yara_strict, pua=pua)
    db = Database.compile(sigset, key, pua=pua)
    db.inputs = [[c.path, c.role, c.sha256] for c in discovery.candidates]
    if use_cache:
        from bastion.database.atomic import publish_directory

        try:
            with publish_directory(final) as tmp:
                db.save(tmp)
            db.path = final
            _prune_cache(root, key)
        except OSError:
            pass  # a read-only cache only costs speed
    return (f"whole ({whole_because})" if whole_because else "whole"), db
