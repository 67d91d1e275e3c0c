"""Engine configuration (``.cfg``, ClamAV's ``DynamicConfig``) and container manifests (``.info``).

``.cfg``: ``Category:0xFLAGS:minFL:maxFL`` switches engine features per functionality level; Bastion
validates and records them (its own features are configured in ``bastion.toml``).  ``.info``: the
manifest inside a CVD (``ClamAV-VDB:...`` header, ``name:size:sha256`` lines, ``DSIG:...``): checked by
the container reader; loose ``.info`` files are validated and recorded.
"""

from __future__ import annotations

import re

from bastion.signatures.errors import SignatureError
from bastion.signatures.model import SignatureSet
from bastion.signatures.textdb import iter_signature_lines

CATEGORIES = frozenset({"PE", "ELF", "MACHO", "ARCHIVE", "DOCUMENT", "MAIL", "OTHER", "PHISHING", "BYTECODE",
                        "STATS", "PCRE"})
_CFG = re.compile(r"([A-Z]+):0x([0-9a-fA-F]+):(\d*):(\d*)")
_INFO = re.compile(r"[^:]+:\d+:[0-9a-fA-F]{64}")


def parse_cfg(path: str, data: bytes, sigset: SignatureSet) -> None:
    count = 0
    for number, line in iter_signature_lines(path, data):
        m = _CFG.fullmatch(line)
        if not m:  # clamscan 1.4.6 accepts unknown categories (and ignores them)
            raise SignatureError(path, number, "expected Category:0xFLAGS:minFL:maxFL")
        count += 1
    sigset.report.not_enforced["engine configuration"] = (
        sigset.report.not_enforced.get("engine configuration", 0) + count)


def parse_info(path: str, data: bytes, sigset: SignatureSet) -> None:
    count = 0
    for number, line in iter_signature_lines(path, data):
        if line.startswith(("ClamAV-VDB:", "DSIG:")):
            continue
        if not _INFO.fullmatch(line):
            raise SignatureError(path, number, "expected name:size:sha256")
        count += 1
    sigset.report.not_enforced["container manifest entries"] = (
        sigset.report.not_enforced.get("container manifest entries", 0) + count)
