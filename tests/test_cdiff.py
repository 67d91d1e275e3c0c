""".cdiff files and their scripts, checked against ClamAV's own tools.

Scripts are made by Debian's ``sigtool --diff`` from two test-signed CVDs (tests/test_cvd.py's
builder), gzipped and signed here with a test key (ClamAV's private cdiff key is, of course, not
available).  Every script is also run by ``sigtool --run-cdiff`` and the files compared with what
Bastion's script runner makes: the same files for a good script, a failure in both for a bad one.
Where Bastion is deliberately stricter than ClamAV it is said next to the case.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bastion.feed import cld
from bastion.feed.cdiff import CdiffError, apply_script, read_cdiff
from bastion.signatures import cvd
from bastion.signatures.cvd import open_container
from tests.test_cvd import PrivateKey, build_container, keys, sign_pss  # noqa: F401 - the fixture

SIGTOOL = shutil.which("sigtool")
needs_sigtool = pytest.mark.skipif(SIGTOOL is None, reason="sigtool is not installed (Debian: apt-get install clamav)")

BASE = {"a.ndb": b"l1\nl2\nl3\nl4\n", "b.ndb": b"b1\n"}


def make_cdiff(script: bytes, version: int, key: PrivateKey) -> bytes:
    """A .cdiff as ClamAV publishes them, signed with ``key``."""
    body = f"ClamAV-Diff:{version}:{len(script)}:".encode() + gzip.compress(script, mtime=0)
    return body + b":" + sign_pss(body, key).encode()


def sigtool_diff(old: bytes, new: bytes, version: int, work: Path) -> bytes:
    """The update script ``sigtool --diff`` writes for two versions of daily.cvd."""
    assert SIGTOOL is not None
    for sub, data in (("old", old), ("new", new)):
        (work / sub).mkdir(parents=True)
        (work / sub / "daily.cvd").write_bytes(data)
    r = subprocess.run([SIGTOOL, "--diff", "old/daily.cvd", "new/daily.cvd"], cwd=work, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return (work / "new" / f"daily-{version}.script").read_bytes()


def sigtool_run(script: bytes, folder: Path) -> bool:
    """Run a script with ``sigtool --run-cdiff`` in ``folder``; whether ClamAV applied it (sigtool then
    also checks the result against a daily.cvd, which is not there: that part is ignored)."""
    assert SIGTOOL is not None
    (folder / "daily-9.script").write_bytes(script)
    r = subprocess.run([SIGTOOL, "--run-cdiff=daily-9.script"], cwd=folder, capture_output=True, text=True,
                       timeout=60)
    (folder / "daily-9.script").unlink()
    return "LibClamAV Error" not in r.stdout + r.stderr


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def both(script: bytes, tmp_path: Path, base: dict[str, bytes] | None = None) -> tuple[bool, bool, Path, Path]:
    """Run ``script`` with ClamAV and with Bastion on copies of ``base``."""
    ours, theirs = tmp_path / "bastion", tmp_path / "clamav"
    for folder in (ours, theirs):
        folder.mkdir()
        for name, data in (base or BASE).items():
            (folder / name).write_bytes(data)
    try:
        apply_script(script, str(ours))
        ours_ok = True
    except CdiffError:
        ours_ok = False
    return ours_ok, sigtool_run(script, theirs), ours, theirs


GOOD = {
    "xchg out of order": b"OPEN a.ndb\nXCHG 3 l3 x3\nXCHG 1 l1 x1\nCLOSE\n",
    "del out of order": b"OPEN a.ndb\nDEL 3 l3\nDEL 1 l1\nCLOSE\n",
    "del add xchg, spaces kept": b"OPEN a.ndb\nDEL 2 l\nADD   z z  \nXCHG 1 l1    new  line  \nCLOSE\n",
    "xchg to an empty line": b"OPEN a.ndb\nXCHG 1 l1 \nCLOSE\n",
    "add creates a file": b"OPEN c.ndb\nADD c1\nADD c2\nCLOSE\n",
    "the last edit of a line wins": b"OPEN a.ndb\nDEL 3 l3\nXCHG 3 l3 y\nDEL 1 l1\nDEL 1 l1\nCLOSE\n",
    "unlink": b"UNLINK b.ndb\n",
    "move": b"MOVE a.ndb b.ndb 2 l2 3 l3\n",
    "comments and CLOSE's argument": b"# a comment\nOPEN a.ndb\nADD q\nCLOSE a.ndb\n",
    "no final newline": b"OPEN a.ndb\nDEL 4 l4\nCLOSE",
    "two files in turn": b"OPEN a.ndb\nDEL 1 l1\nCLOSE\nOPEN b.ndb\nXCHG 1 b1 b2\nCLOSE\n",
}


@needs_sigtool
@pytest.mark.parametrize("script", list(GOOD.values()), ids=list(GOOD))
def test_good_scripts_give_the_files_clamav_gives(tmp_path: Path, script: bytes) -> None:
    ours_ok, theirs_ok, ours, theirs = both(script, tmp_path)
    assert ours_ok and theirs_ok
    assert files(ours) == files(theirs)


# one or more malformed or non-matching lines per command; ClamAV refuses each of them too
BAD = {
    "OPEN: a path": (b"OPEN ../a.ndb\nCLOSE\n", "bad database file name"),
    "OPEN: a CR": (b"OPEN a.ndb\r\nCLOSE\n", "bad database file name"),
    "OPEN: twice": (b"OPEN a.ndb\nOPEN b.ndb\n", "still open"),
    "ADD: nothing open": (b"ADD x\n", "no file open"),
    "DEL: line not there": (b"OPEN a.ndb\nDEL 9 l\nCLOSE\n", "no line 9"),
    "DEL: other text": (b"OPEN a.ndb\nDEL 2 l3\nCLOSE\n", "does not start with"),
    "DEL: no number": (b"OPEN a.ndb\nDEL x l\nCLOSE\n", "bad line number"),
    "DEL: no prefix": (b"OPEN a.ndb\nDEL 1\nCLOSE\n", "DEL needs"),
    "XCHG: no new line": (b"OPEN a.ndb\nXCHG 1 l1\nCLOSE\n", "XCHG needs"),
    "XCHG: line 0": (b"OPEN a.ndb\nXCHG 0 l1 q\nCLOSE\n", "no line 0"),
    "XCHG: other text": (b"OPEN a.ndb\nXCHG 1 zz q\nCLOSE\n", "does not start with"),
    "CLOSE: nothing open": (b"CLOSE\n", "no file open"),
    "MOVE: a file open": (b"OPEN a.ndb\nMOVE a.ndb b.ndb 2 l2 3 l3\n", "still open"),
    "MOVE: no such target": (b"MOVE a.ndb z.ndb 2 l2 3 l3\n", "does not exist"),
    "MOVE: one line": (b"MOVE a.ndb b.ndb 2 l2 2 l2\n", "first must be before"),
    "MOVE: missing fields": (b"MOVE a.ndb b.ndb 2 l2\n", "MOVE needs"),
    "UNLINK: no such file": (b"UNLINK z.ndb\n", "No such file"),
    "UNLINK: a file open": (b"OPEN a.ndb\nUNLINK a.ndb\n", "still open"),
    "unknown command": (b"OPEN a.ndb\nFOO bar\nCLOSE\n", "unknown command"),
    "leading space": (b" OPEN a.ndb\nCLOSE\n", "unknown command"),
    "blank line": (b"OPEN a.ndb\n\nCLOSE\n", "unknown command"),
}


@needs_sigtool
@pytest.mark.parametrize(("script", "reason"), list(BAD.values()), ids=list(BAD))
def test_bad_scripts_fail_in_both(tmp_path: Path, script: bytes, reason: str) -> None:
    ours_ok, theirs_ok, _, _ = both(script, tmp_path)
    assert not ours_ok and not theirs_ok
    with pytest.raises(CdiffError, match=reason) as err:
        apply_script(script, str(tmp_path / "bastion"))
    assert "script line" in str(err.value)


def test_editing_a_file_without_final_newline_fails(tmp_path: Path) -> None:
    (tmp_path / "c.ndb").write_bytes(b"c1\nc2")
    with pytest.raises(CdiffError, match="no final newline"):
        apply_script(b"OPEN c.ndb\nDEL 1 c1\nCLOSE\n", str(tmp_path))


@pytest.mark.parametrize(("script", "reason"), [
    (b"OPEN a.ndb\nDEL 1 l1\n", "still open"),   # ClamAV drops the pending edits silently
    (b"OPEN a.ndb\nADD\nCLOSE\n", "ADD without a line"),  # ClamAV ignores it
    (b"OPEN ..\nCLOSE\n", "bad database file name"),
    (b"MOVE a.ndb a.ndb 1 l1 2 l2\n", "within one file"),
])
def test_stricter_than_clamav(tmp_path: Path, script: bytes, reason: str) -> None:
    for name, data in BASE.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(CdiffError, match=reason):
        apply_script(script, str(tmp_path))


OLD = {"daily.ndb": b"Old.One:0:*:6f6c64206f6e65\nKept.Sig:0:*:6b657074\nOld.Two:0:*:6f6c642074776f\n",
       "daily.hdb": b"44d88612fea8a8f36de82e1278abb02f:68:Gone.Hash\n"}
NEW = {"daily.ndb": b"Kept.Sig:0:*:6b657074\nOld.Two:0:*:6f6c642074776f\nNew.One:0:*:6e6577206f6e65\n",
       "daily.ldb": b"New.Logical;Target:0;0;6e6577206c6f676963616c\n"}


@needs_sigtool
def test_sigtool_diff_applied_by_bastion_rebuilds_the_new_version(tmp_path: Path, keys) -> None:  # noqa: ANN001,F811
    old = build_container("daily", OLD, keys, version=5)
    new = build_container("daily", NEW, keys, version=6)
    script = sigtool_diff(old, new, 6, tmp_path / "diff")
    assert b"UNLINK daily.hdb" in script and b"OPEN daily.ldb" in script  # a file removed, one added
    ours_ok, theirs_ok, ours, theirs = both(script, tmp_path, dict(open_container(
        "daily.cvd", old, cvd_key=keys[0].public, info_key=keys[1].public).members))
    assert ours_ok and theirs_ok and files(ours) == files(theirs)
    data = cld.build_cld(str(ours), "daily")
    rebuilt = open_container("daily.cld", data, info_key=keys[1].public)  # .info signature, member digests
    assert rebuilt.kind == "cld" and rebuilt.header.version == 6 and rebuilt.header.md5 == "X"
    assert data[:512].rstrip(b" ") == first_info_line(new, keys)
    assert [n for n, _ in rebuilt.members][:2] == ["COPYING", "daily.info"]
    assert {n: d for n, d in rebuilt.members if n not in ("COPYING", "daily.info")} == NEW
    assert data[512:519] == b"COPYING"  # a plain tar, as freshclam writes by default


def first_info_line(container: bytes, keys) -> bytes:  # noqa: ANN001,F811
    info = dict(open_container("daily.cvd", container, cvd_key=keys[0].public, info_key=keys[1].public).members)
    return info["daily.info"].split(b"\n", 1)[0]


def test_read_cdiff_checks_signature_version_and_length(keys) -> None:  # noqa: ANN001,F811
    script = b"OPEN a.ndb\nADD x\nCLOSE\n"
    good = make_cdiff(script, 7, keys[1])
    assert read_cdiff(good, 7, key=keys[1].public).script == script
    with pytest.raises(CdiffError, match="claims version 7, expected 8"):
        read_cdiff(good, 8, key=keys[1].public)
    with pytest.raises(CdiffError, match="does not verify"):
        read_cdiff(make_cdiff(script, 7, keys[0]), 7, key=keys[1].public)  # another key
    with pytest.raises(CdiffError, match="does not verify"):
        read_cdiff(good, 7)  # ClamAV's real key
    forged = good.replace(b"ClamAV-Diff:7:", b"ClamAV-Diff:8:")
    with pytest.raises(CdiffError, match="does not verify"):
        read_cdiff(forged, 8, key=keys[1].public)
    for cut in (10, 40, len(good) // 2, len(good) - 5):
        with pytest.raises(CdiffError):
            read_cdiff(good[:cut], 7, key=keys[1].public)
    with pytest.raises(CdiffError, match="not a cdiff"):
        read_cdiff(b"PK\x03\x04" + good, 7, key=keys[1].public)
    body = b"ClamAV-Diff:7:99:" + gzip.compress(script, mtime=0)  # a length that is not the script's
    with pytest.raises(CdiffError, match="not the 99 bytes"):
        read_cdiff(body + b":" + sign_pss(body, keys[1]).encode(), 7, key=keys[1].public)
    body = b"ClamAV-Diff:7:24:" + b"not gzip at all"
    with pytest.raises(CdiffError, match="damaged"):
        read_cdiff(body + b":" + sign_pss(body, keys[1]).encode(), 7, key=keys[1].public)


def test_the_real_cdiff_key_is_clamavs() -> None:
    # PSS_NSTR in libclamav_rust/src/cdiff.rs: 2048 bits, starting 147839058740774670902622285165579175702...
    assert cvd.CDIFF_KEY.modulus.bit_length() == 2047
    assert str(cvd.CDIFF_KEY.modulus).startswith("14783905874077467090262228516557917570254599638376")
    assert str(cvd.CDIFF_KEY.modulus).endswith("2198117811990006021989844180721010947")
    assert cvd.CDIFF_KEY.exponent == 100002053


CLAMAV_SOURCE = os.environ.get("BASTION_CLAMAV_SOURCE", "")
VECTORS = Path(CLAMAV_SOURCE) / "unit_tests" / "input" / "freshclam_testfiles"


@pytest.mark.skipif(not (CLAMAV_SOURCE and VECTORS.is_dir()),
                    reason="set BASTION_CLAMAV_SOURCE to a ClamAV source checkout for its real-signed test files")
def test_clamavs_own_signed_cdiffs(tmp_path: Path) -> None:
    """ClamAV's freshclam test files, signed with ClamAV's real keys: test-1.cvd patched with
    test-2..6.cdiff must give test-6.cvd's files, and clamscan must load the .cld built from them."""
    base = open_container(str(VECTORS / "test-1.cvd"))  # ClamAV's real keys, nothing swapped
    work = tmp_path / "work"
    work.mkdir()
    cld.unpack(base, str(work))
    for version in range(2, 7):
        apply_script(read_cdiff((VECTORS / f"test-{version}.cdiff").read_bytes(), version).script, str(work))
    data = cld.build_cld(str(work), "test")
    rebuilt = open_container("test.cld", data)
    assert dict(rebuilt.members) == dict(open_container(str(VECTORS / "test-6.cvd")).members)
    if shutil.which("clamscan"):
        (tmp_path / "db").mkdir()
        (tmp_path / "db" / "test.cld").write_bytes(data)
        r = subprocess.run(["clamscan", "--debug", "--no-summary", "-d", str(tmp_path / "db"), str(tmp_path / "db")],
                           capture_output=True, text=True, timeout=120)
        assert "test.cld loaded" in r.stdout + r.stderr
