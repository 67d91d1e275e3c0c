"""Differential tests: ClamAV's ``clamscan`` and ``bastion-clamscan`` must give the same verdicts.

For each case the same database and the same files go through both programs with the same options.
Compared: the ``(path, name)`` pairs of the ``path: NAME FOUND`` lines (with ``-z`` every name, as a
set: clamscan 1.4.6 prints some names twice with ``-z``, e.g. every hash match and every match on
normalized text; without ``-z`` which files are infected, one name each, and separately whether the
first name is the same), the ``OK`` / ``Empty file`` / ``Excluded`` / ``Symbolic link`` lines and
the exit code.  Lines are compared sorted: clamscan walks directories in readdir order, Bastion in
sorted order.

Cheap by design: signatures are batched into one database and files into one directory per
*scenario*, each scenario runs once with and once without ``-z`` (module-scoped cache), and every
case then checks its own files.  Besides parity, each case states what clamscan 1.4.6 itself does
(``expect``), so a case that stops testing what it claims (a typo in a pattern, a ClamAV upgrade)
fails loudly instead of passing vacuously; that check always comes *after* the parity check.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import bastion_env

CLAMSCAN = shutil.which("clamscan")
if CLAMSCAN is None:
    pytest.skip("ClamAV's clamscan is not installed (Debian: apt-get install clamav): nothing to compare with",
                allow_module_level=True)
SIGTOOL = shutil.which("sigtool")
TESTFILES = Path("/usr/share/clamav-testfiles")
UNOFFICIAL = ".UNOFFICIAL"
STATUSES = ("OK", "Empty file", "Excluded", "Symbolic link")
SUMMARY_HEADER = "----------- SCAN SUMMARY -----------"


# --------------------------------------------------------------------------------------------------
# Running both programs and reading their output
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One program's run, parsed."""

    rc: int
    stdout: str
    stderr: str
    found: tuple[tuple[str, str], ...]     # (path, name) per FOUND line, sorted
    status: tuple[tuple[str, str], ...]    # (path, "OK" | "Empty file" | ...) sorted
    other: tuple[str, ...]                 # any other non-summary stdout line, sorted
    summary: dict[str, str]                # "Scanned files" -> "3", ...; empty if no summary

    @classmethod
    def parse(cls, rc: int, out: bytes, err: bytes) -> Outcome:
        stdout = out.decode("utf-8", "surrogateescape")
        stderr = err.decode("utf-8", "surrogateescape")
        found, status, other = [], [], []
        summary: dict[str, str] = {}
        in_summary = False
        for line in stdout.splitlines():
            if line == SUMMARY_HEADER:
                in_summary = True
                continue
            if in_summary:
                key, sep, value = line.partition(": ")
                if sep:
                    summary[key] = value.strip()
                continue
            if not line:
                continue
            if line.endswith(" FOUND"):
                path, _, name = line[: -len(" FOUND")].rpartition(": ")
                found.append((path, name))
                continue
            for st in STATUSES:
                if line.endswith(": " + st):
                    status.append((line[: -len(st) - 2], st))
                    break
            else:
                other.append(line)
        return cls(rc, stdout, stderr, tuple(sorted(found)), tuple(sorted(status)), tuple(sorted(other)), summary)

    def names(self, path: str) -> list[str]:
        """Names reported on ``path``, each once (clamscan -z prints some twice, e.g. ``*``-size hashes)."""
        return sorted({n for p, n in self.found if p == path})

    @property
    def found_set(self) -> set[tuple[str, str]]:
        return set(self.found)

    def statuses(self, path: str) -> list[str]:
        return sorted(s for p, s in self.status if p == path)

    @property
    def infected(self) -> set[str]:
        return {p for p, _ in self.found}

    def lines_for(self, path: str) -> str:
        return "\n".join(line for line in self.stdout.splitlines() if line.startswith(path + ": ")) or "(no line)"


@dataclass(frozen=True)
class Pair:
    args: tuple[str, ...]
    clam: Outcome
    bastion: Outcome

    def report(self, path: str | None = None) -> str:
        """Both outputs (or only the lines about ``path``) for an assertion message."""
        head = f"args: {' '.join(self.args)}"
        if path is not None:
            return (f"{head}\n--- clamscan (rc {self.clam.rc}):\n{self.clam.lines_for(path)}"
                    f"\n--- bastion-clamscan (rc {self.bastion.rc}):\n{self.bastion.lines_for(path)}")
        return (f"{head}\n--- clamscan (rc {self.clam.rc}):\n{self.clam.stdout}{self.clam.stderr}"
                f"\n--- bastion-clamscan (rc {self.bastion.rc}):\n{self.bastion.stdout}{self.bastion.stderr}")


def _clamscan_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    return env


def run_both(args: list[str], cwd: Path, cache: Path, stdin: bytes | None = None) -> Pair:
    """Run ``clamscan ARGS`` and ``bastion-clamscan ARGS`` in ``cwd``."""
    assert CLAMSCAN is not None
    results = []
    for cmd, env in (([CLAMSCAN, *args], _clamscan_env()),
                     ([sys.executable, "-m", "bastion.cli.clamscan", *args], bastion_env(cache))):
        p = subprocess.run(cmd, cwd=cwd, env=env, input=stdin if stdin is not None else b"",
                           capture_output=True, timeout=120)
        results.append(Outcome.parse(p.returncode, p.stdout, p.stderr))
    return Pair(tuple(args), results[0], results[1])


def hexs(data: bytes | str) -> str:
    return (data.encode() if isinstance(data, str) else data).hex()


def blob(n: int, seed: str) -> bytes:
    """``n`` deterministic pseudo-random bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


# --------------------------------------------------------------------------------------------------
# Scenarios: one database + one directory of files, run once with -z and once without
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One file of a scenario and the signature names clamscan reports on it with ``-z``."""

    scenario: str
    case: str
    file: str
    expect: tuple[str, ...]  # bare names (".UNOFFICIAL" is added), sorted; () = clean
    only: str | None = None  # compare only this signature's verdict (files that many cases share)

    @property
    def id(self) -> str:
        return f"{self.scenario}-{self.case}-{self.file}"

    def names(self, outcome: Outcome, path: str) -> list[str]:
        names = outcome.names(path)
        return names if self.only is None else [n for n in names if n == self.only + UNOFFICIAL]


@dataclass
class Built:
    """What a scenario builder produced on disk."""

    db_args: list[str]
    scan_dir: Path


@dataclass
class ScenarioRun:
    built: Built
    allmatch: Pair
    first: Pair

    def path(self, name: str) -> str:
        return str(self.built.scan_dir / name)


# ---------------------------------------------------------------- hash databases (.hdb / .hsb)
@dataclass(frozen=True)
class HashCase:
    id: str
    db: str                    # "hdb" | "hsb"
    algo: str                  # "md5" | "sha1" | "sha256"
    size: str = "exact"        # "exact" | "wrong" | "any"
    fl: str = ""               # appended to the line verbatim (":73", ":1:215", ...)
    expect: bool = True        # clamscan detects the file
    content: bytes | None = None
    upper: bool = False        # write the digest in upper case

    @property
    def sig(self) -> str:
        return f"Parity.Hash.{self.id}"

    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        return f"parity hash case {self.id}\n".encode() + b"\x00\x01\x02" + blob(300, self.id)

    def line(self) -> str:
        data = self.data()
        digest = hashlib.new(self.algo, data).hexdigest()
        if self.upper:
            digest = digest.upper()
        size = {"exact": str(len(data)), "wrong": str(len(data) + 1), "any": "*"}[self.size]
        return f"{digest}:{size}:{self.sig}{self.fl}"


HASH_CASES = [
    HashCase("md5_exact", "hdb", "md5"),
    HashCase("md5_wrong_size", "hdb", "md5", size="wrong", expect=False),
    HashCase("md5_any_size", "hdb", "md5", size="any", fl=":73"),
    HashCase("md5_upper_hex", "hdb", "md5", upper=True),
    HashCase("sha1_exact", "hsb", "sha1"),
    HashCase("sha1_wrong_size", "hsb", "sha1", size="wrong", expect=False),
    HashCase("sha1_any_size", "hsb", "sha1", size="any", fl=":73"),
    HashCase("sha256_exact", "hsb", "sha256"),
    HashCase("sha256_wrong_size", "hsb", "sha256", size="wrong", expect=False),
    HashCase("sha256_any_size", "hsb", "sha256", size="any", fl=":73"),
    HashCase("sha256_in_hdb", "hdb", "sha256"),
    HashCase("md5_in_hsb", "hsb", "md5"),
    HashCase("fl_min_equal", "hdb", "md5", fl=":216"),
    HashCase("fl_min_above", "hdb", "md5", fl=":217", expect=False),
    HashCase("fl_max_below", "hdb", "md5", fl=":1:215", expect=False),
    HashCase("fl_max_equal", "hdb", "md5", fl=":1:216"),
    HashCase("fl_empty_max", "hdb", "md5", fl=":1:", expect=False),
    HashCase("fl_empty_min", "hdb", "md5", fl=":"),
    HashCase("fl_both_empty", "hdb", "md5", fl="::", expect=False),
    HashCase("any_fl_min_above", "hsb", "sha256", size="any", fl=":217", expect=False),
    HashCase("any_fl_max_below", "hsb", "sha256", size="any", fl=":73:100", expect=False),
    HashCase("any_fl_range", "hsb", "sha1", size="any", fl=":73:216"),
    HashCase("text_file", "hdb", "md5", content=b"just a plain text file for the parity tests\n"),
    # clamscan 1.4.6 does not scan objects of 5 bytes or less at all ("File too small")
    HashCase("tiny_file_5_bytes", "hdb", "md5", content=b"\x00tiny", expect=False),
    HashCase("small_file_6_bytes", "hdb", "md5", content=b"\x00small"),
    # clamscan 1.4.6 retypes text that looks like HTML and then never checks whole-file hashes
    HashCase("html_file", "hdb", "md5", expect=False,
             content=b"<html><body>parity hash case for an html page</body></html>\n"),
]


def build_hash(root: Path) -> Built:
    db = root / "db"
    files = root / "files"
    db.mkdir()
    files.mkdir()
    lines: dict[str, list[str]] = {"hdb": [], "hsb": []}
    for case in HASH_CASES:
        (files / case.id).write_bytes(case.data())
        lines[case.db].append(case.line())
    # one file carrying two signatures (MD5 in the .hdb, SHA256 in the .hsb): -z must list both
    both = b"\x00parity hash case with two signatures\x00" + blob(100, "both")
    (files / "two_sigs").write_bytes(both)
    lines["hdb"].append(f"{hashlib.md5(both).hexdigest()}:{len(both)}:Parity.Hash.two_md5")
    lines["hsb"].append(f"{hashlib.sha256(both).hexdigest()}:{len(both)}:Parity.Hash.two_sha256")
    (files / "unknown").write_bytes(b"\x00no signature for this one\x00")
    for ext, text in lines.items():
        (db / f"parity.{ext}").write_text("\n".join(text) + "\n")
    return Built(["-d", str(db)], files)


HASH_PROBES = [Probe("hash", c.id, c.id, (c.sig,) if c.expect else ()) for c in HASH_CASES] + [
    Probe("hash", "two_sigs", "two_sigs", ("Parity.Hash.two_md5", "Parity.Hash.two_sha256")),
    Probe("hash", "unknown", "unknown", ()),
]


# ---------------------------------------------------------------- body signatures (.ndb)
@dataclass(frozen=True)
class NdbCase:
    """``pattern`` and file bodies may hold ``<T>``: the case's unique 3-byte binary tag."""

    id: str
    pattern: str
    hits: tuple[bytes, ...]
    misses: tuple[bytes, ...] = ()
    target: str = "0"
    offset: str = "*"

    @property
    def sig(self) -> str:
        return f"Parity.Ndb.{self.id}"


def _n(id: str, pattern: str, hits: list[bytes], misses: list[bytes] | None = None,  # noqa: A002
       target: str = "0", offset: str = "*") -> NdbCase:
    """Files are at least 6 bytes long unless a case is about size: clamscan skips smaller ones."""
    return NdbCase(id, pattern, tuple(hits), tuple(misses or ()), target, offset)


Z = b"\x00"
NDB_CASES = [
    # ---- hex grammar
    _n("literal", "<T>41424344", [Z + b"<T>ABCD" + Z], [Z + b"<T>ABCE" + Z, Z + b"<T>ABC"]),
    _n("any_byte", "<T>41??43", [Z + b"<T>AzC" + Z, b"<T>A\x00C"], [Z + b"<T>ACD" + Z, Z * 3 + b"<T>A"]),
    _n("nibble_high", "<T>4?5a5a", [Z + b"<T>OZZ" + Z, Z + b"<T>@ZZ"], [Z + b"<T>PZZ" + Z, Z + b"<T>?ZZ"]),
    _n("nibble_low", "<T>?35a5a", [Z + b"<T>\xa3ZZ", Z + b"<T>3ZZ"], [Z + b"<T>\xa4ZZ", Z + b"<T>0ZZ"]),
    _n("star", "<T>4142*4344", [Z + b"<T>AB" + b"x" * 100 + b"CD", Z + b"<T>ABCD"],
       [Z + b"CD<T>AB" + Z, Z + b"<T>ACD"]),
    _n("gap_fixed", "<T>{3}4344", [Z + b"<T>xyzCD"], [Z + b"<T>wxyzCD", Z + b"<T>xyCD"]),
    _n("gap_upto", "<T>{-3}4344", [Z + b"<T>CD", Z + b"<T>xyzCD"], [Z + b"<T>wxyzCD"]),
    _n("gap_from", "<T>{3-}4344", [Z + b"<T>xyzCD", Z + b"<T>" + b"x" * 200 + b"CD"], [Z + b"<T>xyCD"]),
    _n("gap_range", "<T>{2-4}4344", [Z + b"<T>xyCD", Z + b"<T>wxyzCD"], [Z + b"<T>xCD", Z + b"<T>vwxyzCD"]),
    _n("gap_fixed_large", "<T>{130}4344", [Z + b"<T>" + b"x" * 130 + b"CD"],
       [Z + b"<T>" + b"x" * 129 + b"CD", Z + b"<T>" + b"x" * 131 + b"CD"]),
    _n("alt_byte", "<T>(41|42)4344", [Z + b"<T>ACD", Z + b"<T>BCD"], [Z + b"<T>CCD"]),
    _n("alt_byte_negated", "<T>!(41|42)4344", [Z + b"<T>CCD", Z + b"<T>\x00CD"], [Z + b"<T>ACD", Z + b"<T>BCD"]),
    _n("alt_multibyte", "<T>(4142|4344)4545", [Z + b"<T>ABEE", Z + b"<T>CDEE"], [Z + b"<T>ACEE", Z + b"<T>CBEE"]),
    _n("alt_multibyte_negated", "<T>!(4142|4344)4545", [Z + b"<T>ACEE", Z + b"<T>xyEE"],
       [Z + b"<T>ABEE", Z + b"<T>CDEE"]),
    _n("alt_generic", "<T>(41|4243|4?45)4646", [Z + b"<T>AFF", Z + b"<T>BCFF", Z + b"<T>JEFF"],
       [Z + b"<T>ZEFF", Z + b"<T>BFF", Z + b"<T>CFF"]),
    _n("alt_generic_gap", "<T>(41|42{2}43)4646", [Z + b"<T>AFF", Z + b"<T>BxyCFF"],
       [Z + b"<T>BxCFF", Z + b"<T>BxyzCFF"]),
    # (B) (L) (W): zero-width checks at either end of a pattern, one consumed byte in the middle
    _n("boundary_mid", "<T>4142(B)4344", [Z + b"<T>AB CD", Z + b"<T>AB.CD", Z + b"<T>AB\nCD"],
       [Z + b"<T>ABCD", Z + b"<T>ABxCD", Z + b"<T>AB,CD"]),
    _n("boundary_right", "<T>4142(B)", [Z + b"<T>AB", Z + b"<T>AB CD", Z + b"<T>AB=x"],
       [Z + b"<T>AB.x", Z + b"<T>ABx", Z + b"<T>AB,x"]),
    _n("boundary_left", "(B)4142<T>", [b"AB<T>" + Z, Z + b" AB<T>", Z + b".AB<T>"],
       [Z + b"xAB<T>", Z + b"\nAB<T>", Z + b",AB<T>"]),
    _n("line_mid", "<T>4142(L)4344", [Z + b"<T>AB\nCD", Z + b"<T>AB\r\nCD"],
       [Z + b"<T>AB\rCD", Z + b"<T>ABxCD", Z + b"<T>ABCD"]),
    _n("line_right", "<T>4142(L)", [Z + b"<T>AB", Z + b"<T>AB\nx", Z + b"<T>AB\r\nx"],
       [Z + b"<T>AB\rx", Z + b"<T>ABx"]),
    _n("line_left", "(L)4142<T>", [b"AB<T>" + Z, Z + b"\nAB<T>"], [Z + b"\rAB<T>", Z + b"xAB<T>", Z + b" AB<T>"]),
    _n("word_mid", "<T>4142(W)4344", [Z + b"<T>AB CD", Z + b"<T>AB\x00CD"],
       [Z + b"<T>ABxCD", Z + b"<T>AB5CD", Z + b"<T>ABCD"]),
    _n("word_right", "<T>4142(W)", [Z + b"<T>AB", Z + b"<T>AB-x"], [Z + b"<T>ABx"]),
    _n("word_left", "(W)4142<T>", [b"AB<T>" + Z, Z + b" AB<T>"], [Z + b"xAB<T>"]),
    _n("byte_range_left", "41[1-3]<T>4243", [Z + b"Ax<T>BC", Z + b"Axyz<T>BC"], [Z + b"A<T>BC", Z + b"Awxyz<T>BC"]),
    _n("byte_range_right", "<T>4243[1-3]41", [Z + b"<T>BCxA", Z + b"<T>BCxyzA"],
       [Z + b"<T>BCA" + Z, Z + b"<T>BCwxyzA"]),
    # ---- offsets (pattern = 3-byte tag + "AB": 5 bytes)
    _n("offset_zero", "<T>4142", [b"<T>AB" + Z], [Z + b"<T>AB"], offset="0"),
    _n("offset_abs", "<T>4142", [Z * 6 + b"<T>AB"], [Z * 5 + b"<T>AB", Z * 7 + b"<T>AB"], offset="6"),
    _n("offset_abs_shift", "<T>4142", [Z * 6 + b"<T>AB", Z * 9 + b"<T>AB"], [Z * 5 + b"<T>AB", Z * 10 + b"<T>AB"],
       offset="6,3"),
    _n("offset_eof", "<T>4142", [Z + b"<T>AB" + Z * 2], [Z + b"<T>AB" + Z, Z + b"<T>AB" + Z * 3], offset="EOF-7"),
    _n("offset_eof_shift", "<T>4142", [Z * 20 + b"<T>AB" + Z * 2, Z * 20 + b"<T>AB" + Z * 5],
       [Z * 20 + b"<T>AB" + Z, Z * 20 + b"<T>AB" + Z * 6], offset="EOF-10,3"),
    # EOF-n with n larger than the file: clamscan never matches (even when maxshift reaches back in)
    _n("offset_eof_past_start", "<T>4142", [Z * 40 + b"<T>AB"], [Z + b"<T>AB" + Z * 4], offset="EOF-45,45"),
    _n("offset_any", "<T>4142", [Z * 3 + b"<T>AB"], [Z + b"<T>AC"]),
    # ---- size: clamscan skips objects of 5 bytes or less
    _n("file_of_6_or_5_bytes", "<T>4142", [Z + b"<T>AB"], [b"<T>AB"]),
    # ---- target types
    _n("target_star", "<T>4142", [Z + b"<T>AB"], target="*"),
    _n("target_pe_on_data", "<T>4142", [], [Z + b"<T>AB"], target="1"),
    _n("target_elf_on_data", "<T>4142", [], [Z + b"<T>AB"], target="6"),
    _n("target_text_on_data", hexs("quartz lynx b"), [], [Z * 16 + b"quartz lynx b" + Z * 16], target="7"),
    # what counts as text: clamscan also normalizes UTF-8, stray high bytes, control bytes and UTF-16
    _n("target_text_utf8", hexs("garnet vole"), [b"caf\xc3\xa9 GARNET  Vole\n"], target="7"),
    _n("target_text_high_bytes", hexs("umber newt"), [b"\xff\xff\xff\xffUMBER  Newt\n"], target="7"),
    _n("target_text_normalized", hexs("quartz lynx"), [b"Say QUARTZ   \t Lynx now\n", b"quartz\r\n\r\n lynx\n"],
       [b"Say QUARTZ_Lynx now\n"], target="7"),
    _n("target_text_upper_pattern", hexs("AMBER HERON"), [], [b"AMBER HERON\n", b"amber heron\n"], target="7"),
    _n("target_text_offset_zero", hexs("lead word"), [b"LEAD WORD rest\n"], [b"   LEAD WORD\n"], target="7",
       offset="0"),
    _n("target_any_on_text_raw", hexs("Cobalt  Wren"), [b"xx Cobalt  Wren\n"], [b"xx Cobalt Wren\n"]),
    _n("target_any_on_text_normalized", hexs("ochre finch"), [b"OCHRE    Finch\n"], [b"OCHRE-Finch\n"]),
    # HTML-looking text is retyped by clamscan: target 0 sees only the normalized page
    _n("target_any_on_html_raw", hexs("Jade  Stork"), [], [b"<html><body>Jade  Stork</body></html>\n"]),
    _n("target_html_normalized", hexs("teal otter"), [b"<html><body>Teal   OTTER</body></html>\n"], target="3"),
]


def _tag(index: int) -> bytes:
    assert index < 0x7F
    return b"\xfe" + bytes([0x80 + index]) + b"\xfe"


def build_ndb(root: Path) -> Built:
    db = root / "db"
    files = root / "files"
    db.mkdir()
    files.mkdir()
    lines = []
    for index, case in enumerate(NDB_CASES):
        tag = _tag(index)
        lines.append(f"{case.sig}:{case.target}:{case.offset}:{case.pattern.replace('<T>', tag.hex())}")
        for kind, bodies in (("hit", case.hits), ("miss", case.misses)):
            for i, body in enumerate(bodies):
                (files / f"{case.id}.{kind}{i}").write_bytes(body.replace(b"<T>", tag))
    (db / "parity.ndb").write_text("\n".join(lines) + "\n")
    return Built(["-d", str(db / "parity.ndb")], files)


NDB_PROBES = [Probe("ndb", c.id, f"{c.id}.{kind}{i}", (c.sig,) if kind == "hit" else ())
              for c in NDB_CASES for kind, bodies in (("hit", c.hits), ("miss", c.misses))
              for i in range(len(bodies))]


# ---------------------------------------------------------------- allow lists and ignore lists
def _allow_files() -> dict[str, bytes]:
    names = ["hdb_fp_md5", "hdb_fp_wrong_size", "hsb_fp_sha1", "ndb_sfp_sha256", "ndb_sfp_any_size",
             "hdb_and_ndb_fp", "ign_bare", "ign_md5", "ign_md5_stale", "ign_unofficial_suffix", "ign_hash_sig",
             "not_ignored"]
    return {n: b"\x00parity allow case " + n.encode() + b"\x00" + blob(64, n) for n in names}


def build_allow(root: Path) -> Built:
    db = root / "db"
    files = root / "files"
    db.mkdir()
    files.mkdir()
    data = _allow_files()
    for name, body in data.items():
        (files / name).write_bytes(body)

    def h(algo: str, name: str, size: str | None = None) -> str:
        body = data[name]
        return f"{hashlib.new(algo, body).hexdigest()}:{size or len(body)}"

    ndb_lines = {name: f"Parity.{name}:0:*:{hexs(b'parity allow case ' + name.encode())}"
                 for name in ("hsb_fp_sha1", "ndb_sfp_sha256", "ndb_sfp_any_size", "hdb_and_ndb_fp", "ign_bare",
                              "ign_md5", "ign_md5_stale", "ign_unofficial_suffix", "not_ignored")}
    (db / "parity.ndb").write_text("\n".join(ndb_lines.values()) + "\n")
    (db / "parity.hdb").write_text("\n".join([
        f"{h('md5', 'hdb_fp_md5')}:Parity.hdb_fp_md5",
        f"{h('md5', 'hdb_fp_wrong_size')}:Parity.hdb_fp_wrong_size",
        f"{h('md5', 'hdb_and_ndb_fp')}:Parity.hdb_and_ndb_fp.hash",
        f"{h('md5', 'ign_hash_sig')}:Parity.ign_hash_sig",
    ]) + "\n")
    (db / "parity.fp").write_text("\n".join([
        f"{h('md5', 'hdb_fp_md5')}:Allow.hdb_fp_md5",
        f"{h('md5', 'hdb_fp_wrong_size', str(len(data['hdb_fp_wrong_size']) + 1))}:Allow.hdb_fp_wrong_size",
        f"{h('md5', 'hdb_and_ndb_fp')}:Allow.hdb_and_ndb_fp",
    ]) + "\n")
    (db / "parity.sfp").write_text("\n".join([
        f"{h('sha1', 'hsb_fp_sha1')}:Allow.hsb_fp_sha1",
        f"{h('sha256', 'ndb_sfp_sha256')}:Allow.ndb_sfp_sha256",
        f"{hashlib.sha256(data['ndb_sfp_any_size']).hexdigest()}:*:Allow.ndb_sfp_any_size:73",
    ]) + "\n")
    line_md5 = hashlib.md5(ndb_lines["ign_md5"].encode()).hexdigest()
    stale_md5 = hashlib.md5((ndb_lines["ign_md5_stale"] + "00").encode()).hexdigest()
    # bare names first: clamscan 1.4.6 refuses a bare name that follows a Name:md5 line ("Malformed MD5")
    (db / "parity.ign2").write_text("\n".join([
        "Parity.ign_bare",
        "Parity.ign_unofficial_suffix.UNOFFICIAL",
        "Parity.ign_hash_sig",
        f"Parity.ign_md5:{line_md5}",
        f"Parity.ign_md5_stale:{stale_md5}",
    ]) + "\n")
    return Built(["-d", str(db)], files)


ALLOW_PROBES = [Probe("allow", n, n, e) for n, e in [
    ("hdb_fp_md5", ()),
    ("hdb_fp_wrong_size", ("Parity.hdb_fp_wrong_size",)),
    ("hsb_fp_sha1", ()),
    ("ndb_sfp_sha256", ()),
    ("ndb_sfp_any_size", ()),
    ("hdb_and_ndb_fp", ()),
    ("ign_bare", ()),
    ("ign_md5", ()),
    ("ign_md5_stale", ("Parity.ign_md5_stale",)),
    # an ignore entry is compared with the bare name as written: "X.UNOFFICIAL" never ignores X
    ("ign_unofficial_suffix", ("Parity.ign_unofficial_suffix",)),
    ("ign_hash_sig", ()),
    ("not_ignored", ("Parity.not_ignored",)),
]]


# ---------------------------------------------------------------- executables: EP / section offsets
@dataclass(frozen=True)
class ExeLayout:
    data: bytes
    entry: int                          # file offset of the entry point
    sections: list[tuple[int, int]]     # (raw offset, raw size) as ClamAV computes them


def build_pe_file() -> bytes:
    """A minimal well-formed PE32 with three 0x200-byte sections; entry point RVA 0x2010 (.data + 0x10)."""
    dos = bytearray(0x80)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x14C, 3, 0, 0, 0, 0xE0, 0x0102)
    opt = struct.pack("<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII", 0x10B, 1, 0, 0x200, 0x400, 0, 0x2010, 0x1000, 0x2000,
                      0x400000, 0x1000, 0x200, 4, 0, 0, 0, 4, 0, 0, 0x4000, 0x200, 0, 2, 0,
                      0x100000, 0x1000, 0x100000, 0x1000, 0, 16) + bytes(128)
    table = b"".join(struct.pack("<8sIIIIIIHHI", name, 0x200, va, 0x200, 0x200 * (i + 1), 0, 0, 0, 0, chars)
                     for i, (name, va, chars) in enumerate([(b".text", 0x1000, 0x60000020),
                                                            (b".data", 0x2000, 0xC0000040),
                                                            (b".rsrc", 0x3000, 0x40000040)]))
    headers = bytes(dos) + coff + opt + table
    return headers + bytes(0x200 - len(headers)) + blob(0x600, "parity-pe")


def pe_layout(data: bytes) -> ExeLayout:
    """Entry point and sections the way ClamAV's cli_peheader computes them (file alignment 0x200)."""
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    nsections, opt_size = struct.unpack_from("<H", data, pe + 6)[0], struct.unpack_from("<H", data, pe + 20)[0]
    opt = pe + 24
    entry_rva = struct.unpack_from("<I", data, opt + 16)[0]
    falign = struct.unpack_from("<I", data, opt + 36)[0]
    sections, mapped = [], []
    for i in range(nsections):
        vsize, va, raw_size, raw_ptr = struct.unpack_from("<IIII", data, opt + opt_size + 40 * i + 8)
        raw = raw_ptr // falign * falign
        rsz = -(-raw_size // falign) * falign
        sections.append((raw, rsz))
        mapped.append((va, max(vsize, raw_size), raw))
    entry = next(raw + entry_rva - va for va, size, raw in mapped if va <= entry_rva < va + size)
    return ExeLayout(data, entry, sections)


def elf_layout(data: bytes) -> ExeLayout | None:
    """ELF64 little-endian: entry point through PT_LOAD, sections from the section headers."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    entry_va, phoff, shoff = struct.unpack_from("<QQQ", data, 24)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    entry = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_vaddr <= entry_va < p_vaddr + p_filesz:
            entry = entry_va - p_vaddr + p_offset
    sections = [struct.unpack_from("<QQ", data, shoff + i * shentsize + 24) for i in range(shnum)]
    if entry is None or not sections:
        return None
    return ExeLayout(data, entry, [(off, size) for off, size in sections])


def _elf_source() -> Path | None:
    for candidate in ("/bin/true", "/usr/bin/true", "/bin/ls"):
        p = Path(candidate)
        if p.is_file() and elf_layout(p.read_bytes()) is not None:
            return p
    return None


@dataclass(frozen=True)
class ExeCase:
    """``make(layouts)`` returns (offset field, signature bytes); ``expect`` = files clamscan flags."""

    id: str
    target: str
    make: Callable[[dict[str, ExeLayout]], tuple[str, bytes]]
    expect: tuple[str, ...]

    @property
    def sig(self) -> str:
        return f"Parity.Exe.{self.id}"


def _at(layouts: dict[str, ExeLayout], file: str, offset: int) -> bytes:
    """The shortest run of at least 8 bytes at ``offset`` that occurs only there in the file."""
    data = layouts[file].data
    for n in range(8, 65):
        chunk = data[offset:offset + n]
        if len(chunk) == n and data.count(chunk) == 1:
            return chunk
    raise AssertionError(f"{file}@{offset}: no unique bytes there, pick another offset")


def _elf_ep_section(layouts: dict[str, ExeLayout]) -> int:
    lay = layouts["true.elf"]
    return next(i for i, (off, size) in enumerate(lay.sections) if off <= lay.entry < off + size)


CLAM = "clam.exe"
CR = "crafted.exe"
UN = "unaligned.exe"
ELF = "true.elf"
EXE_CASES = [
    # clam.exe: one section (raw 0, size 0x200 after alignment; the file is 544 bytes), EP at 64
    ExeCase("clam_ep", "1", lambda L: ("EP+0", _at(L, CLAM, L[CLAM].entry)), (CLAM,)),
    ExeCase("clam_ep_plus", "1", lambda L: ("EP+8", _at(L, CLAM, L[CLAM].entry + 8)), (CLAM,)),
    ExeCase("clam_ep_minus", "1", lambda L: ("EP-4", _at(L, CLAM, L[CLAM].entry - 4)), (CLAM,)),
    ExeCase("clam_ep_shift", "1", lambda L: ("EP+2,6", _at(L, CLAM, L[CLAM].entry + 8)), (CLAM,)),
    ExeCase("clam_ep_shift_short", "1", lambda L: ("EP+2,5", _at(L, CLAM, L[CLAM].entry + 8)), ()),
    ExeCase("clam_ep_off_by_one", "1", lambda L: ("EP+1", _at(L, CLAM, L[CLAM].entry)), ()),
    # EP-n reaching before the file start: clamscan never matches, even with a maxshift that reaches back
    ExeCase("clam_ep_minus_past_start", "1", lambda L: ("EP-100,200", _at(L, CLAM, L[CLAM].entry)), ()),
    ExeCase("clam_s0", "1", lambda L: ("S0+100", _at(L, CLAM, 100)), (CLAM,)),
    ExeCase("clam_sl", "1", lambda L: ("SL+200", _at(L, CLAM, 200)), (CLAM,)),
    ExeCase("clam_se0", "1", lambda L: ("SE0", _at(L, CLAM, 300)), (CLAM,)),
    ExeCase("clam_s1_missing", "1", lambda L: ("S1+0", _at(L, CLAM, 100)), ()),
    ExeCase("clam_target_elf", "6", lambda L: ("EP+0", _at(L, CLAM, L[CLAM].entry + 16)), ()),
    ExeCase("clam_target_any_control", "0", lambda L: ("*", _at(L, CLAM, L[CLAM].entry + 24)), (CLAM,)),
    # crafted PE: sections at 0x200 / 0x400 / 0x600, EP at 0x410
    ExeCase("pe_ep", "1", lambda L: ("EP+0", _at(L, CR, L[CR].entry)), (CR,)),
    ExeCase("pe_ep_minus", "1", lambda L: ("EP-32", _at(L, CR, L[CR].entry - 32)), (CR,)),
    ExeCase("pe_s0", "1", lambda L: ("S0+4", _at(L, CR, L[CR].sections[0][0] + 4)), (CR,)),
    ExeCase("pe_s1", "1", lambda L: ("S1+4", _at(L, CR, L[CR].sections[1][0] + 4)), (CR,)),
    ExeCase("pe_s1_bytes_of_s2", "1", lambda L: ("S1+4", _at(L, CR, L[CR].sections[2][0] + 4)), ()),
    ExeCase("pe_s2", "1", lambda L: ("S2+300", _at(L, CR, L[CR].sections[2][0] + 300)), (CR,)),
    ExeCase("pe_sl", "1", lambda L: ("SL+16", _at(L, CR, L[CR].sections[2][0] + 16)), (CR,)),
    ExeCase("pe_sl_bytes_of_s0", "1", lambda L: ("SL+16", _at(L, CR, L[CR].sections[0][0] + 16)), ()),
    ExeCase("pe_sl_shift", "1", lambda L: ("SL+10,10", _at(L, CR, L[CR].sections[2][0] + 20)), (CR,)),
    ExeCase("pe_se1", "1", lambda L: ("SE1", _at(L, CR, L[CR].sections[1][0] + 0x100)), (CR,)),
    ExeCase("pe_se1_bytes_of_s2", "1", lambda L: ("SE1", _at(L, CR, L[CR].sections[2][0] + 0x100)), ()),
    ExeCase("pe_se1_bytes_of_s0", "1", lambda L: ("SE1", _at(L, CR, L[CR].sections[0][0] + 0x100)), ()),
    # SEx takes a maxshift too: start anywhere in [start, start + size + maxshift]
    ExeCase("pe_se1_maxshift", "1", lambda L: ("SE1,256", _at(L, CR, L[CR].sections[2][0] + 0xF0)), (CR,)),
    ExeCase("pe_s3_missing", "1", lambda L: ("S3+0", _at(L, CR, L[CR].sections[2][0])), ()),
    # the same PE with section 2's PointerToRawData at 0x601 and 0x400 bytes of overlay: ClamAV aligns the
    # start down to 0x600 and the size up to 0x200, so SE2 ends at 0x800
    ExeCase("unaligned_s2", "1", lambda L: ("S2+16", _at(L, UN, 0x610)), (UN,)),
    ExeCase("unaligned_se2_inside", "1", lambda L: ("SE2", _at(L, UN, 0x700)), (UN,)),
    ExeCase("unaligned_se2_end", "1", lambda L: ("SE2", _at(L, UN, 0x800)), (UN,)),
    ExeCase("unaligned_se2_past_end", "1", lambda L: ("SE2", _at(L, UN, 0x900)), ()),
    # ELF (target 6): a copy of /bin/true
    ExeCase("elf_ep", "6", lambda L: ("EP+0", _at(L, ELF, L[ELF].entry)), (ELF,)),
    ExeCase("elf_ep_plus", "6", lambda L: ("EP+8", _at(L, ELF, L[ELF].entry + 8)), (ELF,)),
    ExeCase("elf_ep_off_by_one", "6", lambda L: ("EP+1", _at(L, ELF, L[ELF].entry)), ()),
    ExeCase("elf_sx", "6", lambda L: (f"S{_elf_ep_section(L)}+0",
                                      _at(L, ELF, L[ELF].sections[_elf_ep_section(L)][0])), (ELF,)),
    ExeCase("elf_sl", "6", lambda L: ("SL+4", _at(L, ELF, L[ELF].sections[-1][0] + 4)), (ELF,)),
    ExeCase("elf_se", "6", lambda L: (f"SE{_elf_ep_section(L)}", _at(L, ELF, L[ELF].entry + 40)), (ELF,)),
    ExeCase("elf_target_pe", "1", lambda L: ("*", _at(L, ELF, L[ELF].entry + 16)), ()),
    ExeCase("elf_target_any_control", "0", lambda L: ("*", _at(L, ELF, L[ELF].entry + 24)), (ELF,)),
]


def build_exe(root: Path) -> Built:
    files = root / "files"
    files.mkdir()
    clam = TESTFILES / "clam.exe"
    elf = _elf_source()
    if not clam.is_file() or elf is None:
        pytest.skip("needs /usr/share/clamav-testfiles/clam.exe (clamav-testfiles) and an ELF64 /bin/true")
    (files / CLAM).write_bytes(clam.read_bytes())
    (files / CR).write_bytes(build_pe_file())
    unaligned = bytearray(build_pe_file()) + blob(0x400, "parity-overlay")
    struct.pack_into("<I", unaligned, 0x178 + 2 * 40 + 20, 0x601)  # section 2's PointerToRawData
    (files / UN).write_bytes(unaligned)
    (files / ELF).write_bytes(elf.read_bytes())
    layouts = {CLAM: pe_layout((files / CLAM).read_bytes()), CR: pe_layout((files / CR).read_bytes()),
               UN: pe_layout(bytes(unaligned)), ELF: elf_layout((files / ELF).read_bytes())}
    lines = []
    for case in EXE_CASES:
        offset, sig = case.make(layouts)  # type: ignore[arg-type]
        lines.append(f"{case.sig}:{case.target}:{offset}:{sig.hex()}")
    (root / "exe.ndb").write_text("\n".join(lines) + "\n")
    return Built(["-d", str(root / "exe.ndb")], files)


def _exe_probe(case: ExeCase) -> Probe:
    """Each case is about one file: the one it must flag, else the one its name starts with."""
    file = case.expect[0] if case.expect else {"clam": CLAM, "pe": CR, "unaligned": UN,
                                                "elf": ELF}[case.id.split("_")[0]]
    return Probe("exe", case.id, file, (case.sig,) if case.expect else (), only=case.sig)


EXE_PROBES = [_exe_probe(c) for c in EXE_CASES]

# ---------------------------------------------------------------- several signatures on one file
# Without -z each program prints one name; which one is an ordering question (README: may differ).
ORDER_SIGS = {
    # name: (db file, line); "{md5:FILE}" is replaced by "md5:size" of that file
    "Parity.Order.late_first": ("order.ndb", "Parity.Order.late_first:0:*:" + hexs("ORDER-LATE")),
    "Parity.Order.early_second": ("order.ndb", "Parity.Order.early_second:0:*:" + hexs("ORDER-EARLY")),
    "Parity.Order.body": ("order.ndb", "Parity.Order.body:0:*:" + hexs("ORDER-BODY")),
    "Parity.Order.hash": ("order.hdb", "{md5:body_and_hash}:Parity.Order.hash"),
    "Parity.Order.pe_generic": ("order.ndb", "Parity.Order.pe_generic:0:*:" + hexs("ORDER-PE-ANY")),
    "Parity.Order.pe_typed": ("order.ndb", "Parity.Order.pe_typed:1:*:" + hexs("ORDER-PE-TYPED")),
    "Parity.Order.text_raw": ("order.ndb", "Parity.Order.text_raw:0:*:" + hexs("ORDER-TEXT")),
    "Parity.Order.text_norm": ("order.ndb", "Parity.Order.text_norm:7:*:" + hexs("order words")),
}
ORDER_FILES = {
    "two_offsets": (b"\x00" * 8 + b"ORDER-EARLY" + b"\x00" * 8 + b"ORDER-LATE\x00",
                    ("Parity.Order.early_second", "Parity.Order.late_first")),
    "body_and_hash": (b"\x00" * 8 + b"ORDER-BODY" + b"\x00" * 8, ("Parity.Order.body", "Parity.Order.hash")),
    "pe_typed_and_generic": (None, ("Parity.Order.pe_generic", "Parity.Order.pe_typed")),
    "text_raw_and_normalized": (b"ORDER  WORDS first, then ORDER-TEXT\n",
                                ("Parity.Order.text_norm", "Parity.Order.text_raw")),
}


def build_order(root: Path) -> Built:
    db = root / "db"
    files = root / "files"
    db.mkdir()
    files.mkdir()
    for name, (body, _) in ORDER_FILES.items():
        if body is None:  # a PE: generic signature early in the file, PE signature later
            pe = bytearray(build_pe_file())
            pe[0x220:0x22C] = b"ORDER-PE-ANY"
            pe[0x520:0x52E] = b"ORDER-PE-TYPED"
            body = bytes(pe)
        (files / name).write_bytes(body)
    lines: dict[str, list[str]] = {}
    for db_file, line in ORDER_SIGS.values():
        for name in ORDER_FILES:
            data = (files / name).read_bytes()
            line = line.replace(f"{{md5:{name}}}", f"{hashlib.md5(data).hexdigest()}:{len(data)}")
        lines.setdefault(db_file, []).append(line)
    for db_file, text in lines.items():
        (db / db_file).write_text("\n".join(text) + "\n")
    return Built(["-d", str(db)], files)


ORDER_PROBES = [Probe("order", name, name, names) for name, (_, names) in ORDER_FILES.items()]

SCENARIOS: dict[str, Callable[[Path], Built]] = {
    "hash": build_hash, "ndb": build_ndb, "allow": build_allow, "exe": build_exe, "order": build_order,
}
ALL_PROBES = HASH_PROBES + NDB_PROBES + ALLOW_PROBES + EXE_PROBES + ORDER_PROBES
assert len({p.id for p in ALL_PROBES}) == len(ALL_PROBES), "two probes share a test id"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Callable[[str], ScenarioRun]:
    """``scenario(name)``: build it and run both programs with and without ``-z`` (once per module)."""
    runs: dict[str, ScenarioRun] = {}

    def get(name: str) -> ScenarioRun:
        if name not in runs:
            root = tmp_path_factory.mktemp(f"parity-{name}")
            built = SCENARIOS[name](root)
            base = [*built.db_args, "--no-summary", str(built.scan_dir)]
            runs[name] = ScenarioRun(built, run_both(["-z", *base], root, shared_cache_dir),
                                     run_both(base, root, shared_cache_dir))
        return runs[name]

    return get


@pytest.mark.parametrize("probe", ALL_PROBES, ids=lambda p: p.id)
def test_allmatch_names(scenario: Callable[[str], ScenarioRun], probe: Probe) -> None:
    """With ``-z``: the same names (as a sorted list) and the same status line for the file."""
    run = scenario(probe.scenario)
    path = run.path(probe.file)
    pair = run.allmatch
    assert pair.clam.rc in (0, 1), f"clamscan failed on the scenario database:\n{pair.report()}"
    assert probe.names(pair.bastion, path) == probe.names(pair.clam, path), pair.report(path)
    if probe.only is None:
        assert pair.bastion.statuses(path) == pair.clam.statuses(path), pair.report(path)
    expected = sorted(n + UNOFFICIAL for n in probe.expect)
    assert probe.names(pair.clam, path) == expected, \
        f"clamscan itself no longer does what this case expects\n{pair.report(path)}"


@pytest.mark.parametrize("probe", [p for p in ALL_PROBES if p.only is None], ids=lambda p: p.id)
def test_first_match_verdict(scenario: Callable[[str], ScenarioRun], probe: Probe) -> None:
    """Without ``-z``: infected or not must agree, and exactly one name is printed per infected file."""
    run = scenario(probe.scenario)
    path = run.path(probe.file)
    pair = run.first
    assert (path in pair.bastion.infected) == (path in pair.clam.infected), pair.report(path)
    assert pair.bastion.statuses(path) == pair.clam.statuses(path), pair.report(path)
    assert len(pair.bastion.names(path)) == len(pair.clam.names(path)), pair.report(path)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_exit_codes_and_lines(scenario: Callable[[str], ScenarioRun], name: str) -> None:
    """Whole-run view: exit codes, every FOUND/status line (no file left out, no stray line)."""
    run = scenario(name)
    for pair in (run.allmatch, run.first):
        assert pair.bastion.rc == pair.clam.rc, pair.report()
        assert pair.bastion.status == pair.clam.status, pair.report()
        assert pair.bastion.other == pair.clam.other, pair.report()
    assert run.allmatch.bastion.found_set == run.allmatch.clam.found_set, run.allmatch.report()
    assert run.first.bastion.infected == run.first.clam.infected, run.first.report()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_first_reported_name_without_allmatch(scenario: Callable[[str], ScenarioRun], name: str) -> None:
    """Without ``-z``, which name is printed for a file matched by several signatures.

    The README allows this to differ; the test records whether it does in these scenarios.
    """
    pair = scenario(name).first
    differ = sorted({p for p, _ in pair.clam.found} & {p for p, _ in pair.bastion.found})
    differ = [p for p in differ if pair.clam.names(p) != pair.bastion.names(p)]
    assert not differ, "\n".join(pair.report(p) for p in differ)


# --------------------------------------------------------------------------------------------------
# Malformed databases: both refuse to start (exit 2) and name the line
# --------------------------------------------------------------------------------------------------
GOOD_NDB = "Parity.Good:0:*:41424344"
GOOD_HDB = "44d88612fea8a8f36de82e1278abb02f:68:Parity.Good"
MD5_EMPTY = "d41d8cd98f00b204e9800998ecf8427e"
MALFORMED = [
    # (id, file name, content, line clamscan names)
    ("hdb_two_fields", "bad.hdb", f"{GOOD_HDB}\n{MD5_EMPTY}:5\n", 2),
    ("hdb_six_fields", "bad.hdb", f"{GOOD_HDB}\n{MD5_EMPTY}:5:N:1:255:x\n", 2),
    ("hdb_bad_hex", "bad.hdb", f"{GOOD_HDB}\n{'zz' * 16}:5:N\n", 2),
    ("hdb_hash_length", "bad.hdb", f"{GOOD_HDB}\n{MD5_EMPTY[:-1]}:5:N\n", 2),
    ("hdb_size_zero", "bad.hdb", f"{GOOD_HDB}\n{MD5_EMPTY}:0:N\n", 2),
    ("hdb_size_text", "bad.hdb", f"{GOOD_HDB}\n{MD5_EMPTY}:abc:N\n", 2),
    ("hdb_any_size_no_fl", "bad.hdb", f"{GOOD_HDB}\n{MD5_EMPTY}:*:N\n", 2),
    ("hsb_any_size_fl_72", "bad.hsb", f"{'ab' * 32}:*:N:72\n", 1),
    ("hdb_blank_line", "bad.hdb", f"{GOOD_HDB}\n\n{GOOD_HDB}\n", 2),
    ("ndb_three_fields", "bad.ndb", f"{GOOD_NDB}\nN:0:*\n", 2),
    ("ndb_seven_fields", "bad.ndb", f"{GOOD_NDB}\nN:0:*:41424344:1:255:x\n", 2),
    ("ndb_bad_hex", "bad.ndb", f"{GOOD_NDB}\nN:0:*:4142zz44\n", 2),
    ("ndb_odd_hex", "bad.ndb", f"{GOOD_NDB}\nN:0:*:4142434\n", 2),
    ("ndb_blank_line", "bad.ndb", f"{GOOD_NDB}\n\n{GOOD_NDB}\n", 2),
    ("ndb_comment_then_bad", "bad.ndb", f"# a comment\n{GOOD_NDB}\nN:0:*:4142zz44\n", 3),
    ("ndb_no_literal_pair", "bad.ndb", f"{GOOD_NDB}\nN:0:*:e8????????5d\n", 2),
    ("ndb_byte_range_both_sides", "bad.ndb", f"{GOOD_NDB}\nN:0:*:4142[1-3]4344\n", 2),
    ("ndb_byte_range_over_32", "bad.ndb", f"{GOOD_NDB}\nN:0:*:41[1-33]424344\n", 2),
    ("ndb_star_at_end", "bad.ndb", f"{GOOD_NDB}\nN:0:*:41424344*\n", 2),
    ("ndb_section_any_with_target_any", "bad.ndb", f"{GOOD_NDB}\nN:0:SE0:41424344\n", 2),
    ("ndb_version_info_with_target_any", "bad.ndb", f"{GOOD_NDB}\nN:0:VI:41424344\n", 2),
    ("ndb_fl_text", "bad.ndb", f"{GOOD_NDB}\nN:0:*:41424344:abc\n", 2),
    ("ndb_empty_name", "bad.ndb", f"{GOOD_NDB}\n:0:*:41424344\n", 2),
    ("ndb_ep_with_target_any", "bad.ndb", f"{GOOD_NDB}\nN:0:EP+0:41424344\n", 2),
    ("ndb_section_with_target_text", "bad.ndb", f"{GOOD_NDB}\nN:7:S0+0:41424344\n", 2),
    ("ndb_target_abc", "bad.ndb", f"{GOOD_NDB}\nN:abc:*:41424344\n", 2),
    ("ndb_one_byte", "bad.ndb", f"{GOOD_NDB}\nN:0:*:41\n", 2),
    ("ndb_two_byte_literal_target_any", "bad.ndb", f"{GOOD_NDB}\nN:0:*:4142\n", 2),
    ("ndb_two_byte_literal_at_offset", "bad.ndb", f"{GOOD_NDB}\nN:0:EOF-3:4142\n", 2),
    ("ndb_bad_offset", "bad.ndb", f"{GOOD_NDB}\nN:0:EOF-x:41424344\n", 2),
    ("ndb_bare_ep", "bad.ndb", f"{GOOD_NDB}\nN:1:EP:41424344\n", 2),
]


@pytest.mark.parametrize(("case", "filename", "content", "line"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_database(tmp_path: Path, shared_cache_dir: Path, case: str, filename: str, content: str,
                            line: int) -> None:
    db = tmp_path / filename
    db.write_text(content)
    target = tmp_path / "target.bin"
    target.write_bytes(b"\x00ABCD\x00")
    pair = run_both(["--no-summary", "-d", str(db), str(target)], tmp_path, shared_cache_dir)
    assert pair.clam.rc == 2, f"clamscan accepted the database: case design\n{pair.report()}"
    assert pair.bastion.rc == pair.clam.rc, pair.report()
    assert not pair.bastion.found and not pair.bastion.status, pair.report()
    m = re.search(r"at line (\d+)", pair.clam.stderr)
    assert m and int(m.group(1)) == line, f"clamscan names another line: case design\n{pair.report()}"
    assert f"{db}:{line}:" in pair.bastion.stderr, pair.report()


# Lines that look wrong but that clamscan 1.4.6 loads: refusing the whole database would be worse
ACCEPT_TARGET = b"\x00ABCD\x00ABxxxCD\x00parity fl text\x00"
ACCEPT_MD5 = f"{hashlib.md5(ACCEPT_TARGET).hexdigest()}:{len(ACCEPT_TARGET)}"
ACCEPTED = [
    # (id, file name, content, names clamscan reports with -z)
    ("ndb_two_byte_literal_typed", "ok.ndb", f"{GOOD_NDB}\nParity.Two:1:*:4142\n", ("Parity.Good",)),
    ("ndb_reversed_range_never_matches", "ok.ndb", f"{GOOD_NDB}\nParity.Reversed:0:*:4142{{5-2}}4344\n",
     ("Parity.Good",)),
    ("hdb_fl_text_skips_the_line", "ok.hdb", f"{ACCEPT_MD5}:Parity.FlText:abc\n{ACCEPT_MD5}:Parity.Plain\n",
     ("Parity.Plain",)),
    ("hdb_fl_number_then_text", "ok.hdb", f"{ACCEPT_MD5}:Parity.Fl73x:73x\n", ("Parity.Fl73x",)),
    ("hdb_fl_large_number_then_text", "ok.hdb", f"{ACCEPT_MD5}:Parity.Fl300x:300x\n{ACCEPT_MD5}:Parity.Plain\n",
     ("Parity.Plain",)),
]


@pytest.mark.parametrize(("case", "filename", "content", "expect"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_database_clamscan_accepts(tmp_path: Path, shared_cache_dir: Path, case: str, filename: str, content: str,
                                   expect: tuple[str, ...]) -> None:
    db = tmp_path / filename
    db.write_text(content)
    target = tmp_path / "target.bin"
    target.write_bytes(ACCEPT_TARGET)
    pair = run_both(["-z", "--no-summary", "-d", str(db), str(target)], tmp_path, shared_cache_dir)
    assert pair.bastion.rc == pair.clam.rc, pair.report()
    assert pair.bastion.found_set == pair.clam.found_set, pair.report()
    assert pair.clam.rc == 1 and pair.clam.names(str(target)) == sorted(n + UNOFFICIAL for n in expect), \
        f"clamscan no longer does what this case expects\n{pair.report()}"


# --------------------------------------------------------------------------------------------------
# ign2 given as its own -d: order matters in clamscan (an ignore list applies to what loads after it)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ign_first", [True, False], ids=["ign2_before_db", "ign2_after_db"])
def test_ignore_list_given_separately(tmp_path: Path, shared_cache_dir: Path, ign_first: bool) -> None:
    ndb = tmp_path / "sigs.ndb"
    ndb.write_text("Parity.Ignored:0:*:7061726974792d69676e6f7265\nParity.Kept:0:*:7061726974792d6b656570\n")
    ign = tmp_path / "names.ign2"
    ign.write_text("Parity.Ignored\n")
    target = tmp_path / "target.bin"
    target.write_bytes(b"\x00parity-ignore parity-keep\x00")
    dbs = ["-d", str(ign), "-d", str(ndb)] if ign_first else ["-d", str(ndb), "-d", str(ign)]
    pair = run_both(["-z", "--no-summary", *dbs, str(target)], tmp_path, shared_cache_dir)
    assert pair.bastion.found_set == pair.clam.found_set, pair.report()
    assert pair.bastion.rc == pair.clam.rc, pair.report()


# --------------------------------------------------------------------------------------------------
# Walking the command line: recursion, filters, links, special files, stdin, lists, output options
# --------------------------------------------------------------------------------------------------
WALK_SIG = b"PARITY-WALK-SIGNATURE"


@dataclass(frozen=True)
class WalkCase:
    id: str
    args: tuple[str, ...]
    stdin: bytes | None = None
    rc: int | None = None      # what clamscan 1.4.6 returns (sanity check of the case)


WALK_CASES = [
    WalkCase("recursive", ("-r", "w"), rc=1),
    WalkCase("not_recursive", ("w",), rc=1),
    WalkCase("recursive_trailing_slash", ("-r", "w/"), rc=1),
    WalkCase("recursive_absolute", ("-r", "@/w"), rc=1),
    WalkCase("exclude", ("-r", r"--exclude=\.log$", "w"), rc=1),
    WalkCase("exclude_dir", ("-r", "--exclude-dir=skipme", "w"), rc=1),
    WalkCase("exclude_dir_anchored", ("-r", "--exclude-dir=sub$", "w"), rc=1),
    WalkCase("include", ("-r", r"--include=\.bin$", "w"), rc=1),
    WalkCase("exclude_file_on_command_line", ("--exclude=inf", "w/inf.bin", "w/clean.txt"), rc=0),
    WalkCase("symlink_to_file_on_command_line", ("w/lnk",), rc=1),
    WalkCase("symlink_to_dir_on_command_line", ("w/dlnk",), rc=1),
    WalkCase("symlink_to_dir_on_command_line_recursive", ("-r", "w/dlnk"), rc=1),
    WalkCase("empty_file", ("w/empty",), rc=0),
    WalkCase("fifo_on_command_line", ("w/fifo",), rc=2),
    WalkCase("fifo_and_clean_file", ("w/fifo", "w/clean.txt"), rc=2),
    WalkCase("missing", ("w/nope",), rc=2),
    WalkCase("missing_and_infected", ("w/nope", "w/inf.bin"), rc=1),
    WalkCase("missing_and_clean", ("w/nope", "w/clean.txt"), rc=2),
    WalkCase("clean_only", ("w/clean.txt", "w/sub/clean2.txt"), rc=0),
    WalkCase("stdin_infected", ("-",), stdin=b"\x00" + WALK_SIG + b"\x00", rc=1),
    WalkCase("stdin_clean", ("-",), stdin=b"nothing to see\n", rc=0),
    WalkCase("stdin_empty", ("-",), stdin=b"", rc=0),
    WalkCase("file_list", ("-f", "list.txt"), rc=1),
    WalkCase("file_list_with_missing", ("-f", "list-missing.txt"), rc=1),
    WalkCase("infected_only", ("-i", "-r", "w"), rc=1),
    WalkCase("suppress_ok", ("-o", "-r", "w"), rc=1),
    WalkCase("suppress_ok_excluded", ("-o", "-r", "--exclude-dir=skipme", r"--exclude=\.log$", "w"), rc=1),
    WalkCase("infected_only_excluded", ("-i", "-r", "--exclude-dir=skipme", "w"), rc=1),
    WalkCase("no_summary", ("--no-summary", "-r", "w"), rc=1),
    WalkCase("max_filesize", ("--max-filesize=1K", "big.bin", "w/inf.bin"), rc=1),
    WalkCase("max_filesize_only_big", ("--max-filesize=1K", "big.bin"), rc=0),
    WalkCase("quiet", ("--quiet", "-r", "w"), rc=1),
]


@pytest.fixture(scope="module")
def walk_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("parity-walk")
    w = base / "w"
    for rel, body in {
        "clean.txt": b"hello walk\n",
        "inf.bin": b"\x00" + WALK_SIG + b"\x00",
        "notes.log": b"log " + WALK_SIG + b"\n",
        "empty": b"",
        "sub/inf2.bin": b"\x01" + WALK_SIG,
        "sub/clean2.txt": b"clean two\n",
        "sub/deeper/inf3.bin": WALK_SIG + b"\x02",
        "skipme/inf4.bin": b"\x03" + WALK_SIG,
    }.items():
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).write_bytes(body)
    (w / "lnk").symlink_to("inf.bin")
    (w / "dlnk").symlink_to("sub")
    if hasattr(os, "mkfifo"):
        os.mkfifo(w / "fifo")
    (base / "big.bin").write_bytes(WALK_SIG + blob(3000, "big"))
    (base / "list.txt").write_text("w/inf.bin\nw/clean.txt\nw/sub\n")
    (base / "list-missing.txt").write_text("w/nope\nw/inf.bin\n")
    (base / "db.ndb").write_text(f"Parity.Walk:0:*:{WALK_SIG.hex()}\n")
    return base


@pytest.fixture(scope="module")
def walk_runs(walk_tree: Path, shared_cache_dir: Path) -> Callable[[WalkCase], Pair]:
    cache: dict[str, Pair] = {}

    def get(case: WalkCase) -> Pair:
        if case.id not in cache:
            if "w/fifo" in case.args and not stat.S_ISFIFO(os.lstat(walk_tree / "w/fifo").st_mode):
                pytest.skip("no FIFOs here")
            args = [a.replace("@", str(walk_tree)) for a in case.args]
            cache[case.id] = run_both(["-d", "db.ndb", *args], walk_tree, shared_cache_dir, stdin=case.stdin)
        return cache[case.id]

    return get


@pytest.mark.parametrize("case", WALK_CASES, ids=lambda c: c.id)
def test_walk_verdicts(walk_runs: Callable[[WalkCase], Pair], case: WalkCase) -> None:
    pair = walk_runs(case)
    assert pair.bastion.found_set == pair.clam.found_set, pair.report()
    assert pair.bastion.status == pair.clam.status, pair.report()
    assert pair.bastion.other == pair.clam.other, pair.report()
    assert pair.bastion.rc == pair.clam.rc, pair.report()
    assert bool(pair.bastion.summary) == bool(pair.clam.summary), pair.report()
    assert pair.clam.rc == case.rc, f"clamscan no longer returns what this case expects\n{pair.report()}"


@pytest.mark.parametrize("case", [c for c in WALK_CASES if "--no-summary" not in c.args and "--quiet" not in c.args],
                         ids=lambda c: c.id)
def test_walk_summary_counts(walk_runs: Callable[[WalkCase], Pair], case: WalkCase) -> None:
    """The summary's counters (not the timings or sizes) agree too."""
    pair = walk_runs(case)
    keys = ("Known viruses", "Scanned directories", "Scanned files", "Infected files", "Total errors")
    clam = {k: pair.clam.summary.get(k) for k in keys}
    bastion = {k: pair.bastion.summary.get(k) for k in keys}
    assert bastion == clam, pair.report()


# --------------------------------------------------------------------------------------------------
# ClamAV's own test files, with hash lines made by sigtool
# --------------------------------------------------------------------------------------------------
# Hashes of these files themselves (not of anything they contain: clamscan unpacks containers, Bastion
# does not yet, see the README), plus files that are in no signature.
TESTFILES_IN_DB = ("clam.zip", "clam.7z", "clam.pdf", "clam.ole.doc", "clam.mail", "clam.cab", "clam-upx.exe",
                   "clam.exe.bz2")
TESTFILES_NOT_IN_DB = ("clam.exe", "clam.tar.gz", "clam.arj")


@pytest.mark.parametrize("options", [["-z"], []], ids=["allmatch", "first_match"])
@pytest.mark.parametrize("algo", ["md5", "sha1", "sha256"])
def test_clamav_testfiles(tmp_path: Path, shared_cache_dir: Path, algo: str, options: list[str]) -> None:
    if SIGTOOL is None or not TESTFILES.is_dir():
        pytest.skip("needs sigtool and /usr/share/clamav-testfiles (Debian: clamav-testfiles)")
    files = [TESTFILES / n for n in TESTFILES_IN_DB + TESTFILES_NOT_IN_DB if (TESTFILES / n).is_file()]
    in_db = [f for f in files if f.name in TESTFILES_IN_DB]
    if not in_db:
        pytest.skip("clamav-testfiles has none of the files this test uses")
    lines = subprocess.run([SIGTOOL, f"--{algo}", *map(str, in_db)], capture_output=True, text=True,
                           check=True).stdout
    db = tmp_path / ("test.hdb" if algo == "md5" else "test.hsb")
    db.write_text(lines)
    pair = run_both([*options, "--no-summary", "-d", str(db), *map(str, files)], tmp_path, shared_cache_dir)
    assert pair.bastion.rc == pair.clam.rc == 1, pair.report()
    assert pair.bastion.infected == pair.clam.infected == {str(f) for f in in_db}, pair.report()
    if options:
        assert pair.bastion.found_set == pair.clam.found_set, pair.report()
    assert pair.bastion.status == pair.clam.status, pair.report()


# --------------------------------------------------------------------------------------------------
# Known differences (listed in the README): asserted as they are, so a change either way is noticed
# --------------------------------------------------------------------------------------------------
KNOWN_TEXT_TYPING_DIFFERENCES = [
    # clamscan types these as text and normalizes them for target-7 signatures; Bastion calls them binary
    ("control_bytes", "slate ibis", b"SLATE  Ibis\x01\x02\x03\n"),
    ("utf16le_bom", "coral moth", b"\xff\xfe" + "CORAL  Moth\n".encode("utf-16-le")),
]


@pytest.mark.parametrize(("case", "text", "content"), KNOWN_TEXT_TYPING_DIFFERENCES,
                         ids=[c[0] for c in KNOWN_TEXT_TYPING_DIFFERENCES])
def test_known_difference_text_typing(tmp_path: Path, bastion_clamscan, clamav_clamscan, case: str, text: str,
                                      content: bytes) -> None:
    db = tmp_path / "k.ndb"
    db.write_text(f"Known.{case}:7:*:{text.encode().hex()}\n")
    target = tmp_path / "f"
    target.write_bytes(content)
    clam = subprocess.run([clamav_clamscan, "--no-summary", "-d", str(db), str(target)], capture_output=True,
                          text=True, timeout=120)
    ours = bastion_clamscan(["--no-summary", "-d", str(db), str(target)])
    assert "FOUND" in clam.stdout
    assert ours.stdout.strip() == f"{target}: OK"
