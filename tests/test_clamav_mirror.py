"""A ClamAV mirror as an update source, over HTTP on loopback: CVDs built and signed by the tests
(ClamAV's keys swapped for the test's, as tests/test_cvd.py does), the version read from the header
with a Range request, a download only when the version is new, and a damaged container refused with
the active database untouched."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.cli import update
from bastion.database.compiled import open_database
from bastion.dbstore.store import DatabaseStore
from bastion.engine import Engine
from bastion.signatures import cvd
from tests.helpers import write
from tests.test_cdiff import make_cdiff, sigtool_diff, sigtool_run
from tests.test_cvd import build_container, keys  # noqa: F401 - the fixture

NDB1 = b"Mirror.Daily.One:0:*:" + b"mirror daily one".hex().encode() + b"\n"
NDB2 = b"Mirror.Daily.Two:0:*:" + b"mirror daily two".hex().encode() + b"\n"


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    root = tmp_path / "mirror"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(f"{self.path} {'range' if self.headers.get('Range') else 'full'}")
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()


def test_mirror_updates_verifies_and_skips_unchanged(tmp_path: Path, mirror, keys, monkeypatch) -> None:  # noqa: ANN001,F811
    root, url, requests = mirror
    monkeypatch.setattr(cvd, "CVD_KEY", keys[0].public)
    monkeypatch.setattr(cvd, "INFO_KEY", keys[1].public)
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BASTION_EVENTS_FILE", str(tmp_path / "events.jsonl"))
    write(tmp_path / "freshclam.conf", f"DatabaseOwner clamav\nDatabaseMirror {url}\n")
    config = write(tmp_path / "bastion.toml", f"""[[update.sources]]
name = "clamav"
kind = "clamav-mirror"
freshclam = "{tmp_path / 'freshclam.conf'}"
databases = ["daily"]
""")
    store_dir = str(tmp_path / "store")

    def engine() -> Engine:
        store = DatabaseStore(store_dir)
        return Engine(open_database([store.sources_dir(store.active_id() or "")]))

    (root / "daily.cvd").write_bytes(build_container("daily", {"daily.ndb": NDB1}, keys))
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    assert [d.name for d in engine().scan_bytes(b"x mirror daily one x").detections] == ["Mirror.Daily.One"]
    assert requests == ["/daily.cvd range", "/daily.cvd full"]

    requests.clear()
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    assert requests == ["/daily.cvd range"]  # the same version: not downloaded again

    good = build_container("daily", {"daily.ndb": NDB2}, keys, version=6)
    damaged = bytearray(good)
    damaged[-100] ^= 1
    (root / "daily.cvd").write_bytes(bytes(damaged))  # a newer version, damaged on the way
    assert update.run(["--config", str(config), "--store", store_dir]) == 1
    assert [d.name for d in engine().scan_bytes(b"x mirror daily one x").detections] == ["Mirror.Daily.One"]
    assert "MD5 of the contents does not match" in (Path(store_dir) / "sources" / "clamav.json").read_text()

    (root / "daily.cvd").write_bytes(good)
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    assert [d.name for d in engine().scan_bytes(b"x mirror daily two x").detections] == ["Mirror.Daily.Two"]


# -- .cdiff incremental updates ------------------------------------------------------------------
NDB3 = b"Mirror.Daily.Three:0:*:" + b"mirror daily three".hex().encode() + b"\n"
LDB3 = b"Mirror.Logical.Three;Target:0;0;" + b"logical three".hex().encode() + b"\n"
V5 = {"daily.ndb": NDB1}
V6 = {"daily.ndb": NDB1 + NDB2}
V7 = {"daily.ndb": NDB2 + NDB3, "daily.ldb": LDB3}


def _cdiff_setup(tmp_path: Path, url: str, keys, monkeypatch) -> tuple[Path, str]:  # noqa: ANN001,F811
    if shutil.which("sigtool") is None:
        pytest.skip("sigtool is not installed (Debian: apt-get install clamav)")
    monkeypatch.setattr(cvd, "CVD_KEY", keys[0].public)
    monkeypatch.setattr(cvd, "INFO_KEY", keys[1].public)
    monkeypatch.setattr(cvd, "CDIFF_KEY", keys[1].public)
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BASTION_EVENTS_FILE", str(tmp_path / "events.jsonl"))
    config = write(tmp_path / "bastion.toml", f"""[[update.sources]]
name = "clamav"
kind = "clamav-mirror"
url = "{url}"
databases = ["daily"]
""")
    return config, str(tmp_path / "store")


def _scripts(tmp_path: Path, keys) -> tuple[dict[int, bytes], dict[int, bytes]]:  # noqa: ANN001,F811
    """The three versions as CVDs, and sigtool's scripts from each to the next."""
    cvds = {v: build_container("daily", m, keys, version=v) for v, m in ((5, V5), (6, V6), (7, V7))}
    scripts = {v: sigtool_diff(cvds[v - 1], cvds[v], v, tmp_path / f"diff{v}") for v in (6, 7)}
    return cvds, scripts


def _names(store_dir: str, data: bytes) -> list[str]:
    store = DatabaseStore(store_dir)
    return [d.name for d in Engine(open_database([store.sources_dir(store.active_id() or "")])).scan_bytes(
        data).detections]


def test_two_cdiffs_in_a_row_make_a_cld(tmp_path: Path, mirror, keys, monkeypatch, capsys) -> None:  # noqa: ANN001,F811
    root, url, requests = mirror
    config, store_dir = _cdiff_setup(tmp_path, url, keys, monkeypatch)
    cvds, scripts = _scripts(tmp_path, keys)
    (root / "daily.cvd").write_bytes(cvds[5])
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    kept = Path(store_dir) / "feeds" / "clamav" / "cvd"
    assert sorted(p.name for p in kept.iterdir()) == ["daily.cvd"]

    (root / "daily.cvd").write_bytes(cvds[7])
    for v in (6, 7):
        (root / f"daily-{v}.cdiff").write_bytes(make_cdiff(scripts[v], v, keys[1]))
    requests.clear()
    capsys.readouterr()
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    assert requests == ["/daily.cvd range", "/daily-6.cdiff full", "/daily-7.cdiff full"]  # no whole CVD
    assert "daily 5 -> 7 by 2 cdiffs" in capsys.readouterr().out
    assert "5 -> 7 by 2 cdiffs" in (Path(store_dir) / "sources" / "clamav.json").read_text()
    assert sorted(p.name for p in kept.iterdir()) == ["daily.cld"]  # the .cvd removed once the .cld was in place
    built = cvd.open_container(str(kept / "daily.cld"))
    assert built.kind == "cld" and built.header.version == 7
    assert {n: d for n, d in built.members if n.endswith((".ndb", ".ldb"))} == V7
    targets = {"three.txt": b"x mirror daily three x", "logical.txt": b"x logical three x"}
    ours = {name: _names(store_dir, data) for name, data in targets.items()}
    assert ours == {"three.txt": ["Mirror.Daily.Three"], "logical.txt": ["Mirror.Logical.Three"]}
    assert _names(store_dir, b"x mirror daily one x") == []  # deleted by the first cdiff

    # ClamAV's side: the same scripts run by sigtool --run-cdiff on the old files, then clamscan on
    # them (clamscan cannot load the .cld itself: it checks the .info signature with ClamAV's key)
    theirs = tmp_path / "clamav-applied"
    theirs.mkdir()
    for name, data in cvd.open_container("daily.cvd", cvds[5]).members:
        (theirs / name).write_bytes(data)
    for v in (6, 7):
        assert sigtool_run(scripts[v], theirs)
    assert {p.name: p.read_bytes() for p in theirs.iterdir()} == dict(built.members)
    (theirs / "daily.info").unlink()
    (theirs / "COPYING").unlink()
    (tmp_path / "targets").mkdir()
    for name, data in targets.items():
        (tmp_path / "targets" / name).write_bytes(data)
    r = subprocess.run(["clamscan", "--no-summary", "-d", str(theirs), str(tmp_path / "targets")],
                       capture_output=True, text=True, timeout=120)
    found = dict(re.findall(r"([^/\s]+): (\S+) FOUND", r.stdout))
    assert {n: [v.removesuffix(".UNOFFICIAL")] for n, v in found.items()} == ours

    requests.clear()
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    assert requests == ["/daily.cvd range"]  # the .cld's version is the mirror's: nothing more


@pytest.mark.parametrize(("problem", "reason"), [
    ("missing", "daily-7.cdiff: HTTP Error 404"),
    ("bad signature", "daily-6.cdiff: digital signature does not verify"),
    ("truncated", "daily-7.cdiff: "),  # the signature cut, or text that is no signature
    ("wrong version", "daily-7.cdiff: claims version 6, expected 7"),
    ("script fails", "daily-7.cdiff: script line"),
])
def test_a_cdiff_problem_falls_back_to_the_whole_cvd(tmp_path: Path, mirror, keys, monkeypatch, capsys,  # noqa: ANN001,F811
                                                     problem: str, reason: str) -> None:
    root, url, requests = mirror
    config, store_dir = _cdiff_setup(tmp_path, url, keys, monkeypatch)
    cvds, scripts = _scripts(tmp_path, keys)
    (root / "daily.cvd").write_bytes(cvds[5])
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    kept = Path(store_dir) / "feeds" / "clamav" / "cvd"
    old = (kept / "daily.cvd").read_bytes()

    cdiffs = {v: make_cdiff(scripts[v], v, keys[1]) for v in (6, 7)}
    if problem == "missing":
        del cdiffs[7]
    elif problem == "bad signature":
        cdiffs[6] = make_cdiff(scripts[6], 6, keys[0])
    elif problem == "truncated":
        cdiffs[7] = cdiffs[7][: len(cdiffs[7]) - 100]
    elif problem == "wrong version":
        cdiffs[7] = make_cdiff(scripts[7], 6, keys[1])
    else:  # a DEL of a line that is not there
        cdiffs[7] = make_cdiff(scripts[7] + b"OPEN daily.ndb\nDEL 99 Nothing\nCLOSE\n", 7, keys[1])
    for v, data in cdiffs.items():
        (root / f"daily-{v}.cdiff").write_bytes(data)
    (root / "daily.cvd").write_bytes(cvds[7][:-200])  # the whole CVD damaged too: the update fails
    assert update.run(["--config", str(config), "--store", store_dir]) == 1
    assert sorted(p.name for p in kept.iterdir()) == ["daily.cvd"] and (kept / "daily.cvd").read_bytes() == old
    assert _names(store_dir, b"x mirror daily one x") == ["Mirror.Daily.One"]  # the old database untouched
    assert "and before that, incremental update failed" in (Path(store_dir) / "sources" / "clamav.json").read_text()

    (root / "daily.cvd").write_bytes(cvds[7])
    requests.clear()
    capsys.readouterr()
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    assert requests[-1] == "/daily.cvd full"
    out = capsys.readouterr().out
    assert f"incremental update failed ({reason}" in out and "downloaded daily.cvd whole" in out
    assert "incremental update failed" in (Path(store_dir) / "sources" / "clamav.json").read_text()
    assert sorted(p.name for p in kept.iterdir()) == ["daily.cvd"]
    assert (kept / "daily.cvd").read_bytes() == cvds[7]
    assert _names(store_dir, b"x mirror daily three x") == ["Mirror.Daily.Three"]


def test_mirror_downloads_show_a_progress_bar_on_a_terminal(tmp_path: Path, mirror) -> None:  # noqa: ANN001,F811
    """A whole-database download draws its bar on stderr when that is a terminal (stdout stays the
    command's report), and nothing when it is not."""
    import sys

    from tests.helpers import bastion_env, run_with_stderr_on_a_terminal

    root, url, _requests = mirror
    (root / "daily.cvd").write_bytes(os.urandom(3 << 20))
    code = ("import sys; from bastion.feed.clamav_mirror import _get; "
            f"print(len(_get({url + '/daily.cvd'!r})))")
    rc, out, screen = run_with_stderr_on_a_terminal([sys.executable, "-c", code], bastion_env(tmp_path / "c"))
    assert rc == 0 and out.strip() == str(3 << 20), out + screen
    assert "daily.cvd" in screen and "3.1 MB" in screen, screen
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=bastion_env(tmp_path / "c"), timeout=60)
    assert piped.returncode == 0 and piped.stderr == "" and piped.stdout.strip() == str(3 << 20)
