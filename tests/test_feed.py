"""Signed feeds over HTTP on loopback: a feed made with `bastion feed` updates a machine with
`bastion update`, and every attack TUF guards against is refused with the active database untouched:
a rollback to older metadata, a frozen (expired) feed, metadata signed by a wrong or revoked key,
mixed-and-matched metadata, a target whose bytes differ from what was signed, an endless download,
and a feed that tries to ship program code."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.feed.publisher import Feed, FeedError
from tests.helpers import bastion_env, write

SIG1 = "Feed.Sig.One:0:*:" + b"feed signature one".hex() + "\n"
SIG2 = "Feed.Sig.Two:0:*:" + b"feed signature two".hex() + "\n"


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def env_for(tmp: Path) -> dict[str, str]:
    env = bastion_env(tmp / "cache")
    del env["BASTION_DB_DIR"]  # scans use the store's active version
    return env


def bastion(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion.cli.main", *args], capture_output=True, text=True,
                          env=env_for(tmp), timeout=180)


def detects(tmp: Path, data: bytes) -> list[str]:
    target = write(tmp / "probe.bin", data)
    r = bastion(["scan", "--json", str(target)], tmp)
    return [d["name"] for d in json.loads(r.stdout.splitlines()[0])["detections"]]


def make_feed(www: Path) -> Feed:
    feed = Feed(str(www / "feed"))
    feed.init()
    return feed


def update(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return bastion(["update", "--feed", f"main={url}/feed", "--trust", f"main={tmp / 'www/feed/metadata/root.json'}",
                    *extra], tmp)


def test_feed_updates_a_machine(tmp_path: Path, server: tuple[Path, str]) -> None:
    www, url = server
    r = bastion(["feed", "init", str(www / "feed")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert bastion(["feed", "add", str(www / "feed"), str(write(tmp_path / "one.ndb", SIG1))], tmp_path).returncode == 0
    assert bastion(["feed", "publish", str(www / "feed")], tmp_path).returncode == 0
    r = update(tmp_path, url, "--dry-run")
    assert "would add main--one.ndb (1 signatures)" in r.stdout and detects(tmp_path, b"feed signature one") == []
    r = update(tmp_path, url)
    assert r.returncode == 0 and "activated" in r.stdout, r.stderr
    assert "verified targets version 2" in r.stdout, r.stdout  # init made 1, publish 2
    assert detects(tmp_path, b"feed signature one") == ["Feed.Sig.One.UNOFFICIAL"]
    # the publisher adds a file; the next update brings it, manual policy stages only
    Feed(str(www / "feed")).add([str(write(tmp_path / "two.ndb", SIG2))])
    Feed(str(www / "feed")).publish()
    r = update(tmp_path, url, "--policy", "manual")
    assert "staged only" in r.stdout and detects(tmp_path, b"feed signature two") == []
    version = r.stdout.split("bastion db activate ")[1].split()[0]
    assert bastion(["db", "activate", version], tmp_path).returncode == 0
    assert detects(tmp_path, b"feed signature two") == ["Feed.Sig.Two.UNOFFICIAL"]
    # a file replaced and one removed are served only once published: clients never see them half-done
    feed = Feed(str(www / "feed"))
    feed.add([str(write(tmp_path / "new" / "one.ndb", SIG2.replace("Two", "Three").replace(
        b"feed signature two".hex(), b"feed signature three".hex())))])
    feed.remove(["two.ndb"])
    r = update(tmp_path, url)
    assert r.returncode == 0, r.stderr
    assert detects(tmp_path, b"feed signature one") == ["Feed.Sig.One.UNOFFICIAL"]
    feed.publish()
    assert update(tmp_path, url).returncode == 0
    assert detects(tmp_path, b"feed signature three") == ["Feed.Sig.Three.UNOFFICIAL"]
    assert detects(tmp_path, b"feed signature one") == [] and detects(tmp_path, b"feed signature two") == []
    log = [json.loads(x)["record"] for x in bastion(["db", "log", "--json"], tmp_path).stdout.splitlines()]
    assert "bastion update" in log[0]["trigger"] and "main--one.ndb" in log[1]["inputs"]


def _refused(tmp: Path, url: str, reason: str) -> None:
    r = update(tmp, url)
    assert r.returncode == 1 and reason in r.stderr, r.stderr
    assert detects(tmp, b"feed signature one") == ["Feed.Sig.One.UNOFFICIAL"]  # the active version is untouched
    assert detects(tmp, b"feed signature two") == []


def _force_live(www: Path) -> None:
    """Serve a release the publisher held back for want of valid signatures, as a thief or a broken
    mirror would: the client must refuse it."""
    staged = www / "feed" / "metadata" / "staged"
    for role in ("targets", "snapshot", "timestamp"):
        shutil.copyfile(staged / f"{role}.json", www / "feed" / "metadata" / f"{role}.json")
    shutil.copyfile(staged / "bastion-feed.json", www / "feed" / "targets" / "bastion-feed.json")


def _first_update(tmp: Path, www: Path, url: str) -> Feed:
    feed = make_feed(www)
    feed.add([str(write(tmp / "one.ndb", SIG1))])
    feed.publish()
    assert update(tmp, url).returncode == 0
    feed.add([str(write(tmp / "two.ndb", SIG2))])
    return feed


def test_rollback_attack(tmp_path: Path, server: tuple[Path, str]) -> None:
    www, url = server
    feed = _first_update(tmp_path, www, url)
    meta = www / "feed" / "metadata"
    old = {n: (meta / n).read_bytes() for n in ("timestamp.json", "snapshot.json", "targets.json")}
    feed.publish()
    assert update(tmp_path, url).returncode == 0  # the client has seen the newer versions
    feed.remove(["two.ndb"])
    feed.publish()
    assert update(tmp_path, url).returncode == 0
    for name, data in old.items():  # a mirror replays the older, validly signed metadata
        (meta / name).write_bytes(data)
    r = update(tmp_path, url)
    assert r.returncode == 1 and "(rollback or mix-and-match)" in r.stderr, r.stderr
    assert detects(tmp_path, b"feed signature two") == []


def test_frozen_feed(tmp_path: Path, server: tuple[Path, str]) -> None:
    www, url = server
    feed = _first_update(tmp_path, www, url)
    feed.publish(days={"timestamp": -1})  # a timestamp that expired yesterday
    _refused(tmp_path, url, "has expired")


def test_wrong_and_revoked_keys(tmp_path: Path, server: tuple[Path, str]) -> None:
    www, url = server
    feed = _first_update(tmp_path, www, url)
    keys = www / "feed" / "keys"
    shutil.copy(keys / "timestamp.pem", tmp_path / "old-timestamp.pem")
    shutil.copy(keys / "targets.pem", keys / "timestamp.pem")  # signed with another role's key
    feed.publish()
    assert feed.waiting() == {"timestamp": 1}  # the publisher holds it back; served anyway:
    _force_live(www)
    _refused(tmp_path, url, "not signed by the trusted keys")
    shutil.copy(tmp_path / "old-timestamp.pem", keys / "timestamp.pem")
    feed.rotate_key("timestamp")  # revokes the old timestamp key
    assert update(tmp_path, url).returncode == 0  # the client follows the signed rotation
    shutil.copy(tmp_path / "old-timestamp.pem", keys / "timestamp.pem")  # a thief with the revoked key
    feed.publish()
    _force_live(www)
    r = update(tmp_path, url)
    assert r.returncode == 1 and "not signed by the trusted keys" in r.stderr


def test_mix_and_match_tampered_and_endless_targets(tmp_path: Path, server: tuple[Path, str]) -> None:
    www, url = server
    feed = _first_update(tmp_path, www, url)
    meta = www / "feed" / "metadata"
    feed.publish()
    old_targets = (meta / "targets.json").read_bytes()
    feed.publish()
    new_targets = (meta / "targets.json").read_bytes()
    (meta / "targets.json").write_bytes(old_targets)  # snapshot says version N, targets is N-1
    _refused(tmp_path, url, "(rollback or mix-and-match)")
    (meta / "targets.json").write_bytes(new_targets)
    target = www / "feed" / "targets" / "two.ndb"
    good = target.read_bytes()
    target.write_bytes(good.replace(b"Two", b"Owt"))  # same length, other bytes
    _refused(tmp_path, url, "does not match its signed length or hash")
    target.write_bytes(good + b"\n" * 10_000_000)  # an endless download: stopped at the signed length
    _refused(tmp_path, url, "length")
    target.write_bytes(good)
    assert update(tmp_path, url).returncode == 0


def test_program_code_is_never_published_or_fetched(tmp_path: Path, server: tuple[Path, str]) -> None:
    www, url = server
    feed = _first_update(tmp_path, www, url)
    with pytest.raises(FeedError, match="data only, never program code"):
        feed.add([str(write(tmp_path / "installer.sh", "#!/bin/sh\nrm -rf /\n"))])
    # a malicious publisher signs code anyway, listing it in the manifest
    write(www / "feed" / "targets" / "update.py", "import os\n")
    manifest = www / "feed" / "targets" / "bastion-feed.json"
    original_is_data = __import__("bastion.feed.publisher", fromlist=["is_data"]).is_data
    import bastion.feed.publisher as publisher

    publisher.is_data = lambda name: True  # type: ignore[assignment]
    try:
        feed.publish()
    finally:
        publisher.is_data = original_is_data  # type: ignore[assignment]
    assert "update.py" in manifest.read_text()
    _refused(tmp_path, url, "update.py: not signature data")
    assert not list((tmp_path / "cache").rglob("update.py"))  # never even downloaded


def test_sources_from_bastion_toml_policies_hash_lists_and_status(tmp_path: Path, server: tuple[Path, str]) -> None:
    import hashlib
    import os
    import time

    www, url = server
    feed = make_feed(www)
    feed.add([str(write(tmp_path / "one.ndb", SIG1))])
    feed.publish()
    sample = b"a sample listed in a hash export\n"
    digest = hashlib.sha256(sample).hexdigest()
    write(www / "bazaar.csv", f'"first_seen_utc","sha256_hash","md5_hash","signature"\n'
                              f'"2026-11-01","{digest}","{"0" * 32}","AgentTesla"\n"2026-11-02","nothex","x","Y"\n')
    write(tmp_path / "rules" / "mine.yar", 'rule Mine { strings: $a = "my own rule text" condition: $a }\n')
    config = write(tmp_path / "bastion.toml", f"""[update]
policy = "auto"
silent_days = 7

[[update.sources]]
name = "community"
kind = "feed"
url = "{url}/feed"
trust = "{www / 'feed/metadata/root.json'}"
priority = 10

[[update.sources]]
name = "bazaar"
kind = "hashlist"
path = "{www / 'bazaar.csv'}"
policy = "manual"

[[update.sources]]
name = "rules"
kind = "folder"
path = "{tmp_path / 'rules'}"

[[update.sources]]
name = "gone"
kind = "feed"
url = "http://127.0.0.1:9/nothing"
trust = "{www / 'feed/metadata/root.json'}"
""")
    r = bastion(["update", "--config", str(config)], tmp_path)
    assert r.returncode == 1 and "gone:" in r.stderr  # one source failing never blocks the others
    assert "bazaar: 1 hashes (1 lines skipped)" in r.stdout
    assert "staged only (policy manual)" in r.stdout  # bazaar changed and is manual: the strictest wins
    version = r.stdout.split("bastion db activate ")[1].split()[0]
    assert bastion(["db", "activate", version], tmp_path).returncode == 0
    assert detects(tmp_path, sample) == ["HashList.bazaar.AgentTesla.1.UNOFFICIAL"]  # row 1 of the export
    assert detects(tmp_path, b"feed signature one") == ["Feed.Sig.One.UNOFFICIAL"]
    assert detects(tmp_path, b"it is my own rule text") == ["YARA.Mine.UNOFFICIAL"]
    # only the auto feed changes next: activated by itself
    feed.add([str(write(tmp_path / "two.ndb", SIG2))])
    feed.publish()
    r = bastion(["update", "--config", str(config)], tmp_path)
    assert "activated" in r.stdout, r.stdout
    assert detects(tmp_path, b"feed signature two") == ["Feed.Sig.Two.UNOFFICIAL"]
    # the rules folder goes away (a share offline): its signatures stay, nothing is removed
    shutil.move(tmp_path / "rules", tmp_path / "rules-away")
    r = bastion(["update", "--config", str(config)], tmp_path)
    assert r.returncode == 1 and "its 1 files in the active version are kept" in r.stderr, r.stderr
    assert "no change" in r.stdout, r.stdout
    assert detects(tmp_path, b"it is my own rule text") == ["YARA.Mine.UNOFFICIAL"]
    shutil.move(tmp_path / "rules-away", tmp_path / "rules")
    # status: the failing source is named, and a source silent for too long is reported
    state = tmp_path / "cache" / "store" / "sources" / "bazaar.json"
    doc = json.loads(state.read_text())
    doc["last_success"] = time.time() - 10 * 86400
    state.write_text(json.dumps(doc))
    r = bastion(["status", "--config", str(config)], tmp_path)
    assert r.returncode == 1 and "bazaar: silent for 10.0d" in r.stderr and "gone: never updated" in r.stderr
    assert "community: last success" in r.stdout and os.path.exists(state)


def test_thresholds_need_every_signature(tmp_path: Path, server: tuple[Path, str]) -> None:
    www, url = server
    assert bastion(["feed", "init", "--threshold", "2", str(www / "feed")], tmp_path).returncode == 0
    root = json.loads((www / "feed" / "metadata" / "root.json").read_text())
    assert {r: v["threshold"] for r, v in root["signed"]["roles"].items()} == dict.fromkeys(
        ("root", "targets", "snapshot", "timestamp"), 2)
    feed = Feed(str(www / "feed"))
    feed.add([str(write(tmp_path / "one.ndb", SIG1))])
    feed.publish()
    assert update(tmp_path, url).returncode == 0
    # the second targets key lives with another person: publishing stages, clients see nothing new
    cosigner = tmp_path / "cosigner"
    cosigner.mkdir()
    shutil.move(www / "feed" / "keys" / "targets.2.pem", cosigner / "targets.2.pem")
    feed.add([str(write(tmp_path / "two.ndb", SIG2))])
    r = bastion(["feed", "publish", str(www / "feed")], tmp_path)
    assert r.returncode == 0 and "staged targets version 3" in r.stdout and "targets needs 1 more" in r.stdout, r.stdout
    assert update(tmp_path, url).returncode == 0 and detects(tmp_path, b"feed signature two") == []
    # a key of no waiting role is refused; the co-signer's key releases it
    r = bastion(["feed", "sign", str(www / "feed"), "--key", str(www / "feed" / "keys" / "root.pem")], tmp_path)
    assert r.returncode == 1 and "not a key of any role waiting" in r.stderr, r.stderr
    r = bastion(["feed", "sign", str(www / "feed"), "--key", str(cosigner / "targets.2.pem")], tmp_path)
    assert r.returncode == 0 and "the release is published" in r.stdout, r.stdout + r.stderr
    assert update(tmp_path, url).returncode == 0
    assert detects(tmp_path, b"feed signature two") == ["Feed.Sig.Two.UNOFFICIAL"]
    # metadata short of its threshold, put live by hand (a stolen single key): clients refuse it
    staged = json.loads((www / "feed" / "metadata" / "targets.json").read_text())
    staged["signed"]["version"] += 1
    staged["signatures"] = staged["signatures"][:1]
    (www / "feed" / "metadata" / "targets.json").write_text(json.dumps(staged))
    snap = Feed(str(www / "feed"))
    snap.publish()  # snapshot/timestamp move on; targets stays staged for want of the second key
    _force_live(www)
    r = update(tmp_path, url)
    assert r.returncode == 1 and "not signed by the trusted keys" in r.stderr, r.stderr
    assert detects(tmp_path, b"feed signature two") == ["Feed.Sig.Two.UNOFFICIAL"]  # the active version stays


def test_a_progress_bar_on_a_terminal_only(tmp_path: Path, server: tuple[Path, str]) -> None:
    """`bastion update` at a terminal shows each signature file's download (name, size) on stderr;
    with stderr on a pipe (timers, logs) it prints no bar."""
    from tests.helpers import run_with_stderr_on_a_terminal

    www, url = server
    feed = make_feed(www)
    big = "".join(f"Feed.Bulk.{i}:0:*:{i:08x}{b'bulk signature'.hex()}\n" for i in range(60_000))
    feed.add([str(write(tmp_path / "bulk.ndb", SIG1 + big))])
    feed.publish()
    cmd = [sys.executable, "-m", "bastion.cli.main", "update", "--dry-run", "--feed", f"main={url}/feed",
           "--trust", f"main={www / 'feed/metadata/root.json'}"]
    rc, out, screen = run_with_stderr_on_a_terminal(cmd, env_for(tmp_path))
    assert rc == 0 and "would add main--bulk.ndb" in out, out + screen
    assert "bulk.ndb" in screen and "MB" in screen, screen  # the bar: file name and a byte count
    piped = subprocess.run(cmd, capture_output=True, text=True, env=env_for(tmp_path), timeout=180)
    assert piped.returncode == 0 and "bulk.ndb" not in piped.stderr and "MB" not in piped.stderr, piped.stderr
