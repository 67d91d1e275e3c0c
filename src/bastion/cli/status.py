"""``bastion status``: the active database, how old it is, and every update source's last success,
with a warning for a source that has gone silent (the vendor-left scenario).

    bastion status [--config bastion.toml] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bastion.cli.common import parse_command_line
from bastion.dbstore.store import DatabaseStore
from bastion.feed.sources import SourceState, load_config
from bastion.paths import bastion_toml


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion status", description="Database and update-source health.")
    p.add_argument("--config", default=None, metavar="FILE", help="bastion.toml (for silent_days and sources)")
    p.add_argument("--store", default=None, metavar="DIR")
    p.add_argument("--json", action="store_true")
    return p


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    silent_days, configured = 7.0, []
    config = bastion_toml(args.config)
    if config:
        cfg = load_config(config)
        silent_days, configured = cfg.silent_days, [s.name for s in cfg.sources]
    store = DatabaseStore(args.store)
    now = time.time()
    active = store.active_id()
    records = [r for r in store.log.records() if r.get("version") == active]
    activated = records[-1]["time"] if records else None
    sources = SourceState(store.root).all()
    for name in configured:
        sources.setdefault(name, {})
    report = {"active": active, "activated": activated, "sources": {}, "warnings": []}
    if active is None:
        report["warnings"].append("no database version is active (bastion db stage ... --activate, or bastion update)")
    for name, st in sorted(sources.items()):
        success = st.get("last_success")
        entry = {"last_success_age_s": None if success is None else round(now - success), "detail": st.get("detail"),
                 "error": st.get("error")}
        report["sources"][name] = entry
        if success is None:
            report["warnings"].append(f"{name}: never updated successfully")
        elif now - success > silent_days * 86400:
            report["warnings"].append(f"{name}: silent for {_age(now - success)} (more than {silent_days:g} days): "
                                      "the source may have stopped publishing")
    if args.json:
        print(json.dumps(report))
    else:
        print(f"database: {active or 'none active'}" + (f", activated {activated}" if activated else ""))
        for name, entry in report["sources"].items():
            age = "never" if entry["last_success_age_s"] is None else f"{_age(entry['last_success_age_s'])} ago"
            extra = f"; last error: {entry['error']}" if entry["error"] else ""
            print(f"  {name}: last success {age} ({entry['detail'] or '-'}){extra}")
        for w in report["warnings"]:
            print(f"WARNING: {w}", file=sys.stderr)
    return 1 if report["warnings"] else 0
