"""Zip's implode and deflate64 members, ARJ and Symbian SIS: decoded through the engine, and hostile
variants of each (truncated, corrupted, declared sizes far beyond the data, high-ratio bombs) finish
quickly and report their problem as data.

The archives are made here: imploded streams by a small encoder below (uniform trees, greedy matches:
every token kind of the decoder), deflate64 by the inflate64 package's own compressor, ARJ by the
``arj`` tool where it is installed (Debian: apt-get install arj) and by hand otherwise, SIS by hand
from the layout unpack/sis.py describes.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from bastion.unpack.arj import decode_lzh
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.implode import explode
from bastion.unpack.sis import SisUnpacker
from tests.test_unpack import INFECTED, scan
from tests.test_unpack import db as db  # noqa: F401 - the module's database fixture

MiB = 1024 * 1024
CANARY_NAME = "Bastion.Test.Canary.UNOFFICIAL"


def sample(size: int, seed: int = 1) -> bytes:
    """Text-like words, then random bytes, then the text again: literals and matches of every reach."""
    r = random.Random(seed)
    words = [bytes(r.choice(b"abcdefghijklmnop ") for _ in range(r.randint(2, 9))) for _ in range(300)]
    text = b" ".join(r.choice(words) for _ in range(size // 6))
    return (text[: size // 2] + r.randbytes(size // 4) + text)[:size]


# ------------------------------------------------------------------------------------ zip methods
def implode(data: bytes, flags: int) -> bytes:
    """An imploded stream (APPNOTE 5.3) with uniform trees: 8-bit literal codes, 6-bit length and
    distance codes.  Symbol s of an n-code uniform tree gets code n-1-s, sent MSB first."""
    big, literal_tree = bool(flags & 2), bool(flags & 4)
    low_bits, window = (7, 8192) if big else (6, 4096)
    min_match = 3 if literal_tree else 2
    max_match = min_match + 63 + 255
    head = (bytes([15]) + bytes([0xF7] * 16) if literal_tree else b"") + (bytes([3]) + bytes([0xF5] * 4)) * 2
    bits: list[str] = []  # each item a run of bits in stream order

    def code(symbol: int, count: int, width: int) -> None:
        bits.append(format(count - 1 - symbol, f"0{width}b"))

    def raw(value: int, width: int) -> None:
        bits.append(format(value, f"0{width}b")[::-1])

    last: dict[bytes, int] = {}
    i = 0
    while i < len(data):
        j = last.get(data[i:i + 3], -1)
        length = 0
        if j >= 0 and i - j <= window:
            while length < max_match and i + length < len(data) and data[j + length] == data[i + length]:
                length += 1
        for k in range(i, i + max(1, length if length >= min_match else 1)):
            last[data[k:k + 3]] = k
        if length >= min_match:
            back = i - j - 1
            bits.append("0")
            raw(back & ((1 << low_bits) - 1), low_bits)
            code(back >> low_bits, 64, 6)
            value = length - min_match
            code(min(value, 63), 64, 6)
            if value >= 63:
                raw(value - 63, 8)
            i += length
        else:
            bits.append("1")
            if literal_tree:
                code(data[i], 256, 8)
            else:
                raw(data[i], 8)
            i += 1
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    body = bytes(int(stream[k:k + 8][::-1], 2) for k in range(0, len(stream), 8))
    return head + body


def zip_of_members(members: list[tuple[str, int, int, bytes, int, int]]) -> bytes:
    """A zip of (name, method, flags, packed data, size, crc) members, no compression done here; a
    ``size`` above 4 GiB is written in a zip64 extra field."""
    body = bytearray()
    central = bytearray()
    for name, method, flags, packed, size, crc in members:
        raw = name.encode()
        extra = b""
        size32 = size
        if size > 0xFFFFFFFF:
            extra, size32 = struct.pack("<HHQ", 1, 8, size), 0xFFFFFFFF
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, flags, method, 0, 0, crc, len(packed),
                               size32, len(raw), len(extra), 0, 0, 0, 0, len(body)) + raw + extra
        body += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, flags, method, 0, 0, crc, len(packed), size32,
                            len(raw), len(extra)) + raw + extra + packed
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(body), 0)
    return bytes(body + central) + end


def zip_member(name: str, method: int, flags: int, packed: bytes, size: int, crc: int) -> bytes:
    return zip_of_members([(name, method, flags, packed, size, crc)])


def imploded_zip(data: bytes, flags: int = 6, name: str = "inner.txt") -> bytes:
    return zip_member(name, 6, flags, implode(data, flags), len(data), zlib.crc32(data))


def deflate64(data: bytes) -> bytes:
    inflate64 = pytest.importorskip("inflate64")
    deflater = inflate64.Deflater()
    return deflater.deflate(data) + deflater.flush()


def deflate64_zip(data: bytes, name: str = "inner.txt") -> bytes:
    return zip_member(name, 9, 0, deflate64(data), len(data), zlib.crc32(data))


@pytest.mark.parametrize("flags", [0, 2, 4, 6])
def test_implode_decoder_round_trip(flags: int) -> None:
    data = sample(60_000, seed=flags)
    assert explode(implode(data, flags), flags, len(data)) == data


def test_implode_throughput_is_reasonable() -> None:
    data = sample(1 * MiB)
    packed = implode(data, 6)
    start = time.perf_counter()
    assert explode(packed, 6, len(data)) == data
    assert time.perf_counter() - start < 5  # about 0.3 s here (3 MB/s); generous for slow machines


@pytest.mark.parametrize("kind", ["implode-4k-2trees", "implode-8k-3trees", "deflate64"])
def test_zip_methods_are_scanned(db, kind: str) -> None:  # noqa: ANN001
    payload = sample(20_000)[:9000] + INFECTED + sample(20_000, 2)
    data = deflate64_zip(payload) if kind == "deflate64" else imploded_zip(payload, 0 if "4k" in kind else 6)
    result = scan(db, data)
    assert [d.name for d in result.detections] == [CANARY_NAME], result
    assert result.detections[0].evidence.container_path == "sample!inner.txt"
    assert "unsupported" not in result.limits and "broken" not in result.limits, result.limits


def test_zip_mixing_libarchive_and_fallback_members(db) -> None:  # noqa: ANN001
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15)
    clean = b"nothing to see\n"
    packed = deflated.compress(INFECTED) + deflated.flush()
    data = zip_of_members([
        ("a.txt", 0, 0, clean, len(clean), zlib.crc32(clean)),
        ("dir/b.bin", 6, 2, implode(INFECTED, 2), len(INFECTED), zlib.crc32(INFECTED)),
        ("c.txt", 8, 0, packed, len(INFECTED), zlib.crc32(INFECTED)),
        ("d.bin", 9, 0, deflate64(INFECTED), len(INFECTED), zlib.crc32(INFECTED)),
    ])
    result = scan(db, data, allmatch=True)
    assert [d.evidence.container_path for d in result.detections] == ["sample!dir/b.bin", "sample!c.txt",
                                                                        "sample!d.bin"], result
    assert not result.limits, result.limits


def test_zip_member_crc_mismatch_is_reported_and_still_scanned(db) -> None:  # noqa: ANN001
    result = scan(db, zip_member("x", 6, 6, implode(INFECTED, 6), len(INFECTED), 1234))
    assert result.detections and "broken" in result.limits, result


# ------------------------------------------------------------------------------------ ARJ
def arj_header(fields: bytes, name: str, comment: str = "") -> bytes:
    basic = fields + name.encode("cp437") + b"\x00" + comment.encode() + b"\x00"
    return b"\x60\xea" + struct.pack("<H", len(basic)) + basic + struct.pack("<I", zlib.crc32(basic)) + b"\x00\x00"


def arj_of(members: list[tuple[str, int, bytes, bytes]], flags: int = 0) -> bytes:
    """An ARJ archive of (name, method, packed data, original data) members made by hand."""
    out = arj_header(struct.pack("<8B5I3H", 30, 11, 1, 2, 0x10, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0)[:30], "t.arj")
    for name, method, packed, original in members:
        fields = struct.pack("<8B4I3H", 30, 11, 1, 2, flags, method, 0, 0, 0, len(packed), len(original),
                             zlib.crc32(original), 0, 0, 0)
        out += arj_header(fields, name) + packed
    return out + b"\x60\xea\x00\x00"


def arj_bomb(declared: int, blocks: int) -> bytes:
    """Method 1 data where every token after the first is a 256-byte match coded in one bit: ~2,000:1.

    One block per 65,535 tokens: the pre-tree gives symbols 2 (a run of zeros) and 3 (length 1) one
    bit each; the literal/length tree then has two 1-bit codes, literal 0 and length 256 (symbol 509);
    the position tree has the single code 0 (distance 1)."""
    block = (format(65535, "016b") + "00100" + "000" "000" "001" "00" "001"  # pre-tree: 4 lengths
             + format(510, "09b") + "1" + "0" + format(488, "09b") + "1"  # c_len: 1, 508 zeros, 1
             + "00000" + "00000")  # position tree: one code, 0
    stream = block + "0" + "1" * 65534 + (block + "1" * 65535) * (blocks - 1)
    stream += "0" * (-len(stream) % 8)
    packed = int(stream, 2).to_bytes(len(stream) // 8, "big")
    fields = struct.pack("<8B4I3H", 30, 11, 1, 2, 0, 1, 0, 0, 0, len(packed), declared, 0, 0, 0, 0)
    main = struct.pack("<8B5I3H", 30, 11, 1, 2, 0x10, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0)[:30]
    return arj_header(main, "b.arj") + arj_header(fields, "bomb.bin") + packed + b"\x60\xea\x00\x00"


def test_arj_bomb_stream_decodes() -> None:
    data = arj_bomb(declared=1 + 256 * 1000, blocks=1)
    start = data.index(b"bomb.bin") + len("bomb.bin") + 2 + 4 + 2
    assert decode_lzh(data[start:-4], 1 + 256 * 1000) == bytes(1 + 256 * 1000)


def test_arj_stored_member_is_scanned(db) -> None:  # noqa: ANN001
    data = arj_of([("docs\\a.txt", 0, b"clean\n", b"clean\n"), ("b.txt", 0, INFECTED, INFECTED)])
    result = scan(db, data, allmatch=True)
    assert {d.evidence.container_path for d in result.detections} >= {"sample!b.txt"}, result


needs_arj = pytest.mark.skipif(shutil.which("arj") is None, reason="the arj tool is not installed")


@needs_arj
@pytest.mark.parametrize("method", [0, 1, 2, 3, 4])
def test_arj_tool_archives(db, tmp_path: Path, method: int) -> None:  # noqa: ANN001
    (tmp_path / "big.bin").write_bytes(sample(300_000))
    (tmp_path / "x.txt").write_bytes(sample(5000, 3) + INFECTED)
    subprocess.run(["arj", "a", f"-m{method}", "-y", "t.arj", "big.bin", "x.txt"], cwd=tmp_path,
                   check=True, capture_output=True)
    result = scan(db, (tmp_path / "t.arj").read_bytes(), allmatch=True)
    paths = {d.evidence.container_path for d in result.detections}
    # a stored member is also visible in the archive's own bytes
    assert paths == ({"", "sample!x.txt"} if method == 0 else {"sample!x.txt"}), result
    assert not result.limits, result.limits


@needs_arj
def test_garbled_arj_is_reported_but_not_alerted_like_clamscan(tmp_path: Path, shared_cache_dir: Path) -> None:
    from tests.test_clamscan_parity import run_both

    (tmp_path / "s.txt").write_bytes(b"ABCDEF secret content\n")
    subprocess.run(["arj", "a", "-gsecret", "-y", "g.arj", "s.txt"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "t.ndb").write_text("Parity.Anchor:0:*:414243444546\n")
    for flag in ([], ["--alert-encrypted"]):
        pair = run_both(["--no-summary", "-d", str(tmp_path / "t.ndb"), *flag, str(tmp_path / "g.arj")],
                        tmp_path, shared_cache_dir)
        assert pair.bastion.found == pair.clam.found and pair.bastion.rc == pair.clam.rc, pair.report()
        assert not pair.clam.found, pair.report()


def test_garbled_arj_member_reports_encrypted(db) -> None:  # noqa: ANN001
    result = scan(db, arj_of([("s.txt", 1, b"\x01\x02\x03", b"abc")], flags=1))
    assert "encrypted" in result.limits and not result.detections


# ------------------------------------------------------------------------------------ SIS
def sis_of(files: list[tuple[str, bytes]], compressed: bool = True, release6: bool = True,
           extra_records: bytes = b"", record_count: int | None = None) -> bytes:
    """An EPOC SIS package with one language and ``files`` (source name, content)."""
    uid2 = 0x10003A12 if release6 else 0x1000006D
    header_size = 100
    names = b"".join(n.encode("utf-16-le") for n, _ in files)
    record_size = 4 + 24 + 8 + (12 if release6 else 0)
    records_at = header_size + 2
    names_at = records_at + len(extra_records) + record_size * len(files)
    data_at = names_at + len(names)
    records = bytearray(extra_records)
    blobs = bytearray()
    name_pos = names_at
    for name, content in files:
        packed = zlib.compress(content) if compressed else content
        raw_len = len(name.encode("utf-16-le"))
        records += struct.pack("<7I", 0, 0, 0, raw_len, name_pos, 0, 0)
        records += struct.pack("<2I", len(packed), data_at + len(blobs))
        if release6:
            records += struct.pack("<3I", len(content), 0, 0)
        name_pos += raw_len
        blobs += packed
    count = len(files) + (1 if extra_records else 0) if record_count is None else record_count
    head = struct.pack("<4I", 0x01000000, uid2, 0x10000419, 0)
    head += struct.pack("<8HI4HI", 0, 1, count, 0, 0, 0, 0, 0, 200, 1 | (0 if compressed else 8), 0, 1, 0, 0)
    head += struct.pack("<2I", header_size, records_at)
    head = head.ljust(header_size, b"\x00")
    return head + b"\x01\x00" + bytes(records) + names + bytes(blobs)


@pytest.mark.parametrize(("compressed", "release6"), [(True, True), (False, True), (True, False)])
def test_sis_files_are_scanned(db, compressed: bool, release6: bool) -> None:  # noqa: ANN001
    data = sis_of([("C:\\src\\a.txt", b"clean\n"), ("C:\\src\\b.exe", INFECTED)], compressed, release6)
    result = scan(db, data, allmatch=True)
    assert any(d.evidence.container_path == "sample!C:\\src\\b.exe" for d in result.detections), result
    assert not result.limits, result.limits


def test_sis_skips_condition_and_option_records(db) -> None:  # noqa: ANN001
    records = struct.pack("<2I", 3, 4) + b"cond" + struct.pack("<2I", 2, 1) + bytes(8) + struct.pack("<I", 6)
    data = sis_of([("b.exe", INFECTED)], extra_records=records, record_count=4)
    assert [d.evidence.container_path for d in scan(db, data).detections] == ["sample!b.exe"]


def test_sis9_is_reported_unsupported() -> None:
    data = struct.pack("<4I", 0x10201A7A, 0, 0x12345678, 0) + bytes(100)
    items = list(SisUnpacker().children(data, "x.sis", UnpackLimits()))
    assert [i.limit for i in items if isinstance(i, LimitExceeded)] == ["unsupported"]


# ------------------------------------------------------------------------------------ hostile input
def hostile_cases() -> dict[str, bytes]:
    """Broken variants of a valid archive of each new kind."""
    cases: dict[str, bytes] = {}
    valid = {
        "implode": imploded_zip(sample(30_000) + INFECTED),
        "deflate64": deflate64_zip(sample(30_000) + INFECTED),
        "arj": (Path("/usr/share/clamav-testfiles/clam.arj").read_bytes()
                if Path("/usr/share/clamav-testfiles/clam.arj").exists() else arj_bomb(1 << 20, 1)),
        "sis": sis_of([("a.exe", sample(30_000) + INFECTED)]),
    }
    r = random.Random(7)
    for kind, data in valid.items():
        for cut in (3, 10, 40, len(data) // 2, len(data) - 30):
            cases[f"{kind}-truncated-{cut}"] = data[:cut]
        for n in range(6):
            broken = bytearray(data)
            for _ in range(1 + n * 3):
                broken[r.randrange(4, len(broken))] ^= 1 << r.randrange(8)
            cases[f"{kind}-corrupted-{n}"] = bytes(broken)
    return cases


@pytest.mark.parametrize(("name", "data"), sorted(hostile_cases().items()))
def test_truncated_and_corrupted(db, name: str, data: bytes) -> None:  # noqa: ANN001
    start = time.monotonic()
    result = scan(db, data, allmatch=True)  # never raises
    assert time.monotonic() - start < 10, name
    if len(data) > 10:  # long enough to be typed: the damage is reported, or what survived is found
        assert result.limits or result.detections, (name, result)


def sis_declaring(length: int, payload: bytes) -> bytes:
    data = bytearray(sis_of([("a", payload)]))
    data[102 + 28:102 + 32] = struct.pack("<I", length)  # the file record's length field
    return bytes(data)


def test_declared_terabyte_sizes(db) -> None:  # noqa: ANN001
    tb = 1 << 40
    payload = sample(20_000)
    cases = {
        "implode": zip_member("x", 6, 6, implode(payload, 6), tb, 0),
        "deflate64": zip_member("x", 9, 0, deflate64(payload), tb, 0),
        "arj": arj_bomb(declared=0xFFFFFFFF, blocks=1)[:-200] + b"\x60\xea\x00\x00",
        "sis": sis_declaring(0xFFFFFFF0, payload),
    }
    for kind, data in cases.items():
        start = time.monotonic()
        result = scan(db, data)
        assert time.monotonic() - start < 10, kind
        assert result.limits, (kind, result)


@pytest.mark.parametrize("kind", ["implode", "deflate64", "arj", "sis"])
def test_bombs_are_bounded(db, kind: str) -> None:  # noqa: ANN001
    if kind == "implode":  # implode cannot exceed ~150:1; max-filesize stops it instead
        data, options = zip_member("x", 6, 6, implode(bytes(2 * MiB), 6), 2 * MiB, 0), {"max_filesize": 1 * MiB}
    elif kind == "deflate64":
        data, options = deflate64_zip(bytes(64 * MiB)), {}
    elif kind == "arj":
        data, options = arj_bomb(declared=0xFFFFFFFF, blocks=40), {}  # 670 MB in 330 KB
    else:
        data, options = sis_of([("a", bytes(200 * MiB))]), {}
    start = time.monotonic()
    result = scan(db, data, **options)
    assert time.monotonic() - start < 20, kind
    assert {"max-ratio", "max-filesize"} & set(result.limits), (kind, result.limits)


def test_limits_hold_inside_the_decoders() -> None:
    limits = UnpackLimits(max_filesize=2 * MiB)
    items = list(SisUnpacker().children(sis_of([("a", bytes(50 * MiB))]), "x.sis", limits))
    assert not any(isinstance(i, ChildObject) for i in items)
    assert any(isinstance(i, LimitExceeded) and i.limit in ("max-ratio", "max-filesize") for i in items)
