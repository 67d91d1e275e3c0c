"""Extended (body) signature databases: ``.ndb`` and ``.ndu``.

Line: ``Name:Target:Offset:HexSig[:minFL[:maxFL]]`` (see ``BodySignatureFormat`` in ClamAV's manual).
"""

from __future__ import annotations

from bastion.signatures.errors import SignatureError
from bastion.signatures.hexpattern import translate
from bastion.signatures.model import BodySignature, MacroMember, SignatureSet
from bastion.signatures.offsets import EXECUTABLE_ANCHORS, EXECUTABLE_TARGETS, Anchor, parse_offset
from bastion.signatures.textdb import (
    flevel_fields_allow,
    is_ignored,
    iter_signature_lines,
    printed_name,
)

# Target types 0-14 exist (libclamav matcher.h); a higher one is skipped, not refused.
MAX_TARGET = 14


def parse_ndb(path: str, data: bytes, sigset: SignatureSet, source_index: int, official: bool) -> None:
    """Parse one body-signature database into ``sigset``; raise :class:`SignatureError` on a bad line."""
    report = sigset.report
    for number, line in iter_signature_lines(path, data):
        fields = line.split(":")
        count = len(fields)
        if count < 4 or count > 6:
            raise SignatureError(path, number, f"expected 4 to 6 ':'-separated fields, found {count}")
        name, target_text, offset_text, hex_text = fields[0], fields[1], fields[2], fields[3]
        if not name:
            raise SignatureError(path, number, "empty signature name")
        loads_at_this_level = flevel_fields_allow(path, number, fields, 4)
        if target_text == "*":
            target = 0
        elif target_text.isdigit():
            target = int(target_text)
        else:
            raise SignatureError(path, number, f"bad target type {target_text!r}")
        if not loads_at_this_level:
            report.skipped_by_flevel += 1
            continue
        if target > MAX_TARGET:
            report.skipped_by_target += 1
            continue
        try:
            offset = parse_offset(offset_text)
        except ValueError as exc:
            raise SignatureError(path, number, str(exc)) from None
        if offset.anchor in EXECUTABLE_ANCHORS and target not in EXECUTABLE_TARGETS:
            raise SignatureError(path, number, f"offset {offset_text} needs target type 1, 6 or 9")
        if offset.anchor is Anchor.VERSION_INFO and target != 1:
            raise SignatureError(path, number, "offset VI needs target type 1 (PE)")
        try:
            tr = translate(hex_text)
        except ValueError as exc:
            raise SignatureError(path, number, str(exc)) from None
        if target == 0 and len(hex_text) == 4 and offset.anchor is not Anchor.MACRO and tr.max_length == 2 \
                and tr.longest_literal and len(tr.longest_literal) == 2:
            # clamscan 1.4.6 puts plain literals of target 0 in a Boyer-Moore matcher that needs 3 bytes
            raise SignatureError(path, number, "a 2-byte literal signature of target 0 is too short (3 bytes minimum)")
        if offset.anchor is Anchor.MACRO:
            # Macro group members only serve .ldb macro subsignatures; they never alert on their own.
            report.macro_members += 1
            sigset.macros.append(MacroMember(offset.value, name, hex_text, tr.regex, source_index, number))
            continue
        if is_ignored(sigset.ignores, name, line):
            report.ignored_by_name += 1
            continue
        sigset.bodies.append(BodySignature(
            name=printed_name(name, official), target=target, offset=offset, pattern=hex_text,
            regex=tr.regex, prefilter=tr.prefilter, prefilter_exact=tr.prefilter_exact,
            longest_literal=tr.longest_literal, max_length=tr.max_length,
            source_index=source_index, line=number,
        ))
