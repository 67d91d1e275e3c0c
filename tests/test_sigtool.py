"""``bastion sigtool`` against Debian's sigtool 1.4 on the same inputs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import bastion_env, write

SIGTOOL = shutil.which("sigtool")
if SIGTOOL is None:
    pytest.skip("sigtool is not installed (Debian: apt-get install clamav)", allow_module_level=True)
TESTFILES = Path("/usr/share/clamav-testfiles")


Ran = subprocess.CompletedProcess


def both(args: list[str], cwd: Path, stdin: bytes = b"") -> tuple[Ran, Ran]:
    clam = subprocess.run([SIGTOOL, *args], cwd=cwd, input=stdin, capture_output=True, timeout=60)
    ours = subprocess.run([sys.executable, "-m", "bastion.cli.sigtool", *args], cwd=cwd, input=stdin,
                          capture_output=True, timeout=60, env=bastion_env(cwd / ".cache"))
    return clam, ours


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sigtool")
    write(root / "a.txt", b"first file\n")
    write(root / "b.bin", bytes(range(256)) * 3)
    src = root / "src"
    write(src / "test.ndb",
          "Tool.Test.Body:0:*:" + b"toolpayloadword".hex() + "\nTool.Test.Two:0:*:41424344*45464748\n")
    write(src / "test.hdb", f"{hashlib.md5(b'x').hexdigest()}:1:Tool.Test.Hash\n")
    write(src / "test.ldb", "Tool.Test.Logic;Engine:81-255,Target:0;0&1;4142::i;0/abc/i\n")
    write(src / "COPYING", "test\n")
    subprocess.run([SIGTOOL, "--build=test.cud", "--unsigned", f"--datadir={src}"], input=b"3\ntester\n",
                   cwd=src, capture_output=True, timeout=60)
    assert (src / "test.cud").exists()
    return root


@pytest.mark.parametrize("algo", ["--md5", "--sha1", "--sha256"])
def test_hash_lines(work: Path, algo: str) -> None:
    clam, ours = both([algo, "a.txt", "b.bin"], work)
    assert ours.stdout == clam.stdout and ours.returncode == clam.returncode == 0
    clam, ours = both([algo], work, stdin=b"from stdin")
    assert ours.stdout == clam.stdout


def test_hex_dump(work: Path) -> None:
    clam, ours = both(["--hex-dump"], work, stdin=bytes(range(256)))
    assert ours.stdout.strip() == clam.stdout.strip()


def test_info_of_a_cud(work: Path) -> None:
    clam, ours = both(["--info=src/test.cud"], work)
    assert ours.stdout.decode().splitlines() == clam.stdout.decode().splitlines(), (clam.stdout, ours.stdout)


def test_list_and_find_sigs(work: Path) -> None:
    clam, ours = both(["--list-sigs=src/test.cud"], work)
    assert sorted(ours.stdout.splitlines()) == sorted(clam.stdout.splitlines())
    clam, ours = both(["--find-sigs=Tool.Test", "--datadir=src"], work)
    assert sorted(set(ours.stdout.splitlines())) == sorted(set(clam.stdout.splitlines()))


@pytest.mark.parametrize("line", [
    "X:0:*:414243*444546", "X:0:*:4142{3-}4344", "X:0:*:4142!(43|44)4546", "X:0:*:41424?4546",
    "X:1:EP+0:4142??4344", "X:0:*:41[1-3]424344", "X:0:*:4142(4344|4546)47",
    "L1;Engine:81-255,Target:0;0&1;4142::i;0/abc/i", "L2;Engine:51-255,Target:1;0|1;EP+0:4d5a;10:41424344::wa",
])
def test_decode_sigs(work: Path, line: str) -> None:
    clam, ours = both(["--decode-sigs"], work, stdin=line.encode() + b"\n")
    assert ours.stdout.decode().strip() == clam.stdout.decode().strip()


def test_unpack_gives_the_same_files(work: Path, tmp_path: Path) -> None:
    for who in ("clam", "ours"):
        (tmp_path / who).mkdir()
    subprocess.run([SIGTOOL, f"--unpack={work}/src/test.cud"], cwd=tmp_path / "clam", capture_output=True, timeout=60)
    subprocess.run([sys.executable, "-m", "bastion.cli.sigtool", f"--unpack={work}/src/test.cud"],
                   cwd=tmp_path / "ours", capture_output=True, timeout=60, env=bastion_env(tmp_path / ".c"))
    listing = {p.name: p.read_bytes() for p in (tmp_path / "clam").iterdir()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "ours").iterdir()} == listing


def test_built_cud_loads_in_clamscan(work: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(work / "src", src, ignore=shutil.ignore_patterns("*.cud", "*.info"))
    r = subprocess.run([sys.executable, "-m", "bastion.cli.sigtool", "--build=test.cud", "--unsigned"],
                       cwd=src, input=b"7\nbastion\n", capture_output=True, timeout=60,
                       env=bastion_env(tmp_path / ".c"))
    assert r.returncode == 0, r.stderr
    target = write(tmp_path / "t.txt", b"xx toolpayloadword yy\n")
    out = subprocess.run(["clamscan", "--no-summary", "-d", str(src / "test.cud"), str(target)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"{target}: Tool.Test.Body.UNOFFICIAL FOUND", out.stdout + out.stderr
    info = subprocess.run([SIGTOOL, f"--info={src}/test.cud"], capture_output=True, text=True, timeout=60)
    assert "Version: 7" in info.stdout and "Builder: bastion" in info.stdout


def test_mdb_and_imp(work: Path) -> None:
    exe = TESTFILES / "clam.exe"
    if not exe.exists():
        pytest.skip("clamav-testfiles is not installed")
    env = bastion_env(work / ".cache")
    mdb = subprocess.run([sys.executable, "-m", "bastion.cli.sigtool", "--mdb", str(exe)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert mdb.stdout == "512:23db1dd3f77fae25610b6a32701313ae:clam.exe\n"  # = clamscan --debug's Section{0}
    imp = subprocess.run([sys.executable, "-m", "bastion.cli.sigtool", "--imp", str(exe)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert imp.stdout == "98c88d882f01a3f6ac1e5f7dfd761624:39:clam.exe\n"  # = clamscan --debug's Imphash
