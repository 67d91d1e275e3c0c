"""``bastion-clamscan``: a drop-in for ClamAV's ``clamscan``.

Same option names and meanings for what scripts use, same result lines (``path: Name FOUND``,
``path: OK``, ``path: Empty file``, ``path: Excluded``, ``path: Symbolic link``), the same
``SCAN SUMMARY`` block and exit codes (0 clean, 1 found, 2 error).  Differences that remain are
listed in the README.  Options clamscan has that Bastion does not act on yet are accepted, and named
in a warning so nobody is misled.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from bastion import CLAMAV_COMPAT_VERSION, __version__
from bastion.cli.common import SignatureError, compile_patterns, load_database, load_warnings, parse_size
from bastion.cli.runner import default_jobs, scan_entries
from bastion.cli.walker import Entry, Kind, WalkOptions, walk
from bastion.engine import Engine, ScanOptions, ScanResult

# clamscan options accepted for compatibility but not acted on yet (value-taking, flag-like).
_IGNORED_VALUE_OPTIONS = (
    "--scan-pe", "--scan-elf", "--scan-ole2", "--scan-pdf", "--scan-swf", "--scan-html", "--scan-xmldocs",
    "--scan-hwp3", "--scan-onenote", "--scan-mail", "--scan-image", "--scan-image-fuzzy-hash",
    "--alert-broken-media", "--alert-encrypted-doc", "--alert-macros", "--alert-phishing-ssl",
    "--alert-phishing-cloak", "--alert-partition-intersection", "--heuristic-alerts", "--heuristic-scan-precedence",
    "--phishing-sigs", "--phishing-scan-urls", "--bytecode", "--bytecode-unsigned", "--bytecode-timeout",
    "--statistics", "--max-dir-recursion",
    "--max-htmlnotags", "--max-scriptnormalize", "--max-ziptypercg", "--max-partitions",
    "--max-iconspe", "--max-rechwp3", "--pcre-match-limit", "--pcre-recmatch-limit", "--pcre-max-filesize",
    "--disable-cache", "--nocerts", "--dumpcerts", "--tempdir", "--leave-temps", "--gen-json",
    "--gen-mdb", "--official-db-only", "--exclude-pua", "--include-pua", "--structured-ssn-format",
    "--structured-ssn-count", "--structured-cc-count", "--structured-cc-mode", "--detect-structured",
    "--fips-limits", "--cvdcertsdir", "--normalize", "--force-to-disk", "--disable-certs", "--bell",
    "--follow-dir-symlinks", "--follow-file-symlinks",
)


@dataclass(slots=True)
class Tally:
    directories: int = 0
    files: int = 0
    infected: int = 0
    errors: int = 0
    bytes_scanned: int = 0
    bytes_read: int = 0
    had_problem: bool = False  # missing / unsupported targets: exit 2 when nothing was found


class Output:
    """Result lines to stdout (and the log); warnings to stderr unless --stdout."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quiet = args.quiet
        self.infected_only = args.infected
        self.suppress_ok = args.suppress_ok_results or args.infected
        self.err: TextIO = sys.stdout if args.stdout else sys.stderr
        self.log: TextIO | None = None
        if args.log:
            self.log = open(args.log, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def result(self, line: str, infected: bool = False, ok: bool = False) -> None:
        """A result line.  ``ok`` marks ``path: OK`` lines (hidden by -o); --quiet hides every result
        line and -i every line but detections, as clamscan does."""
        if self.log is not None:
            self.log.write(line + "\n")
        if self.quiet:
            return
        if ok and self.suppress_ok:
            return
        if self.infected_only and not infected:
            return
        sys.stdout.write(line + "\n")

    def warn(self, line: str) -> None:
        if self.log is not None:
            self.log.write(line + "\n")
        self.err.write(line + "\n")
        self.err.flush()

    def summary(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text)
        if not self.quiet:
            sys.stdout.write(text)

    def close(self) -> None:
        sys.stdout.flush()
        if self.log is not None:
            self.log.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bastion-clamscan", add_help=False,
        description="Scan files and directories for viruses (a drop-in for ClamAV's clamscan).")
    p.add_argument("-h", "--help", action="help", help="show this help and exit")
    p.add_argument("-V", "--version", action="store_true", help="print version number")
    p.add_argument("-d", "--database", action="append", default=[], metavar="FILE/DIR",
                   help="load virus database from FILE or from all supported db files in DIR")
    p.add_argument("-r", "--recursive", action="store_true", help="scan subdirectories recursively")
    p.add_argument("-i", "--infected", action="store_true", help="only print infected files")
    p.add_argument("-o", "--suppress-ok-results", action="store_true", help="skip printing OK files")
    p.add_argument("--no-summary", action="store_true", help="disable summary at end of scanning")
    p.add_argument("--stdout", action="store_true", help="write to stdout instead of stderr")
    p.add_argument("--quiet", action="store_true", help="only output error messages")
    p.add_argument("-l", "--log", metavar="FILE", help="save scan report to FILE")
    p.add_argument("-f", "--file-list", metavar="FILE", help="scan files from FILE")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="don't scan file names matching REGEX")
    p.add_argument("--exclude-dir", action="append", default=[], metavar="REGEX",
                   help="don't scan directories matching REGEX")
    p.add_argument("--include", action="append", default=[], metavar="REGEX",
                   help="only scan file names matching REGEX")
    p.add_argument("--include-dir", action="append", default=[], metavar="REGEX",
                   help="only scan directories matching REGEX")
    p.add_argument("--max-filesize", metavar="#n", default="100M",
                   help="files larger than this will be skipped and assumed clean (default 100M)")
    p.add_argument("--max-scansize", metavar="#n", default="400M",
                   help="the maximum amount of data to scan for each container file (default 400M)")
    p.add_argument("--max-files", metavar="#n", default="10000",
                   help="the maximum number of files to scan for each container file (default 10000)")
    p.add_argument("--max-recursion", metavar="#n", default="17",
                   help="maximum archive recursion level for container file (default 17)")
    p.add_argument("--max-scantime", metavar="#n", default="120000",
                   help="scan time longer than this (milliseconds) is cut short (default 120000)")
    p.add_argument("--scan-archive", nargs="?", const="yes", default="yes", metavar="yes/no",
                   help="scan archive files (default yes)")
    p.add_argument("--alert-exceeds-max", nargs="?", const="yes", default="no", metavar="yes/no",
                   help="alert on files that exceed max file size, max scan size, max files or max recursion")
    p.add_argument("--alert-encrypted", nargs="?", const="yes", default="no", metavar="yes/no",
                   help="alert on encrypted archives and documents")
    p.add_argument("--alert-encrypted-archive", nargs="?", const="yes", default="no", metavar="yes/no",
                   help="alert on encrypted archives")
    p.add_argument("--max-embeddedpe", metavar="#n", default="40M",
                   help="maximum size file to check for embedded PE (default 40M)")
    p.add_argument("--max-htmlnormalize", metavar="#n", default="40M",
                   help="maximum size of HTML file to normalize (default 40M)")
    p.add_argument("--alert-broken", nargs="?", const="yes", default="no", metavar="yes/no",
                   help="alert on broken executable files (PE & ELF)")
    p.add_argument("-z", "--allmatch", action="store_true", help="continue scanning within file after finding a match")
    p.add_argument("--detect-pua", nargs="?", const="yes", default="no", metavar="yes/no",
                   help="detect possibly unwanted applications (loads .hdu/.hsu/.ndu)")
    p.add_argument("--cross-fs", nargs="?", const="yes", default="yes", metavar="yes/no",
                   help="scan files and directories on other filesystems")
    p.add_argument("--debug", action="store_true", help="enable debug messages (database load report)")
    p.add_argument("-v", "--verbose", action="store_true", help="be verbose")
    p.add_argument("-a", "--archive-verbose", action="store_true", help="show filenames inside scanned archives")
    p.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N",
                   help="scan with N worker threads (Bastion; default: all cores)")
    p.add_argument("--move", metavar="DIRECTORY", help="move infected files into DIRECTORY")
    p.add_argument("--copy", metavar="DIRECTORY", help="copy infected files into DIRECTORY")
    p.add_argument("--remove", nargs="?", const="yes", default="no", metavar="yes/no",
                   help="remove infected files (be careful!)")
    for name in _IGNORED_VALUE_OPTIONS:
        p.add_argument(name, nargs="?", const="yes", default=None, help=argparse.SUPPRESS)
    p.add_argument("targets", nargs="*", metavar="FILE/DIR")
    return p


def _yes(value: str) -> bool:
    return value.lower() in ("yes", "y", "1", "true", "on")


def _summary(db_count: int, tally: Tally, started: float, start_wall: float) -> str:
    elapsed = time.time() - start_wall
    mb_scanned = tally.bytes_scanned / (1024 * 1024)
    mb_read = tally.bytes_read / (1024 * 1024)
    ratio = (mb_scanned / mb_read) if round(mb_read, 2) else 0.0  # clamscan prints 0.00:1 below 0.01 MB
    lines = [
        "",
        "----------- SCAN SUMMARY -----------",
        f"Known viruses: {db_count}",
        f"Engine version: {CLAMAV_COMPAT_VERSION} (Bastion {__version__})",
        f"Scanned directories: {tally.directories}",
        f"Scanned files: {tally.files}",
        f"Infected files: {tally.infected}",
    ]
    if tally.errors:
        lines.append(f"Total errors: {tally.errors}")
    lines += [
        f"Data scanned: {mb_scanned:.2f} MB",
        f"Data read: {mb_read:.2f} MB (ratio {ratio:.2f}:1)",
        f"Time: {elapsed:.3f} sec ({int(elapsed) // 60} m {int(elapsed) % 60} s)",
        f"Start Date: {time.strftime('%Y:%m:%d %H:%M:%S', time.localtime(start_wall))}",
        f"End Date:   {time.strftime('%Y:%m:%d %H:%M:%S', time.localtime())}",
    ]
    return "\n".join(lines) + "\n"


def _report_result(out: Output, tally: Tally, name: str, res: ScanResult) -> None:
    if res.error:
        if res.error == "Not a regular file":
            out.warn(f"WARNING: {name}: Not supported file type")
            tally.had_problem = True
        elif res.errno == errno.ENOENT:  # vanished between the walk and the scan
            tally.had_problem = True
            out.warn(f"{name}: {res.error}")
            out.warn(f"WARNING: {name}: Can't access file")
        elif res.errno in (errno.EACCES, errno.EPERM):
            tally.errors += 1
            out.result(f"{name}: Access denied")
        else:
            tally.errors += 1
            out.result(f"{name}: {res.error} ERROR")
        return
    if res.size == 0 and res.skipped is None:
        if name == "stdin":  # clamscan scans an empty stream and calls it clean
            tally.files += 1
            out.result(f"{name}: OK", ok=True)
            return
        out.result(f"{name}: Empty file")
        return
    tally.files += 1
    tally.bytes_read += res.size
    tally.bytes_scanned += res.bytes_scanned
    if res.detections:
        tally.infected += 1
        for det in res.detections:
            out.result(f"{name}: {det.name} FOUND", infected=True)
    else:
        out.result(f"{name}: OK", ok=True)


def _handle_entry(out: Output, tally: Tally, entry: Entry, res: ScanResult | None) -> None:
    kind = entry.kind
    if kind is Kind.FILE and res is not None:
        _report_result(out, tally, entry.path, res)
    elif kind is Kind.DIRECTORY:
        tally.directories += 1
    elif kind is Kind.EXCLUDED:
        out.result(f"{entry.path}: Excluded")
    elif kind is Kind.SYMLINK:
        out.result(f"{entry.path}: Symbolic link")
    elif kind is Kind.UNSUPPORTED:
        tally.had_problem = True
        out.warn(f"WARNING: {entry.path}: Not supported file type")
    elif kind is Kind.MISSING:
        tally.had_problem = True
        out.warn(f"{entry.path}: {entry.detail}")
        out.warn(f"WARNING: {entry.path}: Can't access file")
    elif kind is Kind.ERROR:
        tally.errors += 1
        out.warn(f"ERROR: {entry.path}: {entry.detail}")


def _action_setup(args: argparse.Namespace, out: Output) -> tuple[str, str] | None | bool:
    """The action the user asked for, as clamscan picks one: --move, else --copy, else --remove.
    False (after clamscan's message) when its directory does not exist."""
    for kind, value in (("move", args.move), ("copy", args.copy)):
        if value:
            if not os.path.isdir(value):
                out.result(f"action_setup: Failed to get realpath of {value}")
                return False
            return kind, os.path.realpath(value)
    return ("remove", "") if _yes(args.remove) else None


def _act(out: Output, action: tuple[str, str], path: str) -> None:
    from bastion import events
    from bastion.quarantine import actions

    kind, directory = action
    real = os.path.realpath(path)
    shown = path if real == path else f"{path} (real path: '{real}')"
    try:
        if kind == "move":
            out.result(f"{shown}: moved to '{actions.move_to(path, directory)}'", infected=True)
        elif kind == "copy":
            out.result(f"{shown}: copied to '{actions.copy_to(path, directory)}'", infected=True)
        else:
            actions.remove(path)
            out.result(f"{shown}: Removed.", infected=True)
    except (OSError, actions.ActionError) as exc:
        out.warn(f"ERROR: Can't {kind} file '{real}': {exc}")
        events.record(kind, f"could not {kind} {real}: {exc}", outcome="failure", path=real)
        return
    events.record(kind, f"{real}: {kind} done ({'bastion-clamscan --' + kind})", path=real,
                  destination=directory or None)


def _scan_stdin(engine: Engine, max_filesize: int) -> ScanResult:
    """Read stdin up to the size limit (the rest is drained, never held) and scan it."""
    stream = sys.stdin.buffer
    data = stream.read(max_filesize + 1)
    if len(data) > max_filesize:
        total = len(data)
        while chunk := stream.read(1 << 20):
            total += len(chunk)
        return ScanResult(name="stdin", size=total, skipped="max-filesize")
    return engine.scan_bytes(data, "stdin")


def _debug_report(db: object, out: Output) -> None:
    from bastion.database.compiled import Database

    assert isinstance(db, Database)
    rep = db.report
    out.warn(f"Bastion debug: database {db.version[:16]} ({'cache' if db.from_cache else 'compiled'}, "
             f"{db.load_seconds:.3f}s)")
    for path in rep.loaded_files:
        out.warn(f"Bastion debug: loaded {path}")
    for path, why in rep.skipped_files:
        out.warn(f"Bastion debug: not loaded {path}: {why}")
    for path, line, reason in rep.yara_errors:
        out.warn(f"Bastion debug: YARA file {path}:{line} left out: {reason}")
    for c in rep.containers:
        out.warn(f"Bastion debug: container {c['path']}: {c['name']} version {c['version']}, {c['signatures']} "
                 f"signatures, FL {c['functionality_level']}, built {c['build_time']} by {c['builder']}; "
                 f"{c['verification']}")
    out.warn(f"Bastion debug: {db.signature_count} signatures; skipped by functionality level "
             f"{rep.skipped_by_flevel}, by target type {rep.skipped_by_target}, ignored by name "
             f"{rep.ignored_by_name}, macro members {rep.macro_members}; body matcher modes "
             f"{db.bodies.mode_counts()}; logical {len(db.logical)}")
    for kind, count in sorted(rep.not_enforced.items()):
        out.warn(f"Bastion debug: {count} {kind} line(s) loaded but not enforced yet")


def _normalize_optional_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """clamscan's ``--opt[=yes/no]`` options take a value only after ``=``: ``--alert-exceeds-max FILE``
    scans FILE.  argparse would take FILE as the value, so a bare flag becomes ``--flag=yes``."""
    optional = {s for a in parser._actions if a.nargs == "?" for s in a.option_strings}
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        out.append(f"{arg}=yes" if arg in optional else arg)
    return out


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_normalize_optional_values(parser, list(sys.argv[1:] if argv is None else argv)))
    if args.version:
        print(f"ClamAV {CLAMAV_COMPAT_VERSION} (Bastion {__version__})")
        return 0
    out = Output(args)
    try:
        return _run(args, out)
    finally:
        out.close()


def _run(args: argparse.Namespace, out: Output) -> int:
    action = _action_setup(args, out)
    if action is False:
        return 2
    used_ignored = [n for n in _IGNORED_VALUE_OPTIONS if getattr(args, n[2:].replace("-", "_")) is not None]
    if used_ignored and not args.quiet:
        out.warn(f"WARNING: accepted but not acted on by Bastion yet: {', '.join(used_ignored)}")
    try:
        max_filesize = parse_size(args.max_filesize) or (1 << 62)
        max_scansize = parse_size(args.max_scansize) or (1 << 62)
        max_files = int(args.max_files) or (1 << 62)
        max_recursion = int(args.max_recursion) or (1 << 62)
        max_scantime = (int(args.max_scantime) / 1000) or float(1 << 40)
        max_htmlnormalize = parse_size(args.max_htmlnormalize) or (1 << 62)
        max_embeddedpe = parse_size(args.max_embeddedpe) or (1 << 62)
        walk_opts = WalkOptions(
            recursive=args.recursive,
            exclude=compile_patterns(args.exclude, "--exclude"),
            exclude_dir=compile_patterns(args.exclude_dir, "--exclude-dir"),
            include=compile_patterns(args.include, "--include"),
            include_dir=compile_patterns(args.include_dir, "--include-dir"),
            cross_fs=_yes(args.cross_fs),
        )
    except ValueError as exc:
        out.warn(f"ERROR: {exc}")
        return 2
    start_wall = time.time()
    started = time.perf_counter()
    try:
        db = load_database(args.database, pua=_yes(args.detect_pua))
    except SignatureError as exc:
        out.warn(f"ERROR: Can't load database: {exc}")
        return 2
    if args.debug:
        _debug_report(db, out)
    elif not args.quiet:
        for line in load_warnings(db):
            out.warn(f"WARNING: {line}")
    engine = Engine(db, ScanOptions(
        allmatch=args.allmatch, max_filesize=max_filesize, max_scansize=max_scansize, max_files=max_files,
        max_recursion=max_recursion, max_scantime=max_scantime, scan_archives=_yes(args.scan_archive),
        alert_exceeds_max=_yes(args.alert_exceeds_max),
        alert_encrypted=_yes(args.alert_encrypted) or _yes(args.alert_encrypted_archive),
        alert_broken=_yes(args.alert_broken), max_htmlnormalize=max_htmlnormalize,
        max_embeddedpe=max_embeddedpe))
    targets = list(args.targets)
    if args.file_list:
        try:
            with open(args.file_list, encoding="utf-8", errors="surrogateescape") as fh:
                targets += [line.rstrip("\n") for line in fh if line.strip()]
        except OSError as exc:
            out.warn(f"ERROR: --file-list: {args.file_list}: {exc.strerror}")
            return 2
    elif not targets:
        targets = [os.getcwd()]
    tally = Tally()
    if targets == ["-"]:
        _report_result(out, tally, "stdin", _scan_stdin(engine, max_filesize))
    else:
        entries = walk([t for t in targets if t != "-"], walk_opts)
        for entry, res in scan_entries(engine, entries, max(1, args.jobs)):
            _handle_entry(out, tally, entry, res)
            if action and res is not None and res.detections:
                _act(out, action, entry.path)
    if not args.no_summary:
        out.summary(_summary(db.signature_count, tally, started, start_wall))
    if tally.infected:
        return 1
    if tally.errors or tally.had_problem:
        return 2
    return 0


def main() -> None:
    try:
        code = run()
    except KeyboardInterrupt:
        code = 2
    except BrokenPipeError:
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
