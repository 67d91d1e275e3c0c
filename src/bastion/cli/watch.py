"""``bastion watch PATH...``: scan files as they are opened or written (on-access scanning).

It says which mode it runs in: fanotify (opens of infected files are blocked; needs root with
CAP_SYS_ADMIN) or inotify (files are scanned after writing; anyone).  Report-only unless
``--move-to-quarantine`` is given.  Stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from bastion import events
from bastion.cli.common import SignatureError, load_database, parse_command_line, parse_size
from bastion.engine import Engine, ScanOptions, ScanResult
from bastion.watch.watcher import Watcher, WatchOptions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion watch", description="Scan files as they are opened or written.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="directory trees to watch")
    p.add_argument("-d", "--database", action="append", default=[], metavar="DB")
    p.add_argument("--mode", choices=["auto", "fanotify", "inotify"], default="auto",
                   help="auto: fanotify where permitted, else inotify")
    p.add_argument("--no-block", action="store_true", help="fanotify: report infected files, do not deny opens")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="fanotify: allow any open not answered in this time (fail-open; default 5)")
    p.add_argument("--max-filesize", default="5M", metavar="SIZE", help="larger files are not scanned (default 5M)")
    p.add_argument("--allow-program", action="append", default=[], metavar="EXE",
                   help="fanotify: never hold opens by this executable (repeatable)")
    p.add_argument("--allow-uid", action="append", default=[], type=int, metavar="UID",
                   help="fanotify: never hold opens by processes of this user (repeatable)")
    p.add_argument("--threads", type=int, default=4, metavar="N")
    p.add_argument("--daemon", default=None, metavar="SOCKET",
                   help="daemon mode: scan through the clamd-protocol daemon on this unix socket (its loaded "
                        "database, files passed by descriptor) instead of loading a database here")
    p.add_argument("--move-to-quarantine", action="store_true", help="move infected files into the quarantine")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("-v", "--verbose", action="store_true", help="also report every clean file scanned")
    return p


class _Output:
    def __init__(self, args: argparse.Namespace) -> None:
        self.json = args.json
        self.verbose = args.verbose
        self.lock = threading.Lock()
        self.quarantine = None
        if args.move_to_quarantine:
            from bastion.quarantine import Quarantine

            self.quarantine = Quarantine()

    def emit(self, doc: dict[str, Any], text: str) -> None:
        with self.lock:
            sys.stdout.write((json.dumps(doc) if self.json else text) + "\n")
            sys.stdout.flush()

    def __call__(self, what: str, path: str, result: ScanResult | None) -> None:
        if what == "clean":
            if self.verbose:
                self.emit({"type": "clean", "path": path}, f"OK       {path}")
            return
        if what == "infected" and result is not None:
            names = [d.name for d in result.detections]
            events.record_detections(path, result, "bastion watch")
            self.emit({"type": "infected", "path": path, "detections": names},
                      f"INFECTED {path}  {', '.join(names)}")
            if self.quarantine is not None:
                self._quarantine(path, ", ".join(names))
            return
        self.emit({"type": what, "path": path}, f"{what.upper():<8} {path}")

    def _quarantine(self, path: str, names: str) -> None:
        from bastion.quarantine import QuarantineError

        assert self.quarantine is not None
        with self.lock:
            try:
                item = self.quarantine.add(path, signature=names)
            except QuarantineError as exc:
                sys.stdout.write(json.dumps({"type": "error", "path": path, "error": str(exc)}) + "\n"
                                 if self.json else f"ERROR    {path}  {exc}\n")
                return
        self.emit({"type": "quarantined", "path": path, "id": item.id},
                  f"MOVED    {path}  to quarantine as {item.id[:12]}")


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    engine = None
    try:
        max_filesize = parse_size(args.max_filesize) or (1 << 62)
        if args.daemon is None:
            engine = Engine(load_database(args.database), ScanOptions())
    except (SignatureError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.daemon is not None:
        from bastion import clamd_client

        if not clamd_client.ping(args.daemon):
            sys.stderr.write(f"error: no clamd-protocol daemon answers on {args.daemon}\n")
            return 2
    opts = WatchOptions(paths=args.paths, mode=args.mode, block=not args.no_block, timeout=args.timeout,
                        max_filesize=max_filesize, allow_programs=args.allow_program, allow_uids=args.allow_uid,
                        threads=max(1, args.threads),
                        daemon_socket=args.daemon)
    out = _Output(args)
    try:
        watcher = Watcher(engine, opts, out)
    except OSError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    through = f"; scanning through the daemon on {args.daemon}" if args.daemon else ""
    sys.stderr.write(f"bastion watch: mode {watcher.mode}: {watcher.why}{through}\n")
    sys.stderr.flush()

    def stop(*_: object) -> None:
        watcher.stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        watcher.run()
    except SystemExit:
        pass
    sys.stderr.write(f"bastion watch: stopped after scanning {watcher.scanned} files\n")
    return 0
