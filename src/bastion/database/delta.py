"""Compile only what changed: a new layer on top of an already compiled database.

A daemon's reload used to compile the whole database again, and a whole compile peaks at several
times what serving the database costs (bench/README.md: tree PSS 6.2x the steady state with 1.25M
signatures, the peak being Hyperscan's compile of the body signatures).  Here the sources are
compared with those of the database being served (``base``), by path and content digest, file by
file and, inside a ``.cvd``/``.cld``, member by member:

* a source present in both, with the same digest, is not read again: its signatures stay compiled
  in the base;
* a source that disappeared or changed is tombstoned (its signatures stay in the base, filtered out
  when scanning: database/layered.py);
* the added and changed sources are parsed and compiled on their own into a new layer, whose ids
  continue the base's.

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
from bastion.signatures.loader import Discovery, extension, parse_sources
from bastion.signatures.model import LoadReport, SignatureSet, SourceFile

MAX_LAYERS = 8
# changed sources above this share of all signature bytes are compiled whole (with the rest)
MAX_CHANGED_SHARE = 0.5
# roles whose sources act on others (ignore lists, file type magic) or are compiled as one set (YARA)
_GLOBAL_ROLES = frozenset({"ignore", "ftm", "yara"})
_GLOBAL_EXTENSIONS = frozenset({".ign", ".ign2", ".ftm", ".yar", ".yara"})


class WholeCompile(Exception):
    """Why a layer is not built: the whole database is compiled instead."""


class _Plan:
    """Answers the loader's ``reuse`` question for each source, and keeps what it learns."""

    def __init__(self, base: dict, budget: int) -> None:
        self.sources: list[list] = base["sources"]
        dead = {int(i) for i in base.get("dead_sources", [])}
        self.live = {(p, d, o): i for i, (p, d, o) in enumerate(self.sources) if i not in dead}
        self.inputs = {(p, r, d) for p, r, d in base.get("inputs", [])}
        self.kept: set[int] = set()
        self.whole_containers: list[str] = []
        self.changed_bytes = 0
        self.budget = budget
        self.official: dict[str, bool] = {}

    def __call__(self, path: str, sha256: str, role: str, size: int) -> bool:
        if role == "container":
            if (path, role, sha256) not in self.inputs:
                return False  # opened: its members are compared one by one
            prefix = f"{path}:"
            self.kept |= {i for (p, _d, _o), i in self.live.items() if p.startswith(prefix)}
            self.whole_containers.append(path)
            return True
        for official in (False, True):
            index = self.live.get((path, sha256, official))
            if index is not None:
                self.kept.add(index)
                return True
        if role in _GLOBAL_ROLES:
            raise WholeCompile(f"{path}: a {extension(path)} source was added or changed")
        self.changed_bytes += size
        if self.changed_bytes > self.budget:
            raise WholeCompile("the changed sources hold more than half of the signatures")
        return False

    def dead(self) -> set[int]:
        gone = set(self.live.values()) - self.kept
        for i in gone:
            path = self.sources[i][0]
            if extension(path) in _GLOBAL_EXTENSIONS:
                raise WholeCompile(f"{path}: a {extension(path)} source was removed or changed")
        return gone


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
    plan = _Plan(base, int(total * MAX_CHANGED_SHARE))

    sigset = SignatureSet(sources=[SourceFile(p, d, o) for p, d, o in base["sources"]])
    first_source = len(sigset.sources)
    parse_sources(discovery, pua=pua, sigset=sigset, reuse=plan)
    newly_dead = plan.dead()
    dead = newly_dead | {int(i) for i in base.get("dead_sources", [])}
    if sigset.macros or sigset.report.macro_members:
        raise WholeCompile("the changed sources define .ndb macro groups")
    if len(sigset.sources) > 0xFFFF:
        raise WholeCompile("more than 65535 sources over all layers")

    body_start, logic_start = _ends(base_dir, base, layers)
    root, key = os.path.split(final)
    layer = Database.compile(sigset, key, body_offset=body_start, lsig_offset=logic_start, pua=pua)
    if layer.yara is not None:
        raise WholeCompile("YARA rules are compiled as one set")

    names = base.get("layers") or ["layer0"]
    starts = base.get("starts") or [[0, 0]]
    new_name = f"layer{len(names)}"
    new_counts = {i: n for i, n in layer.source_counts.items() if i >= first_source}
    counts = {int(i): int(n) for i, n in base.get("source_counts", [])} | new_counts
    live_count = int(base["signature_count"]) - sum(counts.get(i, 0) for i in newly_dead)
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
        "sources": [[s.path, s.sha256, s.official] for s in layer.sources],
        "source_counts": sorted(counts.items()),
        "signature_count": live_count + layer.signature_count,
        "body_signatures": int(base["body_signatures"]) + layer.body_signatures,
        "report": report_to_json(_merged_report(base, layer.report, newly_dead, plan.whole_containers,
                                                [s[0] for s in base["sources"]])),
        "compiled_at": time.time(),
    }
    with publish_directory(final) as tmp:
        for name, src in zip(names, layers, strict=True):
            _link_tree(src, os.path.join(tmp, name))
        os.mkdir(os.path.join(tmp, new_name))
        layer.save(os.path.join(tmp, new_name))
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)
    return (f"as a layer: {len(sigset.sources) - first_source} sources compiled, "
            f"{len(dead)} replaced or removed, {len(names) + 1} layers")


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


def _link_tree(src: str, dst: str) -> None:
    """``dst`` as a copy of the compiled database ``src`` made of hard links (copies where the
    filesystem has none): a layer costs no disk for the layers below it."""
    os.mkdir(dst)
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if os.path.isdir(path):
            continue  # a layered base's own layers are linked one by one by the caller
        try:
            os.link(path, os.path.join(dst, name))
        except OSError:
            shutil.copy2(path, os.path.join(dst, name))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
