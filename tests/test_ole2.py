"""OLE2 documents: streams, OLE1 packages, PowerPoint's embedded objects and VBA macro source
(MS-OVBA decompression), and malformed OLE2 files that must be reported, not crash anything.
(clamav-testfiles' clam.ole.doc and clam.ppt are held against clamscan in test_unpack_parity.py.)"""

from __future__ import annotations

import os
import struct

from bastion.engine import Engine, ScanOptions
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.ole2 import Ole2Unpacker, ole10_native, vba_decompress, vba_modules
from tests.helpers import CANARY


def compress(data: bytes) -> bytes:
    """A small MS-OVBA compressor for the tests: copy tokens for runs it has seen, else literals."""
    out = bytearray(b"\x01")
    for start in range(0, len(data), 4096):
        chunk = data[start:start + 4096]
        body = bytearray()
        pos = 0
        while pos < len(chunk):
            flags, tokens = 0, bytearray()
            for bit in range(8):
                if pos >= len(chunk):
                    break
                bit_count = max((pos - 1).bit_length(), 4)
                max_len = (0xFFFF >> bit_count) + 3
                best_len, best_off = 0, 0
                for off in range(1, min(pos, 1 << (16 - bit_count)) + 1):
                    n = 0
                    while n < max_len and pos + n < len(chunk) and chunk[pos + n - off] == chunk[pos + n]:
                        n += 1
                    if n > best_len:
                        best_len, best_off = n, off
                if best_len >= 3:
                    flags |= 1 << bit
                    tokens += struct.pack("<H", ((best_off - 1) << (16 - bit_count)) | (best_len - 3))
                    pos += best_len
                else:
                    tokens.append(chunk[pos])
                    pos += 1
            body += bytes([flags]) + tokens
        out += struct.pack("<H", 0xB000 | (len(body) - 1)) + body
    return bytes(out)


def test_vba_decompression_round_trips() -> None:
    for text in (b"abcdefghijklmnopqrstuv.", b"#aaabcdefaaaaghijaaaabcdefaaaaghij", b"a" * 300,
                 b'Attribute VB_Name = "Module1"\r\nSub AutoOpen()\r\n  Shell "calc.exe"\r\nEnd Sub\r\n' * 120):
        packed = compress(text)
        assert vba_decompress(packed, 1 << 20) == text
        assert len(packed) < len(text) or len(text) < 40
    assert vba_decompress(compress(b"x" * 5000), 100) == b"x" * 100  # stops at the limit


def _record(rec_id: int, body: bytes) -> bytes:
    return struct.pack("<HI", rec_id, len(body)) + body


def test_vba_dir_stream_lists_modules_and_offsets() -> None:
    dir_stream = (_record(0x0001, struct.pack("<I", 1)) + struct.pack("<HI", 0x0009, 4) + b"\0" * 6
                  + _record(0x0019, b"Module1") + _record(0x001A, b"Module1")
                  + _record(0x0032, "Module1".encode("utf-16le"))
                  + _record(0x0031, struct.pack("<I", 1234)) + _record(0x002B, b"")
                  + _record(0x0019, b"ThisDocument") + _record(0x001A, b"ThisDocument")
                  + _record(0x0031, struct.pack("<I", 99)) + _record(0x002B, b""))
    assert vba_modules(dir_stream) == [("Module1", "Module1", 1234), ("ThisDocument", "ThisDocument", 99)]


def test_ole1_package_payload() -> None:
    payload = b"MZ fake executable bytes"
    package = (struct.pack("<IH", 0, 2) + b"label.exe\0" + b"C:\\tmp\\label.exe\0" + b"\0\0\3\0"
               + struct.pack("<I", 17) + b"C:\\tmp\\label.exe\0" + struct.pack("<I", len(payload)) + payload)
    assert ole10_native(package) == payload
    assert ole10_native(b"\0\0\0\0\2\0no terminator") is None


def test_malformed_ole2_is_reported_and_the_scan_goes_on() -> None:
    from bastion.database.compiled import open_database

    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    engine = Engine(open_database(None), ScanOptions(allmatch=True))  # unpack even after a detection
    cases = {
        "truncated header": header + b"\0" * 40,
        "garbage sectors": header + os.urandom(4096),
        "huge declared FAT": header + b"\0" * 36 + struct.pack("<I", 0xFFFFFFF0) + b"\0" * 460 + os.urandom(2048),
        "sector chain loop": header + bytes(512 - 8) + b"\xff" * 4096,
    }
    for label, blob in cases.items():
        items = list(Ole2Unpacker().children(blob, "x.doc", UnpackLimits()))
        assert items and all(isinstance(i, LimitExceeded) for i in items), label
        result = engine.scan_bytes(blob + b" " + CANARY, "x.doc")  # still scanned as bytes
        assert result.detections and "broken" in result.limits, (label, result.limits)


def test_stream_limits() -> None:
    import olefile

    path = "/usr/share/clamav-testfiles/clam.ole.doc"
    if not os.path.exists(path):
        return
    data = open(path, "rb").read()  # noqa: SIM115
    assert olefile.isOleFile(data)
    items = list(Ole2Unpacker().children(data, "c.doc", UnpackLimits(max_files=3)))
    assert sum(isinstance(i, ChildObject) for i in items) <= 4 and any(
        isinstance(i, LimitExceeded) and i.limit == "max-files" for i in items)
    items = list(Ole2Unpacker().children(data, "c.doc", UnpackLimits(max_filesize=1000)))
    assert any(isinstance(i, LimitExceeded) and i.limit == "max-filesize" for i in items)
