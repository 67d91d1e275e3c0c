#!/usr/bin/env python3
"""HTML benchmark: bastion-clamscan against Debian's clamscan on reference-rich HTML pages.

    python bench/run_html_bench.py --workdir DIR [--pages 400] [--repeat 3] [--bastion CMD] [--jobs N]

Generates (deterministically, under DIR) N pages of about 64 KiB: paragraphs, tables and code blocks
with character references (``&lt;`` ``&amp;`` ``&#39;`` ``&eacute;`` ... about four per KiB, as in
generated documentation), comments and a script; one page in ten hides a planted word behind
references (``Ev&#105;lPay&#x6c;oad``), which only a normalizer that decodes them finds.  A
one-signature database (target 3, HTML) is matched against each page's normalized text, so the time
is the normalizer's and the scan's, not a database's.

Measures for each tool (median of --repeat runs, warm page cache, Bastion's DB cache warm): a full
``-r`` scan including the load, and the detections, compared between the tools and with the plants.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from run_scan_bench import parse_detections, run_measured

PLANT = "Ev&#105;lPay&#x6c;oad"
SIGNATURE = "Bench.Html.Plant:3:*:" + b"evilpayload".hex()
REFS = ("&lt;", "&gt;", "&amp;", "&quot;", "&#39;", "&eacute;", "&nbsp;", "&#x2014;", "&copy;")


def page(rng: random.Random, words: list[str], plant: bool) -> str:
    parts = ["<!DOCTYPE html>\n<html><head><title>Page &amp; notes</title>",
             "<script>var x = 'a &lt; b'; // comment\n</script></head><body>\n<!-- generated -->\n"]
    size = 0
    while size < 64 * 1024:
        text = " ".join(rng.choice(words) + (rng.choice(REFS) if rng.random() < 0.12 else "")
                        for _ in range(rng.randint(20, 80)))
        kind = rng.choice(("p", "td", "code"))
        chunk = f"<{kind}>{text}</{kind}>\n" if kind != "td" else f"<table><tr><td>{text}</td></tr></table>\n"
        parts.append(chunk)
        size += len(chunk)
    if plant:
        parts.insert(rng.randint(2, len(parts)), f"<p>{PLANT}</p>\n")
    parts.append("</body></html>\n")
    return "".join(parts)


def ensure_workload(workdir: Path, pages: int, seed: int) -> tuple[Path, Path, set[str]]:
    root = workdir / f"html-n{pages}-seed{seed}"
    corpus, db = root / "corpus", root / "html.ndb"
    planted = {f"p{n:05d}.html" for n in range(pages) if n % 10 == 3}
    if db.exists():
        return corpus, db, planted
    shutil.rmtree(root, ignore_errors=True)
    corpus.mkdir(parents=True)
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    for n in range(pages):
        (corpus / f"p{n:05d}.html").write_text(page(rng, words, f"p{n:05d}.html" in planted), encoding="ascii")
    db.write_text(SIGNATURE + "\n")
    return corpus, db, planted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--pages", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bastion", default=shutil.which("bastion-clamscan") or "bastion-clamscan")
    ap.add_argument("--clamscan", default=shutil.which("clamscan") or "clamscan")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    corpus, db, planted = ensure_workload(args.workdir, args.pages, args.seed)
    env = dict(os.environ, BASTION_CACHE_DIR=tempfile.mkdtemp(prefix="bastion-html-bench-cache-"))
    bastion = [*shlex.split(args.bastion), "-j", str(args.jobs)]
    run_measured([*bastion, "-d", str(db), "--no-summary", os.devnull], env)  # compile the DB once
    results = {}
    for tool, cmd in (("clamscan", [args.clamscan]), ("bastion", bastion)):
        runs = [run_measured([*cmd, "-d", str(db), "-r", str(corpus), "--no-summary", "-i"], env)
                for _ in range(args.repeat)]
        found = {Path(path).name for path, _name in parse_detections(runs[-1].stdout, corpus)}
        results[tool] = (statistics.median(r.wall_s for r in runs), found)
    mib = sum(p.stat().st_size for p in corpus.iterdir()) / (1 << 20)
    (ct, cfound), (bt, bfound) = results["clamscan"], results["bastion"]
    print(f"Corpus: {args.pages} HTML pages, {mib:.1f} MiB; jobs {args.jobs}\n")
    print("| measure | clamscan | bastion | ratio |\n|---|---|---|---|")
    print(f"| full scan incl. load (s) | {ct:.2f} | {bt:.2f} | {ct / bt:.2f}x faster |")
    print(f"| throughput (MiB/s) | {mib / ct:.1f} | {mib / bt:.1f} | |")
    same = "identical" if cfound == bfound == planted else f"clamscan {len(cfound)}, bastion {len(bfound)}"
    print(f"| detections (planted {len(planted)}) | {len(cfound)} | {len(bfound)} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
