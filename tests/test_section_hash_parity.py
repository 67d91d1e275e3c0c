"""PE section hash signatures (``.mdb``/``.msb``): clamscan 1.4.6 and bastion-clamscan agree.

Section hashes are computed here from the section table the way ClamAV lays sections out
(tests/test_clamscan_parity.py ``pe_layout``), over real PE files from clamav-testfiles and a
crafted one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.test_clamscan_parity import TESTFILES, UNOFFICIAL, Pair, build_pe_file, pe_layout, run_both


def _pes() -> dict[str, bytes]:
    pes = {"crafted.exe": build_pe_file()}
    for name in ("clam.exe", "clam-upx.exe"):
        path = TESTFILES / name
        if path.exists():
            pes[name] = path.read_bytes()
    return pes


@pytest.fixture(scope="module")
def section_runs(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> tuple[Path, Pair, dict]:
    root = tmp_path_factory.mktemp("parity-mdb")
    files = root / "files"
    db = root / "db"
    files.mkdir()
    db.mkdir()
    mdb, msb, expect = [], [], {}
    for name, data in _pes().items():
        (files / name).write_bytes(data)
        names = []
        stem = name.replace(".", "_").replace("-", "_")
        for i, (off, size) in enumerate(pe_layout(data).sections):
            raw = data[off:off + size]
            if not raw:
                continue
            mdb.append(f"{len(raw)}:{hashlib.md5(raw).hexdigest()}:Parity.Mdb.{stem}.s{i}")
            mdb.append(f"{len(raw) + 1}:{hashlib.md5(raw).hexdigest()}:Parity.Mdb.{stem}.s{i}_wrong_size")
            msb.append(f"{len(raw)}:{hashlib.sha256(raw).hexdigest()}:Parity.Msb.{stem}.s{i}_sha256")
            msb.append(f"*:{hashlib.sha1(raw).hexdigest()}:Parity.Msb.{stem}.s{i}_sha1_any_size:73")
            names += [f"Parity.Mdb.{stem}.s{i}", f"Parity.Msb.{stem}.s{i}_sha256",
                      f"Parity.Msb.{stem}.s{i}_sha1_any_size"]
            if name == "crafted.exe" and i == 0:
                # the same bytes as a plain data file: section hashes apply to PE files only
                (files / "section0.bin").write_bytes(raw)
        expect[name] = sorted(n + UNOFFICIAL for n in names)
    expect["section0.bin"] = []
    (db / "parity.mdb").write_text("\n".join(mdb) + "\n")
    (db / "parity.msb").write_text("\n".join(msb) + "\n")
    pair = run_both(["-z", "--no-summary", "-d", str(db), str(files)], root, shared_cache_dir)
    return files, pair, expect


@pytest.mark.parametrize("name", ["crafted.exe", "clam.exe", "clam-upx.exe", "section0.bin"])
def test_section_hashes_match_like_clamscan(section_runs: tuple[Path, Pair, dict], name: str) -> None:
    files, pair, expect = section_runs
    if name not in expect:
        pytest.skip(f"{name} is not in clamav-testfiles here")
    path = str(files / name)
    # clamscan also unpacks clam-upx.exe and finds clam.exe's section inside: unpacking is not here
    # yet (README), so only each file's own sections are compared
    stem = "." + name.replace(".", "_").replace("-", "_") + "."
    clam = [n for n in pair.clam.names(path) if stem in n]
    assert pair.bastion.names(path) == clam, pair.report(path)
    assert clam == expect[name], f"clamscan itself no longer does this\n{pair.report(path)}"
    assert pair.bastion.rc == pair.clam.rc
