"""``bastion explain FILE...``: why each signature matched, in full.

For every detection (all of them: the scan runs with ``--allmatch``): the signature's full text, its
source (file, line, database version, and for a signature from a ``.cvd``/``.cld``/``.cud`` the
container's name, version, builder and how it was verified; a warning if the file changed since the
database was compiled),
the matched bytes at each offset, and for logical signatures each subsignature with its match count
and first offset and how the expression evaluated.  ``--json`` prints the same as one JSON object per
file.  Exit codes as ``bastion scan``: 0 clean, 1 something matched, 2 an error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

from bastion.cli.common import SignatureError, load_database, parse_command_line
from bastion.database.compiled import Database
from bastion.engine import Detection, Engine, ScanOptions, ScanResult
from bastion.signatures.ldb import split_fields
from bastion.signatures.logic import describe, parse_expression

SHOWN_BYTES = 32


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion explain",
                                description="Scan files and explain every matching signature in full.")
    p.add_argument("files", nargs="+", metavar="FILE", help="files to explain")
    p.add_argument("-d", "--database", action="append", default=[], metavar="DB",
                   help="signature file or directory (repeatable; default: installed or built-in database)")
    p.add_argument("--detect-pua", action="store_true", help="also load PUA signatures")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    return p


class _Sources:
    """Reads signature lines back from their files, and tells whether a file changed since compile."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lines: dict[str, list[str] | None] = {}
        self._changed: dict[str, bool] = {}

    def line(self, path: str, number: int) -> str | None:
        if path not in self._lines:
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                self._lines[path] = data.decode("latin-1").split("\n")
                want = next((s.sha256 for s in self.db.live_sources if s.path == path), None)
                self._changed[path] = want is not None and hashlib.sha256(data).hexdigest() != want
            except OSError:
                self._lines[path] = None
        lines = self._lines[path]
        if lines is None or not 0 < number <= len(lines):
            return None
        return lines[number - 1].rstrip("\r")

    def changed(self, path: str) -> bool:
        return self._changed.get(path, False)


def _bytes_at(data: bytes, offset: int) -> dict[str, str]:
    chunk = data[offset:offset + SHOWN_BYTES]
    return {"offset": str(offset), "hex": chunk.hex(" "),
            "text": "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)}


def _logical_parts(text: str, counts: tuple[int, ...], offsets: tuple[int, ...]) -> dict[str, Any]:
    fields = split_fields(text)
    subsigs = fields[3:]
    tree = parse_expression(fields[2])
    # the evidence lists the first offset of each subsignature that matched, in subsignature order
    firsts = iter(offsets)
    return {
        "target_description": fields[1],
        "expression": fields[2],
        "expression_grouped": describe(tree),
        "subsignatures": [{"index": i, "text": sub, "matches": counts[i] if i < len(counts) else 0,
                           "first_offset": next(firsts, None) if i < len(counts) and counts[i] else None}
                          for i, sub in enumerate(subsigs)],
    }


def explain_detection(det: Detection, data: bytes, sources: _Sources) -> dict[str, Any]:
    ev = det.evidence
    line = sources.line(ev.source, ev.line) if ev.line else None
    out: dict[str, Any] = {
        "name": det.name, "kind": ev.kind, "source": ev.source, "line": ev.line, "db_version": ev.db_version,
        "signature": line if line is not None else ev.pattern,
        "source_changed_since_compile": sources.changed(ev.source),
        "normalized": ev.normalized,
        "matched": [_bytes_at(data, o) for o in ev.offsets] if not ev.normalized else [],
        "offsets": list(ev.offsets),
    }
    container = next((c for c in sources.db.report.containers if ev.source.startswith(f"{c['path']}:")), None)
    if container is not None:
        out["container"] = {k: container[k] for k in ("path", "name", "version", "build_time", "builder",
                                                      "verification")}
    if ev.kind == "logical":
        out["logical"] = _logical_parts(ev.pattern, ev.subsig_counts, ev.offsets)
    elif ev.kind.startswith("hash."):
        out["digest"] = hashlib.new(ev.kind.split(".", 1)[1], data).hexdigest()
        out["size"] = len(data)
    return out


def _render(path: str, result: ScanResult, explained: list[dict[str, Any]]) -> None:
    w = sys.stdout.write
    if result.error:
        w(f"{path}: ERROR {result.error}\n")
        return
    if not explained:
        w(f"{path}: no signature matches ({result.file_type}, {result.size} bytes)\n")
        return
    w(f"{path}: {len(explained)} signature(s) match ({result.file_type}, {result.size} bytes)\n")
    for item in explained:
        w(f"\n  {item['name']}  [{item['kind']}]\n")
        w(f"    source     {item['source']}:{item['line']}  (database {item['db_version'][:16]})\n")
        if "container" in item:
            c = item["container"]
            w(f"    container  {c['name']} version {c['version']} (built {c['build_time']} by {c['builder']}; "
              f"{c['verification']})\n")
        if item["source_changed_since_compile"]:
            w("    warning    the source file changed since the database was compiled\n")
        w(f"    signature  {item['signature']}\n")
        if "digest" in item:
            w(f"    object     {item['kind'].split('.', 1)[1]} {item['digest']}, size {item['size']}\n")
        if item["normalized"]:
            w(f"    matched    the normalized text at offsets {', '.join(map(str, item['offsets']))}\n")
        for m in item["matched"]:
            w(f"    @ {m['offset']:>8}  {m['hex']}  |{m['text']}|\n")
        logical = item.get("logical")
        if logical:
            w(f"    expression {logical['expression']}  read as {logical['expression_grouped']}: true\n")
            for sub in logical["subsignatures"]:
                at = f"first @ {sub['first_offset']}" if sub["first_offset"] is not None else "no match"
                w(f"      [{sub['index']}] x{sub['matches']:<4} {at:<16} {sub['text']}\n")


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        db = load_database(args.database, pua=args.detect_pua)
    except SignatureError as exc:
        sys.stderr.write(f"bastion explain: cannot load the database: {exc}\n")
        return 2
    engine = Engine(db, ScanOptions(allmatch=True, max_filesize=1 << 62, max_scansize=1 << 62))
    sources = _Sources(db)
    infected = errors = False
    for path in args.files:
        result = engine.scan_file(path)
        data = b""
        if result.detections:
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                pass
        explained = [explain_detection(d, data, sources) for d in result.detections]
        errors = errors or bool(result.error)
        infected = infected or bool(explained)
        if args.json:
            sys.stdout.write(json.dumps({"path": path, "file_type": result.file_type, "size": result.size,
                                         "error": result.error, "detections": explained}) + "\n")
        else:
            _render(os.fsdecode(path), result, explained)
    return 1 if infected else 2 if errors else 0
