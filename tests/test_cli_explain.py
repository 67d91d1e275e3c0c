"""``bastion explain``: full explanations of every match, as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import EICAR, bastion_env, write


def explain(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion.cli.main", "explain", *args], capture_output=True,
                          text=True, env=bastion_env(cache), timeout=120)


def _db(tmp_path: Path) -> Path:
    d = tmp_path / "db"
    write(d / "x.ndb", "Body.Sig:0:*:636364\n")
    write(d / "x.ldb", "Logic.Sig;Engine:81-255,Target:0;0&1&2=0;4142;0/c+d/;7a7a7a\n")
    return d


def test_explains_body_and_logical_matches(tmp_path: Path) -> None:
    target = write(tmp_path / "f", b"\x00\x00ABxxccd\x00")
    r = explain(["-d", str(_db(tmp_path)), str(target)], tmp_path / "cache")
    assert r.returncode == 1, r.stderr
    out = r.stdout
    assert "Body.Sig.UNOFFICIAL  [body]" in out and f"{tmp_path}/db/x.ndb:1" in out
    assert "signature  Body.Sig:0:*:636364" in out
    assert "6  63 63 64 00  |ccd.|" in out
    assert "Logic.Sig;Engine:81-255,Target:0;0&1&2=0;4142;0/c+d/;7a7a7a" in out
    assert "read as (0&(1&2=0)): true" in out
    assert "[0] x1    first @ 2" in out and "[2] x0    no match" in out


def test_json_carries_every_field(tmp_path: Path) -> None:
    target = write(tmp_path / "f", b"\x00\x00ABxxccdccd\x00")
    r = explain(["--json", "-d", str(_db(tmp_path)), str(target)], tmp_path / "cache")
    doc = json.loads(r.stdout)
    by_name = {d["name"]: d for d in doc["detections"]}
    logic = by_name["Logic.Sig.UNOFFICIAL"]["logical"]
    assert [s["matches"] for s in logic["subsignatures"]] == [1, 1, 0]
    assert by_name["Body.Sig.UNOFFICIAL"]["matched"][0]["hex"] == "63 63 64 63 63 64 00"
    assert not by_name["Body.Sig.UNOFFICIAL"]["source_changed_since_compile"]


def test_builtin_database_clean_file_and_error(tmp_path: Path) -> None:
    target = write(tmp_path / "eicar", EICAR)
    cache = tmp_path / "cache"
    r = explain([str(target)], cache)  # built-in database
    assert r.returncode == 1
    assert "Bastion.Test.EICAR" in r.stdout and "[body]" in r.stdout
    assert "signature  Bastion.Test.EICAR:0:0:" in r.stdout
    db = _db(tmp_path)
    clean = write(tmp_path / "clean", b"nothing to see here\n")
    r = explain(["-d", str(db), str(clean)], cache)
    assert r.returncode == 0 and "no signature matches" in r.stdout
    r = explain(["-d", str(db), str(tmp_path / "missing")], cache)
    assert r.returncode == 2 and "ERROR" in r.stdout
