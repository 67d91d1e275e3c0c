"""Container metadata signatures (``.cdb``): alert on what an archive holds, not on its bytes.

Line: ``Name:ContainerType:ContainerSize:FileNameREGEX:FileSizeInContainer:FileSizeReal:IsEncrypted:
FilePos:Res1:Res2[:minFL[:maxFL]]`` (ClamAV's ``ContainerMetadata``).  ``*`` means any; sizes and
positions are ``n`` or ``n-m``; ``IsEncrypted`` is 0, 1 or ``*``.

They are stored in the compiled database and checked by the engine for every member of a container
it opens (engine/scanner.py); the compressed size of a member is not known there, so a rule that
names one never matches (README).
"""

from __future__ import annotations

import re

from bastion.signatures.cltypes import CL_TYPES
from bastion.signatures.errors import SignatureError
from bastion.signatures.model import ContainerRule, SignatureSet
from bastion.signatures.textdb import flevel_fields_allow, is_ignored, iter_signature_lines, printed_name

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _range(text: str, what: str) -> tuple[int, int] | None:
    if text == "*":
        return None
    m = _RANGE.fullmatch(text)
    if not m:
        raise ValueError(f"bad {what} {text!r} (n, n-m or *)")
    low = int(m.group(1))
    return low, int(m.group(2)) if m.group(2) else low


def parse_cdb(path: str, data: bytes, sigset: SignatureSet, source_index: int, official: bool) -> None:
    for number, line in iter_signature_lines(path, data):
        fields = line.split(":")
        if not 10 <= len(fields) <= 12:
            raise SignatureError(path, number, f"expected 10 to 12 ':'-separated fields, found {len(fields)}")
        name, ctype = fields[0], fields[1]
        if not name:
            raise SignatureError(path, number, "empty signature name")
        try:
            if ctype != "*" and ctype not in CL_TYPES:
                raise ValueError(f"unknown container type {ctype!r}")
            container_size = _range(fields[2], "container size")
            name_regex = None if fields[3] == "*" else fields[3]
            if name_regex is not None:
                re.compile(name_regex)
            size_in = _range(fields[4], "file size in container")
            size_real = _range(fields[5], "real file size")
            if fields[6] not in ("0", "1", "*"):
                raise ValueError(f"bad encrypted flag {fields[6]!r} (0, 1 or *)")
            position = _range(fields[7], "file position")
        except (ValueError, re.error) as exc:
            raise SignatureError(path, number, str(exc)) from None
        if not flevel_fields_allow(path, number, fields, 10):
            sigset.report.skipped_by_flevel += 1
            continue
        if is_ignored(sigset.ignores, name, line):
            sigset.report.ignored_by_name += 1
            continue
        sigset.container_rules.append(ContainerRule(
            printed_name(name, official), None if ctype == "*" else ctype, container_size, name_regex, size_in,
            size_real, None if fields[6] == "*" else fields[6] == "1", position, source_index, number))
