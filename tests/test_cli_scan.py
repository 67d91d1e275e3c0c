"""``bastion scan`` as a real process: JSON Lines, human output, exit codes, order."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CANARY, EICAR, bastion_env, write

JSON_KEYS = ["path", "verdict", "file_type", "size", "sha256", "detections", "error", "limits"]
DETECTION_KEYS = ["name", "kind", "source", "line", "offsets", "normalized", "pattern", "db_version",
                  "container_path"]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def bastion(args: list[str], cache: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion.cli.main", *args], capture_output=True, text=True,
                          env=bastion_env(cache), timeout=timeout)


def json_lines(stdout: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    objs = [json.loads(line) for line in stdout.splitlines()]
    assert objs and objs[-1]["type"] == "summary"
    return objs[:-1], objs[-1]


def test_eicar_json_with_builtin_database(tmp_path: Path, cache: Path) -> None:
    eicar = write(tmp_path / "eicar.com", EICAR)
    assert len(EICAR) == 68
    r = bastion(["scan", "--json", str(eicar)], cache)
    assert r.returncode == 1, r.stderr
    (obj,), summary = json_lines(r.stdout)
    assert list(obj) == JSON_KEYS
    assert obj["path"] == str(eicar) and obj["verdict"] == "infected" and obj["error"] is None
    assert obj["size"] == 68 and obj["sha256"] == hashlib.sha256(EICAR).hexdigest()
    assert obj["file_type"]
    (det,) = obj["detections"]
    assert list(det) == DETECTION_KEYS
    assert det["name"] == "Bastion.Test.EICAR"
    assert det["kind"] == "body"
    assert det["source"].endswith("bastion.ndb") and det["line"] > 0
    assert det["offsets"] == [0] and det["normalized"] is False
    assert det["pattern"] == EICAR.hex() and det["db_version"] == summary["db_version"]
    assert det["container_path"] == str(eicar)
    assert summary["infected"] == 1 and summary["files"] == 1 and summary["errors"] == 0


def test_clean_file_exit_0(tmp_path: Path, cache: Path) -> None:
    clean = write(tmp_path / "clean.txt", "nothing to see here\n")
    r = bastion(["scan", "--json", str(clean)], cache)
    assert r.returncode == 0, r.stderr
    (obj,), summary = json_lines(r.stdout)
    assert obj["verdict"] == "clean" and obj["detections"] == [] and obj["error"] is None
    assert obj["sha256"] == hashlib.sha256(b"nothing to see here\n").hexdigest()
    assert summary["clean"] == 1 and summary["infected"] == 0
    r = bastion(["scan", str(clean)], cache)
    assert r.returncode == 0
    assert str(clean) not in r.stdout  # clean files are listed only with -v
    assert "Files scanned" in r.stdout
    r = bastion(["scan", "-v", str(clean)], cache)
    assert f"OK       {clean}" in r.stdout


def test_human_output_explains_detection(tmp_path: Path, cache: Path) -> None:
    eicar = write(tmp_path / "dir" / "sub" / "eicar.com", EICAR)
    write(tmp_path / "dir" / "clean.txt", "hello\n")
    r = bastion(["scan", str(tmp_path / "dir")], cache)  # recursive by default
    assert r.returncode == 1, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("INFECTED"))
    assert str(eicar) in line and "Bastion.Test.EICAR" in line
    assert "body @ offset 0" in line and "bastion.ndb:" in line
    assert "\x1b[" not in r.stdout and r.stderr == ""  # no colours, no progress bar off a terminal
    for key in ("Database", "Files scanned", "Infected", "Errors", "Skipped", "Elapsed", "Throughput"):
        assert key in r.stdout
    r = bastion(["scan", "--no-recursive", str(tmp_path / "dir")], cache)
    assert r.returncode == 0 and "INFECTED" not in r.stdout
    r = bastion(["scan", "--quiet", str(eicar)], cache)
    assert r.returncode == 1 and r.stdout.startswith("INFECTED") and "Files scanned" not in r.stdout


def test_custom_database_reports_offset(tmp_path: Path, cache: Path) -> None:
    db = write(tmp_path / "my.ndb", "Test.AtTen:0:10:41424344\nTest.Canary:0:*:" + CANARY.hex() + "\n")
    at_ten = write(tmp_path / "at_ten.bin", b"x" * 10 + b"ABCD" + b"y" * 20)
    anywhere = write(tmp_path / "anywhere.bin", b"\0" * 37 + CANARY + b"\0" * 5)
    not_at_ten = write(tmp_path / "not_at_ten.bin", b"x" * 11 + b"ABCD")
    r = bastion(["scan", "--json", "-d", str(db), str(at_ten), str(anywhere), str(not_at_ten)], cache)
    assert r.returncode == 1, r.stderr
    objs, summary = json_lines(r.stdout)
    assert [o["path"] for o in objs] == [str(at_ten), str(anywhere), str(not_at_ten)]
    (d1,), (d2,) = objs[0]["detections"], objs[1]["detections"]
    assert d1["name"].startswith("Test.AtTen") and d1["offsets"] == [10]
    assert d1["source"] == str(db) and d1["line"] == 1 and d1["pattern"] == "41424344"
    assert d2["name"].startswith("Test.Canary") and d2["offsets"] == [37] and d2["line"] == 2
    assert objs[2]["verdict"] == "clean"
    assert summary["infected"] == 2 and summary["clean"] == 1 and summary["signatures"] == 2


def test_malformed_database(tmp_path: Path, cache: Path) -> None:
    db = write(tmp_path / "bad.ndb", "Good:0:*:41424344\nBad:0:*:4142zz\n")
    target = write(tmp_path / "f", "ABCD")
    for extra in ([], ["--json"]):
        r = bastion(["scan", *extra, "-d", str(db), str(target)], cache)
        assert r.returncode == 2
        assert r.stderr.startswith(f"error: {db}:2: ")
        assert r.stdout == ""


def test_exit_codes_errors_and_skips(tmp_path: Path, cache: Path) -> None:
    clean = write(tmp_path / "clean", "clean")
    eicar = write(tmp_path / "eicar", EICAR)
    missing = tmp_path / "missing"
    assert bastion(["scan", str(clean)], cache).returncode == 0
    assert bastion(["scan", str(eicar)], cache).returncode == 1
    r = bastion(["scan", "--json", str(missing), str(clean)], cache)
    assert r.returncode == 2
    objs, summary = json_lines(r.stdout)
    assert [o["verdict"] for o in objs] == ["error", "clean"]
    assert list(objs[0]) == JSON_KEYS and objs[0]["error"]
    assert summary["errors"] == 1
    assert bastion(["scan", str(missing), str(eicar)], cache).returncode == 1  # found beats errors
    r = bastion(["scan", str(missing)], cache)
    assert r.returncode == 2 and str(missing) in r.stdout
    r = bastion(["scan", "--json", "--max-filesize", "10", str(eicar)], cache)
    assert r.returncode == 0
    (obj,), summary = json_lines(r.stdout)
    assert obj["verdict"] == "skipped" and obj["size"] == 68 and summary["skipped"] == 1
    assert bastion(["scan", "--exclude", "(", str(clean)], cache).returncode == 2
    assert bastion(["scan", "--no-such-option", str(clean)], cache).returncode == 2


def test_exclude(tmp_path: Path, cache: Path) -> None:
    write(tmp_path / "t" / "skip.com", EICAR)
    write(tmp_path / "t" / "junk" / "e.com", EICAR)
    write(tmp_path / "t" / "keep.txt", "x")
    r = bastion(["scan", "--json", "--exclude", r"skip\.com$", "--exclude-dir", "junk", str(tmp_path / "t")],
                cache)
    assert r.returncode == 0, r.stdout
    objs, summary = json_lines(r.stdout)
    assert [o["path"] for o in objs] == [str(tmp_path / "t" / "keep.txt")]
    assert summary["excluded"] == 2


def test_order_is_deterministic_with_jobs(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "many"
    for i in range(50):
        data = (CANARY if i % 5 == 0 else b"") + os.urandom(1000 + i * 131)
        write(root / f"d{i % 3}" / f"f{i:02d}.bin", data)
    expected = sorted(str(p) for p in root.rglob("*.bin"))
    outputs = []
    for jobs in ("1", "2"):
        r = bastion(["scan", "--json", "-j", jobs, str(root)], cache)
        assert r.returncode == 1, r.stderr
        objs, summary = json_lines(r.stdout)
        assert [o["path"] for o in objs] == expected
        assert [o["path"] for o in objs if o["verdict"] == "infected"] == [
            p for p in expected if int(p[-6:-4]) % 5 == 0]
        assert summary["files"] == 50 and summary["infected"] == 10
        outputs.append([(o["path"], o["verdict"], o["sha256"]) for o in objs])
    assert outputs[0] == outputs[1]


def test_dispatcher(tmp_path: Path, cache: Path) -> None:
    r = bastion(["version"], cache)
    assert r.returncode == 0 and "Bastion" in r.stdout
    assert bastion([], cache).returncode == 2
    assert bastion(["no-such-command"], cache).returncode == 2
    eicar = write(tmp_path / "e", EICAR)
    r = bastion(["clamscan", "--no-summary", str(eicar)], cache)
    assert r.returncode == 1 and r.stdout == f"{eicar}: Bastion.Test.EICAR FOUND\n"


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_bar_on_a_terminal_only(tmp_path: Path, cache: Path) -> None:
    import threading

    eicar = write(tmp_path / "t" / "eicar.com", EICAR)
    for i in range(20):
        write(tmp_path / "t" / f"f{i:02d}", os.urandom(50_000))
    master, slave = os.openpty()
    env = dict(bastion_env(cache), TERM="xterm", COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "bastion.cli.main", "scan", str(tmp_path / "t")],
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once the child has closed its end
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=120)
    reader.join(10)
    os.close(master)
    assert proc.returncode == 1
    # files done / total from the pre-walk ("?" while the pre-walk is still counting)
    assert re.search(rb"21/(21|\?) files", seen), bytes(seen[-400:])
    text = stdout.decode()
    assert text.startswith(f"INFECTED {eicar}") and "Files scanned" in text and "\x1b[" not in text
    r = bastion(["scan", "--no-progress", str(eicar)], cache)  # and never when stderr is not a terminal
    assert r.stderr == ""
