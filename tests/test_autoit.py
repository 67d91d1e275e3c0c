"""Compiled AutoIt scripts (EA05 and EA06): keystreams, decompression, the EA06 script text, the files
of clam.ea05.exe / clam.ea06.exe byte for byte as clamscan extracts them, crafted blocks against
clamscan, and hostile blocks."""

from __future__ import annotations

import hashlib
import random
import struct
import subprocess
import time
from pathlib import Path

import pytest

from bastion.unpack.autoit import EA05, EA06, AutoItUnpacker, autoit_members
from bastion.unpack.autoit_crypt import lame_keystream, mt_keystream
from bastion.unpack.autoit_lzss import expand
from bastion.unpack.autoit_tokens import FUNCTIONS, KEYWORDS, detokenize
from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from tests.autoit_encoder import (
    SCRIPT,
    Entry,
    block,
    compress,
    script,
    tok_double,
    tok_function,
    tok_int,
    tok_int64,
    tok_keyword,
    tok_op,
    tok_text,
)
from tests.helpers import CANARY
from tests.test_clamscan_parity import CLAMSCAN, TESTFILES, run_both

MiB = 1024 * 1024
SMALL = UnpackLimits(max_filesize=1 * MiB, max_files=100)
M32 = 0xFFFF_FFFF


DEFAULT = UnpackLimits()


def children(data: bytes, limits: UnpackLimits = DEFAULT) -> tuple[dict[str, bytes], list[LimitExceeded]]:
    found: dict[str, bytes] = {}
    problems: list[LimitExceeded] = []
    for item in AutoItUnpacker().children(data, "app.exe", limits):
        if isinstance(item, ChildObject):
            found[item.container_path] = item.data
        else:
            problems.append(item)
    return found, problems


def exe(payload: bytes) -> bytes:
    """A real PE (clam.exe when installed) with ``payload`` appended, where AutoIt keeps its data."""
    clam = TESTFILES / "clam.exe"
    stub = clam.read_bytes() if clam.exists() else b"MZ" + b"\0" * 0x3E + b"stub code " * 50
    return stub + payload


# ------------------------------------------------------------------------------------ keystreams
def _mt_reference(seed: int, size: int) -> bytes:
    """MT19937 step by step (init_genrand, twist, temper), one key byte per word: bits 1..8."""
    mt = [seed & M32]
    for i in range(1, 624):
        mt.append((0x6C078965 * (mt[-1] ^ (mt[-1] >> 30)) + i) & M32)
    out = bytearray()
    index = 624
    for _ in range(size):
        if index == 624:
            for i in range(624):
                y = (mt[i] & 0x8000_0000) | (mt[(i + 1) % 624] & 0x7FFF_FFFF)
                mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            index = 0
        y = mt[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        out.append((y >> 1) & 0xFF)
    return bytes(out)


def _lame_reference(seed: int, size: int) -> bytes:
    """The EA06 generator as a ring of 17 words with two moving indices, its output through a double
    in [0, 1) times 256, as the original computes it."""
    ring = []
    s = seed & M32
    for _ in range(17):
        s = (1 - s * 0x53A9B4FB) & M32
        ring.append(s)
    c0, c1 = 0, 10

    def step() -> float:
        nonlocal c0, c1
        a, b = ring[c0], ring[c1]
        rolled = ((((a << 9) | (a >> 23)) & M32) + (((b << 13) | (b >> 19)) & M32)) & M32
        ring[c0] = rolled
        c0 = 16 if c0 == 0 else c0 - 1
        c1 = 16 if c1 == 0 else c1 - 1
        hi = 0x3FF00000 | (rolled >> 12)
        lo = (rolled << 20) & M32
        return struct.unpack("<d", struct.pack("<II", lo, hi))[0] - 1.0

    for _ in range(9):
        step()
    out = bytearray()
    for _ in range(size):
        step()
        out.append(min(int(step() * 256.0), 255))
    return bytes(out)


@pytest.mark.parametrize("seed", [0, 1, 0x22AF + 120, 0xA25E + 23, M32])
def test_mt_keystream_matches_mt19937(seed: int) -> None:
    assert mt_keystream(seed, 1500) == _mt_reference(seed, 1500)  # past one twist


@pytest.mark.parametrize("seed", [0, 0x2477, 0xB33F + 19, 0xFFFF])
def test_lame_keystream_matches_the_ring(seed: int) -> None:
    assert lame_keystream(seed, 300) == _lame_reference(seed, 300)


def test_keystreams_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large keystreams are made a chunk at a time: chunk edges change nothing."""
    import bastion.unpack.autoit_crypt as crypt

    monkeypatch.setattr(crypt, "CHUNK", 7)
    assert mt_keystream(99, 1300) == _mt_reference(99, 1300)
    assert lame_keystream(99, 200) == _lame_reference(99, 200)


def test_keystreams_of_nothing() -> None:
    assert mt_keystream(5, 0) == lame_keystream(5, 0) == b""


# -------------------------------------------------------------------------------- decompression
@pytest.mark.parametrize("layout", [EA05, EA06])
@pytest.mark.parametrize("data", [b"abc", b"a" * 10_000, bytes(range(256)) * 40,
                                  b"the quick brown fox " * 300 + bytes(random.Random(1).randbytes(3000))])
def test_lzss_round_trip(layout, data: bytes) -> None:  # noqa: ANN001
    stream = compress(data, layout)
    got = expand(stream, len(data), layout.match_flag)
    assert got.problem is None and got.data == data


def test_lzss_long_runs_use_every_length_code() -> None:
    for length in (3, 5, 6, 12, 13, 43, 44, 298, 299, 554, 4000):
        data = b"xy" + b"z" * length
        assert expand(compress(data, EA06), len(data), 0).data == data


def test_lzss_truncated_keeps_what_decoded() -> None:
    data = b"hello world, " + random.Random(2).randbytes(500)
    stream = compress(data, EA05)
    got = expand(stream[:40], len(data), 1)
    assert got.problem and data.startswith(got.data[:-1]) and 0 < len(got.data) < len(data)


def test_lzss_match_before_the_start_is_refused() -> None:
    from tests.autoit_encoder import BitWriter

    bits = BitWriter()
    bits.put(0, 1)  # EA06: a match first, 5 bytes back
    bits.put(5, 15)
    bits.put(0, 2)
    stream = b"EA06" + (100).to_bytes(4, "big") + bits.finish()
    got = expand(stream, 100, 0)
    assert got.data == b"" and "outside" in (got.problem or "")


def test_lzss_stop_at_bounds_a_long_match() -> None:
    data = b"a" * 5_000_000
    stream = compress(b"a" * 5000, EA06)  # the encoder caps a match at 5000
    got = expand(stream, len(data), 0, stop_at=1000)
    assert len(got.data) == 1000


# ---------------------------------------------------------------------------- EA06 script text
def test_detokenize_every_token() -> None:
    tokens = script([
        tok_keyword(KEYWORDS.index(b"LOCAL")) + tok_text(0x33, "x") + tok_op("=") + tok_int(255),
        tok_function(FUNCTIONS.index(b"MSGBOX")) + tok_op("(") + tok_int64(1 << 40) + tok_op(",")
        + tok_double(1.5) + tok_op(",") + tok_text(0x36, "hi there") + tok_op(")"),
        tok_text(0x34, "MYFUNC") + tok_op("(") + tok_text(0x32, "ScriptDir") + tok_text(0x35, "Item")
        + tok_text(0x30, "c") + tok_text(0x31, "d") + tok_text(0x37, "e") + tok_op(")"),
        tok_double(float("-inf")) + tok_double(1e-5) + tok_double(-0.0) + tok_double(123456789.0),
    ])
    text = detokenize(tokens, MiB)
    assert text.problem is None
    assert text.data == (
        b"LOCAL $x = 0x000000ff \n"
        b'MSGBOX ( 0x0000010000000000 , 1.5 , "hi there" ) \n'
        b"MYFUNC( @ScriptDir .Item c d e ) \n"
        b"-inf 1e-05 -0 1.23457e+08 \n")


def test_detokenize_narrows_as_clamav() -> None:
    bom = b"\xff\xfeA\x00B\x00"           # a byte-order mark: dropped, one byte more copied
    wide = "日本語".encode("utf-16-le")    # not ASCII-like: the first half of the UTF-16 bytes
    text = detokenize(script([tok_text(0x36, bom), tok_text(0x36, wide)]), MiB)
    assert text.data == b'"ABA" \n"' + wide[:3] + b'" \n'


def test_detokenize_stops_at_damage() -> None:
    good = script([tok_keyword(1), tok_keyword(2)])
    assert detokenize(good[:-3], MiB).problem
    assert detokenize(good[:-3], MiB).data == b"AND \n"
    bad = script([tok_keyword(1) + tok_keyword(999)])
    assert detokenize(bad, MiB).data == b"AND "
    assert "unknown keyword" in (detokenize(bad, MiB).problem or "")
    assert "unknown token" in (detokenize(script([b"\x99"]), MiB).problem or "")
    huge = struct.pack("<I", 1) + b"\x36" + struct.pack("<I", 0xFFFF_FFF0) + b"\0" * 20
    assert "runs past" in (detokenize(huge, MiB).problem or "")


def test_detokenize_is_capped() -> None:
    tokens = script([tok_function(FUNCTIONS.index(b"GUICTRLREGISTERLISTVIEWSORT")) * 5000])
    text = detokenize(tokens, 10_000)
    assert text.problem == "too large" and len(text.data) == 10_000


# ------------------------------------------------------------------------------ block round trip
@pytest.mark.parametrize("layout", [EA05, EA06])
def test_block_round_trip(layout) -> None:  # noqa: ANN001
    files = [Entry(b"first file " * 50), Entry(b"stored one " * 3, stored=True), Entry(b""),
             Entry(bytes(range(256)) * 8, path="C:\\x.dll")]
    found, problems = children(exe(block(files, layout)))
    assert problems == []
    assert found == {"app.exe!autoit.001": files[0].content, "app.exe!autoit.002": files[1].content,
                     "app.exe!autoit.003": files[3].content}


def test_ea06_script_is_turned_to_text() -> None:
    tokens = script([tok_function(FUNCTIONS.index(b"RUN")) + tok_op("(") + tok_text(0x36, "calc.exe") + tok_op(")")])
    found, problems = children(exe(block([Entry(tokens, kind=SCRIPT), Entry(b"payload!")], EA06)))
    assert problems == []
    assert found == {"app.exe!autoit.001": b'RUN ( "calc.exe" ) \n', "app.exe!autoit.002": b"payload!"}


def test_a_second_block_is_named_apart() -> None:
    one = block([Entry(b"in the first block")], EA05)
    two = block([Entry(b"in the second block")], EA06)
    found, _ = children(exe(one + b"\0" * 100 + two))
    assert found == {"app.exe!autoit.001": b"in the first block",
                     "app.exe!autoit1/autoit.001": b"in the second block"}


# --------------------------------------------------------------------- clamav-testfiles vs clamscan
needs_clamscan = pytest.mark.skipif(CLAMSCAN is None or not (TESTFILES / "clam.ea05.exe").exists(),
                                    reason="clamscan and clamav-testfiles are needed")


@needs_clamscan
@pytest.mark.parametrize("name", ["clam.ea05.exe", "clam.ea06.exe"])
def test_testfile_children_are_clamscans_bytes(tmp_path: Path, name: str) -> None:
    """clamscan --leave-temps keeps what autoit.c extracted (autoit.001, ...): Bastion's children are
    the same bytes (the EA06 script as text) under the same names."""
    exe_bytes = (TESTFILES / name).read_bytes()
    (tmp_path / "db.ndb").write_text("Nothing.Here:0:*:0011223344556677889900\n")
    temps = tmp_path / "temps"
    temps.mkdir()
    subprocess.run([CLAMSCAN, "--leave-temps", "--tempdir", str(temps), "--no-summary", "-d",
                    str(tmp_path / "db.ndb"), str(TESTFILES / name)], capture_output=True, timeout=120, check=False)
    theirs = {p.name: p.read_bytes() for p in temps.rglob("autoit.*") if p.parent.name.startswith("autoit-tmp")}
    found, problems = children(exe_bytes)
    assert problems == []
    assert {k.rsplit("!", 1)[1]: v for k, v in found.items()} == theirs
    assert hashlib.md5((TESTFILES / "clam.exe").read_bytes()).digest() in \
        {hashlib.md5(v).digest() for v in found.values()}


@needs_clamscan
def test_crafted_blocks_against_clamscan(tmp_path: Path, shared_cache_dir: Path) -> None:
    """Blocks made by the test encoder, scanned by both: the same files detected."""
    marker_text = "DROP" + CANARY.decode()
    samples = {
        "ea05_compressed.exe": block([Entry(b"x" * 300), Entry(b"payload " + CANARY + b" end" * 20)], EA05),
        "ea05_stored.exe": block([Entry(b"payload " + CANARY, stored=True)], EA05),
        "ea06_compressed.exe": block([Entry(b"lead " * 40), Entry(b"payload " + CANARY * 3)], EA06),
        # the canary is in the script's text only once it is turned back into text
        "ea06_script.exe": block([Entry(script([tok_function(FUNCTIONS.index(b"FILEDELETE")) + tok_op("(")
                                                + tok_text(0x36, marker_text) + tok_op(")")]), kind=SCRIPT)], EA06),
        # the second entry runs past the end: the first is still scanned
        "ea06_truncated.exe": block([Entry(b"payload " + CANARY), Entry(random.Random(3).randbytes(4000))],
                                    EA06)[:-2000],
        "ea05_clean.exe": block([Entry(b"nothing to see " * 30)], EA05),
        # a declared size of 0 means the compressed size: the output stops there
        "ea06_zero_size.exe": block([Entry(b"payload " + CANARY * 4,
                                           raw_stream=compress(b"payload " + CANARY * 4, EA06, declared=0))], EA06),
    }
    for name, payload in samples.items():
        data = exe(payload)
        assert CANARY not in data and b'"' + marker_text.encode() + b'"' not in data
        (tmp_path / name).write_bytes(data)
    script_text = ('FILEDELETE ( "' + marker_text).encode()
    (tmp_path / "canary.ndb").write_text(f"AutoIt.Canary:0:*:{CANARY.hex()}\n"
                                         f"AutoIt.ScriptText:0:*:{script_text.hex()}\n")
    pair = run_both(["--no-summary", "-d", "canary.ndb", *samples], tmp_path, shared_cache_dir)
    assert pair.bastion.found_set == pair.clam.found_set, pair.report()
    assert {p for p, _ in pair.clam.found} == {n for n in samples if n != "ea05_clean.exe"}, pair.report()


# --------------------------------------------------------------------------------------- hostile
def _timed(data: bytes, limits: UnpackLimits = SMALL) -> tuple[dict[str, bytes], list[LimitExceeded], float]:
    started = time.monotonic()
    found, problems = children(data, limits)
    return found, problems, time.monotonic() - started


@pytest.mark.parametrize("layout", [EA05, EA06])
def test_truncated_everywhere(layout) -> None:  # noqa: ANN001
    whole = block([Entry(b"first " * 30), Entry(b"second " * 30)], layout, trailer=False)
    for cut in range(len(whole)):
        found, problems, seconds = _timed(whole[:cut])
        assert seconds < 1
        if cut > 0:
            assert found or problems or cut < 40, cut


def test_truncation_is_reported_broken_with_the_files_before() -> None:
    whole = block([Entry(b"first " * 30), Entry(random.Random(4).randbytes(3000))], EA06)
    found, problems = children(whole[:-500])
    assert list(found) == ["app.exe!autoit.001"]
    assert [p.limit for p in problems] == ["broken"] and "past the end" in problems[0].detail


def test_corrupted_stream_gives_partial_and_broken() -> None:
    data = b"abcdefgh" * 200 + random.Random(5).randbytes(200)
    stream = bytearray(compress(data, EA05))
    stream[30:34] = b"\xff\xff\xff\xff"  # long matches that run outside the output
    found, problems = children(block([Entry(data, raw_stream=bytes(stream))], EA05))
    assert [p.limit for p in problems] == ["broken"]
    assert len(found["app.exe!autoit.001"]) < len(data)


def test_bad_stream_magic_is_skipped() -> None:
    found, problems = children(block([Entry(b"x" * 20, raw_stream=b"EA99" + bytes(20)), Entry(b"next one")], EA05))
    assert list(found.values()) == [b"next one"] and [p.limit for p in problems] == ["broken"]


def test_huge_declared_sizes() -> None:
    stream = b"EA06" + (0xFFFF_0000).to_bytes(4, "big") + bytes(50)
    found, problems, seconds = _timed(block([Entry(b"", raw_stream=stream)], EA06))
    assert found == {} and [p.limit for p in problems] == ["max-filesize"] and seconds < 1
    # a compressed size beyond the file: broken, nothing read
    data = bytearray(block([Entry(b"abc" * 10)], EA05))
    pos = data.index(bytes([1]) + struct.pack("<I", len(compress(b"abc" * 10, EA05)) ^ EA05.size_key))
    data[pos + 1:pos + 5] = struct.pack("<I", 0x0100_0000 ^ EA05.size_key)
    found, problems, seconds = _timed(bytes(data), UnpackLimits())
    assert found == {} and [p.limit for p in problems] == ["broken"] and seconds < 1
    data[pos + 1:pos + 5] = struct.pack("<I", 0x9000_0000 ^ EA05.size_key)
    assert [p.limit for p in children(bytes(data))[1]] == ["broken"]


def test_bomb_stops_at_the_ratio_bound() -> None:
    from tests.autoit_encoder import BitWriter, put_length

    bits = BitWriter()
    bits.put(1, 1)
    bits.put(ord("A"), 8)  # EA06: a literal, then one match 1 back of about 5 MB
    bits.put(0, 1)
    bits.put(1, 15)
    put_length(bits, 5_000_000)
    stream = b"EA06" + (5_000_001).to_bytes(4, "big") + bits.finish()
    limits = UnpackLimits(max_filesize=100 * MiB)
    found, problems, seconds = _timed(block([Entry(b"", raw_stream=stream)], EA06), limits)
    assert found == {} and [p.limit for p in problems] == ["max-ratio"], problems
    assert seconds < 2


def test_many_entries_are_cut_at_max_files() -> None:
    one = block([Entry(b"")], EA05, trailer=False)[40:]  # an empty entry
    data = block([], EA05, trailer=False) + one * 20_000
    found, problems, seconds = _timed(data, UnpackLimits(max_files=1000))
    assert found == {} and [p.limit for p in problems] == ["max-files"] and seconds < 2


def test_bad_name_length_ends_the_walk() -> None:
    data = bytearray(block([Entry(b"abc" * 10), Entry(b"def" * 10)], EA06))
    first = data.index(struct.pack("<I", EA06.file_magic))
    second = data.index(struct.pack("<I", EA06.file_magic), first + 4)
    data[second + 4:second + 8] = struct.pack("<I", 0x4000_0000 ^ EA06.type_key)  # * 2 is negative
    found, problems = children(bytes(data))
    assert list(found) == ["app.exe!autoit.001"] and [p.limit for p in problems] == ["broken"]


@pytest.mark.parametrize("name", ["clam.ea05.exe", "clam.ea06.exe"])
def test_mutated_testfiles_never_crash(name: str) -> None:
    path = TESTFILES / name
    if not path.exists():
        pytest.skip("clamav-testfiles is not installed")
    original = path.read_bytes()
    start = original.index(b"AU3!EA0") - 16
    rng = random.Random(name)
    started = time.monotonic()
    for _ in range(150):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(start, len(data))] = rng.randrange(256)
        list(autoit_members(bytes(data), start, SMALL))
    assert time.monotonic() - started < 30
