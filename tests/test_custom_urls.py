"""freshclam's ``DatabaseCustomURL`` over HTTP on loopback and ``file://``: downloaded only when changed
(ETag, Last-Modified, mtime), checked before it is kept, one failing URL never blocking the others."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.cli import update
from bastion.database.compiled import open_database
from bastion.dbstore.store import DatabaseStore
from bastion.engine import Engine
from bastion.feed.custom_urls import fetch_custom_urls, file_name
from bastion.feed.sources import load_config
from tests.helpers import write

NDB = b"Custom.Url.Body:0:*:" + b"custom url body".hex().encode() + b"\n"
NDB2 = b"Custom.Url.Other:0:*:" + b"custom url other".hex().encode() + b"\n"
HDB = hashlib.md5(b"custom hashed file").hexdigest().encode() + b":18:Custom.Url.Hash\n"
YAR = b'rule Custom_Url_Yara { strings: $a = "custom yara text" condition: $a }\n'


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """A loopback server that gives ETags (a digest of the file) and answers If-None-Match and
    If-Modified-Since with 304; ``log`` gets "path status conditional-headers"."""
    root = tmp_path / "www"
    root.mkdir()
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            path = root / self.path.lstrip("/")
            sent = " ".join(h for h in ("If-None-Match", "If-Modified-Since") if self.headers.get(h))
            if not path.is_file():
                log.append(f"{self.path} 404 {sent}".strip())
                self.send_error(404)
                return
            data = path.read_bytes()
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                log.append(f"{self.path} 304 {sent}".strip())
                self.send_response(304)
                self.end_headers()
                return
            log.append(f"{self.path} 200 {sent}".strip())
            self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", log
    finally:
        httpd.shutdown()


def test_each_url_is_fetched_when_changed_and_alone(tmp_path: Path, server) -> None:  # noqa: ANN001
    root, url, log = server
    write(root / "custom.ndb", NDB)
    write(root / "hashes.hdb", HDB)
    local = write(tmp_path / "local" / "rules.yar", YAR)
    into = str(tmp_path / "into")
    urls = [f"{url}/custom.ndb", f"{url}/missing.ndb", f"{url}/hashes.hdb", f"file://{local}",
            f"{url}/notes.txt", "ftp://example.org/x.ndb"]
    first = fetch_custom_urls(urls, into, {})
    assert sorted(os.listdir(into)) == ["custom.ndb", "hashes.hdb", "rules.yar"]
    assert (Path(into) / "custom.ndb").read_bytes() == NDB
    assert sorted(first.notes) == ["custom.ndb added", "hashes.hdb added", "rules.yar added"]
    assert [p.split(": ", 1)[1] for p in first.problems] == [
        "HTTP Error 404: Not Found", "'notes.txt' is not the name of a signature database file",
        "only http://, https:// and file:// URLs"]

    log.clear()
    second = fetch_custom_urls(urls, into, first.cache)
    assert second.notes == [] and len(second.problems) == 3
    assert "/custom.ndb 304 If-None-Match If-Modified-Since" in log  # asked only if changed
    assert "/hashes.hdb 304 If-None-Match If-Modified-Since" in log

    write(root / "custom.ndb", NDB + NDB2)  # changed on the server
    os.utime(local, ns=(1, 1))  # and the file:// source touched
    third = fetch_custom_urls(urls, into, second.cache)
    assert sorted(third.notes) == ["custom.ndb updated", "rules.yar updated"]
    assert (Path(into) / "custom.ndb").read_bytes() == NDB + NDB2

    write(root / "custom.ndb", b"Broken.Sig:0:*:zz-not-hex\n")  # a broken copy is refused ...
    fourth = fetch_custom_urls(urls, into, third.cache)
    assert any("custom.ndb" in p for p in fourth.problems)
    assert (Path(into) / "custom.ndb").read_bytes() == NDB + NDB2  # ... and the last good one stays
    write(root / "custom.ndb", NDB + NDB2)
    log.clear()
    fetch_custom_urls(urls, into, fourth.cache)
    assert "/custom.ndb 304 If-None-Match If-Modified-Since" in log

    fifth = fetch_custom_urls([f"{url}/hashes.hdb"], into, fourth.cache)  # the others no longer listed
    assert sorted(os.listdir(into)) == ["hashes.hdb"]
    assert sorted(fifth.notes) == ["custom.ndb removed (its URL is no longer listed)",
                                   "rules.yar removed (its URL is no longer listed)"]


def test_file_names_from_urls() -> None:
    assert file_name("https://x.example/path/extra.ndb?x=1") == "extra.ndb"
    assert file_name("file:///srv/sigs/my%5Fsigs.hdb") == "my_sigs.hdb"
    for bad in ("https://x.example/", "https://x.example/..", "https://x.example/a/.hidden.ndb",
                "https://x.example/readme.md", "gopher://x/a.ndb", "https://x.example/a%2F..%2Fb.ndb"):
        with pytest.raises(ValueError):
            file_name(bad)


def test_update_stages_freshclam_and_toml_custom_urls(tmp_path: Path, server, monkeypatch, capsys) -> None:  # noqa: ANN001
    root, url, log = server
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BASTION_EVENTS_FILE", str(tmp_path / "events.jsonl"))
    write(root / "custom.ndb", NDB)
    local = write(tmp_path / "local" / "hashes.hdb", HDB)
    write(tmp_path / "freshclam.conf", f"DatabaseOwner clamav\nDatabaseCustomURL {url}/custom.ndb\n"
                                       f"DatabaseCustomURL {url}/gone.ndb\n")
    config = write(tmp_path / "bastion.toml", f"""[[update.sources]]
name = "clamav"
kind = "clamav-mirror"
freshclam = "{tmp_path / 'freshclam.conf'}"
custom_urls = ["file://{local}"]
""")
    store_dir = str(tmp_path / "store")
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    captured = capsys.readouterr()
    assert "clamav: 2 of 3 custom URLs" in captured.out and "1 failed" in captured.out
    assert f"warning: clamav: custom URL {url}/gone.ndb: HTTP Error 404" in captured.err
    store = DatabaseStore(store_dir)
    sources = store.sources_dir(store.active_id() or "")
    assert {"clamav--custom.ndb", "clamav--hashes.hdb"} <= set(os.listdir(sources))
    engine = Engine(open_database([sources]))
    assert [d.name for d in engine.scan_bytes(b"x custom url body x").detections] == ["Custom.Url.Body.UNOFFICIAL"]
    assert "gone.ndb" in (Path(store_dir) / "sources" / "clamav.json").read_text()

    log.clear()
    assert update.run(["--config", str(config), "--store", store_dir]) == 0
    assert "/custom.ndb 304 If-None-Match If-Modified-Since" in log
    assert "no change: this version is already active" in capsys.readouterr().out


def test_migrated_update_keys_make_a_freshclam_source(tmp_path: Path) -> None:
    config = write(tmp_path / "bastion.toml", """[update]
mirrors = ["database.clamav.net"]
private_mirrors = ["http://mirror.internal"]
custom_urls = ["https://sigs.example/extra.ndb"]
""")
    (src,) = load_config(str(config)).sources
    assert (src.name, src.kind) == ("freshclam", "clamav-mirror")
    assert src.mirrors == ["http://mirror.internal", "https://database.clamav.net"]
    assert src.custom_urls == ["https://sigs.example/extra.ndb"]
    write(tmp_path / "only.toml", '[update]\ncustom_urls = ["https://sigs.example/extra.ndb"]\n')
    assert load_config(str(tmp_path / "only.toml")).sources[0].custom_urls == ["https://sigs.example/extra.ndb"]
    write(tmp_path / "bad.toml", '[update]\ncustom_urls = "https://sigs.example/extra.ndb"\n')
    with pytest.raises(ValueError, match="list of strings"):
        load_config(str(tmp_path / "bad.toml"))
