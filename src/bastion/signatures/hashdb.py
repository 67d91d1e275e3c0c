"""Hash databases: whole-file ``.hdb`` ``.hsb`` ``.hdu`` ``.hsu``, allow lists ``.fp`` ``.sfp`` and PE
section hashes ``.mdb`` ``.msb`` ``.mdu`` ``.msu``, and PE import table hashes ``.imp``.

Line: ``hash:size:Name[:minFL[:maxFL]]``; section hashes put the size first: ``size:hash:Name...``.
The hash family comes from the digest length (MD5, SHA1, SHA256); ``size`` is a positive decimal
or ``*`` (any size, which ClamAV accepts only with minFL >= 73).
"""

from __future__ import annotations

import re

from bastion.signatures.errors import SignatureError
from bastion.signatures.model import ANY_SIZE, HashKind, HashPurpose, SignatureSet
from bastion.signatures.textdb import (
    flevel_allows,
    is_ignored,
    iter_signature_lines,
    printed_name,
)

WILDCARD_SIZE_MIN_FLEVEL = 73
_KIND_BY_HEX_LENGTH = {32: HashKind.MD5, 40: HashKind.SHA1, 64: HashKind.SHA256}



def is_hash_hex(text: str) -> bool:
    """An MD5, SHA1 or SHA256 digest written in hex."""
    return len(text) in _KIND_BY_HEX_LENGTH and all(c in "0123456789abcdefABCDEF" for c in text)


def name_part(text: str) -> str:
    """Free text (a malware family, a comment) made fit for a signature name: [A-Za-z0-9._-], at
    most 60 characters, ``hash`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip())[:60].strip("_") or "hash"


def any_size_line(hex_digest: str, name: str) -> str:
    """A hash signature line for a file of any size (``*``, which needs functionality level 73)."""
    return f"{hex_digest.lower()}:*:{name}:{WILDCARD_SIZE_MIN_FLEVEL}\n"

def _lenient_flevel(text: str) -> int | None:
    """Hash databases read FL fields like C's atoi (clamscan 1.4.6): ``73x`` is 73, ``""`` is 0, and a
    field that does not start with a digit makes the line be skipped (None)."""
    if text == "":
        return 0
    digits = len(text) - len(text.lstrip("0123456789"))
    return int(text[:digits]) if digits else None


def parse_hash_db(path: str, data: bytes, sigset: SignatureSet, source_index: int, official: bool,
                  purpose: HashPurpose) -> None:
    """Parse one hash database into ``sigset``; raise :class:`SignatureError` on the first bad line."""
    report = sigset.report
    ignores = sigset.ignores
    columns = {}
    suffix = printed_name("", official)
    for number, line in iter_signature_lines(path, data):
        fields = line.split(":")
        count = len(fields)
        if count < 3 or count > 5:
            raise SignatureError(path, number, f"expected 3 to 5 ':'-separated fields, found {count}")
        hex_digest, size_text, name = fields[0], fields[1], fields[2]
        if purpose is HashPurpose.SECTION:
            hex_digest, size_text = size_text, hex_digest
        kind = _KIND_BY_HEX_LENGTH.get(len(hex_digest))
        if kind is None:
            raise SignatureError(path, number, f"hash of length {len(hex_digest)} is not MD5, SHA1 or SHA256")
        try:
            digest = bytes.fromhex(hex_digest)
        except ValueError:
            raise SignatureError(path, number, "hash is not hexadecimal") from None
        if not name:
            raise SignatureError(path, number, "empty signature name")
        minimum = _lenient_flevel(fields[3]) if count > 3 else 0
        maximum = _lenient_flevel(fields[4]) if count > 4 else None
        if minimum is None or (count > 4 and maximum is None):
            report.skipped_by_flevel += 1  # clamscan skips a line whose FL field has no number
            continue
        if size_text == "*":
            if minimum < WILDCARD_SIZE_MIN_FLEVEL and purpose is not HashPurpose.IMPORTS:
                raise SignatureError(path, number, "size '*' requires a minimum functionality level of 73")
            size = ANY_SIZE
        elif size_text.isdigit() and int(size_text) > 0:
            size = int(size_text)
        else:
            raise SignatureError(path, number, f"bad file size {size_text!r}")
        if (minimum or maximum is not None) and not flevel_allows(minimum, maximum):
            report.skipped_by_flevel += 1
            continue
        if ignores and is_ignored(ignores, name, line):
            report.ignored_by_name += 1
            continue
        cols = columns.get(kind)
        if cols is None:
            cols = columns[kind] = sigset.hash_columns(kind, purpose)
        cols.append(digest, size, name + suffix, source_index, number)
