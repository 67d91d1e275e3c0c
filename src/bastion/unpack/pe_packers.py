"""Executables compressed by a PE packer: the unpacked program, scanned as a child object.

Runs on every PE32 file (beside :mod:`bastion.unpack.pe_installers` in the CL_TYPE_MSEXE chain).
Each packer module under :mod:`bastion.unpack.packers` says whether the file is its packer's and
decodes the compressed data (the stub is never run).  The unpacked memory image is rebuilt into a
PE of Bastion's own design (:mod:`bastion.unpack.packers.rebuild`; not ClamAV's byte layout) when
the original headers can be found in it, and handed over as ``file.exe!upx-unpacked``; otherwise the
image itself is.  A packed file that cannot be unpacked is reported (``broken`` or the limit it hit)
and the scan goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, as_bytes, register
from bastion.unpack.packers import aspack, mew, pespin, petite, upack, upx, wwpack, yc
from bastion.unpack.packers.pe import PackedPe, PackerError, Unpacked, read_pe32
from bastion.unpack.packers.rebuild import rebuild

# The packers, tried in order; the first one that claims a file unpacks it
PACKERS: tuple[tuple[str, Callable[[PackedPe, UnpackLimits, str], Unpacked | None]], ...] = (
    ("upx", upx.unpack),
    ("petite", petite.unpack),
    ("pespin", pespin.unpack),
    ("yc", yc.unpack),
    ("wwpack", wwpack.unpack),
    ("aspack", aspack.unpack),
    ("mew", mew.unpack),
    ("upack", upack.unpack),
)


class PePackerUnpacker:
    handles = frozenset({"CL_TYPE_MSEXE"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = as_bytes(data)
        pe = read_pe32(raw)
        if pe is None:
            return
        for packer, unpack in PACKERS:
            try:
                result = unpack(pe, limits, container_path)
            except PackerError as exc:
                yield LimitExceeded(exc.kind, exc.detail)
                return
            except (ValueError, IndexError, OverflowError) as exc:  # a gap in a packer's checks
                yield LimitExceeded("broken", f"{container_path}: {packer}: {exc}")
                return
            if result is None:
                continue
            content = result.image if result.is_file else \
                rebuild(result, limits.max_filesize, _lfanew(raw)) or result.image
            name = f"{packer}-unpacked"
            yield ChildObject(content, name, f"{container_path}!{name}")
            return


def _lfanew(data: bytes) -> int:
    return int.from_bytes(data[0x3C:0x40], "little")


register(PePackerUnpacker())
