"""Compiled database: compile once, cache keyed by content, compact hash tables, fallbacks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion.database import compiled
from bastion.database.compiled import open_database
from bastion.signatures.errors import SignatureError
from bastion.signatures.model import HashKind, HashPurpose
from tests.helpers import write


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BASTION_CACHE_DIR", str(cache))
    monkeypatch.setenv("BASTION_DB_DIR", str(tmp_path / "none"))
    return cache


def test_compiled_once_then_loaded_from_cache(tmp_path: Path, private_cache: Path) -> None:
    db_file = write(tmp_path / "a.ndb", "A:0:*:41424344\n")
    first = open_database([str(db_file)])
    assert not first.from_cache and first.path and os.path.isdir(first.path)
    second = open_database([str(db_file)])
    assert second.from_cache and second.version == first.version
    assert [e.name for e in second.bodies.entries()] == ["A.UNOFFICIAL"]
    # content change -> new key, new compile
    write(db_file, "A:0:*:41424345\n")
    third = open_database([str(db_file)])
    assert not third.from_cache and third.version != first.version


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    db_file = write(tmp_path / "a.hdb", "44d88612fea8a8f36de82e1278abb02f:68:A\n")
    first = open_database([str(db_file)])
    assert first.path
    Path(first.path, "manifest.json").write_text("{broken")
    again = open_database([str(db_file)])
    assert not again.from_cache and again.signature_count == 1


def test_bad_source_leaves_no_cache_entry(tmp_path: Path, private_cache: Path) -> None:
    d = tmp_path / "db"
    write(d / "a.hdb", "44d88612fea8a8f36de82e1278abb02f:68:A\n")
    write(d / "b.ndb", "B:0:*:41424344\nbroken\n")
    with pytest.raises(SignatureError) as err:
        open_database([str(d)])
    assert err.value.line == 2
    assert not private_cache.exists() or not [p for p in private_cache.iterdir() if p.is_dir()]


def test_hash_table_is_compact_and_read_from_disk(tmp_path: Path) -> None:
    lines = [f"{i:032x}:{1000 + i % 7}:Sig.{i}" for i in range(20000)]
    db_file = write(tmp_path / "big.hdb", "\n".join(lines) + "\n")
    open_database([str(db_file)])
    db = open_database([str(db_file)])
    table = db.table(HashKind.MD5, HashPurpose.DETECT)
    assert table is not None and len(table) == 20000
    from bastion.database.mapping import Column

    assert isinstance(table.digests, Column) and table.digests.itemsize == 16 and len(table.digests) == 20000
    assert db.path and os.path.getsize(os.path.join(db.path, "md5-detect.digests")) == 16 * 20000
    hits = table.lookup(bytes.fromhex(f"{1234:032x}"), 1000 + 1234 % 7)
    assert [h.name for h in hits] == ["Sig.1234.UNOFFICIAL"] and hits[0].line == 1235
    assert table.lookup(bytes.fromhex(f"{1234:032x}"), 5) == []
    assert table.may_hold_size(1003) and not table.may_hold_size(999)


def test_digest_with_trailing_zero_bytes(tmp_path: Path) -> None:
    digest = "ab" + "00" * 15
    db = open_database([str(write(tmp_path / "z.hdb", f"{digest}:5:Zero\n{'ab' * 16}:5:Other\n"))])
    table = db.table(HashKind.MD5, HashPurpose.DETECT)
    assert table is not None
    assert [h.name for h in table.lookup(bytes.fromhex(digest), 5)] == ["Zero.UNOFFICIAL"]


def test_patterns_hyperscan_refuses_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.database import bodymatcher
    from bastion.signatures.hexpattern import literal_regex

    real = bodymatcher._try_compile

    def refuse_b(exprs, ids, flags):  # simulate Hyperscan refusing pattern B in every mode but literal
        import hyperscan

        if any(e == literal_regex(b"\x45\x46\x47") for e in exprs):
            return real(exprs, ids, flags)
        if any(b"\\x45\\x46\\x47" in e for e in exprs):
            return None
        del hyperscan
        return real(exprs, ids, flags)

    monkeypatch.setattr(bodymatcher, "_try_compile", refuse_b)
    db = open_database([str(write(tmp_path / "f.ndb", "A:0:*:41424344\nB:0:*:4142??454647\n"))], use_cache=False)
    modes = {e.name: e.mode for e in db.bodies.entries()}
    assert modes == {"A.UNOFFICIAL": "exact", "B.UNOFFICIAL": "literal"}
    from bastion.engine import Engine

    res = Engine(db).scan_bytes(b"..AB\x00EFG..")
    assert [d.name for d in res.detections] == ["B.UNOFFICIAL"]
    assert Engine(db).scan_bytes(b"..AC\x00EFG..").detections == []


def test_builtin_default_database(tmp_path: Path) -> None:
    db = open_database(None)
    names = {e.name for e in db.bodies.entries()}
    assert "Bastion.Test.EICAR" in names  # official: no .UNOFFICIAL suffix
    assert db.signature_count >= 4
    assert compiled.cache_dir().startswith(str(tmp_path))


def test_installed_database_dir_wins_over_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "installed"
    write(installed / "site.ndb", "Site.Sig:0:*:41424344\n")
    monkeypatch.setenv("BASTION_DB_DIR", str(installed))
    db = open_database(None)
    assert [e.name for e in db.bodies.entries()] == ["Site.Sig.UNOFFICIAL"]
