"""Scheduled scans: what to scan and when, kept in one JSON file written atomically.

``$BASTION_SCHEDULES_FILE``, else /var/lib/bastion/schedules.json for root, else
~/.local/state/bastion/schedules.json.  Each schedule has a name, a cron time (schedule/cron.py), a
kind (``quick``: the places downloads and droppers land; ``full``: the whole file system but
/proc, /sys, /dev and /run; ``custom``: the paths given), whether to quarantine what it finds, and
the time and summary of its last run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime

from bastion.database.atomic import write_file_atomically
from bastion.schedule.cron import Cron

SCHEDULES_FILE_ENV = "BASTION_SCHEDULES_FILE"
KINDS = ("quick", "full", "custom")
FULL_SCAN_EXCLUDES = (r"^/proc(/|$)", r"^/sys(/|$)", r"^/dev(/|$)", r"^/run(/|$)")


@dataclass
class Schedule:
    name: str
    when: str
    kind: str = "custom"
    paths: list[str] = field(default_factory=list)
    move_to_quarantine: bool = False
    created: str = ""
    last_run: str | None = None           # ISO time the last run started
    last_summary: dict | None = None

    def targets(self) -> list[str]:
        if self.kind == "full":
            return ["/"]
        if self.kind == "quick":
            home = os.path.expanduser("~")
            spots = ["/tmp", "/var/tmp", "/dev/shm", os.path.join(home, "Downloads"), os.path.join(home, "Desktop")]
            return [p for p in spots if os.path.isdir(p)]
        return list(self.paths)

    def due(self, now: datetime) -> bool:
        """Whether a run is due: the cron time matched some minute after the last run, up to now."""
        cron = Cron.parse(self.when)
        since = datetime.fromisoformat(self.last_run or self.created or now.isoformat())
        return cron.next_after(since) <= now


def schedules_path() -> str:
    from bastion.paths import user_state

    return user_state(SCHEDULES_FILE_ENV, "/var/lib/bastion/schedules.json", "schedules.json")


def load(path: str | None = None) -> dict[str, Schedule]:
    try:
        with open(path or schedules_path(), encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        return {}
    return {s["name"]: Schedule(**s) for s in raw.get("schedules", [])}


def save(schedules: dict[str, Schedule], path: str | None = None) -> None:
    target = path or schedules_path()
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    doc = {"schedules": [asdict(s) for s in sorted(schedules.values(), key=lambda s: s.name)]}
    write_file_atomically(target, (json.dumps(doc, indent=2) + "\n").encode())
