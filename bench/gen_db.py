#!/usr/bin/env python3
"""Generate the benchmark signature database (deterministic, seeded).

    python bench/gen_db.py OUTDIR [--hdb 1000000 --hsb 200000 --ndb 50000 --plants 200 --seed 1]

Writes OUTDIR/bench.hdb (MD5:size:Name), OUTDIR/bench.hsb (SHA1/SHA256:size:Name, alternating),
OUTDIR/bench.ndb (Name:0:Offset:HexSig) and the plants manifest (default OUTDIR/plants.json; clamscan
ignores the .json file when OUTDIR is passed to -d).  Feed the manifest to gen_corpus.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from workload import generate_db


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--hdb", type=int, default=1_000_000, help="MD5 entries (default 1000000)")
    ap.add_argument("--hsb", type=int, default=200_000, help="SHA1+SHA256 entries (default 200000)")
    ap.add_argument("--ndb", type=int, default=50_000, help="body signatures (default 50000)")
    ap.add_argument("--plants", type=int, default=200, help="planted signatures (30%% hdb, 20%% hsb, 50%% ndb)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--wildcard-share",
        type=float,
        default=0.4,
        help="fraction of ndb signatures using wildcard syntax (default 0.4)",
    )
    ap.add_argument("--plants-json", type=Path, default=None, help="manifest path (default OUTDIR/plants.json)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    m = generate_db(
        args.outdir,
        n_hdb=args.hdb,
        n_hsb=args.hsb,
        n_ndb=args.ndb,
        n_plants=args.plants,
        seed=args.seed,
        plants_path=args.plants_json,
        wildcard_share=args.wildcard_share,
    )
    print(f"wrote {args.outdir} ({len(m['plants'])} plants) in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
