"""RTF embedded objects: OLE1 packages decoded down to the file they carry, other objects handed on
as their native data, and malformed or endless object data reported, not fatal.
(clamav-testfiles' clam.exe.rtf is held against clamscan in test_unpack_parity.py.)"""

from __future__ import annotations

import struct

from bastion.database.compiled import open_database
from bastion.engine import Engine, ScanOptions
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.rtf import RtfUnpacker, ole1_object
from tests.helpers import CANARY


def lp(text: bytes) -> bytes:
    return struct.pack("<I", len(text)) + text


def package(payload: bytes) -> bytes:
    native = (struct.pack("<H", 2) + b"drop.exe\0" + b"C:\\drop.exe\0" + b"\0\0\3\0" + lp(b"C:\\tmp\\drop.exe\0")
              + struct.pack("<I", len(payload)) + payload)
    return struct.pack("<II", 0x0501, 2) + lp(b"Package\0") + lp(b"") + lp(b"") + lp(native)


def rtf(*objects: bytes) -> bytes:
    body = b"".join(b"{\\object\\objemb{\\*\\objclass Package}{\\*\\objdata " +
                    b"\r\n".join(o.hex().encode()[i:i + 64] for i in range(0, len(o) * 2, 64)) + b"}}"
                    for o in objects)
    return b"{\\rtf1\\ansi{\\fonttbl{\\f0 Times;}}\\pard Hello " + body + b"\\par}"


def test_package_payload_is_found_and_scanned() -> None:
    payload = b"MZ program " + CANARY[::-1] + b" " + CANARY
    doc = rtf(package(payload))
    assert CANARY not in doc  # only hex in the file
    items = list(RtfUnpacker().children(doc, "d.rtf", UnpackLimits()))
    kids = {c.container_path: c.data for c in items if isinstance(c, ChildObject)}
    assert kids["d.rtf!obj1!native"] == payload and "d.rtf!obj1" in kids
    result = Engine(open_database(None), ScanOptions()).scan_bytes(doc, "d.rtf")
    assert result.file_type == "CL_TYPE_RTF"
    assert result.detections and result.detections[0].evidence.container_path.startswith("d.rtf!obj1")


def test_other_objects_and_hostile_data() -> None:
    ole1 = struct.pack("<II", 0x0501, 2) + lp(b"Word.Document.8\0") + lp(b"") + lp(b"") + lp(b"\xd0\xcf\x11\xe0 fake")
    assert ole1_object(ole1) == ("Word.Document.8", b"\xd0\xcf\x11\xe0 fake")
    assert ole1_object(struct.pack("<II", 0x0501, 2) + struct.pack("<I", 10**9)) is None  # length past the end
    items = list(RtfUnpacker().children(rtf(ole1, b"not an ole1 object at all"), "d.rtf", UnpackLimits()))
    assert [c.name for c in items if isinstance(c, ChildObject)] == ["obj1", "obj2"]
    odd = b"{\\rtf1 {\\*\\objdata 01050zz00002 0000}}"  # junk and an odd digit count
    assert all(isinstance(i, ChildObject) for i in RtfUnpacker().children(odd, "d.rtf", UnpackLimits()))
    many = rtf(*[b"x" * 4] * 50)
    limited = list(RtfUnpacker().children(many, "d.rtf", UnpackLimits(max_files=10)))
    assert isinstance(limited[-1], LimitExceeded) and limited[-1].limit == "max-files"
    endless = b"{\\rtf1 {\\*\\objdata " + b"41" * 200_000  # no closing brace
    items = list(RtfUnpacker().children(endless, "d.rtf", UnpackLimits(max_filesize=1000)))
    assert len(items[0].data) <= 1001  # type: ignore[union-attr]
