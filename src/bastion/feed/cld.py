"""ClamAV ``.cld`` files: a container unpacked into a folder (for cdiff scripts) and rebuilt from it.

A ``.cld`` is what freshclam writes after applying cdiffs: a 512-byte header that is the first line
of ``<db>.info`` (``ClamAV-VDB:time:version:signatures:level:X:X:builder:unix time``) padded with
spaces, then a plain (not gzipped) ustar archive of ``COPYING``, ``<db>.info``, ``<db>.cfg`` if there
is one, then the other files.  Its header carries no MD5 or signature: what makes it trustworthy is
``<db>.info``'s ``DSIG:`` line (which the cdiff script replaced with the new version's) and the
size and SHA-256 of every member listed there, which :func:`bastion.signatures.cvd.open_container`
checks; the updater keeps a rebuilt ``.cld`` only once that passes.
"""

from __future__ import annotations

import io
import os
import tarfile

from bastion.feed.cdiff import CdiffError
from bastion.signatures.cvd import HEADER_SIZE, Container


def unpack(container: Container, folder: str) -> None:
    """Write a verified container's members (flat names, checked by the reader) into ``folder``."""
    for name, data in container.members:
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)


def build_cld(folder: str, db: str) -> bytes:
    """The ``<db>.cld`` for the files in ``folder``, built as freshclam builds it (uncompressed)."""
    info_path = os.path.join(folder, f"{db}.info")
    if not os.path.isfile(info_path) or not os.path.isfile(os.path.join(folder, "COPYING")):
        raise CdiffError(f"the updated files have no COPYING or {db}.info")
    with open(info_path, "rb") as fh:
        first = fh.read(HEADER_SIZE)
    newline = first.find(b"\n")
    if newline < 0 or not first.startswith(b"ClamAV-VDB:"):
        raise CdiffError(f"{db}.info does not start with a ClamAV-VDB: line under {HEADER_SIZE} bytes")
    header = first[:newline].ljust(HEADER_SIZE, b" ")
    names = sorted(os.listdir(folder))
    first_names = ["COPYING", f"{db}.info"] + ([f"{db}.cfg"] if f"{db}.cfg" in names else [])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in first_names + [n for n in names if n not in first_names]:
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or os.path.islink(path):
                raise CdiffError(f"{name} in the updated files is not a plain file")
            info = tarfile.TarInfo(name)
            info.size = os.path.getsize(path)
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return header + buf.getvalue()
