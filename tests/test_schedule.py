"""Scheduled scans: cron times as crontab(5) reads them, schedules kept in their file, runs (now or
when due) that report, record events and keep their summary, and the shipped systemd timer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from bastion.schedule.cron import Cron, CronError
from tests.helpers import EICAR, REPO, bastion_env, write


def bastion(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion.cli.main", "schedule", *args], capture_output=True,
                          text=True, env=bastion_env(tmp / "cache"), timeout=120)


def test_cron_times() -> None:
    at = datetime(2026, 11, 25, 2, 30)  # a Wednesday
    assert Cron.parse("30 2 * * *").matches(at) and not Cron.parse("31 2 * * *").matches(at)
    assert Cron.parse("*/15 * * * *").matches(at) and not Cron.parse("*/20 * * * *").matches(at)
    assert Cron.parse("0-45/15 1-3 * nov wed").matches(at)
    assert Cron.parse("30 2 * * 7").next_after(at) == datetime(2026, 11, 29, 2, 30)  # 7 = Sunday
    # both day fields restricted: either one matching is enough (cron's rule)
    assert Cron.parse("30 2 1 * wed").matches(at) and Cron.parse("30 2 25 * mon").matches(at)
    assert Cron.parse("@daily").next_after(at) == datetime(2026, 11, 26, 0, 0)
    assert Cron.parse("0 0 29 2 *").next_after(at) == datetime(2028, 2, 29, 0, 0)
    for bad in ("* * * *", "61 * * * *", "* * * foo *", "*/0 * * * *", "5-1 * * * *"):
        with pytest.raises(CronError):
            Cron.parse(bad)


def test_add_list_run_and_remove(tmp_path: Path) -> None:
    write(tmp_path / "scan" / "eicar.com", EICAR)
    write(tmp_path / "scan" / "sub" / "clean.txt", b"clean\n")
    r = bastion(["add", "nightly", "--at", "30 2 * * *", str(tmp_path / "scan")], tmp_path)
    assert r.returncode == 0 and "next 20" in r.stdout
    assert bastion(["add", "bad", "--at", "99 * * * *", str(tmp_path)], tmp_path).returncode == 2
    listed = json.loads(bastion(["list", "--json"], tmp_path).stdout)
    assert listed["name"] == "nightly" and listed["kind"] == "custom" and listed["last_run"] is None
    r = bastion(["run", "nightly"], tmp_path)
    assert r.returncode == 1 and "eicar.com: Bastion.Test.EICAR FOUND" in r.stdout
    assert "nightly: 2 files, 1 infected, 0 errors" in r.stdout
    after = json.loads(bastion(["list", "--json"], tmp_path).stdout)
    assert after["last_run"] and after["last_summary"]["infected"] == 1
    assert (tmp_path / "scan" / "eicar.com").exists()  # report-only
    evs = [json.loads(x) for x in (tmp_path / "cache" / "events.jsonl").read_text().splitlines()]
    run_event = [e for e in evs if e["event"]["action"] == "schedule-run"][-1]
    assert run_event["bastion"]["schedule"] == "nightly" and run_event["bastion"]["infected"] == 1
    assert any(e["event"]["action"] == "detection" and e["bastion"]["schedule"] == "nightly" for e in evs)
    assert bastion(["remove", "nightly"], tmp_path).returncode == 0
    assert bastion(["list"], tmp_path).stdout == ""
    assert bastion(["remove", "nightly"], tmp_path).returncode == 1


def test_run_due_runs_each_due_schedule_once(tmp_path: Path) -> None:
    victim = write(tmp_path / "scan" / "eicar.com", EICAR)
    bastion(["add", "often", "--at", "* * * * *", "--move-to-quarantine", str(tmp_path / "scan")], tmp_path)
    bastion(["add", "never-yet", "--at", "0 0 1 1 *", str(tmp_path / "scan")], tmp_path)
    path = tmp_path / "cache" / "schedules.json"
    doc = json.loads(path.read_text())
    for s in doc["schedules"]:
        s["created"] = "2026-01-01T00:00:00" if s["name"] == "often" else datetime.now().isoformat()
    path.write_text(json.dumps(doc))
    while datetime.now().second >= 45:  # the checks below must all fall within one minute
        time.sleep(0.5)
    r = bastion(["run-due"], tmp_path)
    assert "often: 1 files, 1 infected" in r.stdout and "never-yet" not in r.stdout
    assert not victim.exists()  # this schedule was told to quarantine
    q = subprocess.run([sys.executable, "-m", "bastion.cli.main", "quarantine", "list", "--json"],
                       capture_output=True, text=True, env=bastion_env(tmp_path / "cache"), timeout=60)
    assert json.loads(q.stdout)["original_path"] == str(victim)
    assert bastion(["run-due"], tmp_path).stdout == ""  # just ran: not due again this minute


def test_quick_and_full_targets() -> None:
    from bastion.schedule.store import Schedule

    assert Schedule("f", "@daily", "full").targets() == ["/"]
    assert "/tmp" in Schedule("q", "@daily", "quick").targets()


def test_systemd_timer_units() -> None:
    analyze = shutil.which("systemd-analyze")
    units = [REPO / "packaging" / "systemd" / n for n in ("bastion-schedule.service", "bastion-schedule.timer",
                                                           "bastion-update.service", "bastion-update.timer")]
    assert "OnCalendar=minutely" in units[1].read_text() and "schedule run-due" in units[0].read_text()
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    r = subprocess.run([analyze, "verify", "--man=no", *map(str, units)], capture_output=True, text=True, timeout=60)
    assert not [x for x in r.stderr.splitlines() if "bastion-" in x and "executable" not in x.lower()]
