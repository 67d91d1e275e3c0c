"""Body-signature grammar: translation to regexes and ClamAV's validation rules."""

from __future__ import annotations

import re

import pytest

from bastion.signatures.hexpattern import translate


def matches(sig: str, data: bytes) -> bool:
    return re.search(translate(sig).regex, data, re.DOTALL) is not None


@pytest.mark.parametrize(("sig", "hit", "miss"), [
    ("41424344", b"xxABCDxx", b"ABCE"),
    ("4142??4445", b"AB\x00DE", b"ABDE"),
    ("4142a?4445", b"AB\xa7DE", b"AB\xb7DE"),
    ("4142?74445", b"AB\xa7DE", b"AB\xa8DE"),
    ("4142*4445", b"AB.......DE", b"DEAB"),
    ("4142{2}4445", b"ABxxDE", b"ABxDE"),
    ("4142{-2}4445", b"ABDE", b"ABxxxDE"),
    ("4142{2-}4445", b"ABxxxxxDE", b"ABxDE"),
    ("4142{1-2}4445", b"ABxDE", b"ABxxxDE"),
    ("4142(43|44)4546", b"ABDEF", b"ABCCEF"),
    ("4142!(43|44)4546", b"ABZEF", b"ABCEF"),
    ("4142(4344|4546)4748", b"ABEFGH", b"ABCEGH"),
    ("4142!(4344|4546)4748", b"ABXYGH", b"ABCDGH"),
    ("4142(43|4445|4?46)4748", b"ABDEGH", b"ABDGH"),
    ("4142(W)4344", b"AB CD", b"ABxCD"),
    ("41[1-3]424344", b"A..BCD", b"A....BCD"),
    ("424344[1-3]41", b"BCD..A", b"BCDA"),
    ("(L)41424344", b"x\nABCD", b"xABCD"),
    ("41424344(L)", b"ABCD\r\n", b"ABCDx"),
    ("(B)41424344", b"x ABCD", b"xABCD"),
])
def test_syntax_matches_and_misses(sig: str, hit: bytes, miss: bytes) -> None:
    assert matches(sig, hit)
    assert not matches(sig, miss)


@pytest.mark.parametrize("sig", [
    "e8????????5d",          # no part with 2 consecutive literal bytes
    "41",                    # shorter than 2 bytes
    "414",                   # odd digits
    "41zz42",                # not hex
    "4142(43)4445",          # one alternative
    "4142!(43|4445)4647",    # negation of mixed lengths
    "4142(43|*)4445",        # '*' in alternatives
    "*41424344",             # leading '*'
    "41424344*",             # trailing '*'
    "4142*43??44",           # second part without a 2-byte literal run
    "41[1-40]424344",        # byte range over 32
    "4142(4344",             # unterminated
])
def test_refused_like_clamav(sig: str) -> None:
    with pytest.raises(ValueError):
        translate(sig)


def test_prefilter_is_superset_for_lookaround_tokens() -> None:
    tr = translate("4142!(4344|4546)4748")
    assert not tr.prefilter_exact
    assert re.search(tr.prefilter, b"ABCDGH", re.DOTALL)  # widened
    assert not re.search(tr.regex, b"ABCDGH", re.DOTALL)  # exact


def test_fixed_gap_under_128_does_not_split() -> None:
    # {n} with n < 128 is n x ??, so the part needs no literal run of its own on both sides
    translate("41424344{10}45")


def test_reversed_range_loads_but_never_matches() -> None:
    # clamscan 1.4.6 accepts {5-2} and never matches it
    tr = translate("4142{5-2}4344")
    assert not tr.prefilter_exact
    assert not re.search(tr.regex, b"AB" + b"x" * 5 + b"CD", re.DOTALL)
