"""Parsers: every field, functionality levels, ignores, names and line-accurate errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.signatures.errors import SignatureError
from bastion.signatures.loader import discover, parse_sources
from bastion.signatures.model import ANY_SIZE, HashKind, HashPurpose
from bastion.signatures.offsets import Anchor, parse_offset
from tests.helpers import write


def load(*paths: Path, pua: bool = False):
    return parse_sources(discover([str(p) for p in paths], pua=pua))


def test_hash_kinds_sizes_and_unofficial_names(tmp_path: Path) -> None:
    db = write(tmp_path / "a.hdb", "44d88612fea8a8f36de82e1278abb02f:68:Md5.Sig\n"
               "3395856ce81f2b7382dee72602f798b642f14140:68:Sha1.Sig\n"
               "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:*:Sha256.Any:73\n")
    s = load(db)
    md5 = s.hashes[(HashKind.MD5, HashPurpose.DETECT)]
    assert md5.names == ["Md5.Sig.UNOFFICIAL"] and list(md5.sizes) == [68] and list(md5.lines) == [1]
    assert s.hashes[(HashKind.SHA1, HashPurpose.DETECT)].names == ["Sha1.Sig.UNOFFICIAL"]
    assert list(s.hashes[(HashKind.SHA256, HashPurpose.DETECT)].sizes) == [ANY_SIZE]
    assert s.signature_count == 3


def test_functionality_level_gating(tmp_path: Path) -> None:
    db = write(tmp_path / "a.hdb", "44d88612fea8a8f36de82e1278abb02f:68:Future:999\n"
               "44d88612fea8a8f36de82e1278abb02f:68:Old:1:100\n"
               "44d88612fea8a8f36de82e1278abb02f:68:EmptyMax:1:\n"
               "44d88612fea8a8f36de82e1278abb02f:68:Current:1:216\n")
    s = load(db)
    assert s.hashes[(HashKind.MD5, HashPurpose.DETECT)].names == ["Current.UNOFFICIAL"]
    assert s.report.skipped_by_flevel == 3


@pytest.mark.parametrize(("name", "text", "line", "why"), [
    ("a.hdb", "44d88612fea8a8f36de82e1278abb02f:68\n", 1, "fields"),
    ("a.hdb", "# c\n44d88612fea8a8f36de82e1278abb02f:68:A\n\n", 3, "empty line"),
    ("a.hdb", "44d88612fea8a8f36de82e1278abb02:68:A\n", 1, "length"),
    ("a.hdb", "zzd88612fea8a8f36de82e1278abb02f:68:A\n", 1, "hexadecimal"),
    ("a.hdb", "44d88612fea8a8f36de82e1278abb02f:*:A\n", 1, "73"),
    ("a.hdb", "44d88612fea8a8f36de82e1278abb02f:0:A\n", 1, "size"),
    ("a.ndb", "A:0:*:414243\nB:0:*:e8????????5d\n", 2, "literal"),
    ("a.ndb", "A:0:EP+0:41424344\n", 1, "target"),
    ("a.ndb", "A:x:*:41424344\n", 1, "target"),
    ("a.ndb", "A:0:EOF+3:41424344\n", 1, "offset"),
    ("a.ndb", "A:0:*\n", 1, "fields"),
    ("a.ign2", "A:nothex\n", 1, "MD5"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, name: str, text: str, line: int, why: str) -> None:
    db = write(tmp_path / name, text)
    with pytest.raises(SignatureError) as err:
        load(db)
    assert err.value.line == line
    assert str(err.value).startswith(f"{db}:{line}: ")
    assert why in err.value.reason


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="empty"):
        load(write(tmp_path / "a.ndb", b""))


def test_ndb_fields_offsets_targets(tmp_path: Path) -> None:
    db = write(tmp_path / "a.ndb", "A:0:*:41424344\nB:1:EP+10,5:41424344\nC:*:EOF-4:41424344:51:255\n"
               "D:15:*:41424344\nE:6:SE1:41424344\nF:0:$3$:41424344\nG:9:SL+4:41424344\n")
    s = load(db)
    by = {b.name: b for b in s.bodies}
    assert sorted(by) == ["A.UNOFFICIAL", "B.UNOFFICIAL", "C.UNOFFICIAL", "E.UNOFFICIAL", "G.UNOFFICIAL"]
    assert by["B.UNOFFICIAL"].offset == parse_offset("EP+10,5")
    assert by["B.UNOFFICIAL"].target == 1 and by["B.UNOFFICIAL"].line == 2
    assert by["C.UNOFFICIAL"].target == 0 and by["C.UNOFFICIAL"].offset.anchor is Anchor.EOF
    assert s.report.skipped_by_target == 1 and s.report.macro_members == 1


@pytest.mark.parametrize(("text", "anchor", "value", "section", "shift"), [
    ("*", Anchor.ANY, 0, 0, 0), ("12", Anchor.ABSOLUTE, 12, 0, 0), ("12,4", Anchor.ABSOLUTE, 12, 0, 4),
    ("EOF-9", Anchor.EOF, 9, 0, 0), ("EP+3", Anchor.ENTRY_POINT, 3, 0, 0), ("EP-3,2", Anchor.ENTRY_POINT, -3, 0, 2),
    ("S2+7", Anchor.SECTION, 7, 2, 0), ("SL+1", Anchor.LAST_SECTION, 1, 0, 0), ("SE0", Anchor.SECTION_ENTIRE, 0, 0, 0),
    ("VI", Anchor.VERSION_INFO, 0, 0, 0), ("$5$", Anchor.MACRO, 5, 0, 0),
])
def test_offsets(text: str, anchor: Anchor, value: int, section: int, shift: int) -> None:
    off = parse_offset(text)
    assert (off.anchor, off.value, off.section, off.maxshift) == (anchor, value, section, shift)
    assert str(off) == text


@pytest.mark.parametrize("text", ["EP", "EOF", "S+1", "12,x", "$40$", "-3"])
def test_bad_offsets(text: str) -> None:
    with pytest.raises(ValueError):
        parse_offset(text)


def test_ign2_by_name_and_by_line_md5(tmp_path: Path) -> None:
    import hashlib

    line_b = "B:0:*:42424242"
    d = tmp_path / "db"
    write(d / "x.ndb", f"A:0:*:41414141\n{line_b}\nC:0:*:43434343\n")
    write(d / "y.ign2", f"A\nB:{hashlib.md5(line_b.encode()).hexdigest()}\nC:{'0' * 32}\n")
    s = load(d)
    assert [b.name for b in s.bodies] == ["C.UNOFFICIAL"]  # C's md5 is stale, so C comes back
    assert s.report.ignored_by_name == 2


def test_directory_reports_what_it_does_not_load(tmp_path: Path) -> None:
    d = tmp_path / "db"
    write(d / "a.hdb", "44d88612fea8a8f36de82e1278abb02f:68:A\n")
    write(d / "b.cbc", "ClamBCafhm\n")
    write(d / "c.weird", "?")
    write(d / "d.hdu", "44d88612fea8a8f36de82e1278abb02f:68:Pua\n")
    s = load(d)
    skipped = dict(s.report.skipped_files)
    assert "not supported yet" in skipped[str(d / "b.cbc")]
    assert "unknown" in skipped[str(d / "c.weird")]
    assert "--detect-pua" in skipped[str(d / "d.hdu")]
    assert load(d, pua=True).signature_count == 2


def test_unknown_single_file_and_missing_path_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="unknown"):
        load(write(tmp_path / "x.txt2", "a"))
    with pytest.raises(SignatureError, match="no such"):
        load(tmp_path / "missing.hdb")
