"""PE files inside PE files (ClamAV's embedded PE scan), held against clamscan."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.embedded import DEFAULT_MAX_EMBEDDEDPE, EmbeddedObjects
from tests.test_clamscan_parity import run_both
from tests.test_pe_packers import packable_pe


def _moved_header(pe: bytes, e_lfanew: int) -> bytes:
    """``pe`` with its PE header moved to ``e_lfanew`` (the headers area is 0x400 bytes)."""
    old = struct.unpack_from("<I", pe, 0x3C)[0]
    header = pe[old:old + 24 + 224 + 80]
    out = bytearray(pe[:0x400])
    out[0x40:0x400] = bytes(0x3C0)
    struct.pack_into("<I", out, 0x3C, e_lfanew)
    out[e_lfanew:e_lfanew + len(header)] = header
    return bytes(out) + pe[0x400:]


def children(data: bytes, limits: UnpackLimits | None = None) -> list[ChildObject | LimitExceeded]:
    return list(EmbeddedObjects("CL_TYPE_MSEXE").children(data, "o.exe", limits or UnpackLimits()))


def test_embedded_pe_found_after_the_first_byte() -> None:
    outer, inner = packable_pe(), _moved_header(packable_pe(), 0xC0)
    (child,) = children(outer + b"junk" + inner)
    assert isinstance(child, ChildObject)
    assert child.data == inner and child.container_path == f"o.exe!@{len(outer) + 4}"
    assert children(outer) == []  # the file's own MZ is not embedded
    assert children(outer + b"MZ" + bytes(500)) == []  # no PE header
    assert children(outer + _moved_header(inner, 0x190)) == []  # PE\0\0 beyond 300 bytes after MZ
    broken = bytearray(inner)
    struct.pack_into("<H", broken, 0xC0 + 6, 0)  # no sections: ClamAV rejects the header
    assert children(outer + bytes(broken)) == []


def test_embedded_pe_limits() -> None:
    inner = packable_pe()
    many = children(inner * 50)  # the first one only: the others are found inside it, as in ClamAV
    assert [c.container_path for c in many] == [f"o.exe!@{len(inner)}"]
    assert children(inner + inner + bytes(DEFAULT_MAX_EMBEDDEDPE)) == []  # rest larger than 40 MiB
    (item,) = children(inner + inner, UnpackLimits(max_filesize=len(inner) - 1))
    assert isinstance(item, LimitExceeded) and item.limit == "max-filesize"


def test_embedded_pe_parity(tmp_path: Path, shared_cache_dir: Path) -> None:
    outer = packable_pe()
    inner = _moved_header(packable_pe(), 0xC0)
    (tmp_path / "t.hdb").write_text(f"{hashlib.md5(inner).hexdigest()}:{len(inner)}:Inner.Hash\n")
    far = _moved_header(inner, 0x190)
    (tmp_path / "far.hdb").write_text(f"{hashlib.md5(far).hexdigest()}:{len(far)}:Far.Hash\n")
    files = {"in.exe": outer + b"junk" + inner, "far.exe": outer + far, "plain.exe": outer}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    args = ["--no-summary", "-z", "-d", str(tmp_path / "t.hdb"), "-d", str(tmp_path / "far.hdb"), *files]
    pair = run_both(args, tmp_path, shared_cache_dir)
    assert pair.bastion.found_set == pair.clam.found_set, pair.report()
    assert pair.clam.infected == {"in.exe"}, pair.report()
