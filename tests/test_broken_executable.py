"""--alert-broken: the PE and ELF files clamscan 1.4.6 reports as ``Heuristics.Broken.Executable``,
and only those, are reported by bastion-clamscan too (every header fault ClamAV's strict PE parse and
its ELF scanner check, built from a sound PE32, PE32+ and ELF64 file and from real binaries)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bastion.formats.broken import broken_executable
from tests.test_clamscan_parity import CLAMSCAN, run_both
from tests.test_executable import make_elf64, make_pe

NAME = "Heuristics.Broken.Executable"
Edit = Callable[[bytearray], None]
OPT = 0x40 + 24          # the optional header in make_pe
TABLE = OPT + 224        # its section table (PE32)


def _at(fmt: str, offset: int, *values: int) -> Edit:
    return lambda b: struct.pack_into(fmt, b, offset, *values)


def _both(*edits: Edit) -> Edit:
    def apply(b: bytearray) -> None:
        for edit in edits:
            edit(b)
    return apply


def _truncate(n: int) -> Edit:
    def cut(b: bytearray) -> None:
        del b[n:]
    return cut


def _second_section(va: int, raw: int = 0x200) -> Edit:
    """Add a second section header (the table has room before the raw data at 0x200)."""
    def add(b: bytearray) -> None:
        struct.pack_into("<H", b, 0x40 + 6, 2)
        b[TABLE + 40:TABLE + 80] = b".data\0\0\0" + struct.pack("<IIII", 0x100, va, 0x200, raw) + bytes(16)
    return add


PE_CASES: dict[str, Edit] = {
    "sound": lambda b: None,
    "no-sections": _at("<H", 0x40 + 6, 0),
    "optional-header-too-small": _at("<H", 0x40 + 20, 0x40),
    "optional-header-too-small-for-dirs": _at("<H", 0x40 + 20, 100),
    "section-alignment-odd": _at("<I", OPT + 32, 0x800),
    "section-alignment-zero": _at("<I", OPT + 32, 0),
    "file-alignment-odd": _at("<I", OPT + 36, 0x100),
    "native-subsystem-odd-alignment": _both(_at("<H", OPT + 68, 1), _at("<I", OPT + 36, 0x100)),
    "section-table-past-end": _at("<H", 0x40 + 6, 60),
    "only-section-beyond-end": _at("<I", TABLE + 20, 0x100000),
    "section-va-misaligned": _at("<I", TABLE + 12, 0x1100),
    "first-section-not-after-headers": _at("<I", TABLE + 12, 0x3000),
    "sign-bit": _at("<I", TABLE + 8, 0x80000000),
    "entry-in-no-section": _at("<I", OPT + 16, 0x9000),
    "entry-in-headers": _at("<I", OPT + 16, 0x10),
    "entry-in-headers-past-end": _both(_at("<I", OPT + 60, 0x100000), _at("<I", OPT + 16, 0x90000)),
    "sections-contiguous": _second_section(0x2000),
    "sections-overlapping": _second_section(0x1000),
    "sections-with-a-hole": _second_section(0x5000),
    "second-section-beyond-end": _second_section(0x2000, raw=0x100000),
    "truncated-in-dos-header": _truncate(0x30),
    "truncated-in-optional-header": _truncate(OPT + 40),
    "truncated-in-section-table": _truncate(TABLE + 20),
    "truncated-in-section-data": _truncate(0x300),
    "no-pe-signature": _at("<4s", 0x40, b"NE\0\0"),
    "lfanew-zero": _at("<I", 0x3C, 0),
    "lfanew-past-end": _at("<I", 0x3C, 0x100000),
}
PE_PLUS_CASES: dict[str, Edit] = {
    "sound": lambda b: None,
    "optional-header-too-small-for-pe32plus": _at("<H", 0x40 + 20, 100),
}
ELF_CASES: dict[str, Edit] = {
    "sound": lambda b: None,
    "unknown-class": _at("<B", 4, 3),
    "too-many-program-headers": _at("<H", 56, 129),
    "program-header-size": _at("<H", 54, 40),
    "program-headers-past-end": _at("<Q", 32, 0x100000),
    "entry-in-no-segment": _at("<Q", 24, 0x900000),
    "no-entry-skips-program-headers": _both(_at("<Q", 24, 0), _at("<H", 54, 40)),
    "section-header-size": _at("<H", 58, 48),
    "section-headers-past-end": _at("<Q", 40, 0x100000),
    "more-than-2048-sections": _both(_at("<H", 60, 3000), _at("<H", 58, 1)),
    "truncated-header": _truncate(40),
    "big-endian-garbage": _at("<B", 5, 2),
}


def _corpus(folder: Path) -> list[Path]:
    files = []
    for prefix, base, cases in (("pe32", make_pe(), PE_CASES), ("pe32plus", make_pe(plus=True), PE_PLUS_CASES),
                                ("elf64", make_elf64(), ELF_CASES)):
        for case, edit in cases.items():
            data = bytearray(base)
            edit(data)
            path = folder / f"{prefix}-{case}.bin"
            path.write_bytes(bytes(data))
            files.append(path)
    for real in ("/usr/share/clamav-testfiles/clam.exe", "/bin/true", "/bin/ls"):
        if Path(real).exists():
            path = folder / f"real-{Path(real).name}.bin"
            path.write_bytes(Path(real).read_bytes())
            files.append(path)
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("broken")
    (root / "files").mkdir()
    (root / "db.ndb").write_text("Broken.Unrelated:0:*:00112233445566778899aabbccddeeff\n")
    return root, _corpus(root / "files")


@pytest.mark.skipif(CLAMSCAN is None, reason="clamscan is not installed (Debian: apt-get install clamav)")
def test_the_same_files_are_broken_for_clamscan_and_bastion(corpus: tuple[Path, list[Path]],
                                                            shared_cache_dir: Path) -> None:
    root, files = corpus
    pair = run_both(["--no-summary", "--alert-broken", "-d", "db.ndb", "files"], root, shared_cache_dir)
    clam = {Path(p).name for p, n in pair.clam.found if n == NAME}
    bastion = {Path(p).name for p, n in pair.bastion.found if n == NAME}
    assert bastion == clam, f"only clamscan: {sorted(clam - bastion)}; only Bastion: {sorted(bastion - clam)}"
    assert pair.clam.rc == pair.bastion.rc == 1
    # the corpus does exercise both answers
    assert "pe32-sound.bin" not in clam and "pe32-no-sections.bin" in clam and "elf64-unknown-class.bin" in clam
    # without the option nothing is reported
    quiet = run_both(["--no-summary", "-d", "db.ndb", "files"], root, shared_cache_dir)
    assert not quiet.clam.found and not quiet.bastion.found and quiet.bastion.rc == quiet.clam.rc == 0


def test_every_reason_is_named_and_hostile_headers_are_cheap() -> None:
    assert broken_executable(make_pe()) is None and broken_executable(make_elf64()) is None
    bad = bytearray(make_pe())
    struct.pack_into("<H", bad, 0x40 + 6, 0)
    assert broken_executable(bad) == "NumberOfSections is 0"
    assert broken_executable(b"not an executable") is None and broken_executable(b"") is None
    # 65535 declared sections in a small file and a huge ELF table: answered at once
    huge = bytearray(make_pe())
    struct.pack_into("<H", huge, 0x40 + 6, 0xFFFF)
    elf = bytearray(make_elf64())
    struct.pack_into("<H", elf, 60, 2048)
    start = time.monotonic()
    assert broken_executable(huge) == "the section table runs past the end of the file"
    assert broken_executable(elf) == "the section header table runs past the end of the file"
    assert time.monotonic() - start < 0.5
