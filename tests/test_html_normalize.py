"""HTML normalized text (clamscan's nocomment.html): character references decoded, comments dropped,
script whitespace dropped; held against clamscan 1.4.6 with target-3 and target-0 signatures, and
the same however the page is cut into pieces."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bastion.engine.normalize import HtmlNormalizer, normalize_html

PAGE = (b"<html><head><title>T&amp;T</title>\r\n<script>var X = 'A&amp;B'; // <!-- c -->\n"
        b"document.write(\"Hi\");</script></head>\n<body BGCOLOR=\"red\">  Hello   World &amp; &lt;b&gt; "
        b"&quot;q&quot; &#65;&#x41;&#X42; &#0065; &copy; &nbsp; &eacute; &euro; &bogus; &amp &#; &#x; "
        b"&#99999999; &#128; &#1234; &#x10FFFF; &yuml; &AMP; &#12290; &#0x43;\n<!-- a comment HERE --> after "
        b"<!DOCTYPE x> &#104;&#x69;dden Evi&#108;Pay&#x6C;oad Two&nbsp;Words A&#32;B &#72 &Eacute;"
        b"<a href=\"x&amp;y\">L&#x49;nk</a> MiXeD Case\ttab\n</body></html>")

# clamscan 1.4.6 --leave-temps, nocomment.html of PAGE, whitespace around tags aside (see README)
EXPECTED_PIECES = [b"<title>t&t</title>", b'<script>varx="a&b";//<!--c-->document.write("hi");</script>',
                   b" hello world & <b> \"q\" aab a \xa9 \xa0 \xe9 &#x20ac; &bogus; &amp \x00 \x00 &#xe0ff; \x80 "
                   b"&#x04d2; &#xffff; &#x00ff; &amp; . c\n after hidden evilpayload two\xa0words a b H \xc9"
                   b"<a href=\"x&y\">link</a>"]


def test_page_normalizes_as_clamscan_nocomment_html() -> None:
    out = normalize_html(PAGE)
    for piece in EXPECTED_PIECES:
        assert piece.replace(b"\n", b"") in out, (piece, out)


def test_chunk_boundaries_do_not_change_the_normalized_html() -> None:
    whole = normalize_html(PAGE)
    rng = random.Random(5)
    pages = [PAGE, b"&am", b"&#", b"<", b"< !", b"a &#x4", b"x&amp", b"&" + b"a" * 1500 + b";", b"<!-- a > b",
             b"<script>a b &lt; c</script > d", b"&#" + b"0" * 3000 + b"65;", b"&#" + b"9" * 40 + b";z"]
    for page in pages:
        reference = normalize_html(page)
        if page is PAGE:
            assert reference == whole
        for _ in range(200):
            normalizer = HtmlNormalizer()
            out, i = bytearray(), 0
            while i < len(page):
                step = rng.randint(1, 9)
                out += normalizer.feed(page[i:i + step])
                i += step
            out += normalizer.finish()
            assert bytes(out) == reference, page[:40]


def test_hostile_references_are_bounded() -> None:
    normalizer = HtmlNormalizer()
    out = normalizer.feed(b"&#" + b"1" * 100_000 + b";") + normalizer.feed(b"&" + b"q" * 100_000)
    assert len(out) < 300_000 and len(normalizer.name) <= 1024 and len(normalizer.pending) <= 64


@pytest.mark.parametrize("marker,expect", [
    (b"evilpayload", True), (b"two\xa0words", True), (b"hidden", True), (b"after hidden", True),
    (b"a&b", True), (b"<b>", True), (b"&#x20ac;", True), (b"a comment here", False), (b"&amp;", True),
    (b"doctype", False), (b"world &amp;", False), (b"varx", True)])
def test_entity_signatures_as_clamscan(tmp_path: Path, shared_cache_dir: Path, marker: bytes, expect: bool) -> None:
    from tests.test_clamscan_parity import CLAMSCAN, run_both

    if CLAMSCAN is None:
        pytest.skip("clamscan is not installed")
    (tmp_path / "page.html").write_bytes(PAGE)
    (tmp_path / "t.ndb").write_text(f"Hn.Html:3:*:{marker.hex()}\nHn.Any:0:*:{marker.hex()}\n")
    pair = run_both(["--no-summary", "-d", "t.ndb", "page.html"], tmp_path, shared_cache_dir)
    assert pair.bastion.found == pair.clam.found, pair.report()
    assert bool(pair.clam.found) == expect, pair.report()
