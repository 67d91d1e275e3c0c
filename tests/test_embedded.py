"""Files embedded in other files (self-extracting zips, a zip or PDF inside a blob, an executable
appended to an executable, ARJ archives): bastion-clamscan finds what clamscan 1.4.6 finds, with a
hash-only database (where only the extracted file can match) and with -z, and --max-embeddedpe
holds back an embedded executable as in clamscan.  Hostile input: a file full of magics."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from bastion.unpack.base import UnpackLimits
from bastion.unpack.embedded import EmbeddedObjects, Spotter
from tests.test_clamscan_parity import CLAMSCAN, TESTFILES, run_both

if CLAMSCAN is None or not (TESTFILES / "clam.exe").exists():
    pytest.skip("clamscan and clamav-testfiles are needed", allow_module_level=True)

EXE = (TESTFILES / "clam.exe").read_bytes()
HASH = "Embedded.ClamExe.Hash"
BODY = "Embedded.ClamExe.Body"


def _noise(n: int, seed: str) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += hashlib.sha256(f"{seed}{len(out)}".encode()).digest()
    return bytes(out[:n])


def _zip(method: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.writestr("notes.txt", b"nothing to see here\n" * 20)
        zf.writestr("dir/payload.exe", EXE)
    return buf.getvalue()


def _pdf() -> bytes:
    packed = zlib.compress(EXE)
    return (b"%PDF-1.4\n1 0 obj\n<< /Length " + str(len(packed)).encode() + b" /Filter /FlateDecode >>\nstream\n"
            + packed + b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n")


def _arj(tmp: Path) -> bytes | None:
    if shutil.which("arj") is None:
        return None
    work = tmp / "arjwork"
    work.mkdir()
    (work / "payload.exe").write_bytes(EXE)
    subprocess.run(["arj", "a", "-y", "-m1", "p.arj", "payload.exe"], cwd=work, capture_output=True, check=True)
    return (work / "p.arj").read_bytes()


def _corpus(folder: Path) -> None:
    folder.mkdir()
    files = {
        "exe-after-exe.exe": EXE + _noise(3000, "a") + EXE,
        "sfx-deflated.exe": EXE + _noise(2000, "b") + _zip(zipfile.ZIP_DEFLATED),
        "sfx-stored.exe": EXE + _noise(2000, "c") + _zip(zipfile.ZIP_STORED),
        "zip-in-blob.bin": _noise(4096, "d") + _zip(zipfile.ZIP_DEFLATED) + _noise(100, "e"),
        "zip-in-text.txt": b"plain words\n" * 400 + _zip(zipfile.ZIP_DEFLATED),
        "pdf-in-blob.bin": _noise(4096, "d") + _pdf(),  # noise clamscan types as binary data
        "exe-in-blob.bin": _noise(4096, "d") + EXE,  # an executable only counts inside one
        "magic-noise.bin": (b"PK\x03\x04" + _noise(40, "h") + b"MSCF\0\0\0\0" + b"%PDF-1.x" + b"MZ") * 200,
    }
    arj = _arj(folder.parent)
    if arj is not None:
        files["arj-in-blob.bin"] = _noise(3000, "i") + arj
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("embedded")
    _corpus(base / "files")
    (base / "hash.hdb").write_text(f"{hashlib.md5(EXE).hexdigest()}:{len(EXE)}:{HASH}\n")
    (base / "both").mkdir()
    (base / "both" / "h.hdb").write_text(f"{hashlib.md5(EXE).hexdigest()}:{len(EXE)}:{HASH}\n")
    (base / "both" / "b.ndb").write_text(f"{BODY}:0:*:{EXE[0x1F8:0x220].hex()}\n")
    return base


@pytest.mark.parametrize("args", [["-d", "hash.hdb"], ["-z", "-d", "both"]], ids=["hash-only", "allmatch"])
def test_embedded_files_as_clamscan(root: Path, shared_cache_dir: Path, args: list[str]) -> None:
    pair = run_both(["--no-summary", *args, "files"], root, shared_cache_dir)
    for path in sorted({p for p, _ in pair.clam.found} | {p for p, _ in pair.bastion.found}
                       | {str(Path("files") / n) for n in os.listdir(root / "files")}):
        assert set(pair.bastion.names(path)) == set(pair.clam.names(path)), pair.report(path)
    # the hash of the extracted executable is what finds these
    assert {Path(p).name for p, _ in pair.clam.found} >= {"exe-after-exe.exe", "sfx-deflated.exe", "zip-in-blob.bin"}
    assert "pdf-in-blob.bin" not in {Path(p).name for p, _ in pair.clam.found}  # not an embedded type for ClamAV


def test_max_embeddedpe_as_clamscan(root: Path, shared_cache_dir: Path) -> None:
    for limit, expect in (("100", False), ("1M", True)):
        args = ["--no-summary", "-d", "hash.hdb", f"--max-embeddedpe={limit}", "files/exe-after-exe.exe"]
        pair = run_both(args, root, shared_cache_dir)
        assert pair.bastion.found == pair.clam.found and bool(pair.clam.found) == expect, pair.report()


def test_a_file_full_of_magics_is_cheap() -> None:
    data = (b"PK\x03\x04" + bytes(26) + b"MSCF\0\0\0\0" + b"Rar!\x1a\x07\x00" + b"\x60\xea" + b"MZ" + bytes(70)
            + b"PE\0\0") * 20_000
    spotter = Spotter()
    spotter.feed(data)
    assert spotter.seen
    start = time.monotonic()
    items = list(EmbeddedObjects("CL_TYPE_MSEXE").children(b"MZ" + data, "x.exe", UnpackLimits()))
    assert time.monotonic() - start < 10 and len(items) < 1000


def test_the_spotter_ignores_the_first_byte_and_sees_across_chunks() -> None:
    first = Spotter()
    first.feed(b"PK\x03\x04 the object itself is a zip")
    assert not first.seen
    split = Spotter()
    split.feed(b"x" * 100 + b"MS")
    split.feed(b"CF\0\0\0\0 and more")
    assert split.seen
