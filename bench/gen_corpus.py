#!/usr/bin/env python3
"""Generate the benchmark corpus with planted detections (deterministic, seeded).

    python bench/gen_corpus.py PLANTS_JSON CORPUSDIR [--corpus-mib 1024] [--seed SEED]
                               [--expected PATH]

Reads the plants manifest written by gen_db.py, writes a directory tree of random binary, sparse binary
and text files (1 KiB .. 20 MiB, capped at 1/8 of the corpus size) into CORPUSDIR, and the expected
detections (relative path -> reported name) to --expected (default: CORPUSDIR/../expected.json).
The seed defaults to the DB's seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from workload import generate_corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plants_json", type=Path)
    ap.add_argument("corpus_dir", type=Path)
    ap.add_argument("--corpus-mib", type=float, default=1024.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--expected", type=Path, default=None)
    args = ap.parse_args(argv)
    manifest = json.loads(args.plants_json.read_text())
    seed = manifest["seed"] if args.seed is None else args.seed
    expected_path = args.expected or args.corpus_dir.resolve().parent / "expected.json"
    t0 = time.perf_counter()
    exp = generate_corpus(args.corpus_dir, manifest, args.corpus_mib, seed, expected_path)
    print(
        f"wrote {exp['files']} files, {exp['bytes'] / 2**20:.1f} MiB, {len(exp['detections'])} planted "
        f"detections in {time.perf_counter() - t0:.1f}s; expected -> {expected_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
