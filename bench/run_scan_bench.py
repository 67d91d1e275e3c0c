#!/usr/bin/env python3
"""Bastion vs ClamAV scan benchmark: bastion-clamscan against Debian's clamscan on the same work.

    python bench/run_scan_bench.py --workdir DIR [--quick] [--corpus-mib N] [--repeat 3]
                                   [--bastion CMD] [--clamscan PATH] [--jobs N]

Generates the workload under DIR when missing (gen_db.py + gen_corpus.py logic, deterministic), then
measures for each tool (median of --repeat runs):

* DB load, cold cache:  X -d DB --no-summary EMPTYFILE   (BASTION_CACHE_DIR = new empty dir per run)
* DB load, warm cache:  the same with the cache filled     (clamscan has no cache: same command again)
* full scan incl. load: X [-j N] -d DB -r CORPUS --no-summary -i   (bastion: warm and cold cache)
* peak RSS (GNU time's %M: ru_maxrss of the largest single process) and a sampled peak PSS of the whole
  process tree (covers bastion's worker processes)
* detections: sets of (path relative to CORPUS, name) parsed from "path: Name FOUND" lines, compared
  between the tools and against the planted ground truth (expected-*.json)

Prints a Markdown table (speedup = clamscan_time / bastion_time; RSS ratio = bastion / clamscan) and writes
all raw runs to DIR/results/<timestamp>.json.  Runs with clamscan alone when bastion-clamscan is missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workload import WORKLOAD_VERSION, generate_corpus, generate_db

FULL = {"hdb": 1_000_000, "hsb": 200_000, "ndb": 50_000, "plants": 200, "corpus_mib": 1024.0}
QUICK = {"hdb": 20_000, "hsb": 5_000, "ndb": 2_000, "plants": 60, "corpus_mib": 64.0}
FOUND_RE = re.compile(r"^(?P<path>.*): (?P<name>\S+) FOUND$")

TARGET_SCAN_SPEEDUP = 3.0
TARGET_WARM_SPEEDUP = 10.0
TARGET_RSS_RATIO = 0.5


# --------------------------------------------------------------------------------------------------
# Measuring one command
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    cmd: list[str]
    wall_s: float
    rc: int
    maxrss_kib: int
    cpu_s: float
    tree_pss_kib: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _pss_kib(pid: int) -> int:
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


def _tree_pss_kib(root: int) -> int:
    kids = _children()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _pss_kib(pid)
        todo.extend(kids.get(pid, ()))
    return total


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
# Fallback when GNU time is absent: a small Python parent that fork()s + exec()s the command and records
# wait4()'s rusage.  (Do not measure with wait4 from this process: subprocess spawns with vfork, and Linux
# carries the parent's RSS high-water mark into the exec'd child's ru_maxrss.  A fork()ed child starts
# from the wrapper's current RSS, ~10 MiB, which is the error bound of this fallback.)
_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}\\n")
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_measured(cmd: list[str], env: dict[str, str], sample_s: float = 0.1) -> Run:
    """Run ``cmd``: wall time, exit code, peak RSS and CPU (GNU time's %M %U %S, else a fork wrapper's
    wait4), and the sampled peak PSS of its process tree."""
    with tempfile.TemporaryDirectory() as td, tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        rfile = os.path.join(td, "rusage")
        if GNU_TIME:
            wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", rfile, *cmd]
        else:
            wrapped = [sys.executable, "-c", _WRAPPER, rfile, *cmd]
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env)
        peak = 0
        done = threading.Event()

        def sampler() -> None:
            nonlocal peak
            while not done.wait(sample_s):
                try:
                    peak = max(peak, _tree_pss_kib(proc.pid))
                except (OSError, ValueError):
                    pass

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        done.set()
        th.join()
        fo.seek(0)
        fe.seek(0)
        out = fo.read().decode("utf-8", "replace")
        err = fe.read().decode("utf-8", "replace")
        try:  # GNU time may prefix "Command exited with non-zero status N"
            last = Path(rfile).read_text().strip().splitlines()[-1].split()
            maxrss, cpu = int(last[0]), float(last[1]) + float(last[2])
        except (OSError, IndexError, ValueError):
            maxrss, cpu = 0, 0.0
    return Run(cmd, wall, rc, maxrss, cpu, peak, out, err)


def parse_detections(stdout: str, corpus: Path) -> set[tuple[str, str]]:
    found = set()
    root = str(corpus)
    for line in stdout.splitlines():
        m = FOUND_RE.match(line)
        if m:
            found.add((os.path.relpath(m["path"], root), m["name"]))
    return found


# --------------------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    root: Path
    db: Path
    corpus: Path
    empty: Path
    expected: dict[str, Any]


def ensure_workload(workdir: Path, p: dict[str, Any], seed: int, wildcard_share: float) -> Workload:
    key = f"h{p['hdb']}-s{p['hsb']}-n{p['ndb']}-p{p['plants']}-w{wildcard_share:g}-seed{seed}"
    root = workdir / key
    db, plants = root / "db", root / "plants.json"
    db_done = root / "db.done.json"
    params = {
        "hdb": p["hdb"],
        "hsb": p["hsb"],
        "ndb": p["ndb"],
        "plants": p["plants"],
        "seed": seed,
        "wildcard_share": wildcard_share,
        "workload_version": WORKLOAD_VERSION,
    }
    if not db_done.exists() or json.loads(db_done.read_text()) != params:
        print(f"# generating DB in {db} ...", file=sys.stderr)
        shutil.rmtree(db, ignore_errors=True)
        for f in root.glob("expected-*.json"):  # corpora depend on the plants
            f.unlink()
        t0 = time.perf_counter()
        generate_db(
            db,
            n_hdb=p["hdb"],
            n_hsb=p["hsb"],
            n_ndb=p["ndb"],
            n_plants=p["plants"],
            seed=seed,
            plants_path=plants,
            wildcard_share=wildcard_share,
        )
        db_done.write_text(json.dumps(params))
        print(f"#   done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    mib = p["corpus_mib"]
    corpus = root / f"corpus-{mib:g}m"
    exp_path = root / f"expected-{mib:g}m.json"
    if exp_path.exists() and json.loads(exp_path.read_text()).get("workload_version") != WORKLOAD_VERSION:
        exp_path.unlink()
    if not exp_path.exists():
        print(f"# generating {mib:g} MiB corpus in {corpus} ...", file=sys.stderr)
        shutil.rmtree(corpus, ignore_errors=True)
        t0 = time.perf_counter()
        generate_corpus(corpus, json.loads(plants.read_text()), mib, seed, exp_path)
        print(f"#   done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    empty = root / "empty"
    empty.touch()
    return Workload(root, db, corpus, empty, json.loads(exp_path.read_text()))


def warm_page_cache(path: Path) -> None:
    """Read every corpus/DB file once so both tools start from the same (hot) page cache."""
    for dirpath, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 22):
                    pass


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------


@dataclass
class ToolResult:
    name: str
    cmd: list[str] | None
    version: str = ""
    runs: dict[str, list[Run]] = field(default_factory=dict)
    detections: set[tuple[str, str]] | None = None
    notes: list[str] = field(default_factory=list)

    def med(self, metric: str, attr: str = "wall_s") -> float | None:
        runs = self.runs.get(metric)
        return statistics.median(getattr(r, attr) for r in runs) if runs else None


def _version(cmd: list[str]) -> str:
    try:
        r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
        return (r.stdout.strip() or r.stderr.strip()).splitlines()[0] if (r.stdout or r.stderr) else "?"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def bench_tool(
    tr: ToolResult, wl: Workload, repeat: int, scan_repeat: int, jobs: int, cold_scan: bool, scratch: Path
) -> None:
    assert tr.cmd is not None
    is_bastion = tr.name == "bastion"
    base_env = dict(os.environ)
    warm_cache = wl.root / "bastion-cache"
    load_cmd = [*tr.cmd, "-d", str(wl.db), "--no-summary", str(wl.empty)]
    jobs_args = ["-j", str(jobs)] if is_bastion and jobs > 0 else []
    scan_cmd = [*tr.cmd, *jobs_args, "-d", str(wl.db), "-r", str(wl.corpus), "--no-summary", "-i"]
    want_scan_rc = 1 if wl.expected["detections"] else 0

    def one(metric: str, cmd: list[str], cache: str, want_rc: int) -> Run:
        env = dict(base_env)
        cold_dir: Path | None = None
        if is_bastion:
            if cache == "cold":
                cold_dir = Path(tempfile.mkdtemp(prefix="cold-", dir=scratch))
                env["BASTION_CACHE_DIR"] = str(cold_dir)
            else:
                env["BASTION_CACHE_DIR"] = str(warm_cache)
        try:
            r = run_measured(cmd, env)
        finally:
            if cold_dir is not None:
                shutil.rmtree(cold_dir, ignore_errors=True)
        tr.runs.setdefault(metric, []).append(r)
        print(
            f"#   {tr.name:8s} {metric:10s} {r.wall_s:8.3f}s rc={r.rc} maxrss={r.maxrss_kib / 1024:.0f}MiB",
            file=sys.stderr,
        )
        if r.rc != want_rc:
            note = f"{metric}: exit code {r.rc} (expected {want_rc}); stderr: {r.stderr.strip()[-400:]!r}"
            if note not in tr.notes:
                tr.notes.append(note)
        return r

    for _ in range(repeat):
        one("load_cold", load_cmd, "cold", 0)
    if is_bastion:  # fill the warm cache (untimed in the table; kept in the raw results)
        shutil.rmtree(warm_cache, ignore_errors=True)
        warm_cache.mkdir(parents=True)
        one("cache_fill", load_cmd, "warm", 0)
    for _ in range(repeat):
        one("load_warm", load_cmd, "warm", 0)
    sets = []
    for _ in range(scan_repeat):
        sets.append(parse_detections(one("scan_warm", scan_cmd, "warm", want_scan_rc).stdout, wl.corpus))
    if is_bastion and cold_scan:
        for _ in range(scan_repeat):
            sets.append(parse_detections(one("scan_cold", scan_cmd, "cold", want_scan_rc).stdout, wl.corpus))
    tr.detections = sets[0]
    if any(s != sets[0] for s in sets):
        tr.notes.append("detections differ between repetitions")
    for line in (tr.runs["scan_warm"][0].stderr.strip().splitlines())[:5]:
        tr.notes.append(f"scan stderr: {line}")


def _fmt_s(v: float | None) -> str:
    return "missing" if v is None else f"{v:.3f}"


def _fmt_mib(v: float | None) -> str:
    return "missing" if v is None else f"{v / 1024:.0f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def report(clam: ToolResult, bast: ToolResult, wl: Workload, meta: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str, str]] = []

    def time_row(label: str, cm: str, bm: str, target: float | None) -> None:
        c, b = clam.med(cm), bast.med(bm)
        sp = _ratio(c, b)
        rows.append(
            (
                label,
                _fmt_s(c),
                _fmt_s(b) if b is not None or not bast.cmd else "not run",
                "n/a" if sp is None else f"{sp:.2f}× faster",
                f"≥{target:g}× faster" if target else "",
                _status(None if sp is None else sp >= target) if target else "",
            )
        )

    time_row("DB load, cold cache (s)", "load_cold", "load_cold", None)
    time_row("DB load, warm cache / warm start (s)", "load_warm", "load_warm", TARGET_WARM_SPEEDUP)
    time_row("full scan incl. load, warm cache (s)", "scan_warm", "scan_warm", TARGET_SCAN_SPEEDUP)
    time_row("full scan incl. load, cold cache (s)¹", "scan_warm", "scan_cold", None)
    mib = wl.expected["bytes"] / 2**20
    c, b = clam.med("scan_warm"), bast.med("scan_warm")
    rows.append(
        (
            "full scan throughput, warm (MiB/s)",
            "missing" if c is None else f"{mib / c:.1f}",
            "missing" if b is None else f"{mib / b:.1f}",
            "",
            "",
            "",
        )
    )

    def mem_row(label: str, metric: str, attr: str, target: float | None) -> None:
        cv, bv = clam.med(metric, attr), bast.med(metric, attr)
        r = _ratio(bv, cv)
        rows.append(
            (
                label,
                _fmt_mib(cv),
                _fmt_mib(bv),
                "n/a" if r is None else f"{r:.2f}×",
                f"≤{target:g}×" if target else "",
                _status(None if r is None else r <= target) if target else "",
            )
        )

    mem_row("peak RSS, full scan (MiB)", "scan_warm", "maxrss_kib", TARGET_RSS_RATIO)
    mem_row("peak PSS of process tree, full scan (MiB, sampled)", "scan_warm", "tree_pss_kib", None)
    mem_row("peak RSS, warm DB load (MiB)", "load_warm", "maxrss_kib", None)
    cc, bc = clam.med("scan_warm", "cpu_s"), bast.med("scan_warm", "cpu_s")
    rows.append(("CPU time user+sys, full scan (s)", _fmt_s(cc), _fmt_s(bc), "", "", ""))

    exp = {(d["path"], d["reported"]) for d in wl.expected["detections"]}

    def det_cell(t: ToolResult) -> str:
        if t.detections is None:
            return "missing"
        miss, extra = len(exp - t.detections), len(t.detections - exp)
        tag = "= planted" if not miss and not extra else f"{miss} missed, {extra} unplanted"
        return f"{len(t.detections)} ({tag})"

    same = None if clam.detections is None or bast.detections is None else clam.detections == bast.detections
    rows.append(
        (
            "detections (path, name)",
            det_cell(clam),
            det_cell(bast),
            "n/a" if same is None else ("identical" if same else "DIFFERENT"),
            "identical",
            _status(same),
        )
    )

    lines = [
        f"Workload: {meta['workload']}",
        f"Corpus: {wl.expected['files']} files, {mib:.1f} MiB; planted detections: "
        f"{len(wl.expected['detections'])}; repeats: {meta['repeat']} (median); CPUs: {os.cpu_count()}",
        f"clamscan: {clam.version or 'missing'} | bastion: {bast.version or 'missing'}",
        "",
        "| metric | clamscan | bastion | ratio | target | status |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append("¹ clamscan has no compiled-DB cache: its cold and warm figures are the same command.")
    if clam.detections is not None and bast.detections is not None and not same:
        only_c = sorted(clam.detections - bast.detections)
        only_b = sorted(bast.detections - clam.detections)
        lines += ["", f"only clamscan ({len(only_c)}): {only_c[:10]}", f"only bastion ({len(only_b)}): {only_b[:10]}"]
    if clam.detections is not None and clam.detections != exp:
        lines += [
            "",
            f"WARNING: clamscan's detections differ from the planted ground truth: missed "
            f"{sorted(exp - clam.detections)[:10]}, unplanted {sorted(clam.detections - exp)[:10]}",
        ]
    for t in (clam, bast):
        for n in t.notes:
            lines.append(f"note ({t.name}): {n}")
    lines += ["", "Commands:", "```"]
    for t in (clam, bast):
        for metric in ("load_cold", "load_warm", "scan_warm", "scan_cold"):
            if t.runs.get(metric):
                env = "BASTION_CACHE_DIR=<" + ("new empty dir" if metric.endswith("cold") else "warm cache") + "> "
                lines.append(
                    f"[{t.name} {metric}] {env if t.name == 'bastion' else ''}{shlex.join(t.runs[metric][0].cmd)}"
                )
    lines.append("```")
    return "\n".join(lines)


def resolve_cmd(spec: str | None, default: str) -> list[str] | None:
    if spec:
        parts = shlex.split(spec)
        exe = shutil.which(parts[0])
        return [exe, *parts[1:]] if exe else None
    exe = shutil.which(default)
    return [exe] if exe else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="where the workload and results live")
    ap.add_argument(
        "--quick", action="store_true", help="small workload (20k hdb, 5k hsb, 2k ndb, 60 plants, 64 MiB corpus)"
    )
    ap.add_argument("--corpus-mib", type=float, default=None)
    ap.add_argument("--hdb", type=int, default=None)
    ap.add_argument("--hsb", type=int, default=None)
    ap.add_argument("--ndb", type=int, default=None)
    ap.add_argument("--plants", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--wildcard-share", type=float, default=0.4)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median), default 3")
    ap.add_argument("--scan-repeat", type=int, default=None, help="runs per full-scan measurement")
    ap.add_argument("--clamscan", default=None, help="clamscan command (default: clamscan on PATH)")
    ap.add_argument("--bastion", default=None, help="bastion-clamscan command (default: on PATH)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="-j passed to bastion-clamscan for full scans (0: do not pass -j)",
    )
    ap.add_argument("--no-cold-scan", action="store_true", help="skip bastion's cold-cache full scans")
    ap.add_argument("--no-page-cache-warmup", action="store_true")
    args = ap.parse_args(argv)

    prof = dict(QUICK if args.quick else FULL)
    for k in ("hdb", "hsb", "ndb", "plants", "corpus_mib"):
        if getattr(args, k) is not None:
            prof[k] = getattr(args, k)
    args.workdir.mkdir(parents=True, exist_ok=True)
    wl = ensure_workload(args.workdir.resolve(), prof, args.seed, args.wildcard_share)
    if not args.no_page_cache_warmup:
        warm_page_cache(wl.corpus)
        warm_page_cache(wl.db)

    clam = ToolResult("clamscan", resolve_cmd(args.clamscan, "clamscan"))
    bast = ToolResult("bastion", resolve_cmd(args.bastion, "bastion-clamscan"))
    if clam.cmd is None and bast.cmd is None:
        print("error: neither clamscan nor bastion-clamscan found", file=sys.stderr)
        return 2
    scratch = args.workdir.resolve() / "cold-caches"
    scratch.mkdir(exist_ok=True)
    scan_repeat = args.scan_repeat or args.repeat
    for t in (clam, bast):
        if t.cmd is None:
            print(f"# {t.name}: not found, reported as missing", file=sys.stderr)
            continue
        t.version = _version(t.cmd)
        print(f"# benchmarking {t.name}: {shlex.join(t.cmd)} ({t.version})", file=sys.stderr)
        bench_tool(t, wl, args.repeat, scan_repeat, args.jobs, not args.no_cold_scan, scratch)

    meta = {
        "workload": wl.root.name,
        "repeat": args.repeat,
        "scan_repeat": scan_repeat,
        "jobs": args.jobs,
        "profile": prof,
        "cpus": os.cpu_count(),
    }
    text = report(clam, bast, wl, meta)
    print(text)
    resdir = args.workdir / "results"
    resdir.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = {
        "meta": meta,
        "tools": {
            t.name: {
                "cmd": t.cmd,
                "version": t.version,
                "notes": t.notes,
                "detections": sorted(t.detections) if t.detections is not None else None,
                "runs": {
                    m: [{k: v for k, v in asdict(r).items() if k not in ("stdout", "stderr")} for r in rs]
                    for m, rs in t.runs.items()
                },
            }
            for t in (clam, bast)
        },
        "report": text,
    }
    out = resdir / f"scan-bench-{stamp}.json"
    out.write_text(json.dumps(raw, indent=1) + "\n")
    print(f"\n(raw results: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
