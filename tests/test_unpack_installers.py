"""Installers inside executables (NSIS, InstallShield overlay files and cabinets, InstallShield MSI) and
MSI stream names: the formats round-trip through builders written here, and hostile variants
(truncated, corrupted, huge declared sizes, decompression bombs, endless tables) finish quickly
with the problem reported and the scan going on.

The real installers of Debian's clamav-testfiles are compared with clamscan in
tests/test_unpack_parity.py.
"""

from __future__ import annotations

import gzip
import lzma
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.database.compiled import open_database
from bastion.engine.scanner import Engine, ScanOptions
from bastion.signatures.loader import builtin_database_dir
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.ishield import msi_members
from bastion.unpack.nsis import SIGNATURE, nsis_members
from bastion.unpack.ole2 import msi_stream_name
from bastion.unpack.pe_installers import PeInstallerUnpacker, overlay_start
from tests.helpers import CANARY
from tests.test_clamscan_parity import run_both

MiB = 1024 * 1024
INFECTED = b"installed payload " + CANARY + b" end\n"
SMALL = UnpackLimits(max_filesize=1 * MiB, max_files=100)


@pytest.fixture(scope="module")
def db():  # noqa: ANN201 - a Database
    return open_database([builtin_database_dir()], use_cache=False)


def scan(db, data: bytes, **options: object):  # noqa: ANN001, ANN201
    return Engine(db, ScanOptions(**options)).scan_bytes(data, "setup.exe")  # type: ignore[arg-type]


def members(items: Iterator[object]) -> tuple[dict[str, bytes], list[LimitExceeded]]:
    found: dict[str, bytes] = {}
    problems: list[LimitExceeded] = []
    for item in items:
        if isinstance(item, LimitExceeded):
            problems.append(item)
        elif isinstance(item, ChildObject):
            found[item.container_path] = item.data
        else:
            name, data = item  # type: ignore[misc]
            found[name] = data
    return found, problems


def timed(fn, *args):  # noqa: ANN001, ANN002, ANN201
    """Run ``fn`` with memory tracing: its result, seconds taken, peak bytes allocated."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = fn(*args)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, time.monotonic() - started, peak


# ------------------------------------------------------------------------------------------- NSIS
def deflate(data: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush()


def lzma_nsis(data: bytes) -> bytes:
    """LZMA as NSIS writes it: properties, dictionary size (8 MiB, NSIS's default: clamscan tells
    LZMA from deflate by it), raw LZMA1 (encoded with a smaller dictionary, which any larger one reads)."""
    body = lzma.compress(data, format=lzma.FORMAT_RAW, filters=[
        {"id": lzma.FILTER_LZMA1, "dict_size": 1 << 16, "lc": 3, "lp": 0, "pb": 2}])
    return bytes([0x5D]) + (1 << 23).to_bytes(4, "little") + body


def nsis_data(files: list[bytes], method: str = "deflate", solid: bool = False,
              header: bytes = b"\0" * 64) -> bytes:
    """NSIS data from its first header on: the script header and ``files``, then a CRC."""
    pack = {"deflate": deflate, "lzma": lzma_nsis}.get(method)
    if solid:
        assert pack is not None
        body = pack(b"".join(struct.pack("<I", len(x)) + x for x in [header, *files]))
    else:
        body = b""
        for x in [header, *files]:
            packed = pack(x) if pack else x
            body += struct.pack("<I", len(packed) | (0x8000_0000 if pack else 0)) + packed
    size = 28 + len(body) + 4
    return struct.pack("<I", 0) + SIGNATURE + struct.pack("<II", len(header), size) + body + b"CRC!"


def nsis_exe(data: bytes) -> bytes:
    return b"MZ" + b"\0" * 0x3E + b"stub code " * 50 + data


@pytest.mark.parametrize(("method", "solid"), [("deflate", False), ("lzma", False), ("stored", False),
                                               ("deflate", True), ("lzma", True)])
def test_nsis_round_trip(method: str, solid: bool) -> None:
    files = [b"first file " * 100, INFECTED, b"third"]
    found, problems = members(nsis_members(nsis_data(files, method, solid), 0, UnpackLimits()))
    assert not problems
    assert found == {"headers": b"\0" * 64, "content.001": files[0], "content.002": files[1], "content.003": files[2]}


def test_nsis_in_an_executable_is_scanned(db) -> None:  # noqa: ANN001
    data = nsis_exe(nsis_data([b"clean", INFECTED], "lzma"))
    result = scan(db, data)
    assert [d.name for d in result.detections] == ["Bastion.Test.Canary.UNOFFICIAL"]
    assert result.detections[0].evidence.container_path == "setup.exe!NSIS/content.002"
    assert not scan(db, data, scan_archives=False).detections


def test_nsis_bzip2_is_reported_unsupported() -> None:
    data = nsis_data([b"x"], "stored")
    block = b"1AY&SY" + b"\0" * 20
    data = data[:28] + struct.pack("<I", len(block) | 0x8000_0000) + block + b"CRC!"
    data = data[:24] + struct.pack("<I", len(data)) + data[28:]
    _, problems = members(nsis_members(data, 0, UnpackLimits()))
    assert [p.limit for p in problems] == ["unsupported"]


@pytest.mark.parametrize("solid", [False, True])
def test_nsis_truncated_and_corrupted(solid: bool) -> None:
    whole = nsis_data([bytes(range(256)) * 200, INFECTED], "deflate", solid)
    for cut in (10, 28, 40, len(whole) // 2, len(whole) - 10):
        found, problems = members(nsis_members(whole[:cut], 0, UnpackLimits()))
        assert problems, cut
    damaged = bytearray(whole)
    for i in range(40, len(damaged), 7):
        damaged[i] ^= 0x5A
    _, problems = members(nsis_members(bytes(damaged), 0, UnpackLimits()))
    assert problems and all(p.limit in ("broken", "max-ratio", "max-filesize", "max-files") for p in problems)


def test_nsis_huge_declared_sizes() -> None:
    head = struct.pack("<I", 0) + SIGNATURE
    for archive_size, block, problem in ((0xFFFF_FFFF, 0x7FFF_FFFF, True), (0xFFFF_FFFF, 0xFFFF_FFFF, True),
                                         (30, 5, False), (0, 0, True)):
        data = head + struct.pack("<II", 100, archive_size) + struct.pack("<I", block) + b"abc" * 10
        found, problems = members(nsis_members(data, 0, UnpackLimits()))
        assert bool(problems) == problem and not any(len(v) > 100 for v in found.values())


@pytest.mark.parametrize("solid", [False, True])
def test_nsis_bomb_is_bounded(solid: bool) -> None:
    bomb = nsis_data([b"\0" * (64 * MiB)], "deflate", solid)
    (found, problems), seconds, peak = timed(lambda: members(nsis_members(bomb, 0, SMALL)))
    assert seconds < 5 and peak < 16 * MiB
    assert {p.limit for p in problems} & {"max-filesize", "max-ratio"}
    assert "content.001" not in found


def test_nsis_solid_member_with_huge_length_is_skipped() -> None:
    stream = struct.pack("<I", 0xFFFF_FFF0) + b"A" * 1000
    data = nsis_data([], "deflate", solid=True)
    body = deflate(struct.pack("<I", 4) + b"head" + stream)
    data = data[:28] + body + b"CRC!"
    data = data[:24] + struct.pack("<I", len(data)) + data[28:]
    found, problems = members(nsis_members(data, 0, UnpackLimits(max_filesize=MiB)))
    assert found == {"headers": b"head"} and [p.limit for p in problems] == ["max-filesize"]


def test_nsis_many_members_stop_at_max_files() -> None:
    data = nsis_data([b"x"] * 500, "stored")
    found, problems = members(nsis_members(data, 0, UnpackLimits(max_files=50)))
    assert len(found) == 50 and [p.limit for p in problems] == ["max-files"]


def test_many_signatures_are_looked_at_a_bounded_number_of_times() -> None:
    junk = (b"\0" * 8 + SIGNATURE + struct.pack("<II", 0, 0xFFFF_FFFF)) * 20_000
    started = time.monotonic()
    found, problems = members(PeInstallerUnpacker().children(b"MZ" + junk, "setup.exe", UnpackLimits()))
    assert time.monotonic() - started < 5 and not found and len(problems) < 200


# --------------------------------------------------------------------------- InstallShield MSI
_KEY = bytes([0xEC, 0xCA, 0x79, 0xF8])
_SWAP = bytes(((c >> 4) | (c << 4)) & 0xFF for c in range(256))


def msi_obfuscate(name: bytes, data: bytes) -> bytes:
    key = bytes(c ^ _KEY[i & 3] for i, c in enumerate(name))
    return bytes(c ^ key[(i & 0x3FF) % len(key)] for i, c in enumerate(data)).translate(_SWAP)


def ishield_msi(files: dict[bytes, bytes], count: int | None = None, raw: bool = False) -> bytes:
    out = b"InstallShield\0" + struct.pack("<I", len(files) if count is None else count) + b"\0" * 28
    for name, content in files.items():
        packed = msi_obfuscate(name, content if raw else zlib.compress(content))
        block = name.ljust(0x104, b"\0") + struct.pack("<IIQ", 6, 0, len(packed))
        block += struct.pack("<9I", 0, 1, 0, 0, 0, 0, 0, 0, 0)
        out += block + packed
    return out


def test_ishield_msi_round_trip_and_type_signature(db) -> None:  # noqa: ANN001
    files = {b"clam.exe409.bmp": INFECTED, b"Setup.ini": "[Startup]\n".encode("utf-16"),
             b"big.bin": bytes(range(256)) * 5000}
    data = ishield_msi(files)
    found, problems = members(msi_members(data, 0, UnpackLimits()))
    assert not problems and found == {k.decode(): v for k, v in files.items()}
    exe = b"MZ" + b"\0" * 0x3E + b"stub " * 100 + data
    result = scan(db, exe)
    assert [d.evidence.container_path for d in result.detections] == ["setup.exe!clam.exe409.bmp"]


def test_ishield_msi_hostile() -> None:
    good = ishield_msi({b"a.txt": INFECTED * 100, b"b.txt": b"second"})
    for cut in (5, 20, 40, 200, 360, len(good) - 3):
        found, problems = members(msi_members(good[:cut], 0, UnpackLimits()))
        assert cut < 46 or problems or found
    # a huge file count over a few bytes, a declared size past the end, garbage instead of zlib
    found, problems = members(msi_members(ishield_msi({b"a": b"x"}, count=0xFFFF_FFFF), 0, UnpackLimits()))
    assert found == {"a": b"x"} and problems
    huge = bytearray(good)
    struct.pack_into("<Q", huge, 14 + 32 + 0x10C, 1 << 62)
    assert [p.limit for p in members(msi_members(bytes(huge), 0, UnpackLimits()))[1]] == ["broken"]
    found, problems = members(msi_members(ishield_msi({b"g": b"not zlib at all" * 50}, raw=True), 0, UnpackLimits()))
    assert not found and [p.limit for p in problems] == ["broken"]
    nonzero = bytearray(good)
    nonzero[14 + 8] = 1  # ClamAV reads only a header whose words from offset 8 on are zero
    assert members(msi_members(bytes(nonzero), 0, UnpackLimits())) == ({}, [])


def test_ishield_msi_bomb_is_bounded() -> None:
    bomb = ishield_msi({b"bomb.bin": b"\0" * (64 * MiB)})
    (found, problems), seconds, peak = timed(lambda: members(msi_members(bomb, 0, SMALL)))
    assert seconds < 5 and peak < 16 * MiB and not found
    assert {p.limit for p in problems} & {"max-filesize", "max-ratio"}


# -------------------------------------------------------------- InstallShield overlay and cabinets
def tiny_pe(overlay: bytes, pe32plus: bool = False) -> bytes:
    """A PE32 with two sections of 0x200 raw bytes each and ``overlay`` after them."""
    opt_size = 0xF0 if pe32plus else 0xE0
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x14C, 2, 0, 0, 0, opt_size, 0x102)
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B if pe32plus else 0x10B)
    struct.pack_into("<I", opt, 16, 0x1000)                     # entry point
    struct.pack_into("<II", opt, 32, 0x1000, 0x200)             # section / file alignment
    struct.pack_into("<I", opt, 60, 0x200)                      # size of headers
    struct.pack_into("<I", opt, opt_size - 8 * 16 - 4, 16)      # number of data directories
    sections = b""
    for i in range(2):
        sections += f".sec{i}".encode().ljust(8, b"\0") + struct.pack(
            "<IIIIIIHHI", 0x1000, 0x1000 * (i + 1), 0x200, 0x200 * (i + 1), 0, 0, 0, 0, 0x60000020)
    head = b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40) + coff + bytes(opt) + sections
    return head.ljust(0x200, b"\0") + b"\xc3" * 0x200 + b"\x90" * 0x200 + overlay


def overlay_file(name: bytes, content: bytes, version: bytes = b"0.0.0.0") -> bytes:
    return name + b"\0Disk1\\" + name + b"\0" + version + b"\0" + str(len(content)).encode() + b"\0" + content


def is_chunks(content: bytes, chunk: int = 1000) -> bytes:
    out = b""
    for i in range(0, len(content), chunk):
        packed = deflate(content[i:i + chunk])
        out += struct.pack("<H", len(packed)) + packed
    return out


def is_header(entries: list[tuple[int, int, int, int, bytes, int]], files_count: int | None = None) -> bytes:
    """data1.hdr: (flags, size, csize, offset in the cabinet, name, cabinet number) per file."""
    data_off = 0x200
    names = b""
    name_offsets = []
    dirs_table = struct.pack("<I", 4) + b"\0" * 4  # one directory: its name (empty) right after
    for *_, name, _cab in entries:
        name_offsets.append(len(dirs_table) + len(names))
        names += name + b"\0"
    strings = dirs_table + names
    objects = bytearray(0x4A)
    struct.pack_into("<I", objects, 0x0C, 0x4A)  # directories right after the table header
    struct.pack_into("<I", objects, 0x28, len(entries) if files_count is None else files_count)
    struct.pack_into("<I", objects, 0x2C, len(strings))  # file entries after the strings
    items = b""
    for (flags, size, csize, offset, _name, cab), name_off in zip(entries, name_offsets, strict=True):
        item = bytearray(87)
        struct.pack_into("<HQQQ", item, 0, flags, size, csize, offset)
        struct.pack_into("<IH", item, 58, name_off, 0)
        struct.pack_into("<H", item, 85, cab)
        items += bytes(item)
    return (b"ISc(" + struct.pack("<IIII", 0, 0, data_off, 0)).ljust(data_off, b"\0") + bytes(objects) + strings + items


def ishield_cab_exe(payloads: dict[bytes, bytes]) -> bytes:
    """data1.hdr, data2.cab with ``payloads``, setup.ini, and setup.inx last (a file that ends the
    overlay is not extracted)."""
    cab = b"ISc(".ljust(0x200, b"\0")
    entries = []
    for name, content in payloads.items():
        packed = is_chunks(content)
        entries.append((4, len(content), len(packed), len(cab), name, 2))
        cab += packed
    return tiny_pe(overlay_file(b"data1.hdr", is_header(entries)) + overlay_file(b"data2.cab", cab)
                   + overlay_file(b"setup.ini", b"[Startup]\n") + overlay_file(b"setup.inx", b"script"))


def test_overlay_start_follows_clamav() -> None:
    assert overlay_start(tiny_pe(b"over")) == 0x600
    assert overlay_start(tiny_pe(b"")) is None
    assert overlay_start(tiny_pe(b"over", pe32plus=True)) is None


def test_ishield_overlay_and_cabinet_round_trip(db) -> None:  # noqa: ANN001
    payloads = {b"clam.exe": INFECTED, b"big.dll": bytes(range(256)) * 300}
    exe = ishield_cab_exe(payloads)
    found, problems = members(PeInstallerUnpacker().children(exe, "setup.exe", UnpackLimits()))
    assert not problems
    assert found["setup.exe!data2.cab!clam.exe"] == INFECTED
    assert found["setup.exe!data2.cab!big.dll"] == payloads[b"big.dll"]
    assert found["setup.exe!setup.ini"] == b"[Startup]\n"
    assert {"setup.exe!data1.hdr", "setup.exe!data2.cab"} <= set(found)
    result = scan(db, exe)
    assert [d.evidence.container_path for d in result.detections] == ["setup.exe!data2.cab!clam.exe"]


def test_ishield_plain_overlay_file(db) -> None:  # noqa: ANN001
    exe = tiny_pe(overlay_file(b"readme.txt", b"hello") + overlay_file(b"clam.exe", INFECTED)
                  + overlay_file(b"setup.inx", b"script"))
    paths = [d.evidence.container_path for d in scan(db, exe, allmatch=True).detections]
    assert paths == ["", "setup.exe!clam.exe"]  # in the executable's own bytes, and extracted


def test_ishield_cabinet_hostile() -> None:
    exe = ishield_cab_exe({b"a.bin": bytes(range(256)) * 100, b"b.bin": INFECTED})
    hdr_at = exe.index(b"ISc(")
    # the header claims four billion files: the table ends at the header's end
    endless = bytearray(exe)
    struct.pack_into("<I", endless, hdr_at + 0x200 + 0x28, 0xFFFF_FFFF)
    started = time.monotonic()
    found, problems = members(PeInstallerUnpacker().children(bytes(endless), "s", UnpackLimits()))
    assert time.monotonic() - started < 2 and "s!data2.cab!b.bin" in found and problems
    # data offsets and sizes far outside the cabinet, a file table outside the header
    for field, value in ((0x200 + 0x4A + 8 + 12 + 18, 1 << 40), (0x200 + 0x4A + 8 + 12 + 10, 1 << 40),
                         (0x200 + 0x0C, 0xFFFF_FFF0), (12, 0xFFFF_FFF0)):
        bad = bytearray(exe)
        struct.pack_into("<Q" if field > 0x200 + 0x4A else "<I", bad, hdr_at + field, value)
        found, problems = members(PeInstallerUnpacker().children(bytes(bad), "s", UnpackLimits()))
        assert problems and "s!setup.ini" in found
    # truncated everywhere: never raises, never hangs
    for cut in range(0x600, len(exe), 97):
        members(PeInstallerUnpacker().children(exe[:cut], "s", UnpackLimits()))
    # damaged deflate chunks
    damaged = bytearray(exe)
    for i in range(exe.index(b"ISc(", hdr_at + 4) + 0x202, len(exe) - 40, 5):
        damaged[i] ^= 0xA5
    members(PeInstallerUnpacker().children(bytes(damaged), "s", UnpackLimits()))


def test_ishield_cabinet_bomb_is_bounded() -> None:
    exe = ishield_cab_exe({b"bomb.bin": b"\0" * (32 * MiB)})
    (found, problems), seconds, peak = timed(
        lambda: members(PeInstallerUnpacker().children(exe, "s", SMALL)))
    assert seconds < 10 and peak < 24 * MiB
    assert "s!data2.cab!bomb.bin" not in found and {p.limit for p in problems} & {"max-filesize", "max-ratio"}


def test_ishield_overlay_string_tricks() -> None:
    for overlay in (b"a\0b\0c\0-5\0xxxxx", b"a\0b\0c\0 5\0xxxxx", b"a\0b\0c\0" + b"9" * 40 + b"\0x",
                    b"a" * 5000 + b"\0b\0c\x005\0xxxxx", b"a\0b\0c\x0099\0short"):
        found, problems = members(PeInstallerUnpacker().children(tiny_pe(overlay), "s", UnpackLimits()))
        assert not found and not problems


def test_ishield_overlay_file_reaching_the_end_is_not_extracted() -> None:
    exe = tiny_pe(overlay_file(b"one.txt", b"first") + overlay_file(b"last.txt", b"second"))
    found, _ = members(PeInstallerUnpacker().children(exe, "s", UnpackLimits()))
    assert found == {"s!one.txt": b"first"}  # as clamscan (see test_installers_match_clamscan)


def test_plain_executable_at_the_recursion_limit_reports_nothing(db) -> None:  # noqa: ANN001
    result = scan(db, tiny_pe(b""), max_recursion=1, alert_exceeds_max=True)
    assert not result.detections and "max-recursion" not in result.limits
    nested = scan(db, ishield_cab_exe({b"clam.exe": INFECTED}), max_recursion=1, alert_exceeds_max=True)
    assert [d.name for d in nested.detections] == ["Heuristics.Limits.Exceeded.MaxRecursion"]


# ------------------------------------------------------------------------------ MSI stream names
def test_msi_stream_names() -> None:
    assert msi_stream_name("\u410d\u4137\u4781\u4126\u4825") == "Data1.cab"
    assert msi_stream_name("\u4840\u47ff\u4800") == "!__0"
    assert msi_stream_name("\x05SummaryInformation") == "\x05SummaryInformation"


# ---------------------------------------------------------------------------------- clamscan parity
def test_installers_match_clamscan(tmp_path: Path, shared_cache_dir: Path) -> None:
    """The builders above make what clamscan 1.4.6 reads: each sample hides the canary in a gzip
    member (so only an unpacker finds it) and clamscan and Bastion agree on every one."""
    hidden = gzip.compress(INFECTED, mtime=0)
    samples = {
        "nsis_deflate.exe": nsis_exe(nsis_data([b"clean file", hidden], "deflate")),
        "nsis_stored.exe": nsis_exe(nsis_data([b"clean file", hidden], "stored")),
        "nsis_lzma.exe": nsis_exe(nsis_data([b"clean file", hidden], "lzma")),
        "nsis_lzma_solid.exe": nsis_exe(nsis_data([b"clean file", hidden], "lzma", solid=True)),
        "is_msi.exe": nsis_exe(ishield_msi({b"a.bin": hidden, b"b.txt": b"hello"})),
        "is_cab.exe": ishield_cab_exe({b"app.bin": hidden, b"x.dll": b"y" * 3000}),
        "is_overlay.exe": tiny_pe(overlay_file(b"app.gz", hidden) + overlay_file(b"readme.txt", b"hello")),
        "is_overlay_last.exe": tiny_pe(overlay_file(b"readme.txt", b"hello") + overlay_file(b"app.gz", hidden)),
        "plain.exe": tiny_pe(b""),
    }
    for name, data in samples.items():
        assert CANARY not in data
        (tmp_path / name).write_bytes(data)
    (tmp_path / "canary.ndb").write_text(f"Installer.Canary:0:*:{CANARY.hex()}\n")
    pair = run_both(["--no-summary", "-d", "canary.ndb", *samples], tmp_path, shared_cache_dir)
    assert pair.bastion.infected == pair.clam.infected, pair.report()
    assert pair.clam.infected == {n for n in samples if n not in ("is_overlay_last.exe", "plain.exe")}, pair.report()
