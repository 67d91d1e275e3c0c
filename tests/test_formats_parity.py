"""The other ClamAV text formats: clamscan 1.4.6 and bastion-clamscan load or refuse the same lines,
and file type magic (``.ftm``) retypes objects the same way.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tests.helpers import run_clamscan_clone
from tests.test_clamscan_parity import UNOFFICIAL, run_both

SHA = hashlib.sha256(b"x").hexdigest()
TARGET = b"xxABCxx\x00\x00"
NDB = "Parity.Formats.Anchor:0:*:414243\n"

LINES = [
    # (id, file, content, clamscan accepts)
    ("pdb_host", "a.pdb", "H:bank.example.com\n", True),
    ("pdb_regex", "a.pdb", "R:.+\\.evil\\.example\n", True),
    ("pdb_host_fl", "a.pdb", "H:bank.example.com:17-\n", True),
    ("pdb_unknown_kind", "a.pdb", "Q:foo\n", False),
    ("pdb_bad_regex", "a.pdb", "R:(abc\n", False),
    ("wdb_hosts", "a.wdb", "M:mail.example.net:www.example.com\n", True),
    ("wdb_regexes", "a.wdb", "X:.+\\.example\\.net:.+\\.example\\.com\n", True),
    ("wdb_y", "a.wdb", "Y:.+\\.example\\.net\n", True),
    ("wdb_unknown_kind", "a.wdb", "Z:abc:def\n", False),
    ("gdb_allow", "a.gdb", f"S:W:{SHA}\n", True),
    ("gdb_prefix", "a.gdb", "S:P:abcd\n", True),
    ("gdb_unknown", "a.gdb", "Q:P:abcd\n", False),
    ("cfg_line", "a.cfg", "DOCUMENT:0x0:210:215\n", True),
    ("cfg_unknown_category", "a.cfg", "NOPE:0x0:210:215\n", True),
    ("cfg_bad", "a.cfg", "DOCUMENT:zz\n", False),
    ("cdb_line", "a.cdb", "Cdb.Test:CL_TYPE_ZIP:*:.*\\.scr$:*:*:*:*:*:*\n", True),
    ("cdb_ranges", "a.cdb", "Cdb.Test:CL_TYPE_ZIP:10-20:*:*:*:1:*:*:*\n", True),
    ("cdb_four_fields", "a.cdb", "Cdb.Test:CL_TYPE_ZIP:*:.*\n", False),
    ("cdb_unknown_type", "a.cdb", "Cdb.Test:CL_TYPE_NOPE:*:.*:*:*:*:*:*:*\n", False),
    ("cdb_bad_size", "a.cdb", "Cdb.Test:CL_TYPE_ZIP:x:*:*:*:1:*:*:*\n", False),
    ("cdb_bad_encrypted", "a.cdb", "Cdb.Test:CL_TYPE_ZIP:*:*:*:*:2:*:*:*\n", False),
    ("info_loose", "a.info", f"x.ndb:10:{SHA}\n", True),
    ("ftm_line", "a.ftm", "0:0:4253544e:X:CL_TYPE_ANY:CL_TYPE_PDF\n", True),
    ("ftm_unknown_type", "a.ftm",
     "0:0:4253544e:X:CL_TYPE_ANY:CL_TYPE_PDF\n0:0:4253:X:CL_TYPE_ANY:CL_TYPE_NOPE\n", False),
    ("ftm_five_fields", "a.ftm", "0:0:4253544e:X:CL_TYPE_ANY\n", False),
    ("ftm_magic_type_2", "a.ftm", "2:0:4253544e:X:CL_TYPE_ANY:CL_TYPE_PDF\n", False),
    ("ftm_star_offset_type_0", "a.ftm", "0:*:4253544e:X:CL_TYPE_ANY:CL_TYPE_PDF\n", False),
    ("ftm_bad_hex", "a.ftm", "0:0:42zz:X:CL_TYPE_ANY:CL_TYPE_PDF\n", False),
    ("ftm_only_line_skipped_by_fl", "a.ftm", "0:0:4253544e:X:CL_TYPE_ANY:CL_TYPE_PDF:250\n", False),
    ("ftm_one_line_skipped_by_fl", "a.ftm",
     "0:0:4253544e:X:CL_TYPE_ANY:CL_TYPE_PDF:250\n0:4:5a5a5a5a:Y:CL_TYPE_ANY:CL_TYPE_MSOLE2\n", True),
]


@pytest.mark.parametrize(("case", "filename", "content", "accepts"), LINES, ids=[c[0] for c in LINES])
def test_loads_or_refuses_like_clamscan(tmp_path: Path, shared_cache_dir: Path, case: str, filename: str,
                                        content: str, accepts: bool) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / filename).write_text(content)
    (db / "anchor.ndb").write_text(NDB)
    (tmp_path / "f").write_bytes(TARGET)
    pair = run_both(["--no-summary", "-d", str(db), str(tmp_path / "f")], tmp_path, shared_cache_dir)
    assert pair.clam.rc == (1 if accepts else 2), f"clamscan no longer does this: case design\n{pair.report()}"
    assert pair.bastion.rc == pair.clam.rc, pair.report()
    if not accepts:
        m = re.search(r"at line (\d+)", pair.clam.stderr)
        if m:
            assert f"{filename}:{m.group(1)}:" in pair.bastion.stderr, pair.report()
        else:
            assert f"{filename}:" in pair.bastion.stderr, pair.report()


FTM = ("0:0:4253544e:Bastion test type:CL_TYPE_ANY:CL_TYPE_PDF\n"
       "0:4:5a5a5a5a:Offset four:CL_TYPE_ANY:CL_TYPE_MSOLE2\n"
       "0:0:51515151:Only from text:CL_TYPE_TEXT_ASCII:CL_TYPE_PDF\n")
TYPED_NDB = ("Parity.Ftm.Pdf:10:*:7061796c6f6164\nParity.Ftm.Ole:2:*:6f6c657061796c6f6164\n"
             "Parity.Ftm.Any:0:*:7061796c6f6164\n")
FTM_FILES = {
    "pdf_by_magic": (b"BSTNxx payload\x00\x00", ("Parity.Ftm.Any", "Parity.Ftm.Pdf")),
    "ole_at_offset_4": (b"abcdZZZZ olepayload\x00", ("Parity.Ftm.Any", "Parity.Ftm.Ole")),
    "not_at_offset": (b"aBSTNxx payload\x00\x00", ("Parity.Ftm.Any",)),
    "rtype_text_matches": (b"QQQQ text payload\n", ("Parity.Ftm.Any", "Parity.Ftm.Pdf")),
    "rtype_is_not_checked": (b"QQQQ\x00\x01 payload\x00", ("Parity.Ftm.Any", "Parity.Ftm.Pdf")),
}


def test_file_type_magic_retypes_like_clamscan(tmp_path: Path, shared_cache_dir: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "types.ftm").write_text(FTM)
    (db / "typed.ndb").write_text(TYPED_NDB)
    files = tmp_path / "files"
    files.mkdir()
    for name, (body, _) in FTM_FILES.items():
        (files / name).write_bytes(body)
    pair = run_both(["-z", "--no-summary", "-d", str(db), str(files)], tmp_path, shared_cache_dir)
    for name, (_, names) in FTM_FILES.items():
        path = str(files / name)
        assert pair.bastion.names(path) == pair.clam.names(path), pair.report(path)
        assert pair.clam.names(path) == sorted(n + UNOFFICIAL for n in names), pair.report(path)


CDB = ("Parity.Cdb.Scr:CL_TYPE_ZIP:*:.*\\.scr$:*:*:*:*:*:*\n"
       "Parity.Cdb.Position:CL_TYPE_ZIP:*:y\\.txt:*:6:*:1:*:*\n"
       "Parity.Cdb.AnyContainer:*:*:y\\.txt:*:*:*:*:*:*\n"
       "Parity.Cdb.ContainerSize:CL_TYPE_ZIP:100-200:.*:*:*:*:*:*:*\n")


def test_container_metadata_rules_like_clamscan(tmp_path: Path, shared_cache_dir: Path) -> None:
    import zipfile

    files = tmp_path / "files"
    files.mkdir()
    with zipfile.ZipFile(files / "a.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.scr", "hello world file\n")
        zf.writestr("y.txt", "other\n")
    with zipfile.ZipFile(files / "b.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("y.txt", "other\n")
    (tmp_path / "t.cdb").write_text(CDB)
    args = ["-z", "--no-summary", "-d", str(tmp_path / "t.cdb"), str(files)]
    pair = run_both(args, tmp_path, shared_cache_dir)
    for name in ("a.zip", "b.zip"):
        path = str(files / name)
        assert pair.bastion.names(path) == pair.clam.names(path), pair.report(path)
        assert pair.clam.names(path), pair.report(path)
    # the same through two worker threads (a start-up race once made one thread skip unpacking)
    for _ in range(3):
        threaded = run_clamscan_clone([*args, "-j", "2"], shared_cache_dir)
        found = sorted({line for line in threaded.stdout.splitlines() if line.endswith(" FOUND")})
        assert found == sorted({f"{p}: {n} FOUND" for p, n in pair.clam.found}), threaded.stdout
