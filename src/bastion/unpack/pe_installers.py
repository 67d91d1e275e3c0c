"""Installers inside Windows executables: the files an NSIS or InstallShield ``setup.exe`` carries.

Looked for in every PE, where ClamAV 1.4.6 looks:

* NSIS data (:mod:`bastion.unpack.nsis`) wherever its signature (``daily.ftm``'s ``NSIS`` type
  signature) occurs, the first header starting 4 bytes before it;
* MSI-based InstallShield data (:mod:`bastion.unpack.ishield`) wherever ClamAV's ``ISHIELD-MSI``
  type signature holds;
* older InstallShield files in the overlay, the bytes after the sections (PE32 only: ClamAV does not
  look in a PE32+ file's overlay).  ClamAV takes the overlay to start at the end of the raw data of
  the section with the highest end address, not counting the first section (so a one-section file
  has none); so does Bastion.

Children are named ``setup.exe!NSIS/content.001``, ``setup.exe!clam.msi`` (InstallShield MSI),
``setup.exe!data1.hdr``, ``setup.exe!data2.cab!clam.exe`` (a file inside an InstallShield cabinet).
A file packed with many signatures is looked at only at its first ``MAX_HITS`` of each kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, as_bytes, find_all, register
from bastion.unpack.ishield import MSI_MAGIC, is_msi_at, msi_members, overlay_members
from bastion.unpack.nsis import SIGNATURE as NSIS_SIGNATURE
from bastion.unpack.nsis import nsis_members

MAX_HITS = 32


def overlay_start(data: bytes) -> int | None:
    """Where ClamAV's PE parser puts the overlay of a PE32 file (see the module docstring), or None."""
    from bastion.formats.executable import parse_executable

    if len(data) < 0x40:
        return None
    e_lfanew = int.from_bytes(data[0x3C:0x40], "little")
    if data[e_lfanew + 24:e_lfanew + 26] == b"\x0b\x02":  # PE32+
        return None
    info = parse_executable(data)
    if info is None or info.kind != "pe" or len(info.sections) < 2:
        return None
    first = info.sections[0]
    highest = first.virtual_address + first.raw_size
    start = 0
    for section in info.sections[1:]:
        end = section.virtual_address + section.raw_size
        if end > highest:
            highest, start = end, section.raw_offset + section.raw_size
    return start if 0 < start < len(data) else None


class PeInstallerUnpacker:
    handles = frozenset({"CL_TYPE_MSEXE"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = as_bytes(data)
        nsis = 0
        for pos in islice(find_all(raw, NSIS_SIGNATURE), MAX_HITS):
            if pos <= 4:
                continue
            prefix = "NSIS" if not nsis else f"NSIS{nsis}"
            nsis += 1
            for item in nsis_members(raw, pos - 4, limits):
                yield item if isinstance(item, LimitExceeded) else \
                    ChildObject(item[1], item[0], f"{container_path}!{prefix}/{item[0]}")
        for pos in islice(find_all(raw, MSI_MAGIC), MAX_HITS):
            if is_msi_at(raw, pos):
                yield from self._named(msi_members(raw, pos, limits), container_path)
        start = overlay_start(raw)
        if start is not None:
            yield from self._named(overlay_members(raw, start, limits), container_path)

    @staticmethod
    def _named(items: Iterator[tuple[str, bytes] | LimitExceeded],
               container_path: str) -> Iterator[ChildObject | LimitExceeded]:
        for item in items:
            if isinstance(item, LimitExceeded):
                yield item
            else:
                name, content = item
                yield ChildObject(content, name.rsplit("!", 1)[-1], f"{container_path}!{name}")


register(PeInstallerUnpacker())
