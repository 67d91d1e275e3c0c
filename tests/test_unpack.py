"""Unpacking: containers are opened through the engine, within limits, and hostile input is contained.

The hostile corpus is generated here: nested and overlapping zip bombs, 10,000 nested gzip layers,
path tricks and links in tar, truncated and corrupted archives of every supported type, declared
sizes of terabytes.  Each must finish quickly, report its problem as data, and never raise.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import resource
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from bastion.database.compiled import open_database
from bastion.engine.scanner import Engine, ScanOptions
from bastion.signatures.loader import builtin_database_dir
from tests.helpers import CANARY, EICAR, bastion_env

TESTFILES = Path("/usr/share/clamav-testfiles")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def db():  # noqa: ANN201 - a Database
    return open_database([builtin_database_dir()], use_cache=False)


def scan(db, data: bytes, **options: object):  # noqa: ANN001, ANN201
    return Engine(db, ScanOptions(**options)).scan_bytes(data, "sample")  # type: ignore[arg-type]


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


INFECTED = b"some text " + CANARY + b" more text\n"


# ---------------------------------------------------------------- formats and container paths
@pytest.mark.parametrize(("kind", "make"), [
    ("zip", lambda d: zip_of({"dir/inner.txt": d})),
    ("zip-stored", lambda d: zip_of({"inner.txt": d}, zipfile.ZIP_STORED)),
    ("zip-bzip2", lambda d: zip_of({"inner.txt": d}, zipfile.ZIP_BZIP2)),
    ("zip-lzma", lambda d: zip_of({"inner.txt": d}, zipfile.ZIP_LZMA)),
    ("tar", lambda d: tar_of({"inner.txt": d})),
    ("gzip", lambda d: gzip.compress(d)),
    ("bzip2", lambda d: bz2.compress(d)),
    ("xz", lambda d: lzma.compress(d)),
    ("tar.gz", lambda d: gzip.compress(tar_of({"inner.txt": d}))),
    ("zip-in-tar-in-xz", lambda d: lzma.compress(tar_of({"a.zip": zip_of({"inner.txt": d})}))),
])
def test_members_are_scanned_with_their_path(db, kind: str, make) -> None:  # noqa: ANN001
    result = scan(db, make(INFECTED), allmatch=True)
    assert {d.name for d in result.detections} == {"Bastion.Test.Canary.UNOFFICIAL"}, (kind, result)
    # found inside (a stored member is also visible in the container's own bytes)
    assert any(d.evidence.container_path.startswith("sample!") for d in result.detections), result
    assert scan(db, make(b"nothing to see here at all\n")).detections == []


def test_zip_member_path_is_shown(db) -> None:  # noqa: ANN001
    result = scan(db, zip_of({"docs/invoice.txt": INFECTED}))
    assert result.detections[0].evidence.container_path == "sample!docs/invoice.txt"


def test_archives_are_not_opened_when_asked(db) -> None:  # noqa: ANN001
    assert scan(db, zip_of({"a.txt": INFECTED}), scan_archives=False).detections == []


def test_allmatch_reports_every_member(db) -> None:  # noqa: ANN001
    data = zip_of({"a.txt": INFECTED, "b.txt": INFECTED, "c.txt": b"clean file here\n"})
    result = scan(db, data, allmatch=True)
    assert sorted(d.evidence.container_path for d in result.detections) == ["sample!a.txt", "sample!b.txt"]
    assert len(scan(db, data).detections) == 1


# ---------------------------------------------------------------- limits
def nested_zips(depth: int, payload: bytes) -> bytes:
    data = payload
    for level in range(depth):
        data = zip_of({f"level{level}.zip" if level else "inner.txt": data})
    return data


def test_max_recursion(db) -> None:  # noqa: ANN001
    assert scan(db, nested_zips(5, INFECTED)).detections  # 5 levels: found
    deep = nested_zips(30, INFECTED)
    result = scan(db, deep)
    assert not result.detections and "max-recursion" in result.limits
    alerted = scan(db, deep, alert_exceeds_max=True)
    assert [d.name for d in alerted.detections] == ["Heuristics.Limits.Exceeded.MaxRecursion"]
    assert scan(db, nested_zips(3, INFECTED), max_recursion=2).limits.get("max-recursion")


def test_ten_thousand_nested_gzip_layers(db) -> None:  # noqa: ANN001
    data = b"the payload at the bottom\n"
    for _ in range(10_000):
        data = gzip.compress(data, compresslevel=0, mtime=0)  # stored blocks: cheap to build
    started = time.monotonic()
    result = scan(db, data)
    assert time.monotonic() - started < 10
    assert "max-recursion" in result.limits and result.error is None


def test_max_files(db) -> None:  # noqa: ANN001
    members = {f"f{i}.txt": b"clean member number %d\n" % i for i in range(50)}
    members["z_last.txt"] = INFECTED
    data = zip_of(members)
    assert scan(db, data).detections
    limited = scan(db, data, max_files=10, alert_exceeds_max=True)
    assert [d.name for d in limited.detections] == ["Heuristics.Limits.Exceeded.MaxFiles"]


def test_zip_bomb_is_bounded(db) -> None:  # noqa: ANN001
    zeros = bytes(20 * MiB)
    bomb = zip_of({f"zero{i}.bin": zeros for i in range(10)} | {"last.txt": INFECTED})
    assert len(bomb) < 1 * MiB
    started = time.monotonic()
    result = scan(db, bomb, max_scansize=50 * MiB)
    assert time.monotonic() - started < 20
    assert "max-scansize" in result.limits and not result.detections


def test_nested_zip_bomb_is_bounded(db) -> None:  # noqa: ANN001
    layer = zip_of({f"z{i}.bin": bytes(10 * MiB) for i in range(4)})
    for _ in range(3):
        layer = zip_of({f"l{i}.zip": layer for i in range(4)})  # 4^4 * 10 MiB = 2.5 GiB declared
    started = time.monotonic()
    result = scan(db, layer, max_scansize=60 * MiB)
    assert time.monotonic() - started < 20
    assert {"max-scansize", "max-ratio"} & set(result.limits), result.limits


def test_member_over_max_filesize_and_ratio(db) -> None:  # noqa: ANN001
    # 8 MiB that deflate shrinks to about 2 MiB: over max-filesize, under the ratio bound
    quarter = os.urandom(2 * MiB).translate(bytes(b"acgt"[i & 3] for i in range(256)))
    data = zip_of({"big.bin": quarter * 4, "small.txt": INFECTED})
    result = scan(db, data, max_filesize=4 * MiB, allmatch=True)
    assert "max-filesize" in result.limits
    assert [d.name for d in result.detections] == ["Bastion.Test.Canary.UNOFFICIAL"]  # the rest still scanned
    gz = gzip.compress(bytes(30 * MiB))  # ~30 KiB: ratio ~1000
    assert "max-ratio" in scan(db, gz).limits


def overlapping_zip(kernel: bytes, copies: int) -> bytes:
    """Fifield's overlap: one compressed kernel, many central-directory entries pointing at it."""
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    comp = raw.compress(kernel) + raw.flush()
    crc = zlib.crc32(kernel)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(comp), len(kernel), 5, 0) + b"k.bin"
    body = local + comp
    central = b""
    for i in range(copies):
        name = f"c{i:05}.bin".encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(comp), len(kernel),
                               len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, copies, copies, len(central), len(body), 0)
    return body + central + end


def test_overlapping_entry_zip_bomb(db) -> None:  # noqa: ANN001
    bomb = overlapping_zip(bytes(10 * MiB), 1000)  # 10 GB if every entry were expanded
    started = time.monotonic()
    result = scan(db, bomb, max_scansize=40 * MiB)
    assert time.monotonic() - started < 20
    assert result.error is None


# ---------------------------------------------------------------- path tricks, links, nothing on disk
def test_path_traversal_and_links_stay_in_memory(db, tmp_path: Path) -> None:  # noqa: ANN001
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in {"../../escape.txt": INFECTED, "/etc/absolute.txt": b"clean absolute member\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, kind, target in (("sym", tarfile.SYMTYPE, "/etc/passwd"), ("hard", tarfile.LNKTYPE,
                                                                                "../../escape.txt")):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    before = set(os.listdir(tmp_path)), set(os.listdir(Path.cwd()))
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = scan(db, buf.getvalue(), allmatch=True)
    finally:
        os.chdir(cwd)
    # found in the member (and in the tar's own bytes: tar does not compress)
    assert "sample!../../escape.txt" in [d.evidence.container_path for d in result.detections]
    assert (set(os.listdir(tmp_path)), set(os.listdir(Path.cwd()))) == before
    assert not (tmp_path.parent.parent / "escape.txt").exists()


# ---------------------------------------------------------------- truncated, corrupted, lying headers
def _samples() -> dict[str, bytes]:
    out = {
        "zip": zip_of({"a.txt": INFECTED * 50, "b.txt": EICAR}),
        "tar": tar_of({"a.txt": INFECTED * 50}),
        "gz": gzip.compress(INFECTED * 50),
        "bz2": bz2.compress(INFECTED * 50),
        "xz": lzma.compress(INFECTED * 50),
    }
    for name in ("clam.7z", "clam.cab", "clam.newc.cpio", "clam.bin-le.cpio", "clam.tar.gz", "clam.exe.szdd",
                 "clam.exe.binhex", "clam.mail"):
        if (TESTFILES / name).exists():
            out[name] = (TESTFILES / name).read_bytes()
    return out


SAMPLES = _samples()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_truncated_and_corrupted_archives(db, name: str) -> None:  # noqa: ANN001
    data = SAMPLES[name]
    variants = [data[:cut] for cut in (len(data) // 4, len(data) // 2, len(data) - 7) if cut > 6]
    for pos in range(0, len(data), max(1, len(data) // 16)):
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        variants.append(bytes(flipped))
    for variant in variants:
        result = scan(db, variant, allmatch=True)
        assert result.error is None


def test_declared_terabyte_sizes(db) -> None:  # noqa: ANN001
    z = bytearray(zip_of({"a.txt": INFECTED}))
    struct.pack_into("<I", z, 22, 0xFFFFFFFF)  # local header: uncompressed size 4 GiB - 1
    cd = z.rfind(b"PK\x01\x02")
    struct.pack_into("<I", z, cd + 24, 0xFFFFFFFF)
    started = time.monotonic()
    assert scan(db, bytes(z)).error is None
    g = bytearray(gzip.compress(INFECTED))
    g[-4:] = b"\xff\xff\xff\xff"  # ISIZE
    assert scan(db, bytes(g)).detections
    t = bytearray(tar_of({"a.txt": INFECTED}))
    t[124:136] = b"77777777777\0"  # 8 GiB declared in the tar header
    assert scan(db, bytes(t)).error is None
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------- a real process: time and peak memory
def test_bomb_in_a_real_process_stays_within_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zip_of({f"zero{i}.bin": bytes(60 * MiB) for i in range(8)} | {"z.txt": INFECTED}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bastion.cli.clamscan", "--no-summary", "--alert-exceeds-max=yes",
                        str(bomb)], capture_output=True, text=True, env=bastion_env(tmp_path / "cache"), timeout=120)
    elapsed = time.monotonic() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert r.returncode == 1, r.stderr
    assert "Heuristics.Limits.Exceeded.MaxScanSize FOUND" in r.stdout
    assert elapsed < 60
    # default limits: at most one 100 MiB member in memory at a time, 400 MiB scanned in all
    assert max(peak_kib, before) < 700 * 1024, f"peak RSS {peak_kib // 1024} MiB"


# ---------------------------------------------------------------- mail
def mime_mail(attachments: dict[str, bytes], body: str = "Hello, see attached.") -> bytes:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = "rcpt@example.com"
    msg["Subject"] = "invoice"
    msg.set_content(body)
    for name, data in attachments.items():
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def test_mail_attachments_and_nested_archives(db) -> None:  # noqa: ANN001
    mail = mime_mail({"invoice.zip": zip_of({"doc.txt": INFECTED})})
    result = scan(db, mail)
    assert result.file_type == "CL_TYPE_MAIL"
    assert [d.evidence.container_path for d in result.detections] == ["sample!invoice.zip!doc.txt"]


def test_mbox_quoted_printable_and_uuencode(db) -> None:  # noqa: ANN001
    import binascii

    uu = b"begin 644 note.txt\n" + b"".join(binascii.b2a_uu(INFECTED[i:i + 45]) for i in range(0, len(INFECTED), 45))
    uu += b"`\nend\n"
    mbox = (b"From a@b Mon Jan  1 00:00:00 2024\nFrom: a@b\nSubject: one\n\nclean text\n\n"
            b"From c@d Mon Jan  1 00:00:00 2024\nFrom: c@d\nSubject: two\n\n" + uu)
    result = scan(db, mbox)
    assert [d.evidence.container_path for d in result.detections] == ["sample!message2/part2/note.txt"]
    qp = (b"From: a@b\nTo: c@d\nMIME-Version: 1.0\nContent-Type: text/plain\n"
          b"Content-Transfer-Encoding: quoted-printable\n\nsome text BASTION-TEST-=\nCANARY-7f3a9c1e more\n")
    assert scan(db, qp).detections
