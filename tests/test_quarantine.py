"""The quarantine and the actions on infected files, as real processes on real files: files come back
byte for byte with their metadata, a kill -9 at every step of moving a file in leaves it in place or
in quarantine (never neither), stored copies are encrypted and tamper-evident, nothing changes
without the user asking, and bastion-clamscan's --move/--copy/--remove print what clamscan prints."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.quarantine import Quarantine, QuarantineError
from bastion.quarantine.store import STEPS
from tests.helpers import EICAR, bastion_env, write


def bastion(args: list[str], tmp: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = bastion_env(tmp / "cache")
    env["BASTION_QUARANTINE_DIR"] = str(tmp / "q")
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "bastion.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_victim(path: Path, size: int = 3 * 1024 * 1024 + 17) -> Path:
    """An infected file spanning several vault chunks, with mode, times and an extended attribute."""
    data = EICAR + b"\n" + os.urandom(size)
    write(path, data)
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_650_000_000_987_654_321))
    try:
        os.setxattr(path, "user.origin", b"downloaded from somewhere")
    except OSError:
        pass  # a file system without user xattrs: the rest still holds
    return path


def test_quarantine_and_restore_byte_for_byte_with_metadata(tmp_path: Path) -> None:
    victim = make_victim(tmp_path / "files" / "invoice.exe")
    before = os.stat(victim)
    digest = sha256(victim)
    xattrs = {n: os.getxattr(victim, n) for n in os.listxattr(victim)}
    r = bastion(["scan", "--json", "--move-to-quarantine", str(tmp_path / "files")], tmp_path)
    assert r.returncode == 1, r.stderr
    result = json.loads(r.stdout.splitlines()[0])
    assert result["verdict"] == "infected" and result["action"]["outcome"] == "quarantined"
    assert not victim.exists()
    item_id = result["action"]["id"]
    blob = (tmp_path / "q" / "vault" / f"{item_id}.bqv").read_bytes()
    assert EICAR not in blob and b"X5O!P" not in blob  # defanged: no scanner or user can run it
    assert oct((tmp_path / "q").stat().st_mode & 0o777) == "0o700"

    listed = bastion(["quarantine", "list", "--json"], tmp_path)
    row = json.loads(listed.stdout)
    assert row["original_path"] == str(victim) and row["sha256"] == digest and row["signature"] == "Bastion.Test.EICAR"
    assert row["db_version"] and row["mode"] == "0o100640"

    r = bastion(["quarantine", "restore", item_id[:8]], tmp_path)
    assert r.returncode == 0, r.stderr
    after = os.stat(victim)
    assert sha256(victim) == digest
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    # the scan's own read may move atime (relatime); the record keeps the times the file had when taken
    assert (after.st_atime_ns, after.st_mtime_ns) == (row["atime_ns"], before.st_mtime_ns)
    assert {n: os.getxattr(victim, n) for n in os.listxattr(victim)} == xattrs
    assert not (tmp_path / "q" / "vault" / f"{item_id}.bqv").exists()
    assert bastion(["quarantine", "list"], tmp_path).stdout == ""
    assert "restored" in bastion(["quarantine", "list", "--all"], tmp_path).stdout


def test_restore_never_overwrites_unless_told(tmp_path: Path) -> None:
    victim = make_victim(tmp_path / "a.bin", 100)
    digest = sha256(victim)
    with Quarantine(str(tmp_path / "q")) as q:
        item = q.add(str(victim), signature="Test.Sig")
    write(victim, b"the user's newer file")
    r = bastion(["quarantine", "restore", item.id], tmp_path)
    assert r.returncode == 1 and "exists and is newer than the quarantined file" in r.stderr
    assert victim.read_bytes() == b"the user's newer file"
    r = bastion(["quarantine", "restore", item.id, "--to", str(tmp_path / "elsewhere" / "a.bin")], tmp_path)
    assert r.returncode == 0 and sha256(tmp_path / "elsewhere" / "a.bin") == digest


def test_force_dry_run_delete_and_unknown_ids(tmp_path: Path) -> None:
    victim = make_victim(tmp_path / "b.bin", 10)
    digest = sha256(victim)
    with Quarantine(str(tmp_path / "q")) as q:
        first = q.add(str(victim))
    write(victim, b"other")
    assert "would restore" in bastion(["quarantine", "restore", first.id, "--dry-run"], tmp_path).stdout
    assert victim.read_bytes() == b"other"
    assert bastion(["quarantine", "restore", first.id, "--force"], tmp_path).returncode == 0
    assert sha256(victim) == digest
    with Quarantine(str(tmp_path / "q")) as q:
        second = q.add(str(victim))
        with pytest.raises(QuarantineError, match="no such quarantine item"):
            q.get("ffffffff")
    assert "would delete" in bastion(["quarantine", "delete", second.id, "--dry-run"], tmp_path).stdout
    assert (tmp_path / "q" / "vault" / f"{second.id}.bqv").exists()
    assert bastion(["quarantine", "delete", second.id], tmp_path).returncode == 0
    assert not (tmp_path / "q" / "vault" / f"{second.id}.bqv").exists()
    r = bastion(["quarantine", "restore", second.id], tmp_path)
    assert r.returncode == 1 and "deleted, nothing to restore" in r.stderr


def test_restore_does_not_need_the_signature_that_caught_it(tmp_path: Path) -> None:
    db = write(tmp_path / "db" / "custom.ndb", "Custom.Withdrawn:0:*:" + b"custom payload".hex() + "\n")
    victim = write(tmp_path / "files" / "c.txt", b"some custom payload here\n")
    r = bastion(["scan", "--json", "-d", str(db), "--move-to-quarantine", str(victim)], tmp_path)
    assert json.loads(r.stdout.splitlines()[0])["action"]["outcome"] == "quarantined"
    shutil.rmtree(tmp_path / "db")  # the signature is withdrawn
    item = json.loads(bastion(["quarantine", "list", "--json"], tmp_path).stdout)
    assert item["signature"] == "Custom.Withdrawn.UNOFFICIAL"
    assert bastion(["quarantine", "restore", item["id"]], tmp_path).returncode == 0
    assert victim.read_bytes() == b"some custom payload here\n"


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_every_step_loses_nothing(tmp_path: Path, step: str) -> None:
    victim = make_victim(tmp_path / "files" / "k.bin", 2 * 1024 * 1024)
    digest = sha256(victim)
    r = bastion(["quarantine", "add", str(victim)], tmp_path, {"BASTION_FAULT_KILL_AT": step})
    assert r.returncode == -9, (step, r.returncode, r.stderr)
    # right after the kill: in place, or its verified copy is stored: never neither
    in_place = victim.exists() and sha256(victim) == digest
    stored = list((tmp_path / "q" / "vault").glob("*.bqv"))
    assert in_place or stored, step
    # the next use of the quarantine finishes or undoes the move
    listed = bastion(["quarantine", "list", "--json"], tmp_path)
    items = [json.loads(line) for line in listed.stdout.splitlines()]
    if step in ("copied", "verified", "stored"):
        assert in_place and items == [] and not list((tmp_path / "q" / "vault").iterdir()), step
    else:
        assert not victim.exists() and len(items) == 1 and items[0]["sha256"] == digest, step
        assert "recovered:" in listed.stderr or step == "removed"
        assert bastion(["quarantine", "restore", items[0]["id"]], tmp_path).returncode == 0
        assert sha256(victim) == digest


def test_interrupted_move_of_a_file_changed_since_is_undone(tmp_path: Path) -> None:
    victim = make_victim(tmp_path / "m.bin", 1000)
    r = bastion(["quarantine", "add", str(victim)], tmp_path, {"BASTION_FAULT_KILL_AT": "recorded"})
    assert r.returncode == -9
    write(victim, b"the user kept working on it")
    listed = bastion(["quarantine", "list", "--json"], tmp_path)
    assert listed.stdout == "" and "changed while being quarantined" in listed.stderr
    assert victim.read_bytes() == b"the user kept working on it"


def test_tampered_vault_copy_is_refused(tmp_path: Path) -> None:
    victim = make_victim(tmp_path / "t.bin", 5000)
    with Quarantine(str(tmp_path / "q")) as q:
        item = q.add(str(victim))
    blob = tmp_path / "q" / "vault" / f"{item.id}.bqv"
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    r = bastion(["quarantine", "restore", item.id], tmp_path)
    assert r.returncode == 1 and "does not decrypt" in r.stderr
    assert not victim.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bastion-restore")]
    blob.write_bytes(bytes(data[:-10]))  # truncated
    assert "does not decrypt" in bastion(["quarantine", "restore", item.id], tmp_path).stderr


def test_export_is_an_aes_zip_with_the_record(tmp_path: Path) -> None:
    import pyzipper

    victim = make_victim(tmp_path / "e.bin", 70_000)
    digest = sha256(victim)
    with Quarantine(str(tmp_path / "q")) as q:
        item = q.add(str(victim), signature="Test.Export")
    out = tmp_path / "sample.zip"
    assert bastion(["quarantine", "export", item.id[:10], str(out)], tmp_path).returncode == 0
    with pyzipper.AESZipFile(out) as zf:
        zf.setpassword(b"infected")
        assert hashlib.sha256(zf.read(f"{digest}.bin")).hexdigest() == digest
        assert json.loads(zf.read(f"{digest}.json"))["signature"] == "Test.Export"
        with pytest.raises(RuntimeError):
            zf.setpassword(b"wrong")
            zf.read(f"{digest}.bin")


def test_nothing_changes_without_being_asked(tmp_path: Path) -> None:
    victim = write(tmp_path / "files" / "eicar.com", EICAR)
    assert bastion(["scan", str(victim)], tmp_path).returncode == 1
    r = bastion(["scan", "--move-to-quarantine", "--dry-run", str(victim)], tmp_path)
    assert r.returncode == 1 and "would move to quarantine" in r.stdout
    assert victim.read_bytes() == EICAR and not (tmp_path / "q").exists()
    r = bastion(["quarantine", "add", "--dry-run", str(victim)], tmp_path)
    assert "would quarantine" in r.stdout and victim.exists()


def _clamscan_lines(text: str, root: Path) -> list[str]:
    return sorted(line.replace(str(root), "ROOT") for line in text.splitlines() if line.strip())


@pytest.mark.parametrize("action", ["--copy", "--move", "--remove"])
def test_clamscan_actions_print_what_clamscan_prints(tmp_path: Path, action: str) -> None:
    clamscan = shutil.which("clamscan")
    if clamscan is None:
        pytest.skip("clamscan is not installed (apt-get install clamav)")
    db = write(tmp_path / "e.ndb", "Eicar-Test:0:*:" + EICAR.hex() + "\n")
    outputs = []
    for who in ("clamscan", "bastion"):
        root = tmp_path / who
        write(root / "in" / "e.com", EICAR)
        write(root / "in" / "clean.txt", b"clean\n")
        write(root / "out" / "e.com", b"already here")  # the copy must take the name e.com.001
        os.symlink(root / "in" / "e.com", root / "link.com")
        opt = [f"{action}={root / 'out'}"] if action != "--remove" else [action]
        args = ["--no-summary", "-d", str(db), *opt, str(root / "link.com")]
        cmd = [clamscan, *args] if who == "clamscan" else [sys.executable, "-m", "bastion.cli.clamscan", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=bastion_env(tmp_path / "cache"), timeout=120)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        outputs.append((r.returncode, _clamscan_lines(r.stdout, root), files))
    assert outputs[0] == outputs[1]
    assert re.search(r"\(real path: 'ROOT/in/e.com'\): (copied to 'ROOT/out/e.com.001'|moved to 'ROOT/out/e.com.001'"
                     r"|Removed\.)$", outputs[1][1][0]), outputs[1]


def test_clamscan_action_directory_must_exist(tmp_path: Path) -> None:
    victim = write(tmp_path / "e.com", EICAR)
    r = subprocess.run([sys.executable, "-m", "bastion.cli.clamscan", "--move", str(tmp_path / "nodir"), str(victim)],
                       capture_output=True, text=True, env=bastion_env(tmp_path / "cache"), timeout=120)
    assert r.returncode == 2 and f"action_setup: Failed to get realpath of {tmp_path / 'nodir'}" in r.stdout
    assert victim.exists()


def test_every_detection_and_action_is_an_event(tmp_path: Path) -> None:
    victim = write(tmp_path / "files" / "eicar.com", EICAR)
    bastion(["scan", "--move-to-quarantine", str(victim)], tmp_path)
    item = json.loads(bastion(["quarantine", "list", "--json"], tmp_path).stdout)
    bastion(["quarantine", "restore", item["id"]], tmp_path)
    r = bastion(["events", "--json"], tmp_path)
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event"]["action"] for e in evs] == ["detection", "quarantine", "restore"]
    detection = evs[0]
    assert detection["event"]["kind"] == "alert" and detection["event"]["category"] == ["malware"]
    assert detection["rule"]["name"] == "Bastion.Test.EICAR" and detection["file"]["path"] == str(victim)
    assert detection["rule"]["ruleset"].endswith("bastion.ndb:4")
    assert evs[1]["bastion"]["quarantine_id"] == item["id"] and evs[1]["file"]["hash"]["sha256"] == item["sha256"]
    assert {"@timestamp", "host", "process", "message"} <= set(detection)
    human = bastion(["events", "--action", "restore"], tmp_path).stdout.splitlines()
    assert len(human) == 1 and f"restored to {victim}" in human[0]
    assert bastion(["events", "--kind", "alert", "--since", "1h", "--json"], tmp_path).stdout.count("\n") == 1
    assert bastion(["events", "--since", "2000-01-01", "--limit", "1", "--json"], tmp_path).stdout.count("\n") == 1
    assert bastion(["events", "--since", "soon"], tmp_path).returncode == 2


def test_scan_errors_are_events(tmp_path: Path) -> None:
    bastion(["scan", str(tmp_path / "no-such-file")], tmp_path)
    listed = bastion(["events", "--outcome", "failure", "--json"], tmp_path).stdout
    evs = [json.loads(line) for line in listed.splitlines()]
    assert [e["event"]["action"] for e in evs] == ["scan-error"] and evs[0]["event"]["type"] == ["error"]
    assert evs[0]["file"]["path"].endswith("no-such-file")


def test_events_go_to_syslog_when_asked(tmp_path: Path) -> None:
    import socket

    if os.path.exists("/dev/log"):
        pytest.skip("a syslog daemon owns /dev/log here: its messages cannot be read back by the test")
    if os.geteuid() != 0:
        pytest.skip("binding /dev/log needs root")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("/dev/log")  # stands in for the syslog daemon
    listener.settimeout(10)
    try:
        victim = write(tmp_path / "eicar.com", EICAR)
        env = bastion_env(tmp_path / "cache")
        env["BASTION_EVENTS_SYSLOG"] = "1"
        subprocess.run([sys.executable, "-m", "bastion.cli.main", "scan", str(victim)], env=env, capture_output=True,
                       timeout=120)
        message = listener.recv(65536).decode()
    finally:
        listener.close()
        os.unlink("/dev/log")
    assert "bastion[" in message and f"detection: {victim}: Bastion.Test.EICAR" in message
    assert message.startswith("<28>")  # facility daemon (3 << 3) | warning (4): an alert
