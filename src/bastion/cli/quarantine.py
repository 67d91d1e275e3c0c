"""``bastion quarantine``: list, show, add, restore, delete and export quarantined files.

Every action that changes a file is one the user names here; ``--dry-run`` says what it would do and
does nothing.  The quarantine is ``--dir`` or ``$BASTION_QUARANTINE_DIR`` (default: see
:func:`bastion.quarantine.default_dir`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bastion.cli.common import parse_command_line
from bastion.quarantine import Item, Quarantine, QuarantineError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion quarantine", description="Manage quarantined files.")
    p.add_argument("--dir", default=None, metavar="DIR", help="the quarantine directory")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="list quarantined files")
    ls.add_argument("--all", action="store_true", help="also restored and deleted items")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = sub.add_parser("show", help="everything recorded about one item")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    add = sub.add_parser("add", help="move files into quarantine")
    add.add_argument("paths", nargs="+", metavar="PATH")
    add.add_argument("--signature", default="", help="why (recorded with the item)")
    add.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    restore = sub.add_parser("restore", help="put a file back, byte for byte with its metadata")
    restore.add_argument("id")
    restore.add_argument("--to", default=None, metavar="PATH", help="restore there instead of the original path")
    restore.add_argument("--force", action="store_true", help="overwrite a file that exists at the destination")
    restore.add_argument("--dry-run", action="store_true")
    delete = sub.add_parser("delete", help="destroy the stored copy for good")
    delete.add_argument("id")
    delete.add_argument("--dry-run", action="store_true")
    export = sub.add_parser("export", help="write the file and its record into an AES-encrypted zip")
    export.add_argument("id")
    export.add_argument("zip", metavar="OUT.zip")
    export.add_argument("--password", default="infected", help="the zip's password (default: infected)")
    return p


def _line(item: Item) -> str:
    where = f" -> {item.restored_to}" if item.state == "restored" and item.restored_to else ""
    return (f"{item.id[:12]}  {item.quarantined_at}  {item.state:<11}  {item.size:>10}  "
            f"{item.signature or item.verdict}  {item.original_path}{where}")


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        with Quarantine(args.dir) as q:
            for line in q.recovered:
                sys.stderr.write(f"recovered: {line}\n")
            return _act(q, args)
    except QuarantineError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


def _act(q: Quarantine, args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.action == "list":
        states = ("quarantined", "restored", "deleted", "moving") if args.all else ("quarantined",)
        for item in q.items(states):
            out.write((json.dumps(item.as_json()) if args.json else _line(item)) + "\n")
        return 0
    if args.action == "show":
        item = q.get(args.id)
        if args.json:
            out.write(json.dumps(item.as_json(), indent=2) + "\n")
        else:
            for key, value in item.as_json().items():
                out.write(f"{key:15} {value}\n")
        return 0
    if args.action == "add":
        code = 0
        for path in args.paths:
            if args.dry_run:
                out.write(f"would quarantine {os.path.abspath(path)}\n")
                continue
            try:
                item = q.add(path, verdict="user", signature=args.signature)
            except QuarantineError as exc:
                sys.stderr.write(f"error: {exc}\n")
                code = 1
                continue
            out.write(f"{item.original_path}: moved to quarantine as {item.id}\n")
        return code
    if args.action == "restore":
        item = q.get(args.id)
        if args.dry_run:
            out.write(f"would restore {item.id} to {os.path.abspath(args.to or item.original_path)}\n")
            return 0
        item, target, warnings = q.restore(args.id, args.to, args.force)
        for w in warnings:
            sys.stderr.write(f"warning: {target}: {w}\n")
        out.write(f"{item.id}: restored to {target}\n")
        return 0
    if args.action == "delete":
        item = q.get(args.id)
        if args.dry_run:
            out.write(f"would delete the stored copy of {item.id} ({item.original_path})\n")
            return 0
        q.delete(args.id)
        out.write(f"{item.id}: deleted ({item.original_path})\n")
        return 0
    if args.action == "export":
        item = q.export(args.id, args.zip, args.password.encode())
        out.write(f"{item.id}: exported to {args.zip} (AES zip, password {args.password!r})\n")
        return 0
    return 2
