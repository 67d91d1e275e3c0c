"""``bastion schedule``: scheduled scans.

    bastion schedule add NAME --at "30 2 * * *" (--quick | --full | PATH...) [--move-to-quarantine]
    bastion schedule list [--json]
    bastion schedule remove NAME
    bastion schedule run NAME          # now
    bastion schedule run-due           # every schedule whose time has come (the systemd timer's job)

Each run writes its detections and a ``schedule-run`` event with its summary to the event log
(``bastion events --action schedule-run``) and keeps the summary with the schedule.  Report-only
unless the schedule was added with ``--move-to-quarantine``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from datetime import datetime

from bastion import events
from bastion.cli.common import SignatureError, load_database
from bastion.cli.runner import default_jobs, scan_entries
from bastion.cli.walker import Kind, WalkOptions, walk
from bastion.engine import Engine, ScanOptions
from bastion.schedule import store
from bastion.schedule.cron import Cron, CronError


def _add_arguments(add: argparse.ArgumentParser) -> None:
    add.add_argument("name_and_paths", nargs="+", metavar="NAME [PATH...]",
                     help="the schedule's name, then what to scan (a custom scan)")
    add.add_argument("--at", required=True, metavar="CRON", help='cron time, e.g. "30 2 * * *" or @daily')
    what = add.add_mutually_exclusive_group()
    what.add_argument("--quick", action="store_true", help="the places downloads and droppers land")
    what.add_argument("--full", action="store_true", help="the whole file system (but /proc /sys /dev /run)")
    add.add_argument("--move-to-quarantine", action="store_true", help="quarantine what it finds")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion schedule", description="Scheduled scans.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_arguments(sub.add_parser("add", help="add (or replace) a scheduled scan"))
    ls = sub.add_parser("list", help="list schedules, their next and last runs")
    ls.add_argument("--json", action="store_true")
    rm = sub.add_parser("remove", help="remove a schedule")
    rm.add_argument("name")
    run = sub.add_parser("run", help="run a schedule now")
    run.add_argument("name")
    run.add_argument("-d", "--database", action="append", default=[], metavar="DB")
    due = sub.add_parser("run-due", help="run every schedule that is due (from a timer)")
    due.add_argument("-d", "--database", action="append", default=[], metavar="DB")
    return p


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["add"]:  # NAME, options, then PATHs: positionals on both sides of --at
            add = argparse.ArgumentParser(prog="bastion schedule add", description="Add a scheduled scan.")
            _add_arguments(add)
            args = add.parse_intermixed_args(argv[1:], argparse.Namespace(action="add"))
        else:
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    schedules = store.load()
    now = datetime.now().replace(microsecond=0)
    if args.action == "add":
        args.name, args.paths = args.name_and_paths[0], args.name_and_paths[1:]
        try:
            Cron.parse(args.at)
        except CronError as exc:
            sys.stderr.write(f"error: --at: {exc}\n")
            return 2
        kind = "quick" if args.quick else "full" if args.full else "custom"
        if kind == "custom" and not args.paths:
            sys.stderr.write("error: give --quick, --full or the paths to scan\n")
            return 2
        paths = [os.path.abspath(p) for p in args.paths]
        schedules[args.name] = store.Schedule(args.name, args.at, kind, paths, args.move_to_quarantine,
                                              created=now.isoformat())
        store.save(schedules)
        print(f"{args.name}: {kind} scan at '{args.at}', next {Cron.parse(args.at).next_after(now)}")
        return 0
    if args.action == "list":
        for s in schedules.values():
            nxt = Cron.parse(s.when).next_after(now).isoformat()
            if args.json:
                print(json.dumps({**s.__dict__, "next_run": nxt}))
            else:
                last = s.last_summary or {}
                print(f"{s.name:<16} {s.when:<14} {s.kind:<6} next {nxt}  last {s.last_run or 'never'}"
                      f"  {last.get('infected', '-')} infected  {' '.join(s.targets())}")
        return 0
    if args.action == "remove":
        if args.name not in schedules:
            sys.stderr.write(f"error: no schedule named {args.name!r}\n")
            return 1
        del schedules[args.name]
        store.save(schedules)
        print(f"{args.name}: removed")
        return 0
    if args.action == "run":
        if args.name not in schedules:
            sys.stderr.write(f"error: no schedule named {args.name!r}\n")
            return 1
        return _run_locked([args.name], args.database, now)
    due = [s.name for s in schedules.values() if s.due(now)]
    return _run_locked(due, args.database, now) if due else 0


def _run_locked(names: list[str], databases: list[str], now: datetime) -> int:
    """Run schedules one after another, holding a lock so that two timers never run them twice."""
    lock_path = store.schedules_path() + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.stderr.write("schedule: another run is in progress; nothing done\n")
            return 0
        try:
            db = load_database(databases)
        except SignatureError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        worst = 0
        for name in names:
            schedules = store.load()
            sched = schedules[name]
            summary = _run_one(sched, Engine(db, ScanOptions()), db.version)
            sched.last_run, sched.last_summary = now.isoformat(), summary
            store.save(schedules)
            print(f"{name}: {summary['files']} files, {summary['infected']} infected, {summary['errors']} errors "
                  f"in {summary['seconds']} s")
            worst = max(worst, 1 if summary["infected"] else 2 if summary["errors"] else 0)
        return worst


def _run_one(sched: store.Schedule, engine: Engine, db_version: str) -> dict:
    import re

    started = time.monotonic()
    opts = WalkOptions(recursive=True,
                       exclude_dir=[re.compile(x) for x in store.FULL_SCAN_EXCLUDES] if sched.kind == "full" else [])
    quarantine = None
    if sched.move_to_quarantine:
        from bastion.quarantine import Quarantine

        quarantine = Quarantine()
    counts = {"files": 0, "infected": 0, "errors": 0, "quarantined": 0}
    found = []
    for entry, res in scan_entries(engine, walk(sched.targets(), opts), default_jobs()):
        if res is None:
            counts["errors"] += entry.kind in (Kind.ERROR, Kind.MISSING)
            continue
        counts["files"] += 1
        if res.error:
            counts["errors"] += 1
        if not res.detections:
            continue
        counts["infected"] += 1
        names = ", ".join(d.name for d in res.detections)
        found.append({"path": entry.path, "detections": names})
        print(f"{entry.path}: {names} FOUND")
        events.record_detections(entry.path, res, "bastion schedule", schedule=sched.name)
        if quarantine is not None:
            from bastion.quarantine import QuarantineError

            try:
                quarantine.add(entry.path, signature=names, db_version=db_version)
                counts["quarantined"] += 1
            except QuarantineError as exc:
                counts["errors"] += 1
                sys.stderr.write(f"error: {exc}\n")
    summary = {**counts, "seconds": round(time.monotonic() - started, 3), "targets": sched.targets(),
               "detections": found[:100], "db_version": db_version}
    events.record("schedule-run", f"schedule {sched.name}: {counts['files']} files, {counts['infected']} infected",
                  outcome="success" if not counts["errors"] else "failure", process="bastion schedule",
                  schedule=sched.name, **{k: v for k, v in summary.items() if k != "detections"})
    return summary
