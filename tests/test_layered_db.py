"""A database compiled as a layer on top of another (database/delta.py, database/layered.py) must
scan exactly as the same sources compiled whole: same detections, same evidence (source, line,
offsets), same signature count.  And where a layer could not mean the same, the whole database is
compiled instead, saying why."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bastion.database.compiled import Database, open_database
from bastion.database.delta import MAX_LAYERS
from bastion.engine.scanner import Engine, ScanOptions
from bastion.signatures import cvd
from tests.helpers import write
from tests.test_cvd import build_container, keys  # noqa: F401 - the fixture

WORDS = [f"layerword{i:03d}xyz" for i in range(40)]


def _ndb(names: range, prefix: str = "Layer.Body") -> str:
    return "".join(f"{prefix}.{i}:0:*:{WORDS[i].encode().hex()}\n" for i in names)


def _corpus() -> list[bytes]:
    out = [f"aa {w} bb\n".encode() for w in WORDS]
    out += [f"{WORDS[1]} and {WORDS[2]}".encode(), b"<html><body>" + WORDS[5].upper().encode() + b"</body></html>",
            b"nothing here at all", b"hashme-one\n", b"hashme-two\n", b"hashme-three\n"]
    return out


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _initial(db: Path) -> None:
    write(db / "a.ndb", _ndb(range(0, 10)))
    write(db / "b.ndb", _ndb(range(10, 20), "Layer.Other") +
          f"Layer.Html:3:*:{WORDS[5].encode().hex()}\n")  # normalized (HTML) target
    write(db / "c.ldb", f"Layer.Logic;Target:0;0&1;{WORDS[1].encode().hex()};{WORDS[2].encode().hex()}\n"
          f"Layer.Always;Target:0;0=0;{WORDS[39].encode().hex()}\n")
    write(db / "d.hdb", f"{_md5(b'hashme-one' + bytes([10]))}:11:Layer.Hash.One\n"
          f"{_md5(b'hashme-two' + bytes([10]))}:11:Layer.Hash.Two\n")
    write(db / "e.hsb", f"{_sha256(b'hashme-three' + bytes([10]))}:13:Layer.Hash.Three\n")


def _verdicts(db: Database) -> list[tuple]:
    engine = Engine(db, ScanOptions(allmatch=True))
    out = []
    for i, data in enumerate(_corpus()):
        r = engine.scan_bytes(data)
        out.append((i, r.allowed_by, sorted((d.name, d.evidence.kind, d.evidence.source, d.evidence.line,
                                             d.evidence.offsets) for d in r.detections)))
    return out


def _same_as_whole(layered: Database, directory: Path) -> None:
    whole = open_database([str(directory)], use_cache=False)
    assert _verdicts(layered) == _verdicts(whole)
    assert layered.signature_count == whole.signature_count
    assert sorted(s.path for s in layered.live_sources) == sorted(s.path for s in whole.sources)
    assert sorted(layered.report.loaded_files) == sorted(whole.report.loaded_files)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_changes_compiled_as_layers_scan_as_the_whole_database(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "db"
    _initial(d)
    db = open_database([str(d)])
    assert db.extra["compiled"] == "whole"
    steps = [
        # a new file
        lambda: write(d / "f.ndb", _ndb(range(20, 25), "Layer.New")),
        # a changed file: one line gone, one added, the rest moved to other lines
        lambda: write(d / "a.ndb", _ndb(range(30, 31), "Layer.Moved") + _ndb(range(1, 10))),
        # a removed file, and a changed logical signature file
        lambda: ((d / "d.hdb").unlink(), write(d / "c.ldb", f"Layer.Logic2;Target:0;0|1;{WORDS[3].encode().hex()};"
                                                          f"{WORDS[4].encode().hex()}\n")),
        # an allow list in the new layer silences a detection compiled in the layer below
        lambda: write(d / "g.fp", f"{_md5(f'aa {WORDS[12]} bb'.encode() + bytes([10]))}:24:Allowed\n"),
        # the hash file changed: the old row must not answer any more
        lambda: write(d / "e.hsb", f"{_sha256(b'hashme-two' + bytes([10]))}:11:Layer.Hash.Moved\n"),
    ]
    for n, change in enumerate(steps, start=2):
        change()
        db = open_database([str(d)], on_top_of=db.path)
        assert db.extra["compiled"].startswith("as a layer"), db.extra
        assert db.extra["compiled"].endswith(f"{n} layers")
        assert len(db.bodies.raw_dbs) >= 2
        _same_as_whole(db, d)
    # the layered database is in the cache under the same key a whole compile has: found as is
    again = open_database([str(d)])
    assert again.extra["compiled"] == "already compiled" and again.path == db.path
    assert _verdicts(again) == _verdicts(db)


def test_a_reload_without_changes_only_loads(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "db"
    _initial(d)
    db = open_database([str(d)])
    again = open_database([str(d)], on_top_of=db.path)
    assert again.extra["compiled"] == "already compiled"


@pytest.mark.parametrize(("change", "why"), [
    ("ign2", ".ign2 source was added"),
    ("yara", ".yar source was added"),
    ("ftm", ".ftm source was added"),
    ("macro", "macro"),
    ("most", "more than half"),
])
def test_changes_a_layer_cannot_express_compile_the_whole_database(tmp_path: Path, cache: Path, change: str,
                                                                   why: str) -> None:
    d = tmp_path / "db"
    _initial(d)
    db = open_database([str(d)])
    if change == "ign2":
        write(d / "local.ign2", "Layer.Body.3\n")
    elif change == "yara":
        write(d / "r.yar", f'rule layer_rule {{ strings: $a = "{WORDS[7]}" condition: $a }}\n')
    elif change == "ftm":
        write(d / "t.ftm", "0:0:4c4159:Layer magic:CL_TYPE_ANY:CL_TYPE_TEXT_ASCII\n")
    elif change == "macro":
        write(d / "m.ndb", f"Layer.Macro.Member:0:$12:{WORDS[8].encode().hex()}\n")
    else:
        for name in ("a.ndb", "b.ndb", "c.ldb", "d.hdb"):
            (d / name).unlink()
        write(d / "big.ndb", _ndb(range(20, 40), "Layer.Big") * 3)
    new = open_database([str(d)], on_top_of=db.path)
    assert new.extra["compiled"].startswith("whole ("), new.extra
    assert why in new.extra["compiled"], new.extra
    assert not new.dead_sources
    _same_as_whole(new, d)


def test_removing_an_ignore_list_compiles_the_whole_database(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "db"
    _initial(d)
    write(d / "local.ign2", "Layer.Body.3\n")
    db = open_database([str(d)])
    (d / "local.ign2").unlink()
    new = open_database([str(d)], on_top_of=db.path)
    assert ".ign2 source was removed" in new.extra["compiled"], new.extra
    _same_as_whole(new, d)


def test_an_ignore_list_below_applies_to_a_new_layer(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "db"
    _initial(d)
    write(d / "local.ign2", "Layer.New.21\n")
    db = open_database([str(d)])
    write(d / "f.ndb", _ndb(range(20, 25), "Layer.New"))
    new = open_database([str(d)], on_top_of=db.path)
    assert new.extra["compiled"].startswith("as a layer")
    names = {n for _, _, found in _verdicts(new) for n, *_ in found}
    assert "Layer.New.20.UNOFFICIAL" in names and "Layer.New.21.UNOFFICIAL" not in names
    _same_as_whole(new, d)


def test_layers_stop_at_the_limit(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "db"
    _initial(d)
    db = open_database([str(d)])
    for i in range(MAX_LAYERS):
        write(d / f"n{i}.ndb", _ndb(range(20 + i, 21 + i), f"Layer.Step{i}"))
        db = open_database([str(d)], on_top_of=db.path)
    assert f"has {MAX_LAYERS} layers already" in db.extra["compiled"], db.extra
    assert not db.dead_sources and len(db.bodies.raw_dbs) == 1
    _same_as_whole(db, d)


def test_a_container_is_compared_member_by_member(tmp_path: Path, cache: Path, keys,  # noqa: F811
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cvd, "CVD_KEY", keys[0].public)
    monkeypatch.setattr(cvd, "INFO_KEY", keys[1].public)
    d = tmp_path / "db"
    _initial(d)
    members = {"daily.ndb": _ndb(range(25, 30), "Cvd.Body").encode(),
               "daily.hdb": f"{_md5(b'hashme-one' + bytes([10]))}:11:Cvd.Hash\n".encode()}
    write(d / "daily.cvd", build_container("daily", members, keys, version=5))
    db = open_database([str(d)])
    # an unchanged container is not even opened; a changed one is compared member by member
    write(d / "h.ndb", _ndb(range(31, 32), "Layer.H"))
    db = open_database([str(d)], on_top_of=db.path)
    assert db.extra["compiled"].startswith("as a layer: 1 sources compiled (0 of them line by line), 0 removed"), \
        db.extra
    _same_as_whole(db, d)
    members["daily.ndb"] = _ndb(range(26, 31), "Cvd.Body").encode()
    write(d / "daily.cvd", build_container("daily", members, keys, version=6))
    db = open_database([str(d)], on_top_of=db.path)
    assert db.extra["compiled"].startswith("as a layer: 1 sources compiled (1 of them line by line), 0 removed"), \
        db.extra
    assert len(db.bodies.layers[-1]) == 1  # only the one new line of daily.ndb
    _same_as_whole(db, d)
    assert [c["version"] for c in db.report.containers] == [6]


def test_a_changed_file_is_compiled_line_by_line(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "db"
    _initial(d)
    write(d / "big.ndb", _ndb(range(0, 40), "Layer.Big") + _ndb(range(7, 8), "Layer.Big"))  # a duplicate line
    hashes = [f"{_md5(f'aa {w} bb'.encode() + bytes([10]))}:{len(w) + 7}:Layer.Sum.{i}\n" for i, w in enumerate(WORDS)]
    write(d / "sums.hdb", "".join(hashes))
    db = open_database([str(d)])
    versions = [
        # three lines gone (one of the duplicates among them), two new ones first: the rest moves
        (_ndb(range(38, 40), "Layer.Fresh") + _ndb(range(0, 3), "Layer.Big") + _ndb(range(4, 6), "Layer.Big")
         + _ndb(range(7, 40), "Layer.Big"), "".join(hashes[:10] + hashes[11:])),
        # again on top: the lines moved once move again (the remaps compose), reversed
        ("".join(reversed((_ndb(range(0, 2), "Layer.Big") + _ndb(range(20, 40), "Layer.Big")
                           + _ndb(range(38, 40), "Layer.Fresh")).splitlines(keepends=True))),
         "".join(reversed(hashes[:30])) + "# a comment line\n"),
        # a CRLF copy of an old line, and a line that only moved
        (_ndb(range(20, 21), "Layer.Big").replace("\n", "\r\n") + _ndb(range(0, 1), "Layer.Big"), hashes[0]),
    ]
    for n, (ndb, hdb) in enumerate(versions, start=2):
        write(d / "big.ndb", ndb)
        write(d / "sums.hdb", hdb)
        db = open_database([str(d)], on_top_of=db.path)
        assert db.extra["compiled"] == f"as a layer: 2 sources compiled (2 of them line by line), 0 removed, {n} layers"
        _same_as_whole(db, d)
    assert len(db.bodies.layers[1]) == 2 and len(db.bodies.layers[2]) == 0 and len(db.bodies.layers[3]) == 0
    # the file goes: every older version of it goes with it
    (d / "big.ndb").unlink()
    db = open_database([str(d)], on_top_of=db.path)
    assert "1 removed" in db.extra["compiled"], db.extra
    _same_as_whole(db, d)


def test_a_bad_new_line_is_named_by_its_line_in_the_file(tmp_path: Path, cache: Path) -> None:
    from bastion.signatures.errors import SignatureError

    d = tmp_path / "db"
    _initial(d)
    db = open_database([str(d)])
    write(d / "a.ndb", _ndb(range(0, 4)) + "Layer.Broken:0:*:zz\n" + _ndb(range(4, 10)))
    with pytest.raises(SignatureError) as raised:
        open_database([str(d)], on_top_of=db.path)
    assert raised.value.path == str(d / "a.ndb") and raised.value.line == 5


def test_a_layer_is_made_of_hard_links_and_survives_its_base_being_pruned(tmp_path: Path, cache: Path) -> None:
    d = tmp_path / "db"
    _initial(d)
    base = open_database([str(d)])
    write(d / "f.ndb", _ndb(range(20, 22), "Layer.New"))
    db = open_database([str(d)], on_top_of=base.path)
    assert db.path is not None and base.path is not None
    assert os.stat(Path(db.path) / "layer0" / "raw.hs").st_ino == os.stat(Path(base.path) / "raw.hs").st_ino
    import shutil

    shutil.rmtree(base.path)
    reopened = open_database([str(d)])
    assert reopened.extra["compiled"] == "already compiled"
    _same_as_whole(reopened, d)


def test_line_map_runs_lookup_and_composition() -> None:
    """A LineMap holds runs of lines kept together; ``then`` composes two edits."""
    from bastion.database.linetable import LineMap

    first = LineMap()
    for old, new in [(1, 1), (2, 2), (4, 3), (5, 4), (3, 5)]:  # line 3 moved to the end
        first.add(old, new)
    first.finish()
    assert len(first) == 3
    assert [first[i] for i in range(0, 7)] == [0, 1, 2, 5, 3, 4, 0]
    later = LineMap()
    for old, new in [(2, 10), (3, 11), (5, 12)]:  # line 1 and line 4 gone
        later.add(old, new)
    later.finish()
    both = first.then(later)
    assert [both[i] for i in range(0, 7)] == [0, 0, 10, 12, 11, 0, 0]
    assert not LineMap().then(later)


def test_shuffled_file_is_compiled_whole_into_the_layer(tmp_path, monkeypatch) -> None:
    """A file whose lines were reordered rather than edited is not mapped line by line."""
    import random

    from bastion.database import delta

    monkeypatch.setattr(delta, "MAX_RUNS", 10)
    lines = [f"{i:032x}:{100 + i}:Shuffle.Test.{i}\n" for i in range(400)]
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    (db_dir / "a.hdb").write_text("".join(lines))
    (db_dir / "b.hdb").write_text("".join(f"{i:032x}:{9000 + i}:Kept.Test.{i}\n" for i in range(1000, 2000)))
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    base = open_database([str(db_dir)])
    random.Random(1).shuffle(lines)
    (db_dir / "a.hdb").write_text("".join(lines))
    db = open_database([str(db_dir)], on_top_of=base.path)
    assert db.extra["compiled"].startswith("as a layer: 1 sources compiled (0 of them line by line), 1 removed"), \
        db.extra
    assert db.signature_count == 1400
    hits = db.hash_tables[next(iter(db.hash_tables))].lookup(bytes.fromhex(f"{7:032x}"), 107)
    assert [(db.sources[h.source_index].path, h.line) for h in hits] == \
        [(str(db_dir / "a.hdb"), lines.index(f"{7:032x}:107:Shuffle.Test.7\n") + 1)]


def test_layers_below_share_the_served_databases_hyperscan_and_columns(tmp_path: Path, cache: Path) -> None:
    """A layered database loaded beside the one it was compiled on top of does not load the layers
    below again: their Hyperscan databases and in-memory columns are the served one's (the reload's
    memory, bench/README.md)."""
    d = tmp_path / "db"
    _initial(d)
    open_database([str(d)])
    base = open_database([str(d)])  # loaded from the cache, as a daemon's database always is
    assert base.extra["compiled"] == "already compiled"
    write(d / "added.ndb", _ndb(range(39, 40), "Layer.Shared"))
    layered = open_database([str(d)], on_top_of=base.path)
    assert layered.extra["compiled"].startswith("as a layer"), layered.extra
    assert layered.bodies.layers[0].raw is base.bodies.raw is not None
    key = next(iter(base.hash_tables))
    below = layered.hash_tables[key].tables[0] if hasattr(layered.hash_tables[key], "tables") else \
        layered.hash_tables[key]
    assert below.prefix is base.hash_tables[key].prefix
    assert layered.bodies.layers[-1].raw is not base.bodies.raw


def test_line_map_matches_a_plain_table_for_any_edit() -> None:
    """LineMap.add/finish/then agree with a plain old-line -> new-line table, for random edits."""
    import random

    from bastion.database.linetable import LineMap

    rng = random.Random(7)

    def edit(lines: list[int]) -> tuple[list[int], dict[int, int]]:
        """Some lines removed, some added, some moved; returns the new file (ids) and old->new."""
        kept = [x for x in lines if rng.random() > 0.1]
        if kept and rng.random() < 0.5:
            kept.insert(rng.randrange(len(kept) + 1), kept.pop(rng.randrange(len(kept))))
        new = list(kept)
        for _ in range(rng.randrange(5)):
            new.insert(rng.randrange(len(new) + 1), -1)
        where = {x: n for n, x in enumerate(new, start=1) if x >= 0}
        return [x if x >= 0 else -1 for x in new], where

    for _ in range(200):
        first = list(range(1, rng.randrange(1, 60)))
        second, step1 = edit(first)
        kept2 = [i for i, x in enumerate(second, start=1) if x >= 0]  # the lines new in it go next
        third, step2 = edit(kept2)
        m1, m2 = LineMap(), LineMap()
        for old, new in sorted(step1.items(), key=lambda kv: kv[1]):
            m1.add(old, new)
        for old, new in sorted(step2.items(), key=lambda kv: kv[1]):
            m2.add(old, new)
        m1.finish()
        m2.finish()
        both = m1.then(m2)
        for old in range(0, len(first) + 3):
            assert m1[old] == step1.get(old, 0)
            assert both[old] == step2.get(step1.get(old, 0), 0)
