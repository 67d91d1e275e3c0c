"""Archives through libarchive (python binding ``libarchive-c``): zip, 7z, tar (every variant), cpio
(newc, crc, odc, old binary), cab, rar, iso9660, xar, lha.

libarchive was chosen over Python's ``zipfile``/``tarfile`` because one well-kept C library reads
all of these formats, streams each entry in blocks (so limits are enforced while reading, not after),
and never touches the disk: archives are read from memory and members stay in memory.  Entry names
are only labels in the container path: nothing is ever written under them, so ``../`` and absolute
names cannot escape anything; symlinks, hardlinks and devices have no content and are skipped.

libarchive is C code parsing hostile input, and the test corpus found inputs that crash it
(a corrupted cabinet segfaults libarchive 3.6.2): so it never runs in the scanning process.
:mod:`bastion.unpack.sandbox` runs it in a separate worker process with no right to write files,
a memory cap and a time limit; a crash there is reported as "broken" and the worker restarted.

Per member: at most ``max_filesize`` bytes (then "max-filesize") and ``max_ratio`` times its
compressed share; entries that libarchive cannot decode (encrypted, an unknown method) are reported
("encrypted", "unsupported") and the rest go on.  Zip members in implode or deflate64 compression,
which libarchive does not decode, are decoded by unpack/zip_methods.py in the same worker.  A corrupt
or truncated archive yields the members read so far and "broken".
"""

from __future__ import annotations

from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

# The archive formats this plug-in opens, by ClamAV type name (engine/filetype.py types them).
ARCHIVE_TYPES = frozenset({
    "CL_TYPE_ZIP", "CL_TYPE_7Z", "CL_TYPE_POSIX_TAR", "CL_TYPE_OLD_TAR", "CL_TYPE_CPIO_OLD", "CL_TYPE_CPIO_ODC",
    "CL_TYPE_CPIO_NEWC", "CL_TYPE_CPIO_CRC", "CL_TYPE_MSCAB", "CL_TYPE_RAR", "CL_TYPE_ISO9660", "CL_TYPE_XAR",
    "CL_TYPE_LHA_LZH",
})


class ArchiveUnpacker:
    handles = ARCHIVE_TYPES
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        from bastion.unpack.sandbox import run_sandboxed

        return run_sandboxed(data, container_path, limits)


register(ArchiveUnpacker())
