"""``bastion scan``: the friendly front end.

Recursive by default, coloured detections with their evidence (signature, source file and line,
offset), a summary panel, a progress bar on a terminal, and ``--json`` (JSON Lines) for scripts.
Exit codes are clamscan's: 0 nothing found, 1 something found, 2 errors only.

JSON Lines (``--json``): one object per scanned object, in input order, with exactly the keys
``path``, ``verdict`` (``clean``/``infected``/``error``/``skipped``), ``file_type``, ``size``,
``sha256``, ``detections`` and ``error``; targets that cannot be scanned (missing, unreadable
directory, not a regular file) come as ``error`` objects.  Excluded objects and symlinks met inside
a walk are not listed, only counted (``excluded``).  The last line is ``{"type": "summary", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from rich import filesize
from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from bastion import events
from bastion.cli.common import SignatureError, compile_patterns, load_database, load_warnings, parse_size
from bastion.cli.runner import default_jobs, scan_entries
from bastion.cli.walker import Entry, Kind, WalkOptions, walk
from bastion.database.compiled import Database
from bastion.engine import Detection, Engine, ScanOptions, ScanResult


@dataclass(slots=True)
class Tally:
    clean: int = 0
    infected: int = 0
    errors: int = 0
    skipped: int = 0
    excluded: int = 0
    bytes_read: int = 0
    bytes_scanned: int = 0

    @property
    def scanned(self) -> int:
        return self.clean + self.infected

    def exit_code(self) -> int:
        if self.infected:
            return 1
        return 2 if self.errors else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bastion scan",
        description="Scan files and directories (recursively by default) and explain every detection.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to scan")
    p.add_argument("-d", "--database", action="append", default=[], metavar="DB",
                   help="signature file or directory (repeatable; default: installed or built-in database)")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines on stdout: one object per file, then a summary")
    p.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N",
                   help="worker threads (default: all cores)")
    p.add_argument("-r", "--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="descend into subdirectories (default; --no-recursive: only the first level)")
    p.add_argument("--exclude", action="append", default=[], metavar="RE",
                   help="skip files whose path matches the regular expression (repeatable)")
    p.add_argument("--exclude-dir", action="append", default=[], metavar="RE",
                   help="skip directories whose path matches the regular expression (repeatable)")
    p.add_argument("-z", "--allmatch", action="store_true",
                   help="report every matching signature, not only the first")
    p.add_argument("--max-filesize", default="100M", metavar="SIZE",
                   help="skip files larger than SIZE (K/M/G suffixes; 0: no limit; default 100M)")
    p.add_argument("--max-scansize", default="400M", metavar="SIZE",
                   help="scan at most SIZE bytes of each file (0: no limit; default 400M)")
    p.add_argument("--rules", action="append", default=[], metavar="PATH",
                   help="YARA rule file or directory (recursive) to use on top of the database (repeatable)")
    p.add_argument("--yara-strict", action="store_true",
                   help="stop if a YARA file does not compile (default: report it and load the rest)")
    p.add_argument("--max-files", type=int, default=10_000, metavar="N",
                   help="scan at most N members of each container file (default 10000)")
    p.add_argument("--max-recursion", type=int, default=17, metavar="N",
                   help="open containers nested at most N deep (default 17)")
    p.add_argument("--no-archives", action="store_true", help="do not look inside archives and compressed files")
    p.add_argument("--alert-exceeds-max", action="store_true",
                   help="report files whose scan a limit cut short as Heuristics.Limits.Exceeded.*")
    p.add_argument("--alert-encrypted", action="store_true",
                   help="report encrypted archive members as Heuristics.Encrypted.*")
    p.add_argument("--alert-broken", action="store_true",
                   help="report PE/ELF files with broken headers as Heuristics.Broken.Executable")
    p.add_argument("--detect-pua", action="store_true",
                   help="also load signatures for possibly unwanted applications")
    p.add_argument("--move-to-quarantine", action="store_true",
                   help="move each infected file into the quarantine (encrypted, restorable: bastion quarantine)")
    p.add_argument("--quarantine-dir", default=None, metavar="DIR", help="the quarantine to use")
    p.add_argument("--dry-run", action="store_true", help="say what --move-to-quarantine would do, change nothing")
    p.add_argument("--no-progress", action="store_true", help="never show the progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="also list clean and excluded files")
    p.add_argument("-q", "--quiet", action="store_true", help="only print detections and errors")
    return p


# ----------------------------------------------------------------------------------------- JSON
def _detection_json(det: Detection, path: str) -> dict[str, Any]:
    ev = det.evidence
    return {
        "name": det.name,
        "kind": ev.kind,
        "source": ev.source,
        "line": ev.line,
        "offsets": list(ev.offsets),
        "normalized": ev.normalized,
        "pattern": ev.pattern,
        "db_version": ev.db_version,
        "container_path": ev.container_path or path,
        **({"subsig_counts": list(ev.subsig_counts)} if ev.kind == "logical" else {}),
        **({"yara": _yara_json(ev.meta)} if ev.kind == "yara" else {}),
    }


def _yara_json(meta: tuple[tuple[str, object], ...]) -> dict[str, Any]:
    info = dict(meta)
    return {
        "namespace": info.get("namespace"),
        "tags": list(info.get("tags", ())),  # type: ignore[call-overload]
        "metadata": {k: v for k, v in info.get("metadata", ())},  # type: ignore[attr-defined]
        "strings": {ident: list(offs) for ident, offs in info.get("strings", ())},  # type: ignore[attr-defined]
    }


def _verdict(res: ScanResult) -> str:
    if res.skipped and not res.detections and not res.error:
        return "skipped"
    return res.verdict


def _result_json(path: str, res: ScanResult) -> dict[str, Any]:
    return {
        "path": path,
        "verdict": _verdict(res),
        "file_type": res.file_type or None,
        "size": res.size,
        "sha256": res.sha256,
        "detections": [_detection_json(d, path) for d in res.detections],
        "error": res.error,
        "limits": res.limits,
    }


def _entry_error_json(entry: Entry) -> dict[str, Any]:
    return {"path": entry.path, "verdict": "error", "file_type": None, "size": None, "sha256": None,
            "detections": [], "error": entry.detail or "cannot be scanned", "limits": {}}


# ------------------------------------------------------------------------------- human output
def _shown(path: str) -> str:
    """A path that can always be printed (undecodable bytes of a file name as escapes)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _evidence_text(det: Detection, path: str) -> str:
    ev = det.evidence
    if ev.kind == "body" and ev.offsets:
        word = "offset" if len(ev.offsets) == 1 else "offsets"
        what = f"body @ {word} {', '.join(str(o) for o in ev.offsets)}"
        if ev.normalized:
            what += " of the normalized text"
    elif ev.kind == "yara":
        what = "YARA rule" + (f" @ offsets {', '.join(str(o) for o in ev.offsets[:4])}" if ev.offsets else "")
    elif ev.kind == "logical":
        fired = sum(1 for c in ev.subsig_counts if c)
        what = f"logical, {fired} of {len(ev.subsig_counts)} subsignatures matched"
        if ev.offsets:
            what += f", first @ offset {min(ev.offsets)}"
    else:
        what = ev.kind
    where = f"source {ev.source}:{ev.line}" if ev.line else f"source {ev.source}"
    inside = f", in {ev.container_path}" if ev.container_path and ev.container_path != path else ""
    return f"({what}, {where}{inside})"


def _tag(label: str, style: str) -> Text:
    return Text(f"{label:<8}", style=style)


class Human:
    """Coloured result lines on stdout (through the progress console while a bar is showing)."""

    def __init__(self, verbose: bool, quiet: bool) -> None:
        self.verbose = verbose and not quiet
        self.quiet = quiet
        self.console = Console(highlight=False, soft_wrap=True)
        self.live: Console | None = None

    def _print(self, text: Text) -> None:
        (self.live or self.console).print(text)

    def line(self, label: str, style: str, path: str, *rest: tuple[str, str]) -> None:
        text = _tag(label, style)
        text.append(" ")
        text.append(_shown(path))
        for part, part_style in rest:
            if not part:
                continue
            text.append("  ")
            text.append(part, style=part_style)
        self._print(text)

    def result(self, path: str, res: ScanResult) -> None:
        if res.detections:
            for det in res.detections:
                self.line("INFECTED", "bold red", path, (det.name, "bold"),
                          (_evidence_text(det, path), "dim"))
        elif res.error:
            self.line("ERROR", "bold magenta", path, (res.error, "magenta"))
        elif res.skipped:
            if not self.quiet:
                self.line("SKIPPED", "yellow", path, (f"larger than --{res.skipped}", "yellow"))
        elif self.verbose:
            extra = f"allowed by {res.allowed_by}" if res.allowed_by else ""
            self.line("OK", "green", path, (extra, "dim"))

    def action(self, path: str, action: dict[str, Any]) -> None:
        if action["outcome"] == "quarantined":
            self.line("MOVED", "bold cyan", path, (f"to quarantine as {action['id'][:12]}", "cyan"),
                      ("restore: bastion quarantine restore " + action["id"][:12], "dim"))
        elif action["outcome"] == "would quarantine":
            self.line("DRY-RUN", "cyan", path, ("would move to quarantine", "cyan"))
        else:
            self.line("ERROR", "bold magenta", path, (action["error"], "magenta"))

    def entry(self, entry: Entry) -> None:
        kind = entry.kind
        if kind in (Kind.MISSING, Kind.ERROR, Kind.UNSUPPORTED):
            self.line("ERROR", "bold magenta", entry.path, (entry.detail or "cannot be scanned", "magenta"))
        elif self.verbose and kind is Kind.EXCLUDED:
            self.line("EXCLUDED", "dim", entry.path)
        elif self.verbose and kind is Kind.SYMLINK:
            self.line("SYMLINK", "dim", entry.path, ("not followed", "dim"))

    def summary(self, db: Database, tally: Tally, elapsed: float) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        how = "cached" if db.from_cache else "compiled"
        grid.add_row("Database", f"{db.signature_count} signatures from {len(db.live_sources)} sources "
                                 f"({how}, loaded in {db.load_seconds:.2f} s)")
        grid.add_row("Files scanned", str(tally.scanned))
        grid.add_row("Data read", filesize.decimal(tally.bytes_read))
        grid.add_row("Infected", Text(str(tally.infected), style="bold red" if tally.infected else "green"))
        grid.add_row("Errors", Text(str(tally.errors), style="magenta" if tally.errors else ""))
        grid.add_row("Skipped", str(tally.skipped))
        if tally.excluded:
            grid.add_row("Excluded", str(tally.excluded))
        grid.add_row("Elapsed", f"{elapsed:.2f} s")
        rate = tally.bytes_read / elapsed if elapsed > 0 else 0.0
        grid.add_row("Throughput", f"{rate / 1e6:.1f} MB/s")
        style = "red" if tally.infected else ("magenta" if tally.errors else "green")
        self.console.print(Panel.fit(grid, title="Bastion scan summary", border_style=style))


# ----------------------------------------------------------------------------------- progress
class _Counter(threading.Thread):
    """Counts the files and bytes a walk will meet (stat only), so the bar can show totals and an ETA."""

    def __init__(self, targets: list[str], opts: WalkOptions, progress: Progress, task: TaskID) -> None:
        super().__init__(name="bastion-count", daemon=True)
        self.targets, self.opts, self.progress, self.task = targets, opts, progress, task
        self.stop = threading.Event()

    def run(self) -> None:
        files = total = 0
        for entry in walk(self.targets, self.opts):
            if self.stop.is_set():
                return
            if entry.kind is Kind.FILE:
                try:
                    total += os.stat(entry.path).st_size
                except OSError:
                    continue
                files += 1
        if not self.stop.is_set():
            self.progress.update(self.task, total=total, total_files=str(files))


def _make_progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[files]}/{task.fields[total_files]} files"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )


# ------------------------------------------------------------------------------------ the scan
def _warn(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def run(argv: list[str] | None = None) -> int:
    """Run ``bastion scan`` with ``argv`` (the arguments after ``scan``); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already reported
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        max_filesize = parse_size(args.max_filesize) or (1 << 62)
        max_scansize = parse_size(args.max_scansize) or (1 << 62)
        walk_opts = WalkOptions(recursive=args.recursive,
                                exclude=compile_patterns(args.exclude, "--exclude"),
                                exclude_dir=compile_patterns(args.exclude_dir, "--exclude-dir"))
    except ValueError as exc:
        _warn(f"error: {exc}")
        return 2
    try:
        db = load_database(args.database, pua=args.detect_pua, rules=args.rules, yara_strict=args.yara_strict)
    except SignatureError as exc:
        _warn(f"error: {exc}")
        return 2
    if not args.quiet:
        for line in load_warnings(db):
            _warn(f"warning: {line}")
        for kind, count in sorted(db.report.not_enforced.items()):
            _warn(f"note: {count} {kind} line(s) loaded but not enforced yet")
    engine = Engine(db, ScanOptions(allmatch=args.allmatch, max_filesize=max_filesize,
                                    max_scansize=max_scansize, want_sha256=args.json, max_files=args.max_files,
                                    max_recursion=args.max_recursion, scan_archives=not args.no_archives,
                                    alert_exceeds_max=args.alert_exceeds_max, alert_encrypted=args.alert_encrypted,
                                    alert_broken=args.alert_broken))
    quarantiner = None
    if args.move_to_quarantine:
        try:
            quarantiner = _Quarantiner(args.quarantine_dir, args.dry_run, db.version)
        except OSError as exc:
            _warn(f"error: quarantine: {exc}")
            return 2
    elif args.dry_run:
        _warn("note: --dry-run has nothing to do without --move-to-quarantine (a scan only reports)")
    show_progress = not (args.json or args.no_progress) and sys.stderr.isatty()
    human = None if args.json else Human(args.verbose, args.quiet)
    tally = Tally()
    started = time.perf_counter()
    entries = walk(list(args.paths), walk_opts)
    results = scan_entries(engine, entries, max(1, args.jobs))
    if show_progress:
        assert human is not None
        progress = _make_progress()
        task = progress.add_task("scan", total=None, files=0, total_files="?")
        counter = _Counter(list(args.paths), walk_opts, progress, task)
        if sys.stdout.isatty():
            human.live = progress.console  # results print above the bar, on the same terminal
        with progress:
            counter.start()
            done = 0
            try:
                for entry, res in results:
                    _handle(entry, res, tally, human, quarantiner)
                    if res is not None:
                        done += 1
                        progress.update(task, advance=res.size, files=done)
            finally:
                counter.stop.set()
        human.live = None
    else:
        for entry, res in results:
            _handle(entry, res, tally, human, quarantiner)
    elapsed = time.perf_counter() - started
    if human is None:
        summary = {
            "type": "summary", "files": tally.scanned, "clean": tally.clean, "infected": tally.infected,
            "errors": tally.errors, "skipped": tally.skipped, "excluded": tally.excluded,
            "bytes": tally.bytes_read, "bytes_scanned": tally.bytes_scanned, "elapsed": round(elapsed, 6),
            "signatures": db.signature_count, "db_version": db.version, "exit_code": tally.exit_code(),
        }
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    elif not args.quiet:
        human.summary(db, tally, elapsed)
    return tally.exit_code()


class _Quarantiner:
    """--move-to-quarantine: the only action ``bastion scan`` takes on a file, and only when asked."""

    def __init__(self, directory: str | None, dry_run: bool, db_version: str) -> None:
        from bastion.quarantine import Quarantine

        self.dry_run = dry_run
        self.db_version = db_version
        self.store = None if dry_run else Quarantine(directory)

    def act(self, path: str, res: ScanResult) -> dict[str, Any]:
        from bastion.quarantine import QuarantineError

        names = ", ".join(d.name for d in res.detections)
        if self.store is None:
            return {"action": "quarantine", "dry_run": True, "outcome": "would quarantine"}
        try:
            item = self.store.add(path, verdict="infected", signature=names, db_version=self.db_version)
        except QuarantineError as exc:
            return {"action": "quarantine", "outcome": "failed", "error": str(exc)}
        return {"action": "quarantine", "outcome": "quarantined", "id": item.id}


def _handle(entry: Entry, res: ScanResult | None, tally: Tally, human: Human | None,
            quarantiner: _Quarantiner | None = None) -> None:
    if res is not None:
        verdict = _verdict(res)
        if verdict == "infected":
            events.record_detections(entry.path, res, "bastion scan")
        elif verdict == "error":
            events.record("scan-error", f"{entry.path}: {res.error}", outcome="failure", path=entry.path,
                          process="bastion scan")
        action = quarantiner.act(entry.path, res) if quarantiner and verdict == "infected" else None
        if action and action["outcome"] == "failed":
            events.record("quarantine", action["error"], outcome="failure", path=entry.path)
            tally.errors += 1
        if verdict == "infected":
            tally.infected += 1
        elif verdict == "error":
            tally.errors += 1
        elif verdict == "skipped":
            tally.skipped += 1
        else:
            tally.clean += 1
        if verdict in ("infected", "clean"):
            tally.bytes_read += res.size
            tally.bytes_scanned += res.bytes_scanned
        if human is None:
            shown = _result_json(entry.path, res)
            if action:
                shown["action"] = action
            sys.stdout.write(json.dumps(shown) + "\n")
        else:
            human.result(entry.path, res)
            if action:
                human.action(entry.path, action)
        return
    kind = entry.kind
    if kind in (Kind.MISSING, Kind.ERROR, Kind.UNSUPPORTED):
        tally.errors += 1
        events.record("scan-error", f"{entry.path}: {entry.detail or kind.value}", outcome="failure",
                      path=entry.path, process="bastion scan")
        if human is None:
            sys.stdout.write(json.dumps(_entry_error_json(entry)) + "\n")
    elif kind in (Kind.EXCLUDED, Kind.SYMLINK):
        tally.excluded += 1
    if human is not None:
        human.entry(entry)
