"""Ignore lists: ``.ign`` and ``.ign2`` (drop signatures by name at load time).

Entry: ``Name`` or ``Name:md5`` (md5 of the full DB line: the signature is ignored only while it is
unchanged).  Legacy three-field ``x:y:Name`` lines use the third field.
"""

from __future__ import annotations

import re

from bastion.signatures.errors import SignatureError
from bastion.signatures.model import SignatureSet
from bastion.signatures.textdb import iter_signature_lines

_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def parse_ignore(path: str, data: bytes, sigset: SignatureSet) -> None:
    for number, line in iter_signature_lines(path, data):
        fields = line.split(":")
        if len(fields) == 1:
            name, digest = fields[0], ""
        elif len(fields) == 2:
            name, digest = fields
            if not _MD5.fullmatch(digest):
                raise SignatureError(path, number, "second field must be the MD5 of the signature line")
            digest = digest.lower()
        elif len(fields) == 3:
            name, digest = fields[2], ""
        else:
            raise SignatureError(path, number, f"expected 1 to 3 ':'-separated fields, found {len(fields)}")
        if not name:
            raise SignatureError(path, number, "empty signature name")
        # the entry is compared as written: "X.UNOFFICIAL" does not ignore X (clamscan 1.4.6)
        sigset.ignores.setdefault(name, set()).add(digest)
