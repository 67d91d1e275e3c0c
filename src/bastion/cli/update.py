"""``bastion update``: fetch every source, stage one new database version from them, and activate it
as the sources' policies say.

    bastion update [--config bastion.toml] [--feed NAME=URL] [--trust NAME=ROOT.json] [--local DIR]
                   [--policy auto|notify|manual] [--dry-run]

Sources come from ``[[update.sources]]`` in ``bastion.toml`` (feed/sources.py) and from the command
line.  Every feed is checked as TUF specifies (feed/client.py); a source that fails is named with
its reason and left out, and the others still update.  Each source's files are staged as
``<source>--<file>``; the new version is compiled and self-tested beside the active one
(``bastion db``), and then the strictest policy among the sources that changed decides: ``auto``
activates it, ``notify`` stages it and records an event, ``manual`` stages it for
``bastion db activate``.  ``--dry-run`` fetches and verifies, shows what would change per source
and file, and stages nothing.  Updates are data only: nothing here downloads, installs, removes or
runs program code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from bastion import events
from bastion.cli.common import parse_command_line
from bastion.dbstore.store import DatabaseStore, StoreError
from bastion.feed.clamav_mirror import MirrorError
from bastion.feed.client import FeedError, fetch
from bastion.feed.sources import STRICTNESS, Source, SourceError, SourceState, hashlist_to_hsb, load_config
from bastion.paths import BASTION_TOML, bastion_toml
from bastion.signatures.loader import file_digest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion update", description="Update the database from its sources.")
    p.add_argument("--config", default=None, metavar="FILE",
                   help=f"bastion.toml with [[update.sources]] (default {BASTION_TOML} if it exists)")
    p.add_argument("--feed", action="append", default=[], metavar="NAME=URL", help="a Bastion feed (repeatable)")
    p.add_argument("--trust", action="append", default=[], metavar="NAME=ROOT.json",
                   help="the feed's root.json, the first time (then kept and rotated by the feed)")
    p.add_argument("--local", action="append", default=[], metavar="DIR", help="your own signature folder")
    p.add_argument("--policy", choices=["auto", "notify", "manual"], default=None,
                   help="policy for sources named on the command line (default: the config's, else auto)")
    p.add_argument("--dry-run", action="store_true", help="fetch and verify, show what would change, stage nothing")
    p.add_argument("--store", default=None, metavar="DIR")
    return p


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what} {item!r}: give NAME=VALUE")
        out[name] = value
    return out


def _sources(args: argparse.Namespace) -> list[Source]:
    path = bastion_toml(args.config)
    configured = load_config(path) if path else None
    policy = args.policy or (configured.policy if configured else "auto")
    sources = list(configured.sources) if configured else []
    trust = _pairs(args.trust, "--trust")
    for name, url in _pairs(args.feed, "--feed").items():
        sources.append(Source(name, "feed", url=url, trust=trust.get(name, ""), policy=policy))
    for folder in args.local:
        sources.append(Source(os.path.basename(os.path.abspath(folder)) or "local", "folder", path=folder,
                              policy=policy))
    return sources


def _gather(src: Source, store: DatabaseStore, state: SourceState, into: str, owner: dict[str, str]) -> str:
    """Put one source's verified files into ``into`` as <source>--<file> (ClamAV containers keep
    their own names, which their signatures cover); returns a one-line summary."""
    if src.kind == "hashlist":
        with open(src.path, encoding="utf-8", errors="replace") as fh:
            text, taken, skipped = hashlist_to_hsb(fh.read(), src.name)
        if not taken:
            raise SourceError(f"{src.path}: no hash in it")
        staged = f"{src.name}--hashes.hsb"
        with open(os.path.join(into, staged), "w", encoding="ascii") as out:
            out.write(text)
        owner[staged] = src.name
        return f"{taken} hashes ({skipped} lines skipped), 1 files"
    if src.kind == "feed":
        got = fetch(src.name, src.url, store.root, src.trust or None)
        folder, summary = got.directory, f"verified targets version {got.targets_version}"
    elif src.kind == "folder":
        folder, summary = src.path, "folder"
        if not os.path.isdir(folder):
            raise SourceError(f"{folder}: no such folder")
    elif src.kind == "clamav-mirror":
        folder, summary = _clamav_mirror(src, store, state, into, owner)
    count = 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not name.startswith("."):
            staged = name if src.kind == "clamav-mirror" else f"{src.name}--{name}"
            shutil.copyfile(path, os.path.join(into, staged))
            owner[staged] = src.name
            count += 1
    return f"{summary}, {count} files"


def _clamav_mirror(src: Source, store: DatabaseStore, state: SourceState, into: str,
                   owner: dict[str, str]) -> tuple[str, str]:
    """A ClamAV mirror's containers (patched with cdiffs where it can) in the source's ``cvd``
    folder, and its custom URLs' files staged into ``into``; returns (the folder, a summary)."""
    from bastion.feed.clamav_mirror import DEFAULT_DATABASES, fetch_mirror, mirrors_from_freshclam
    from bastion.feed.custom_urls import fetch_custom_urls, urls_from_freshclam

    folder = os.path.join(store.root, "feeds", src.name, "cvd")
    os.makedirs(folder, exist_ok=True)
    mirrors = [src.url] if src.url else list(src.mirrors or [])
    urls = list(src.custom_urls or [])
    if src.freshclam:
        mirrors = mirrors or mirrors_from_freshclam(src.freshclam)
        urls += urls_from_freshclam(src.freshclam)
    parts = []
    if urls:  # each URL stands alone: a failing one is reported, its last good copy kept
        custom_folder = os.path.join(store.root, "feeds", src.name, "custom")
        custom = fetch_custom_urls(urls, custom_folder, state.get(src.name).get("custom_urls", {}))
        state.remember(src.name, custom_urls=custom.cache, custom_url_problems=custom.problems)
        for problem in custom.problems:
            sys.stderr.write(f"warning: {src.name}: custom URL {problem}\n")
        for name in sorted(os.listdir(custom_folder)):
            path = os.path.join(custom_folder, name)
            if os.path.isfile(path) and not name.startswith("."):
                staged = name if name.endswith((".cvd", ".cld", ".cud")) else f"{src.name}--{name}"
                shutil.copyfile(path, os.path.join(into, staged))
                owner[staged] = src.name
        parts.append(f"{len(custom.cache)} of {len(urls)} custom URLs"
                     + "".join(f"; {note}" for note in custom.notes)
                     + (f"; {len(custom.problems)} failed" if custom.problems else ""))
    if mirrors or not urls:
        notes: list[str] = []
        versions = fetch_mirror(mirrors, list(src.databases or DEFAULT_DATABASES), folder, notes)
        state.remember(src.name, versions=versions, updates=notes)
        parts.insert(0, "verified " + ", ".join(f"{db} {v}" for db, v in versions.items())
                     + "".join(f" ({note})" for note in notes))
    return folder, "; ".join(parts)


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        sources = _sources(args)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if not sources:
        sys.stderr.write("error: no sources: give --feed/--local or [[update.sources]] in bastion.toml\n")
        return 2
    store = DatabaseStore(args.store)
    state = SourceState(store.root)
    combined = tempfile.mkdtemp(prefix=".update-", dir=store.root)
    try:
        return _update(args, store, state, sources, combined)
    finally:
        shutil.rmtree(combined, ignore_errors=True)


def _update(args: argparse.Namespace, store: DatabaseStore, state: SourceState, sources: list[Source],
            combined: str) -> int:
    failed = 0
    owner: dict[str, str] = {}
    for src in sources:
        try:
            summary = _gather(src, store, state, combined, owner)
        except (FeedError, SourceError, OSError, MirrorError) as exc:
            failed += 1
            state.record(src.name, False, str(exc))
            kept = _keep_active_files(store, src, combined, owner)
            sys.stderr.write(f"error: {src.name}: {exc}" + (f"; its {kept} files in the active version are kept"
                                                             if kept else "") + "\n")
            events.record("database-reload", f"source {src.name} refused: {exc}", outcome="failure",
                          process="bastion update", source=src.name)
            continue
        state.record(src.name, True, summary)
        print(f"{src.name}: {summary}")
    if not os.listdir(combined):
        sys.stderr.write("error: no source could be read; the active database is unchanged\n")
        return 1
    mirrors = [s.name for s in sources if s.kind == "clamav-mirror"]
    changed = _changes(store, combined, owner, mirrors, show=args.dry_run)
    if args.dry_run:
        return 1 if failed else 0
    try:
        version = store.stage([combined])
    except StoreError as exc:
        sys.stderr.write(f"error: {exc}; the active database is unchanged\n")
        return 1
    print(f"staged {version.id}: {version.signatures} signatures; self-test passed")
    policies = [s.policy for s in sources if s.name in changed] or ["auto"]
    policy = max(policies, key=STRICTNESS.__getitem__)
    if version.id == store.active_id():
        print("no change: this version is already active")
    elif policy == "auto":
        names = ", ".join(sorted(changed)) or "none"
        record = store.activate(version.id, trigger=f"bastion update (policy auto; changed: {names})")
        print(f"activated {version.id} (previous {record['previous']})")
    else:
        events.record("database-reload", f"version {version.id} staged, waiting for `bastion db activate`",
                      process="bastion update", version=version.id, policy=policy)
        print(f"staged only (policy {policy}): bastion db activate {version.id}")
    return 1 if failed else 0


def _keep_active_files(store: DatabaseStore, src: Source, combined: str, owner: dict[str, str]) -> int:
    """A source that fails this time keeps the files it gave the active version: an outage (a vendor
    gone, a mirror down) must not remove its signatures.  Its files are those staged under its name
    (``name--file``) and, for a ClamAV mirror, the containers no other source gave this run."""
    active = store.active_id()
    if not active:
        return 0
    folder = store.sources_dir(active)
    kept = 0
    for name in sorted(os.listdir(folder)):
        mine = name.startswith(f"{src.name}--") or (
            src.kind == "clamav-mirror" and name.endswith((".cvd", ".cld", ".cud")) and name not in owner)
        if mine and not os.path.exists(os.path.join(combined, name)):
            shutil.copyfile(os.path.join(folder, name), os.path.join(combined, name))
            owner[name] = src.name
            kept += 1
    return kept


def _changes(store: DatabaseStore, combined: str, owner: dict[str, str], mirrors: list[str],
             show: bool) -> set[str]:
    """The sources whose files differ from the active version (and, with ``show``, what changes)."""
    active = store.active_id()
    current: dict[str, str] = {}
    if active:  # the active version's files and their SHA-256, as its version.json recorded them
        current = {n: d for n, d in store.version(active).files.items() if not n.startswith("bastion-builtin-")}
    new = {n: file_digest(os.path.join(combined, n)) for n in os.listdir(combined)}
    changed: set[str] = set()
    for name in sorted(set(new) | set(current)):
        if name in owner:
            sources = {owner[name]}
        elif "--" in name:
            sources = {name.split("--", 1)[0]}
        else:  # a container without a source prefix came from a ClamAV mirror
            sources = set(mirrors)
        if name not in current:
            what = "add"
        elif name not in new:
            what = "remove"
        elif current[name] != new[name]:
            what = "change"
        else:
            continue
        changed |= sources
        if show:
            lines = ""
            if name in new:
                with open(os.path.join(combined, name), "rb") as fh:
                    count = sum(1 for line in fh if line.strip() and not line.startswith(b"#"))
                lines = f" ({count} signatures)"
            print(f"would {what} {name}{lines}")
    if show and not changed:
        print("no change")
    return changed
