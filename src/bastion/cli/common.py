"""What both command-line front ends share: loading the database with a clear error, sizes."""

from __future__ import annotations

import argparse
import re

from bastion.database.compiled import Database, open_database
from bastion.signatures.errors import SignatureError

_SIZE = re.compile(r"(\d+)([kKmMgG]?)")


def parse_size(text: str) -> int:
    """clamscan's size syntax: a number with an optional K or M (G accepted) suffix."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"invalid size {text!r}")
    unit = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(m.group(1)) * unit


def compile_patterns(patterns: list[str], option: str) -> list[re.Pattern[str]]:
    """The regexes of --exclude/--include style options; a bad one is a ValueError naming the option."""
    out = []
    for text in patterns:
        try:
            out.append(re.compile(text))
        except re.error as exc:
            raise ValueError(f"{option}: bad regular expression {text!r}: {exc}") from None
    return out


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code when argparse stopped (``--help``: 0, a usage error: 2,
    already reported), so that a front end's ``run`` returns instead of exiting."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def load_database(paths: list[str] | None, pua: bool = False, rules: list[str] | None = None,
                  yara_strict: bool = False) -> Database:
    """Load or fail with :class:`SignatureError` (``file:line: reason``); never a partial database."""
    return open_database(paths or None, pua=pua, rules=rules, yara_strict=yara_strict)


def load_warnings(db: Database) -> list[str]:
    """What a front end should tell about the load: files left out, lines not enforced, YARA errors."""
    out = []
    unsupported = [(p, why) for p, why in db.report.skipped_files if not why.startswith("PUA")]
    if unsupported:
        listed = "; ".join(f"{p} ({why})" for p, why in unsupported)
        out.append(f"{len(unsupported)} database file(s) not loaded: {listed}")
    for path, line, reason in db.report.yara_errors:
        out.append(f"YARA rules in {path}:{line} rejected by yara-x and left out: {reason}")
    return out


__all__ = ["Database", "SignatureError", "compile_patterns", "load_database", "parse_size"]
