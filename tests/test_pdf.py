"""PDF streams and JavaScript: decoded through their filters and scanned, with the hostile cases
(a deflate bomb in a stream, too many objects, truncated and malformed files) reported, not fatal.
(clamav-testfiles' clam.pdf is held against clamscan in test_unpack_parity.py.)"""

from __future__ import annotations

import base64
import zlib

from bastion.database.compiled import open_database
from bastion.engine import Engine, ScanOptions
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.pdf import PdfUnpacker, decode, literal_string
from tests.helpers import CANARY


def pdf(*objects: bytes) -> bytes:
    out = b"%PDF-1.7\n"
    for n, obj in enumerate(objects, 1):
        out += b"%d 0 obj\n" % n + obj + b"\nendobj\n"
    return out + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"


def stream(data: bytes, filters: str = "") -> bytes:
    head = b"<< /Length %d" % len(data) + (f" /Filter {filters}".encode() if filters else b"") + b" >>"
    return head + b"\nstream\n" + data + b"\nendstream"


def children(blob: bytes, limits: UnpackLimits | None = None) -> list[ChildObject | LimitExceeded]:
    return list(PdfUnpacker().children(blob, "d.pdf", limits or UnpackLimits()))


def test_filters_are_decoded_in_order() -> None:
    payload = b"hidden " + CANARY + b" payload"
    chained = base64.a85encode(zlib.compress(payload), adobe=True)
    doc = pdf(stream(zlib.compress(payload), "/FlateDecode"),
              stream(payload.hex().encode() + b">", "/ASCIIHexDecode"),
              stream(chained, "[/ASCII85Decode /FlateDecode]"),
              stream(bytes([len(payload) - 1]) + payload + b"\x80", "/RunLengthDecode"),
              stream(b"\x00\x01", "/LZWDecode"))
    found = {c.name: c.data for c in children(doc) if isinstance(c, ChildObject)}
    assert found["obj1"] == found["obj2"] == found["obj3"] == found["obj4"] == payload
    assert any(isinstance(c, LimitExceeded) and c.limit == "unsupported" and "LZW" in c.detail for c in children(doc))
    result = Engine(open_database(None), ScanOptions(allmatch=True)).scan_bytes(doc, "d.pdf")
    paths = sorted(d.evidence.container_path for d in result.detections)
    # the run-length stream stores the payload literally, so the file itself matches too
    assert paths == ["", "d.pdf!obj1", "d.pdf!obj2", "d.pdf!obj3", "d.pdf!obj4"]


def test_javascript_strings() -> None:
    assert literal_string(b"(a\\(b\\)c \\101\\n (nested) \\\ncontinued)", 0) == b"a(b)c A\n (nested) continued"
    js = b"app.alert('" + CANARY + b"')"
    octal = b"".join(b"\\%03o" % c for c in js)  # every byte escaped: the file never shows the text
    doc = pdf(b"<< /S /JavaScript /JS (" + octal + b") >>", b"<< /S /JavaScript /JS <" + js.hex().encode() + b"> >>")
    found = {c.name: c.data for c in children(doc) if isinstance(c, ChildObject)}
    assert found == {"obj1.js": js, "obj2.js": js}
    result = Engine(open_database(None), ScanOptions(allmatch=True)).scan_bytes(doc, "d.pdf")
    assert sorted(d.evidence.container_path for d in result.detections) == ["d.pdf!obj1.js", "d.pdf!obj2.js"]


def test_hostile_pdfs_are_bounded_and_reported() -> None:
    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024), 9)
    items = children(pdf(stream(bomb, "/FlateDecode")), UnpackLimits(max_filesize=8 * 1024 * 1024))
    assert [i.limit for i in items if isinstance(i, LimitExceeded)] == ["max-filesize"]
    items = children(pdf(stream(bomb, "/FlateDecode")))
    assert [i.limit for i in items if isinstance(i, LimitExceeded)] == ["max-ratio"]
    many = pdf(*[b"<< /N %d >>" % i for i in range(300)])
    limited = children(many, UnpackLimits(max_files=100))
    assert any(isinstance(i, LimitExceeded) and i.limit == "max-files" for i in limited)
    truncated = pdf(stream(zlib.compress(CANARY * 50), "/FlateDecode"))[:120]
    assert all(isinstance(i, (ChildObject, LimitExceeded)) for i in children(truncated))
    huge_length = b"%PDF-1.4\n1 0 obj\n<< /Length 99999999999 >>\nstream\nabc\nendstream\nendobj\n"
    assert [c.data for c in children(huge_length) if isinstance(c, ChildObject)] == [b"abc"]
    bad_hex = pdf(stream(b"zz not hex", "/ASCIIHexDecode"))
    assert any(isinstance(i, LimitExceeded) and i.limit == "broken" for i in children(bad_hex))
    assert decode(b"", ["flate"], 100) == b""
