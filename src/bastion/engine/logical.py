"""Evaluating logical signatures (``.ldb``) on one object.

The body matcher's Hyperscan pass only *nominates* a logical signature (one of its content
subsignatures may be present).  Here every subsignature gets an exact match count, in order:

* content: the number of distinct start offsets where the pattern matches and its offset allows
  (overlapping matches count, as in clamscan: ``6161`` is found 5 times in ``aaaaaa``);
* macro ``${min-max}g$``: how many matches of the previous subsignature have a member of macro
  group g starting ``min..max`` bytes after their start;
* byte compare: 1 when the bytes read relative to the referenced subsignature's first match satisfy
  every comparison;
* PCRE: run with PCRE2 (the library ClamAV uses) only when its trigger holds on the counts so far;
  1, or the number of matches with ``g``.

Then the expression (:mod:`bastion.signatures.logic`) decides; an expression that holds on zero
counts always holds, as in clamscan (see ``vacuous`` in :mod:`bastion.database.logicmatcher`).
Scanned content only ever goes to compiled regular expressions: nothing in it is executed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bastion.database.logicmatcher import LogicMatcher, offset_of
from bastion.engine.offsets import resolve_window
from bastion.signatures.logic import evaluate
from bastion.signatures.offsets import Anchor
from bastion.signatures.pcre import compile_pcre

if TYPE_CHECKING:
    from bastion.formats.executable import ExecutableInfo

# Match start offsets kept per subsignature (for macros, byte compares and evidence); counting goes on.
KEPT_STARTS = 4096


@dataclass(frozen=True, slots=True)
class LogicalMatch:
    """A logical signature that held: per-subsignature counts and first offsets (-1: none)."""

    lsig: int
    counts: tuple[int, ...]
    first_offsets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ObjectFacts:
    """What the target description block may ask about the object being scanned."""

    size: int
    file_type: str
    container: str = "CL_TYPE_ANY"       # the root object is in no container
    intermediates: tuple[str, ...] = ()


def _read_number(data: memoryview, pos: int, base: str, little: bool, exact: bool, length: int) -> int | None:
    if pos < 0 or pos >= len(data):
        return None
    raw = bytes(data[pos:pos + length])
    if len(raw) < length and exact:
        return None
    if base == "i":
        return int.from_bytes(raw, "little" if little else "big")
    text = raw.decode("latin-1")
    if base == "a":
        base = "h" if text[:2].lower() == "0x" else "d"
        if base == "h":
            text = text[2:]
    digits = "0123456789abcdefABCDEF" if base == "h" else "0123456789"
    n = 0
    while n < len(text) and text[n] in digits:
        n += 1
    if n == 0 or (exact and n < len(text)):
        return None
    text = text[:n]
    if base == "h":
        if little:
            if len(text) % 2:
                text = "0" + text
            text = "".join(reversed([text[i:i + 2] for i in range(0, len(text), 2)]))
        return int(text, 16)
    return int(text)


def _compare(value: int, comparisons: tuple) -> bool:
    for op, want in comparisons:
        if op == "<" and not value < want:
            return False
        if op == ">" and not value > want:
            return False
        if op == "=" and value != want:
            return False
    return True


class LogicalEvaluator:
    """Shared by every thread of an engine: compiled regexes are cached, nothing else is kept."""

    def __init__(self, matcher: LogicMatcher) -> None:
        self.matcher = matcher
        self._content: dict[tuple[int, int], re.Pattern[bytes]] = {}
        self._pcre: dict[tuple[int, int], object] = {}
        self._macro: dict[bytes, re.Pattern[bytes]] = {}

    def _content_regex(self, key: tuple[int, int], regex: bytes) -> re.Pattern[bytes]:
        rx = self._content.get(key)
        if rx is None:
            # a lookahead finds every start offset, overlapping matches included
            rx = self._content[key] = re.compile(b"(?=(?:" + regex + b"))", re.DOTALL)
        return rx

    def _pcre_regex(self, key: tuple[int, int], regex: bytes, flags: str) -> object:
        rx = self._pcre.get(key)
        if rx is None:
            rx = self._pcre[key] = compile_pcre(regex, flags)
        return rx

    def _count_content(self, key: tuple[int, int], sub: tuple, data: memoryview,
                       exe: Callable[[], ExecutableInfo | None]) -> tuple[int, list[int]]:
        window = resolve_window(offset_of(sub[1]), len(data), exe)
        if window is None:
            return 0, []
        lo, hi = window
        rx = self._content_regex(key, sub[4])
        count = 0
        starts: list[int] = []
        for m in rx.finditer(data, lo):
            start = m.start()
            if start > hi:
                break
            count += 1
            if len(starts) < KEPT_STARTS:
                starts.append(start)
        return count, starts

    def _count_pcre(self, key: tuple[int, int], sub: tuple, data: memoryview,
                    exe: Callable[[], ExecutableInfo | None]) -> tuple[int, list[int]]:
        offset = offset_of(sub[1])
        flags = sub[5]
        rx = self._pcre_regex(key, sub[4], flags)
        size = len(data)
        window = resolve_window(offset, size, exe)
        if window is None:
            return 0, []
        lo, hi = window
        end = size
        anchored = "A" in flags
        if offset.anchor is not Anchor.ANY:
            if offset.maxshift == 0 and "r" not in flags:
                anchored = True
            elif offset.maxshift and "e" in flags:
                end = min(size, hi)
        starts: list[int] = []
        if anchored:
            m = rx.match(data, lo, end)  # type: ignore[attr-defined]
            return (1, [m.start()]) if m is not None else (0, [])
        for m in rx.finditer(data, lo, end):  # type: ignore[attr-defined]
            if offset.anchor is not Anchor.ANY and offset.maxshift and "e" not in flags and m.start() > hi:
                break
            starts.append(m.start())
            if "g" not in flags or len(starts) >= KEPT_STARTS:
                break
        return len(starts), starts

    def _count_macro(self, sub: tuple, previous: list[int], data: memoryview) -> tuple[int, list[int]]:
        members = self.matcher.macros.get(sub[3], [])
        count = 0
        found: list[int] = []
        for start in previous:
            for _, _, regex in members:
                rx = self._macro.get(regex)
                if rx is None:
                    rx = self._macro[regex] = re.compile(regex, re.DOTALL)
                hit = next((p for p in range(start + sub[1], min(start + sub[2], len(data) - 1) + 1)
                            if rx.match(data, p)), None)
                if hit is not None:
                    count += 1
                    found.append(hit)
                    break
        return count, found

    @staticmethod
    def conditions_hold(record: tuple, facts: ObjectFacts, exe: Callable[[], ExecutableInfo | None]) -> bool:
        file_size, entry_point, sections, container, intermediates, icons, handler = record[2]
        if handler is not None or icons:
            return False  # HandlerType re-types instead of alerting; icon groups need .idb (README)
        if file_size is not None and not file_size[0] <= facts.size <= file_size[1]:
            return False
        if container is not None and container != facts.container:
            return False
        if intermediates:
            layers = facts.intermediates
            if len(intermediates) > len(layers):
                return False
            tail = layers[len(layers) - len(intermediates):]
            if any(want not in ("CL_TYPE_ANY", got) for want, got in zip(intermediates, tail, strict=True)):
                return False
        if entry_point is not None or sections is not None:
            info = exe()
            if info is None:
                return False
            if entry_point is not None and (info.entry_point is None
                                            or not entry_point[0] <= info.entry_point <= entry_point[1]):
                return False
            if sections is not None and not sections[0] <= len(info.sections) <= sections[1]:
                return False
        return True

    def evaluate(self, lsig: int, data: memoryview, facts: ObjectFacts, nominated: set[int],
                 exe: Callable[[], ExecutableInfo | None]) -> LogicalMatch | None:
        """Whether logical signature ``lsig`` holds on ``data``; ``nominated`` are the content
        subsignatures the fast matcher saw (the others cannot match)."""
        record = self.matcher.record(lsig)
        if not self.conditions_hold(record, facts, exe):
            return None
        subsigs = record[5]
        counts: list[int] = []
        starts: list[list[int]] = []
        for index, sub in enumerate(subsigs):
            kind = sub[0]
            found: tuple[int, list[int]] = (0, [])
            if kind == "c":
                if index in nominated:
                    found = self._count_content((lsig, index), sub, data, exe)
            elif kind == "p":
                if evaluate(sub[2], counts):
                    found = self._count_pcre((lsig, index), sub, data, exe)
            elif kind == "b":
                ref = starts[sub[1]]
                if ref:
                    value = _read_number(data, ref[0] + sub[2], sub[3], sub[4], sub[5], sub[6])
                    if value is not None and _compare(value, sub[7]):
                        found = (1, [ref[0] + sub[2]])
            elif kind == "m" and index > 0:
                found = self._count_macro(sub, starts[index - 1], data)
            counts.append(found[0])
            starts.append(found[1])
        if not evaluate(record[3], counts) and lsig not in self.matcher.vacuous:
            return None
        return LogicalMatch(lsig, tuple(counts), tuple(s[0] if s else -1 for s in starts))

