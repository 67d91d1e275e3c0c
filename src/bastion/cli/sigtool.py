"""``bastion sigtool`` / ``bastion-sigtool``: the signature tasks users script with ClamAV's sigtool.

Same option names and output as Debian's sigtool 1.4 where both do the same task
(tests/test_sigtool.py compares them):

* ``--md5`` / ``--sha1`` / ``--sha256 [FILES]``: ``hash:size:name`` lines (stdin: the bare hash);
* ``--mdb FILES``: PE section hash lines ``size:md5:name``; ``--imp FILES``: import table hash lines;
* ``--hex-dump``: stdin as hex;
* ``-i/--info FILE``: a container's header and verification;
* ``-u/--unpack FILE``: a container's members into the current directory (plain names only);
* ``-l/--list-sigs[=FILE]``: signature names of a container or database directory;
* ``-f/--find-sigs REGEX``: ``[file] line`` for every signature line matching REGEX;
* ``--decode-sigs``: body and logical signatures read from stdin, in words;
* ``-b/--build FILE.cud --unsigned``: an unsigned container from the database files in ``--datadir``
  (default: the current directory), asking for the version and builder on stdin like sigtool.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import sys
import tarfile
import time
from collections.abc import Iterator

from bastion import FUNCTIONALITY_LEVEL
from bastion.signatures.loader import DEFAULT_DB_DIR, DEFAULT_DB_DIR_ENV, SUPPORTED, extension

_BUILD_EXTENSIONS = tuple(ext for ext in SUPPORTED if ext not in (".cvd", ".cld", ".cud", ".yar", ".yara"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion sigtool", description="Signature and database tasks, sigtool style.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--md5", nargs="*", metavar="FILE")
    g.add_argument("--sha1", nargs="*", metavar="FILE")
    g.add_argument("--sha256", "--sha2-256", nargs="*", metavar="FILE")
    g.add_argument("--mdb", nargs="+", metavar="FILE")
    g.add_argument("--imp", nargs="+", metavar="FILE")
    g.add_argument("--hex-dump", action="store_true")
    g.add_argument("-i", "--info", metavar="FILE")
    g.add_argument("-u", "--unpack", metavar="FILE")
    g.add_argument("-l", "--list-sigs", nargs="?", const="", metavar="FILE")
    g.add_argument("-f", "--find-sigs", metavar="REGEX")
    g.add_argument("--decode-sigs", action="store_true")
    g.add_argument("-b", "--build", metavar="FILE")
    p.add_argument("--unsigned", action="store_true", help="build an unsigned .cud (the only kind Bastion builds)")
    p.add_argument("--datadir", metavar="DIR", help="database directory (default: the installed one)")
    return p


def _out(text: str) -> None:
    sys.stdout.write(text)


class _Failed:
    """The exit code of a command over several files: 1 once any of them failed."""

    code = 0


def _read_each(files: list[str], failed: _Failed) -> Iterator[tuple[str, bytes]]:
    """Each readable file's path and bytes; an unreadable one is said as sigtool says it."""
    for path in files:
        try:
            with open(path, "rb") as fh:
                yield path, fh.read()
        except OSError as exc:
            sys.stderr.write(f"ERROR: Can't open file {path}: {exc.strerror}\n")
            failed.code = 1


def _hashes(algo: str, files: list[str]) -> int:
    if not files:
        _out(hashlib.new(algo, sys.stdin.buffer.read()).hexdigest() + "\n")
        return 0
    failed = _Failed()
    for path, data in _read_each(files, failed):
        _out(f"{hashlib.new(algo, data).hexdigest()}:{len(data)}:{os.path.basename(path)}\n")
    return failed.code


def _pe_lines(files: list[str], imports: bool) -> int:
    from bastion.formats.executable import parse_executable
    from bastion.formats.pe_imports import import_text

    failed = _Failed()
    for path, data in _read_each(files, failed):
        info = parse_executable(data)
        if info is None or info.kind != "pe":
            sys.stderr.write(f"ERROR: {path} is not a PE file\n")
            failed.code = 1
            continue
        name = os.path.basename(path)
        if imports:
            text = import_text(data, info)
            if text is not None:
                _out(f"{hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()}:{len(text)}:{name}\n")
            continue
        for sec in info.sections:
            raw = data[sec.raw_offset:sec.raw_offset + sec.raw_size]
            if raw:
                _out(f"{len(raw)}:{hashlib.md5(raw, usedforsecurity=False).hexdigest()}:{name}\n")
    return failed.code


def _info(path: str) -> int:
    from bastion.signatures.cvd import ContainerError, open_container, read_header

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        header = read_header(data, os.path.basename(path))
    except (OSError, ContainerError) as exc:
        sys.stderr.write(f"ERROR: cvdinfo: Can't read/parse CVD header of {path}: {exc}\n")
        return 1
    _out(f"File: {path}\nBuild time: {_time(header.build_time)}\n"
         f"Version: {header.version}\nSignatures: {header.signatures}\n"
         f"Functionality level: {header.functionality_level}\nBuilder: {header.builder}\n")
    kind = extension(path).lstrip(".")
    if kind == "cvd":
        _out(f"MD5: {header.md5}\nDigital signature: {header.dsig}\n")
    try:
        container = open_container(path, data)
    except ContainerError as exc:
        sys.stderr.write(f"ERROR: Verification: {exc}\n")
        return 1
    _out("Verification: Unsigned container\n" if container.kind == "cud" else "Verification OK.\n")
    return 0


def _time(build_time: str) -> str:
    """The header keeps ``HH-MM`` (no ``:`` inside a ``:``-separated header); sigtool shows ``HH:MM``."""
    return re.sub(r"(\d{2})-(\d{2})", r"\1:\2", build_time, count=1)


def _unpack(path: str) -> int:
    from bastion.signatures.cvd import ContainerError, open_container

    try:
        container = open_container(path)
    except (OSError, ContainerError) as exc:
        sys.stderr.write(f"ERROR: unpack: {path}: {exc}\n")
        return 1
    from bastion.database.atomic import write_file_atomically

    for name, data in container.members:
        if name != os.path.basename(name) or name in ("", ".", ".."):
            continue  # never outside the current directory
        write_file_atomically(name, data)
    return 0


def _db_lines(target: str | None) -> list[tuple[str, str]]:
    """``(source file name, line)`` for every signature line of a container, file or directory."""
    from bastion.signatures.cvd import ContainerError, open_container

    if not target:
        target = os.environ.get(DEFAULT_DB_DIR_ENV, DEFAULT_DB_DIR)
    paths = [os.path.join(target, n) for n in sorted(os.listdir(target))] if os.path.isdir(target) else [target]
    out = []
    for path in paths:
        ext = extension(path)
        if ext in (".cvd", ".cld", ".cud"):
            try:
                members = open_container(path).members
            except (OSError, ContainerError):
                continue
        elif ext in _BUILD_EXTENSIONS and os.path.isfile(path):
            with open(path, "rb") as fh:
                members = [(os.path.basename(path), fh.read())]
        else:
            continue
        for name, data in members:
            if extension(name) in (".info",) or name == "COPYING":
                continue
            for line in data.decode("latin-1").splitlines():
                if line and not line.startswith("#"):
                    out.append((name, line))
    return out


def _signature_name(member: str, line: str) -> str:
    ext = extension(member)
    if ext in (".ldb", ".ldu"):
        return line.split(";", 1)[0]
    fields = line.split(":")
    if ext in (".hdb", ".hsb", ".hdu", ".hsu", ".mdb", ".msb", ".mdu", ".msu", ".imp", ".fp", ".sfp"):
        return fields[2] if len(fields) > 2 else line
    return fields[0]


def _list_sigs(target: str | None) -> int:
    if target and not os.path.isdir(target) and extension(target) not in (".cvd", ".cld", ".cud"):
        sys.stderr.write(f"ERROR: listdb: Invalid filename {target}\n")
        return 1
    for member, line in _db_lines(target):
        if extension(member) not in (".ign", ".ign2", ".ftm", ".cfg", ".pdb", ".wdb", ".gdb", ".fp", ".sfp"):
            _out(_signature_name(member, line) + "\n")
    return 0


def _find_sigs(pattern: str, datadir: str | None) -> int:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        sys.stderr.write(f"ERROR: bad regular expression: {exc}\n")
        return 1
    for member, line in _db_lines(datadir):
        if rx.search(line):
            _out(f"[{member}] {line}\n")
    return 0


def _decode_line(line: str) -> str:
    from bastion.signatures.hexpattern import describe
    from bastion.signatures.ldb import split_fields

    if ";" in line:
        fields = split_fields(line)
        out = [f"VIRUS NAME: {fields[0]}", f"TDB: {fields[1]}", f"LOGICAL EXPRESSION: {fields[2]}"]
        for i, sub in enumerate(fields[3:]):
            out.append(f" * SUBSIG ID {i}")
            if "/" in sub:
                head, _, rest = sub.partition("/")
                regex, _, flags = rest.rpartition("/")
                offset, _, trigger = head.rpartition(":") if ":" in head else ("ANY", "", head)
                out += [f" +-> OFFSET: {offset or 'ANY'}", " +-> SIGMOD: NONE", " +-> DECODED SUBSIGNATURE:",
                        f"     +-> TRIGGER: {trigger}", f"     +-> REGEX: {regex}", f"     +-> CFLAGS: {flags}"]
                continue
            body, _, mods = sub.partition("::")
            offset = "ANY"
            if ":" in body:
                offset, _, body = body.partition(":")
            names = {"i": "NOCASE", "w": "WIDE", "f": "FULLWORD", "a": "ASCII"}
            sigmod = " ".join(names[m] for m in mods if m in names) or "NONE"
            try:
                decoded = describe(body)
            except ValueError:
                decoded = body
            out += [f" +-> OFFSET: {offset}", f" +-> SIGMOD: {sigmod}", " +-> DECODED SUBSIGNATURE:", decoded]
        return "\n".join(out)
    fields = line.split(":")
    if len(fields) >= 4:
        targets = {"0": "ANY FILE", "*": "ANY FILE", "1": "PE", "2": "OLE2", "3": "HTML", "4": "MAIL", "5": "GRAPHICS",
                   "6": "ELF", "7": "NORMALIZED ASCII TEXT", "9": "MACH-O", "10": "PDF", "11": "FLASH", "12": "JAVA"}
        try:
            decoded = describe(fields[3])
        except ValueError as exc:
            decoded = f"(cannot decode: {exc})"
        return "\n".join([f"VIRUS NAME: {fields[0]}", f"TARGET TYPE: {targets.get(fields[1], fields[1])}",
                          f"OFFSET: {fields[2]}", "DECODED SIGNATURE:", decoded])
    return f"(not a body or logical signature: {line})"


def _decode_sigs() -> int:
    for raw in sys.stdin.read().splitlines():
        line = raw.strip()
        if line.startswith("[") and "] " in line:  # piped from --find-sigs
            line = line.split("] ", 1)[1]
        if line:
            _out(_decode_line(line) + "\n")
    return 0


def _build(target: str, unsigned: bool, datadir: str | None) -> int:
    if not target.endswith(".cud") or not unsigned:
        sys.stderr.write("ERROR: Bastion builds only unsigned containers: --build=NAME.cud --unsigned\n")
        return 1
    source = datadir or "."
    stem = os.path.splitext(os.path.basename(target))[0]
    members = {}
    for name in sorted(os.listdir(source)):
        if name.startswith(f"{stem}.") and extension(name) in _BUILD_EXTENSIONS and extension(name) != ".info":
            with open(os.path.join(source, name), "rb") as fh:
                members[name] = fh.read()
    if not members:
        sys.stderr.write(f"ERROR: build: no database files named {stem}.* in {source}\n")
        return 1
    sys.stdout.write("Version number: ")
    sys.stdout.flush()
    version = int((sys.stdin.readline() or "1").strip() or 1)
    sigs = sum(1 for data in members.values() for line in data.decode("latin-1").splitlines()
               if line and not line.startswith("#"))
    sys.stdout.write(f"Total sigs: {sigs}\nBuilder name: ")
    sys.stdout.flush()
    builder = (sys.stdin.readline() or "bastion").strip().replace(":", "") or "bastion"
    now = time.gmtime()
    stamp = time.strftime("%d %b %Y %H-%M +0000", now)
    head = f"ClamAV-VDB:{stamp}:{version}:{sigs}:{FUNCTIONALITY_LEVEL}"
    info = f"{head}:X:X:{builder}:{int(time.time())}\n" + "".join(
        f"{n}:{len(d)}:{hashlib.sha256(d).hexdigest()}\n" for n, d in members.items())
    buf = io.BytesIO()
    copying = os.path.join(source, "COPYING")
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        files = {"COPYING": open(copying, "rb").read() if os.path.exists(copying) else b"",  # noqa: SIM115
                 f"{stem}.info": info.encode(), **members}
        for n, d in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(d)
            tar.addfile(ti, io.BytesIO(d))
    body = gzip.compress(buf.getvalue(), mtime=0)
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    header = f"{head}:{md5}:X:{builder}:{int(time.time())}".encode().ljust(512, b" ")
    from bastion.database.atomic import write_file_atomically

    write_file_atomically(target, header + body)
    sys.stdout.write(f"Created {target}\n")
    return 0


def run(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.md5 is not None:
        return _hashes("md5", args.md5)
    if args.sha1 is not None:
        return _hashes("sha1", args.sha1)
    if args.sha256 is not None:
        return _hashes("sha256", args.sha256)
    if args.mdb:
        return _pe_lines(args.mdb, imports=False)
    if args.imp:
        return _pe_lines(args.imp, imports=True)
    if args.hex_dump:
        _out(sys.stdin.buffer.read().hex())
        return 0
    if args.info:
        return _info(args.info)
    if args.unpack:
        return _unpack(args.unpack)
    if args.list_sigs is not None:
        return _list_sigs(args.list_sigs or args.datadir)
    if args.find_sigs is not None:
        return _find_sigs(args.find_sigs, args.datadir)
    if args.decode_sigs:
        return _decode_sigs()
    return _build(args.build, args.unsigned, args.datadir)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
