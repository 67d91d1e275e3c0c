"""Every file of Debian's clamav-testfiles: bastion-clamscan gives the verdict clamscan gives.

The database is made here from clam.exe (its MD5 and a body signature from its PE header), so every
test file, which carries clam.exe inside some container, packer or encoding, is detected by clamscan
1.4.6.  Files Bastion cannot open yet are listed in ``NOT_YET`` with the reason; for them the test
asserts that Bastion still misses them, so the table has to be updated when support lands.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.test_clamscan_parity import TESTFILES, UNOFFICIAL, Pair, run_both

if not (TESTFILES / "clam.exe").exists():
    pytest.skip("clamav-testfiles is not installed (Debian: apt-get install clamav-testfiles)",
                allow_module_level=True)

BODY = "Parity.ClamExe.Body"
HASH = "Parity.ClamExe.Hash"
NOT_YET: dict[str, str] = {}  # every file is opened now; a new one Bastion cannot open goes here, with why
# Detected (the body signature, from the unpacked content), but clamscan also reports clam.exe's hash
# on the PE it rebuilds: the verdict agrees, the -z list is a subset.
NOT_REBUILT = "unpacked, not rebuilt byte-for-byte as ClamAV's rebuilder does"
PARTIAL = {
    "clam-upx.exe": NOT_REBUILT,
    "clam-yc.exe": "yC decrypted, then UPX inside: " + NOT_REBUILT,
}
FILES = sorted(p.name for p in TESTFILES.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def testfile_runs(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> tuple[Pair, Pair]:
    root = tmp_path_factory.mktemp("parity-testfiles")
    db = root / "db"
    db.mkdir()
    exe = (TESTFILES / "clam.exe").read_bytes()
    (db / "clam.hdb").write_text(f"{hashlib.md5(exe).hexdigest()}:{len(exe)}:{HASH}\n")
    (db / "clam.ndb").write_text(f"{BODY}:0:*:{exe[0x1F8:0x220].hex()}\n")
    base = ["--no-summary", "-d", str(db), str(TESTFILES)]
    return run_both(base, root, shared_cache_dir), run_both(["-z", *base], root, shared_cache_dir)


def test_every_file_is_in_the_table_or_supported() -> None:
    assert set(NOT_YET) | set(PARTIAL) <= set(FILES), "a table names a file clamav-testfiles no longer has"


@pytest.mark.parametrize("name", FILES)
def test_testfile_verdict(testfile_runs: tuple[Pair, Pair], name: str) -> None:
    first, allmatch = testfile_runs
    path = str(TESTFILES / name)
    assert path in first.clam.infected, f"clamscan no longer detects {name}: case design\n{first.report(path)}"
    if name in NOT_YET:
        assert path not in first.bastion.infected, \
            f"Bastion detects {name} now: remove it from NOT_YET ({NOT_YET[name]})\n{first.report(path)}"
        return
    assert path in first.bastion.infected, first.report(path)
    # with -z: the same set of names (clamscan may find the body signature at several layers)
    if name in PARTIAL:
        assert set(allmatch.bastion.names(path)) <= set(allmatch.clam.names(path)), allmatch.report(path)
    else:
        assert set(allmatch.bastion.names(path)) == set(allmatch.clam.names(path)), allmatch.report(path)
    assert BODY + UNOFFICIAL in allmatch.bastion.names(path)


@pytest.mark.parametrize("flag", ["", "--alert-encrypted", "--alert-encrypted-archive"])
def test_encrypted_zip_heuristic(tmp_path: Path, shared_cache_dir: Path, flag: str) -> None:
    import shutil
    import subprocess

    if shutil.which("zip") is None:
        pytest.skip("the zip tool is needed to make an encrypted zip")
    (tmp_path / "s.txt").write_text("secret content here\n")
    subprocess.run(["zip", "-q", "-P", "pw", "e.zip", "s.txt"], cwd=tmp_path, check=True)
    (tmp_path / "t.ndb").write_text("Parity.Anchor:0:*:414243444546\n")
    args = ["--no-summary", "-d", str(tmp_path / "t.ndb"), *([flag] if flag else []), str(tmp_path / "e.zip")]
    pair = run_both(args, tmp_path, shared_cache_dir)
    assert pair.bastion.found == pair.clam.found and pair.bastion.rc == pair.clam.rc, pair.report()
    assert bool(pair.clam.found) == bool(flag), pair.report()
