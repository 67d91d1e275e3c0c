"""Logical signature databases: ``.ldb`` and ``.ldu``.

Line: ``Name;TargetDescriptionBlock;LogicalExpression;Subsig0[;Subsig1...]`` (ClamAV's
``LogicalSignatures`` manual).  Fields are split on ``;`` except inside the ``/.../`` body of a PCRE
subsignature (clamscan 1.4.6 loads ``0/a;b/``).

Each content subsignature also becomes a :class:`BodySignature` with ``lsig``/``subsig`` set, so the
fast matcher nominates logical signatures with the same Hyperscan databases as ``.ndb`` ones; the
engine then counts matches exactly and evaluates the expression (:mod:`bastion.signatures.logic`).
A subsignature with ``::a`` and ``::w`` gives two nominating patterns (ascii and wide).
"""

from __future__ import annotations

import re

from bastion.signatures.cltypes import CL_TYPES
from bastion.signatures.errors import SignatureError
from bastion.signatures.hexpattern import Translation, translate, widen
from bastion.signatures.logic import indexes, parse_expression
from bastion.signatures.model import (
    BodySignature,
    ByteCompareSubsig,
    ContentSubsig,
    FuzzyImageSubsig,
    LogicalSignature,
    MacroSubsig,
    PcreSubsig,
    SignatureSet,
    Subsig,
    TargetConditions,
)
from bastion.signatures.offsets import (
    ANY,
    EXECUTABLE_ANCHORS,
    EXECUTABLE_TARGETS,
    MAX_MACRO_GROUP,
    Anchor,
    Offset,
    parse_offset,
)
from bastion.signatures.pcre import compile_pcre
from bastion.signatures.textdb import flevel_allows, is_ignored, iter_signature_lines, printed_name

MAX_SUBSIGS = 64
MAX_TARGET = 14
CONTENT_MODIFIERS = frozenset("iwfa")
PCRE_FLAGS = frozenset("greismxAEU")
_MACRO = re.compile(r"\$\{(\d+)-(\d+)\}(\d+)\$")
_BCOMP = re.compile(r"(\d+)\((<<|>>)(0x[0-9a-fA-F]+|\d+)#([hdai]?)([lb]?)(e?)(0x[0-9a-fA-F]+|\d+)#(.+)\)")
_COMPARISON = re.compile(r"([<>=])(0x[0-9a-fA-F]+|\d+)")
_RANGE = re.compile(r"(\d+)-(\d+)")
# Fullword boundaries: no alphanumeric byte just before / after (for wide text, the character before
# is two bytes back).  Zero-width, so the Hyperscan prefilter leaves them out.
_WORD = b"[A-Za-z0-9]"


class _Skip(Exception):
    """The line is valid but not for this engine (FL, unknown type): counted, not loaded."""

    def __init__(self, why: str) -> None:
        self.why = why


def split_fields(line: str) -> list[str]:
    """Split on ``;`` but not inside a PCRE ``/.../`` body (``\\/`` does not close it)."""
    fields: list[str] = []
    current: list[str] = []
    in_regex = False
    i = 0
    while i < len(line):
        c = line[i]
        if in_regex and c == "\\" and i + 1 < len(line):
            current.append(line[i:i + 2])
            i += 2
            continue
        if c == "/" and len(fields) >= 3:
            in_regex = not in_regex
        elif c == ";" and not in_regex:
            fields.append("".join(current))
            current = []
            i += 1
            continue
        current.append(c)
        i += 1
    fields.append("".join(current))
    return fields


def _number(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def _range(key: str, value: str) -> tuple[int, int]:
    m = _RANGE.fullmatch(value)
    if not m:
        raise ValueError(f"{key} needs a range min-max, got {value!r}")
    return int(m.group(1)), int(m.group(2))


def _parse_tdb(text: str) -> tuple[int, TargetConditions]:
    target: int | None = None
    file_size = entry_point = sections = None
    container = handler = None
    intermediates: tuple[str, ...] = ()
    icons: list[str] = []
    engine_seen = False
    for pos, item in enumerate(text.split(",")):
        key, sep, value = item.partition(":")
        if not sep:
            raise ValueError(f"target description item {item!r} is not Key:Value")
        if key == "Engine":
            if pos != 0:
                raise ValueError("Engine must be the first item of the target description")
            low, high = _range(key, value)
            engine_seen = True
            if not flevel_allows(low, high):
                raise _Skip("flevel")
        elif key == "Target":
            if not value.isdigit():
                raise ValueError(f"bad Target {value!r}")
            target = int(value)
        elif key == "FileSize":
            file_size = _range(key, value)
        elif key == "EntryPoint":
            entry_point = _range(key, value)
        elif key == "NumberOfSections":
            sections = _range(key, value)
        elif key == "Container":
            if value not in CL_TYPES:
                raise _Skip("condition")
            container = value
        elif key == "Intermediates":
            layers = tuple(value.split(">"))
            if len(layers) > 16 or any(layer not in CL_TYPES for layer in layers):
                raise _Skip("condition")
            intermediates = layers
        elif key in ("IconGroup1", "IconGroup2"):
            icons.append(value)
        elif key == "HandlerType":
            if value not in CL_TYPES:
                raise _Skip("condition")
            handler = value
        else:
            raise _Skip("condition")  # ClamAV skips a signature with an unknown keyword
    if target is None:
        raise ValueError("the target description has no Target")
    if not engine_seen and (file_size or entry_point or sections or container or intermediates or icons or handler):
        raise ValueError("Engine:min-max must come first when other target description keys are used")
    if target > MAX_TARGET:
        raise _Skip("target")
    if (entry_point or sections) and target not in EXECUTABLE_TARGETS:
        raise ValueError("EntryPoint and NumberOfSections need Target 1, 6 or 9")
    return target, TargetConditions(file_size, entry_point, sections, container, intermediates, tuple(icons),
                                    handler)


def _check_offset(offset: Offset, target: int, text: str) -> None:
    if offset.anchor in EXECUTABLE_ANCHORS and target not in EXECUTABLE_TARGETS:
        raise ValueError(f"offset {text} needs Target 1, 6 or 9")
    if offset.anchor is Anchor.VERSION_INFO and target != 1:
        raise ValueError("offset VI needs Target 1 (PE)")
    if offset.anchor is Anchor.MACRO:
        raise ValueError(f"offset {text} is only for .ndb macro group members")


def _fullword(regex: bytes, wide: bool) -> bytes:
    before = b"(?<!" + _WORD + (b"[\\x00-\\xff])" if wide else b")")
    return before + b"(?:" + regex + b")(?!" + _WORD + b")"


def _content(text: str, target: int) -> tuple[ContentSubsig, list[tuple[str, Translation]]]:
    """A content subsignature and its nominating patterns ``[(hex text, translation), ...]``."""
    hex_text, sep, modifiers = text.partition("::")
    if sep and (not modifiers or set(modifiers) - CONTENT_MODIFIERS):
        raise ValueError(f"bad subsignature modifiers {modifiers!r} (i, w, f, a)")
    offset = ANY
    if ":" in hex_text:
        offset_text, _, hex_text = hex_text.partition(":")
        offset = parse_offset(offset_text)
        _check_offset(offset, target, offset_text)
    variants = []
    if "w" in modifiers:
        variants.append(("wide", widen(hex_text)))
        if "a" in modifiers:
            variants.append(("ascii", hex_text))
    else:
        variants.append(("ascii", hex_text))
    regexes = []
    nominate = []
    for kind, pattern in variants:
        tr = translate(pattern)
        rx = tr.regex
        if "f" in modifiers:
            rx = _fullword(rx, kind == "wide")
        regexes.append(rx)
        nominate.append((pattern, tr))
    regex = regexes[0] if len(regexes) == 1 else b"|".join(b"(?:" + r + b")" for r in regexes)
    if "i" in modifiers:
        regex = b"(?i:" + regex + b")"
    return ContentSubsig(offset, hex_text, modifiers, regex), nominate


def _pcre(text: str, index: int) -> PcreSubsig:
    head, slash, rest = text.partition("/")
    body, slash2, flags = rest.rpartition("/")
    if not slash or not slash2:
        raise ValueError("PCRE subsignature needs /regex/")
    if not body:
        raise ValueError("empty PCRE")
    if "(?UTF" in body:
        raise ValueError("(?UTF*) is not allowed in a PCRE subsignature")
    if set(flags) - PCRE_FLAGS:
        raise ValueError(f"bad PCRE flags {flags!r}")
    offset = ANY
    trigger_text = head
    if ":" in head:
        offset_text, _, trigger_text = head.rpartition(":")
        offset = parse_offset(offset_text)
        if offset.anchor is Anchor.MACRO:
            raise ValueError(f"offset {offset_text} is only for .ndb macro group members")
    compile_pcre(body.encode("latin-1"), flags)  # a regex PCRE2 refuses is a load error
    trigger = parse_expression(trigger_text)
    if any(i >= index for i in indexes(trigger)):
        raise ValueError("a PCRE trigger may only refer to earlier subsignatures")
    return PcreSubsig(offset, trigger, trigger_text, body.encode("latin-1"), flags)


def _bcomp(m: re.Match[str], index: int) -> ByteCompareSubsig:
    ref = int(m.group(1))
    if ref >= index:
        raise ValueError("a byte compare may only refer to an earlier subsignature")
    offset = _number(m.group(3)) * (-1 if m.group(2) == "<<" else 1)
    base = m.group(4) or "a"
    little = m.group(5) == "l"
    exact = bool(m.group(6)) or base == "i"
    length = _number(m.group(7))
    if base == "d" and little:
        raise ValueError("byte compare: decimal values cannot be little-endian")
    if base == "i" and length not in (1, 2, 4, 8):
        raise ValueError("byte compare: binary length must be 1, 2, 4 or 8")
    if base != "i" and not 0 < length <= 18:
        raise ValueError("byte compare: text length must be 1-18")
    comparisons = []
    for part in m.group(8).split(","):
        cm = _COMPARISON.fullmatch(part)
        if not cm:
            raise ValueError(f"byte compare: bad comparison {part!r}")
        comparisons.append((cm.group(1), _number(cm.group(2))))
    if len(comparisons) > 2:
        raise ValueError("byte compare: at most two comparisons")
    return ByteCompareSubsig(ref, offset, base, little, exact, length, tuple(comparisons))


def _subsig(text: str, index: int, target: int) -> tuple[Subsig, list[tuple[str, Translation]]]:
    m = _MACRO.fullmatch(text)
    if m:
        # a macro as subsignature 0 has no previous match to follow: clamscan 1.4.6 loads it, it never matches
        group = int(m.group(3))
        if group >= MAX_MACRO_GROUP:
            raise ValueError(f"macro group {group} out of range (0-31)")
        low, high = int(m.group(1)), int(m.group(2))
        if high < low:
            raise ValueError(f"bad macro range {{{low}-{high}}}")
        return MacroSubsig(low, high, group), []
    if text.startswith("$"):
        raise ValueError(f"bad macro subsignature {text!r}")
    if "/" in text:
        return _pcre(text, index), []
    m = _BCOMP.fullmatch(text)
    if m:
        return _bcomp(m, index), []
    if text.startswith("fuzzy_img#"):
        parts = text.split("#")
        if len(parts) not in (2, 3) or len(parts[1]) != 16:
            raise ValueError("bad fuzzy_img subsignature")
        return FuzzyImageSubsig(parts[1], int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 0), []
    return _content(text, target)


def parse_ldb(path: str, data: bytes, sigset: SignatureSet, source_index: int, official: bool) -> None:
    """Parse one logical-signature database into ``sigset``; raise :class:`SignatureError` on a bad line."""
    report = sigset.report
    for number, line in iter_signature_lines(path, data):
        fields = split_fields(line)
        if len(fields) < 4:
            raise SignatureError(path, number, f"expected at least 4 ';'-separated fields, found {len(fields)}")
        name, tdb_text, expr_text, sub_texts = fields[0], fields[1], fields[2], fields[3:]
        if not name:
            raise SignatureError(path, number, "empty signature name")
        if len(sub_texts) > MAX_SUBSIGS:
            raise SignatureError(path, number, f"more than {MAX_SUBSIGS} subsignatures")
        try:
            target, conditions = _parse_tdb(tdb_text)
            expression = parse_expression(expr_text)
            used = indexes(expression)
            if max(used) + 1 != len(sub_texts):
                raise ValueError(f"the expression uses subsignatures 0-{max(used)} but the line has "
                                 f"{len(sub_texts)}")
            parsed = [_subsig(text, i, target) for i, text in enumerate(sub_texts)]
        except _Skip as skip:
            if skip.why == "flevel":
                report.skipped_by_flevel += 1
            elif skip.why == "target":
                report.skipped_by_target += 1
            else:
                report.skipped_by_condition += 1
            continue
        except ValueError as exc:
            raise SignatureError(path, number, str(exc)) from None
        if is_ignored(sigset.ignores, name, line):
            report.ignored_by_name += 1
            continue
        lsig_index = len(sigset.logical)
        for sub_index, (sub, nominate) in enumerate(parsed):
            for pattern, tr in nominate:
                assert isinstance(sub, ContentSubsig)
                sigset.bodies.append(BodySignature(
                    name="", target=target, offset=sub.offset, pattern=pattern, regex=tr.regex,
                    prefilter=tr.prefilter, prefilter_exact=tr.prefilter_exact and "f" not in sub.modifiers,
                    longest_literal=tr.longest_literal, max_length=tr.max_length, source_index=source_index,
                    line=number, lsig=lsig_index, subsig=sub_index, caseless="i" in sub.modifiers))
        sigset.logical.append(LogicalSignature(
            name=printed_name(name, official), target=target, conditions=conditions, expression=expression,
            expression_text=expr_text, subsigs=tuple(s for s, _ in parsed), source_index=source_index, line=number,
            text=line))
