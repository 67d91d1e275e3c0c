#!/usr/bin/env python3
"""Archive-heavy benchmark: bastion-clamscan against Debian's clamscan on containers.

    python bench/run_archive_bench.py --workdir DIR [--files N] [--repeat 3] [--bastion CMD] [--jobs N]
                                      [--signatures DIR]

Generates (deterministically, under DIR) a database (the scan benchmark's generator: 100k MD5, 20k
SHA, 5k body signatures; or the files of ``--signatures DIR``, e.g. the scan benchmark's 1.25M-signature
database, linked in), plus 40 planted body signatures, and a corpus of N container files: zips (deflate and
stored, nested zip-in-zip), tar.gz, tar.xz, OOXML-like documents (zip with XML parts), OLE2 compound
documents (Office 97-2003 layout), PDFs with Flate streams, MIME mails with base64 attachments, gzip
and bzip2 singles.  One file in ten carries a planted signature somewhere
inside (at depth 1 to 3).

Measures for each tool (median of --repeat runs, warm page cache, Bastion's DB cache warm):
throughput of a full ``-r`` scan including DB load, peak RSS (GNU time %M) and the sampled peak PSS
of the process tree (Bastion's unpacker workers included), and the detections, compared between the
tools and with the planted ground truth.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import shlex
import shutil
import statistics
import struct
import sys
import tarfile
import tempfile
import zipfile
import zlib
from email.message import EmailMessage
from pathlib import Path

from run_scan_bench import parse_detections, run_measured
from workload import link_or_generate_db

ARCHIVE_WORKLOAD_VERSION = 3
PLANTS = 40
TARGET_SPEEDUP = 2.0
TARGET_RSS_RATIO = 0.5


def plant_text(i: int) -> bytes:
    return f"archive-bench-plant-{i:03d}-".encode() + bytes.fromhex("deadbeef") + f"-{i * 7919:08x}".encode()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            zf.writestr(info, data, compress_type=method)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _mail(attachments: dict[str, bytes], text: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = "rcpt@example.com"
    msg["Subject"] = "archive benchmark"
    msg["Date"] = "Mon, 01 Jan 2024 00:00:00 +0000"
    msg["Message-ID"] = "<bench@example.com>"
    msg.set_content(text)
    for name, data in attachments.items():
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def _ole2(streams: dict[str, bytes]) -> bytes:
    """A compound file (OLE2, CFB version 3) holding ``streams`` at its root, as Office 97-2003
    documents are.  Streams are padded to 4096 bytes so that all live in regular sectors (no mini
    stream): enough for both scanners' OLE2 readers, and a deterministic layout."""
    sector, end, free, fat_mark, nostream = 512, 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD, 0xFFFFFFFF
    names = sorted(streams, key=lambda n: (len(n), n.upper()))  # the directory's order of names
    data = b""
    fat: list[int] = []
    starts = {}
    for name in names:
        body = streams[name].ljust(4096, b"\0")
        body += bytes(-len(body) % sector)
        starts[name] = len(fat)
        count = len(body) // sector
        fat += [len(fat) + i + 1 for i in range(count - 1)] + [end]
        data += body

    def entry(name: str, kind: int, right: int, child: int, start: int, size: int) -> bytes:
        raw = name.encode("utf-16-le") + b"\0\0"
        return (raw.ljust(64, b"\0") + struct.pack("<HBBIII", len(raw), kind, 1, nostream, right, child)
                + bytes(16 + 4 + 16) + struct.pack("<IQ", start, size))

    entries = [entry("Root Entry", 5, nostream, 1 if names else nostream, end, 0)]
    for i, name in enumerate(names):
        entries.append(entry(name, 2, i + 2 if i + 1 < len(names) else nostream, nostream, starts[name],
                             len(streams[name].ljust(4096, b"\0"))))
    directory = b"".join(entries)
    directory += bytes(-len(directory) % sector)
    dir_start = len(fat)
    dir_count = len(directory) // sector
    fat += [dir_start + i + 1 for i in range(dir_count - 1)] + [end]
    fat_count = 1
    while (len(fat) + fat_count) > fat_count * (sector // 4):
        fat_count += 1
    fat_start = len(fat)
    fat += [fat_mark] * fat_count
    fat += [free] * (fat_count * (sector // 4) - len(fat))
    difat = [fat_start + i for i in range(fat_count)] + [free] * (109 - fat_count)
    header = (bytes.fromhex("d0cf11e0a1b11ae1") + bytes(16) + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
              + bytes(6) + struct.pack("<IIIIIIIII", 0, fat_count, dir_start, 0, 4096, end, 0, end, 0)
              + struct.pack("<109I", *difat))
    return header + data + directory + struct.pack(f"<{len(fat)}I", *fat)


def _pdf(members: dict[str, bytes]) -> bytes:
    """A PDF whose page content and embedded files are Flate-compressed streams of ``members``."""
    out = bytearray(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>"]
    for data in members.values():
        packed = zlib.compress(data, 6)
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed
                       + b"\nendstream")
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _members(rng: random.Random, words: list[str], count: int, plant: bytes | None) -> dict[str, bytes]:
    out = {}
    for j in range(count):
        if rng.random() < 0.6:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(200, 6000))).encode()
        else:
            text = rng.randbytes(rng.randint(2_000, 120_000))
        out[f"dir{j % 3}/member{j}.{'txt' if j % 2 else 'bin'}"] = text
    if plant is not None:
        name = rng.choice(list(out))
        data = out[name]
        at = rng.randint(0, len(data))
        out[name] = data[:at] + plant + data[at:]
    return out


def build_file(kind: str, rng: random.Random, words: list[str], plant: bytes | None) -> bytes:
    members = _members(rng, words, rng.randint(2, 12), plant)
    if kind == "zip":
        return _zip(members)
    if kind == "zip-stored":
        return _zip(members, zipfile.ZIP_STORED)
    if kind == "zip-nested":
        inner = _zip(members)
        return _zip({"outer.txt": b"see the inner archive\n", "inner/archive.zip": inner})
    if kind == "tar.gz":
        return gzip.compress(_tar(members), mtime=0)
    if kind == "tar.xz":
        return lzma.compress(_tar(members))
    if kind == "docx":
        body = b"".join(members.values())[:200_000]
        if plant is not None and plant not in body:
            body += plant
        parts = {"[Content_Types].xml": b"<?xml version='1.0'?><Types/>", "word/document.xml":
                 b"<w:document>" + body + b"</w:document>"}
        return _zip(parts)
    if kind == "doc":
        return _ole2({f"Stream{i}": data for i, data in enumerate(members.values())})
    if kind == "pdf":
        return _pdf(members)
    if kind == "mail":
        return _mail({"report.zip": _zip(members)}, " ".join(rng.choice(words) for _ in range(300)))
    if kind == "gz":
        return gzip.compress(b"".join(members.values()), mtime=0)
    if kind == "bz2":
        return bz2.compress(b"".join(members.values()))
    raise ValueError(kind)


KINDS = ["zip", "zip", "zip-stored", "zip-nested", "tar.gz", "tar.xz", "docx", "doc", "pdf", "mail", "mail", "gz",
         "bz2"]


def ensure_workload(workdir: Path, files: int, seed: int, signatures: Path | None) -> tuple[Path, Path, dict[str, str]]:
    tag = f"-sig{hashlib.sha256(str(signatures.resolve()).encode()).hexdigest()[:8]}" if signatures else ""
    root = workdir / f"archives-v{ARCHIVE_WORKLOAD_VERSION}-n{files}-seed{seed}{tag}"
    db, corpus, truth_path = root / "db", root / "corpus", root / "expected.json"
    if truth_path.exists():
        return db, corpus, json.loads(truth_path.read_text())
    shutil.rmtree(root, ignore_errors=True)
    link_or_generate_db(db, signatures, seed, root)
    (db / "plants.ndb").write_text("".join(f"Bench.Archive.Plant{i:03d}:0:*:{plant_text(i).hex()}\n"
                                           for i in range(PLANTS)))
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex() for _ in range(3000)]
    truth = {}
    for n in range(files):
        kind = KINDS[n % len(KINDS)]
        plant = n % 10 == 3
        plant_id = (n // 10) % PLANTS
        data = build_file(kind, rng, words, plant_text(plant_id) if plant else None)
        rel = f"{kind}/f{n:05d}.{kind.replace('-', '.').replace('docx', 'docx').replace('mail', 'eml')}"
        path = corpus / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if plant:
            truth[rel] = f"Bench.Archive.Plant{plant_id:03d}.UNOFFICIAL"
    truth_path.write_text(json.dumps(truth, indent=1, sort_keys=True))
    return db, corpus, truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--files", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bastion", default=shutil.which("bastion-clamscan") or "bastion-clamscan")
    ap.add_argument("--clamscan", default=shutil.which("clamscan") or "clamscan")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--signatures", type=Path, default=None,
                    help="use the signature files of this directory instead of generating a small database")
    args = ap.parse_args(argv)
    db, corpus, truth = ensure_workload(args.workdir, args.files, args.seed, args.signatures)
    size = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
    cache = Path(tempfile.mkdtemp(prefix="bastion-archive-bench-cache-"))
    env = dict(os.environ, BASTION_CACHE_DIR=str(cache), LC_ALL="C")
    bastion = [*shlex.split(args.bastion), "-j", str(args.jobs)]
    common = ["-d", str(db), "-r", str(corpus), "--no-summary", "-i"]
    run_measured([*bastion, "-d", str(db), "--no-summary", os.devnull], env)  # compile the DB once
    results = {}
    for label, cmd in (("clamscan", [args.clamscan, *common]), ("bastion", [*bastion, *common])):
        runs = [run_measured(cmd, env) for _ in range(args.repeat)]
        results[label] = {
            "wall": statistics.median(r.wall_s for r in runs),
            "rss": statistics.median(r.maxrss_kib for r in runs) / 1024,
            "pss": statistics.median(r.tree_pss_kib for r in runs) / 1024,
            "found": parse_detections(runs[0].stdout, corpus),
            "rc": runs[0].rc,
        }
    shutil.rmtree(cache, ignore_errors=True)
    expected = {(rel, name) for rel, name in truth.items()}
    c, b = results["clamscan"], results["bastion"]
    mib = size / 2**20
    print(f"Corpus: {args.files} container files, {mib:.1f} MiB; jobs {args.jobs}\n")
    print("| measure | clamscan | bastion | ratio |")
    print("|---|---|---|---|")
    print(f"| full scan incl. load (s) | {c['wall']:.2f} | {b['wall']:.2f} | {c['wall'] / b['wall']:.2f}x faster "
          f"(target >= {TARGET_SPEEDUP}x) |")
    print(f"| throughput (MiB/s) | {mib / c['wall']:.1f} | {mib / b['wall']:.1f} | |")
    print(f"| peak RSS, largest process (MiB) | {c['rss']:.0f} | {b['rss']:.0f} | {b['rss'] / c['rss']:.2f}x "
          f"(target <= {TARGET_RSS_RATIO}x) |")
    print(f"| peak PSS, process tree (MiB) | {c['pss']:.0f} | {b['pss']:.0f} | {b['pss'] / max(c['pss'], 1):.2f}x |")
    print(f"| detections (planted {len(expected)}) | {len(c['found'])} | {len(b['found'])} | "
          f"{'identical' if c['found'] == b['found'] else 'DIFFERENT'} |")
    missing_c, missing_b = expected - c["found"], expected - b["found"]
    if missing_c or missing_b or c["found"] != b["found"]:
        print(f"\nclamscan missed {sorted(missing_c)[:5]}; bastion missed {sorted(missing_b)[:5]}; "
              f"only clamscan {sorted(c['found'] - b['found'])[:5]}; "
              f"only bastion {sorted(b['found'] - c['found'])[:5]}")
    return 0 if c["found"] == b["found"] else 1


if __name__ == "__main__":
    sys.exit(main())
