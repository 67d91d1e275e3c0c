"""Reading an archive with libarchive, in memory, within limits: the job of the sandbox worker process
(unpack/sandbox.py), never of the scanning process (see unpack/archive.py for why).  Zip members in
the methods libarchive does not decode (implode, deflate64) go to unpack/zip_methods.py."""

from __future__ import annotations

import re
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits
from bastion.unpack.zip_methods import METHODS, ZipFallback, decode_member

# libarchive's words for a zip member in a method it does not decode ("... method (9: deflation-64-bit)")
_ZIP_METHOD = re.compile(r"Unsupported ZIP compression method \((\d+)")


def read_archive(data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
    """The members of an archive, read with libarchive in *this* process (the sandbox worker's job)."""
    try:
        import libarchive
        from libarchive.exception import ArchiveError
    except (ImportError, OSError) as exc:  # the shared library is missing
        yield LimitExceeded("unsupported", f"libarchive is not available: {exc}")
        return
    blob = bytes(data)
    ratio_cap = limits.growth_cap(len(blob))
    count = 0
    fallback = None  # zip_methods.ZipFallback, made when libarchive first gives up on a zip member
    try:
        with libarchive.memory_reader(blob) as archive:
            for entry in archive:
                if not entry.isfile:
                    continue  # directories, links, devices: no content of their own
                count += 1
                if count > limits.max_files:
                    yield LimitExceeded("max-files", f"more than {limits.max_files} members")
                    return
                name = (entry.pathname or f"member{count}").lstrip("/") or f"member{count}"
                out = bytearray()
                problem = None
                try:
                    for block in entry.get_blocks():
                        out += block
                        problem = limits.growth_problem(name, len(out), ratio_cap)
                        if problem is not None:
                            break
                except ArchiveError as exc:
                    text = str(exc)
                    method = _ZIP_METHOD.search(text)
                    if method is not None and int(method.group(1)) in METHODS:
                        fallback = fallback or ZipFallback(blob)
                        member = fallback.take(name, int(method.group(1)))
                        if member is not None:
                            yield from decode_member(blob, member, container_path, limits)
                            continue
                    kind = "encrypted" if "ncrypt" in text or "assphrase" in text else \
                        "unsupported" if "Unsupported" in text else "broken"
                    yield LimitExceeded(kind, f"{name}: {text.split(' (errno')[0]}")
                    continue
                if problem is not None:
                    yield problem
                    continue
                yield ChildObject(bytes(out), name, f"{container_path}!{name}")
    except ArchiveError as exc:
        yield LimitExceeded("broken", str(exc).split(" (errno")[0])
