"""The REST API (FastAPI): scan uploads, report versions, health, the database, and Prometheus metrics.

``POST /v1/scan``       the request body (raw, streamed, up to ``max_body``) or a multipart ``file`` field
``POST /v1/scan/path``  ``{"path": ...}``: a file or directory on the server (off unless enabled)
``GET  /v1/version``    Bastion's and the ClamAV-compatibility versions
``GET  /v1/health``     ``{"status": "ok"}`` once the database is loaded
``GET  /v1/db``         database version, sources, signature counts, load report
``GET  /metrics``       Prometheus text: scans, detections, bytes, latency histogram, database age
``GET  /docs``          OpenAPI documentation (FastAPI's)

With an API key configured, every ``/v1`` route wants ``Authorization: Bearer <key>`` (``/metrics``
and ``/v1/health`` too, unless ``open_health`` is set).  The front end only calls the engine and
renders results.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from bastion import CLAMAV_COMPAT_VERSION, FUNCTIONALITY_LEVEL, __version__
from bastion.engine import Engine, ScanResult

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


@dataclass
class ApiSettings:
    api_key: str | None = None
    enable_path_scan: bool = False
    max_body: int = 100 * 1024 * 1024


@dataclass
class Metrics:
    scans: int = 0
    detections: int = 0
    errors: int = 0
    bytes: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, result: ScanResult, seconds: float) -> None:
        with self.lock:
            self.scans += 1
            self.detections += len(result.detections)
            self.errors += 1 if result.error else 0
            self.bytes += result.size
            self.latency_sum += seconds
            index = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
            self.latency_counts[index] += 1

    def render(self, db_age: float, signatures: int) -> str:
        with self.lock:
            lines = [
                "# HELP bastion_scans_total Objects scanned through the API.", "# TYPE bastion_scans_total counter",
                f"bastion_scans_total {self.scans}",
                "# HELP bastion_detections_total Detections reported.", "# TYPE bastion_detections_total counter",
                f"bastion_detections_total {self.detections}",
                "# HELP bastion_scan_errors_total Objects that could not be scanned.",
                "# TYPE bastion_scan_errors_total counter", f"bastion_scan_errors_total {self.errors}",
                "# HELP bastion_scanned_bytes_total Bytes scanned.", "# TYPE bastion_scanned_bytes_total counter",
                f"bastion_scanned_bytes_total {self.bytes}",
                "# HELP bastion_scan_seconds Scan latency.", "# TYPE bastion_scan_seconds histogram",
            ]
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.latency_counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'bastion_scan_seconds_bucket{{le="{le}"}} {cumulative}')
            lines += [f"bastion_scan_seconds_sum {self.latency_sum:.6f}", f"bastion_scan_seconds_count {self.scans}",
                      "# HELP bastion_database_age_seconds Seconds since the database was loaded.",
                      "# TYPE bastion_database_age_seconds gauge", f"bastion_database_age_seconds {db_age:.0f}",
                      "# HELP bastion_signatures Signatures in the loaded database.",
                      "# TYPE bastion_signatures gauge", f"bastion_signatures {signatures}"]
        return "\n".join(lines) + "\n"


def _result_json(result: ScanResult) -> dict[str, Any]:
    return {
        "name": result.name, "verdict": result.verdict, "file_type": result.file_type or None, "size": result.size,
        "error": result.error, "limits": result.limits,
        "detections": [{"name": d.name, "kind": d.evidence.kind, "source": d.evidence.source,
                        "line": d.evidence.line, "offsets": list(d.evidence.offsets),
                        "container_path": d.evidence.container_path or None} for d in result.detections],
    }


def _detection_events(result: ScanResult, name: str) -> None:
    from bastion import events

    events.record_detections(name, result, "bastion api", sync=False)


def create_app(engine: Engine, settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    metrics = Metrics()
    loaded_at = time.time()
    app = FastAPI(title="Bastion", version=__version__,
                  description="An open, transparent antivirus: scan files, see why, check the database.")

    def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise HTTPException(status_code=401, detail="missing or wrong API key",
                                headers={"WWW-Authenticate": "Bearer"})

    def scan(data: bytes, name: str) -> dict[str, Any]:
        started = time.perf_counter()
        result = engine.scan_bytes(data, name)
        metrics.record(result, time.perf_counter() - started)
        _detection_events(result, name)
        return _result_json(result)

    @app.post("/v1/scan", dependencies=[Depends(authorized)])
    async def scan_upload(request: Request) -> JSONResponse:
        """Scan the request body (any content type), or the ``file`` field of a multipart form."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(status_code=400, detail="multipart form needs a 'file' field")
            data = await upload.read(settings.max_body + 1)
            name = upload.filename or "upload"
        else:
            chunks = bytearray()
            async for chunk in request.stream():
                chunks += chunk
                if len(chunks) > settings.max_body:
                    break
            data, name = bytes(chunks), request.headers.get("x-filename", "stream")
        if len(data) > settings.max_body:
            raise HTTPException(status_code=413, detail=f"body larger than {settings.max_body} bytes")
        return JSONResponse(scan(data, name))

    @app.post("/v1/scan/path", dependencies=[Depends(authorized)])
    async def scan_path(body: dict[str, str]) -> JSONResponse:
        """Scan a file (or every file under a directory) on the server; disabled unless configured."""
        if not settings.enable_path_scan:
            raise HTTPException(status_code=403, detail="server-side path scans are disabled")
        path = body.get("path", "")
        if not os.path.isabs(path) or not os.path.exists(path):
            raise HTTPException(status_code=404, detail="no such absolute path")
        targets = [path] if os.path.isfile(path) else [
            os.path.join(root, f) for root, _, files in os.walk(path) for f in sorted(files)]
        out = []
        for target in targets:
            started = time.perf_counter()
            result = engine.scan_file(target)
            metrics.record(result, time.perf_counter() - started)
            _detection_events(result, target)
            out.append(_result_json(result))
        return JSONResponse({"results": out})

    @app.get("/v1/version", dependencies=[Depends(authorized)])
    async def version() -> dict[str, Any]:
        return {"bastion": __version__, "clamav_compatible": CLAMAV_COMPAT_VERSION,
                "functionality_level": FUNCTIONALITY_LEVEL, "database": engine.db.version}

    @app.get("/v1/health", dependencies=[Depends(authorized)])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/db", dependencies=[Depends(authorized)])
    async def database() -> dict[str, Any]:
        db = engine.db
        rep = db.report
        return {"version": db.version, "signatures": db.signature_count,
                "sources": [{"path": s.path, "sha256": s.sha256, "official": s.official} for s in db.live_sources],
                "containers": rep.containers, "not_loaded": [list(x) for x in rep.skipped_files],
                "loaded_at": loaded_at}

    @app.get("/v1/events", dependencies=[Depends(authorized)])
    async def event_log(since: str | None = None, action: str | None = None, kind: str | None = None,
                        outcome: str | None = None, limit: int = 100) -> dict[str, Any]:
        """The event log (newest ``limit`` events, oldest first), filtered as ``bastion events``."""
        from collections import deque

        from bastion import events

        try:
            when = events.parse_since(since) if since else None
        except ValueError:
            raise HTTPException(status_code=422, detail="since: give 30m, 2h, 7d or an ISO 8601 time") from None
        found = deque(events.read(since=when, action=action, kind=kind, outcome=outcome),
                      maxlen=max(1, min(limit, 10_000)))
        return {"events": list(found)}

    @app.get("/metrics", dependencies=[Depends(authorized)], response_class=PlainTextResponse)
    async def prometheus() -> str:
        return metrics.render(time.time() - loaded_at, engine.db.signature_count)

    return app
