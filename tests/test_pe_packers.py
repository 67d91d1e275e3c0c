"""PE packers: the NRV decoders, UPX-packed executables (real UPX 4.2.3 output in tests/data/upx and
clamav-testfiles' clam-upx.exe), the rebuilt PE, and hostile packed files."""

from __future__ import annotations

import hashlib
import random
import struct
import time
from pathlib import Path

import pytest

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.bounded import DecodeError
from bastion.unpack.packers import upx
from bastion.unpack.packers.nrv import DECODERS, OutputLimit
from bastion.unpack.packers.pe import read_pe32
from bastion.unpack.pe_packers import PePackerUnpacker
from tests.nrv_encoder import NrvWriter, compress
from tests.test_clamscan_parity import TESTFILES, run_both

DATA = Path(__file__).parent / "data" / "upx"
METHODS = ("nrv2b", "nrv2d", "nrv2e", "lzma")
PACKABLE_SHA256 = "60306ed4c7b8dcfd3cdf5b0160876851e6537f177afb69e928aec2ddff2ea34f"
RECORD = b"record 00100: the quick"


def packable_pe() -> bytes:
    """The program packed into tests/data/upx (README there): PE32 i386, an 8 KiB ``.text`` of
    repeated x86 code with calls, an 8 KiB ``.data`` of text records, no imports."""
    opt_size = 224
    dos = bytearray(0x80)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x14C, 2, 0, 0, 0, opt_size, 0x102)
    opt = bytearray(opt_size)
    struct.pack_into("<HBB", opt, 0, 0x10B, 1, 0)
    struct.pack_into("<III", opt, 4, 0x2000, 0x2000, 0)            # sizes of code, data, bss
    struct.pack_into("<III", opt, 16, 0x1000, 0x1000, 0x3000)      # entry, base of code, of data
    struct.pack_into("<I", opt, 28, 0x400000)                       # image base
    struct.pack_into("<II", opt, 32, 0x1000, 0x200)                 # section / file alignment
    struct.pack_into("<HHHHHH", opt, 40, 4, 0, 0, 0, 4, 0)          # OS, image, subsystem versions
    struct.pack_into("<II", opt, 56, 0x5000, 0x400)                 # SizeOfImage, SizeOfHeaders
    struct.pack_into("<H", opt, 68, 2)                              # GUI subsystem
    struct.pack_into("<IIII", opt, 72, 0x100000, 0x1000, 0x100000, 0x1000)  # stack, heap
    struct.pack_into("<I", opt, 92, 16)                             # data directories
    code = bytes.fromhex("558bec83ec10c745fc00000000eb098b45fc83c0018945fc837dfc0a7d02ebf033c08be55dc3")
    text = bytearray()
    i = 0
    while len(text) < 0x2000:
        text += code + struct.pack("<I", i) + b"\xe8" + struct.pack("<i", -len(text) - 5) + b"\x90" * 3
        i += 1
    data = bytearray()
    i = 0
    while len(data) < 0x2000:
        data += f"Bastion packer test sample, record {i:05d}: the quick brown fox.\n".encode()
        i += 1
    sections = b".text\0\0\0" + struct.pack("<IIIIIIHHI", 0x2000, 0x1000, 0x2000, 0x400, 0, 0, 0, 0, 0x60000020)
    sections += b".data\0\0\0" + struct.pack("<IIIIIIHHI", 0x2000, 0x3000, 0x2000, 0x2400, 0, 0, 0, 0, 0xC0000040)
    head = bytes(dos) + coff + bytes(opt) + sections
    return head + bytes(0x400 - len(head)) + bytes(text[:0x2000]) + bytes(data[:0x2000])


def unpack_all(data: bytes, limits: UnpackLimits | None = None) -> list[ChildObject | LimitExceeded]:
    """What the PE-packer plug-in makes of ``data`` (shared by every packer's tests)."""
    return list(PePackerUnpacker().children(data, "t.exe", limits or UnpackLimits()))


def test_packable_pe_is_the_packed_program() -> None:
    assert hashlib.sha256(packable_pe()).hexdigest() == PACKABLE_SHA256


@pytest.mark.parametrize("method", METHODS)
def test_upx_sample_unpacks_and_rebuilds(method: str) -> None:
    packed = (DATA / f"sample-{method}.exe").read_bytes()
    pe = read_pe32(packed)
    assert pe is not None and upx.identify(pe.stub) == method
    (child,) = unpack_all(packed)
    assert isinstance(child, ChildObject)
    assert child.name == "upx-unpacked" and child.container_path == "t.exe!upx-unpacked"
    original, rebuilt = packable_pe(), child.data
    assert len(rebuilt) == len(original)
    # the header is the original's but for IMAGE_FILE_RELOCS_STRIPPED, which UPX sets
    differ = [i for i in range(0x400) if rebuilt[i] != original[i]]
    assert differ == [0x96] and rebuilt[0x96] == original[0x96] | 1
    assert rebuilt[0x2400:0x4400] == original[0x2400:0x4400]  # .data as it was
    # .text went through UPX's call filter, which is not undone: only E8 operands differ
    text_o, text_r = original[0x400:0x2400], rebuilt[0x400:0x2400]
    assert sum(a != b for a, b in zip(text_o, text_r, strict=True)) < 4 * text_o.count(b"\xe8")


def test_clamav_testfile_upx() -> None:
    if not (TESTFILES / "clam-upx.exe").exists():
        pytest.skip("clamav-testfiles is not installed")
    exe = (TESTFILES / "clam.exe").read_bytes()
    (child,) = unpack_all((TESTFILES / "clam-upx.exe").read_bytes())
    assert isinstance(child, ChildObject)
    assert exe[0x1F8:0x220] in child.data  # clam.exe's section table: the parity body signature
    assert exe[0x100:0x220] in child.data  # its whole PE header, as packed


def test_not_packed_pe_has_no_children() -> None:
    assert unpack_all(packable_pe()) == []
    if (TESTFILES / "clam.exe").exists():
        assert unpack_all((TESTFILES / "clam.exe").read_bytes()) == []


def test_scan_parity_with_clamscan(tmp_path: Path, shared_cache_dir: Path) -> None:
    """clamscan and bastion-clamscan both find a body signature of the packed .data in the NRV
    samples; on the LZMA sample only Bastion does (README, differences from clamscan)."""
    (tmp_path / "t.ndb").write_text(f"Packed.Record:0:*:{RECORD.hex()}\n")
    files = [str(DATA / f"sample-{m}.exe") for m in METHODS]
    pair = run_both(["--no-summary", "-d", str(tmp_path / "t.ndb"), *files], tmp_path, shared_cache_dir)
    assert pair.bastion.infected == set(files), pair.report()
    assert pair.clam.infected == set(files[:3]), pair.report()


# ---------------------------------------------------------------------------------------------- NRV
def _text(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randint(2, 8))) for _ in range(300)]
    return b" ".join(rnd.choice(words) for _ in range(n))[:n]


ROUND_TRIP = {
    "empty": b"", "one": b"x", "run": b"\0" * 70_000, "text": _text(60_000, 1),
    "noise": random.Random(2).randbytes(3000), "program": packable_pe(),
}


@pytest.mark.parametrize("variant", sorted(DECODERS))
@pytest.mark.parametrize("sample", sorted(ROUND_TRIP))
def test_nrv_round_trip(variant: str, sample: str) -> None:
    data = ROUND_TRIP[sample]
    stream = compress(data, variant)
    out, end = DECODERS[variant](stream + b"tail", 0, len(data) + 10)
    assert out == data and end == len(stream)


@pytest.mark.parametrize("variant", sorted(DECODERS))
def test_nrv_repeated_and_long_offsets(variant: str) -> None:
    w = NrvWriter(variant)
    data = bytearray(random.Random(3).randbytes(0x3000))
    for b in data:
        w.literal(b)
    for offset, length in ((0x2F00, 40), (0x2F00, 7), (5, 300), (5, 2), (0x600, 9), (1, 5)):
        w.match(offset, length)
        for _ in range(length):
            data.append(data[-offset])
    assert DECODERS[variant](w.end(), 0, 1 << 20)[0] == bytes(data)


# ------------------------------------------------------------------------------------------ hostile
@pytest.mark.parametrize("variant", sorted(DECODERS))
def test_nrv_bomb_stops_at_the_limit(variant: str) -> None:
    w = NrvWriter(variant)
    w.literal(0x41)
    w.match(1, 1 << 40)  # a terabyte of "A" in a dozen bytes
    stream = w.end()
    start = time.monotonic()
    with pytest.raises(OutputLimit) as caught:
        DECODERS[variant](stream, 0, 1 << 20)
    assert time.monotonic() - start < 1 and len(caught.value.partial) <= 1 << 20


@pytest.mark.parametrize("variant", sorted(DECODERS))
def test_nrv_damage_is_reported(variant: str) -> None:
    stream = compress(_text(20_000, 4), variant)
    with pytest.raises(DecodeError):  # truncated: no end marker
        DECODERS[variant](stream[: len(stream) // 2], 0, 1 << 20)
    w = NrvWriter(variant)
    w.literal(1)
    w.match(50, 4)  # reaches before the output
    with pytest.raises(DecodeError, match="reaches"):
        DECODERS[variant](w.end(), 0, 1 << 20)
    with pytest.raises(DecodeError):  # an offset number that never ends
        DECODERS[variant](bytes(4000), 0, 1 << 20)
    rnd = random.Random(variant)
    start = time.monotonic()
    for _ in range(300):  # random and corrupted input: decoded or reported, nothing else
        junk = bytearray(stream)
        for _ in range(rnd.randint(1, 8)):
            junk[rnd.randrange(len(junk))] = rnd.randrange(256)
        for candidate in (bytes(junk), rnd.randbytes(rnd.randint(0, 600))):
            try:
                DECODERS[variant](candidate, 0, 100_000)
            except (DecodeError, OutputLimit):
                pass
    assert time.monotonic() - start < 30


def _with_sections(packed: bytes, upx0_vsize: int | None = None, upx1_raw: int | None = None) -> bytes:
    """``packed`` with UPX0's virtual size or UPX1's raw size rewritten."""
    data = bytearray(packed)
    table = 0x80 + 24 + 224
    if upx0_vsize is not None:
        struct.pack_into("<I", data, table + 8, upx0_vsize)
    if upx1_raw is not None:
        struct.pack_into("<I", data, table + 40 + 16, upx1_raw)
    return bytes(data)


@pytest.mark.parametrize("method", METHODS)
def test_hostile_upx_files(method: str) -> None:
    packed = (DATA / f"sample-{method}.exe").read_bytes()
    # a huge declared image: refused before anything is decoded
    (item,) = unpack_all(_with_sections(packed, upx0_vsize=0x7FFF_0000))
    assert isinstance(item, LimitExceeded) and item.limit == "max-filesize"
    (item,) = unpack_all(packed, UnpackLimits(max_filesize=8192))
    assert isinstance(item, LimitExceeded) and item.limit == "max-filesize"
    # an image too small for the data: the decoder stops at the declared size
    (item,) = unpack_all(_with_sections(packed, upx0_vsize=0x1000))
    assert isinstance(item, LimitExceeded) and item.limit == "broken", item
    # compressed data cut short (the section ends early; the stub is still in the file)
    cut = bytearray(packed)
    cut[0x200 + 0x15 + 0x80: 0x200 + 0x15 + 0x300] = bytes(0x280)
    items = unpack_all(bytes(cut))
    assert all(isinstance(i, ChildObject) or i.limit == "broken" for i in items)
    # corrupted compressed bytes, truncated files: reported or unpacked, quickly
    rnd = random.Random(method)
    start = time.monotonic()
    for _ in range(60):
        junk = bytearray(packed)
        for _ in range(rnd.randint(1, 6)):
            junk[0x215 + rnd.randrange(0x300)] = rnd.randrange(256)
        for candidate in (bytes(junk), packed[: rnd.randrange(len(packed))]):
            for got in unpack_all(candidate):
                assert isinstance(got, ChildObject) or got.limit in ("broken", "max-filesize"), got
    assert time.monotonic() - start < 30


# ------------------------------------------------------------------------------------------- WWPack
def clamav_testfile(name: str) -> bytes:
    """A clamav-testfiles file (the test is skipped where the package is missing)."""
    if not (TESTFILES / name).exists():
        pytest.skip("clamav-testfiles is not installed")
    return (TESTFILES / name).read_bytes()


def test_wwpack_testfile_unpacks() -> None:
    """clam-wwpack.exe's .clam section holds a zip of clam.exe, WWPack32-compressed: decoded, the zip
    reads and its member is clam.exe."""
    import io
    import zipfile

    packed = clamav_testfile("clam-wwpack.exe")
    (child,) = unpack_all(packed)
    assert isinstance(child, ChildObject) and child.name == "wwpack-unpacked"
    rebuilt = child.data
    pe = read_pe32(rebuilt)
    assert pe is not None and len(pe.sections) == 4  # the packer's section is gone
    at = rebuilt.find(b"PK\3\4")
    assert at > 0
    with zipfile.ZipFile(io.BytesIO(rebuilt[at:])) as archive:
        (member,) = archive.namelist()
        assert archive.read(member) == clamav_testfile("clam.exe")


def test_hostile_wwpack_files() -> None:
    packed = clamav_testfile("clam-wwpack.exe")
    section = 0xC00
    records = section + 0x2A1
    big = bytearray(packed)
    struct.pack_into("<I", big, 0xC8 + 24 + 224 + 3 * 40 + 8, 0x7FFF_0000)  # .clam's virtual size
    (item,) = unpack_all(bytes(big))
    assert isinstance(item, LimitExceeded) and item.limit == "max-filesize"
    outside = bytearray(packed)
    struct.pack_into("<I", outside, records + 8, 0x4000_0000)  # compressed dwords
    (item,) = unpack_all(bytes(outside))
    assert isinstance(item, LimitExceeded) and item.limit == "broken"
    rnd = random.Random(7)
    start = time.monotonic()
    for _ in range(150):
        junk = bytearray(packed)
        for _ in range(rnd.randint(1, 6)):
            junk[0xA00 + rnd.randrange(0x18C)] = rnd.randrange(256)  # the compressed block
        if rnd.random() < 0.3:
            junk[records + rnd.randrange(17)] = rnd.randrange(256)
        for got in unpack_all(bytes(junk)):
            assert isinstance(got, ChildObject) or got.limit in ("broken", "max-filesize", "max-ratio"), got
    assert time.monotonic() - start < 30
