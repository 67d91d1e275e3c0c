#!/usr/bin/env python3
"""Multi-pattern matcher benchmark: which library should match Bastion's body (ndb) signatures?

    /tmp/venv/bin/python bench/matchers.py [--patterns 50000] [--buffer-mib 256] [--hits 50]
                                           [--wildcard-share 0.4] [--seed 1] [--only NAME ...]

The same seeded ndb-like patterns (see workload.random_patterns: mostly literal, the rest using ??,
nibbles, {n}, {n-m}, *, (aa|bb), !(aa|bb)) are compiled with each library:

* hyperscan       python-hyperscan, HS_MODE_BLOCK, HS_FLAG_DOTALL|HS_FLAG_SINGLEMATCH, patterns as regexes
                  (exact: no verification step)
* pyahocorasick   literals only: each pattern's longest literal run is the prefilter key (str keys, the
                  wheel is a unicode build, so bytes go through latin-1); candidates verified with re
* ahocorasick_rs  BytesAhoCorasick on the same prefilter literals, overlapping matches; verified with re
* yara_x          one rule per pattern (hex string, or a regex where hex syntax cannot say !(aa|bb)),
                  added in chunks of 5000 rules

and measured on a seeded random buffer (--buffer-mib) with --hits planted matches: build time, serialized
size and load time (where the library can serialize), RSS growth, scan throughput (MB/s, including
candidate verification and any bytes->str conversion) and whether exactly the planted patterns were found.
Each library runs in its own child process (clean RSS figures; a crash or a missing module only skips
that library).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workload import (
    Pattern,
    concrete,
    is_literal,
    longest_literal,
    pattern_max_len,
    pattern_regex,
    pattern_yara,
    random_patterns,
)

MATCHERS = ("hyperscan", "pyahocorasick", "ahocorasick_rs", "yara_x")
MB = 1_000_000


# --------------------------------------------------------------------------------------------------
# Shared: buffer with planted hits, prefilter verification
# --------------------------------------------------------------------------------------------------


def make_buffer(patterns: list[Pattern], mib: int, hits: int, seed: int) -> tuple[bytes, list[int]]:
    rng = random.Random(f"{seed}:matchbuf")
    size = mib << 20
    chunk = 8 << 20
    buf = bytearray(b"".join(rng.randbytes(min(chunk, size - i)) for i in range(0, size, chunk)))
    planted = sorted(rng.sample(range(len(patterns)), hits))
    slot = size // max(1, hits)
    for k, pid in enumerate(planted):
        data = concrete(patterns[pid], rng, star_max=4096)
        pos = k * slot + rng.randrange(max(1, slot - len(data)))
        buf[pos : pos + len(data)] = data
    return bytes(buf), planted


class Verifier:
    """Confirms prefilter candidates: literal patterns are exact; others are checked with ``re``."""

    def __init__(self, patterns: list[Pattern], buf: bytes) -> None:
        self.patterns, self.buf = patterns, buf
        self.confirmed: set[int] = set()
        self.rejected_unbounded: set[int] = set()
        self.candidates = 0
        self._rx: dict[int, re.Pattern[bytes]] = {}

    def candidate(self, pid: int, end: int) -> None:
        if pid in self.confirmed or pid in self.rejected_unbounded:
            return
        self.candidates += 1
        p = self.patterns[pid]
        if is_literal(p):
            self.confirmed.add(pid)
            return
        rx = self._rx.get(pid)
        if rx is None:
            rx = self._rx[pid] = re.compile(pattern_regex(p), re.DOTALL)
        span = pattern_max_len(p)
        if span is None:  # contains '*': one whole-buffer check decides this pattern for good
            (self.confirmed if rx.search(self.buf) else self.rejected_unbounded).add(pid)
        elif rx.search(self.buf, max(0, end - span), min(len(self.buf), end + span)):
            self.confirmed.add(pid)


def prefilter_keys(patterns: list[Pattern]) -> dict[bytes, list[int]]:
    keys: dict[bytes, list[int]] = {}
    for i, p in enumerate(patterns):
        keys.setdefault(longest_literal(p), []).append(i)
    return keys


# --------------------------------------------------------------------------------------------------
# Library adapters: build() -> matcher, serialize()/load() where the library supports it, scan() -> ids
# --------------------------------------------------------------------------------------------------


class Adapter:
    module = ""
    note = ""

    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self.m: Any = None
        self.extra = ""

    def build(self) -> None:
        raise NotImplementedError

    def serialize(self) -> bytes | None:
        return None

    def load(self, blob: bytes) -> None:
        raise NotImplementedError

    def scan(self, buf: bytes) -> set[int]:
        raise NotImplementedError


class HyperscanAdapter(Adapter):
    module = "hyperscan"
    note = "exact regex semantics (no verification); loadb + Scratch() timed as load"

    def build(self) -> None:
        import hyperscan

        exprs = [pattern_regex(p) for p in self.patterns]
        self.m = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self.m.compile(
            expressions=exprs,
            ids=list(range(len(exprs))),
            elements=len(exprs),
            flags=hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_SINGLEMATCH,
        )

    def serialize(self) -> bytes:
        import hyperscan

        return bytes(hyperscan.dumpb(self.m))

    def load(self, blob: bytes) -> None:
        import hyperscan

        self.m = hyperscan.loadb(blob, mode=hyperscan.HS_MODE_BLOCK)
        self.m.scratch = hyperscan.Scratch(self.m)

    def scan(self, buf: bytes) -> set[int]:
        found: set[int] = set()

        def on_match(pid: int, start: int, end: int, flags: int, ctx: object) -> None:
            found.add(pid)

        self.m.scan(buf, match_event_handler=on_match)
        return found


class PyAhoCorasickAdapter(Adapter):
    module = "ahocorasick"
    note = "prefilter on each pattern's longest literal run, candidates verified with re; pickle = serialization"

    def build(self) -> None:
        import ahocorasick

        self.as_str = bool(ahocorasick.unicode)
        self.m = ahocorasick.Automaton()
        for k, ids in prefilter_keys(self.patterns).items():
            self.m.add_word(k.decode("latin-1") if self.as_str else k, ids)
        self.m.make_automaton()

    def serialize(self) -> bytes:
        return pickle.dumps(self.m, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, blob: bytes) -> None:
        import ahocorasick

        self.as_str = bool(ahocorasick.unicode)
        self.m = pickle.loads(blob)

    def scan(self, buf: bytes) -> set[int]:
        ver = Verifier(self.patterns, buf)
        hay = buf.decode("latin-1") if self.as_str else buf
        for end, ids in self.m.iter(hay):
            for pid in ids:
                ver.candidate(pid, end + 1)
        self.extra = f"{ver.candidates} candidates verified" + (
            "; unicode build: latin-1 str keys, buffer decode timed in scan" if self.as_str else ""
        )
        return ver.confirmed


class AhoCorasickRsAdapter(Adapter):
    module = "ahocorasick_rs"
    note = (
        "BytesAhoCorasick (default implementation) on the longest literal runs, overlapping, candidates "
        "verified with re; objects cannot be pickled, so a warm start must rebuild (build time = load time)"
    )

    def build(self) -> None:
        import ahocorasick_rs

        keys = prefilter_keys(self.patterns)
        self.keys = list(keys)
        self.ids = [keys[k] for k in self.keys]
        self.m = ahocorasick_rs.BytesAhoCorasick(self.keys)

    def scan(self, buf: bytes) -> set[int]:
        ver = Verifier(self.patterns, buf)
        for kidx, _start, end in self.m.find_matches_as_indexes(buf, overlapping=True):
            for pid in self.ids[kidx]:
                ver.candidate(pid, end)
        self.extra = f"{ver.candidates} candidates verified"
        return ver.confirmed


class YaraXAdapter(Adapter):
    module = "yara_x"
    chunk = 5000
    note = (
        f"one rule per pattern (hex string; regex where hex cannot say !(aa|bb)), added in chunks of "
        f"{chunk} rules; Rules.deserialize_from + Scanner() timed as load"
    )

    def build(self) -> None:
        import yara_x

        comp = yara_x.Compiler()
        n = len(self.patterns)
        for s in range(0, n, self.chunk):
            comp.add_source(
                "\n".join(
                    f"rule p{i} {{ strings: $a = {pattern_yara(self.patterns[i])} condition: $a }}"
                    for i in range(s, min(s + self.chunk, n))
                )
            )
        self.m = comp.build()

    def serialize(self) -> bytes:
        out = io.BytesIO()
        self.m.serialize_into(out)
        return out.getvalue()

    def load(self, blob: bytes) -> None:
        import yara_x

        self.m = yara_x.Rules.deserialize_from(io.BytesIO(blob))
        self.scanner = yara_x.Scanner(self.m)

    def scan(self, buf: bytes) -> set[int]:
        import yara_x

        scanner = getattr(self, "scanner", None) or yara_x.Scanner(self.m)
        return {int(r.identifier[1:]) for r in scanner.scan(buf).matching_rules}


ADAPTERS: dict[str, type[Adapter]] = {
    "hyperscan": HyperscanAdapter,
    "pyahocorasick": PyAhoCorasickAdapter,
    "ahocorasick_rs": AhoCorasickRsAdapter,
    "yara_x": YaraXAdapter,
}


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _hwm_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------------------------
# Worker / driver
# --------------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0


def worker(name: str, phase: str, state: Path) -> dict[str, Any]:
    """phase ``build``: build (+serialize to state/NAME.blob; scan here when the library cannot serialize);
    phase ``scan``: fresh process, load the blob, scan -- the warm-start situation of a scanner."""
    cfg = json.loads((state / "config.json").read_text())
    cls = ADAPTERS[name]
    try:
        __import__(cls.module)
    except ImportError as e:
        return {"skipped": f"{type(e).__name__}: {e}"}
    patterns = random_patterns(cfg["patterns"], cfg["seed"], cfg["wildcard_share"])
    ad = cls(patterns)
    base = _rss_kib()
    res: dict[str, Any] = {"note": cls.note}
    blob_path = state / f"{name}.blob"
    if phase == "build":
        _, res["build_s"] = _timed(ad.build)
        res["rss_mib"] = (_rss_kib() - base) / 1024
        res["build_peak_mib"] = (_hwm_kib() - base) / 1024
        blob, res["serialize_s"] = _timed(ad.serialize)
        if blob is not None:
            blob_path.write_bytes(blob)
            res["serialized_bytes"] = len(blob)
            return res
        res["serialized_bytes"] = None
    else:
        blob = blob_path.read_bytes()  # read before timing; freed before the RSS reading below
        _, res["load_s"] = _timed(lambda: ad.load(blob))
        del blob
        res["rss_mib"] = (_rss_kib() - base) / 1024
    buf = (state / "buffer.bin").read_bytes()
    base_scan = _rss_kib()
    found, res["scan_s"] = _timed(lambda: ad.scan(buf))
    res["scan_peak_mib"] = max(0.0, (_hwm_kib() - base_scan) / 1024)
    res["found"] = sorted(found)
    if ad.extra:
        res["note"] += "; " + ad.extra
    return res


def run_worker(name: str, phase: str, state: Path, timeout: int) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", name, "--phase", phase, "--state", str(state)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"{phase} timed out after {timeout}s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"skipped": f"{phase} worker failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}"}
    return dict(json.loads(lines[-1]))


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", type=int, default=50_000)
    ap.add_argument("--buffer-mib", type=int, default=256)
    ap.add_argument("--hits", type=int, default=50)
    ap.add_argument(
        "--wildcard-share",
        type=float,
        default=0.4,
        help="fraction of patterns using wildcard syntax (default 0.4, as gen_db.py)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", action="append", choices=MATCHERS, help="run only this matcher (repeatable)")
    ap.add_argument("--timeout", type=int, default=300, help="per-phase time limit in seconds")
    ap.add_argument("--worker", choices=MATCHERS, help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=("build", "scan"), default="build", help=argparse.SUPPRESS)
    ap.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.phase, args.state)))
        return 0

    t_all = time.perf_counter()
    patterns = random_patterns(args.patterns, args.seed, args.wildcard_share)
    n_lit = sum(is_literal(p) for p in patterns)
    buf, planted = make_buffer(patterns, args.buffer_mib, args.hits, args.seed)
    del patterns
    expected = set(planted)
    rows: list[list[str]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="matchers-") as td:
        state = Path(td)
        (state / "buffer.bin").write_bytes(buf)
        (state / "config.json").write_text(
            json.dumps({"patterns": args.patterns, "seed": args.seed, "wildcard_share": args.wildcard_share})
        )
        del buf
        for name in args.only or MATCHERS:
            print(f"# {name} ...", file=sys.stderr, flush=True)
            b = run_worker(name, "build", state, args.timeout)
            s = b if "skipped" in b or "found" in b else run_worker(name, "scan", state, args.timeout)
            if "skipped" in s:
                rows.append([name, "skipped"] + [""] * 9)
                notes.append(f"{name}: skipped: {s['skipped']}")
                continue
            found = set(s["found"])
            ok = found == expected
            ser = b.get("serialized_bytes")
            mbps = args.buffer_mib * (1 << 20) / MB / s["scan_s"]
            rows.append(
                [
                    name,
                    f"{b['build_s']:.2f}",
                    f"{b['build_peak_mib']:.0f}",
                    _fmt(None if ser is None else ser / (1 << 20), ".1f"),
                    _fmt(s.get("load_s"), ".3f"),
                    f"{s['rss_mib']:.0f}",
                    f"{s['scan_s']:.2f}",
                    f"{mbps:.0f}",
                    f"{s['scan_peak_mib']:.0f}",
                    f"{len(found & expected)}/{len(expected)} +{len(found - expected)}",
                    "yes" if ok else "NO",
                ]
            )
            notes.append(f"{name}: {s['note']}")
            if not ok:
                notes.append(
                    f"{name}: missed {sorted(expected - found)[:10]}, unplanted {sorted(found - expected)[:10]}"
                )
    print(
        f"Patterns: {args.patterns} ({n_lit} literal, {args.patterns - n_lit} with wildcards; "
        f"seed {args.seed}); buffer: {args.buffer_mib} MiB random with {len(expected)} planted matches; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| matcher | build s | build peak MiB | serialized MiB | load s | resident MiB | scan s | scan MB/s "
        "| scan extra MiB | planted found (+extra) | correct |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print(
        "resident MiB: RSS growth after load in a fresh process (after build where the library cannot "
        "serialize); scan extra MiB: RSS high-water growth during the scan."
    )
    for n in notes:
        print(f"- {n}")
    print(f"\n(total {time.perf_counter() - t_all:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
