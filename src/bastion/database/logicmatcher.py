"""Compiled logical signatures (``.ldb``): one record per signature, decoded when it is nominated.

The content subsignatures of every logical signature sit in the body matcher's Hyperscan databases
(:mod:`bastion.database.bodymatcher`, entries with ``lsig >= 0``), so a scan pays nothing extra for
logical signatures until one of their subsignatures is seen.  Signatures that can be true although
none of their content subsignatures matched (``0=0``, ``0<2``, a PCRE whose trigger holds on no
matches) are listed in ``always`` and evaluated for every object of their target type.  Those whose
expression holds on zero counts are also listed in ``vacuous``: clamscan 1.4.6 reports them on every
object of their target type, even one where the content is present (it evaluates logical signatures
a second time without the match counts; tests/test_ldb_parity.py), and so does Bastion.

Records are plain tuples of str/int/bytes (marshal never loads code from data)::

    (name, target, conditions, expression, expression_text, subsigs, source_index, line, text)

with ``conditions`` = ``(file_size, entry_point, sections, container, intermediates, icon_groups,
handler_type)`` and each subsig one of::

    ("c", offset, pattern, modifiers, regex)                       content
    ("p", offset, trigger, trigger_text, regex, flags)             PCRE
    ("b", ref, offset, base, little, exact, length, comparisons)   byte compare
    ("m", low, high, group)                                        macro
    ("z", digest, distance)                                        fuzzy image hash

where ``offset`` is ``(anchor, value, section, maxshift)``.  Macro groups are stored as
``{group: [(name, pattern, regex), ...]}``.
"""

from __future__ import annotations

import marshal
import os
from array import array

from bastion.database.mapping import Blob, Column
from bastion.signatures.logic import evaluate
from bastion.signatures.model import (
    ByteCompareSubsig,
    ContentSubsig,
    FuzzyImageSubsig,
    LogicalSignature,
    MacroMember,
    MacroSubsig,
    PcreSubsig,
)
from bastion.signatures.offsets import Anchor, Offset


def _offset(o: Offset) -> tuple:
    return (o.anchor.value, o.value, o.section, o.maxshift)


def offset_of(record: tuple) -> Offset:
    return Offset(Anchor(record[0]), record[1], record[2], record[3])


def _subsig_record(sub: object) -> tuple:
    if isinstance(sub, ContentSubsig):
        return ("c", _offset(sub.offset), sub.pattern, sub.modifiers, sub.regex)
    if isinstance(sub, PcreSubsig):
        return ("p", _offset(sub.offset), sub.trigger, sub.trigger_text, sub.regex, sub.flags)
    if isinstance(sub, ByteCompareSubsig):
        return ("b", sub.ref, sub.offset, sub.base, sub.little, sub.exact, sub.length, sub.comparisons)
    if isinstance(sub, MacroSubsig):
        return ("m", sub.low, sub.high, sub.group)
    assert isinstance(sub, FuzzyImageSubsig)
    return ("z", sub.digest, sub.distance)


def _record(sig: LogicalSignature) -> tuple:
    c = sig.conditions
    conditions = (c.file_size, c.entry_point, c.sections, c.container, c.intermediates, c.icon_groups,
                  c.handler_type)
    return (sig.name, sig.target, conditions, sig.expression, sig.expression_text,
            tuple(_subsig_record(s) for s in sig.subsigs), sig.source_index, sig.line, sig.text)


def true_without_matches(sig: LogicalSignature) -> bool:
    """Whether the signature can hold when no content subsignature matched (so it must always run)."""
    zeros = [0] * len(sig.subsigs)
    if evaluate(sig.expression, zeros):
        return True
    # a PCRE (or byte compare, macro) could still match: evaluate as if each of them matched
    others = [0 if isinstance(s, ContentSubsig) else 1 for s in sig.subsigs]
    for i, sub in enumerate(sig.subsigs):
        if isinstance(sub, PcreSubsig) and evaluate(sub.trigger, zeros[:i]) and evaluate(sig.expression, others):
            return True
    return False


class LogicMatcher:
    """Every logical signature of a database, plus the ``.ndb`` macro groups they refer to."""

    def __init__(self, index: Column | array, records: Blob | bytes, always: list[int],
                 macros: dict[int, list[tuple[str, str, bytes]]], vacuous: list[int]) -> None:
        self.index = index
        self.records = records
        self.always = always
        self.vacuous = frozenset(vacuous)
        self.macros = macros
        self._decoded: dict[int, tuple] = {}

    def __len__(self) -> int:
        return max(0, len(self.index) - 1)

    def record(self, lsig: int) -> tuple:
        found = self._decoded.get(lsig)
        if found is None:
            start, end = self.index[lsig], self.index[lsig + 1]
            records = self.records
            found = self._decoded[lsig] = marshal.loads(
                records[start:end] if isinstance(records, bytes) else records.read(start, end))
        return found

    @classmethod
    def build(cls, logical: list[LogicalSignature], macros: list[MacroMember], lsig_offset: int = 0) -> LogicMatcher:
        """``lsig_offset``: where this matcher's ids start (a layer on top of others, database/layered.py);
        ``always`` and ``vacuous`` hold those ids, :meth:`record` takes the matcher's own index."""
        index = array("Q", [0])
        chunks = []
        total = 0
        always = []
        vacuous = []
        for i, sig in enumerate(logical):
            rec = marshal.dumps(_record(sig))
            chunks.append(rec)
            total += len(rec)
            index.append(total)
            if true_without_matches(sig):
                always.append(i + lsig_offset)
            if evaluate(sig.expression, [0] * len(sig.subsigs)):
                vacuous.append(i + lsig_offset)
        groups: dict[int, list[tuple[str, str, bytes]]] = {}
        for m in macros:
            groups.setdefault(m.group, []).append((m.name, m.pattern, m.regex))
        return cls(index, b"".join(chunks), always, groups, vacuous)

    def save(self, directory: str) -> None:
        assert isinstance(self.index, array) and isinstance(self.records, bytes), "only a built matcher is saved"
        with open(os.path.join(directory, "logical.index"), "wb") as fh:
            fh.write(self.index.tobytes())
        with open(os.path.join(directory, "logical.records"), "wb") as fh:
            fh.write(self.records)
        with open(os.path.join(directory, "logical.extra"), "wb") as fh:
            fh.write(marshal.dumps((self.always, self.macros, sorted(self.vacuous))))

    @classmethod
    def load(cls, directory: str) -> LogicMatcher:
        path = os.path.join(directory, "logical.index")
        with open(os.path.join(directory, "logical.extra"), "rb") as fh:
            always, macros, vacuous = marshal.loads(fh.read())
        return cls(Column(path, "Q"), Blob(os.path.join(directory, "logical.records")), always, macros, vacuous)

