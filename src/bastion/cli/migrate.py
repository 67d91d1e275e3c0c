"""``bastion migrate``: import settings, signatures and rules from ClamAV, YARA and Loki.

    bastion migrate --to /etc/bastion [--from-clamav /etc/clamav] [--clamd-conf F] [--freshclam-conf F]
                    [--clamav-db DIR] [--yara DIR] [--loki-hash-iocs F] [--loki-filename-iocs F]
                    [--exclusions F] [--force] [--dry-run] [--json]

It prints what it imported, what it could not and why, and changes nothing in the source product.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bastion.cli.common import parse_command_line
from bastion.migrate import migrate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion migrate", description="Import from ClamAV, YARA and Loki.")
    p.add_argument("--to", required=True, metavar="DIR", help="Bastion's folder to write (bastion.toml, db/)")
    p.add_argument("--from-clamav", metavar="DIR",
                   help="a ClamAV configuration folder: its clamd.conf and freshclam.conf (e.g. /etc/clamav)")
    p.add_argument("--clamd-conf", metavar="FILE")
    p.add_argument("--freshclam-conf", metavar="FILE")
    p.add_argument("--clamav-db", action="append", default=[], metavar="DIR", help="a ClamAV database folder")
    p.add_argument("--yara", action="append", default=[], metavar="DIR", help="a folder of YARA rules")
    p.add_argument("--loki-hash-iocs", action="append", default=[], metavar="FILE", help="Loki hash IOCs")
    p.add_argument("--loki-filename-iocs", action="append", default=[], metavar="FILE", help="Loki filename IOCs")
    p.add_argument("--exclusions", action="append", default=[], metavar="FILE",
                   help="paths, globs or regular expressions to exclude, one a line")
    p.add_argument("--force", action="store_true", help="replace an existing bastion.toml in --to")
    p.add_argument("--dry-run", action="store_true", help="say what would be imported, write nothing")
    p.add_argument("--json", action="store_true")
    return p


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    clamd_conf, freshclam_conf = args.clamd_conf, args.freshclam_conf
    if args.from_clamav:
        clamd_conf = clamd_conf or _existing(os.path.join(args.from_clamav, "clamd.conf"))
        freshclam_conf = freshclam_conf or _existing(os.path.join(args.from_clamav, "freshclam.conf"))
    try:
        report = migrate(args.to, clamd_conf=clamd_conf, freshclam_conf=freshclam_conf, clamav_db=args.clamav_db,
                         yara_dirs=args.yara, loki_hash_iocs=args.loki_hash_iocs,
                         loki_filename_iocs=args.loki_filename_iocs, exclusion_lists=args.exclusions,
                         force=args.force, dry_run=args.dry_run)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.json:
        print(json.dumps({"imported": report.imported, "not_imported": report.not_imported,
                          "written": report.written, "dry_run": args.dry_run}))
        return 0
    verb = "would write" if args.dry_run else "wrote"
    print(f"imported {len(report.imported)} item(s); {len(report.not_imported)} not imported")
    for line in report.not_imported:
        print(f"  not imported: {line}")
    for path in report.written:
        print(f"  {verb} {path}")
    if not args.dry_run:
        print(f"next: bastion daemon -c {os.path.join(os.path.abspath(args.to), 'bastion.toml')}   "
              f"or   bastion scan -d {os.path.join(os.path.abspath(args.to), 'db')} PATH")
    return 0


def _existing(path: str) -> str | None:
    return path if os.path.isfile(path) else None
