"""bastion-clamscan as a process: what it promises beyond plain parity with clamscan."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers import CANARY, EICAR, run_clamscan_clone, write


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def found(stdout: str) -> list[tuple[str, str]]:
    return re.findall(r"^(.*): (\S+) FOUND$", stdout, re.M)


def test_builtin_database_and_summary(tmp_path: Path, cache: Path) -> None:
    write(tmp_path / "s" / "eicar.com", EICAR)
    write(tmp_path / "s" / "clean.txt", "hello\n")
    r = run_clamscan_clone(["-r", str(tmp_path / "s")], cache)
    assert r.returncode == 1, r.stderr
    assert f"{tmp_path}/s/eicar.com: Bastion.Test.EICAR FOUND" in r.stdout
    assert f"{tmp_path}/s/clean.txt: OK" in r.stdout
    summary = r.stdout.split("----------- SCAN SUMMARY -----------\n", 1)[1]
    keys = [line.split(":", 1)[0] for line in summary.splitlines()]
    assert keys == ["Known viruses", "Engine version", "Scanned directories", "Scanned files", "Infected files",
                    "Data scanned", "Data read", "Time", "Start Date", "End Date"]
    assert "Scanned files: 2" in summary and "Infected files: 1" in summary


def test_malformed_database_names_file_and_line(tmp_path: Path, cache: Path) -> None:
    db = write(tmp_path / "bad.ndb", "Good:0:*:41424344\nBad:0:*:4142zz\n")
    target = write(tmp_path / "f", "x")
    r = run_clamscan_clone(["-d", str(db), str(target)], cache)
    assert r.returncode == 2
    assert f"{db}:2:" in r.stderr
    assert "FOUND" not in r.stdout and ": OK" not in r.stdout


def test_unsupported_database_files_are_named(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "db"
    write(d / "a.ndb", "A:0:*:41424344\n")
    write(d / "b.cbc", "ClamBCafhm\n")
    r = run_clamscan_clone(["-d", str(d), "--no-summary", str(write(tmp_path / "f", "xxABCD"))], cache)
    assert r.returncode == 1
    assert "b.cbc" in r.stderr and "not supported yet" in r.stderr
    r = run_clamscan_clone(["-d", str(d), "--debug", "--no-summary", str(tmp_path / "f")], cache)
    assert f"loaded {d}/a.ndb" in r.stderr and "b.cbc" in r.stderr


@pytest.mark.parametrize("jobs", ["1", "2", "4"])
def test_output_order_is_deterministic_for_any_jobs(tmp_path: Path, cache: Path, jobs: str) -> None:
    root = tmp_path / "many"
    for i in range(60):
        write(root / f"d{i % 4}" / f"f{i:03d}.bin", (CANARY if i % 7 == 0 else b"") + os.urandom(2000 + i * 97))
    r = run_clamscan_clone(["-r", "--no-summary", "-j", jobs, str(root)], cache)
    expected = sorted(str(p) for p in root.rglob("*.bin"))
    listed = [line.split(": ")[0] for line in r.stdout.splitlines()]
    assert listed == expected
    assert len(found(r.stdout)) == len([i for i in range(60) if i % 7 == 0])


def test_log_file_list_stdin_and_quiet(tmp_path: Path, cache: Path) -> None:
    e = write(tmp_path / "e.com", EICAR)
    c = write(tmp_path / "c.txt", "clean")
    lst = write(tmp_path / "list", f"{e}\n{c}\n")
    log = tmp_path / "scan.log"
    r = run_clamscan_clone(["-f", str(lst), "-l", str(log), "--no-summary"], cache)
    assert r.returncode == 1 and found(r.stdout) == [(str(e), "Bastion.Test.EICAR")]
    assert f"{c}: OK" in log.read_text() and f"{e}: Bastion.Test.EICAR FOUND" in log.read_text()
    r = run_clamscan_clone(["-", "--no-summary"], cache, stdin=EICAR)
    assert r.stdout == "stdin: Bastion.Test.EICAR FOUND\n" and r.returncode == 1
    r = run_clamscan_clone(["--quiet", str(c)], cache)
    assert r.stdout == "" and r.returncode == 0


def test_actions_only_when_asked_and_never_half_done(tmp_path: Path, cache: Path) -> None:
    e = write(tmp_path / "e.com", EICAR)
    for opt in (["--remove=no"], []):
        r = run_clamscan_clone([*opt, "--no-summary", str(e)], cache)
        assert r.returncode == 1 and e.read_bytes() == EICAR
    for opt in (["--move", str(tmp_path / "q")], ["--copy", str(tmp_path / "q")]):  # no such directory
        r = run_clamscan_clone([*opt, str(e)], cache)
        assert r.returncode == 2 and "action_setup: Failed to get realpath" in r.stdout
        assert e.read_bytes() == EICAR


def test_symlink_loop_fifo_and_device_do_not_hang(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    os.symlink(root, root / "self")
    os.symlink(root / "nowhere", root / "dangling")
    os.mkfifo(root / "fifo")
    write(root / "sub" / "e.com", EICAR)
    os.symlink(root, root / "sub" / "up")
    r = run_clamscan_clone(["-r", "--no-summary", str(root), str(root / "fifo"), "/dev/zero"], cache, timeout=60)
    assert r.returncode == 1
    assert f"{root}/self: Symbolic link" in r.stdout
    assert f"WARNING: {root}/fifo: Not supported file type" in r.stderr
    assert "WARNING: /dev/zero: Not supported file type" in r.stderr
    r = run_clamscan_clone(["--no-summary", str(root / "self" / "sub")], cache, timeout=60)
    assert found(r.stdout) == [(f"{root}/self/sub/e.com", "Bastion.Test.EICAR")]


def test_unreadable_file_is_an_error_line(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys
    import tempfile

    from tests.helpers import bastion_env

    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads everything: run the scan without the capabilities that allow it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permission errors cannot be produced")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    shared = Path(tempfile.mkdtemp(prefix="bastion-perm-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        secret = write(shared / "secret", "x")
        secret.chmod(0)
        ok = write(shared / "ok.txt", "fine")
        ok.chmod(0o644)
        env = bastion_env(shared / "cache")
        probe = subprocess.run([*prefix, sys.executable, "-c", "import bastion.cli.clamscan"], capture_output=True,
                               text=True, env=env, timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"the unprivileged user cannot import the package here: {probe.stderr[-200:]}")
        r = subprocess.run([*prefix, sys.executable, "-m", "bastion.cli.clamscan", str(secret),
                            str(ok)], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2, r.stderr
        assert f"{secret}: Access denied\n" in r.stdout and "\nTotal errors: 1\n" in r.stdout
        assert f"{ok}: OK" in r.stdout
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_version(cache: Path) -> None:
    r = run_clamscan_clone(["-V"], cache)
    assert r.returncode == 0 and r.stdout.startswith("ClamAV 1.4.6 (Bastion ")
