"""Compile only what changed: a new layer on top of an already compiled database.

A daemon's reload used to compile the whole database again, and a whole compile peaks at several
times what serving the database costs (bench/README.md: tree PSS 6.2x the steady state with 1.25M
signatures, the peak being Hyperscan's compile of the body signatures).  Here the sources are
compared with those of the database being served (``base``), by path and content digest, file by
file and, inside a ``.cvd``/``.cld``, member by member:

* a source present in both, with the same digest, is not read again: its signatures stay compiled
  in the base;
* a source that disappeared is tombstoned (its signatures stay in the base, filtered out when
  scanning: database/layered.py);
* a changed signature file (hash, body, logical, container-metadata lists) is compared line by line
  with the line table of its version below (database/linetable.py): only its new lines are parsed,
  its lines gone are tombstoned and the kept ones remapped to their new line numbers (a ``LineMap``
  per older version, composed over layers).  A file whose lines were shuffled rather than edited, or
  a changed ``.pdb``/``.wdb``/``.gdb``/``.cfg``, is compiled whole into the layer instead;
* the added and changed sources are compiled on their own into a new layer, whose ids continue the
  base's.

The result is published under the cache key a whole compile would have, so it is what any process
opening the same sources loads.  A whole compile is done instead (:class:`WholeCompile` says why)
when a layer could not mean the same as a whole compile, or would not pay:

* an ignore list (``.ign``/``.ign2``), file type magic (``.ftm``) or YARA file was added, changed or
  removed: they act on other sources, or are compiled as one set;
* the base or the new sources use ``.ndb`` macro groups (shared between files);
* the changed sources hold more than half of the signature bytes, or the base already has
  MAX_LAYERS layers (each one more is one more Hyperscan stream per scanned object);
* the base was compiled by another format, with another ``--detect-pua``, or is gone.

Counters in the load report (signatures skipped by functionality level, by target, ...) keep the
tombstoned sources' share: they say what was read, not what is live.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bastion import __version__
from bastion.database.atomic import publish_directory
from bastion.database.compiled import (
    FORMAT_VERSION,
    Database,
    read_manifest,
    report_from_json,
    report_to_json,
    toolchain,
)
from bastion.database.linetable import RECORD, LineMap, LineRun, read_index, sorted_run
from bastion.signatures.loader import Discovery, extension, parse_sources
from bastion.signatures.model import LoadReport, SignatureSet, SourceFile
from bastion.signatures.textdb import ChangedLines, chunks_of, line_digest, physical_lines

MAX_LAYERS = 8
# a changed file is compared line by line unless its kept lines moved in more runs than this (and
# than one for every 8 lines): then it is compiled whole, into the layer
MAX_RUNS = 50_000
# a changed file is compared a chunk at a time: with 1 MiB chunks (the parsers' size), comparing the
# benchmark's 1M-line .hdb left the compile child 5 MiB larger than with these (freed chunks stay in
# the heap), measured in bench/run_daemon_bench.py --reload-change edit
_COMPARE_CHUNK = 1 << 18
_MERGE_CHUNK = 4096  # line records rewritten at a time
# changed sources above this share of all signature bytes are compiled whole (with the rest)
MAX_CHANGED_SHARE = 0.5
# roles whose sources act on others (ignore lists, file type magic) or are compiled as one set (YARA)
_GLOBAL_ROLES = frozenset({"ignore", "ftm", "yara"})
# roles whose lines are signatures standing on their own, so a changed file can be compiled line by line
# (a changed .pdb/.wdb/.gdb/.cfg/.info is compiled whole, into the layer)
_LINE_ROLES = frozenset({"hash", "allow", "section", "imports", "ndb", "ldb", "cdb"})
_GLOBAL_EXTENSIONS = frozenset({".ign", ".ign2", ".ftm", ".yar", ".yara"})


class WholeCompile(Exception):
    """Why a layer is not built: the whole database is compiled instead."""


@dataclass(slots=True)
class _LineDiff:
    """A changed source compared line by line with the table of its version compiled below."""

    owner: int             # the source index that held the path's previous version
    run: LineRun           # that version's line table
    matched: bytearray     # per record of ``run``: 1 when its line is still there
    moved: LineMap         # where the lines of the previous version kept are now
    lost_alerts: int = 0   # alerting signatures on the lines gone


class _Plan:
    """Answers the loader's ``reuse`` question for each source, and keeps what it learns.

    An *owner* is the source index holding a path's current version (with its complete line table);
    older indexes of a changed path stay in their layers, remapped to the owner line by line."""

    def __init__(self, base: dict, budget: int, tables: dict[int, tuple[str, int, int, int]]) -> None:
        self.sources: list[list] = base["sources"]
        gone = {int(i) for i in base.get("dead_sources", [])}
        remapped = {int(x) for x in base.get("remap", {})}
        self.owners = {(p, d, o): i for i, (p, d, o) in enumerate(self.sources)
                       if i not in gone and i not in remapped}
        self.by_path = {p: i for (p, _d, _o), i in self.owners.items()}
        self.inputs = {(p, r, d) for p, r, d in base.get("inputs", [])}
        self.tables = tables
        self.kept: set[int] = set()
        self.diffs: dict[str, _LineDiff] = {}
        self.whole_containers: list[str] = []
        self.changed_bytes = 0
        self.budget = budget

    def __call__(self, path: str, sha256: str, role: str, size: int, data: bytes | None) -> bool | ChangedLines:
        if role == "container":
            if (path, role, sha256) not in self.inputs:
                return False  # opened: its members are compared one by one
            prefix = f"{path}:"
            self.kept |= {i for (p, _d, _o), i in self.owners.items() if p.startswith(prefix)}
            self.whole_containers.append(path)
            return True
        for official in (False, True):
            index = self.owners.get((path, sha256, official))
            if index is not None:
                self.kept.add(index)
                return True
        if role in _GLOBAL_ROLES:
            raise WholeCompile(f"{path}: a {extension(path)} source was added or changed")
        owner = self.by_path.get(path)
        if owner is None or owner not in self.tables or role not in _LINE_ROLES:
            self._spend(size)
            return False
        where, first, count, _alerts = self.tables[owner]
        run = LineRun(where, first, count)
        chunks = chunks_of(data, _COMPARE_CHUNK) if data is not None else _file_chunks(path)
        diff = _LineDiff(owner, run, bytearray(count), LineMap())
        fresh = _compare(diff, chunks)
        if fresh is None:
            diff.run.close()
            self._spend(size)
            return False
        self.diffs[path] = diff
        self._spend(len(fresh))
        return fresh

    def _spend(self, size: int) -> None:
        self.changed_bytes += size
        if self.changed_bytes > self.budget:
            raise WholeCompile("the changed sources hold more than half of the signatures")

    def dead(self) -> set[int]:
        """Owners whose path is gone (not kept, not compared line by line)."""
        diffed = {d.owner for d in self.diffs.values()}
        gone = set(self.owners.values()) - self.kept - diffed
        for i in gone:
            path = self.sources[i][0]
            if extension(path) in _GLOBAL_EXTENSIONS:
                raise WholeCompile(f"{path}: a {extension(path)} source was removed or changed")
        return gone


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(_COMPARE_CHUNK), b"")


def _compare(diff: _LineDiff, chunks: Iterable[bytes]) -> ChangedLines | None:
    """The lines of a source's new version that its previous version did not have; ``diff`` learns
    where each line kept went.  None when the file is empty (it is parsed whole, to be refused as
    such) or its lines were shuffled rather than edited (the map of where they went would cost more
    than parsing the file whole)."""
    run, matched, moved = diff.run, diff.matched, diff.moved
    bucket_of, fresh = run.bucket, ChangedLines()
    number = 0
    for number, line in enumerate(physical_lines(chunks), start=1):
        if line[:1] == b"#":
            continue
        digest = line_digest(line)
        start, bucket = bucket_of(digest) if line else (0, b"")
        at = bucket.find(digest)  # bytes.find, not a loop over the bucket's records: 2x faster
        while at >= 0:
            if at % RECORD == 0 and not matched[start + at // RECORD]:
                matched[start + at // RECORD] = 1
                moved.add(int.from_bytes(bucket[at + 8:at + 12], "big"), number)
                break
            at = bucket.find(digest, at + 1)
        else:
            fresh.lines.append((number, line))
    if number == 0 or len(moved) > max(MAX_RUNS, run.count // 8):
        return None
    moved.finish()
    pos = matched.find(0)
    while pos >= 0:  # the lines gone (few)
        diff.lost_alerts += int.from_bytes(run.read(pos, pos + 1)[12:16], "big")
        pos = matched.find(0, pos + 1)
    return fresh


def _merged_run(diff: _LineDiff, fresh: bytearray, alerts: array | dict[int, int] | None) -> Iterator[bytes]:
    """The complete line table of a changed source, a chunk of records at a time: the lines kept (on
    their new numbers) and the new ones, merged in digest order."""
    new = list(sorted_run(fresh, alerts))  # the new lines: few
    run, matched, where = diff.run, diff.matched, diff.moved.__getitem__
    k = 0
    for first in range(0, run.count, _MERGE_CHUNK):
        chunk = run.read(first, min(run.count, first + _MERGE_CHUNK))
        out = bytearray()
        for i in range(0, len(chunk), RECORD):
            if not matched[first + i // RECORD]:
                continue
            rec = chunk[i:i + 8] + where(int.from_bytes(chunk[i + 8:i + 12], "big")).to_bytes(4, "big") + \
                chunk[i + 12:i + 16]
            while k < len(new) and new[k] < rec:
                out += new[k]
                k += 1
            out += rec
        yield bytes(out)
    yield b"".join(new[k:])


def _line_tables(base_dir: str, base: dict, layers: list[str]) -> dict[int, tuple[str, int, int, int]]:
    """Where each source's line table is: source index -> (layer directory, first, count, alerts)."""
    found: dict[int, tuple[str, int, int, int]] = {}
    for layer in layers:
        for source, (first, count, alerts) in read_index(layer).items():
            found[source] = (layer, first, count, alerts)
    return found


def compile_delta(discovery: Discovery, final: str, base_dir: str, pua: bool) -> str:
    """Build the layered database for ``discovery`` at ``final`` on top of ``base_dir``; returns what
    it did, in words (the database is not loaded: a daemon compiles in a child that only publishes).
    Raises :class:`WholeCompile` when a whole compile is needed instead; a bad source raises
    :class:`~bastion.signatures.errors.SignatureError` as a whole compile would."""
    try:
        base = read_manifest(base_dir)
    except (OSError, ValueError) as exc:
        raise WholeCompile(f"the database below cannot be read: {exc}") from None
    if bool(base.get("pua")) != pua:
        raise WholeCompile("the database below was compiled with another --detect-pua")
    if base["report"].get("macro_members"):
        raise WholeCompile("the database below uses .ndb macro groups")
    layers = [os.path.join(base_dir, name) for name in base.get("layers", [])] or [base_dir]
    if len(layers) >= MAX_LAYERS:
        raise WholeCompile(f"the database below has {len(layers)} layers already")
    total = sum(_size(c.path) for c in discovery.candidates)
    plan = _Plan(base, int(total * MAX_CHANGED_SHARE), _line_tables(base_dir, base, layers))

    sigset = SignatureSet(sources=[SourceFile(p, d, o) for p, d, o in base["sources"]])
    first_source = len(sigset.sources)
    parse_sources(discovery, pua=pua, sigset=sigset, reuse=plan)
    newly_dead = plan.dead()
    if sigset.macros or sigset.report.macro_members:
        raise WholeCompile("the changed sources define .ndb macro groups")
    if len(sigset.sources) > 0xFFFF:
        raise WholeCompile("more than 65535 sources over all layers")

    body_start, logic_start = _ends(base_dir, base, layers)
    root, key = os.path.split(final)
    layer = Database.compile(sigset, key, body_offset=body_start, lsig_offset=logic_start, pua=pua)
    if layer.yara is not None:
        raise WholeCompile("YARA rules are compiled as one set")

    # what each index of the layers below now is: gone, remapped line by line to its path's new
    # owner, or live as it is
    dead = newly_dead | {int(i) for i in base.get("dead_sources", [])}
    remap = {int(x): int(o) for x, o in base.get("remap", {}).items()}
    for x in [x for x, o in remap.items() if o in newly_dead]:
        del remap[x]
        dead.add(x)
    counts = {int(i): int(n) for i, n in base.get("source_counts", [])}
    yara_count = int(base["signature_count"]) - sum(counts.values())
    for i in newly_dead:
        counts.pop(i, None)
    new_index = {s.path: i for i, s in enumerate(layer.sources) if i >= first_source}
    maps: dict[int, LineMap] = {}
    runs: dict[int, Iterable[bytes]] = {}
    for path, diff in plan.diffs.items():
        owner, successor = diff.owner, new_index[path]
        moved = diff.moved
        maps[owner] = moved
        for x in [x for x, o in remap.items() if o == owner]:
            maps[x] = LineMap.load(os.path.join(base_dir, f"remap.{x}")).then(moved)
        for x in maps:
            if x == owner or remap.get(x) == owner:
                remap[x] = successor
        counts[successor] = counts.pop(owner, 0) - diff.lost_alerts + layer.source_counts.get(successor, 0)
        runs[successor] = _merged_run(diff, layer.line_records[successor], layer.line_alerts.get(successor))
    for i, n in layer.source_counts.items():
        if i >= first_source and i not in runs:
            counts[i] = n
    for x, m in list(maps.items()):
        if not m:  # nothing of it is left
            dead.add(x)
            del maps[x]
            remap.pop(x, None)

    names = base.get("layers") or ["layer0"]
    starts = base.get("starts") or [[0, 0]]
    new_name = f"layer{len(names)}"
    manifest = {
        "format": FORMAT_VERSION,
        "bastion": __version__,
        "toolchain": toolchain(),
        "version": key,
        "pua": pua,
        "inputs": [[c.path, c.role, c.sha256] for c in discovery.candidates],
        "layers": [*names, new_name],
        "starts": [*starts, [body_start, logic_start]],
        "dead_sources": sorted(dead),
        "remap": {str(x): o for x, o in sorted(remap.items())},
        "sources": [[s.path, s.sha256, s.official] for s in layer.sources],
        "source_counts": sorted(counts.items()),
        "signature_count": yara_count + sum(counts.values()),
        "body_signatures": int(base["body_signatures"]) + layer.body_signatures,
        "report": report_to_json(_merged_report(base, layer.report, newly_dead | {d.owner for d in plan.diffs.values()},
                                                plan.whole_containers, [s[0] for s in base["sources"]])),
        "compiled_at": time.time(),
    }
    with publish_directory(final) as tmp:
        for name, src in zip(names, layers, strict=True):
            _link_tree(src, os.path.join(tmp, name))
        os.mkdir(os.path.join(tmp, new_name))
        layer.save(os.path.join(tmp, new_name), line_runs=runs)
        for x in remap:
            target = os.path.join(tmp, f"remap.{x}")
            if x in maps:
                maps[x].save(target)
            else:
                _link_file(os.path.join(base_dir, f"remap.{x}"), target)
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)
    for diff in plan.diffs.values():
        diff.run.close()
    return (f"as a layer: {len(sigset.sources) - first_source} sources compiled "
            f"({len(plan.diffs)} of them line by line), {len(newly_dead)} removed, {len(names) + 1} layers")


def _ends(base_dir: str, base: dict, layers: list[str]) -> tuple[int, int]:
    """Where the next layer's body and logical signature ids start: after the top layer's."""
    top = layers[-1]
    starts = base.get("starts") or [[0, 0]]
    bodies = os.path.getsize(os.path.join(top, "bodies.index")) // 8 - 1
    logical = os.path.getsize(os.path.join(top, "logical.index")) // 8 - 1
    return int(starts[-1][0]) + max(0, bodies), int(starts[-1][1]) + max(0, logical)


def _merged_report(base: dict, new: LoadReport, newly_dead: set[int], whole_containers: list[str],
                   base_paths: list[str]) -> LoadReport:
    old = report_from_json(base["report"])
    dead_paths = {base_paths[i] for i in newly_dead}
    kept_prefixes = tuple(f"{p}:" for p in whole_containers)
    rep = LoadReport(
        loaded_files=[p for p in old.loaded_files if p not in dead_paths] + new.loaded_files,
        skipped_files=new.skipped_files + [s for s in old.skipped_files if s[0].startswith(kept_prefixes)],
        skipped_by_flevel=old.skipped_by_flevel + new.skipped_by_flevel,
        skipped_by_target=old.skipped_by_target + new.skipped_by_target,
        ignored_by_name=old.ignored_by_name + new.ignored_by_name,
        macro_members=0,
        skipped_by_condition=old.skipped_by_condition + new.skipped_by_condition,
        not_enforced=dict(old.not_enforced),
        yara_errors=old.yara_errors,
        containers=[c for c in old.containers if c.get("path") in whole_containers] + new.containers,
    )
    for kind, n in new.not_enforced.items():
        rep.not_enforced[kind] = rep.not_enforced.get(kind, 0) + n
    return rep


def _link_file(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_tree(src: str, dst: str) -> None:
    """``dst`` as a copy of the compiled database ``src`` made of hard links (copies where the
    filesystem has none): a layer costs no disk for the layers below it."""
    os.mkdir(dst)
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if os.path.isdir(path):
            continue  # a layered base's own layers are linked one by one by the caller
        _link_file(path, os.path.join(dst, name))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
