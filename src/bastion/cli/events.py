"""``bastion events``: read the event log (detections, actions, errors, database changes), filtered.

    bastion events [--since 2h|2026-11-25T06:00] [--action quarantine] [--kind alert]
                   [--outcome failure] [--grep TEXT] [--limit N] [--json] [--file PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque

from bastion import events
from bastion.cli.common import parse_command_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion events", description="Show the event log, oldest first.")
    p.add_argument("--since", default=None, metavar="WHEN", help="30m, 2h, 7d ago, or an ISO 8601 time")
    p.add_argument("--action", default=None, choices=sorted(events.ACTIONS), help="only this action")
    p.add_argument("--kind", default=None, choices=["alert", "event"], help="alert: detections only")
    p.add_argument("--outcome", default=None, choices=["success", "failure"])
    p.add_argument("--grep", default=None, metavar="TEXT", help="only events whose line contains TEXT")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="only the last N events")
    p.add_argument("--json", action="store_true", help="the events as stored: one JSON object per line")
    p.add_argument("--file", default=None, metavar="PATH", help=f"the log (default: ${events.EVENTS_FILE_ENV} "
                   "or the per-user/system default)")
    return p


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        since = events.parse_since(args.since) if args.since else None
    except ValueError:
        sys.stderr.write(f"error: --since {args.since!r}: give 30m, 2h, 7d or an ISO 8601 time\n")
        return 2
    found = events.read(args.file, since=since, action=args.action, kind=args.kind, outcome=args.outcome,
                        text=args.grep)
    shown = deque(found, maxlen=args.limit) if args.limit > 0 else found
    for ev in shown:
        if args.json:
            sys.stdout.write(json.dumps(ev) + "\n")
            continue
        e = ev["event"]
        mark = "!" if e.get("outcome") == "failure" else ("*" if e.get("kind") == "alert" else " ")
        sys.stdout.write(f"{ev['@timestamp']} {mark} {e.get('action', '?'):<18} {ev.get('message', '')}\n")
    return 0
