"""The event log: every detection, action, error and database change, as one JSON object per line.

Fields follow the Elastic Common Schema where one fits, so the file can be shipped as is::

    {"@timestamp": "2026-11-25T06:23:36.123Z", "message": "...",
     "event": {"kind": "alert"|"event", "category": ["malware"|"file"|"configuration"|"process"],
               "type": ["info"|"deletion"|"creation"|"change"|"error"], "action": "detection"|...,
               "outcome": "success"|"failure"|"unknown", "dataset": "bastion.events", "module": "bastion"},
     "file": {"path": ..., "hash": {"sha256": ...}, "size": ...},
     "rule": {"name": "Eicar-Signature", "ruleset": "daily.cvd:12"},
     "host": {"hostname": ...}, "process": {"pid": ..., "name": "bastion scan"},
     "bastion": {... whatever else the event carries}}

The file is ``$BASTION_EVENTS_FILE``, else /var/log/bastion/events.jsonl for root, else
~/.local/state/bastion/events.jsonl.  Each event is one ``write`` on a file opened with O_APPEND
(so concurrent writers never interleave within a line) followed by fsync.  With
``$BASTION_EVENTS_SYSLOG=1`` each event also goes to syslog (facility daemon).  Writing an event
never fails the action it records: a log that cannot be written is said once on stderr.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bastion.paths import user_state

if TYPE_CHECKING:
    from bastion.engine.verdict import ScanResult

EVENTS_FILE_ENV = "BASTION_EVENTS_FILE"
SYSLOG_ENV = "BASTION_EVENTS_SYSLOG"

# action -> (kind, category, type)
ACTIONS: dict[str, tuple[str, str, str]] = {
    "detection": ("alert", "malware", "info"),
    "quarantine": ("event", "file", "deletion"),
    "restore": ("event", "file", "creation"),
    "quarantine-delete": ("event", "file", "deletion"),
    "quarantine-export": ("event", "file", "info"),
    "move": ("event", "file", "change"),
    "copy": ("event", "file", "creation"),
    "remove": ("event", "file", "deletion"),
    "scan-error": ("event", "file", "error"),
    "database-reload": ("event", "configuration", "change"),
    "schedule-run": ("event", "process", "info"),
}
_warned = False


def events_path() -> str:
    return user_state(EVENTS_FILE_ENV, "/var/log/bastion/events.jsonl", "events.jsonl")


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def make_event(action: str, message: str, *, outcome: str = "success", path: str | None = None,
               sha256: str | None = None, size: int | None = None, rule: str | None = None,
               ruleset: str | None = None, process: str | None = None, **extra: Any) -> dict[str, Any]:
    kind, category, etype = ACTIONS.get(action, ("event", "process", "info"))
    event: dict[str, Any] = {
        "@timestamp": _timestamp(time.time()),
        "message": message,
        "event": {"kind": kind, "category": [category], "type": ["error" if outcome == "failure" else etype],
                  "action": action, "outcome": outcome, "dataset": "bastion.events", "module": "bastion"},
        "host": {"hostname": socket.gethostname()},
        "process": {"pid": os.getpid(), "name": process or os.path.basename(sys.argv[0] or "bastion")},
    }
    if path is not None:
        event["file"] = {"path": path}
        if sha256:
            event["file"]["hash"] = {"sha256": sha256}
        if size is not None:
            event["file"]["size"] = size
    if rule:
        event["rule"] = {"name": rule, **({"ruleset": ruleset} if ruleset else {})}
    extra = {k: v for k, v in extra.items() if v is not None}
    if extra:
        event["bastion"] = extra
    return event


def record(action: str, message: str, *, sync: bool = True, **fields: Any) -> dict[str, Any]:
    """Append one event (see :func:`make_event` for the fields) and return it.  ``sync=False`` skips
    the fsync (the daemon's detections, at thousands of requests a second)."""
    global _warned
    event = make_event(action, message, **fields)
    line = (json.dumps(event, separators=(",", ":"), default=str) + "\n").encode()
    path = events_path()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if not _warned:
            sys.stderr.write(f"warning: event log {path}: {exc.strerror}; events are not being recorded\n")
            _warned = True
    if os.environ.get(SYSLOG_ENV) == "1":
        import syslog

        syslog.openlog("bastion", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING if event["event"]["kind"] == "alert" else syslog.LOG_INFO,
                      f"{action}: {message}")
    return event


def record_detections(path: str, result: ScanResult, process: str, *, sync: bool = True, limit: int | None = None,
                      **extra: Any) -> None:
    """One ``detection`` event per signature that matched (the first ``limit``), with its evidence:
    what every front end records when it finds something."""
    for det in result.detections[:limit]:
        ev = det.evidence
        record("detection", f"{path}: {det.name}", sync=sync, path=path, sha256=result.sha256 or None,
               size=result.size, rule=det.name, ruleset=f"{ev.source}:{ev.line}" if ev.source else None,
               process=process, evidence=ev.kind, container_path=ev.container_path or None,
               offsets=list(ev.offsets[:8]) or None, db_version=ev.db_version or None, **extra)


def parse_since(text: str) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO 8601 time (UTC if it names no zone)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read(path: str | None = None, *, since: datetime | None = None, action: str | None = None,
         kind: str | None = None, outcome: str | None = None, text: str | None = None) -> Iterator[dict[str, Any]]:
    """The events in the log, oldest first, filtered; a damaged line is skipped, never fatal."""
    try:
        fh = open(path or events_path(), encoding="utf-8", errors="replace")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            try:
                event = json.loads(line)
                ev = event["event"]
                when = datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                continue
            if since and when < since:
                continue
            if (action and ev.get("action") != action) or (kind and ev.get("kind") != kind):
                continue
            if outcome and ev.get("outcome") != outcome:
                continue
            if text and text.lower() not in line.lower():
                continue
            yield event
