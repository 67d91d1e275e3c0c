"""YARA rule files (``.yar``/``.yara``): read, checked one file at a time with yara-x, kept as text.

Each file compiles alone first (with Bastion's external variables declared): a rule yara-x cannot
compile is reported with its file and line and left out while the rest of the file loads; a file
that does not parse is left out whole; every other file still loads.  With ``strict`` the first such
problem stops the load instead (``bastion scan --yara-strict``).  Each file becomes one
YARA namespace (its stem, made unique), so two files may define rules of the same name; verdicts
print ``YARA.<rule>`` as clamscan does.

External variables, set for every scanned object (the ones public rule sets written for Loki and
THOR use): ``filename`` (base name), ``filepath`` (full path, or the container path inside an
archive), ``extension`` (lower-case, with its dot, as Loki sets it), ``filetype`` (Loki's upper-case
family: ``EXE``, ``ELF``, ``ZIP``, ... else the ClamAV type name without ``CL_TYPE_``) and ``owner``
(the file owner's user name; empty inside containers).
"""

from __future__ import annotations

import os
import re

from bastion.signatures.errors import SignatureError
from bastion.signatures.model import SignatureSet, YaraSource

EXTERNALS = ("filename", "filepath", "extension", "filetype", "owner")
_NAMESPACE_CHARS = re.compile(r"[^A-Za-z0-9_]")


def new_compiler(skip_invalid: bool = True) -> object:
    """A yara-x compiler with Bastion's external variables declared (empty strings).  With
    ``skip_invalid`` it leaves out a rule it cannot compile (and says which) instead of failing the
    whole source."""
    import yara_x

    compiler = yara_x.Compiler()
    compiler.ignore_invalid_rules(skip_invalid)
    for name in EXTERNALS:
        compiler.define_global(name, "")
    return compiler


def _first_error(exc: Exception, compiler: object) -> tuple[int, str]:
    errors = []
    try:
        errors = compiler.errors()  # type: ignore[attr-defined]
    except Exception:  # older yara-x: only the exception text
        errors = []
    if errors:
        first = errors[0]
        return int(first.get("line") or 0), str(first.get("title") or first.get("text") or exc)
    text = str(exc)
    m = re.search(r":(\d+):\d+", text)
    return (int(m.group(1)) if m else 0), text.splitlines()[0] if text else "rejected by yara-x"


def parse_yara(path: str, data: bytes, sigset: SignatureSet, source_index: int, official: bool,
               strict: bool = False) -> None:
    text = data.decode("utf-8", "replace")
    compiler = new_compiler()
    try:
        compiler.add_source(text, origin=path)  # type: ignore[attr-defined]
        # errors of rules it left out are listed too: only a syntax error means the file did not parse
        ignored_names = {r.name for r in compiler.ignored_rules()}  # type: ignore[attr-defined]
        syntax = [e for e in compiler.errors() if e.get("type") == "SyntaxError" or not ignored_names]  # type: ignore[attr-defined]
    except Exception as exc:  # yara_x.CompileError
        syntax = [{"line": _first_error(exc, compiler)[0], "title": _first_error(exc, compiler)[1]}]
    if syntax:  # the file does not parse: all of it is left out
        line, reason = int(syntax[0].get("line") or 0), str(syntax[0].get("title") or "syntax error")
        if strict:
            raise SignatureError(path, line, f"YARA: {reason}")
        sigset.report.yara_errors.append((path, line, reason))
        return
    for ignored in compiler.ignored_rules():  # type: ignore[attr-defined]
        m = re.search(rf"^[ \t]*(?:(?:private|global)\s+)*rule\s+{re.escape(ignored.name)}\b", text, re.MULTILINE)
        line = text.count("\n", 0, m.start()) + 1 if m else 0
        reason = f"rule {ignored.name} left out: {ignored.message.removeprefix('error: ')}"
        if strict:
            raise SignatureError(path, line, f"YARA: {reason}")
        sigset.report.yara_errors.append((path, line, reason))
    stem = _NAMESPACE_CHARS.sub("_", os.path.splitext(os.path.basename(path))[0]) or "rules"
    namespace = stem
    taken = {s.namespace for s in sigset.yara}
    n = 2
    while namespace in taken:
        namespace = f"{stem}_{n}"
        n += 1
    sigset.yara.append(YaraSource(path, text, source_index, official, namespace))


# Loki's file type names for the types both know
_LOKI_TYPES = {
    "CL_TYPE_MSEXE": "EXE", "CL_TYPE_ELF": "ELF", "CL_TYPE_MACHO": "MACHO", "CL_TYPE_ZIP": "ZIP",
    "CL_TYPE_RAR": "RAR", "CL_TYPE_7Z": "7Z", "CL_TYPE_GZ": "GZIP", "CL_TYPE_PDF": "PDF", "CL_TYPE_MSOLE2": "OLE",
    "CL_TYPE_JAVA": "JAVA", "CL_TYPE_SWF": "SWF", "CL_TYPE_GIF": "GIF", "CL_TYPE_PNG": "PNG", "CL_TYPE_JPEG": "JPEG",
}


def yara_externals(name: str, file_type: str, inside: bool) -> dict[str, str]:
    """The external variables for one object (see the module docstring)."""
    last = name.rsplit("!", 1)[-1]
    filename = last.rsplit("/", 1)[-1]
    ext = os.path.splitext(filename)[1].lower()
    owner = ""
    if not inside:
        try:
            import pwd

            owner = pwd.getpwuid(os.stat(name).st_uid).pw_name
        except (OSError, KeyError, ImportError):
            owner = ""
    return {"filename": filename, "filepath": name, "extension": ext,
            "filetype": _LOKI_TYPES.get(file_type, file_type.removeprefix("CL_TYPE_")), "owner": owner}
