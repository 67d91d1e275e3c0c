"""A ClamAV mirror as an update source, over HTTP on loopback: CVDs built and signed by the tests
(ClamAV's keys swapped for the test's, as tests/test_cvd.py does), the version read from the header
with a Range request, a download only when the version is new, and a damaged container refused with
the active database untouched."""

from __future__ import annotations

import functools
import http.server
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
