"""Engine: offsets, targets, normalized text, allow lists, limits and hostile files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bastion.database.compiled import open_database
from bastion.engine import Engine, ScanOptions
from tests.helpers import CANARY, EICAR, write


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BASTION_DB_DIR", str(tmp_path / "none"))


def engine_for(tmp_path: Path, files: dict[str, str], **opts: object) -> Engine:
    d = tmp_path / "db"
    for name, text in files.items():
        write(d / name, text)
    return Engine(open_database([str(d)]), ScanOptions(**opts))  # type: ignore[arg-type]


def names(result) -> list[str]:
    return [d.name for d in result.detections]


def test_builtin_db_finds_eicar_and_canary(tmp_path: Path) -> None:
    eng = Engine(open_database(None), ScanOptions(allmatch=True))
    res = eng.scan_bytes(EICAR)
    assert names(res) == ["Bastion.Test.EICAR", "Bastion.Test.EICAR.MD5", "Bastion.Test.EICAR.SHA256"]
    ev = res.detections[0].evidence
    assert ev.kind == "body" and ev.offsets == (0,) and ev.source.endswith("bastion.ndb") and ev.line > 0
    assert res.detections[1].evidence.kind == "hash.md5"
    assert names(eng.scan_bytes(b"x" * 100 + CANARY)) == ["Bastion.Test.Canary"]
    assert eng.scan_bytes(b"hello").detections == []


def test_first_match_only_without_allmatch(tmp_path: Path) -> None:
    eng = Engine(open_database(None))
    assert names(eng.scan_bytes(EICAR)) == ["Bastion.Test.EICAR"]


@pytest.mark.parametrize(("offset", "data", "hit", "where"), [
    ("0", b"ABCDxxxx", True, 0),
    ("0", b"xABCDxxx", False, None),
    ("3", b"xxxABCD", True, 3),
    ("2,3", b"xxxxxABCD", True, 5),
    ("2,2", b"xxxxxABCD", False, None),
    ("EOF-4", b"xxxxABCD", True, 4),
    ("EOF-5", b"xxxxABCD", False, None),
    ("EOF-6,2", b"xxxxABCD", True, 4),
    ("*", b"xxxxxxxxxxxABCDxxxxABCD", True, 11),
])
def test_offsets(tmp_path: Path, offset: str, data: bytes, hit: bool, where: int | None) -> None:
    eng = engine_for(tmp_path, {"a.ndb": f"A:0:{offset}:41424344\n"})
    res = eng.scan_bytes(data)
    assert bool(res.detections) is hit
    if hit:
        assert res.detections[0].evidence.offsets == (where,)


def test_target_types_gate_matches(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, {"a.ndb": "Pe:1:*:41424344\nElf:6:*:41424344\nAny:0:*:41424344\n"},
                     allmatch=True)
    assert names(eng.scan_bytes(b"\x00\x01ABCD")) == ["Any.UNOFFICIAL"]
    assert names(eng.scan_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"ABCD")) == ["Elf.UNOFFICIAL", "Any.UNOFFICIAL"]


def test_text_is_normalized_for_target_7_and_generic(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, {"a.ndb": (
        f"Raw:0:*:{b'WORLD  foo'.hex()}\nLow:0:*:{b'world foo'.hex()}\nT7:7:*:{b'foo bar'.hex()}\n"
        f"T7raw:7:*:{b'WORLD  foo'.hex()}\n")}, allmatch=True)
    res = eng.scan_bytes(b"Hello WORLD  foo\tbar\r\n")
    assert names(res) == ["Raw.UNOFFICIAL", "T7.UNOFFICIAL", "Low.UNOFFICIAL"]
    assert [d.evidence.normalized for d in res.detections] == [False, True, True]


def test_allow_list_clears_detection(tmp_path: Path) -> None:
    sha256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
    eng = engine_for(tmp_path, {"a.ndb": "A:0:*:41424344\n", "ok.sfp": f"{sha256}:68:Allowed\n",
                                "eicar.hdb": "44d88612fea8a8f36de82e1278abb02f:68:Eicar.Hash\n"}, allmatch=True)
    res = eng.scan_bytes(EICAR)
    assert res.detections == [] and res.allowed_by and res.allowed_by.endswith("ok.sfp:1")
    assert names(eng.scan_bytes(b"xxABCD")) == ["A.UNOFFICIAL"]


def test_hash_wildcard_size(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, {"a.hsb": "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f:*:Any:73\n"})
    assert names(eng.scan_bytes(EICAR)) == ["Any.UNOFFICIAL"]


def test_limits(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, {"a.ndb": "A:0:*:41424344\n"}, max_filesize=10, max_scansize=5)
    big = eng.scan_bytes(b"x" * 20 + b"ABCD")
    assert big.skipped == "max-filesize" and not big.detections
    eng2 = engine_for(tmp_path, {"a.ndb": "A:0:*:41424344\n"}, max_scansize=8)
    assert eng2.scan_bytes(b"xxxxxxxxxxABCD").detections == []
    assert names(eng2.scan_bytes(b"xxABCDxxxxxx")) == ["A.UNOFFICIAL"]


def test_scan_file_errors_are_data(tmp_path: Path) -> None:
    eng = Engine(open_database(None))
    assert eng.scan_file(str(tmp_path / "missing")).error == "No such file or directory"
    assert eng.scan_file(str(tmp_path)).error == "Not a regular file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert eng.scan_file(str(fifo)).error == "Not a regular file"  # never blocks on a FIFO
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    assert eng.scan_file(str(loop)).error
    f = write(tmp_path / "e.com", EICAR)
    link = tmp_path / "link"
    os.symlink(f, link)
    assert names(eng.scan_file(str(link))) == ["Bastion.Test.EICAR"]


def test_file_changing_during_scan_never_crashes(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, {"a.ndb": "A:0:*:41424344\n"})
    target = tmp_path / "moving.bin"
    write(target, b"x" * 1_000_000)
    stop = threading.Event()

    def mutate() -> None:
        i = 0
        while not stop.is_set():
            with open(target, "wb") as fh:
                fh.write(b"ABCD" * (i % 50000))
            i += 7919
    t = threading.Thread(target=mutate)
    t.start()
    try:
        for _ in range(300):
            res = eng.scan_file(str(target))
            assert res.error is None or res.errno is not None
    finally:
        stop.set()
        t.join()


def test_threads_share_one_engine(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, {"a.ndb": "A:0:*:41424344\n"})
    results: list[list[str]] = []

    def work(i: int) -> None:
        out = []
        for j in range(200):
            data = (b"ABCD" if (i + j) % 3 == 0 else b"ABCE") + os.urandom(64)
            out.append("hit" if eng.scan_bytes(data).detections else "miss")
        results.append(out)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.count("hit") in (66, 67) for r in results)


def test_normalized_text_keeps_collapsed_edge_spaces(tmp_path: Path) -> None:
    # checked with clamscan 1.4.6: both alert on "  Lead and trail  \n"
    eng = engine_for(tmp_path, {"a.ndb": f"Lead:7:0:{b' lead'.hex()}\nTrail:7:EOF-6:{b'trail '.hex()}\n"},
                     allmatch=True)
    assert names(eng.scan_bytes(b"  Lead and trail  \n")) == ["Lead.UNOFFICIAL", "Trail.UNOFFICIAL"]


def test_chunked_normalization_equals_whole_buffer_normalization(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from bastion.engine import normalize

    def reference(t: bytes) -> bytes:
        words = t.lower().split()
        return (b" " if t[:1].isspace() else b"") + b" ".join(words) + (b" " if t[-1:].isspace() and words else b"")

    monkeypatch.setattr(normalize, "_CHUNK", 7)  # many chunk boundaries inside words and whitespace runs
    rng = random.Random(3)
    for _ in range(3000):
        text = bytes(rng.choice(b"aB \t\n\rxY") for _ in range(rng.randint(0, 40)))
        assert normalize.normalize_text(text) == reference(text)


def test_large_files_are_streamed_in_chunks(tmp_path: Path) -> None:
    from bastion.engine import scanner

    assert scanner.READ_CHUNK == 1 << 20 and scanner.WHOLE_FILE_LIMIT == 2 << 20
    big = bytearray(os.urandom(5 << 20).replace(b"A", b"a").replace(b"E", b"e"))
    boundary = 1 << 20
    big[boundary - 2:boundary + 2] = b"ABCD"                      # across the first chunk boundary
    big[100:104] = b"ABXY"                                        # head of a '*' signature ...
    big[(3 << 20) + 5:(3 << 20) + 9] = b"QRST"                    # ... whose tail is chunks later
    big[-8:] = b"EOFMARK!"
    path = write(tmp_path / "big.bin", bytes(big))
    md5 = __import__("hashlib").md5(big).hexdigest()
    eng = engine_for(tmp_path, {"a.ndb": "Cross:0:*:41424344\nStar:0:*:41425859*51525354\n"
                                         "Eof:0:EOF-8:454f464d41524b21\n",
                                "a.hdb": f"{md5}:{len(big)}:Whole\n"}, allmatch=True)
    res = eng.scan_file(str(path))
    assert names(res) == ["Star.UNOFFICIAL", "Cross.UNOFFICIAL", "Eof.UNOFFICIAL", "Whole.UNOFFICIAL"]
    assert [d.evidence.offsets for d in res.detections[:3]] == [(100,), (boundary - 2,), (len(big) - 8,)]
    assert res.size == len(big) and res.bytes_scanned == len(big)


def test_large_text_is_normalized_across_chunks(tmp_path: Path) -> None:
    text = bytearray(b"lorem ipsum " * ((3 << 20) // 12))
    pos = (1 << 20) - 4
    text[pos:pos + 14] = b"HELLO   \n\tBOB"                     # straddles the 1 MiB boundary
    path = write(tmp_path / "big.txt", bytes(text))
    eng = engine_for(tmp_path, {"a.ndb": f"T7:7:*:{b'hello bob'.hex()}\n"})
    assert names(eng.scan_file(str(path))) == ["T7.UNOFFICIAL"]


def test_max_scansize_bounds_body_matching_not_hashing(tmp_path: Path) -> None:
    data = os.urandom(3 << 20).replace(b"AB", b"ab") + b"ABCD"
    md5 = __import__("hashlib").md5(data).hexdigest()
    eng = engine_for(tmp_path, {"a.ndb": "Tail:0:*:41424344\n", "a.hdb": f"{md5}:{len(data)}:Whole\n"},
                     allmatch=True, max_scansize=2 << 20)
    res = eng.scan_file(str(write(tmp_path / "f.bin", data)))
    assert names(res) == ["Whole.UNOFFICIAL"] and res.bytes_scanned == 2 << 20
