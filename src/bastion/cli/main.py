"""``bastion``: the command dispatcher.

Each subcommand is a front end with its own ``run(argv) -> int``; this module only picks one and
hands it every argument after the subcommand's name, untouched.  Front ends never import each other.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from bastion import CLAMAV_COMPAT_VERSION, FUNCTIONALITY_LEVEL, __version__


def _scan(argv: list[str]) -> int:
    from bastion.cli import scan

    return scan.run(argv)


def _clamscan(argv: list[str]) -> int:
    from bastion.cli import clamscan

    return clamscan.run(argv)


def _explain(argv: list[str]) -> int:
    from bastion.cli import explain

    return explain.run(argv)


def _sigtool(argv: list[str]) -> int:
    from bastion.cli import sigtool

    return sigtool.run(argv)


def _quarantine(argv: list[str]) -> int:
    from bastion.cli import quarantine

    return quarantine.run(argv)


def _watch(argv: list[str]) -> int:
    from bastion.cli import watch

    return watch.run(argv)


def _schedule(argv: list[str]) -> int:
    from bastion.cli import schedule

    return schedule.run(argv)


def _migrate(argv: list[str]) -> int:
    from bastion.cli import migrate

    return migrate.run(argv)


def _db(argv: list[str]) -> int:
    from bastion.cli import db

    return db.run(argv)


def _feed(argv: list[str]) -> int:
    from bastion.cli import feed

    return feed.run(argv)


def _update(argv: list[str]) -> int:
    from bastion.cli import update

    return update.run(argv)


def _status(argv: list[str]) -> int:
    from bastion.cli import status

    return status.run(argv)


def _events(argv: list[str]) -> int:
    from bastion.cli import events

    return events.run(argv)


def _daemon(argv: list[str]) -> int:
    from bastion.daemon import main as daemon_main

    return daemon_main.run(argv)


def _api(argv: list[str]) -> int:
    from bastion.api import main as api_main

    return api_main.run(argv)


def _version(argv: list[str]) -> int:
    if argv:
        sys.stderr.write(f"bastion version: unexpected arguments: {' '.join(argv)}\n")
        return 2
    print(f"Bastion {__version__} (reads ClamAV databases up to functionality level {FUNCTIONALITY_LEVEL}; "
          f"clamscan {CLAMAV_COMPAT_VERSION} compatible)")
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "scan": (_scan, "scan files and directories, explaining every detection"),
    "clamscan": (_clamscan, "run the clamscan-compatible front end (same options and output as clamscan)"),
    "explain": (_explain, "explain every matching signature of a file in full (text, source, bytes, logic)"),
    "sigtool": (_sigtool, "signature and database tasks (hashes, container info/unpack/build, decode)"),
    "quarantine": (_quarantine, "list, show, add, restore, delete or export quarantined files"),
    "watch": (_watch, "on-access scanning: scan files as they are opened or written (fanotify or inotify)"),
    "schedule": (_schedule, "scheduled scans: add, list, remove, run, run-due (for the systemd timer)"),
    "migrate": (_migrate, "import settings, signatures and rules from ClamAV, YARA and Loki (reads only)"),
    "db": (_db, "database versions: stage, activate, list, rollback, log, verify-log"),
    "update": (_update, "update the database from signed feeds (TUF), stage, self-test, activate by policy"),
    "feed": (_feed, "run your own signed signature feed (init, add, publish, rotate-key)"),
    "status": (_status, "the active database, its age, and each update source's health"),
    "events": (_events, "show the event log: detections, actions, errors, database changes"),
    "daemon": (_daemon, "run the clamd-compatible daemon (reads clamd.conf: -c FILE)"),
    "api": (_api, "serve the REST API (scan uploads, version, health, database, Prometheus metrics)"),
    "version": (_version, "print Bastion's version"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion", description="Bastion: an open, transparent antivirus.")
    p.add_argument("--version", action="version", version=f"Bastion {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        # No options of its own: everything after the name goes to the front end as it was typed.
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the subcommand's name is parsed here, so "--" and option order reach the front end intact.
    try:
        args = build_parser().parse_args(argv[:1])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    func, _ = COMMANDS[args.command]
    return func(argv[1:])


def main() -> None:
    try:
        code = run()
        sys.stdout.flush()
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
