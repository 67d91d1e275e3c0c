#!/usr/bin/env python3
"""Daemon load benchmark: Bastion's clamd-compatible daemon against Debian's clamd, same database,
same clients, in one run.

    python bench/run_daemon_bench.py --workdir DIR [--clients 64] [--seconds 20] [--files 400]
                                     [--signatures DIR] [--bastion-clamd CMD] [--clamd PATH] [--soak]

For each daemon: start it on a unix socket in DIR, wait for PONG, then ``--clients`` threads send the
corpus files by ``zINSTREAM`` (8 KiB chunks, as clamdscan) in a loop for ``--seconds``; count replies,
errors (anything but ``stream: OK``/``FOUND``, or a wrong verdict) and per-request latency; sample the
daemon's PSS (process tree) at the start and the end.  ``--soak`` runs 600 s and reports RSS growth.
Prints a Markdown table: throughput (requests/s, MiB/s), p50/p99 latency, errors, memory.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

from run_scan_bench import _tree_pss_kib
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


def load(sock_path: str, corpus: list[tuple[bytes, bool]], clients: int, seconds: float) -> dict:
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    nbytes = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
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


def run_one(label: str, cmd: list[str], conf: Path, sock_path: str, corpus: list, clients: int, seconds: float,
            env: dict[str, str]) -> dict:
    proc = subprocess.Popen([*cmd, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(sock_path, proc)
        load(sock_path, corpus[:20], 4, 2)  # warm up
        start_pss = _tree_pss_kib(proc.pid)
        result = load(sock_path, corpus, clients, seconds)
        result["pss_start"] = start_pss / 1024
        result["pss_end"] = _tree_pss_kib(proc.pid) / 1024
        return result
    finally:
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
    ap.add_argument("--soak", action="store_true", help="600 s per daemon; report memory growth")
    args = ap.parse_args(argv)
    seconds = 600.0 if args.soak else args.seconds
    root = args.workdir / (f"daemon-n{args.files}-seed{args.seed}" + ("-sig" if args.signatures else ""))
    root.mkdir(parents=True, exist_ok=True)
    db, corpus = make_workload(root, args.files, args.signatures, args.seed)
    cache = Path(tempfile.mkdtemp(prefix="bastion-daemon-bench-cache-"))
    env = dict(os.environ, BASTION_CACHE_DIR=str(cache))
    results = {}
    for label, cmd in (("clamd", [args.clamd, "-F"]), ("bastion", [*shlex.split(args.bastion_clamd), "-F"])):
        sock_path = str(root / f"{label}.sock")
        conf = root / f"{label}.conf"
        conf.write_text(f"LocalSocket {sock_path}\nDatabaseDirectory {db}\nMaxThreads {args.threads}\n"
                        f"StreamMaxLength 100M\nForeground yes\n")
        results[label] = run_one(label, cmd, conf, sock_path, corpus, args.clients, seconds, env)
    shutil.rmtree(cache, ignore_errors=True)
    c, b = results["clamd"], results["bastion"]
    rps = {k: v["requests"] / v["wall"] for k, v in results.items()}
    mibs = {k: v["bytes"] / v["wall"] / 2**20 for k, v in results.items()}
    print(f"{args.clients} clients, INSTREAM, {len(corpus)} files (2 KB-200 KB, 1 in 10 infected), "
          f"{seconds:g} s per daemon, MaxThreads {args.threads}\n")
    print("| measure | clamd | bastion | ratio |\n|---|---|---|---|")
    print(f"| requests/s | {rps['clamd']:.1f} | {rps['bastion']:.1f} | {rps['bastion'] / rps['clamd']:.2f}x |")
    print(f"| MiB/s | {mibs['clamd']:.1f} | {mibs['bastion']:.1f} | |")
    print(f"| latency p50 (ms) | {c['p50'] * 1000:.1f} | {b['p50'] * 1000:.1f} | |")
    print(f"| latency p99 (ms) | {c['p99'] * 1000:.1f} | {b['p99'] * 1000:.1f} | |")
    print(f"| errors | {c['errors']} | {b['errors']} | |")
    print(f"| PSS at start / end (MiB) | {c['pss_start']:.0f} / {c['pss_end']:.0f} | "
          f"{b['pss_start']:.0f} / {b['pss_end']:.0f} | |")
    return 0 if c["errors"] == 0 and b["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
