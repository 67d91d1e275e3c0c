"""The REST API as a real uvicorn server on loopback, spoken to with the standard library's HTTP client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CANARY, EICAR, bastion_env, write

KEY = "test-key-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         key: str | None = KEY) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, data=data, headers=dict(headers or {}),
                                 method="POST" if data is not None else "GET")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("api")
    write(root / "key", KEY + "\n")
    write(root / "files" / "eicar.com", EICAR)
    write(root / "files" / "clean.txt", b"nothing here\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bastion.api.main", "--port", str(port), "--api-key-file",
                             str(root / "key"), "--enable-path-scan"], env=bastion_env(root / "cache"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(base, "/v1/health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_raw_and_multipart_uploads(api: str) -> None:
    status, body = call(api, "/v1/scan", EICAR, {"Content-Type": "application/octet-stream", "X-Filename": "e.com"})
    doc = json.loads(body)
    assert status == 200 and doc["verdict"] == "infected" and doc["name"] == "e.com"
    assert doc["detections"][0]["name"] == "Bastion.Test.EICAR"
    boundary = "bastionboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"n.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\n").encode() + b"note " + CANARY + f"\r\n--{boundary}--\r\n".encode()
    status, body = call(api, "/v1/scan", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    doc = json.loads(body)
    assert status == 200 and doc["name"] == "n.txt" and doc["detections"][0]["name"] == "Bastion.Test.Canary"
    status, body = call(api, "/v1/scan", b"clean bytes here", {"Content-Type": "application/octet-stream"})
    assert json.loads(body)["verdict"] == "clean"


def test_path_scan_version_db_and_metrics(api: str, tmp_path: Path) -> None:
    status, body = call(api, "/v1/version")
    assert status == 200 and json.loads(body)["clamav_compatible"] == "1.4.6"
    doc = json.loads(call(api, "/v1/db")[1])
    assert doc["signatures"] >= 4 and doc["sources"]
    target = write(tmp_path / "p" / "eicar.com", EICAR)
    status, body = call(api, "/v1/scan/path", json.dumps({"path": str(target.parent)}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["results"][0]["verdict"] == "infected"
    status, body = call(api, "/metrics")
    text = body.decode()
    assert status == 200 and "bastion_scans_total" in text and 'bastion_scan_seconds_bucket{le="+Inf"}' in text
    assert "bastion_database_age_seconds" in text
    assert call(api, "/openapi.json")[0] == 200


def test_detections_are_events(api: str) -> None:
    call(api, "/v1/scan", EICAR, {"Content-Type": "application/octet-stream", "X-Filename": "evt.com"})
    status, body = call(api, "/v1/events?action=detection&since=1h")
    found = [e for e in json.loads(body)["events"] if e["file"]["path"] == "evt.com"]
    assert status == 200 and found and found[-1]["rule"]["name"] == "Bastion.Test.EICAR"
    assert found[-1]["event"]["kind"] == "alert" and found[-1]["process"]["name"] == "bastion api"
    assert call(api, "/v1/events?since=yesterday")[0] == 422


def test_api_key_is_required(api: str) -> None:
    assert call(api, "/v1/version", key=None)[0] == 401
    assert call(api, "/v1/version", key="wrong")[0] == 401
    assert call(api, "/v1/scan", b"x" * 10, key=None)[0] == 401
