"""CHM: the members clamscan scans (clam.chm, against clamscan's own debug listing), CHMs built by the
test LZX encoder (stored and compressed members, several listing chunks, resets, E8), scanning
through the engine, and hostile files: truncated, corrupted LZX, a reset table out of range,
terabyte declared lengths, a looping directory, and the limits."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from bastion.database.compiled import open_database
from bastion.engine.filetype import detect_type
from bastion.engine.scanner import Engine, ScanOptions
from bastion.signatures.loader import builtin_database_dir
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.chm import CONTENT, RESET_TABLE, ChmUnpacker, read_directory
from tests.helpers import CANARY
from tests.lzx_encoder import chm_of
from tests.test_lzx import noise, text_like

TESTFILES = Path("/usr/share/clamav-testfiles")
PAYLOAD = b"MZ some program " + CANARY + b" more\n"


def children(data: bytes, **limits: int) -> list[ChildObject | LimitExceeded]:
    started = time.monotonic()
    items = list(ChmUnpacker().children(data, "x.chm", UnpackLimits(**limits)))
    assert time.monotonic() - started < 20
    assert all(isinstance(i, (ChildObject, LimitExceeded)) for i in items)
    return items


def members(items: list) -> dict[str, bytes]:
    return {i.name: i.data for i in items if isinstance(i, ChildObject)}


def problems(items: list) -> list[tuple[str, str]]:
    return [(i.limit, i.detail) for i in items if isinstance(i, LimitExceeded)]


def sample(**options: object) -> tuple[bytes, dict[str, bytes]]:
    stored = {"/readme.txt": b"stored in section 0\n", "/#ITBITS": b""}
    compressed = {"/index.htm": text_like(40_000), "/tools/": b"", "/tools/setup.exe": PAYLOAD,
                  "/big.htm": text_like(120_000, seed=9), "/blob.bin": noise(20_000)}
    data = chm_of(stored, compressed, **options)  # type: ignore[arg-type]
    expected = {k: v for k, v in {**stored, **compressed}.items() if not k.endswith("/")}
    return data, expected


@pytest.fixture(scope="module")
def db():  # noqa: ANN201 - a Database
    return open_database([builtin_database_dir()], use_cache=False)


@pytest.mark.skipif(not (TESTFILES / "clam.chm").exists() or shutil.which("clamscan") is None,
                    reason="clamav-testfiles and clamscan are needed")
def test_clam_chm_members_are_those_clamscan_scans(tmp_path: Path) -> None:
    (tmp_path / "none.ndb").write_text("Nothing.Here:0:*:0011223344556677889900\n")
    proc = subprocess.run(["clamscan", "--debug", "-d", str(tmp_path / "none.ndb"), str(TESTFILES / "clam.chm")],
                          capture_output=True, text=True, timeout=120)
    theirs = re.findall(r"CDBNAME:CL_TYPE_MSCHM:\d+:(.*?):\d+:\d+:\d+:\d+:\d+", proc.stderr + proc.stdout)
    raw = (TESTFILES / "clam.chm").read_bytes()
    assert detect_type(raw) == "CL_TYPE_MSCHM"
    items = children(raw)
    assert not problems(items)
    assert [i.name for i in items] == theirs and len(theirs) == 15
    assert members(items)["/clam.exe.txt"] == (TESTFILES / "clam.exe").read_bytes()


@pytest.mark.parametrize("reset_frames", [1, 2, 4])
def test_built_chm_members(reset_frames: int) -> None:
    # a small chunk size spreads the listing over several PMGL chunks; E8 translation on
    data, expected = sample(reset_frames=reset_frames, chunk_size=256, e8_size=12_000_000)
    entries, _, trouble = read_directory(data)
    assert not trouble and len({e.name for e in entries}) == len(entries) == len(expected) + 4
    items = children(data)
    assert not problems(items)
    assert members(items) == expected
    assert [i.container_path for i in items][0] == "x.chm!/readme.txt"


def test_scan_names_the_member(db) -> None:  # noqa: ANN001
    data, _ = sample(kinds=(1, 2))  # no uncompressed block: the payload is only in the LZX stream
    assert CANARY not in data
    result = Engine(db, ScanOptions()).scan_bytes(data, "help.chm")
    assert result.error is None and result.detections
    assert result.detections[0].evidence.container_path == "help.chm!/tools/setup.exe"


def test_truncated_chm(db) -> None:  # noqa: ANN001
    data, expected = sample()
    for cut in [0, 3, 0x40, 0x70, 0x100, 0x400, len(data) // 3, len(data) // 2, len(data) - 5000, len(data) - 1]:
        items = children(data[:cut])
        got = members(items)
        assert all(expected[name] == body for name, body in got.items())
        if cut < len(data) - 1:
            assert problems(items), cut
        assert Engine(db, ScanOptions()).scan_bytes(data[:cut], "t.chm").error is None
    for pos in range(0, len(data), len(data) // 24):
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        children(bytes(flipped))


def _content_span(data: bytes, name: str) -> tuple[int, int]:
    entries, content_off, _ = read_directory(data)
    entry = next(e for e in entries if e.name == name)
    return content_off + entry.offset, entry.length


def test_corrupted_lzx_stream_keeps_what_came_before() -> None:
    data, expected = sample(reset_frames=2, kinds=(1, 2))
    start, length = _content_span(data, CONTENT)
    for where in (length // 2, length - 2000):
        bad = bytearray(data)
        bad[start + where:start + where + 64] = bytes(64)
        items = children(bytes(bad))
        # LZX has no checksum: damage among literals may decode to other bytes without notice
        assert where != length // 2 or any(kind == "broken" for kind, _ in problems(items))
        got = members(items)
        assert got["/readme.txt"] == expected["/readme.txt"]
        assert got["/index.htm"] == expected["/index.htm"]  # decoded before the damage
        assert all(expected[name] == body for name, body in got.items() if name != "/blob.bin")


def test_reset_table_out_of_range() -> None:
    data, expected = sample()
    start, length = _content_span(data, RESET_TABLE)
    bad = bytearray(data)
    struct.pack_into("<Q", bad, start + 0x28 + 8, 1 << 50)  # frame 1 at a petabyte
    items = children(bytes(bad))
    assert ("broken", "CHM: ResetTable points outside the compressed data") in problems(items)
    assert members(items) == expected  # the stream itself is read in order
    struct.pack_into("<I", bad, start + 4, 0xFFFFFFFF)  # entry count beyond the table
    assert ("broken", "CHM: ResetTable entries lie outside it") in problems(children(bytes(bad)))


def test_terabyte_declared_lengths() -> None:
    data, expected = sample()
    start, _ = _content_span(data, RESET_TABLE)
    bad = bytearray(data)
    struct.pack_into("<Q", bad, start + 0x10, 1 << 40)  # the section decodes to a terabyte
    assert members(children(bytes(bad))) == expected
    items = children(_with_entry(data, "/index.htm", offset=1 << 41, length=10))  # at 2 TB
    assert any(kind == "max-ratio" for kind, _ in problems(items))
    assert members(items)["/big.htm"] == expected["/big.htm"]
    items = children(_with_entry(data, "/index.htm", offset=0, length=1 << 40))  # 1 TB long
    assert ("max-filesize", f"/index.htm: larger than {UnpackLimits().max_filesize} bytes") in problems(items)
    assert members(items)["/big.htm"] == expected["/big.htm"]


def _with_entry(data: bytes, name: str, *, offset: int, length: int) -> bytes:
    """The CHM rebuilt with one section-1 entry's offset and length changed (same chunk layout)."""
    from tests.lzx_encoder import encint

    chunk = data.index(b"PMGL")
    enc = name.encode()
    at = data.index(encint(len(enc)) + enc, chunk)
    pos = at + len(encint(len(enc))) + len(enc)
    fields = []
    for _ in range(3):
        end = pos
        while data[end] & 0x80:
            end += 1
        fields.append((pos, end + 1))
        pos = end + 1
    new = encint(1) + encint(offset) + encint(length)
    grown = data[:fields[0][0]] + new + data[fields[2][1]:]
    # keep the chunk its size: take the growth out of the chunk's zero padding
    extra = len(grown) - len(data)
    free_at = chunk + 4
    free = int.from_bytes(data[free_at:free_at + 4], "little")
    chunk_size = int.from_bytes(data[0x78 + 0x10:0x78 + 0x14], "little")
    tail = chunk + chunk_size - free + extra
    fixed = bytearray(grown[:tail] + grown[tail + extra:])
    struct.pack_into("<I", fixed, free_at, free - extra)
    return bytes(fixed)


def test_directory_loop_and_absurd_directory() -> None:
    data, expected = sample(chunk_size=256)
    dir_off = 0x78
    looped = bytearray(data)
    first_chunk = dir_off + 0x54
    struct.pack_into("<i", looped, first_chunk + 0x10, 0)  # chunk 0's next chunk is itself
    struct.pack_into("<i", looped, first_chunk + 0x0C, 0)
    assert members(children(bytes(looped))) == expected
    absurd = bytearray(data)
    struct.pack_into("<I", absurd, dir_off + 0x24, 0xFFFFFFFF)  # last listing chunk
    assert ("broken", "CHM: listing chunks 0..4294967295 out of 0..{}".format(
        int.from_bytes(data[dir_off + 0x2C:dir_off + 0x30], "little") - 1)) in problems(children(bytes(absurd)))
    struct.pack_into("<I", absurd, dir_off + 0x2C, 0x7FFFFFFF)  # chunk count
    assert problems(children(bytes(absurd)))[0][0] == "broken"
    struct.pack_into("<I", absurd, dir_off + 0x10, 0)  # chunk size
    assert problems(children(bytes(absurd)))[0][0] == "broken"
    over = bytearray(data)
    struct.pack_into("<Q", over, 0x48, 1 << 60)  # directory offset
    assert problems(children(bytes(over))) == [("broken", "CHM: directory lies beyond the end of the file")]
    # an ENCINT that never ends
    chunk = bytes(data).index(b"PMGL")
    endless = bytearray(data)
    endless[chunk + 0x14:chunk + 0x30] = b"\xff" * 0x1C
    assert any("over-long" in d for _, d in problems(children(bytes(endless))))


def test_limits() -> None:
    data, expected = sample()
    listed = chm_of({f"/f{i:05}.txt": b"x" for i in range(3000)}, {"/a.htm": b"y" * 100}, chunk_size=4096)
    started = time.monotonic()
    entries, _, _ = read_directory(listed, max_members=11)
    assert len(entries) == 11 + 4 and time.monotonic() - started < 5
    items = children(listed, max_files=10)
    assert len(members(items)) == 10 and problems(items) == [("max-files", "more than 10 CHM members")]
    items = children(data, max_files=3)
    assert len(members(items)) == 3 and problems(items)[-1][0] == "max-files"
    items = children(data, max_filesize=50_000)
    assert "/big.htm" not in members(items) and "/index.htm" in members(items)
    assert ("max-filesize", "/big.htm: larger than 50000 bytes") in problems(items)
    # the ratio bound: the section may not decode to more than its compressed size
    items = children(data, max_ratio=1, min_ratio_bytes=1000)
    assert any(kind == "max-ratio" for kind, _ in problems(items))
    assert members(items)["/readme.txt"] == expected["/readme.txt"]
