"""``bastion update``: fetch signed feeds, stage one new database version from them, and activate it
as the policy says.

    bastion update --feed NAME=URL [--trust NAME=ROOT.json] [--local DIR] [--policy auto|notify|manual]
                   [--dry-run]

Every feed is checked as TUF specifies (client.py); one that fails is named with its reason and
left out, and the others still update.  The new version holds every verified feed's files (and any
``--local`` folder of your own signatures), is compiled and self-tested beside the active one
(``bastion db``), and then: ``auto`` activates it, ``notify`` stages it and says so (an event),
``manual`` stages it for ``bastion db activate``.  ``--dry-run`` fetches and verifies, shows what
would change per file, and stages nothing.  Updates are data only: nothing here downloads,
installs, removes or runs program code.
"""

from __future__ import annotations

import argparse
import os
import sys

from bastion import events
from bastion.cli.common import parse_command_line
from bastion.dbstore.store import DatabaseStore, StoreError
from bastion.feed.client import FeedError, fetch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion update", description="Update the database from signed feeds.")
    p.add_argument("--feed", action="append", default=[], metavar="NAME=URL", help="a Bastion feed (repeatable)")
    p.add_argument("--trust", action="append", default=[], metavar="NAME=ROOT.json",
                   help="the feed's root.json, the first time (then kept and rotated by the feed)")
    p.add_argument("--local", action="append", default=[], metavar="DIR", help="your own signature folder")
    p.add_argument("--policy", choices=["auto", "notify", "manual"], default="auto")
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


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        feeds, trust = _pairs(args.feed, "--feed"), _pairs(args.trust, "--trust")
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    store = DatabaseStore(args.store)
    sources: list[str] = []
    failed = 0
    for name, url in feeds.items():
        try:
            got = fetch(name, url, store.root, trust.get(name))
        except FeedError as exc:
            failed += 1
            sys.stderr.write(f"error: {exc}\n")
            events.record("database-reload", str(exc), outcome="failure", process="bastion update", feed=name)
            continue
        print(f"{name}: verified targets version {got.targets_version}, {len(got.files)} files")
        sources.append(got.directory)
    sources += [d for d in args.local if os.path.isdir(d)]
    if not sources:
        sys.stderr.write("error: no source could be read; the active database is unchanged\n")
        return 1
    if args.dry_run:
        _show_changes(store, sources)
        return 1 if failed else 0
    try:
        version = store.stage(sources)
    except StoreError as exc:
        sys.stderr.write(f"error: {exc}; the active database is unchanged\n")
        return 1
    print(f"staged {version.id}: {version.signatures} signatures; self-test passed")
    if version.id == store.active_id():
        print("no change: this version is already active")
    elif args.policy == "auto":
        record = store.activate(version.id, trigger=f"bastion update (policy auto; feeds {', '.join(feeds)})")
        print(f"activated {version.id} (previous {record['previous']})")
    else:
        events.record("database-reload", f"version {version.id} staged, waiting for `bastion db activate`",
                      process="bastion update", version=version.id, policy=args.policy)
        print(f"staged only (policy {args.policy}): bastion db activate {version.id}")
    return 1 if failed else 0


def _show_changes(store: DatabaseStore, sources: list[str]) -> None:
    from bastion.signatures.loader import file_digest

    active = store.active_id()
    current = {}
    if active:
        folder = store.sources_dir(active)
        current = {n: file_digest(os.path.join(folder, n)) for n in os.listdir(folder)}
    for src in sources:
        for n in sorted(os.listdir(src)):
            path = os.path.join(src, n)
            lines = sum(1 for line in open(path, "rb") if line.strip() and not line.startswith(b"#"))  # noqa: SIM115
            if n not in current:
                print(f"would add {n} ({lines} signatures)")
            elif current[n] != file_digest(path):
                print(f"would change {n} (now {lines} signatures)")
            else:
                print(f"unchanged {n}")
    names = {n for src in sources for n in os.listdir(src)}
    for n in sorted(set(current) - names):
        if not n.startswith("bastion-builtin-"):
            print(f"would remove {n}")
