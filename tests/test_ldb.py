"""Logical signatures: the expression language, the line parser and the engine's evidence.

Verdict parity with clamscan lives in tests/test_ldb_parity.py; these are the pieces on their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.database.compiled import open_database
from bastion.engine.scanner import Engine, ScanOptions
from bastion.signatures.errors import SignatureError
from bastion.signatures.hexpattern import widen
from bastion.signatures.ldb import parse_ldb, split_fields
from bastion.signatures.logic import describe, evaluate, indexes, parse_expression
from bastion.signatures.model import ByteCompareSubsig, ContentSubsig, MacroSubsig, PcreSubsig, SignatureSet
from tests.helpers import write


# ---------------------------------------------------------------- expressions
@pytest.mark.parametrize(("text", "counts", "expected"), [
    ("0", [1], True), ("0", [0], False),
    ("0&1", [1, 1], True), ("0&1", [1, 0], False),
    ("0|1", [0, 2], True), ("0|1", [0, 0], False),
    ("0=2", [2], True), ("0=2", [3], False),
    ("0>2", [3], True), ("0>2", [2], False),
    ("0<2", [1], True), ("0<2", [0], True), ("0<2", [2], False),
    ("0=0", [0], True), ("0=0", [1], False),
    # no precedence: a&b|c is a&(b|c)
    ("0&1|2", [0, 0, 1], False), ("0&1|2", [1, 0, 1], True),
    ("(0|1|2)>3,2", [2, 2, 0], True), ("(0|1|2)>3,2", [5, 0, 0], False), ("(0|1|2)>3,2", [1, 1, 0], False),
    ("(0|1)=2", [1, 1], True), ("(0|1)=2", [3, 0], False),
    ("((0|1)&(2|3))&4", [1, 0, 0, 1, 1], True), ("((0|1)&(2|3))&4", [1, 0, 0, 1, 0], False),
])
def test_expression_evaluation(text: str, counts: list[int], expected: bool) -> None:
    assert evaluate(parse_expression(text), counts) is expected


@pytest.mark.parametrize("text", ["", "0&", "&0", "(0", "0)", "0=", "0=x", "a", "0&&1", "0=1,", "()"])
def test_bad_expressions_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_expression(text)


def test_indexes_and_describe() -> None:
    tree = parse_expression("0&1|(2&3)>1,2")
    assert indexes(tree) == {0, 1, 2, 3}
    assert describe(tree) == "(0&(1|(2&3)>1,2))"


@given(st.lists(st.integers(0, 5), min_size=3, max_size=3))
def test_and_or_agree_with_python(counts: list[int]) -> None:
    a, b, c = (x > 0 for x in counts)
    assert evaluate(parse_expression("0&1&2"), counts) == (a and b and c)
    assert evaluate(parse_expression("0|1|2"), counts) == (a or b or c)
    assert evaluate(parse_expression("(0&1)|2"), counts) == ((a and b) or c)


# ---------------------------------------------------------------- the line parser
def test_fields_split_outside_pcre_only() -> None:
    assert split_fields("N;Target:0;0&1;4142;0/a;b\\/c/i") == ["N", "Target:0", "0&1", "4142", "0/a;b\\/c/i"]


def test_widen_puts_nul_after_bytes_not_gaps() -> None:
    assert widen("41??{2}4?(42|43)*44") == "4100??00{2}4?00(4200|4300)*4400"


def _parse(text: str, name: str = "t.ldb") -> SignatureSet:
    sigset = SignatureSet()
    index = sigset.add_source(name, "0" * 64, False)
    parse_ldb(name, text.encode(), sigset, index, False)
    return sigset


def test_every_subsignature_kind_parses() -> None:
    s = _parse("N;Engine:81-255,Target:1,FileSize:10-20;0&1&2&3&4;EP+0:4142::i;4344::wa;0/x[yz]/gr;"
               "0(>>4#ib2#>1000,<2000);${1-5}3$\n")
    sig = s.logical[0]
    assert sig.name == "N.UNOFFICIAL" and sig.target == 1 and sig.conditions.file_size == (10, 20)
    kinds = [type(x) for x in sig.subsigs]
    assert kinds == [ContentSubsig, ContentSubsig, PcreSubsig, ByteCompareSubsig, MacroSubsig]
    bcomp = sig.subsigs[3]
    assert isinstance(bcomp, ByteCompareSubsig) and bcomp.comparisons == ((">", 1000), ("<", 2000))
    # content subsignatures nominate through the body matcher: ::wa gives two patterns
    assert [(b.lsig, b.subsig, b.caseless) for b in s.bodies] == [(0, 0, True), (0, 1, False), (0, 1, False)]
    assert s.signature_count == 1


@pytest.mark.parametrize(("line", "reason"), [
    ("N;Target:0;0&1;4142", "uses subsignatures 0-1"),
    ("N;Engine:81-255;0;4142", "no Target"),
    ("N;Target:0;0", "at least 4"),
    ("N;Target:0;0;4142::q", "modifiers"),
    ("N;Target:0;0&1;1/x/;4142", "earlier subsignatures"),
    ("N;Target:0;0&1;4142;0/a(b/", "PCRE2 refuses"),
    ("N;Target:0,FileSize:1-2;0;4142", "Engine"),
    ("N;Engine:81-255,Target:0;0;4142;" + ";".join(["4142"] * 64), "more than 64"),
])
def test_bad_lines_name_file_and_line(line: str, reason: str) -> None:
    with pytest.raises(SignatureError) as err:
        _parse("Good;Target:0;0;41424344\n" + line + "\n")
    assert str(err.value).startswith("t.ldb:2: ") and reason in str(err.value)


def test_skipped_lines_are_counted() -> None:
    s = _parse("A;Engine:250-255,Target:0;0;4142\nB;Engine:81-255,Target:0,Colour:red;0;4142\n"
               "C;Engine:81-255,Target:0,Container:CL_TYPE_NOPE;0;4142\nD;Engine:81-255,Target:99;0;4142\n")
    assert not s.logical and not s.bodies
    assert (s.report.skipped_by_flevel, s.report.skipped_by_condition, s.report.skipped_by_target) == (1, 2, 1)


# ---------------------------------------------------------------- through the engine
def test_engine_evidence_for_a_logical_match(tmp_path: Path) -> None:
    db = write(tmp_path / "db" / "x.ldb", "Test.Logic;Engine:81-255,Target:0;0&1>1;4142;43444546::i\n")
    write(tmp_path / "db" / "x.ign2", "Nothing.Here\n")
    data = b"\x00" * 10 + b"AB" + b"\x00" * 5 + b"cdef" + b"--" + b"CDEF"
    database = open_database([str(db.parent)], use_cache=False)
    result = Engine(database, ScanOptions(allmatch=True)).scan_bytes(data)
    (det,) = result.detections
    assert det.name == "Test.Logic.UNOFFICIAL"
    ev = det.evidence
    assert ev.kind == "logical" and ev.line == 1 and ev.source == str(db)
    assert ev.subsig_counts == (1, 2) and ev.offsets == (10, 17)
    assert ev.pattern.startswith("Test.Logic;")
    assert not Engine(database).scan_bytes(data.replace(b"CDEF", b"xxxx")).detections


def test_logical_signatures_survive_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    db = write(tmp_path / "db" / "x.ldb", "Cached.Logic;Engine:81-255,Target:0;0&1;4142;0/c+d/\n")
    first = open_database([str(db)])
    second = open_database([str(db)])
    assert second.from_cache and not first.from_cache
    assert len(second.logical) == 1 and second.signature_count == 1
    hit = Engine(second).scan_bytes(b"\x00\x00ABxxccd\x00")
    assert [d.name for d in hit.detections] == ["Cached.Logic.UNOFFICIAL"]


def test_ignore_list_and_pua_apply_to_logical_signatures(tmp_path: Path) -> None:
    d = tmp_path / "db"
    write(d / "a.ign2", "Gone\n")
    write(d / "a.ldb", "Gone;Target:0;0;41424344\nKept;Target:0;0;41424344\n")
    write(d / "b.ldu", "PUA.Thing;Target:0;0;41424344\n")
    names = [d.name for d in Engine(open_database([str(d)], use_cache=False), ScanOptions(allmatch=True))
             .scan_bytes(b"\x00ABCD\x00\x00").detections]
    assert names == ["Kept.UNOFFICIAL"]
    names = [d.name for d in Engine(open_database([str(d)], pua=True, use_cache=False), ScanOptions(allmatch=True))
             .scan_bytes(b"\x00ABCD\x00\x00").detections]
    assert names == ["Kept.UNOFFICIAL", "PUA.Thing.UNOFFICIAL"]
