#!/usr/bin/env python3
"""Daemon load benchmark: Bastion's clamd-compatible daemon against Debian's clamd, same database,
same clients, in one run.

    python bench/run_daemon_bench.py --workdir DIR [--clients 64] [--seconds 20] [--files 400]
                                     [--signatures DIR] [--bastion-clamd CMD] [--clamd PATH]
                                     [--client c|python] [--reload-mode yes|no] [--soak]

For each daemon: start it on a unix socket in DIR, wait for PONG, then ``--clients`` clients send the
corpus files by ``zINSTREAM`` (8 KiB chunks, as clamdscan) in a loop for ``--seconds``; count replies,
errors (anything but ``stream: OK``/``FOUND``, or a wrong verdict) and per-request latency.  The
clients are ``bench/instream_load.c`` (compiled here with the system's cc; a Python client on the same
2 cores would be what is measured) or, with ``--client python``, threads of this process.

Memory is sampled every 0.2 s, as PSS of the daemon process and of its whole process tree (the
compile child included).  After the steady phase a small signature file is added to the database
directory and ``RELOAD`` is sent while the load goes on; the reload phase lasts until the new
signature answers, plus 2 s.  Its peak is compared with the steady phase's peak (issue 6: at most
1.2x for Bastion; clamd needs about 2x).  ``--reload-mode`` sets Bastion's ConcurrentDatabaseReload.
``--soak`` makes the steady phase 600 s and reports PSS growth from its second minute (after the
warm-up) to its last one; ``--samples FILE`` keeps every sample for a plot.
``--reload-change edit``: instead of adding a file, edit the database the way a daily update does:
in every signature file 0.1% of the lines are removed and as many new ones added (the probe signature
among them), each file replaced by rename (Bastion's reload then compiles the changed lines only).
``--via-store``: both daemons serve the active version of a ``bastion db`` store, and the reload is
the updater's path: ``bastion db stage ... --activate`` (a separate process compiles and self-tests)
then RELOAD, so Bastion's daemon only loads the new version.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from run_scan_bench import _pss_kib, _tree_pss_kib
from workload import link_or_generate_db

CHUNK = 8192
PLANT = b"daemon-bench-plant-" + bytes.fromhex("deadbeef") + b"-7f3a"


def make_workload(root: Path, files: int, signatures: Path | None, seed: int) -> tuple[Path, list[tuple[bytes, bool]]]:
    db = root / "db"
    if not db.exists():
        link_or_generate_db(db, signatures, seed, root)
        (db / "plant.ndb").write_text(f"Bench.Daemon.Plant:0:*:{PLANT.hex()}\n")
    rng = random.Random(seed)
    corpus = []
    for n in range(files):
        size = rng.choice([2_000, 20_000, 60_000, 200_000])
        data = rng.randbytes(size) if n % 2 else bytes(rng.choice(b"abcdefgh ijklmnop\n") for _ in range(size))
        infected = n % 10 == 0
        if infected:
            at = rng.randint(0, len(data))
            data = data[:at] + PLANT + data[at:]
        corpus.append((data, infected))
    return db, corpus


def instream(sock_path: str, data: bytes, timeout: float = 60) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(b"zINSTREAM\0")
        for i in range(0, len(data), CHUNK):
            part = data[i:i + CHUNK]
            s.sendall(len(part).to_bytes(4, "big") + part)
        s.sendall(bytes(4))
        out = b""
        while not out.endswith(b"\0"):
            got = s.recv(4096)
            if not got:
                break
            out += got
        return out


def wait_ready(sock_path: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the daemon exited while starting")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(sock_path)
                s.sendall(b"zPING\0")
                if s.recv(16) == b"PONG\0":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the daemon did not answer PING")


def load(sock_path: str, corpus: list[tuple[bytes, bool]], clients: int, seconds: float,
         halt: threading.Event | None = None) -> dict:
    stop = time.monotonic() + seconds
    halt = halt or threading.Event()
    latencies: list[float] = []
    errors = [0]
    nbytes = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop and not halt.is_set():
            data, infected = corpus[i % len(corpus)]
            i += clients
            t0 = time.perf_counter()
            try:
                reply = instream(sock_path, data)
                ok = reply.endswith(b"FOUND\0") if infected else reply == b"stream: OK\0"
            except OSError:
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                nbytes[0] += len(data)
                errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"requests": len(latencies), "wall": wall, "bytes": nbytes[0], "errors": errors[0],
            "p50": statistics.median(latencies) if latencies else 0.0,
            "p99": latencies[int(len(latencies) * 0.99)] if latencies else 0.0}


class MemorySampler:
    """PSS of the daemon and of its process tree every 0.2 s, in labelled phases."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phase = "warm-up"
        self.samples: list[tuple[str, float, float, float]] = []  # phase, time, process MiB, tree MiB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append((self.phase, time.monotonic(), _pss_kib(self.pid) / 1024,
                                 _tree_pss_kib(self.pid) / 1024))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, phase: str, column: int) -> float:
        return max((s[column] for s in self.samples if s[0] == phase), default=0.0)

    def window(self, phase: str, first: bool) -> float:
        """Median tree PSS early in a phase, after the warm-up (its second minute; the first minute is
        when each worker thread makes its scratch space: 54 -> 66 MiB, then flat, in a 10-minute
        soak), or over its last minute.  Runs shorter than 3 minutes use their first and last third."""
        rows = [s for s in self.samples if s[0] == phase]
        if not rows:
            return 0.0
        t0, t1 = rows[0][1], rows[-1][1]
        span = t1 - t0
        if span >= 180:
            lo, hi = (t0 + 60, t0 + 120) if first else (t1 - 60, t1)
        else:
            lo, hi = (t0, t0 + span / 3) if first else (t1 - span / 3, t1)
        return statistics.median([s[3] for s in rows if lo <= s[1] <= hi] or [rows[0][3]])


def c_client(workdir: Path) -> Path | None:
    """bench/instream_load.c compiled into the work directory (None without a C compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = workdir / "instream_load"
    src = Path(__file__).with_name("instream_load.c")
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run([cc, "-O2", "-pthread", "-o", str(exe), str(src)], check=True)
    return exe


def load_c(exe: Path, sock_path: str, listing: Path, clients: int, seconds: float) -> dict:
    out = subprocess.run([str(exe), sock_path, str(clients), str(seconds), str(listing)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def edit_like_an_update(db: Path, probe_line: str, rng: random.Random) -> None:
    """What a daily update does to a database: in every signature file, 0.1% of the lines removed and
    as many new ones added (the probe with the .ndb's); each file replaced by a rename."""
    for path in sorted(db.iterdir()):
        if path.suffix not in (".ndb", ".hdb", ".hsb") or path.name in ("plant.ndb", "zz-reload.ndb"):
            continue
        lines = path.read_bytes().splitlines(keepends=True)
        n = max(1, len(lines) // 1000)
        gone = set(rng.sample(range(len(lines)), n))
        kept = [line for i, line in enumerate(lines) if i not in gone]
        fresh = []
        for i in range(n):
            if path.suffix == ".ndb":
                fresh.append(f"Bench.Update.Body.{i}:0:*:{rng.randbytes(12).hex()}\n".encode())
            else:
                digest = rng.randbytes(16 if path.suffix == ".hdb" else 32).hex()
                fresh.append(f"{digest}:{rng.randint(100, 10**6)}:Bench.Update.Hash.{i}\n".encode())
        if path.suffix == ".ndb":
            fresh[0] = probe_line.encode()
        for line in fresh:
            kept.insert(rng.randint(0, len(kept)), line)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, path)  # replaces the link to the benchmark's database, not its file


def restore_links(db: Path, signatures: Path | None) -> None:
    """Undo an earlier run's edits: the database's files are links to ``--signatures`` again."""
    if signatures is None:
        return
    for src in sorted(signatures.iterdir()):
        target = db / src.name
        if src.is_file() and not target.is_symlink():
            target.unlink(missing_ok=True)
            target.symlink_to(src.resolve())


def run_one(cmd: list[str], conf: Path, sock_path: str, db: Path, corpus: list, args: argparse.Namespace,
            env: dict[str, str], listing: Path | None, exe: Path | None) -> dict:
    seconds = 600.0 if args.soak else args.seconds

    def drive(n_clients: int, secs: float, files: list | None = None) -> dict:
        if exe is not None and listing is not None and files is None:
            return load_c(exe, sock_path, listing, n_clients, secs)
        return load(sock_path, files or corpus, n_clients, secs)

    extra = db / "zz-reload.ndb"
    extra.unlink(missing_ok=True)
    restore_links(db, args.signatures)
    proc = subprocess.Popen([*cmd, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    sampler = None
    try:
        wait_ready(sock_path, proc)
        drive(4, 2, corpus[:20])  # warm up
        sampler = MemorySampler(proc.pid)
        sampler.phase = "steady"
        result = drive(args.clients, seconds)
        # reload under load: a new signature file, RELOAD, keep the clients going until it answers
        probe = b"reload-bench-" + os.urandom(4).hex().encode() + b"-probe"
        sampler.phase = "reload"
        if args.via_store:
            # the updater's path: `bastion db stage` (its own process, not the daemon's) compiles and
            # self-tests the new version and activates it; the daemon then only loads it
            update = Path(env["BASTION_DB_STORE"]).parent / "update"
            shutil.rmtree(update, ignore_errors=True)
            update.mkdir()
            (update / "zz-reload.ndb").write_text(f"Bench.Daemon.Reloaded:0:*:{probe.hex()}\n")
            subprocess.run([*shlex.split(args.bastion), "db", "stage", str(db), str(update), "--activate"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        elif args.reload_change == "edit":
            edit_like_an_update(db, f"Bench.Daemon.Reloaded:0:*:{probe.hex()}\n", random.Random(args.seed))
        else:
            extra.write_text(f"Bench.Daemon.Reloaded:0:*:{probe.hex()}\n")
        halt = threading.Event()
        reload_result: dict = {}
        t0 = time.monotonic()
        # a quarter of the clients keep scanning through the reload (Python threads: they must stop
        # when the reload is seen, which a fixed-length C run cannot)
        loader = threading.Thread(target=lambda: reload_result.update(
            load(sock_path, corpus, max(1, args.clients // 4), 3600, halt)), daemon=True)
        loader.start()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock_path)
            s.sendall(b"zRELOAD\0")
            s.recv(64)
        reload_seconds = None
        while time.monotonic() - t0 < 300:
            try:
                if instream(sock_path, probe).endswith(b"FOUND\0"):
                    reload_seconds = time.monotonic() - t0
                    break
            except OSError:
                pass
            time.sleep(0.2)
        time.sleep(2)
        halt.set()
        loader.join()
        sampler.stop()
        result["reload_seconds"] = reload_seconds
        result["reload_errors"] = reload_result.get("errors", 0)
        result["steady_process"] = sampler.peak("steady", 2)
        result["steady_tree"] = sampler.peak("steady", 3)
        result["reload_process"] = sampler.peak("reload", 2)
        result["reload_tree"] = sampler.peak("reload", 3)
        result["pss_start"] = sampler.window("steady", True)
        result["pss_end"] = sampler.window("steady", False)
        result["samples"] = sampler.samples
        return result
    finally:
        if sampler is not None:
            sampler.stop()
        extra.unlink(missing_ok=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--signatures", type=Path, default=None)
    ap.add_argument("--bastion-clamd", default=shutil.which("bastion-clamd") or "bastion-clamd")
    ap.add_argument("--clamd", default=shutil.which("clamd") or "/usr/sbin/clamd")
    ap.add_argument("--threads", type=int, default=10, help="MaxThreads for both daemons (clamd's default)")
    ap.add_argument("--client", choices=["c", "python"], default="c")
    ap.add_argument("--reload-mode", choices=["yes", "no"], default="yes",
                    help="Bastion's ConcurrentDatabaseReload (clamd keeps its default, yes)")
    ap.add_argument("--only", choices=["clamd", "bastion"], default=None, help="run one daemon")
    ap.add_argument("--soak", action="store_true", help="600 s steady phase per daemon; report memory growth")
    ap.add_argument("--reload-change", choices=["file", "edit"], default="file",
                    help="the change before RELOAD: a new small file, or an update-like edit of every file")
    ap.add_argument("--via-store", action="store_true",
                    help="both daemons serve `bastion db`'s active version; the reload is a staged activation")
    ap.add_argument("--bastion", default=shutil.which("bastion") or "bastion", help="the bastion command (--via-store)")
    ap.add_argument("--samples", type=Path, default=None, metavar="CSV",
                    help="write every memory sample (daemon, phase, seconds, process MiB, tree MiB) here")
    args = ap.parse_args(argv)
    if args.reload_change == "edit" and not args.signatures:
        ap.error("--reload-change edit needs --signatures (the generated database is not restored after an edit)")
    seconds = 600.0 if args.soak else args.seconds
    root = args.workdir / (f"daemon-n{args.files}-seed{args.seed}" + ("-sig" if args.signatures else ""))
    root.mkdir(parents=True, exist_ok=True)
    db, corpus = make_workload(root, args.files, args.signatures, args.seed)
    exe = c_client(root) if args.client == "c" else None
    listing = None
    if exe is not None:
        files_dir = root / "corpus"
        files_dir.mkdir(exist_ok=True)
        lines = []
        for n, (data, infected) in enumerate(corpus):
            path = files_dir / f"f{n:05d}.bin"
            if not path.exists():
                path.write_bytes(data)
            lines.append(f"{int(infected)} {path}\n")
        listing = root / "corpus.list"
        listing.write_text("".join(lines))
    cache = Path(tempfile.mkdtemp(prefix="bastion-daemon-bench-cache-"))
    env = dict(os.environ, BASTION_CACHE_DIR=str(cache), BASTION_EVENTS_FILE=str(cache / "events.jsonl"))
    results = {}
    daemons = (("clamd", [args.clamd, "-F"]), ("bastion", [*shlex.split(args.bastion_clamd), "-F"]))
    for label, cmd in daemons:
        if args.only and label != args.only:
            continue
        sock_path = str(root / f"{label}.sock")
        conf = root / f"{label}.conf"
        reload_mode = args.reload_mode if label == "bastion" else "yes"
        serve = db
        if args.via_store:
            store = root / f"store-{label}"
            shutil.rmtree(store, ignore_errors=True)
            env["BASTION_DB_STORE"] = str(store)
            subprocess.run([*shlex.split(args.bastion), "db", "stage", str(db), "--activate"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            serve = store / "active"
        conf.write_text(f"LocalSocket {sock_path}\nDatabaseDirectory {serve}\nMaxThreads {args.threads}\n"
                        f"StreamMaxLength 100M\nForeground yes\nSelfCheck 0\n"
                        f"ConcurrentDatabaseReload {reload_mode}\n")
        results[label] = run_one(cmd, conf, sock_path, db, corpus, args, env, listing, exe)
        samples = results[label].pop("samples")
        if args.samples:
            t0 = samples[0][1] if samples else 0.0
            with args.samples.open("a") as fh:
                fh.writelines(f"{label},{ph},{t - t0:.1f},{p:.1f},{tr:.1f}\n" for ph, t, p, tr in samples)
        print(f"{label}: {json.dumps(results[label])}", file=sys.stderr)
    shutil.rmtree(cache, ignore_errors=True)
    client = "C client (bench/instream_load.c)" if exe else "Python threads"
    print(f"{args.clients} clients ({client}), INSTREAM, {len(corpus)} files (2 KB-200 KB, 1 in 10 infected), "
          f"{seconds:g} s steady phase per daemon, MaxThreads {args.threads}, "
          f"Bastion ConcurrentDatabaseReload {args.reload_mode}\n")
    print("| measure | " + " | ".join(results) + " | ratio |\n|---|" + "---|" * len(results) + "---|")

    def row(name: str, fmt: Callable[[dict], str], ratio: Callable[[dict, dict], str] | None = None) -> None:
        cells = " | ".join(fmt(v) for v in results.values())
        both = "clamd" in results and "bastion" in results
        print(f"| {name} | {cells} | {ratio(results['clamd'], results['bastion']) if ratio and both else ''} |")

    row("requests/s", lambda v: f"{v['requests'] / v['wall']:.1f}",
        lambda c, b: f"{(b['requests'] / b['wall']) / (c['requests'] / c['wall']):.2f}x")
    row("MiB/s", lambda v: f"{v['bytes'] / v['wall'] / 2**20:.1f}")
    row("latency p50 / p99 (ms)", lambda v: f"{v['p50'] * 1000:.1f} / {v['p99'] * 1000:.1f}")
    row("errors (steady / during reload)", lambda v: f"{v['errors']} / {v['reload_errors']}")
    row("PSS steady peak, process / tree (MiB)", lambda v: f"{v['steady_process']:.0f} / {v['steady_tree']:.0f}",
        lambda c, b: f"{b['steady_tree'] / c['steady_tree']:.2f}x")
    row("PSS reload peak, process / tree (MiB)", lambda v: f"{v['reload_process']:.0f} / {v['reload_tree']:.0f}",
        lambda c, b: f"{b['reload_tree'] / c['reload_tree']:.2f}x")
    row("reload peak / steady peak, process / tree",
        lambda v: f"{v['reload_process'] / v['steady_process']:.2f}x / {v['reload_tree'] / v['steady_tree']:.2f}x")
    row("reload took (s, RELOAD to the new signature answering)",
        lambda v: f"{v['reload_seconds']:.1f}" if v["reload_seconds"] else "never")
    row("PSS after warm-up / last minute of steady phase (MiB)", lambda v: f"{v['pss_start']:.0f} / {v['pss_end']:.0f} "
        f"({(v['pss_end'] / v['pss_start'] - 1) * 100:+.0f}%)" if v["pss_start"] else "n/a")
    bad = sum(v["errors"] + v["reload_errors"] for v in results.values())
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
