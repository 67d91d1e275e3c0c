"""``bastion db``: database versions, activation, rollback and the transparency log.

    bastion db stage SOURCE... [--clean DIR] [--activate]   copy, compile, self-test a new version
    bastion db activate VERSION                             switch to a staged version
    bastion db list [--json]                                versions, the active one marked
    bastion db rollback [VERSION]                           back to the previous (or a named) version
    bastion db log [--json] [--head]                        every activation and rollback
    bastion db verify-log [--size N --root HEX]             check the log's Merkle tree (offline)

A version is data only: signature files, never program code.  ``--clean DIR`` adds files that must
stay clean to the self-test.  The daemon picks up an activation by itself (SelfCheck on the store's
``active`` directory, or RELOAD), and since the version is compiled at staging, it only loads it.
"""

from __future__ import annotations

import argparse
import json
import sys

from bastion import events
from bastion.cli.common import parse_command_line
from bastion.dbstore.store import DatabaseStore, StoreError
from bastion.dbstore.tlog import Head


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion db", description="Database versions and their log.")
    p.add_argument("--store", default=None, metavar="DIR", help="the store (default: $BASTION_DB_STORE)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    stage = sub.add_parser("stage", help="copy, compile and self-test a new version")
    stage.add_argument("sources", nargs="+", metavar="SOURCE", help="signature files or folders")
    stage.add_argument("--clean", action="append", default=[], metavar="DIR",
                       help="files that must stay clean (self-test)")
    stage.add_argument("--activate", action="store_true", help="switch to it once it passes")
    act = sub.add_parser("activate", help="switch to a staged version")
    act.add_argument("version")
    ls = sub.add_parser("list", help="the versions kept")
    ls.add_argument("--json", action="store_true")
    rb = sub.add_parser("rollback", help="return to the previous version, or the one named")
    rb.add_argument("version", nargs="?")
    log = sub.add_parser("log", help="the transparency log")
    log.add_argument("--json", action="store_true")
    log.add_argument("--head", action="store_true", help="only the tree head (keep it to check later)")
    ver = sub.add_parser("verify-log", help="check the log's Merkle tree, and against a head you kept")
    ver.add_argument("--size", type=int, default=None)
    ver.add_argument("--root", default=None, metavar="HEX")
    return p


def _files(paths: list[str]) -> list[str]:
    import os

    return [os.path.join(d, n) for d in paths for n in sorted(os.listdir(d))] if paths else []


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    store = DatabaseStore(args.store)
    fixed = store.reconcile() if args.action != "verify-log" else None
    if fixed:
        sys.stderr.write(f"note: logged the interrupted activation of {fixed['version']}\n")
    try:
        return _act(store, args)
    except StoreError as exc:
        sys.stderr.write(f"error: {exc}; the active database is unchanged\n")
        events.record("database-reload", f"refused: {exc}", outcome="failure", process="bastion db")
        return 1


def _announce(record: dict) -> None:
    print(f"{record['action']}: {record['version']} is active ({record['signatures']} signatures; "
          f"previous {record['previous'] or 'none'})")
    events.record("database-reload", f"{record['action']} to {record['version']}", process="bastion db",
                  db_version=record["compiled_database"], version=record["version"], previous=record["previous"])


def _act(store: DatabaseStore, args: argparse.Namespace) -> int:
    if args.action == "stage":
        version = store.stage(args.sources, _files(args.clean))
        print(f"staged {version.id}: {len(version.files)} files, {version.signatures} signatures, "
              f"inputs {version.inputs_digest}; self-test passed")
        if args.activate:
            _announce(store.activate(version.id))
        return 0
    if args.action == "activate":
        matches = [v.id for v in store.versions() if v.id.startswith(args.version)]
        if len(matches) != 1:
            raise StoreError(f"{args.version}: {'no such version' if not matches else 'ambiguous'}")
        _announce(store.activate(matches[0]))
        return 0
    if args.action == "rollback":
        _announce(store.rollback(args.version))
        return 0
    if args.action == "list":
        active = store.active_id()
        for v in store.versions():
            if args.json:
                print(json.dumps({**v.__dict__, "active": v.id == active}))
            else:
                print(f"{'*' if v.id == active else ' '} {v.id}  {v.created}  {v.signatures:>9} signatures  "
                      f"{len(v.files)} files")
        return 0
    if args.action == "log":
        if args.head:
            print(json.dumps(store.log.head().as_json()))
            return 0
        for entry in store.log.entries():
            r = entry["record"]
            print(json.dumps(entry) if args.json else
                  f"{entry['size']:>4}  {r['time']}  {r['action']:<8} {r['version']}  (from {r['previous']})  "
                  f"{r['signatures']} signatures  by {r['trigger']}")
        return 0
    kept = Head(args.size, args.root) if args.size is not None and args.root else None
    problems = store.log.verify(kept)
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        head = store.log.head()
        print(f"OK: {head.size} records, tree head {head.root}")
    return 1 if problems else 0
