"""bastion migrate: a ClamAV installation, YARA folders, Loki IOCs and exclusion lists come over into
one Bastion folder that the daemon and the scanner use as is; what cannot come over is named with
its reason; the source product is read, never changed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from bastion.daemon.config import parse_bastion_toml, parse_clamd_conf
from tests.helpers import EICAR, bastion_env, write

SHA = hashlib.sha256(b"loki hash ioc sample\n").hexdigest()


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_clamav(root: Path) -> Path:
    etc, lib = root / "etc" / "clamav", root / "var" / "lib" / "clamav"
    write(lib / "custom.ndb", "Custom.Migrated:0:*:" + b"migrated custom body".hex() + "\n")
    write(lib / "freshclam.dat", b"\x00freshclam state")
    write(etc / "clamd.conf", f"""# a Debian-style clamd.conf
LocalSocket {root}/run/clamd.ctl
LocalSocketMode 660
TCPSocket 3310
TCPAddr 127.0.0.1
MaxThreads 12
StreamMaxLength 25M
DatabaseDirectory {lib}
ExcludePath ^/proc/
ExcludePath ^/sys/
ScanPDF yes
LogSyslog false
DetectPUA yes
""")
    write(etc / "freshclam.conf", """DatabaseOwner clamav
DatabaseMirror database.clamav.net
PrivateMirror mirror.example.internal
DatabaseCustomURL https://signatures.example.internal/custom.ndb
Checks 24
NotifyClamd /etc/clamav/clamd.conf
""")
    return root


def test_migrate_everything_and_use_it(tmp_path: Path) -> None:
    src = make_clamav(tmp_path / "src")
    write(src / "yara" / "good.yar", 'rule Migrated_Yara { strings: $a = "migrated yara text" condition: $a }\n')
    write(src / "yara" / "sub" / "bad.yar", "rule Broken { condition: nosuchthing }\n")
    write(src / "loki" / "hash-iocs.txt", f"# Loki hash IOCs\n{SHA};Sample dropper\nnot-a-hash;oops\n")
    write(src / "loki" / "filename-iocs.txt", "# Loki filename IOCs\n\\\\evil_tool\\.exe$;80\n(unclosed;70\n")
    write(src / "excludes.txt", "/srv/backups\n*.iso\n")
    before = snapshot(src)
    target = tmp_path / "bastion"
    r = subprocess.run([sys.executable, "-m", "bastion.cli.main", "migrate", "--to", str(target),
                        "--from-clamav", str(src / "etc" / "clamav"), "--yara", str(src / "yara"),
                        "--loki-hash-iocs", str(src / "loki" / "hash-iocs.txt"),
                        "--loki-filename-iocs", str(src / "loki" / "filename-iocs.txt"),
                        "--exclusions", str(src / "excludes.txt"), "--json"],
                       capture_output=True, text=True, env=bastion_env(tmp_path / "cache"), timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert snapshot(src) == before  # nothing in the source product changed
    skipped = "\n".join(report["not_imported"])
    for reason in ("ScanPDF: accepted by Bastion but not acted on yet", "DatabaseOwner", "NotifyClamd",
                   "bad.yar: yara-x does not compile it", "hash-iocs.txt:3: not an MD5, SHA1 or SHA256",
                   "filename-iocs.txt:3: its regex is not one YARA accepts", "freshclam.dat: not a signature file"):
        assert reason in skipped, reason

    toml = parse_bastion_toml(str(target / "bastion.toml"))
    conf = parse_clamd_conf(str(src / "etc" / "clamav" / "clamd.conf"))
    conf.database_directory = str(target / "db")
    toml.workers, conf.ignored = conf.workers, []  # options Bastion ignores are reported, not carried
    assert toml == conf  # the same settings, with the same meaning
    text = (target / "bastion.toml").read_text()
    assert 'mirrors = ["database.clamav.net"]' in text and "checks_per_day = 24" in text
    assert 'exclude_path = ["^/proc/", "^/sys/", "^/srv/backups(/|$)"' in text

    files = write(tmp_path / "scan" / "custom.bin", b"xx migrated custom body xx")
    write(tmp_path / "scan" / "ioc.bin", b"loki hash ioc sample\n")
    write(tmp_path / "scan" / "rule.txt", b"some migrated yara text here")
    write(tmp_path / "scan" / "evil_tool.exe", b"harmless bytes, suspicious name")
    write(tmp_path / "scan" / "eicar.com", EICAR)  # not in the migrated database: no built-in fallback
    scan = subprocess.run([sys.executable, "-m", "bastion.cli.main", "scan", "--json", "-d", str(target / "db"),
                           str(files.parent)], capture_output=True, text=True, env=bastion_env(tmp_path / "cache"),
                          timeout=120)
    found = {os.path.basename(d["path"]): [x["name"] for x in d["detections"]]
             for d in map(json.loads, scan.stdout.splitlines()) if d.get("type") != "summary" and d["detections"]}
    assert found == {"custom.bin": ["Custom.Migrated.UNOFFICIAL"],
                     "ioc.bin": ["Loki.HashIOC.Sample_dropper.L2.UNOFFICIAL"],
                     "rule.txt": ["YARA.Migrated_Yara.UNOFFICIAL"],
                     "evil_tool.exe": ["YARA.Loki_FilenameIOC_L2.UNOFFICIAL"]}, found


def test_existing_config_is_kept_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    src = make_clamav(tmp_path / "src")
    target = tmp_path / "bastion"
    args = [sys.executable, "-m", "bastion.cli.main", "migrate", "--to", str(target), "--from-clamav",
            str(src / "etc" / "clamav")]
    env = bastion_env(tmp_path / "cache")
    r = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "would write" in r.stdout and not target.exists()
    assert subprocess.run(args, capture_output=True, text=True, env=env, timeout=60).returncode == 0
    write(target / "bastion.toml", "# the user's own edits\n")
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "not replaced (use --force)" in r.stderr
    assert (target / "bastion.toml").read_text() == "# the user's own edits\n"
    assert subprocess.run([*args, "--force"], capture_output=True, text=True, env=env, timeout=60).returncode == 0
