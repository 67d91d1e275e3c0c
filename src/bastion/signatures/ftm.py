"""File type magic databases (``.ftm``): teach Bastion's file typing new types from a database.

Line: ``magictype:offset:magicbytes:name:rtype:type[:minFL[:maxFL]]`` (ClamAV's ``FileTypeMagic``).

* magictype 0: ``magicbytes`` (hex) must be at ``offset`` (a number) in the object's first bytes;
  the object (typed ``rtype`` by the built-in typing, ``CL_TYPE_ANY`` for any) becomes ``type``.
* magictype 1: ``magicbytes`` is a body pattern, ``offset`` a number or ``*``.  ClamAV uses these
  while scanning to find embedded objects; they are parsed and kept, not used for typing yet (README).
* magictype 4: partition-table magic (HFS+); parsed and kept.

As in clamscan 1.4.6, a bad line is an error naming it, unknown type names are errors, lines outside
the functionality level are skipped, and a file with no usable line is refused.
"""

from __future__ import annotations

from bastion.signatures.cltypes import CL_TYPES
from bastion.signatures.errors import SignatureError
from bastion.signatures.hexpattern import translate
from bastion.signatures.model import FileTypeMagic, SignatureSet
from bastion.signatures.textdb import flevel_fields_allow, iter_signature_lines

MAGIC_TYPES = frozenset({0, 1, 4})


def parse_ftm(path: str, data: bytes, sigset: SignatureSet, source_index: int) -> None:
    loaded = 0
    last = 0
    for number, line in iter_signature_lines(path, data):
        last = number
        fields = line.split(":")
        if not 6 <= len(fields) <= 8:
            raise SignatureError(path, number, f"expected 6 to 8 ':'-separated fields, found {len(fields)}")
        kind_text, offset_text, magic_text, name, rtype, ftype = fields[:6]
        if not kind_text.isdigit() or int(kind_text) not in MAGIC_TYPES:
            raise SignatureError(path, number, f"unknown magic type {kind_text!r} (0, 1 or 4)")
        kind = int(kind_text)
        if offset_text == "*" and kind == 1:
            offset = -1
        elif offset_text.isdigit():
            offset = int(offset_text)
        else:
            raise SignatureError(path, number, f"bad offset {offset_text!r}")
        for what, value in (("previous type", rtype), ("type", ftype)):
            if value not in CL_TYPES:
                raise SignatureError(path, number, f"unknown {what} {value!r}")
        try:
            if kind == 1:
                magic = translate(magic_text).regex
            else:
                magic = bytes.fromhex(magic_text)
                if not magic or len(magic) * 2 != len(magic_text):
                    raise ValueError("magic bytes must be an even number of hex digits")
        except ValueError as exc:
            raise SignatureError(path, number, str(exc)) from None
        if not flevel_fields_allow(path, number, fields, 6):
            sigset.report.skipped_by_flevel += 1
            continue
        sigset.filetypes.append(FileTypeMagic(kind, offset, magic, magic_text, name, rtype, ftype,
                                              source_index, number))
        loaded += 1
    if not loaded:
        raise SignatureError(path, last, "no usable file type magic in this database")
