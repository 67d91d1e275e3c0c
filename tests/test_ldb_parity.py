"""Differential tests for logical signatures (``.ldb``): clamscan 1.4.6 and bastion-clamscan agree.

Same method as tests/test_clamscan_parity.py: every case's signature goes into one database, every
case's files into one directory; both programs scan it once with ``-z`` and once without, and each
file's names must be equal.  ``expect`` records what clamscan itself reports, so a case that stops
testing what it claims fails loudly.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_clamscan_parity import UNOFFICIAL, Pair, build_pe_file, hexs, run_both

Z = b"\x00"
TDB = "Engine:81-255,Target:0"


@dataclass(frozen=True)
class LdbCase:
    id: str
    tdb: str
    expr: str
    subsigs: tuple[str, ...]
    hits: tuple[bytes, ...]
    misses: tuple[bytes, ...]

    @property
    def sig(self) -> str:
        return f"Parity.Ldb.{self.id}"


def _l(id: str, expr: str, subsigs: list[str], hits: list[bytes], misses: list[bytes] | None = None,  # noqa: A002
       tdb: str = TDB) -> LdbCase:
    return LdbCase(id, tdb, expr, tuple(subsigs), tuple(hits), tuple(misses or ()))


T = "<T>"
TB = b"<T>"
CASES = [
    # ---- expressions
    _l("and", "0&1", [T + hexs("AB"), T + hexs("CD")], [Z + TB + b"AB" + Z + TB + b"CD" + Z],
       [Z + TB + b"AB" + Z * 4, Z + TB + b"CD" + Z * 4]),
    _l("or", "0|1", [T + hexs("AB"), T + hexs("CD")], [Z + TB + b"AB" + Z, Z + TB + b"CD" + Z], [Z + TB + b"EF" + Z]),
    _l("count_eq", "0=3", [T + hexs("Q")], [Z + (TB + b"Q") * 3 + Z], [Z + (TB + b"Q") * 2 + Z, Z + (TB + b"Q") * 4]),
    _l("count_gt", "0>2", [T + hexs("Q")], [Z + (TB + b"Q") * 3 + Z, Z + (TB + b"Q") * 9], [Z + (TB + b"Q") * 2 + Z]),
    _l("count_lt", "0<2&1", [T + hexs("Q"), T + hexs("R")], [Z + TB + b"Q" + TB + b"R", Z + TB + b"R" + Z * 3],
       [Z + (TB + b"Q") * 2 + TB + b"R"]),
    _l("negation", "0&1=0", [T + hexs("Q"), T + hexs("R")], [Z + TB + b"Q" + Z * 3], [Z + TB + b"Q" + TB + b"R"]),
    _l("overlapping_count", "0=5", ["f1f1f1"], [Z + b"\xf1" * 7 + Z], [Z + b"\xf1" * 6 + Z, Z + b"\xf1" * 8 + Z]),
    _l("block_count_distinct", "(0|1|2)>3,2", [T + hexs("Q"), T + hexs("R"), T + hexs("S")],
       [Z + (TB + b"Q") * 2 + (TB + b"R") * 2 + Z], [Z + (TB + b"Q") * 5 + Z, Z + TB + b"Q" + TB + b"R" + Z]),
    _l("block_eq", "(0|1)=2", [T + hexs("Q"), T + hexs("R")], [Z + TB + b"Q" + TB + b"R" + Z, Z + (TB + b"R") * 2],
       [Z + TB + b"Q" + Z * 4, Z + (TB + b"Q") * 3]),
    _l("no_precedence", "0&1|2", [T + hexs("Q"), T + hexs("R"), T + hexs("S")],
       [Z + TB + b"Q" + TB + b"S" + Z], [Z + TB + b"S" + Z * 4, Z + TB + b"R" + TB + b"S" + Z]),
    _l("nested", "(0&1)|(2&3)", [T + hexs("Q"), T + hexs("R"), T + hexs("S"), T + hexs("U")],
       [Z + TB + b"S" + TB + b"U" + Z], [Z + TB + b"Q" + TB + b"S" + Z]),
    # true without any content match: clamscan alerts on every object, even one with the content
    _l("only_negation", "0=0", [T + hexs("NG")], [Z * 8, Z + TB + b"NG" + Z]),
    _l("less_than_one", "0<1|1", [T + hexs("LT"), T + hexs("LU")], [Z * 8, Z + TB + b"LU" + Z, Z + TB + b"LT" + Z]),
    # ---- offsets of content subsignatures
    _l("offset_abs", "0&1", [T + hexs("Q"), "6:" + T + hexs("R")], [Z + TB + b"Q" + Z + TB + b"R" + Z],
       [Z + TB + b"Q" + TB + b"R" + Z]),
    _l("offset_eof_shift", "0&1", [T + hexs("Q"), "EOF-10,4:" + T + hexs("R")],
       [Z * 2 + TB + b"Q" + Z * 10 + TB + b"R" + Z * 6, Z * 2 + TB + b"Q" + Z * 10 + TB + b"R" + Z * 2],
       [Z * 2 + TB + b"Q" + Z * 10 + TB + b"R" + Z * 7, Z * 2 + TB + b"Q" + Z * 10 + TB + b"R" + Z]),
    _l("count_with_offset", "0=1", ["0,8:" + T + hexs("Q")], [TB + b"Q" + Z * 20 + TB + b"Q" + Z],
       [TB + b"Q" + TB + b"Q" + Z * 20]),
    # ---- modifiers (i w f a)
    _l("nocase", "0", [T + hexs("abC") + "::i"], [Z + TB + b"ABC" + Z, Z + TB + b"abc" + Z], [Z + TB + b"abd" + Z]),
    _l("wide", "0", [hexs("pWq") + "::w"], [Z + b"p\x00W\x00q\x00" + Z], [Z * 3 + b"pWq" + Z * 3]),
    _l("wide_any_byte_and_gap", "0&1", [hexs("kX") + "??" + hexs("Y") + "::w", hexs("mN") + "{2}" + hexs("P") + "::w"],
       [Z + b"k\x00X\x00z\x00Y\x00" + Z + b"m\x00N\x00qrP\x00" + Z],
       [Z + b"k\x00X\x00zY\x00" + Z + b"m\x00N\x00qrP\x00" + Z,
        Z + b"k\x00X\x00z\x00Y\x00" + Z + b"m\x00N\x00q\x00r\x00P\x00"]),
    _l("ascii_and_wide", "0", [hexs("jQv") + "::wa"], [Z * 3 + b"jQv" + Z * 3, Z + b"j\x00Q\x00v\x00" + Z],
       [Z * 3 + b"jQ\x00v" + Z * 3]),
    _l("fullword", "0", [hexs("gqz") + "::f"], [Z * 3 + b"gqz" + Z * 3, b"x gqz.", b"gqz-xx"],
       [Z + b"xgqz" + Z * 3, b"..gqz9."]),
    _l("fullword_nocase", "0", [hexs("hqz") + "::fi"], [b"x HQZ.", b"(hQz)x", b"x hqz_"], [b"xHQZ.", b"x hqz9"]),
    _l("fullword_wide", "0", [hexs("vq") + "::fw"], [Z * 2 + b"v\x00q\x00" + Z * 2], [Z + b"x\x00v\x00q\x00" + Z * 2]),
    # ---- PCRE subsignatures
    _l("pcre", "0&1", [T + hexs("P"), "0/v[0-9]{2}x/"], [Z + TB + b"P v42x" + Z], [Z + TB + b"P v4x" + Z,
                                                                                     Z + b"v42x" + Z * 3]),
    _l("pcre_flags_i_s", "0&1", [T + hexs("P"), "0/caps.line/si"], [Z + TB + b"P CAPS\nLINE" + Z],
       [Z + TB + b"P caps-lin" + Z]),
    _l("pcre_global_count", "0&1>2", [T + hexs("P"), "0/w[0-9]/g"], [Z + TB + b"P w1 w2 w3" + Z],
       [Z + TB + b"P w1 w2" + Z]),
    _l("pcre_semicolon", "0&1", [T + hexs("P"), "0/ab;cd/"], [Z + TB + b"P ab;cd" + Z], [Z + TB + b"P abcd" + Z]),
    _l("pcre_anchored_offset", "0&1", [T + hexs("P"), "10:0/zq+/"], [TB + b"P" + Z * 6 + b"zqq" + Z],
       [TB + b"P" + Z * 7 + b"zqq" + Z]),
    _l("pcre_rolling", "0&1", [T + hexs("P"), "10:0/zq+/r"], [TB + b"P" + Z * 12 + b"zqq" + Z],
       [Z * 6 + b"zqq" + Z * 4 + TB + b"P"]),
    _l("pcre_named_group", "0&1", [T + hexs("P"), "0/(?<word>mx)\\k<word>/"], [Z + TB + b"P mxmx" + Z],
       [Z + TB + b"P mxmy" + Z]),
    _l("pcre_trigger_false", "0&1|2", [T + hexs("P"), T + hexs("Q"), "1/tq/"], [Z + TB + b"P" + TB + b"Q tq" + Z],
       [Z + TB + b"P tq" + Z * 4]),
    # ---- byte compare
    _l("bcomp_binary", "0&1", [T + hexs("B"), "0(>>4#ib2#>1000)"],
       [Z + TB + b"B" + struct.pack(">H", 2000) + Z], [Z + TB + b"B" + struct.pack(">H", 999) + Z]),
    _l("bcomp_binary_le_range", "0&1", [T + hexs("B"), "0(>>4#il2#>10,<20)"],
       [Z + TB + b"B" + struct.pack("<H", 15) + Z], [Z + TB + b"B" + struct.pack("<H", 25) + Z]),
    _l("bcomp_decimal", "0&1", [T + hexs("D="), "0(>>5#de3#=123)"], [Z + TB + b"D=123" + Z],
       [Z + TB + b"D=124" + Z]),
    _l("bcomp_hex", "0&1", [T + hexs("H="), "0(>>5#hb4#=4660)"], [Z + TB + b"H=1234" + Z],
       [Z + TB + b"H=1235" + Z]),
    # ---- target description block
    _l("filesize", "0", [T + hexs("FS")], [Z + TB + b"FS" + Z * 5], [Z + TB + b"FS" + Z * 6],
       tdb="Engine:81-255,Target:0,FileSize:5-11"),
    _l("container_any_is_root", "0", [T + hexs("CA")], [Z + TB + b"CA" + Z],
       tdb="Engine:81-255,Target:0,Container:CL_TYPE_ANY"),
    _l("container_zip_not_at_root", "0", [T + hexs("CZ")], [], [Z + TB + b"CZ" + Z],
       tdb="Engine:81-255,Target:0,Container:CL_TYPE_ZIP"),
    _l("engine_too_new", "0", [T + hexs("EN")], [], [Z + TB + b"EN" + Z], tdb="Engine:230-255,Target:0"),
    _l("engine_too_old", "0", [T + hexs("EO")], [], [Z + TB + b"EO" + Z], tdb="Engine:51-99,Target:0"),
    _l("unknown_tdb_key", "0", [T + hexs("UK")], [], [Z + TB + b"UK" + Z], tdb="Engine:81-255,Target:0,Colour:1"),
    _l("target_pe_on_data", "0", [T + hexs("PE")], [], [Z + TB + b"PE" + Z], tdb="Engine:81-255,Target:1"),
    _l("target_text_normalized", "0&1", [hexs("basalt heron"), hexs("quill")], [b"BASALT   Heron and QUILL\n"],
       [b"basalt_heron quill\n"], tdb="Engine:81-255,Target:7"),
    _l("no_engine_key", "0", [T + hexs("NE")], [Z + TB + b"NE" + Z], tdb="Target:0"),
]
ALWAYS = {f"Parity.Ldb.{n}{UNOFFICIAL}" for n in ("only_negation", "less_than_one")}
MACROS = "Parity.Macro.b:0:$12:626262\nParity.Macro.c:0:$12:636363\nParity.Macro.d:0:$13:646464\n"


def _tag(index: int) -> bytes:
    return b"\xfd" + bytes([0x80 + index]) + b"\xfd"


@pytest.fixture(scope="module")
def ldb_runs(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> tuple[Path, Pair, Pair]:
    root = tmp_path_factory.mktemp("parity-ldb")
    db, files = root / "db", root / "files"
    db.mkdir()
    files.mkdir()
    lines = []
    for index, case in enumerate(CASES):
        tag = _tag(index)
        subsigs = ";".join(s.replace(T, tag.hex()) for s in case.subsigs)
        lines.append(f"{case.sig};{case.tdb};{case.expr};{subsigs}")
        for kind, bodies in (("hit", case.hits), ("miss", case.misses)):
            for i, body in enumerate(bodies):
                (files / f"{case.id}.{kind}{i}").write_bytes(body.replace(TB, tag))
    (db / "parity.ldb").write_text("\n".join(lines) + "\n")
    (db / "macros.ndb").write_text(MACROS)
    base = ["-d", str(db), "--no-summary", str(files)]
    return files, run_both(["-z", *base], root, shared_cache_dir), run_both(base, root, shared_cache_dir)


PROBES = [(c, f"{c.id}.{kind}{i}", kind == "hit") for c in CASES
          for kind, bodies in (("hit", c.hits), ("miss", c.misses)) for i in range(len(bodies))]


@pytest.mark.parametrize(("case", "file", "hit"), PROBES, ids=[p[1] for p in PROBES])
def test_ldb_verdicts(ldb_runs: tuple[Path, Pair, Pair], case: LdbCase, file: str, hit: bool) -> None:
    files, allmatch, first = ldb_runs
    path = str(files / file)
    assert allmatch.clam.rc in (0, 1), f"clamscan refused the scenario database:\n{allmatch.report()}"
    assert allmatch.bastion.names(path) == allmatch.clam.names(path), allmatch.report(path)
    assert (path in first.bastion.infected) == (path in first.clam.infected), first.report(path)
    expected = [case.sig + UNOFFICIAL] if hit else []
    # signatures true without any content match fire on most files: the expectation leaves them out
    own = [n for n in allmatch.clam.names(path) if n == case.sig + UNOFFICIAL or n not in ALWAYS]
    assert own == expected, f"clamscan itself no longer does this\n{allmatch.report(path)}"


def test_ldb_scenario_exit_codes(ldb_runs: tuple[Path, Pair, Pair]) -> None:
    _, allmatch, first = ldb_runs
    for pair in (allmatch, first):
        assert pair.bastion.rc == pair.clam.rc, pair.report()
        assert pair.bastion.status == pair.clam.status, pair.report()


# ---------------------------------------------------------------- executables: EP, sections, offsets
def test_ldb_on_pe(tmp_path: Path, shared_cache_dir: Path) -> None:
    pe = bytearray(build_pe_file())
    pe[0x220:0x228] = b"PE-LDB-1"
    (tmp_path / "f.exe").write_bytes(bytes(pe))
    lines = [
        f"Parity.Ldb.pe_sections;Engine:81-255,Target:1,NumberOfSections:1-8;0;{hexs('PE-LDB-1')}",
        f"Parity.Ldb.pe_no_sections;Engine:81-255,Target:1,NumberOfSections:20-30;0;{hexs('PE-LDB-1')}",
        f"Parity.Ldb.pe_ep_range;Engine:81-255,Target:1,EntryPoint:0-1000000;0;{hexs('PE-LDB-1')}",
        f"Parity.Ldb.pe_section_offset;Engine:81-255,Target:1;0;SE0:{hexs('PE-LDB-1')}",
        f"Parity.Ldb.pe_any_target;Engine:81-255,Target:0;0&1;4d5a;{hexs('PE-LDB-1')}",
    ]
    db = tmp_path / "pe.ldb"
    db.write_text("\n".join(lines) + "\n")
    pair = run_both(["-z", "--no-summary", "-d", str(db), str(tmp_path / "f.exe")], tmp_path, shared_cache_dir)
    path = str(tmp_path / "f.exe")
    assert pair.bastion.names(path) == pair.clam.names(path), pair.report()
    assert "Parity.Ldb.pe_any_target" + UNOFFICIAL in pair.clam.names(path), pair.report()


# ---------------------------------------------------------------- malformed lines: both refuse, same line
GOOD = f"Parity.Good;{TDB};0;41424344"
MALFORMED = [
    ("too_few_subsigs", f"{GOOD}\nN;{TDB};0&1;41424344\n", 2),
    ("too_many_subsigs", f"{GOOD}\nN;{TDB};0;41424344;45464748\n", 2),
    ("trailing_semicolon", f"{GOOD}\nN;{TDB};0;41424344;\n", 2),
    ("no_target", f"{GOOD}\nN;Engine:81-255;0;41424344\n", 2),
    ("bad_expression", f"{GOOD}\nN;{TDB};0&;41424344\n", 2),
    ("bad_hex", f"{GOOD}\nN;{TDB};0;4142zz44\n", 2),
    ("bad_modifier", f"{GOOD}\nN;{TDB};0;41424344::z\n", 2),
    ("three_fields", f"{GOOD}\nN;{TDB};0\n", 2),
    ("pcre_forward_trigger", f"{GOOD}\nN;{TDB};0&1;1/abc/;41424344\n", 2),
    # clamscan compiles PCREs after parsing, so its message names no line; Bastion's does
    ("pcre_bad_regex", f"{GOOD}\nN;{TDB};0&1;41424344;0/ab(c/\n", None),
    ("ep_with_target_any", f"{GOOD}\nN;{TDB};0;EP+0:41424344\n", 2),
]


@pytest.mark.parametrize(("case", "content", "line"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_ldb(tmp_path: Path, shared_cache_dir: Path, case: str, content: str, line: int | None) -> None:
    db = tmp_path / "bad.ldb"
    db.write_text(content)
    target = tmp_path / "target.bin"
    target.write_bytes(b"\x00ABCD\x00")
    pair = run_both(["--no-summary", "-d", str(db), str(target)], tmp_path, shared_cache_dir)
    assert pair.clam.rc == 2, f"clamscan accepted the database: case design\n{pair.report()}"
    assert pair.bastion.rc == 2, pair.report()
    m = re.search(r"at line (\d+)", pair.clam.stderr)
    if line is None:
        assert m is None, pair.report()
        line = 2
    else:
        assert m and int(m.group(1)) == line, f"clamscan names another line: case design\n{pair.report()}"
    assert f"{db}:{line}:" in pair.bastion.stderr, pair.report()


# ---------------------------------------------------------------- macros: a known difference
MANUAL_MACRO_LDB = ("TestMacro;Engine:51-255,Target:0;0&1;616161;${6-7}12$\n"
                    "FirstMacro;Engine:51-255,Target:0;0;${1-2}12$\n")
MANUAL_MACRO_NDB = "D1:0:$12:626262\nD2:0:$12:636363\nD3:0:$30:626264\n"


def test_macro_follows_the_manual_where_clamscan_does_not(tmp_path: Path, shared_cache_dir: Path) -> None:
    """ClamAV's manual says ``TestMacro`` equals ``616161{3-4}(626262|636363)``; clamscan 1.4.6 never
    matches it (nor any macro we tried).  Bastion follows the manual; README lists the difference.
    A macro as the first subsignature loads in both and never matches."""
    db = tmp_path / "db"
    db.mkdir()
    (db / "m.ldb").write_text(MANUAL_MACRO_LDB)
    (db / "m.ndb").write_text(MANUAL_MACRO_NDB)
    files = tmp_path / "files"
    files.mkdir()
    bodies = {"at6": b"\x00\x00aaaxxxbbb\x00\x00", "at7": b"\x00\x00aaaxxxxccc\x00\x00",
              "at5": b"\x00\x00aaaxxbbb\x00\x00", "at8": b"\x00\x00aaaxxxxxbbb\x00\x00",
              "other_group": b"\x00\x00aaaxxxbbd\x00\x00"}
    for name, body in bodies.items():
        (files / name).write_bytes(body)
    pair = run_both(["-z", "--no-summary", "-d", str(db), str(files)], tmp_path, shared_cache_dir)
    assert pair.clam.rc == 0 and not pair.clam.found, pair.report()
    assert {p.rsplit("/", 1)[1] for p, _ in pair.bastion.found} == {"at6", "at7"}, pair.report()
    assert {n for _, n in pair.bastion.found} == {"TestMacro" + UNOFFICIAL}, pair.report()


# ---------------------------------------------------------------- two published ClamAV signatures
# (quoted in ClamAV's documentation and unit tests): an expression naming only a PCRE subsignature
# whose trigger mixes negations with a content match, and a nibble alternation feeding a PCRE
REAL_LDB = (
    "Win.Downloader.DDECmdExec-6683887-5;Engine:81-255,Target:0;4;0:1f8b;0:255044462d;0:4d5a{-100}50450000;"
    "7c27{-255}2721;(0=0&1=0&2=0)&3/(?<!\\x20)[=+\\-@]\\s*?(\\w+\\s*?\\x28)?.{0,50}(certutil|cmd|cmstp|cscript|"
    "dnscmd|msiexec|netsh|regsvr32|rpcping|rundll32|schtasks|telnet|tscon|tsdiscon|wmic|wscript).{0,50}\\|\\s*?"
    "\\x27[^\\x27]{5,255}\\x27\\s*?\\x21/i\n"
    "Win.Trojan.MSShellcode-6360730-0;Engine:81-255,Target:0;1;d97424f4(5?|b?);"
    "0/\\xd9\\x74\\x24\\xf4[\\x50-\\x5f\\xb0-\\xbf]/\n"
)
REAL_FILES = {
    "dde.csv": (b"a,b\n=CMD|'/c calc.exe'!A0\n", ["Win.Downloader.DDECmdExec-6683887-5"]),
    "dde.pdf": (b"%PDF-=CMD|'/c calc.exe'!A0\n", []),
    "shellcode.bin": (b"\x00\x00\xd9\x74\x24\xf4\x5a\x00", ["Win.Trojan.MSShellcode-6360730-0"]),
    "not_shellcode.bin": (b"\x00\x00\xd9\x74\x24\xf4\x4a\x00", []),
}


def test_published_signatures(tmp_path: Path, shared_cache_dir: Path) -> None:
    db = tmp_path / "real.ldb"
    db.write_text(REAL_LDB)
    for name, (body, _) in REAL_FILES.items():
        (tmp_path / name).write_bytes(body)
    pair = run_both(["-z", "--no-summary", "-d", str(db), *REAL_FILES], tmp_path, shared_cache_dir)
    for name, (_, names) in REAL_FILES.items():
        assert pair.bastion.names(name) == pair.clam.names(name), pair.report(name)
        assert pair.clam.names(name) == [n + UNOFFICIAL for n in names], pair.report(name)
