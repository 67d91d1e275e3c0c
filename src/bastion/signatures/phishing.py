"""Phishing databases: ``.pdb`` (protected domains), ``.wdb`` (allowed URL pairs), ``.gdb`` (URL
hashes), per ClamAV's ``PhishSigs``.

Lines: ``.pdb`` ``R[filter]:regex[:FL]`` / ``H[filter]:hostname[:FL]``; ``.wdb`` ``X:realURLregex:
displayedURLregex[:FL]`` / ``M:realhost:displayedhost[:FL]`` / ``Y:realURLregex[:FL]``; ``.gdb``
``S:P:hostprefix`` / ``S:F:sha256`` / ``S1:..`` / ``S2:..`` / ``S:W:sha256``.

Bastion does not check URLs in mail and HTML yet, so these are parsed and validated (a bad line
names its file and line), counted, and reported at load as not enforced (README).
"""

from __future__ import annotations

import re

from bastion.signatures.errors import SignatureError
from bastion.signatures.model import SignatureSet
from bastion.signatures.textdb import iter_signature_lines

_PDB = re.compile(r"([RH])(\w*)")
_WDB_KINDS = {"X": 3, "M": 3, "Y": 2}
_GDB = re.compile(r"S[12]?")
_FL = re.compile(r"\d+-\d*")


def _strip_fl(fields: list[str], base: int) -> list[str]:
    """A trailing ``min-`` / ``min-max`` field is a functionality level (a bare number is not)."""
    if len(fields) == base + 1 and _FL.fullmatch(fields[-1]):
        return fields[:-1]
    return fields


def parse_phishing(path: str, data: bytes, sigset: SignatureSet, kind: str) -> None:
    """``kind``: ``pdb``, ``wdb`` or ``gdb``."""
    count = 0
    for number, line in iter_signature_lines(path, data):
        fields = line.split(":")
        try:
            if kind == "gdb":
                if len(fields) < 3 or not _GDB.fullmatch(fields[0]) or fields[1] not in ("P", "F", "W"):
                    raise ValueError("expected S:P:hostprefix, S:F:sha256 or S:W:sha256 (S1/S2 too)")
            elif kind == "pdb":
                m = _PDB.fullmatch(fields[0])
                fields = _strip_fl(fields, 2)
                if not m or len(fields) != 2 or not fields[1]:
                    raise ValueError("expected R[filter]:regex or H[filter]:hostname")
                if m.group(1) == "R":
                    re.compile(fields[1])
            else:
                need = _WDB_KINDS.get(fields[0])
                fields = _strip_fl(fields, need or 0)
                if need is None or len(fields) != need or not all(fields[1:]):
                    raise ValueError("expected X:realURL:displayedURL, M:realhost:displayedhost or Y:realURL")
                if fields[0] in ("X", "Y"):
                    for regex in fields[1:]:
                        re.compile(regex)
        except (ValueError, re.error) as exc:
            raise SignatureError(path, number, str(exc)) from None
        count += 1
    sigset.report.not_enforced["phishing"] = sigset.report.not_enforced.get("phishing", 0) + count
