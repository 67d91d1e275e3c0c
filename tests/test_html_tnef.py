"""HTML pages (data: URIs decoded, script blocks with character references decoded) and TNEF
(winmail.dat) attachments, with malformed input reported, not fatal.  (clamav-testfiles' clam.exe.html
and clam.tnef are held against clamscan in test_unpack_parity.py.)"""

from __future__ import annotations

import base64
import struct
import urllib.parse
from pathlib import Path

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.html import HtmlUnpacker
from bastion.unpack.tnef import ATT_DATA, ATT_TITLE, MAGIC, TnefUnpacker
from tests.helpers import CANARY


def kids(items: list) -> dict[str, bytes]:
    return {c.name: c.data for c in items if isinstance(c, ChildObject)}


def test_html_data_uris_and_scripts() -> None:
    payload = b"MZ dropped " + CANARY
    page = (b"<html><body><a href=\"data:application/octet-stream;name=x.exe;base64," + base64.b64encode(payload)
            + b"\">get</a><img src='data:text/plain," + urllib.parse.quote(payload.decode()).encode() + b"'>"
            + b"<script type=\"text/javascript\">var s = &quot;" + CANARY + b"&quot;;</script></body></html>")
    found = kids(list(HtmlUnpacker().children(page, "p.html", UnpackLimits())))
    assert found["data1"] == payload and found["data2"] == payload
    assert found["script1"] == b'var s = "' + CANARY + b'";'


def test_html_hostile() -> None:
    many = b"<html>" + b"<script>x</script>" * 50 + b"</html>"
    items = list(HtmlUnpacker().children(many, "p.html", UnpackLimits(max_files=10)))
    assert isinstance(items[-1], LimitExceeded) and items[-1].limit == "max-files"
    broken = b"<a href=\"data:;base64,@@@@A\">x</a>"
    items = list(HtmlUnpacker().children(broken, "p", UnpackLimits()))
    assert all(isinstance(i, (ChildObject, LimitExceeded)) for i in items)


def attribute(attr: int, data: bytes) -> bytes:
    return bytes([2]) + struct.pack("<II", attr, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def test_tnef_attachments() -> None:
    blob = (MAGIC + b"\x01\x00" + attribute(ATT_TITLE, b"invoice.exe\0") + attribute(ATT_DATA, b"MZ " + CANARY)
            + attribute(ATT_DATA, b"second one"))
    found = kids(list(TnefUnpacker().children(blob, "winmail.dat", UnpackLimits())))
    assert found == {"invoice.exe": b"MZ " + CANARY, "attachment2": b"second one"}
    truncated = blob[:40]
    items = list(TnefUnpacker().children(truncated, "w.dat", UnpackLimits()))
    assert any(isinstance(i, LimitExceeded) and i.limit == "broken" for i in items)
    many = MAGIC + b"\x01\x00" + attribute(ATT_DATA, b"x") * 20
    items = list(TnefUnpacker().children(many, "w.dat", UnpackLimits(max_files=5)))
    assert isinstance(items[-1], LimitExceeded) and items[-1].limit == "max-files"
    assert isinstance(next(iter(TnefUnpacker().children(b"nope", "w", UnpackLimits()))), LimitExceeded)


def test_max_htmlnormalize_as_clamscan(tmp_path: Path, shared_cache_dir: Path) -> None:
    """Over --max-htmlnormalize an HTML page is neither normalized nor unpacked, in clamscan and in
    Bastion (a signature on its normalized text and an executable in a data: URI go unseen)."""
    import pytest

    from tests.test_clamscan_parity import CLAMSCAN, run_both

    if CLAMSCAN is None:
        pytest.skip("clamscan is not installed")
    exe = Path("/usr/share/clamav-testfiles/clam.exe")
    inside = (b'<a href="data:application/octet-stream;base64,' + base64.b64encode(exe.read_bytes()) + b'">x</a>'
              if exe.exists() else b"")
    page = b"<html><body>" + b"<p>Filler paragraph text</p>\n" * 100 + b"<p>EvilThingMarkerText</p>" + inside
    (tmp_path / "page.html").write_bytes(page + b"</body></html>\n")
    lines = [f"Htn.Norm.Html:3:*:{b'evilthingmarkertext'.hex()}", f"Htn.Norm.Any:0:*:{b'evilthingmarkertext'.hex()}",
             f"Htn.Raw.Any:0:*:{b'EvilThingMarkerText'.hex()}"]
    if exe.exists():
        lines.append(f"Htn.Exe:1:*:{exe.read_bytes()[0x1F8:0x220].hex()}")
    (tmp_path / "t.ndb").write_text("\n".join(lines) + "\n")
    for limit, expect_found in (("", True), ("--max-htmlnormalize=1K", False), ("--max-htmlnormalize=1M", True)):
        args = ["--no-summary", "-z", "-d", "t.ndb", *([limit] if limit else []), "page.html"]
        pair = run_both(args, tmp_path, shared_cache_dir)
        assert set(pair.bastion.found) == set(pair.clam.found), pair.report()  # clamscan -z may repeat a line
        assert bool(pair.clam.found) == expect_found, pair.report()
