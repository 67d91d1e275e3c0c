"""Database versions and the transparency log: staging with a self-test, atomic activation that the
scanner and the daemon pick up, rollback, kill -9 at every step, and a Merkle log that detects edits
and truncation (proofs checked against brute force)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bastion.dbstore import tlog
from bastion.dbstore.store import STEPS
from tests.helpers import bastion_env, write

SIG1 = "Store.Version.One:0:*:" + b"version one marker".hex() + "\n"
SIG2 = "Store.Version.Two:0:*:" + b"version two marker".hex() + "\n"


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = bastion_env(tmp / "cache")
    del env["BASTION_DB_DIR"]  # scans without -d use the store's active version
    env.update(extra)
    return env


def db(args: list[str], tmp: Path, cpu: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    """``bastion db ARGS``; with ``cpu``, under qemu's user-mode emulation of that CPU model."""
    emulator = ["qemu-x86_64", "-cpu", cpu] if cpu else []
    return subprocess.run([*emulator, sys.executable, "-m", "bastion.cli.main", "db", *args], capture_output=True,
                          text=True, env=env_for(tmp, **extra), timeout=300)


def detects(tmp: Path, data: bytes) -> list[str]:
    target = write(tmp / "probe" / "p.bin", data)
    r = subprocess.run([sys.executable, "-m", "bastion.cli.main", "scan", "--json", str(target)], capture_output=True,
                       text=True, env=env_for(tmp), timeout=180)
    return [d["name"] for d in json.loads(r.stdout.splitlines()[0])["detections"]]


def test_merkle_proofs_match_brute_force() -> None:
    for n in range(1, 33):
        leaves = [os.urandom(8) for _ in range(n)]
        hashes = [tlog.leaf_hash(x) for x in leaves]
        root = tlog.root(hashes)
        for i in range(n):
            proof = tlog.inclusion_proof(i, hashes)
            assert tlog.verify_inclusion(leaves[i], i, n, proof, root)
            assert n == 1 or not tlog.verify_inclusion(leaves[(i + 1) % n], i, n, proof, root)
        for m in range(1, n + 1):
            proof = tlog.consistency_proof(m, hashes)
            assert tlog.verify_consistency(m, n, tlog.root(hashes[:m]), root, proof)
            assert m == n or not tlog.verify_consistency(m, n, tlog.leaf_hash(b"other"), root, proof)


def test_stage_activate_rollback_and_the_log(tmp_path: Path) -> None:
    one = write(tmp_path / "feed1" / "a.ndb", SIG1)
    r = db(["stage", str(one.parent), "--activate"], tmp_path)
    assert r.returncode == 0 and "self-test passed" in r.stdout, r.stderr
    assert detects(tmp_path, b"a version one marker") == ["Store.Version.One.UNOFFICIAL"]
    r = db(["stage", str(write(tmp_path / "feed2" / "b.ndb", SIG2).parent), "--activate"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert detects(tmp_path, b"a version two marker") == ["Store.Version.Two.UNOFFICIAL"]
    assert detects(tmp_path, b"a version one marker") == []
    versions = [json.loads(x) for x in db(["list", "--json"], tmp_path).stdout.splitlines()]
    assert len(versions) == 2 and [v["active"] for v in versions] == [False, True]
    # the same inputs give the same version, on any machine: the id is their digest
    again = db(["stage", str(one.parent)], tmp_path).stdout
    assert versions[0]["id"] in again

    r = db(["rollback"], tmp_path)
    assert r.returncode == 0 and f"rollback: {versions[0]['id']} is active" in r.stdout
    assert detects(tmp_path, b"a version one marker") == ["Store.Version.One.UNOFFICIAL"]
    assert db(["rollback", versions[1]["id"][:8]], tmp_path).returncode == 0
    assert detects(tmp_path, b"a version two marker") == ["Store.Version.Two.UNOFFICIAL"]

    entries = [json.loads(x) for x in db(["log", "--json"], tmp_path).stdout.splitlines()]
    assert [e["record"]["action"] for e in entries] == ["activate", "activate", "rollback", "rollback"]
    first = entries[0]["record"]
    assert first["inputs"]["a.ndb"] and first["inputs_digest"] and first["compiled_database"] and first["trigger"]
    head = json.loads(db(["log", "--head"], tmp_path).stdout)
    assert db(["verify-log"], tmp_path).returncode == 0

    store = tmp_path / "cache" / "store"
    log = store / "log.jsonl"
    lines = log.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["record"]["signatures"] += 1
    log.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    r = db(["verify-log"], tmp_path)
    assert r.returncode == 1 and "record 2" in r.stdout
    log.write_text("\n".join(lines[:-1]) + "\n")  # truncated: the last record removed
    r = db(["verify-log"], tmp_path)
    assert r.returncode == 1 and "truncated" in r.stdout
    log.write_text("\n".join(lines) + "\n")
    assert db(["verify-log", "--size", str(head["size"]), "--root", head["root"]], tmp_path).returncode == 0
    assert db(["verify-log", "--size", "2", "--root", "00" * 32], tmp_path).returncode == 1


def test_self_test_refuses_bad_versions(tmp_path: Path) -> None:
    good = write(tmp_path / "good" / "a.ndb", SIG1)
    assert db(["stage", str(good.parent), "--activate"], tmp_path).returncode == 0
    import hashlib

    true_bin = Path("/bin/true").read_bytes()
    fp = write(tmp_path / "fp" / "f.hdb", f"{hashlib.md5(true_bin).hexdigest()}:{len(true_bin)}:Oops.FalsePositive\n")
    r = db(["stage", str(fp.parent), "--activate"], tmp_path)
    assert r.returncode == 1 and "known-clean /bin/true is detected" in r.stderr and "unchanged" in r.stderr
    clean = write(tmp_path / "corpus" / "mine.txt", b"my precious report, version two marker\n")
    two = write(tmp_path / "two" / "b.ndb", SIG2)
    r = db(["stage", str(two.parent), "--clean", str(clean.parent)], tmp_path)
    assert r.returncode == 1 and "mine.txt is detected" in r.stderr
    broken = write(tmp_path / "broken" / "c.ndb", "Broken:0:*:zz\n")
    r = db(["stage", str(broken.parent), "--activate"], tmp_path)
    assert r.returncode == 1 and "does not load" in r.stderr
    assert detects(tmp_path, b"a version one marker") == ["Store.Version.One.UNOFFICIAL"]
    assert len(db(["list"], tmp_path).stdout.splitlines()) == 1


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_every_step_keeps_a_working_database(tmp_path: Path, step: str) -> None:
    assert db(["stage", str(write(tmp_path / "v1" / "a.ndb", SIG1).parent), "--activate"], tmp_path).returncode == 0
    r = db(["stage", str(write(tmp_path / "v2" / "b.ndb", SIG2).parent), "--activate"], tmp_path,
           BASTION_FAULT_KILL_AT=step)
    assert r.returncode == -9, (step, r.stderr)
    found = detects(tmp_path, b"version one marker / version two marker")
    if step == "switched":  # the switch happened; the next command logs it
        assert found == ["Store.Version.Two.UNOFFICIAL"]
        r = db(["log", "--json"], tmp_path)
        assert "interrupted activation" in r.stderr
        assert [json.loads(x)["record"]["trigger"] for x in r.stdout.splitlines()][-1].startswith("recorded after")
    else:
        assert found == ["Store.Version.One.UNOFFICIAL"], step
        assert db(["stage", str(tmp_path / "v2"), "--activate"], tmp_path).returncode == 0  # and can go on
        assert detects(tmp_path, b"version two marker") == ["Store.Version.Two.UNOFFICIAL"]
    assert db(["verify-log"], tmp_path).returncode == 0


def test_daemon_picks_up_an_activation_and_only_loads_it(tmp_path: Path) -> None:
    from tests.test_daemon import ask, wait_for

    assert db(["stage", str(write(tmp_path / "v1" / "a.ndb", SIG1).parent), "--activate"], tmp_path).returncode == 0
    store = tmp_path / "cache" / "store"
    conf = write(tmp_path / "d.conf", f"LocalSocket {tmp_path}/d.sock\nDatabaseDirectory {store}/active\n"
                                      "SelfCheck 1\nForeground yes\n")
    daemon = subprocess.Popen([sys.executable, "-m", "bastion.daemon.main", "-c", str(conf)], env=env_for(tmp_path),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    probe = b"zINSTREAM\0" + (18).to_bytes(4, "big") + b"version two marker" + bytes(4)
    try:
        wait_for(str(tmp_path / "d.sock"), daemon)
        assert ask(str(tmp_path / "d.sock"), probe) == b"stream: OK\0"
        assert db(["stage", str(write(tmp_path / "v2" / "b.ndb", SIG2).parent), "--activate"],
                  tmp_path).returncode == 0
        deadline = time.monotonic() + 60
        while ask(str(tmp_path / "d.sock"), probe) != b"stream: Store.Version.Two.UNOFFICIAL FOUND\0":
            assert time.monotonic() < deadline, "the daemon never picked up the activation"
            time.sleep(0.3)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def a_feed_of_every_kind(folder: Path) -> Path:
    """Hash, body (wildcards, alternatives, ranges), logical, container and YARA signatures: every
    kind of compiled table, so a CPU-dependent one would change the digest."""
    import hashlib

    write(folder / "a.ndb", SIG1 + "".join(
        f"Repro.Body{i}:0:*:{hashlib.sha256(str(i).encode()).hexdigest()[:20]}{'??' if i % 3 else '*'}"
        f"4142{'{2-9}' if i % 4 == 0 else ''}4344(45|46)4748\n" for i in range(300)))
    write(folder / "b.hdb", "".join(f"{hashlib.md5(str(i).encode()).hexdigest()}:{i + 10}:Repro.Hash{i}\n"
                                    for i in range(500)))
    write(folder / "c.hsb", "".join(f"{hashlib.sha256(str(i).encode()).hexdigest()}:*:Repro.Sha{i}:73\n"
                                    for i in range(100)))
    write(folder / "d.ldb", "Repro.Logic;Engine:51-255,Target:0;0&1;7265706f;6c6f676963\n")
    write(folder / "e.cdb", "Repro.Container:CL_TYPE_ZIP:*:evil\\.exe:*:*:*:*:*:*\n")
    write(folder / "f.yar",
          'rule repro_yara { strings: $a = "repro yara" $b = { 72 65 70 ?? 6f 20 79 } condition: $a or $b }\n')
    return folder


def test_the_same_inputs_compile_to_the_same_digest_anywhere(tmp_path: Path) -> None:
    """Two stores at different paths, and two other CPU families (qemu's Nehalem: no AVX; Haswell:
    AVX2; this host: AVX-512 where it has it), each with another hash seed: one compiled digest."""
    import shutil

    feed = a_feed_of_every_kind(tmp_path / "feed")
    runs: list[tuple[str | None, str]] = [(None, "one"), (None, "two/deeper")]
    if shutil.which("qemu-x86_64"):
        runs += [("Nehalem", "nehalem"), ("Haswell", "haswell")]
    digests = []
    for cpu, where in runs:  # each with its own store and cache
        env = {"BASTION_DB_STORE": str(tmp_path / where / "store"), "BASTION_CACHE_DIR": str(tmp_path / where / "c"),
               "PYTHONHASHSEED": str(len(digests) * 7 + 1)}
        r = db(["stage", str(feed)], tmp_path, cpu, **env)
        assert r.returncode == 0, r.stdout + r.stderr
        listed = json.loads(db(["list", "--json"], tmp_path, **env).stdout)
        digests.append((listed["id"], listed["inputs_digest"], listed["compiled_digest"], listed["toolchain"]))
    assert len(digests[0][2]) == 64 and "python-hyperscan" in digests[0][3]
    assert all(d == digests[0] for d in digests), digests
    if len(runs) == 2:
        pytest.skip("qemu-x86_64 (Debian: qemu-user) is missing: compared on this CPU only")
