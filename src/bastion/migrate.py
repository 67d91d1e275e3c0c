"""``bastion migrate``: bring over what a user has from ClamAV, YARA and Loki, into one Bastion folder.

Reads, never writes, the source product: ``clamd.conf`` (daemon settings and exclusions),
``freshclam.conf`` (mirrors and custom URLs, for the updater), a ClamAV database folder (official
containers are linked, custom signature files copied), YARA rule folders (each file checked with
yara-x), Loki IOC files (hash IOCs become a hash database with any-size entries, filename IOCs
become YARA rules on Bastion's ``filepath`` external) and plain exclusion lists (paths, globs or
regular expressions).  It writes::

    TARGET/bastion.toml     [daemon] (clamd.conf's settings, database_directory = TARGET/db),
                            [update] (freshclam.conf's), [scan] exclude_path, [migrated] provenance
    TARGET/db/              what the daemon and `bastion scan -d TARGET/db` load

Every input line or file is either imported or named with the reason it was not (:class:`Report`).
Nothing is uninstalled, disabled, moved or edited anywhere else; an existing TARGET/bastion.toml is
only replaced with ``force``.  ``dry_run`` reports without writing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bastion.clamconf import conf_lines
from bastion.database.atomic import write_file_atomically
from bastion.signatures.hashdb import any_size_line, is_hash_hex, name_part

# freshclam.conf options the updater will use: option -> (toml key, repeatable)
FRESHCLAM_OPTIONS = {
    "DatabaseMirror": ("mirrors", True),
    "PrivateMirror": ("private_mirrors", True),
    "DatabaseCustomURL": ("custom_urls", True),
    "Checks": ("checks_per_day", False),
    "DatabaseDirectory": ("clamav_database_directory", False),
    "HTTPProxyServer": ("http_proxy_server", False),
    "HTTPProxyPort": ("http_proxy_port", False),
    "ConnectTimeout": ("connect_timeout", False),
    "ReceiveTimeout": ("receive_timeout", False),
}
# ClamAV's own containers: linked (they keep coming from ClamAV's mirrors), never copied
OFFICIAL_STEMS = ("main", "daily", "bytecode", "safebrowsing")
CUSTOM_EXTENSIONS = (".hdb", ".hsb", ".hdu", ".hsu", ".mdb", ".msb", ".mdu", ".msu", ".ndb", ".ndu", ".ldb",
                     ".ldu", ".cdb", ".ftm", ".fp", ".sfp", ".ign", ".ign2", ".imp", ".yar", ".yara", ".pdb",
                     ".wdb", ".gdb", ".cud")


@dataclass
class Report:
    imported: list[str] = field(default_factory=list)
    not_imported: list[str] = field(default_factory=list)   # "what: why"
    written: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.imported.append(what)

    def skip(self, what: str, why: str) -> None:
        self.not_imported.append(f"{what}: {why}")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _daemon_section(path: str, report: Report, db_dir: str) -> tuple[dict[str, object], list[str], str | None]:
    """clamd.conf -> ([daemon] keys, exclusions, its DatabaseDirectory)."""
    from bastion.daemon import config

    keys: dict[str, object] = {}
    excludes: list[str] = []
    original_db = None
    for number, name, value in conf_lines(path):
        where = f"{path}:{number} {name}"
        if name == "Example":
            report.skip(where, "the sample configuration's Example line (clamd refuses it too)")
            continue
        try:
            entry = config.toml_entry(name, value)
        except ValueError as exc:
            report.skip(where, f"bad value: {exc}")
            continue
        if entry is None:
            report.skip(where, "accepted by Bastion but not acted on yet" if config.known_but_ignored(name)
                        else "unknown option")
            continue
        key, typed, repeatable = entry
        if name == "DatabaseDirectory":
            original_db = value
            continue
        if name == "ExcludePath":
            excludes.append(value)
        _set(keys, key, typed, repeatable)
        report.add(where)
    keys["database_directory"] = db_dir
    return keys, excludes, original_db


def _update_section(path: str, report: Report) -> dict[str, object]:
    keys: dict[str, object] = {}
    for number, name, value in conf_lines(path):
        where = f"{path}:{number} {name}"
        known = FRESHCLAM_OPTIONS.get(name)
        if known is None:
            report.skip(where, "a freshclam setting Bastion's updater has no use for (data-only updates)")
            continue
        key, repeatable = known
        typed: object = int(value) if value.isdigit() else value
        _set(keys, key, typed, repeatable)
        report.add(where)
    return keys


def _set(keys: dict[str, object], key: str, value: object, repeatable: bool) -> None:
    """A TOML key's value; a repeatable option collects its lines into a list."""
    if repeatable:
        listed = keys.setdefault(key, [])
        assert isinstance(listed, list)
        listed.append(value)
    else:
        keys[key] = value


def _yara_ok(text: str) -> str | None:
    """None when yara-x compiles the rules (with Bastion's externals), else why not."""
    from bastion.signatures.yara import new_compiler

    compiler = new_compiler(skip_invalid=False)
    try:
        compiler.add_source(text)  # type: ignore[attr-defined]
        compiler.build()  # type: ignore[attr-defined]
    except Exception as exc:  # yara_x.CompileError and friends
        return str(exc).splitlines()[0] if str(exc) else "rejected by yara-x"
    return None


def _unique(directory: str, name: str, taken: set[str]) -> str:
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}{ext}"
    taken.add(candidate)
    return os.path.join(directory, candidate)


def _content_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text without its newline) of each line that is not empty or a # comment."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [(n, raw.rstrip("\n")) for n, raw in enumerate(fh, 1)
                if raw.strip() and not raw.lstrip().startswith("#")]


def _loki_hashes(path: str, report: Report) -> list[str]:
    lines = []
    for number, raw in _content_lines(path):
        digest, _, comment = raw.strip().partition(";")
        digest = digest.strip()
        if not is_hash_hex(digest):
            report.skip(f"{path}:{number}", "not an MD5, SHA1 or SHA256 hash")
            continue
        lines.append(any_size_line(digest, f"Loki.HashIOC.{name_part(comment)}.L{number}"))
        report.add(f"{path}:{number}")
    return lines


def _yara_regex(regex: str) -> str:
    """A Loki regex inside YARA's /.../: slashes escaped."""
    return regex.replace("/", "\\/")


def _loki_filenames(path: str, report: Report) -> list[str]:
    rules = []
    for number, line in _content_lines(path):
        parts = line.split(";")
        # Loki's IOCs are mostly Windows paths: an escaped backslash matches either separator here
        regex = parts[0].replace("\\\\", "[\\\\/]")
        score = parts[1].strip() if len(parts) > 1 and parts[1].strip().isdigit() else "50"
        false_positive = parts[2] if len(parts) > 2 and parts[2] else None
        condition = f"filepath matches /{_yara_regex(regex)}/i"
        if false_positive:
            condition += f" and not filepath matches /{_yara_regex(false_positive)}/i"
        rule = (f"rule Loki_FilenameIOC_L{number} {{\n  meta:\n    source = {json.dumps(path)}\n"
                f"    line = {number}\n    score = {score}\n  condition:\n    {condition}\n}}\n")
        why = _yara_ok(rule)
        if why:
            report.skip(f"{path}:{number}", f"its regex is not one YARA accepts ({why})")
            continue
        rules.append(rule)
        report.add(f"{path}:{number}")
    return rules


def _exclusions(path: str, report: Report) -> list[str]:
    out = []
    for number, raw in _content_lines(path):
        line = raw.strip()
        if line.startswith(("/", "~")) and not any(c in line for c in "*?["):
            regex = "^" + re.escape(os.path.expanduser(line).rstrip("/")) + "(/|$)"
        elif any(c in line for c in "*?["):
            regex = fnmatch.translate(os.path.expanduser(line))
        else:
            regex = line
        try:
            re.compile(regex)
        except re.error as exc:
            report.skip(f"{path}:{number}", f"not a path, glob or regular expression ({exc})")
            continue
        out.append(regex)
        report.add(f"{path}:{number}")
    return out


def migrate(target: str, *, clamd_conf: str | None = None, freshclam_conf: str | None = None,
            clamav_db: list[str] | None = None, yara_dirs: list[str] | None = None,
            loki_hash_iocs: list[str] | None = None, loki_filename_iocs: list[str] | None = None,
            exclusion_lists: list[str] | None = None, force: bool = False, dry_run: bool = False) -> Report:
    """Import everything named into ``target`` (see the module docstring); returns what was done."""
    report = Report()
    target = os.path.abspath(target)
    db_dir = os.path.join(target, "db")
    toml_path = os.path.join(target, "bastion.toml")
    if os.path.exists(toml_path) and not force and not dry_run:
        raise FileExistsError(f"{toml_path} exists; not replaced (use --force)")
    files: dict[str, bytes | str] = {}   # name in db/ -> content, or a path to link to
    taken: set[str] = set()
    daemon_keys: dict[str, object] = {}
    update_keys: dict[str, object] = {}
    excludes: list[str] = []
    dbs = list(clamav_db or [])
    if clamd_conf:
        daemon_keys, excludes, original_db = _daemon_section(clamd_conf, report, db_dir)
        if original_db and original_db not in dbs:
            dbs.append(original_db)
    if freshclam_conf:
        update_keys = _update_section(freshclam_conf, report)
    for folder in dbs:
        if not os.path.isdir(folder):
            report.skip(folder, "no such ClamAV database folder")
            continue
        for name in sorted(os.listdir(folder)):
            full = os.path.join(folder, name)
            stem, ext = os.path.splitext(name)
            if not os.path.isfile(full) or name.startswith("."):
                continue
            if stem in OFFICIAL_STEMS and ext in (".cvd", ".cld", ".cud", ".sign"):
                files[os.path.basename(_unique(db_dir, name, taken))] = full  # linked, kept up to date by ClamAV
                report.add(f"{full} (linked: official)")
            elif ext in CUSTOM_EXTENSIONS:
                with open(full, "rb") as fh:
                    files[os.path.basename(_unique(db_dir, name, taken))] = fh.read()
                report.add(f"{full} (copied: custom signatures)")
            else:
                report.skip(full, "not a signature file Bastion reads (e.g. freshclam's state)")
    for folder in yara_dirs or []:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.basename(os.path.abspath(folder))) or "yara"
        for root, _dirs, names in os.walk(folder):
            for name in sorted(names):
                if not name.lower().endswith((".yar", ".yara")):
                    continue
                full = os.path.join(root, name)
                with open(full, "rb") as fh:
                    data = fh.read()
                why = _yara_ok(data.decode("utf-8", "replace"))
                if why:
                    report.skip(full, f"yara-x does not compile it: {why}")
                    continue
                rel = os.path.relpath(full, folder).replace(os.sep, "_")
                files[os.path.basename(_unique(db_dir, f"yara-{base}-{rel}", taken))] = data
                report.add(full)
    hash_lines = [line for path in loki_hash_iocs or [] for line in _loki_hashes(path, report)]
    if hash_lines:
        files[os.path.basename(_unique(db_dir, "loki-hash-iocs.hsb", taken))] = "".join(hash_lines).encode()
    rules = [rule for path in loki_filename_iocs or [] for rule in _loki_filenames(path, report)]
    if rules:
        files[os.path.basename(_unique(db_dir, "loki-filename-iocs.yar", taken))] = "\n".join(rules).encode()
    for path in exclusion_lists or []:
        excludes += _exclusions(path, report)

    toml = [f"# Written by `bastion migrate` on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}.",
            "# Nothing was changed in the product(s) it was read from.", "", "[daemon]"]
    toml += [f"{k} = {_toml_value(v)}" for k, v in (daemon_keys or {"database_directory": db_dir}).items()]
    toml += ["", "# freshclam.conf's sources, for `bastion update`", "[update]"]
    toml += [f"{k} = {_toml_value(v)}" for k, v in update_keys.items()]
    toml += ["", "[scan]", f"exclude_path = {_toml_value(excludes)}", "", "[migrated]",
             f"clamd_conf = {_toml_value(clamd_conf or '')}", f"freshclam_conf = {_toml_value(freshclam_conf or '')}",
             f"clamav_databases = {_toml_value(dbs)}", f"yara_folders = {_toml_value(list(yara_dirs or []))}"]
    if dry_run:
        report.written = [toml_path, *[os.path.join(db_dir, n) for n in sorted(files)]]
        return report
    os.makedirs(db_dir, exist_ok=True)
    for name, content in sorted(files.items()):
        dest = os.path.join(db_dir, name)
        if isinstance(content, str):
            if os.path.lexists(dest):
                os.unlink(dest)
            os.symlink(content, dest)
        else:
            write_file_atomically(dest, content)
        report.written.append(dest)
    write_file_atomically(toml_path, ("\n".join(toml) + "\n").encode())
    report.written.append(toml_path)
    return report
